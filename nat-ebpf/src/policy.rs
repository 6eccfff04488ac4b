//! Isolation, decided in the kernel for traffic that no translation claimed: networks
//! cannot reach each other's addresses, `icc=false` keeps sandboxes of one network apart,
//! `internal` networks have no way out, and nobody outside reaches a sandbox address
//! directly.
use nat_common::{counter, net};

use crate::{
    counters::bump,
    family::{Family, Net},
    lookup::is_local,
};

/// `Some(counter)`: drop and count.
pub type Decision = Option<u32>;

#[inline(always)]
pub fn network_of<A: Family>(addr: A) -> Option<Net<A>> {
    A::network_of(addr)
}

/// A packet a sandbox of network `own` sends.
#[inline(never)]
pub fn from_sandbox<A: Family>(own: &Net<A>, dst: A) -> Decision {
    if is_local(dst) {
        // The host itself (gateway, uplink addresses) is reachable, as with Docker.
        return None;
    }
    match network_of(dst) {
        Some(other) if other.network_id != own.network_id => Some(counter::DROP_CROSS_NETWORK),
        Some(_) if own.flags & net::ICC == 0 => Some(counter::DROP_ICC),
        Some(_) => None,
        None if own.flags & net::INTERNAL != 0 => Some(counter::DROP_INTERNAL),
        None => None,
    }
}

/// A packet arriving on an uplink that no translation claimed.
#[inline(always)]
pub fn from_outside<A: Family>(dst: A) -> Decision {
    if dst.is_loopback() {
        // 127.0.0.0/8 never arrives from a wire legitimately (CVE-2020-8558 class).
        return Some(counter::DROP_LOOPBACK_SPOOF);
    }
    if !is_local(dst) && network_of(dst).is_some() {
        return Some(counter::DROP_DIRECT_ACCESS);
    }
    None
}

#[inline(always)]
pub fn enforce(decision: Decision) -> i32 {
    match decision {
        Some(reason) => drop(reason),
        None => aya_ebpf::bindings::TC_ACT_OK,
    }
}

/// Drops the packet and counts why.
#[inline(always)]
pub fn drop(reason: u32) -> i32 {
    bump(reason);
    aya_ebpf::bindings::TC_ACT_SHOT
}
