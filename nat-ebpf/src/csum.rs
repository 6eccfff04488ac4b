//! Rewrites with incremental checksum updates through the kernel helpers, which also handle
//! CHECKSUM_PARTIAL skbs (locally generated TCP/UDP with offloaded checksums).
use aya_ebpf::{bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR}, programs::TcContext};
use nat_common::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

use crate::parse::{ETH_HLEN, Ipv4Packet};

const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;

pub struct CsumError;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

#[inline(always)]
fn l4_csum_offset(packet: &Ipv4Packet) -> Option<(usize, u64)> {
    match packet.proto {
        PROTO_TCP => Some((packet.l4 + 16, 0)),
        // A UDP checksum of 0 means "none" and must stay 0; MARK_MANGLED_0 makes the helper
        // leave it alone and never produce a 0 from a real checksum.
        PROTO_UDP => Some((packet.l4 + 6, u64::from(BPF_F_MARK_MANGLED_0))),
        PROTO_ICMP => Some((packet.l4 + 2, 0)),
        _ => None,
    }
}

/// Writes `new` over the source or destination address, fixing the IP checksum and the
/// TCP/UDP pseudo-header checksum.
#[inline(always)]
pub fn set_addr(ctx: &TcContext, packet: &mut Ipv4Packet, side: Side, new: u32) -> Result<(), CsumError> {
    let (offset, old) = match side {
        Side::Src => (IP_SRC, packet.src),
        Side::Dst => (IP_DST, packet.dst),
    };
    if old == new {
        return Ok(());
    }
    ctx.store(offset, &new, 0).map_err(|_| CsumError)?;
    ctx.l3_csum_replace(IP_CSUM, u64::from(old), u64::from(new), 4)
        .map_err(|_| CsumError)?;
    // ICMP's checksum does not cover a pseudo-header.
    if packet.proto != PROTO_ICMP
        && let Some((csum, flags)) = l4_csum_offset(packet)
        && packet.fragment != crate::parse::Fragment::Later
    {
        ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), flags | u64::from(BPF_F_PSEUDO_HDR) | 4)
            .map_err(|_| CsumError)?;
    }
    match side {
        Side::Src => packet.src = new,
        Side::Dst => packet.dst = new,
    }
    Ok(())
}

/// Writes `new` over the source or destination port (ICMP echo: the id), fixing the L4
/// checksum.
#[inline(always)]
pub fn set_port(ctx: &TcContext, packet: &mut Ipv4Packet, side: Side, new: u16) -> Result<(), CsumError> {
    let old = match side {
        Side::Src => packet.sport,
        Side::Dst => packet.dport,
    };
    if old == new {
        return Ok(());
    }
    let offset = match (packet.proto, side) {
        (PROTO_ICMP, _) => packet.l4 + 4,
        (_, Side::Src) => packet.l4,
        (_, Side::Dst) => packet.l4 + 2,
    };
    let Some((csum, flags)) = l4_csum_offset(packet) else {
        return Ok(());
    };
    ctx.store(offset, &new, 0).map_err(|_| CsumError)?;
    ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), flags | 2)
        .map_err(|_| CsumError)?;
    match side {
        Side::Src => packet.sport = new,
        Side::Dst => packet.dport = new,
    }
    Ok(())
}
