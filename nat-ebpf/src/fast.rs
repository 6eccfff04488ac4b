//! Forwarding of a tracked flow's packet. A flow that bypasses the host (`ct::FAST`,
//! decided for both directions at its first packet) is rewritten with direct writes and
//! redirected: into the sandbox with `bpf_redirect_peer` (skipping the host's routing, the
//! bridge and the backlog), out of a sandbox straight to the edge's egress. A packet the
//! kernel must handle itself (TTL about to expire, larger than the next link's MTU, IP
//! options) and every packet of a flow that does not bypass the host are rewritten with
//! the checksum helpers and left to the kernel.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, TC_ACT_SHOT},
    helpers::generated::{bpf_csum_update, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use nat_common::{CtEntry, FASTPATH_MARK, PROTO_TCP, PROTO_UDP, counter, csum, ct};

use crate::{
    conntrack::{Tuple, TupleOps},
    counters::bump,
    family::Family,
    nat,
    parse::{IP, Packet, ptr_at},
};

/// Where the packet goes next.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    /// Into a sandbox (from an edge).
    Sandbox,
    /// Out of an edge (from a sandbox).
    Edge,
}

/// `forward` for the paths that start flows: a call of its own, so their stack frames
/// stay within the verifier's limit (the established path inlines `forward`).
#[inline(never)]
pub fn forward_cold<A: Family>(
    ctx: &TcContext,
    packet: &mut Packet<A>,
    entry: &CtEntry<A>,
    toward: Toward,
) -> i32 {
    forward(ctx, packet, entry, toward)
}

#[inline(always)]
pub fn forward<A: Family>(
    ctx: &TcContext,
    packet: &mut Packet<A>,
    entry: &CtEntry<A>,
    toward: Toward,
) -> i32 {
    let to = Tuple::of_entry(entry, packet.proto);
    if entry.flags & ct::FAST == 0 || !nat::fast_path_on() {
        // Switched off (a firewall appeared): flows that bypassed the host go through it
        // from the next packet on.
        return nat::apply(ctx, packet, &to);
    }
    if !packet.direct || (packet.proto != PROTO_TCP && packet.proto != PROTO_UDP) {
        bump(counter::SLOW_HEADER);
        return nat::apply(ctx, packet, &to);
    }
    if packet.ttl <= 1 {
        // The kernel answers with time-exceeded (traceroute).
        bump(counter::SLOW_TTL);
        return nat::apply(ctx, packet, &to);
    }
    if exceeds_mtu(ctx, packet, entry.mtu) {
        // The kernel answers with fragmentation-needed / packet-too-big (PMTU discovery).
        bump(counter::SLOW_MTU);
        return nat::apply(ctx, packet, &to);
    }
    if rewrite(ctx, packet, entry).is_none() {
        // A half-rewritten packet must not leave: drop it.
        bump(counter::CSUM_ERROR);
        return TC_ACT_SHOT;
    }
    // SAFETY: redirect helpers only record the target; the kernel acts on the verdict.
    unsafe {
        match toward {
            Toward::Sandbox => {
                bump(counter::FAST_TO_SANDBOX);
                bpf_redirect_peer(entry.out_ifindex, 0) as i32
            }
            Toward::Edge => {
                // The edge's egress program passes marked packets on untouched.
                ctx.set_mark(FASTPATH_MARK);
                if entry.flags & ct::NEIGH != 0 {
                    bump(counter::FAST_TO_EDGE_NEIGH);
                    bpf_redirect_neigh(entry.out_ifindex, core::ptr::null_mut(), 0, 0) as i32
                } else {
                    bump(counter::FAST_TO_EDGE);
                    bpf_redirect(entry.out_ifindex, 0) as i32
                }
            }
        }
    }
}

