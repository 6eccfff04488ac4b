//! VXLAN devices and their forwarding state, through rtnetlink: the device (`ip link add
//! type vxlan`), its FDB entries (`bridge fdb replace MAC dev VX dst HOST`) and the
//! neighbour entries its ARP proxy answers from (`ip neigh replace IP lladdr MAC dev VX`).
use std::net::{IpAddr, Ipv4Addr};

use futures::StreamExt as _;
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use rtnetlink::{
    LinkVxlan,
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
    },
};

use super::netlink::{Link, Netlink, NetlinkError, request_err};

/// IANA's VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// Outer Ethernet + IPv4 + UDP + VXLAN headers.
pub const OVERHEAD_V4: u32 = 50;

/// A remote endpoint as the kernel holds it: address, MAC, underlay address of its host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub underlay: Ipv4Addr,
}

/// A VXLAN device for `vni` sending from `local` over `underlay` (ifindex). Learning is
/// off (the FDB is programmed) and the device answers ARP from its neighbour table, so
/// no broadcast ever crosses the underlay.
pub async fn create(
    nl: &Netlink,
    name: &str,
    vni: u32,
    local: Ipv4Addr,
    underlay: u32,
    mtu: u32,
) -> Result<Link, NetlinkError> {
    let message = LinkVxlan::new(name, vni)
        .port(VXLAN_PORT)
        .local(local)
        .dev(underlay)
        .learning(false)
        .proxy(true)
        .mtu(mtu)
        .build();
    nl.handle()
        .link()
        .add(message)
        .execute()
        .await
        .map_err(request_err("create vxlan", name))?;
    nl.require_link(name).await
}

fn mac_of(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

/// NDA_DST of an AF_BRIDGE message: the parser cannot know its family from the header
/// (AF_BRIDGE), so an IPv4 destination arrives as raw bytes.
fn ipv4_of(address: &NeighbourAddress) -> Option<Ipv4Addr> {
    match address {
        NeighbourAddress::Inet(ip) => Some(*ip),
        NeighbourAddress::Other(bytes) => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(Ipv4Addr::from),
        _ => None,
    }
}

/// The device's entries of one family. The request names the device (NDA_IFINDEX, as `ip
/// neigh show dev` does): the kernel then dumps only its IPv4 neighbours, so that cost does
/// not grow with the rest of the host. Bridge FDB dumps of this shape are not filtered by the
/// kernel (its legacy parser ignores the attribute), hence the filter here too.
async fn dump(nl: &Netlink, family: AddressFamily, index: u32) -> Result<Vec<NeighbourMessage>, NetlinkError> {
    let mut request = NeighbourMessage::default();
    request.header.family = family;
    request.attributes.push(NeighbourAttribute::IfIndex(index));
    let mut message = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(request));
    message.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut handle = nl.handle().clone();
    let mut responses = handle.request(message).map_err(request_err("list neighbours", index))?;
    let mut out = Vec::new();
    while let Some(response) = responses.next().await {
        match response.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) if m.header.ifindex == index => {
                out.push(m)
            }
            NetlinkPayload::Error(e) => {
                return Err(request_err("list neighbours", index)(rtnetlink::Error::NetlinkError(e)));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The FDB entries natd programs on the device: (MAC, remote underlay) with a destination.
pub async fn fdb(
    nl: &Netlink,
    index: u32,
) -> Result<Vec<([u8; 6], Ipv4Addr, NeighbourMessage)>, NetlinkError> {
    let mut out = Vec::new();
    for message in dump(nl, AddressFamily::Bridge, index).await? {
        let mut mac = None;
        let mut dst = None;
        for attribute in &message.attributes {
            match attribute {
                NeighbourAttribute::LinkLayerAddress(lla) => mac = mac_of(lla),
                NeighbourAttribute::Destination(address) => dst = ipv4_of(address),
                _ => {}
            }
        }
        // The all-zero MAC included: it is VXLAN's default destination (every broadcast goes
        // there), natd never wants one, and an older natd could have been made to write it.
        if let (Some(mac), Some(dst)) = (mac, dst) {
            out.push((mac, dst, message));
        }
    }
    Ok(out)
}

/// The device's permanent IPv4 neighbour entries: (address, MAC).
pub async fn neighbours(
    nl: &Netlink,
    index: u32,
) -> Result<Vec<(Ipv4Addr, [u8; 6], NeighbourMessage)>, NetlinkError> {
    let mut out = Vec::new();
    for message in dump(nl, AddressFamily::Inet, index).await? {
        if message.header.state != NeighbourState::Permanent {
            continue;
        }
        let mut mac = None;
        let mut ip = None;
        for attribute in &message.attributes {
            match attribute {
                NeighbourAttribute::LinkLayerAddress(lla) => mac = mac_of(lla),
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
                _ => {}
            }
        }
        if let (Some(ip), Some(mac)) = (ip, mac) {
            out.push((ip, mac, message));
        }
    }
    Ok(out)
}

pub async fn delete(nl: &Netlink, message: NeighbourMessage) -> Result<(), NetlinkError> {
    let index = message.header.ifindex;
    match nl.handle().neighbours().del(message).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == libc::ENOENT => Ok(()),
        Err(e) => Err(request_err("delete neighbour", index)(e)),
    }
}

/// `bridge fdb replace MAC dev VX dst UNDERLAY` (one destination per MAC: a sandbox
/// lives on one host).
pub async fn add_fdb(nl: &Netlink, index: u32, mac: [u8; 6], underlay: Ipv4Addr) -> Result<(), NetlinkError> {
    nl.handle()
        .neighbours()
        .add_bridge(index, &mac)
        .flags(NeighbourFlags::Own)
        .state(NeighbourState::Permanent)
        .destination(IpAddr::V4(underlay))
        .replace()
        .execute()
        .await
        .map_err(request_err("add fdb entry", index))
}

/// `ip neigh replace IP lladdr MAC dev VX nud permanent`.
pub async fn set_neighbour(nl: &Netlink, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), NetlinkError> {
    nl.handle()
        .neighbours()
        .add(index, IpAddr::V4(ip))
        .link_layer_address(&mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(request_err("set neighbour", index))
}

/// Brings the device's FDB and neighbour entries to exactly `peers`. Returns how many
/// entries it added and removed.
pub async fn program(nl: &Netlink, index: u32, peers: &[Peer]) -> Result<(usize, usize), NetlinkError> {
    let (mut added, mut removed) = (0, 0);
    // One dump per table: what is kept is what the additions are checked against.
    let mut present = Vec::new();
    for (mac, dst, message) in fdb(nl, index).await? {
        if peers.iter().any(|p| p.mac == mac && p.underlay == dst) {
            present.push((mac, dst));
        } else {
            delete(nl, message).await?;
            removed += 1;
        }
    }
    for peer in peers {
        if !present.contains(&(peer.mac, peer.underlay)) {
            add_fdb(nl, index, peer.mac, peer.underlay).await?;
            added += 1;
        }
    }
    let neighbours = neighbours(nl, index).await?;
    for (ip, mac, message) in &neighbours {
        if !peers.iter().any(|p| p.ip == *ip && p.mac == *mac) {
            delete(nl, message.clone()).await?;
            removed += 1;
        }
    }
    for peer in peers {
        if !neighbours
            .iter()
            .any(|(ip, mac, _)| *ip == peer.ip && *mac == peer.mac)
        {
            set_neighbour(nl, index, peer.ip, peer.mac).await?;
            added += 1;
        }
    }
    Ok((added, removed))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}
