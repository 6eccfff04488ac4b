//! Translation: packets of tracked flows (one lookup, then `fast::forward`), new flows to
//! published ports (DNAT) from outside and from sandboxes (hairpin), and masquerade (SNAT)
//! of new outbound flows: at the sandbox with a route lookup when the flow can bypass the
//! host, else at the edge's egress after the kernel routed it.
use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use nat_common::{CtEntry, EndpointInfo, IfaceConfig, PROTO_TCP, PROTO_UDP, PortTarget, TC_PASS, config, counter, ct, role};

use crate::{
    conntrack::{self, InsertError, Leg, NO_SLOT, NewFlow, Scratch, Tuple, TupleOps, Verdict},
    counters::{self, bump},
    csum,
    family::{Family, Net},
    fast::{self, Toward},
    fib, lookup,
    mapping::{self, ClaimError},
    parse::{self, Packet, TCP_ACK, TCP_SYN},
    policy, quota,
};

/// Rewrites the packet into `to` with the checksum helpers, for the kernel's normal path.
#[inline(always)]
pub fn apply<A: Family>(ctx: &TcContext, packet: &mut Packet<A>, to: &Tuple<A>) -> i32 {
    match csum::rewrite(ctx, packet, to) {
        Ok(()) => TC_PASS,
        Err(_) => {
            // A half-rewritten packet must not leave: drop it.
            bump(counter::CSUM_ERROR);
            TC_ACT_SHOT
        }
    }
}

/// Returned by the functions below for a packet they leave to the caller. Functions that
/// are not inlined (each has its own stack frame: the programs would not fit the verifier's
/// 512 bytes otherwise) return plain `i32`: BPF calls return one register.
pub const NOT_HANDLED: i32 = i32::MIN;
/// Returned by `tracked` for a packet of a flow that another hook translates.
pub const ELSEWHERE: i32 = i32::MIN + 1;

/// A packet of a known flow: one lookup, the flow's checks (hook, ingress interface,
/// generation), TCP tracking, then forwarding: the verdict. `NOT_HANDLED` when there is
/// no flow (or a dead one: the packet is new), `ELSEWHERE` for a flow another hook
/// translates. `hook` is the calling program's `ct::HOOK_*`, `own_ifindex` the sandbox
/// veth it runs on (0 elsewhere).
#[inline(never)]
pub fn tracked<A: Family>(ctx: &TcContext, packet: &mut Packet<A>, hook: u8, own_ifindex: u32) -> i32 {
    let key = Tuple::of(packet);
    let Some(hit) = conntrack::lookup(&key) else {
        return NOT_HANDLED;
    };
    // SAFETY: valid map value pointer, copied: a removed entry's memory may be reused by
    // another CPU at once (preallocated tables). IPv4 copies to the stack, IPv6 (whose
    // frames are larger) to this CPU's scratch area.
    let on_stack: CtEntry<A>;
    let entry: &CtEntry<A> = if A::VERSION == 4 {
        on_stack = unsafe { *hit.entry };
        &on_stack
    } else {
        let Some(s) = conntrack::scratch::<A>() else {
            return TC_ACT_SHOT;
        };
        // SAFETY: a connection table's value, copied to the scratch area.
        unsafe { conntrack::copy_value(&mut s.current, hit.entry) };
        &s.current
    };
    if hook == ct::HOOK_SANDBOX && entry.in_ifindex != 0 && entry.in_ifindex != own_ifindex {
        // A sandbox sending packets of a flow that is not its own.
        bump(counter::DROP_SPOOFED_FLOW);
        return TC_ACT_SHOT;
    }
    if entry.hooks & hook == 0 {
        return ELSEWHERE;
    }
    if !conntrack::live(&entry) {
        // Its mapping or endpoint was removed or changed: the flow is gone with it.
        conntrack::forget(&key, &entry);
        bump(counter::STALE_MAPPING);
        return NOT_HANDLED;
    }
    match conntrack::track(&key, &hit, packet) {
        Verdict::Restart => {
            conntrack::forget(&key, &entry);
            return NOT_HANDLED;
        }
        Verdict::Promote => conntrack::promote(&key, &hit, conntrack::seq_end(packet)),
        Verdict::Forward => {}
    }
    conntrack::touch(hit.entry);
    let (counter_id, toward) = match entry.kind {
        ct::DNAT_FORWARD => (counter::DNAT_ESTABLISHED, Toward::Sandbox),
        ct::DNAT_REPLY => (counter::DNAT_REPLY, Toward::Edge),
        ct::SNAT_FORWARD => (counter::SNAT_ESTABLISHED, Toward::Edge),
        _ => (counter::SNAT_REPLY, Toward::Sandbox),
    };
    if (entry.kind == ct::DNAT_FORWARD || entry.kind == ct::DNAT_REPLY) && entry.gen_slot != NO_SLOT {
        counters::mapping(entry.gen_slot, ctx.len());
    }
    bump(counter_id);
    if A::VERSION == 4 {
        fast::forward(ctx, packet, entry, toward)
    } else {
        // IPv6 frames are larger: forwarding gets a frame of its own.
        fast::forward_cold(ctx, packet, entry, toward)
    }
}