/// Whether the packet (each of its segments, for a GSO packet: the kernel's
/// `skb_gso_validate_network_len`) is larger than `mtu`, as the route the kernel would
/// have taken (the bridge, the edge) allows.
#[inline(always)]
fn exceeds_mtu<A: Family>(ctx: &TcContext, packet: &Packet<A>, mtu: u16) -> bool {
    // SAFETY: gso_size is always readable in a TC context.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return packet.tot_len > u32::from(mtu);
    }
    let l4_header = if packet.proto == PROTO_TCP {
        u32::from(packet.tcp_hlen)
    } else {
        8
    };
    A::IP_HLEN as u32 + l4_header + gso_size > u32::from(mtu)
}

/// Rewrites a `direct` packet into the entry's tuple: link-layer addresses, TTL / hop
/// limit, addresses and (IPv4) the header checksum written directly (the IP checksum from
/// the entry's precomputed difference), then the L4 checksum with two helper calls,
/// addresses with the pseudo-header flag and ports without: folding the ports into the
/// pseudo-header call would corrupt CHECKSUM_PARTIAL packets, whose field holds only the
/// pseudo-header sum.
#[inline(always)]
fn rewrite<A: Family>(ctx: &TcContext, packet: &mut Packet<A>, entry: &CtEntry<A>) -> Option<()> {
    let l4 = IP + A::IP_HLEN;
    let eth: *mut [u8; 12] = ptr_at(ctx, 0)?;
    let ttl: *mut u8 = ptr_at(ctx, IP + A::TTL_AT)?;
    let addrs: *mut [A; 2] = ptr_at(ctx, IP + A::SRC_AT)?;
    let ports: *mut [u16; 2] = ptr_at(ctx, l4)?;
    let old_ttl: u8;
    // SAFETY: all pointers are bounds-checked; nothing below changes the packet until the
    // checksum helpers, after the last direct access.
    unsafe {
        if entry.flags & ct::NEIGH == 0 {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&entry.dmac);
            macs[6..].copy_from_slice(&entry.smac);
            eth.write_unaligned(macs);
        }
        old_ttl = ttl.read();
        ttl.write(old_ttl - 1);
        if A::VERSION == 4 {
            // TTL and protocol share a 16-bit word of the header checksum.
            let check: *mut u16 = ptr_at(ctx, IP + 10)?;
            let ttl_word = u16::from_ne_bytes([old_ttl, packet.proto]);
            let new_ttl_word = u16::from_ne_bytes([old_ttl - 1, packet.proto]);
            let diff = csum::add(entry.addr_csum, csum::diff16(ttl_word, new_ttl_word));
            check.write_unaligned(csum::replace(check.read_unaligned(), diff));
        }
        addrs.write_unaligned([entry.src, entry.dst]);
        ports.write_unaligned([entry.sport, entry.dport]);
    }
    let (at, flags) = match packet.proto {
        PROTO_TCP => (l4 + 16, 0u64),
        // A UDP checksum of 0 means "none" and must stay 0.
        _ => (l4 + 6, u64::from(BPF_F_MARK_MANGLED_0)),
    };
    crate::csum::l4_pseudo_replace::<A>(ctx, at, entry.addr_csum, flags).ok()?;
    if A::VERSION == 6 {
        // The hop limit is covered by a CHECKSUM_COMPLETE skb's checksum and by no header
        // checksum: move skb->csum by its change (a no-op for other skbs).
        let (before, after) = (
            u16::from_ne_bytes([packet.proto, old_ttl]),
            u16::from_ne_bytes([packet.proto, old_ttl - 1]),
        );
        // SAFETY: a valid skb context.
        unsafe { bpf_csum_update(ctx.skb.skb, csum::diff16(before, after)) };
    }
    ctx.l4_csum_replace(at, 0, u64::from(entry.port_csum), flags)
        .ok()?;
    packet.src = entry.src;
    packet.dst = entry.dst;
    packet.sport = entry.sport;
    packet.dport = entry.dport;
    Some(())
}
