//! Rewrites with incremental checksum updates through the kernel helpers, which also handle
//! CHECKSUM_PARTIAL skbs (locally generated TCP/UDP with offloaded checksums).
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::bpf_csum_update,
    programs::TcContext,
};
use nat_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

use crate::{
    conntrack::Tuple,
    family::Family,
    parse::{Fragment, Packet},
};

/// The IPv4 header checksum's offset in the header (IPv6 has none).
const IP_CSUM_AT: usize = 10;

pub struct CsumError;

/// Where the L4 checksum sits and the helper flags it needs.
#[inline(always)]
pub fn l4_csum(proto: u8, l4: usize) -> Option<(usize, u64)> {
    match proto {
        PROTO_TCP => Some((l4 + 16, 0)),
        // A UDP checksum of 0 means "none" and must stay 0; MARK_MANGLED_0 makes the helper
        // leave it alone and never produce a 0 from a real checksum.
        PROTO_UDP => Some((l4 + 6, u64::from(BPF_F_MARK_MANGLED_0))),
        PROTO_ICMP | PROTO_ICMPV6 => Some((l4 + 2, 0)),
        _ => None,
    }
}

/// Whether the L4 checksum covers the addresses: TCP, UDP and ICMPv6 have a
/// pseudo-header, ICMP (IPv4) does not; later fragments carry no L4 header.
#[inline(always)]
fn pseudo_header<A: Family>(packet: &Packet<A>) -> bool {
    !(A::VERSION == 4 && packet.proto == PROTO_ICMP) && packet.fragment != Fragment::Later
}

/// An L4 checksum update by `diff` of a pseudo-header field (an address). On a
/// CHECKSUM_COMPLETE skb the helper also moves skb->csum by the difference, which IPv4's
/// header checksum change cancels; IPv6 has none, so the move is undone here
/// (`bpf_csum_update` touches only CHECKSUM_COMPLETE skbs). Linux 6.16 added `BPF_F_IPV6`
/// for the same; this works on every kernel natd runs on.
#[inline(always)]
pub fn l4_pseudo_replace<A: Family>(ctx: &TcContext, at: usize, diff: u32, flags: u64) -> Result<(), i64> {
    ctx.l4_csum_replace(at, 0, u64::from(diff), flags | u64::from(BPF_F_PSEUDO_HDR))?;
    if A::VERSION == 6 {
        // SAFETY: a valid skb context.
        unsafe { bpf_csum_update(ctx.skb.skb, diff) };
    }
    Ok(())
}

#[inline(always)]
fn set_addr<A: Family>(ctx: &TcContext, packet: &mut Packet<A>, src: bool, new: A) -> Result<(), CsumError> {
    let (offset, old) = if src {
        (packet.l3 + A::SRC_AT, packet.src)
    } else {
        (packet.l3 + A::DST_AT, packet.dst)
    };
    if old == new {
        return Ok(());
    }
    let diff = A::csum_diff1(&old, &new);
    ctx.store(offset, &new, 0).map_err(|_| CsumError)?;
    if A::VERSION == 4 {
        ctx.l3_csum_replace(packet.l3 + IP_CSUM_AT, 0, u64::from(diff), 0)
            .map_err(|_| CsumError)?;
    }
    if pseudo_header(packet)
        && let Some((csum, flags)) = l4_csum(packet.proto, packet.l4)
    {
        l4_pseudo_replace::<A>(ctx, csum, diff, flags).map_err(|_| CsumError)?;
    }
    if src {
        packet.src = new;
    } else {
        packet.dst = new;
    }
    Ok(())
}

#[inline(always)]
fn set_port<A: Family>(
    ctx: &TcContext,
    packet: &mut Packet<A>,
    src: bool,
    new: u16,
) -> Result<(), CsumError> {
    let old = if src { packet.sport } else { packet.dport };
    if old == new || packet.fragment == Fragment::Later {
        return Ok(());
    }
    // ICMP echo: the id (kept as sport of requests and dport of replies) sits at offset 4.
    let offset = match (packet.proto, src) {
        (p, _) if p == A::ICMP => packet.l4 + 4,
        (_, true) => packet.l4,
        (_, false) => packet.l4 + 2,
    };
    let Some((csum, flags)) = l4_csum(packet.proto, packet.l4) else {
        return Ok(());
    };
    ctx.store(offset, &new, 0).map_err(|_| CsumError)?;
    ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), flags | 2)
        .map_err(|_| CsumError)?;
    if src {
        packet.sport = new;
    } else {
        packet.dport = new;
    }
    Ok(())
}

/// Rewrites the packet into `to`, touching only the fields that differ.
#[inline(always)]
pub fn rewrite<A: Family>(ctx: &TcContext, packet: &mut Packet<A>, to: &Tuple<A>) -> Result<(), CsumError> {
    set_addr(ctx, packet, true, to.src)?;
    set_port(ctx, packet, true, to.sport)?;
    set_addr(ctx, packet, false, to.dst)?;
    set_port(ctx, packet, false, to.dport)
}
