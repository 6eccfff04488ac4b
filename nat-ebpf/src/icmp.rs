//! ICMP errors (destination unreachable incl. fragmentation needed, time exceeded,
//! parameter problem) about translated flows: the embedded IP header and L4 ports are
//! translated like the flow itself, with the embedded IP checksum, the embedded L4
//! checksum (when it is inside the packet), the ICMP checksum and the outer header fixed,
//! so PMTU discovery and traceroute work through the NAT.
use aya_ebpf::{
    bindings::{BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use nat_common::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, counter};

use crate::{
    conntrack::{self, Tuple},
    counters::bump,
    nat::NOT_HANDLED,
    parse::{Fragment, IP, Ipv4Packet, Position, parse_ipv4_at},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

pub fn is_error(packet: &Ipv4Packet) -> bool {
    packet.proto == PROTO_ICMP
        && matches!(
            packet.icmp_type,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
        )
}

struct Failed;

/// Writes `new` over `old` at `offset` and keeps the checksums that cover it right:
/// `ip_csum` (an IP header checksum over the field, if any), `l4` (an L4 checksum over it,
/// with whether it is a pseudo-header field) and the outer ICMP checksum, which covers
/// all of the embedded bytes including those checksums.
struct Patch<'a> {
    ctx: &'a TcContext,
    icmp_csum: usize,
}

impl Patch<'_> {
    #[inline(always)]
    fn u16_at(&self, offset: usize) -> Result<u16, Failed> {
        self.ctx.load::<u16>(offset).map_err(|_| Failed)
    }

    #[inline(always)]
    fn field32(
        &self,
        offset: usize,
        old: u32,
        new: u32,
        ip_csum: Option<usize>,
        l4_csum: Option<(usize, u64)>,
    ) -> Result<(), Failed> {
        if old == new {
            return Ok(());
        }
        self.ctx.store(offset, &new, 0).map_err(|_| Failed)?;
        self.ctx
            .l4_csum_replace(self.icmp_csum, u64::from(old), u64::from(new), 4)
            .map_err(|_| Failed)?;
        if let Some(at) = ip_csum {
            self.cascade(at, |c| c.l3_csum_replace(at, u64::from(old), u64::from(new), 4))?;
        }
        if let Some((at, flags)) = l4_csum {
            self.cascade(at, |c| {
                c.l4_csum_replace(
                    at,
                    u64::from(old),
                    u64::from(new),
                    flags | u64::from(BPF_F_PSEUDO_HDR) | 4,
                )
            })?;
        }
        Ok(())
    }

    #[inline(always)]
    fn field16(
        &self,
        offset: usize,
        old: u16,
        new: u16,
        l4_csum: Option<(usize, u64)>,
    ) -> Result<(), Failed> {
        if old == new {
            return Ok(());
        }
        self.ctx.store(offset, &new, 0).map_err(|_| Failed)?;
        self.ctx
            .l4_csum_replace(self.icmp_csum, u64::from(old), u64::from(new), 2)
            .map_err(|_| Failed)?;
        if let Some((at, flags)) = l4_csum {
            self.cascade(at, |c| {
                c.l4_csum_replace(at, u64::from(old), u64::from(new), flags | 2)
            })?;
        }
        Ok(())
    }

    /// Updates an embedded checksum and carries its change into the ICMP checksum.
    #[inline(always)]
    fn cascade(&self, at: usize, update: impl Fn(&TcContext) -> Result<(), i64>) -> Result<(), Failed> {
        let before = self.u16_at(at)?;
        update(self.ctx).map_err(|_| Failed)?;
        let after = self.u16_at(at)?;
        self.ctx
            .l4_csum_replace(self.icmp_csum, u64::from(before), u64::from(after), 2)
            .map_err(|_| Failed)
    }
}

