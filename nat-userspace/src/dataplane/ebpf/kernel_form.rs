//! natd's records in the form the kernel programs hold them: addresses as loaded from a
//! packet (IPv4 a `u32`, IPv6 four `u32` words, network byte order read natively), ports
//! in network byte order, and the map values built from `Desired`'s rules.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nat_common::{
    Addr6, EndpointInfo, IfaceConfig, NetInfo4, NetInfo6, Port4Key, Port4Target, Port6Key, Port6Target, net,
    port, port_marks, role,
};

use crate::{
    dataplane::{EndpointRule, Iface, IfaceRole, NetworkRule, PortRule},
    model::NatFiltering,
};

pub fn raw(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn from_raw(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

pub fn raw6(ip: Ipv6Addr) -> Addr6 {
    let o = ip.octets();
    std::array::from_fn(|i| u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]))
}

pub fn from_raw6(raw: Addr6) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, word) in raw.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

pub fn iface_config(iface: &Iface) -> IfaceConfig {
    let (role, network_id, addr4, addr6, flags) = match iface.role {
        IfaceRole::Edge {
            addr,
            addr6,
            link_layer,
            macvlan_uppers,
        } => (
            if link_layer { role::EDGE } else { role::EDGE_L3 },
            0,
            addr.map(raw).unwrap_or(0),
            addr6,
            if macvlan_uppers { nat_common::iface::MACVLAN_UPPERS } else { 0 },
        ),
        IfaceRole::SandboxVeth {
            network_id,
            addr,
            addr6,
        } => (role::SANDBOX_VETH, network_id, raw(addr), addr6, 0),
    };
    IfaceConfig {
        role,
        network_id,
        addr4,
        mtu: iface.mtu,
        mac: iface.mac,
        flags,
        addr6: addr6.map(|a| a.octets()).unwrap_or_default(),
        ..Default::default()
    }
}

/// A published port's key and target in its family's map.
#[derive(Clone, Copy)]
pub enum PortEntry {
    V4(Port4Key, Port4Target),
    V6(Port6Key, Port6Target),
}

impl PortEntry {
    pub fn v4(&self) -> Option<(Port4Key, Port4Target)> {
        match *self {
            PortEntry::V4(k, t) => Some((k, t)),
            PortEntry::V6(..) => None,
        }
    }

    pub fn v6(&self) -> Option<(Port6Key, Port6Target)> {
        match *self {
            PortEntry::V6(k, t) => Some((k, t)),
            PortEntry::V4(..) => None,
        }
    }

    /// What owns the entry's generation slot: where the port is published and where it
    /// leads, in the kernel's bytes. Not the mapping's id, so a mapping keeps its slot
    /// (and its flows) when its id changes (the hashed ids of natd before persisted ones),
    /// and a mapping whose target changed takes a fresh slot (the old target's flows end).
    pub fn slot_owner(&self) -> MappingKey {
        match *self {
            PortEntry::V4(k, t) => MappingKey::V4 {
                host: k.addr,
                target: t.addr,
                port: k.port,
                target_port: t.port,
                proto: k.proto,
            },
            PortEntry::V6(k, t) => MappingKey::V6(Box::new((k.addr, k.port, k.proto, t.addr, t.port))),
        }
    }

    /// The slot and mapping id the entry carries.
    pub fn slot_and_id(&self) -> (u32, u32) {
        match self {
            PortEntry::V4(_, t) => (t.slot, t.mapping_id),
            PortEntry::V6(_, t) => (t.slot, t.mapping_id),
        }
    }

    /// The mark the entry needs (`nat_common::port_marks`).
    pub fn mark(&self) -> Option<u32> {
        match self {
            PortEntry::V4(k, _) => port_marks::of_port(k),
            PortEntry::V6(k, _) => port_marks::of_port(k),
        }
    }
}

/// The owner of a published mapping's generation slot (`PortEntry::slot_owner`). IPv6
/// keys are boxed: the book holds one per mapping, and most are IPv4.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MappingKey {
    V4 {
        host: u32,
        target: u32,
        port: u16,
        target_port: u16,
        proto: u8,
    },
    V6(Box<(Addr6, u16, u8, Addr6, u16)>),
}