#[inline(always)]
fn refuse(e: InsertError) -> i32 {
    bump(match e {
        InsertError::Clash => counter::DROP_TUPLE_CLASH,
        InsertError::Full => counter::DROP_CT_FULL,
        InsertError::Quota => counter::DROP_SOURCE_QUOTA,
    });
    TC_ACT_SHOT
}

/// A new flow, within its originator's quota of pending flows.
#[inline(always)]
fn admit<A: Family>(flow: &NewFlow<A>) -> Result<(), InsertError> {
    if quota::admit(&flow.original.src, flow.forward.kind) {
        Ok(())
    } else {
        Err(InsertError::Quota)
    }
}

/// The new flow was refused after all: its place in the quota goes.
#[inline(always)]
fn unadmit<A: Family>(flow: &NewFlow<A>) {
    quota::release_embryonic(&flow.original.src, flow.forward.kind);
}

/// Whether a packet may start a new flow: TCP only with a SYN (not a SYN-ACK), UDP
/// always, ICMP with an echo request.
#[inline(always)]
pub fn starts_flow<A: Family>(packet: &Packet<A>) -> bool {
    match packet.proto {
        PROTO_TCP => packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        PROTO_UDP => true,
        p if p == A::ICMP => packet.icmp_type == A::ECHO_REQUEST,
        _ => false,
    }
}

/// A new connection from outside to a published port. With the fast path on, both
/// directions bypass the host from this first packet on. `edge`: the interface it
/// arrived on.
#[inline(never)]
pub fn dnat_from_outside<A: Family>(
    ctx: &TcContext,
    packet: &mut Packet<A>,
    target: &PortTarget<A>,
    edge: u32,
) -> i32 {
    if !starts_flow(packet) {
        return NOT_HANDLED;
    }
    let Some(s) = conntrack::scratch::<A>() else {
        return TC_ACT_SHOT;
    };
    // SAFETY: the published ports' value, copied to the scratch area.
    unsafe { conntrack::copy_value(&mut s.target, target) };
    from_outside(ctx, packet, s, edge)
}

/// A new flow from outside to `s.target`.
#[inline(always)]
fn from_outside<A: Family>(ctx: &TcContext, packet: &mut Packet<A>, s: &mut Scratch<A>, edge: u32) -> i32 {
    dnat_flow(&mut s.flow, packet, &s.target);
    outside_legs(ctx, packet, edge, &mut s.flow);
    start_dnat(ctx, packet, s, counter::DNAT_NEW)
}

/// A new connection from a sandbox to a published port. To its own published port
/// (hairpin) the source becomes the network's gateway, so the reply comes back through
/// the host instead of being answered locally by the sandbox. `veth`: the sandbox's
/// host-side veth.
#[inline(never)]
pub fn dnat_from_sandbox<A: Family>(
    ctx: &TcContext,
    packet: &mut Packet<A>,
    target: &PortTarget<A>,
    gateway: A,
    veth: u32,
) -> i32 {
    if !starts_flow(packet) {
        return NOT_HANDLED;
    }
    let Some(s) = conntrack::scratch::<A>() else {
        return TC_ACT_SHOT;
    };
    let flow = &mut s.flow;
    dnat_flow(flow, packet, target);
    if flow.translated.dst == flow.original.src {
        flow.translated.src = gateway;
    }
    let target_veth = lookup::endpoint(target.addr).map(|e| e.host_ifindex).unwrap_or(0);
    flow.forward = Leg::slow(ct::DNAT_FORWARD, ct::HOOK_SANDBOX, veth);
    flow.reply = Leg::slow(
        ct::DNAT_REPLY,
        ct::HOOK_SANDBOX | ct::HOOK_EDGE_EGRESS,
        target_veth,
    );
    start_dnat(ctx, packet, s, counter::HAIRPIN_NEW)
}