/// `NOT_HANDLED`: not an error about a flow natd translates; handle the packet as usual.
#[inline(never)]
pub fn translate_error(ctx: &TcContext, outer: &mut Ipv4Packet) -> i32 {
    match try_translate(ctx, outer) {
        Ok(Some(verdict)) => verdict,
        Ok(None) => NOT_HANDLED,
        Err(Failed) => {
            bump(counter::CSUM_ERROR);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_translate(ctx: &TcContext, outer: &mut Ipv4Packet) -> Result<Option<i32>, Failed> {
    let inner_l3 = outer.l4 + 8;
    // The error ends where its IP total length says: bytes after it are the link layer's
    // padding, which no checksum covers and which the receiver ignores.
    let end = IP + usize::from(outer.tot_len);
    let Ok(inner) = parse_ipv4_at(ctx, inner_l3, Position::Quoted) else {
        return Ok(None);
    };
    // What natd rewrites (the quoted header and the first 8 bytes after it) must be inside.
    if !inner.translatable() || inner.fragment == Fragment::Later || inner.l4 + 8 > end {
        return Ok(None);
    }
    let embedded = Tuple::of(&inner);
    // The flow entry that matches packets coming back the other way tells how the
    // embedded packet must look on this side of the NAT.
    let Some(hit) = conntrack::lookup(&embedded.reversed().key()) else {
        return Ok(None);
    };
    // SAFETY: valid map value pointer, copied at once.
    let wanted = Tuple::of_entry(unsafe { &*hit.entry }, inner.proto).reversed();
    let patch = Patch {
        ctx,
        icmp_csum: outer.l4 + 2,
    };
    rewrite_quoted(&patch, inner_l3, &inner, &wanted, end)?;
    // The error goes to whoever sent the embedded packet, as that sender knows itself, and
    // comes from its peer as the sender knows it.
    let mut outer_to = Tuple::of(outer);
    if outer.dst == embedded.src {
        outer_to.dst = wanted.src;
    }
    if outer.src == embedded.dst {
        outer_to.src = wanted.dst;
    }
    bump(counter::ICMP_ERROR_TRANSLATED);
    match crate::csum::rewrite(ctx, outer, &outer_to) {
        Ok(()) => Ok(Some(TC_ACT_OK)),
        Err(_) => Err(Failed),
    }
}

/// Rewrites the quoted packet `inner` (at `inner_l3`) into `wanted`: addresses, ports or
/// echo id, with every checksum that covers them.
#[inline(always)]
fn rewrite_quoted(
    patch: &Patch,
    inner_l3: usize,
    inner: &Ipv4Packet,
    wanted: &Tuple,
    end: usize,
) -> Result<(), Failed> {
    let inner_l4 = inner.l4;
    let inner_ip_csum = Some(inner_l3 + 10);
    // The embedded L4 checksum only counts when the error quoted enough of the packet.
    let inner_l4_csum = match inner.proto {
        PROTO_TCP if end >= inner_l4 + 18 => Some((inner_l4 + 16, 0u64)),
        PROTO_UDP if end >= inner_l4 + 8 && patch.u16_at(inner_l4 + 6)? != 0 => Some((inner_l4 + 6, 0u64)),
        _ => None,
    };
    patch.field32(inner_l3 + 12, inner.src, wanted.src, inner_ip_csum, inner_l4_csum)?;
    patch.field32(inner_l3 + 16, inner.dst, wanted.dst, inner_ip_csum, inner_l4_csum)?;
    if inner.proto == PROTO_ICMP {
        // Echo id: covered by the embedded ICMP checksum, which is beyond what errors must
        // quote; fix it when present.
        let (id_old, id_new) = if inner.sport != 0 {
            (inner.sport, wanted.sport)
        } else {
            (inner.dport, wanted.dport)
        };
        let echo_csum = (end >= inner_l4 + 4).then_some((inner_l4 + 2, 0u64));
        patch.field16(inner_l4 + 4, id_old, id_new, echo_csum)
    } else {
        patch.field16(inner_l4, inner.sport, wanted.sport, inner_l4_csum)?;
        patch.field16(inner_l4 + 2, inner.dport, wanted.dport, inner_l4_csum)
    }
}