impl MappingKey {
    pub fn of(rule: &PortRule) -> Self {
        port_entry(rule, 0, 0).slot_owner()
    }
}

pub fn port_entry(rule: &PortRule, slot: u32, generation: u32) -> PortEntry {
    let (port, target_port, proto) = (
        rule.host_port.to_be(),
        rule.target_port.to_be(),
        rule.proto.number(),
    );
    let flags = if rule.trusted_only { port::TRUSTED_ONLY } else { 0 };
    match rule.target {
        IpAddr::V4(target) => PortEntry::V4(
            Port4Key {
                addr: match rule.host_ip {
                    Some(IpAddr::V4(ip)) => raw(ip),
                    _ => 0,
                },
                port,
                proto,
                _pad: 0,
            },
            Port4Target {
                addr: raw(target),
                port: target_port,
                flags,
                slot,
                generation,
                mapping_id: rule.mapping_id,
            },
        ),
        IpAddr::V6(target) => PortEntry::V6(
            Port6Key {
                addr: match rule.host_ip {
                    Some(IpAddr::V6(ip)) => raw6(ip),
                    _ => [0; 4],
                },
                port,
                proto,
                _pad: 0,
            },
            Port6Target {
                addr: raw6(target),
                port: target_port,
                flags,
                slot,
                generation,
                mapping_id: rule.mapping_id,
            },
        ),
    }
}

pub fn net_info(n: &NetworkRule) -> NetInfo4 {
    NetInfo4 {
        network_id: n.id,
        flags: policy_flags(n)
            | (if n.masquerade { net::MASQ } else { 0 })
            | (if n.routed { net::ROUTED } else { 0 }),
        gateway: raw(n.gateway),
        subnet: raw(n.subnet.network()),
        bridge_ifindex: n.bridge_ifindex,
        prefix_len: n.subnet.prefix(),
        _pad: [0; 3],
    }
}

/// The network's IPv6 side: its own masquerade flag (routed mode), the same isolation.
pub fn net_info6(n: &NetworkRule) -> Option<NetInfo6> {
    let v6 = n.v6?;
    Some(NetInfo6 {
        network_id: n.id,
        flags: policy_flags(n)
            | (if v6.masquerade { net::MASQ } else { 0 })
            | (if v6.routed { net::ROUTED } else { 0 }),
        gateway: raw6(v6.gateway),
        bridge_ifindex: n.bridge_ifindex,
        prefix_len: v6.subnet.prefix(),
        _pad: [0; 3],
    })
}

fn policy_flags(n: &NetworkRule) -> u32 {
    let filtering = match n.nat_filtering {
        NatFiltering::AddressAndPortDependent => 0,
        NatFiltering::AddressDependent => net::FILTER_ADDRESS,
        NatFiltering::EndpointIndependent => net::FILTER_ENDPOINT,
    };
    (if n.icc { net::ICC } else { 0 })
        | (if n.internal { net::INTERNAL } else { 0 })
        | filtering
        | (if n.random_ports { net::PORTS_RANDOM } else { 0 })
        | (if n.hairpin_external { net::HAIRPIN_EXTERNAL } else { 0 })
}

pub fn endpoint_info(e: &EndpointRule, slot: u32, generation: u32) -> EndpointInfo {
    EndpointInfo {
        host_ifindex: e.host_ifindex,
        network_id: e.network_id,
        slot,
        generation,
        mac: e.mac,
        gw_mac: e.gw_mac,
        mtu: e.mtu.min(u32::from(u16::MAX)) as u16,
        _pad: [0; 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_words_round_trip_in_packet_order() {
        let ip: Ipv6Addr = "fd00:1:2::42".parse().unwrap();
        let words = raw6(ip);
        // The first word holds the first four octets as they sit in the packet.
        assert_eq!(words[0].to_ne_bytes(), [0xfd, 0x00, 0x00, 0x01]);
        assert_eq!(from_raw6(words), ip);
    }
}