/// The tuples of a DNAT flow; the callers set the legs.
#[inline(always)]
fn dnat_flow<A: Family>(flow: &mut NewFlow<A>, packet: &Packet<A>, target: &PortTarget<A>) {
    // Written in place: a 40-byte IPv6 tuple built on the stack and copied twice would
    // not fit the IPv6 paths' frames.
    flow.original.set_from(packet);
    flow.translated.set_from(packet);
    flow.translated.dst = target.addr;
    flow.translated.dport = target.port;
    flow.gen_slot = target.slot;
    flow.generation = target.generation;
    flow.syn_seq = packet.seq;
}

/// Inserts a new DNAT flow and forwards its first packet.
#[inline(never)]
fn start_dnat<A: Family>(
    ctx: &TcContext,
    packet: &mut Packet<A>,
    s: &mut Scratch<A>,
    counter_id: u32,
) -> i32 {
    if let Err(e) = admit(&s.flow) {
        return refuse(e);
    }
    if let Err(e) = conntrack::create(s) {
        unadmit(&s.flow);
        return refuse(e);
    }
    counters::mapping(s.flow.gen_slot, ctx.len());
    bump(counter_id);
    fast::forward_cold(ctx, packet, &s.forward, Toward::Sandbox)
}

/// The legs of a flow from outside to a sandbox: fast when the fast path is on and the
/// sandbox's endpoint is known (replies go back the way the first packet came), slow
/// otherwise.
#[inline(always)]
fn outside_legs<A: Family>(ctx: &TcContext, packet: &Packet<A>, edge: u32, flow: &mut NewFlow<A>) {
    let endpoint = lookup::endpoint(flow.translated.dst);
    let target_veth = endpoint.map(|e| e.host_ifindex).unwrap_or(0);
    flow.forward = Leg::slow(ct::DNAT_FORWARD, ct::HOOK_EDGE_INGRESS, 0);
    flow.reply = Leg::slow(
        ct::DNAT_REPLY,
        ct::HOOK_SANDBOX | ct::HOOK_EDGE_EGRESS,
        target_veth,
    );
    if !fast_path_on() || !packet.direct {
        return;
    }
    let (Some(endpoint), Some(edge_cfg), Some((client_mac, edge_mac))) =
        (endpoint, lookup::iface(edge), parse::macs(ctx))
    else {
        return;
    };
    flow.forward.flags |= ct::FAST;
    flow.forward.out_ifindex = endpoint.host_ifindex;
    // SAFETY: the endpoint table's value, copied to the scratch area (`copy_value`: the
    // plain assignment of a MAC between two maps is an out-of-line byte loop).
    unsafe {
        conntrack::copy_value(&mut flow.forward.smac, &endpoint.gw_mac);
        conntrack::copy_value(&mut flow.forward.dmac, &endpoint.mac);
    }
    flow.forward.mtu = endpoint.mtu;
    flow.reply.flags |= ct::FAST;
    flow.reply.out_ifindex = edge;
    flow.reply.smac = if edge_cfg.mac == [0; 6] {
        edge_mac
    } else {
        edge_cfg.mac
    };
    flow.reply.dmac = client_mac;
    flow.reply.mtu = edge_cfg.mtu as u16;
}

#[inline(always)]
pub fn fast_path_on() -> bool {
    lookup::config().flags & config::FAST_PATH != 0
}

/// Gives the flow its external port (`mapping::claim`), adds the forward entry, and
/// forwards the first packet of the flow prepared in the scratch area. `net_flags`: the
/// source network's (`net::PORTS_RANDOM`, `net::FILTER_*`).
/// The flow counts as what its preparation set (`snat_new`, `hairpin_mapping_new`).
#[inline(never)]
pub fn start_masquerade<A: Family>(ctx: &TcContext, packet: &mut Packet<A>, net_flags: u32) -> i32 {
    let Some(s) = conntrack::scratch::<A>() else {
        return TC_ACT_SHOT;
    };
    if let Err(verdict) = start(ctx, s, net_flags) {
        return verdict;
    }
    bump(s.new_counter);
    fast::forward_cold(ctx, packet, &s.forward, Toward::Edge)
}

