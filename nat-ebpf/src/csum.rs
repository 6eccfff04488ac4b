//! Rewrites with incremental checksum updates through the kernel helpers, which also handle
//! CHECKSUM_PARTIAL skbs (locally generated TCP/UDP with offloaded checksums).
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use nat_common::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

use crate::{
    conntrack::Tuple,
    parse::{ETH_HLEN, Fragment, Ipv4Packet},
};

const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;

pub struct CsumError;

/// Where the L4 checksum sits and the helper flags it needs.
#[inline(always)]
pub fn l4_csum(proto: u8, l4: usize) -> Option<(usize, u64)> {
    match proto {
        PROTO_TCP => Some((l4 + 16, 0)),
        // A UDP checksum of 0 means "none" and must stay 0; MARK_MANGLED_0 makes the helper
        // leave it alone and never produce a 0 from a real checksum.
        PROTO_UDP => Some((l4 + 6, u64::from(BPF_F_MARK_MANGLED_0))),
        PROTO_ICMP => Some((l4 + 2, 0)),
        _ => None,
    }
}

#[inline(always)]
fn set_addr(ctx: &TcContext, packet: &mut Ipv4Packet, src: bool, new: u32) -> Result<(), CsumError> {
    let (offset, old) = if src {
        (IP_SRC, packet.src)
    } else {
        (IP_DST, packet.dst)
    };
    if old == new {
        return Ok(());
    }
    ctx.store(offset, &new, 0).map_err(|_| CsumError)?;
    ctx.l3_csum_replace(IP_CSUM, u64::from(old), u64::from(new), 4)
        .map_err(|_| CsumError)?;
    // ICMP's checksum does not cover a pseudo-header; later fragments carry no L4 header.
    if packet.proto != PROTO_ICMP
        && packet.fragment != Fragment::Later
        && let Some((csum, flags)) = l4_csum(packet.proto, packet.l4)
    {
        ctx.l4_csum_replace(
            csum,
            u64::from(old),
            u64::from(new),
            flags | u64::from(BPF_F_PSEUDO_HDR) | 4,
        )
        .map_err(|_| CsumError)?;
    }
    if src {
        packet.src = new;
    } else {
        packet.dst = new;
    }
    Ok(())
}

#[inline(always)]
fn set_port(ctx: &TcContext, packet: &mut Ipv4Packet, src: bool, new: u16) -> Result<(), CsumError> {
    let old = if src { packet.sport } else { packet.dport };
    if old == new || packet.fragment == Fragment::Later {
        return Ok(());
    }
    // ICMP echo: the id (kept as sport of requests and dport of replies) sits at offset 4.
    let offset = match (packet.proto, src) {
        (PROTO_ICMP, _) => packet.l4 + 4,
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
pub fn rewrite(ctx: &TcContext, packet: &mut Ipv4Packet, to: &Tuple) -> Result<(), CsumError> {
    set_addr(ctx, packet, true, to.src)?;
    set_port(ctx, packet, true, to.sport)?;
    set_addr(ctx, packet, false, to.dst)?;
    set_port(ctx, packet, false, to.dport)
}
