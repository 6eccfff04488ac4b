//! IPv6 that stays on the link: neighbour discovery (NS/NA, router solicitations), MLD,
//! link-local and multicast traffic. natd never translates it, but it is not a way around
//! the policy either: at an edge only the host's own link traffic passes here (what is
//! aimed at a sandbox or sent from one takes the normal path: dropped as direct access or
//! as untranslated); a sandbox may resolve and be resolved from its own addresses, on its
//! own link, never announce itself as a router (router advertisements, redirects: the
//! CVE-2020-13401 class), never advertise (or probe for, RFC 4862 DAD) an address that is
//! not its own, and with icc off reaches nothing on the link but its gateway.
use aya_ebpf::programs::TcContext;
use nat_common::{Addr6, IfaceConfig, PROTO_ICMPV6, TC_PASS, counter, net};

use crate::{
    family::{Family, LOOPBACK6, is_link_local6, is_multicast6, words6},
    lookup,
    parse::Ipv6Packet,
    policy,
};

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// RFC 4861 4.3/4.4: the target address follows the type, code, checksum and 4 bytes.
const ND_TARGET_AT: usize = 8;
const REDIRECT: u8 = 137;
/// RFC 4861: neighbour discovery is never forwarded, its hop limit is always 255.
const ND_HOP_LIMIT: u8 = 255;
/// natd's IPv6 bridges carry fe80::1 (the sandboxes' link-local gateway).
const GATEWAY_LINK_LOCAL: Addr6 = [
    u32::from_ne_bytes([0xfe, 0x80, 0, 0]),
    0,
    0,
    u32::from_ne_bytes([0, 0, 0, 1]),
];

#[inline(always)]
fn icmp_type(p: &Ipv6Packet) -> Option<u8> {
    (p.proto == PROTO_ICMPV6).then_some(p.icmp_type)
}

/// Neighbour discovery proper (133-137: router and neighbour solicitations and
/// advertisements, redirects), or MLD (multicast listener queries/reports, which the
/// bridge's snooping needs).
#[inline(always)]
fn link_protocol(p: &Ipv6Packet) -> bool {
    match icmp_type(p) {
        Some(ROUTER_SOLICITATION..=REDIRECT) => p.ttl == ND_HOP_LIMIT,
        Some(130..=132 | 143) => is_multicast6(p.dst),
        _ => false,
    }
}

/// Whether the packet belongs to the link (else the normal path judges it).
#[inline(always)]
fn link_scope(p: &Ipv6Packet) -> bool {
    link_protocol(p) || is_multicast6(p.dst) || is_link_local6(p.dst) || is_link_local6(p.src)
}

/// At an edge: the host's own link traffic passes untouched. `None`: not that.
#[inline(never)]
pub fn at_edge(p: &Ipv6Packet, ingress: bool) -> Option<i32> {
    if !link_scope(p) {
        return None;
    }
    let host_side = if ingress {
        is_link_local6(p.dst) || is_multicast6(p.dst) || lookup::is_local(p.dst)
    } else {
        is_link_local6(p.src) || p.src.is_zero() || lookup::is_local(p.src)
    };
    host_side.then_some(TC_PASS)
}

/// At a sandbox veth. `None`: not link traffic, the normal path judges it.
#[inline(never)]
pub fn at_sandbox(ctx: &TcContext, p: &Ipv6Packet, own: &IfaceConfig) -> Option<i32> {
    if !link_scope(p) {
        return None;
    }
    if matches!(icmp_type(p), Some(ROUTER_ADVERTISEMENT | REDIRECT)) {
        return Some(policy::drop(counter::DROP_ROGUE_ND));
    }
    let own_addr = words6(own.addr6);
    // fe80::1 is the gateway's (the host's) link-local address, never a sandbox's.
    let own_link_local = |a: Addr6| is_link_local6(a) && a != GATEWAY_LINK_LOCAL;
    if !(own_link_local(p.src) || p.src.is_zero() || (!own_addr.is_zero() && p.src == own_addr)) {
        return Some(policy::drop(counter::DROP_SPOOFED_SOURCE));
    }
    // An advertisement is about its target, and so is duplicate address detection (a
    // solicitation from ::, which makes the target's owner give it up): only its own
    // address, or the link-local address it sends from (DAD: any but the gateway's).
    let kind = icmp_type(p);
    if kind == Some(NEIGHBOR_ADVERTISEMENT) || (kind == Some(NEIGHBOR_SOLICITATION) && p.src.is_zero()) {
        let own_target = match ctx.load::<Addr6>(p.l4 + ND_TARGET_AT) {
            Ok(target) => {
                (!own_addr.is_zero() && target == own_addr)
                    || (own_link_local(target) && (p.src.is_zero() || target == p.src))
            }
            Err(_) => false,
        };
        if !own_target {
            return Some(policy::drop(counter::DROP_LINK_SPOOF));
        }
    }
    let on_link = is_link_local6(p.dst)
        || is_multicast6(p.dst)
        || lookup::is_local(p.dst)
        || Addr6::network_of(p.dst).is_some_and(|n| n.network_id == own.network_id);
    if link_protocol(p) {
        return Some(if on_link {
            TC_PASS
        } else {
            policy::drop(counter::DROP_ROGUE_ND)
        });
    }
    if p.dst == LOOPBACK6 {
        return Some(policy::drop(counter::DROP_LOOPBACK_SPOOF));
    }
    // Other traffic to link-local or multicast addresses: the network's own link. With
    // icc off only the gateway (fe80::1, the host) is reachable there.
    let icc = lookup::network(own.network_id).is_some_and(|n| n.flags & net::ICC != 0);
    if is_link_local6(p.dst) || is_multicast6(p.dst) {
        return Some(if icc || p.dst == GATEWAY_LINK_LOCAL {
            TC_PASS
        } else {
            policy::drop(counter::DROP_ICC)
        });
    }
    // A link-local source towards a routable destination: not the link's, and not a
    // source the sandbox may route with.
    Some(policy::drop(counter::DROP_SPOOFED_SOURCE))
}