/// Admits, maps and inserts the flow prepared in `s`; on failure nothing of it stays.
#[inline(always)]
fn start<A: Family>(ctx: &TcContext, s: &mut Scratch<A>, net_flags: u32) -> Result<(), i32> {
    admit(&s.flow).map_err(refuse)?;
    if let Err(e) = mapping::claim(ctx, s, net_flags) {
        unadmit(&s.flow);
        return Err(match e {
            ClaimError::Insert(e) => refuse(e),
            ClaimError::NoPort => {
                // Counted, never silent: `drop_no_port` (natctl stats, metrics).
                bump(counter::DROP_NO_PORT);
                TC_ACT_SHOT
            }
        });
    }
    if let Err(e) = conntrack::finish(s) {
        unadmit(&s.flow);
        return Err(refuse(e));
    }
    Ok(())
}

/// A new inbound flow from outside to a masquerade mapping's port that the mapping's
/// filtering admits (`net::FILTER_*`; without one only replies get in, as tracked flows):
/// translated to the sandbox like a published port's flow. Published ports were tried
/// first and win; a mapping only ever holds a port of a host address, so nothing reaches
/// a sandbox address this way.
#[inline(never)]
pub fn admit_inbound<A: Family>(ctx: &TcContext, packet: &mut Packet<A>, edge: u32) -> i32 {
    if !starts_flow(packet) {
        return NOT_HANDLED;
    }
    if lookup::is_local(packet.src) {
        // Only the host sends from its addresses; from outside such a source is forged,
        // and the host's address is one address-dependent filtering may have admitted
        // (a sandbox that reached a host address). The kernel drops it as a martian.
        return NOT_HANDLED;
    }
    let Some(s) = conntrack::scratch::<A>() else {
        return TC_ACT_SHOT;
    };
    if !mapping::admitting(s, packet, &packet.src) {
        return unsolicited(ctx, s, packet);
    }
    let Some(endpoint) = lookup::endpoint(s.owner.internal) else {
        return NOT_HANDLED;
    };
    s.target = PortTarget {
        addr: s.owner.internal,
        port: s.owner.port,
        flags: 0,
        slot: endpoint.slot,
        generation: endpoint.generation,
        mapping_id: 0,
    };
    let verdict = from_outside(ctx, packet, s, edge);
    if verdict != TC_ACT_SHOT {
        // Counted once the flow exists (a full table or a quota refuses it, counted so).
        bump(counter::INBOUND_FILTER_ADMITTED);
    }
    verdict
}

/// A new inbound flow no filtering admits, to a host address: RFC 5382 REQ-4, an
/// unsolicited SYN to a port a mapping uses is not answered (dropped, counted) unless a
/// socket of the host is there (the host's service), so the host's RST cannot end a TCP
/// hole punch whose own SYN is about to leave. Anything else is the host's.
#[inline(always)]
fn unsolicited<A: Family>(ctx: &TcContext, s: &mut Scratch<A>, packet: &Packet<A>) -> i32 {
    if packet.proto == PROTO_TCP && mapping::port_mapped(s) && !mapping::host_receives(ctx, s, packet) {
        return policy::drop(counter::DROP_UNSOLICITED_SYN);
    }
    NOT_HANDLED
}

/// A new flow from a sandbox of a masqueraded network to the external address and port
/// of another sandbox's mapping (hairpinning, RFC 4787 REQ-9, RFC 5382 REQ-8): admitted
/// per the owner's filtering as if from outside, and translated both ways, so the owner
/// sees the sender's external address and port (REQ-9a) and its replies come back the
/// same way. `veth`: the sender's host-side veth. `PREPARED` when the flow is prepared
/// for `start_masquerade` (a separate call from the program, so the frames are never
/// stacked), else the verdict or `NOT_HANDLED`.
#[inline(never)]
pub fn prepare_hairpin_to_mapping<A: Family>(ctx: &TcContext, packet: &Packet<A>, veth: u32) -> i32 {
    if !starts_flow(packet) {
        return NOT_HANDLED;
    }
    let Some(s) = conntrack::scratch::<A>() else {
        return TC_ACT_SHOT;
    };
    // The sender's external address is the one it sent to. Refused, the packet is the
    // sender's punch, which the other side's answer then passes; a SYN goes unanswered,
    // as from outside.
    if !mapping::admitting(s, packet, &packet.dst) && !mapping::punched(s, packet) {
        s.port_key = lookup::port_key(packet.dst, packet.dport, packet.proto);
        return unsolicited(ctx, s, packet);
    }
    let Some(target) = lookup::endpoint(s.owner.internal) else {
        return NOT_HANDLED;
    };
    let target_veth = target.host_ifindex;
    snat_flow(&mut s.flow, packet, packet.dst, lookup::endpoint(packet.src));
    s.flow.translated.dst = s.owner.internal;
    s.flow.translated.dport = s.owner.port;
    s.flow.forward = Leg::slow(ct::SNAT_FORWARD, ct::HOOK_SANDBOX, veth);
    s.flow.reply = Leg::slow(ct::SNAT_REPLY, ct::HOOK_SANDBOX, target_veth);
    s.new_counter = counter::HAIRPIN_MAPPING_NEW;
    PREPARED
}

