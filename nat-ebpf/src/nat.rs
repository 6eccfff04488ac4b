//! Translation: published ports (DNAT) for traffic from outside and from sandboxes
//! (hairpin), masquerade (SNAT) on the way out, and the reverse of each through the
//! connection table.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use nat_common::{
    DEFAULT_SNAT_PORTS, FAMILY_V4, NetInfo, PROTO_ICMP, PortTarget, SNAT_PORT_TRIES, addr, counter, ct,
};

use crate::{
    conntrack::{self, InsertError, Tuple},
    counters::{self, bump},
    csum,
    lookup::{is_published_port, published},
    maps,
    parse::Ipv4Packet,
};

pub type Verdict = i32;

/// Which program is asking: each hook translates only the directions that cross it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    UplinkIngress,
    UplinkEgress,
    /// Host side of a sandbox veth: what a sandbox sends.
    Sandbox,
}

#[inline(always)]
pub fn apply(ctx: &TcContext, packet: &mut Ipv4Packet, to: &Tuple) -> Verdict {
    match csum::rewrite(ctx, packet, to) {
        Ok(()) => TC_ACT_OK,
        Err(_) => {
            // A half-rewritten packet must not leave: drop it.
            bump(counter::CSUM_ERROR);
            TC_ACT_SHOT
        }
    }
}

/// An existing flow: translate it if this hook owns that direction. `None`: not tracked
/// here (or its mapping is gone), go on as for a new packet.
#[inline(always)]
pub fn established(ctx: &TcContext, packet: &mut Ipv4Packet, hook: Hook) -> Option<Verdict> {
    let key = Tuple::of(packet).key();
    let entry = maps::NATD_CT.get_ptr_mut(&key)?;
    // SAFETY: valid map value pointer, copied so later map updates cannot alias it.
    let copy = unsafe { *entry };
    let counter_id = match (hook, copy.kind) {
        (Hook::UplinkIngress | Hook::Sandbox, ct::DNAT_FORWARD) => {
            let live = published(packet.dst, packet.dport, packet.proto)
                .is_some_and(|t| t.mapping_id == copy.mapping_id);
            if !live {
                // The mapping was removed or changed: the flow is gone with it.
                conntrack::forget(&key, &copy);
                bump(counter::STALE_MAPPING);
                return None;
            }
            counter::DNAT_ESTABLISHED
        }
        (Hook::UplinkEgress | Hook::Sandbox, ct::DNAT_REPLY) => counter::DNAT_REPLY,
        (Hook::UplinkIngress, ct::SNAT_REPLY) => counter::SNAT_REPLY,
        (Hook::UplinkEgress, ct::SNAT_FORWARD) => counter::SNAT_ESTABLISHED,
        // Tracked, translated at another hook (e.g. masquerade happens on the uplink).
        _ => return Some(TC_ACT_OK),
    };
    conntrack::touch(entry, packet, ctx.len());
    counters::mapping(copy.mapping_id, ctx.len());
    bump(counter_id);
    Some(apply(ctx, packet, &Tuple::of_entry(&copy, packet.proto)))
}

/// A new connection to a published port. From a sandbox to its own published port
/// (hairpin) the source becomes the network's gateway, so the reply comes back through
/// the host instead of being answered locally by the sandbox.
#[inline(always)]
pub fn dnat_new(
    ctx: &TcContext,
    packet: &mut Ipv4Packet,
    target: &PortTarget,
    from_net: Option<&NetInfo>,
) -> Verdict {
    let original = Tuple::of(packet);
    let mut translated = original;
    translated.dst = addr::v4_raw(&target.addr);
    translated.dport = target.port;
    let hairpin = translated.dst == original.src;
    if hairpin && let Some(net) = from_net {
        translated.src = addr::v4_raw(&net.gateway);
    }
    match conntrack::track(
        &original,
        &translated,
        (ct::DNAT_FORWARD, ct::DNAT_REPLY),
        target.mapping_id,
    ) {
        Ok(_) => {}
        Err(e) => return refuse(e),
    }
    if let Some(entry) = maps::NATD_CT.get_ptr_mut(&original.key()) {
        conntrack::touch(entry, packet, ctx.len());
    }
    counters::mapping(target.mapping_id, ctx.len());
    bump(if from_net.is_some() {
        counter::HAIRPIN_NEW
    } else {
        counter::DNAT_NEW
    });
    apply(ctx, packet, &translated)
}

#[inline(always)]
fn refuse(e: InsertError) -> Verdict {
    bump(match e {
        InsertError::Clash => counter::DROP_TUPLE_CLASH,
        InsertError::Full => counter::DROP_CT_FULL,
    });
    TC_ACT_SHOT
}

/// A new flow out of a masqueraded network: a NAT port is claimed from the configured
/// range, starting at a random offset (RFC 6056), skipping published ports.
#[inline(always)]
pub fn masquerade_new(ctx: &TcContext, packet: &mut Ipv4Packet) -> Verdict {
    // SAFETY: the ifindex field is always readable in a TC context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let uplink_addr = match maps::NATD_IFACE_CONFIG.get_ptr(&ifindex) {
        // SAFETY: valid map value pointer.
        Some(config) if unsafe { (*config).family } == FAMILY_V4 => unsafe { addr::v4_raw(&(*config).addr) },
        _ => {
            bump(counter::DROP_NO_UPLINK_ADDR);
            return TC_ACT_SHOT;
        }
    };
    let (min, max) = match maps::NATD_CONFIG.get(0) {
        Some(c) if c.snat_port_min != 0 && c.snat_port_min <= c.snat_port_max => {
            (c.snat_port_min, c.snat_port_max)
        }
        _ => DEFAULT_SNAT_PORTS,
    };
    let span = u32::from(max - min) + 1;
    // SAFETY: no preconditions.
    let start = unsafe { bpf_get_prandom_u32() } % span;
    let original = Tuple::of(packet);
    let mut translated = original;
    translated.src = uplink_addr;
    let mut claimed = false;
    for i in 0..SNAT_PORT_TRIES {
        let port = ((min as u32 + (start + i) % span) as u16).to_be();
        if packet.proto != PROTO_ICMP && is_published_port(uplink_addr, port, packet.proto) {
            continue;
        }
        translated.sport = port;
        match conntrack::claim_reply(&original, &translated, ct::SNAT_REPLY) {
            Ok(()) => {
                claimed = true;
                break;
            }
            Err(InsertError::Clash) => continue,
            Err(InsertError::Full) => return refuse(InsertError::Full),
        }
    }
    if !claimed {
        bump(counter::DROP_NO_PORT);
        return TC_ACT_SHOT;
    }
    if let Err(e) = conntrack::finish(&original, &translated, ct::SNAT_FORWARD) {
        return refuse(e);
    }
    if let Some(entry) = maps::NATD_CT.get_ptr_mut(&original.key()) {
        conntrack::touch(entry, packet, ctx.len());
    }
    bump(counter::SNAT_NEW);
    apply(ctx, packet, &translated)
}
