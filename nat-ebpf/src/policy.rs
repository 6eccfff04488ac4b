//! Isolation, decided in the kernel for traffic that no translation claimed: networks
//! cannot reach each other's addresses, `icc=false` keeps sandboxes of one network apart,
//! `internal` networks have no way out, and nothing arriving on an edge reaches a sandbox
//! address directly unless the network allows it (routed mode, a trusted edge, the
//! daemon's `allow-direct-routing`) and then only on a published container port.
use aya_ebpf::{bindings::BPF_F_INGRESS, helpers::generated::bpf_redirect};
use nat_common::{TC_PASS, TrustKey, config, counter, net};

use crate::{
    counters::bump,
    family::{Family, Net},
    lookup::{self, is_local},
    maps,
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
        // The host itself (gateway, edge addresses) is reachable, as with Docker.
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

/// A packet arriving on edge `edge` that no translation claimed. Aimed at a sandbox
/// address it is dropped, counted by why: the edge may not reach the network directly
/// (`drop_direct_access`), or it may but the port is not a published one
/// (`drop_direct_unpublished`).
#[inline(never)]
pub fn from_outside<A: Family>(edge: u32, dst: A) -> Decision {
    if dst.is_loopback() {
        // 127.0.0.0/8 never arrives from a wire legitimately (CVE-2020-8558 class).
        return Some(counter::DROP_LOOPBACK_SPOOF);
    }
    if is_local(dst) {
        return None;
    }
    let network = network_of(dst)?;
    if network.flags & net::ROUTED != 0 || direct_routing() || trusts(edge, network.network_id) {
        return Some(counter::DROP_DIRECT_UNPUBLISHED);
    }
    Some(counter::DROP_DIRECT_ACCESS)
}

/// Whether a published container port on a sandbox's own address that only trusted
/// edges may use (`port::TRUSTED_ONLY`) is open to a packet from `edge`.
#[inline(never)]
pub fn trusted_from<A: Family>(edge: u32, dst: A) -> bool {
    network_of(dst).is_some_and(|n| trusts(edge, n.network_id))
}

/// The daemon's `allow-direct-routing`: any edge reaches published container ports on
/// sandbox addresses.
#[inline(always)]
fn direct_routing() -> bool {
    lookup::config().flags & config::DIRECT_ROUTING != 0
}

#[inline(always)]
fn trusts(edge: u32, network_id: u32) -> bool {
    let key = TrustKey {
        ifindex: edge,
        network_id,
    };
    maps::NATD_TRUSTED.get_ptr(&key).is_some()
}

#[inline(always)]
pub fn enforce(decision: Decision) -> i32 {
    match decision {
        Some(reason) => drop(reason),
        None => TC_PASS,
    }
}

/// With icc off, a sandbox's broadcast or multicast reaches the host only: it is handed
/// to the bridge's own receive path instead of being flooded to the other sandboxes (as
/// Docker's bridge-to-bridge drop under br_netfilter leaves it), and counted as `drop_icc`.
#[inline(never)]
pub fn to_host_only(bridge_ifindex: u32) -> i32 {
    bump(counter::DROP_ICC);
    // SAFETY: records the redirect target only.
    unsafe { bpf_redirect(bridge_ifindex, u64::from(BPF_F_INGRESS)) as i32 }
}

/// Drops the packet and counts why.
#[inline(always)]
pub fn drop(reason: u32) -> i32 {
    bump(reason);
    aya_ebpf::bindings::TC_ACT_SHOT
}