/// A new flow from a sandbox of a network with `net::HAIRPIN_EXTERNAL` to a published
/// port on a host address: translated both ways like a hairpin to a mapping, so the
/// target sees the sender's external address and mapping (RFC 4787 REQ-9a) rather than
/// its own address. The flow depends on the published mapping's generation (an unpublish
/// ends it). `PREPARED` when the flow is prepared for `start_masquerade`, else
/// `NOT_HANDLED` or the verdict.
#[inline(never)]
pub fn prepare_hairpin_to_published<A: Family>(packet: &Packet<A>, target: &PortTarget<A>, veth: u32) -> i32 {
    if !starts_flow(packet) {
        return NOT_HANDLED;
    }
    let Some(s) = conntrack::scratch::<A>() else {
        return TC_ACT_SHOT;
    };
    let target_veth = lookup::endpoint(target.addr).map(|e| e.host_ifindex).unwrap_or(0);
    snat_flow(&mut s.flow, packet, packet.dst, None);
    s.flow.translated.dst = target.addr;
    s.flow.translated.dport = target.port;
    s.flow.gen_slot = target.slot;
    s.flow.generation = target.generation;
    s.flow.forward = Leg::slow(ct::SNAT_FORWARD, ct::HOOK_SANDBOX, veth);
    s.flow.reply = Leg::slow(ct::SNAT_REPLY, ct::HOOK_SANDBOX, target_veth);
    s.new_counter = counter::HAIRPIN_NEW;
    PREPARED
}

/// The tuples of a masqueraded flow from `packet`'s source to `edge_addr`, and the
/// generation of the sandbox endpoint it depends on.
// A call of its own: inlined, the packet's addresses it copies were loaded before the
// route lookup and kept in the caller's frame across it.
#[inline(never)]
fn snat_flow<A: Family>(
    flow: &mut NewFlow<A>,
    packet: &Packet<A>,
    edge_addr: A,
    endpoint: Option<&EndpointInfo>,
) {
    // Written in place: a 40-byte IPv6 tuple built on the stack and copied twice would
    // not fit the IPv6 paths' frames.
    flow.original.set_from(packet);
    flow.translated.set_from(packet);
    flow.translated.src = edge_addr;
    (flow.gen_slot, flow.generation) = endpoint.map(|e| (e.slot, e.generation)).unwrap_or((NO_SLOT, 0));
    flow.syn_seq = packet.seq;
}

/// A new flow out of a masqueraded network, at the edge's egress (the kernel routed
/// it): prepared in the scratch area for `start_masquerade`; its packets take the
/// kernel's path. `NOT_HANDLED` when prepared, else the verdict.
#[inline(never)]
pub fn prepare_masquerade_at_egress<A: Family>(ctx: &TcContext, packet: &Packet<A>) -> i32 {
    let edge_addr = match lookup::iface(lookup::ifindex(ctx)) {
        Some(cfg) if !A::of_iface(cfg).is_zero() => A::of_iface(cfg),
        _ => {
            bump(counter::DROP_NO_EDGE_ADDR);
            return TC_ACT_SHOT;
        }
    };
    let Some(s) = conntrack::scratch::<A>() else {
        return TC_ACT_SHOT;
    };
    let endpoint = lookup::endpoint(packet.src);
    snat_flow(&mut s.flow, packet, edge_addr, endpoint);
    let sandbox_veth = endpoint.map(|e| e.host_ifindex).unwrap_or(0);
    s.flow.forward = Leg::slow(ct::SNAT_FORWARD, ct::HOOK_EDGE_EGRESS, sandbox_veth);
    s.flow.reply = Leg::slow(ct::SNAT_REPLY, ct::HOOK_EDGE_INGRESS, 0);
    s.new_counter = counter::SNAT_NEW;
    NOT_HANDLED
}

/// `prepare_masquerade_at_sandbox`: the flow is prepared to bypass the host.
pub const PREPARED: i32 = i32::MIN + 2;

