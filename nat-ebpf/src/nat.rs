//! Translation on the uplink: published ports (DNAT) on ingress, masquerade (SNAT) on
//! egress, and the reverse of each through the connection table. Both directions of every
//! flow cross the uplink, so the sandbox veths need no translation of their own.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_get_prandom_u32,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use nat_common::{
    AddrKey, CtEntry, CtKey, FAMILY_V4, PROTO_ICMP, PortKey, PortTarget, SNAT_PORT_TRIES, counter, ct,
};

use crate::{
    conntrack::{self, InsertError, v4_addr, v4_raw},
    counters::bump,
    csum::{self, Side},
    maps,
    parse::{Fragment, ICMP_ECHO_REQUEST, Ipv4Packet},
};

pub type Verdict = i32;

#[inline(always)]
fn apply(ctx: &TcContext, packet: &mut Ipv4Packet, entry: &CtEntry) -> Verdict {
    let side = if entry.rewrite == ct::REWRITE_SRC { Side::Src } else { Side::Dst };
    let result = csum::set_addr(ctx, packet, side, v4_raw(&entry.addr))
        .and_then(|()| csum::set_port(ctx, packet, side, entry.port));
    match result {
        Ok(()) => TC_ACT_OK,
        Err(_) => {
            // A half-rewritten packet must not leave: drop it.
            bump(counter::CSUM_ERROR);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn port_key(addr: u32, port: u16, proto: u8) -> PortKey {
    PortKey { addr: v4_addr(addr), port, proto, family: FAMILY_V4 }
}

/// The published mapping for a destination: bound to that address, or to every address
/// when the destination is one of the host's own (Docker's `--dst-type LOCAL`).
#[inline(always)]
fn published(dst: u32, dport: u16, proto: u8) -> Option<PortTarget> {
    if let Some(target) = maps::NATD_PORTS.get_ptr(port_key(dst, dport, proto)) {
        // SAFETY: valid map value pointer; copied out at once.
        return Some(unsafe { *target });
    }
    let local = AddrKey { addr: v4_addr(dst), family: FAMILY_V4, _pad: [0; 3] };
    maps::NATD_LOCAL_ADDRS.get_ptr(local)?;
    // SAFETY: as above.
    maps::NATD_PORTS.get_ptr(port_key(0, dport, proto)).map(|t| unsafe { *t })
}

fn reverse_of_translated(key: &CtKey, entry: &CtEntry) -> CtKey {
    let mut translated = *key;
    if entry.rewrite == ct::REWRITE_SRC {
        translated.src = entry.addr;
        translated.sport = entry.port;
    } else {
        translated.dst = entry.addr;
        translated.dport = entry.port;
    }
    CtKey {
        src: translated.dst,
        dst: translated.src,
        sport: translated.dport,
        dport: translated.sport,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    }
}

/// Uplink ingress: replies to masqueraded flows and new or established connections to
/// published ports.
#[inline(always)]
pub fn uplink_ingress(ctx: &TcContext, packet: &mut Ipv4Packet) -> Verdict {
    if packet.fragment == Fragment::Later || !packet.translatable() {
        return TC_ACT_OK;
    }
    let key = conntrack::packet_key(packet);
    if let Some(entry) = maps::NATD_CT.get_ptr_mut(&key) {
        // SAFETY: valid map value pointer; copied so later map updates cannot alias it.
        let copy = unsafe { *entry };
        match copy.kind {
            ct::DNAT_FORWARD => {
                let live = published(packet.dst, packet.dport, packet.proto)
                    .is_some_and(|t| t.mapping_id == copy.mapping_id);
                if live {
                    conntrack::touch(entry, packet, ctx.len());
                    bump(counter::DNAT_ESTABLISHED);
                    return apply(ctx, packet, &copy);
                }
                // The mapping was removed or changed: the flow is gone with it.
                let _ = maps::NATD_CT.remove(&reverse_of_translated(&key, &copy));
                let _ = maps::NATD_CT.remove(&key);
                bump(counter::STALE_MAPPING);
            }
            ct::SNAT_REPLY => {
                conntrack::touch(entry, packet, ctx.len());
                bump(counter::SNAT_REPLY);
                return apply(ctx, packet, &copy);
            }
            _ => return TC_ACT_OK,
        }
    }
    if packet.proto == PROTO_ICMP {
        return TC_ACT_OK;
    }
    let Some(target) = published(packet.dst, packet.dport, packet.proto) else {
        return TC_ACT_OK;
    };
    let target_addr = v4_raw(&target.addr);
    let forward = conntrack::new_entry(ct::DNAT_FORWARD, ct::REWRITE_DST, target_addr, target.port, target.mapping_id, packet.proto);
    let reply_key = conntrack::key_v4(target_addr, packet.src, target.port, packet.sport, packet.proto);
    let reply = conntrack::new_entry(ct::DNAT_REPLY, ct::REWRITE_SRC, packet.dst, packet.dport, target.mapping_id, packet.proto);
    match conntrack::insert_pair(&key, &forward, &reply_key, &reply) {
        Ok(()) => {}
        Err(InsertError::Clash) => {
            bump(counter::DROP_TUPLE_CLASH);
            return TC_ACT_SHOT;
        }
        Err(InsertError::Full) => {
            bump(counter::DROP_CT_FULL);
            return TC_ACT_SHOT;
        }
    }
    if let Some(entry) = maps::NATD_CT.get_ptr_mut(&key) {
        conntrack::touch(entry, packet, ctx.len());
    }
    bump(counter::DNAT_NEW);
    apply(ctx, packet, &forward)
}

/// Uplink egress: replies of published-port flows and masquerade of sandbox traffic.
#[inline(always)]
pub fn uplink_egress(ctx: &TcContext, packet: &mut Ipv4Packet) -> Verdict {
    let masq = maps::NATD_MASQ_V4.get(Key::new(32, packet.src.to_ne_bytes())).is_some();
    if packet.fragment == Fragment::Later {
        // Without ports a later fragment cannot be translated; letting it out would leak a
        // sandbox address.
        if masq {
            bump(counter::DROP_FRAGMENT);
            return TC_ACT_SHOT;
        }
        return TC_ACT_OK;
    }
    if !packet.translatable() {
        return TC_ACT_OK;
    }
    let key = conntrack::packet_key(packet);
    if let Some(entry) = maps::NATD_CT.get_ptr_mut(&key) {
        // SAFETY: valid map value pointer, copied at once.
        let copy = unsafe { *entry };
        let counter_id = match copy.kind {
            ct::DNAT_REPLY => counter::DNAT_REPLY,
            ct::SNAT_FORWARD => counter::SNAT_ESTABLISHED,
            _ => return TC_ACT_OK,
        };
        conntrack::touch(entry, packet, ctx.len());
        bump(counter_id);
        return apply(ctx, packet, &copy);
    }
    if !masq || (packet.proto == PROTO_ICMP && packet.icmp_type != ICMP_ECHO_REQUEST) {
        return TC_ACT_OK;
    }
    masquerade_new(ctx, packet, &key)
}

#[inline(always)]
fn masquerade_new(ctx: &TcContext, packet: &mut Ipv4Packet, key: &CtKey) -> Verdict {
    // SAFETY: the ifindex field is always readable in a TC context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let uplink_addr = match maps::NATD_IFACE_CONFIG.get_ptr(ifindex) {
        // SAFETY: valid map value pointer.
        Some(config) if unsafe { (*config).family } == FAMILY_V4 => unsafe { v4_raw(&(*config).addr) },
        _ => {
            bump(counter::DROP_NO_UPLINK_ADDR);
            return TC_ACT_SHOT;
        }
    };
    let (min, max) = match maps::NATD_CONFIG.get(0) {
        Some(c) if c.snat_port_min != 0 && c.snat_port_min <= c.snat_port_max => (c.snat_port_min, c.snat_port_max),
        _ => (61000, 65535),
    };
    let span = u32::from(max - min) + 1;
    // Random start (RFC 6056): NAT ports must not be predictable.
    // SAFETY: no preconditions.
    let start = unsafe { bpf_get_prandom_u32() } % span;
    let reply_to = conntrack::new_entry(ct::SNAT_REPLY, ct::REWRITE_DST, packet.src, packet.sport, 0, packet.proto);
    let mut chosen: u16 = 0;
    for i in 0..SNAT_PORT_TRIES {
        let port_host = min as u32 + (start + i) % span;
        let port = (port_host as u16).to_be();
        if packet.proto != PROTO_ICMP
            && (maps::NATD_PORTS.get_ptr(port_key(uplink_addr, port, packet.proto)).is_some()
                || maps::NATD_PORTS.get_ptr(port_key(0, port, packet.proto)).is_some())
        {
            continue;
        }
        let reply_key = conntrack::key_v4(packet.dst, uplink_addr, packet.dport, port, packet.proto);
        match conntrack::insert_new(&reply_key, &reply_to) {
            Ok(()) => {
                chosen = port;
                break;
            }
            Err(InsertError::Clash) => continue,
            Err(InsertError::Full) => {
                bump(counter::DROP_CT_FULL);
                return TC_ACT_SHOT;
            }
        }
    }
    if chosen == 0 {
        bump(counter::DROP_NO_PORT);
        return TC_ACT_SHOT;
    }
    let forward = conntrack::new_entry(ct::SNAT_FORWARD, ct::REWRITE_SRC, uplink_addr, chosen, 0, packet.proto);
    if let Err(e) = conntrack::insert_new(key, &forward) {
        let reply_key = conntrack::key_v4(packet.dst, uplink_addr, packet.dport, chosen, packet.proto);
        let _ = maps::NATD_CT.remove(&reply_key);
        bump(match e {
            InsertError::Clash => counter::DROP_TUPLE_CLASH,
            InsertError::Full => counter::DROP_CT_FULL,
        });
        return TC_ACT_SHOT;
    }
    if let Some(entry) = maps::NATD_CT.get_ptr_mut(key) {
        conntrack::touch(entry, packet, ctx.len());
    }
    bump(counter::SNAT_NEW);
    apply(ctx, packet, &forward)
}
