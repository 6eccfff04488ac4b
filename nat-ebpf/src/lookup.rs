//! The host-side lookups every hook shares: is an address the host's own, which sandbox
//! port a published host address and port lead to, and where a sandbox endpoint is. TC
//! programs and socket hooks both use `published`, so "which mapping applies" is decided
//! in one place.
use nat_common::{EndpointInfo, IfaceConfig, NatConfig, NetInfo4, PortKey, PortTarget};

use crate::{family::Family, maps};

#[inline(always)]
pub fn port_key<A: Family>(addr: A, port: u16, proto: u8) -> PortKey<A> {
    PortKey {
        addr,
        port,
        proto,
        _pad: 0,
    }
}

/// One of the host's own addresses (Docker's `--dst-type LOCAL`).
#[inline(always)]
pub fn is_local<A: Family>(addr: A) -> bool {
    A::local().get_ptr(&addr).is_some()
}

/// Whether `port` of `addr` is published at all (bound to `addr` or to every address):
/// masquerade never hands out such a port as a NAT port.
#[inline(always)]
pub fn is_published_port<A: Family>(addr: A, port: u16, proto: u8) -> bool {
    A::ports().get_ptr(&port_key(addr, port, proto)).is_some()
        || A::ports().get_ptr(&port_key(A::default(), port, proto)).is_some()
}

/// The mapping for a destination: bound to every address when the destination is one of
/// the host's own (or loopback, for the host's own sockets), or bound to that address,
/// which must be the host's too: a mapping bound to an address that left the host does
/// not translate transit traffic to it (nor does it answer until the address is back).
/// A port is never published both ways on host addresses (0.0.0.0 conflicts with every
/// address), so the common case, 0.0.0.0, is looked up first. A destination that is not
/// the host's own matches only an open container port: a sandbox's address and port
/// translated to themselves (routed mode, trusted edges, `allow-direct-routing`).
#[inline(always)]
pub fn published<A: Family>(dst: A, dport: u16, proto: u8) -> Option<&'static PortTarget<A>> {
    let local = dst.is_loopback() || is_local(dst);
    // SAFETY (both): valid map value pointers, read right away.
    if local && let Some(target) = A::ports().get_ptr(&port_key(A::default(), dport, proto)) {
        return Some(unsafe { &*target });
    }
    let target = unsafe { &*A::ports().get_ptr(&port_key(dst, dport, proto))? };
    (local || (target.addr == dst && target.port == dport)).then_some(target)
}

/// A reference into the map, as `iface`.
#[inline(always)]
pub fn endpoint<A: Family>(addr: A) -> Option<&'static EndpointInfo> {
    // SAFETY: valid map value pointer, read right away.
    A::endpoints().get_ptr(&addr).map(|e| unsafe { &*e })
}

/// A reference into the map, not a copy (the IPv6 paths cannot spare the stack); the
/// callers read a few fields at once.
#[inline(always)]
pub fn iface(ifindex: u32) -> Option<&'static IfaceConfig> {
    // SAFETY: valid map value pointer, read right away.
    maps::NATD_IFACE_CONFIG.get_ptr(&ifindex).map(|c| unsafe { &*c })
}

#[inline(always)]
pub fn network(id: u32) -> Option<NetInfo4> {
    // SAFETY: valid map value pointer; copied out at once.
    maps::NATD_NETWORKS.get_ptr(&id).map(|n| unsafe { *n })
}

#[inline(always)]
pub fn config() -> NatConfig {
    maps::NATD_CONFIG.get(0).copied().unwrap_or_default()
}

/// The generation a slot has now (0 when the slot is out of range).
#[inline(always)]
pub fn generation(slot: u32) -> u32 {
    maps::NATD_GENERATIONS.get(slot).copied().unwrap_or(0)
}

/// The interface a TC program runs on.
#[inline(always)]
pub fn ifindex(ctx: &aya_ebpf::programs::TcContext) -> u32 {
    // SAFETY: the ifindex field is always readable in a TC context.
    unsafe { (*ctx.skb.skb).ifindex }
}
