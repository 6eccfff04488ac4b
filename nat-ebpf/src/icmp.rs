//! ICMP and ICMPv6 errors (destination unreachable incl. fragmentation needed, packet
//! too big, time exceeded, parameter problem) about translated flows: the embedded IP header and L4 ports are
//! translated like the flow itself, with the embedded IP checksum, the embedded L4
//! checksum (when it is inside the packet), the ICMP checksum and the outer header fixed,
//! so PMTU discovery and traceroute work through the NAT.
use aya_ebpf::{
    bindings::{BPF_F_PSEUDO_HDR, TC_ACT_SHOT},
    programs::TcContext,
};
use nat_common::{PROTO_TCP, PROTO_UDP, TC_PASS, counter};

use crate::{
    conntrack::{self, Tuple, TupleOps},
    counters::bump,
    family::Family,
    nat::NOT_HANDLED,
    parse::{Fragment, Packet, Position},
};

pub fn is_error<A: Family>(packet: &Packet<A>) -> bool {
    packet.proto == A::ICMP && A::is_icmp_error(packet.icmp_type)
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

    /// An address: the checksum updates go by difference (`size` 0), the same for a
    /// 4-byte and a 16-byte address.
    #[inline(always)]
    fn addr<A: Family>(
        &self,
        offset: usize,
        old: A,
        new: A,
        ip_csum: Option<usize>,
        l4_csum: Option<(usize, u64)>,
    ) -> Result<(), Failed> {
        if old == new {
            return Ok(());
        }
        let diff = u64::from(A::csum_diff1(&old, &new));
        self.ctx.store(offset, &new, 0).map_err(|_| Failed)?;
        self.ctx
            .l4_csum_replace(self.icmp_csum, 0, diff, 0)
            .map_err(|_| Failed)?;
        if let Some(at) = ip_csum {
            self.cascade(at, |c| c.l3_csum_replace(at, 0, diff, 0))?;
        }
        if let Some((at, flags)) = l4_csum {
            self.cascade(at, |c| {
                c.l4_csum_replace(at, 0, diff, flags | u64::from(BPF_F_PSEUDO_HDR))
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
pub fn translate_error<A: Family>(ctx: &TcContext, outer: &mut Packet<A>) -> i32 {
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
fn try_translate<A: Family>(ctx: &TcContext, outer: &mut Packet<A>) -> Result<Option<i32>, Failed> {
    let inner_l3 = outer.l4 + 8;
    // The error ends where its IP total length says: bytes after it are the link layer's
    // padding, which no checksum covers and which the receiver ignores.
    let end = outer.l3 + outer.tot_len as usize;
    let Some(inner) = A::packet_slot(1) else {
        return Ok(None);
    };
    if A::parse_into(ctx, inner_l3, Position::Quoted, inner).is_err() {
        return Ok(None);
    }
    let inner = &*inner;
    // What natd rewrites (the quoted header and the first 8 bytes after it) must be inside.
    if !inner.translatable() || inner.fragment == Fragment::Later || inner.l4 + 8 > end {
        return Ok(None);
    }
    let embedded = Tuple::of(&inner);
    // The flow entry that matches packets coming back the other way tells how the
    // embedded packet must look on this side of the NAT.
    let Some(hit) = conntrack::lookup(&embedded.reversed()) else {
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
        Ok(()) => Ok(Some(TC_PASS)),
        Err(_) => Err(Failed),
    }
}

/// Rewrites the quoted packet `inner` (at `inner_l3`) into `wanted`: addresses, ports or
/// echo id, with every checksum that covers them.
#[inline(always)]
fn rewrite_quoted<A: Family>(
    patch: &Patch,
    inner_l3: usize,
    inner: &Packet<A>,
    wanted: &Tuple<A>,
    end: usize,
) -> Result<(), Failed> {
    let inner_l4 = inner.l4;
    // IPv6 has no header checksum.
    let inner_ip_csum = (A::VERSION == 4).then_some(inner_l3 + 10);
    // The embedded L4 checksum only counts when the error quoted enough of the packet.
    // ICMPv6's covers the addresses (a pseudo-header), ICMP's does not.
    let inner_l4_csum = match inner.proto {
        PROTO_TCP if end >= inner_l4 + 18 => Some((inner_l4 + 16, 0u64)),
        PROTO_UDP if end >= inner_l4 + 8 && patch.u16_at(inner_l4 + 6)? != 0 => Some((inner_l4 + 6, 0u64)),
        p if p == A::ICMP && A::VERSION == 6 && end >= inner_l4 + 4 => Some((inner_l4 + 2, 0u64)),
        _ => None,
    };
    patch.addr(
        inner_l3 + A::SRC_AT,
        inner.src,
        wanted.src,
        inner_ip_csum,
        inner_l4_csum,
    )?;
    patch.addr(
        inner_l3 + A::DST_AT,
        inner.dst,
        wanted.dst,
        inner_ip_csum,
        inner_l4_csum,
    )?;
    if inner.proto == A::ICMP {
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