/// A new flow out of a masqueraded network, seen at the sandbox. The kernel's FIB says
/// which interface it leaves by: one natd has no program on (a device that appeared an
/// instant ago, one natd cannot serve) would let it out with the sandbox's address, so it
/// is dropped (`drop_unknown_edge`). When it leaves by an edge with a link layer and the
/// fast path is on, the flow can bypass the host in both directions from this packet on:
/// it is prepared in the scratch area for `start_masquerade` (a separate call from the
/// program, so the two frames are never stacked) and `PREPARED` returned. `NOT_HANDLED`:
/// leave the packet to the kernel (and to the edge's egress).
#[inline(never)]
pub fn prepare_masquerade_at_sandbox<A: Family>(
    ctx: &TcContext,
    packet: &Packet<A>,
    net: &Net<A>,
    own: &IfaceConfig,
    ifindex: u32,
) -> i32 {
    let mut route = fib::Route::default();
    if !fib::route(ctx, net.bridge_ifindex, packet, &mut route) {
        bump(counter::FIB_FAILED);
        return NOT_HANDLED;
    }
    if route.ifindex == net.bridge_ifindex {
        // Routed back into the network (a route via one of its sandboxes): not out of
        // the host, nothing to translate, as Docker masquerades `! -o <bridge>` only.
        return NOT_HANDLED;
    }
    let edge = match lookup::iface(route.ifindex) {
        None => {
            bump(counter::DROP_UNKNOWN_EDGE);
            return TC_ACT_SHOT;
        }
        Some(cfg) if cfg.role == role::EDGE && !A::of_iface(&cfg).is_zero() => cfg,
        Some(_) => {
            bump(counter::FIB_NOT_EDGE);
            return NOT_HANDLED;
        }
    };
    if !fast_path_on() || !route.fits || !packet.direct || packet.ttl <= 1 {
        return NOT_HANDLED;
    }
    if packet.proto != PROTO_TCP && packet.proto != PROTO_UDP {
        return NOT_HANDLED;
    }
    let Some((sandbox_mac, gateway_mac)) = parse::macs(ctx) else {
        return NOT_HANDLED;
    };
    let Some(s) = conntrack::scratch::<A>() else {
        return NOT_HANDLED;
    };
    snat_flow(
        &mut s.flow,
        packet,
        A::of_iface(edge),
        lookup::endpoint(packet.src),
    );
    let forward = &mut s.flow.forward;
    *forward = Leg::slow(ct::SNAT_FORWARD, ct::HOOK_SANDBOX, ifindex);
    forward.flags |= ct::FAST;
    forward.out_ifindex = route.ifindex;
    forward.mtu = edge.mtu as u16;
    if route.resolved {
        forward.smac = route.smac;
        forward.dmac = route.dmac;
    } else {
        forward.flags |= ct::NEIGH;
    }
    let reply = &mut s.flow.reply;
    *reply = Leg::slow(ct::SNAT_REPLY, ct::HOOK_EDGE_INGRESS, 0);
    reply.flags |= ct::FAST;
    reply.out_ifindex = ifindex;
    reply.smac = gateway_mac;
    reply.dmac = sandbox_mac;
    reply.mtu = own.mtu as u16;
    s.new_counter = counter::SNAT_NEW;
    PREPARED
}

/// A new outbound flow of a routed network: tracked with its own addresses in both
/// directions (no translation), so replies from outside are let in as part of it.
#[inline(never)]
pub fn track_routed<A: Family>(ctx: &TcContext, packet: &mut Packet<A>, veth: u32) -> i32 {
    let Some(s) = conntrack::scratch::<A>() else {
        return TC_ACT_SHOT;
    };
    // A masquerade to its own address: the same tuples, nothing translated.
    snat_flow(&mut s.flow, packet, packet.src, lookup::endpoint(packet.src));
    let flow = &mut s.flow;
    flow.forward = Leg::slow(ct::SNAT_FORWARD, ct::HOOK_SANDBOX, veth);
    flow.reply = Leg::slow(ct::SNAT_REPLY, ct::HOOK_EDGE_INGRESS, 0);
    if let Err(e) = admit(&s.flow) {
        return refuse(e);
    }
    if let Err(e) = conntrack::create(s) {
        unadmit(&s.flow);
        return refuse(e);
    }
    bump(counter::ROUTED_NEW);
    fast::forward_cold(ctx, packet, &s.forward, Toward::Edge)
}
