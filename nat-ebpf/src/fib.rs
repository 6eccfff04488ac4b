//! Route lookups for new outbound flows of the fast path: the kernel's own FIB answers
//! which interface a sandbox's packet would leave by and with which link-layer addresses,
//! so the flow can bypass the host's forwarding and still go where routing says.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup,
    },
    helpers::generated::bpf_fib_lookup as fib_lookup,
    programs::TcContext,
};

use crate::{family::Family, parse::Packet};

#[derive(Default)]
pub struct Route {
    pub ifindex: u32,
    /// Whether the packet fits the route's MTU (one that does not is the kernel's to
    /// fragment or refuse, never the fast path's).
    pub fits: bool,
    /// Whether the next hop's link-layer address is known (`smac`/`dmac` are set).
    pub resolved: bool,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// The route of the packet as if it arrived on `in_ifindex` (a network's bridge: what
/// the kernel's forwarding would see). The MTU is checked by the kernel against the skb
/// (GSO-aware) because no length is given. False: no usable route.
#[inline(never)]
pub fn route<A: Family>(ctx: &TcContext, in_ifindex: u32, packet: &Packet<A>, out: &mut Route) -> bool {
    // SAFETY: an all-zero bpf_fib_lookup is a valid request; fields are set below.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    A::fib_fill(&mut params, packet.src, packet.dst);
    params.l4_protocol = packet.proto;
    params.sport = packet.sport;
    params.dport = packet.dport;
    params.ifindex = in_ifindex;
    // SAFETY: valid context and parameter block of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    out.ifindex = params.ifindex;
    out.fits = rc != i64::from(BPF_FIB_LKUP_RET_FRAG_NEEDED);
    if rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        out.resolved = true;
        out.smac = params.smac;
        out.dmac = params.dmac;
        true
    } else {
        rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) || !out.fits
    }
}
