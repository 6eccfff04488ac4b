//! Masquerade mappings that applications can rely on (RFC 4787, RFC 5382): one external
//! port per sandbox address, port and external address, whatever the destination
//! (endpoint-independent mapping, REQ-1), held by one sandbox endpoint only (no port
//! overloading, REQ-3), the sandbox's own port when it is free (port preservation, as
//! Linux's MASQUERADE), else one of the same class and parity (REQ-3a, REQ-4), or a random
//! one per `net::PORTS_RANDOM` (RFC 6056). Inbound packets to a mapping's port are
//! admitted per the owner network's filtering (`net::FILTER_*`), from outside and from
//! other sandboxes (hairpinning, REQ-9). The agent expires mappings (`SnatMapping`).
use aya_ebpf::{
    bindings::bpf_sock_tuple,
    helpers::{bpf_get_prandom_u32, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
    programs::TcContext,
};
use nat_common::{
    DEFAULT_SNAT_PORTS, PROTO_TCP, PROTO_UDP, PUNCH_TICKS, Punch, PunchKey, SNAT_PORT_TRIES, SnatKey,
    SnatMapping, SnatOwner, SnatPeerKey, counter, net,
};

use crate::{
    conntrack::{self, InsertError, Scratch},
    counters::bump,
    family::Family,
    lookup,
    parse::Packet,
    portmarks,
};

const BPF_NOEXIST: u64 = 1;
/// `BPF_F_CURRENT_NETNS`: the socket lookup's namespace is the packet's device's.
const CURRENT_NETNS: u64 = u64::MAX;
const FILTERS: u32 = net::FILTER_ADDRESS | net::FILTER_ENDPOINT;

pub enum ClaimError {
    Insert(InsertError),
    /// Every port tried was taken (`SNAT_PORT_TRIES`).
    NoPort,
}

/// Gives the flow in `s` (its translated source address set: the external address) its
/// external port and claims its reply tuple (`conntrack::claim_reply`): its source's
/// mapping's port, else a new mapping's. `net_flags`: the source network's.
///
/// A mapping whose network filters inbound packets by address or not at all holds its
/// port alone (`NATD_SNAT*_PORTS`): inbound packets to the port must lead to one sandbox.
/// Under the default filtering (address and port) nothing but replies come in, so, as
/// with Linux's MASQUERADE, mappings share a port as long as their flows' tuples differ
/// (a port serves a destination once, not the whole host once); a flow whose mapping's
/// port is taken for its destination gets a port of its own (counted). A held port whose
/// tuple a flow of no mapping took (one from before mappings) is a clash, counted.
// Inlined into the one caller: a frame of its own would put the IPv6 sandbox program's
// deepest call chain (through `claim_reply`) over the verifier's 512 bytes.
#[inline(always)]
pub fn claim<A: Family>(ctx: &TcContext, s: &mut Scratch<A>, net_flags: u32) -> Result<(), ClaimError> {
    let proto = s.flow.original.proto;
    s.snat_key = SnatKey {
        internal: s.flow.original.src,
        external: s.flow.translated.src,
        port: s.flow.original.sport,
        proto,
        _pad: 0,
    };
    let exclusive = net_flags & FILTERS != 0;
    s.record = 1;
    if let Some(mapping) = A::snat().get_ptr_mut(&s.snat_key) {
        // SAFETY: a pointer into a map value, read and its timestamp written.
        let port = unsafe { (*mapping).port };
        s.port_key = lookup::port_key(s.snat_key.external, port, proto);
        if !exclusive || held_by_source(s) {
            // SAFETY: as above.
            unsafe { (*mapping).last_seen = conntrack::now() };
            s.flow.translated.sport = port;
            match conntrack::claim_reply(s) {
                Ok(()) => {
                    bump(counter::SNAT_MAPPING_REUSED);
                    permit_peer(s, net_flags);
                    return Ok(());
                }
                Err(InsertError::Clash) if !exclusive => s.record = 0,
                Err(e) => return Err(ClaimError::Insert(e)),
            }
        } else {
            // Expired and given to another endpoint since: a new mapping.
            let _ = A::snat().remove(&s.snat_key);
        }
    }
    if !exclusive {
        shared_port(ctx, s, net_flags)?;
        mark_shared_port(s);
        return Ok(());
    }
    exclusive_port(ctx, s, net_flags)?;
    if let Err(e) = conntrack::claim_reply(s) {
        let _ = A::snat_ports().remove(&s.port_key);
        return Err(ClaimError::Insert(e));
    }
    commit(s);
    permit_peer(s, net_flags);
    Ok(())
}

/// Records that a new mapping of the default filtering uses its port (`NATD_SNAT*_SHARED`,
/// the first such mapping named): inbound packets to it are then known to be a mapping's
/// (an unsolicited SYN is not answered, RFC 5382 REQ-4), a punch answered from it must
/// come from that mapping, and mappings that hold their port alone never take it
/// (REQ-3). An LRU of its own, so these marks never crowd out the holdings.
#[inline(always)]
fn mark_shared_port<A: Family>(s: &mut Scratch<A>) {
    if s.record == 0 || s.flow.original.proto == A::ICMP {
        return;
    }
    s.port_key = lookup::port_key(s.snat_key.external, s.flow.translated.sport, s.flow.original.proto);
    s.owner = SnatOwner {
        internal: s.snat_key.internal,
        port: s.snat_key.port,
        filter: 0,
        _pad: 0,
    };
    if A::snat_shared().insert(&s.port_key, &s.owner, BPF_NOEXIST).is_ok() {
        portmarks::mark(s.flow.original.proto, s.flow.translated.sport, conntrack::now());
    }
}

/// Whether a mapping uses the port `admitting` looked up (`s.port_key`).
#[inline(always)]
pub fn port_mapped<A: Family>(s: &Scratch<A>) -> bool {
    A::snat_ports().get_ptr(&s.port_key).is_some() || A::snat_shared().get_ptr(&s.port_key).is_some()
}

/// Whether the first mapping on the port in `s.port_key` (its holder, or the first of the
/// default filtering's that share it) is `internal:port`: one sandbox may speak for it.
#[inline(always)]
fn first_on_port<A: Family>(s: &Scratch<A>, internal: A, port: u16) -> bool {
    // SAFETY: valid map value pointers, read at once.
    let named = |o: *const SnatOwner<A>| unsafe { (*o).internal == internal && (*o).port == port };
    match A::snat_ports().get_ptr(&s.port_key) {
        Some(owner) => named(owner),
        None => A::snat_shared().get_ptr(&s.port_key).is_some_and(named),
    }
}

/// Whether the external port in `s.port_key` is still held by the mapping's source.
#[inline(always)]
fn held_by_source<A: Family>(s: &Scratch<A>) -> bool {
    // SAFETY: valid map value pointer, read at once.
    A::snat_ports()
        .get_ptr(&s.port_key)
        .is_some_and(|o| unsafe { (*o).internal == s.snat_key.internal && (*o).port == s.snat_key.port })
}

/// Sets up the ports a new mapping tries after the sandbox's own (which is tried first
/// unless ports are random): from a random offset of the range of its class, with its
/// parity when preserving. Returns whether ports are preserved.
#[inline(always)]
fn candidates<A: Family>(s: &mut Scratch<A>, net_flags: u32) -> bool {
    let own = u16::from_be(s.flow.original.sport);
    let preserve = net_flags & net::PORTS_RANDOM == 0;
    let cfg = lookup::config();
    let (min, max) = if preserve && own < 1024 && own != 0 && s.flow.original.proto != A::ICMP {
        // A privileged port stays privileged (REQ-3a).
        (1, 1023)
    } else if cfg.snat_port_min != 0 && cfg.snat_port_min <= cfg.snat_port_max {
        (cfg.snat_port_min, cfg.snat_port_max)
    } else {
        DEFAULT_SNAT_PORTS
    };
    let span = u32::from(max - min) + 1;
    // SAFETY: no preconditions.
    let random = unsafe { bpf_get_prandom_u32() } % span;
    s.port_min = u32::from(min);
    s.port_span = span;
    if preserve {
        // The sandbox's port's parity (REQ-4): steps of two from an offset of that
        // parity (an odd-sized range loses it only where the steps wrap around).
        s.port_start = (random & !1) | ((u32::from(own) ^ u32::from(min)) & 1);
        s.port_step = 2;
    } else {
        s.port_start = random;
        s.port_step = 1;
    }
    preserve
}

/// The `i`th port after the sandbox's own, in network byte order.
#[inline(always)]
fn candidate<A>(s: &Scratch<A>, i: u32) -> u16 {
    let span = if s.port_span == 0 { 1 } else { s.port_span };
    ((s.port_min + (s.port_start + s.port_step * i) % span) as u16).to_be()
}

/// Whether `port` may be a mapping's at all: not published, no socket of the host's on
/// it. ICMP identifiers are only ever mappings'.
// A call of its own: its branches end in one answer, so the verifier's walk of the port
// loops does not multiply by them.
#[inline(never)]
fn usable<A: Family>(ctx: &TcContext, s: &mut Scratch<A>, port: u16) -> bool {
    let proto = s.flow.original.proto;
    if proto == A::ICMP {
        return true;
    }
    port != 0 && !lookup::is_published_port(s.snat_key.external, port, proto) && !host_socket(ctx, s, port)
}

/// A port for a mapping of the default filtering (shared as long as the flow's tuple is
/// free), its reply tuple claimed; recorded as the source's mapping if `s.record`. Only
/// the sandbox's own port is checked for a host socket: the others are in natd's range,
/// outside the host's ephemeral ports, as before mappings (checking each would take the
/// verifier past its limit with the claims in the loop).
// Inlined: with its own frame, the IPv6 sandbox program's deepest call chain (through
// `claim_reply`) would pass the verifier's 512 bytes.
#[inline(always)]
fn shared_port<A: Family>(ctx: &TcContext, s: &mut Scratch<A>, net_flags: u32) -> Result<(), ClaimError> {
    if candidates(s, net_flags) && usable(ctx, s, s.flow.original.sport) {
        s.flow.translated.sport = s.flow.original.sport;
        match conntrack::claim_reply(s) {
            Ok(()) => {
                bump(counter::SNAT_PORT_PRESERVED);
                settle(s);
                return Ok(());
            }
            Err(InsertError::Clash) => {}
            Err(e) => return Err(ClaimError::Insert(e)),
        }
    }
    let proto = s.flow.original.proto;
    for i in 1..=SNAT_PORT_TRIES {
        let port = candidate(s, i);
        if proto != A::ICMP && lookup::is_published_port(s.snat_key.external, port, proto) {
            continue;
        }
        s.flow.translated.sport = port;
        match conntrack::claim_reply(s) {
            Ok(()) => {
                settle(s);
                return Ok(());
            }
            Err(InsertError::Clash) => continue,
            Err(e) => return Err(ClaimError::Insert(e)),
        }
    }
    Err(ClaimError::NoPort)
}

#[inline(always)]
fn settle<A: Family>(s: &mut Scratch<A>) {
    if s.record != 0 {
        commit(s);
    } else {
        bump(counter::SNAT_MAPPING_UNRECORDED);
    }
}

/// A port held by the new mapping alone (`s.port_key`, the flow's translated source
/// port); the reply tuple is the caller's to claim. Every port is checked for a host
/// socket: inbound packets to it are the mapping's.
#[inline(never)]
fn exclusive_port<A: Family>(ctx: &TcContext, s: &mut Scratch<A>, net_flags: u32) -> Result<(), ClaimError> {
    s.owner = SnatOwner {
        internal: s.snat_key.internal,
        port: s.snat_key.port,
        filter: (net_flags & FILTERS) as u8,
        _pad: 0,
    };
    if candidates(s, net_flags) && take_port(ctx, s, s.flow.original.sport) {
        bump(counter::SNAT_PORT_PRESERVED);
        return Ok(());
    }
    for i in 1..=SNAT_PORT_TRIES {
        if take_port(ctx, s, candidate(s, i)) {
            return Ok(());
        }
    }
    Err(ClaimError::NoPort)
}

/// Holds `port` for the mapping being made, if it is usable and no other mapping's.
#[inline(always)]
fn take_port<A: Family>(ctx: &TcContext, s: &mut Scratch<A>, port: u16) -> bool {
    if !usable(ctx, s, port) {
        return false;
    }
    s.port_key = lookup::port_key(s.snat_key.external, port, s.flow.original.proto);
    // A port mappings of the default filtering share is no one's alone (REQ-3).
    if A::snat_shared().get_ptr(&s.port_key).is_some() {
        return false;
    }
    if A::snat_ports().insert(&s.port_key, &s.owner, BPF_NOEXIST).is_err() {
        return false;
    }
    // Inbound packets to the port are the mapping's from now on (endpoint-independent
    // filtering), whether or not its flow is made.
    portmarks::mark(s.flow.original.proto, port, conntrack::now());
    s.flow.translated.sport = port;
    true
}

/// Records the source's mapping to the flow's port. Another CPU may have made one for the
/// same source meanwhile: this flow keeps its port (its reply tuple is claimed), counted.
#[inline(always)]
fn commit<A: Family>(s: &mut Scratch<A>) {
    let mapping = SnatMapping {
        port: s.flow.translated.sport,
        _pad: 0,
        last_seen: conntrack::now(),
    };
    if A::snat().insert(&s.snat_key, &mapping, BPF_NOEXIST).is_ok() {
        bump(counter::SNAT_MAPPING_NEW);
    } else {
        bump(counter::SNAT_MAPPING_UNRECORDED);
    }
}

/// Whether a socket of the host would receive the replies of a flow leaving with `port`
/// (one bound to it, or listening on it): that port is the host's, never a mapping's
/// (an endpoint-independent filter on it would hand the host's service to a sandbox).
#[inline(always)]
fn host_socket<A: Family>(ctx: &TcContext, s: &mut Scratch<A>, port: u16) -> bool {
    let sock = &mut s.sock;
    sock.src = s.flow.original.dst;
    sock.dst = s.flow.translated.src;
    sock.sport = s.flow.original.dport;
    sock.dport = port;
    socket_on(ctx, s, s.flow.original.proto)
}

/// Whether a socket of the host would receive `packet` (bound to or listening on its
/// destination): a SYN for the host's own service is the host's to answer.
#[inline(never)]
pub fn host_receives<A: Family>(ctx: &TcContext, s: &mut Scratch<A>, packet: &Packet<A>) -> bool {
    let sock = &mut s.sock;
    sock.src = packet.src;
    sock.dst = packet.dst;
    sock.sport = packet.sport;
    sock.dport = packet.dport;
    socket_on(ctx, s, packet.proto)
}

/// The socket lookup of the tuple in `s.sock` (TCP or UDP by `proto`).
#[inline(always)]
fn socket_on<A: Family>(ctx: &TcContext, s: &mut Scratch<A>, proto: u8) -> bool {
    // The kernel's `bpf_sock_tuple` is the tuple's first fields (addresses, ports).
    let size = (2 * core::mem::size_of::<A>() + 4) as u32;
    let tuple = &mut s.sock as *mut _ as *mut bpf_sock_tuple;
    let skb = ctx.skb.skb as *mut _;
    // SAFETY: the context and a per-CPU map value of at least `size` bytes; a socket
    // found is released at once.
    unsafe {
        let found = if proto == PROTO_TCP {
            bpf_sk_lookup_tcp(skb, tuple, size, CURRENT_NETNS, 0)
        } else {
            bpf_sk_lookup_udp(skb, tuple, size, CURRENT_NETNS, 0)
        };
        if found.is_null() {
            return false;
        }
        bpf_sk_release(found as *mut _);
    }
    true
}

/// Address-dependent filtering remembers the remote addresses a mapping sent to.
#[inline(always)]
fn permit_peer<A: Family>(s: &mut Scratch<A>, net_flags: u32) {
    if net_flags & net::FILTER_ADDRESS == 0 {
        return;
    }
    s.peer_key = SnatPeerKey {
        external: s.flow.translated.src,
        peer: s.flow.original.dst,
        port: s.flow.translated.sport,
        proto: s.flow.original.proto,
        _pad: 0,
    };
    let _ = A::snat_peers().insert(&s.peer_key, &conntrack::now(), 0);
}

/// Whether a new inbound packet (to `packet.dst`, `packet.dport`) is for a mapping whose
/// owner's filtering admits it from `peer` (the packet's source as the NAT's outside sees
/// it: the sender's external address when hairpinned); the owner is left in `s.owner`.
/// Only TCP and UDP.
#[inline(always)]
pub fn admitting<A: Family>(s: &mut Scratch<A>, packet: &Packet<A>, peer: &A) -> bool {
    if packet.proto != PROTO_TCP && packet.proto != PROTO_UDP {
        return false;
    }
    s.port_key = lookup::port_key(packet.dst, packet.dport, packet.proto);
    let Some(owner) = A::snat_ports().get_ptr(&s.port_key) else {
        return false;
    };
    // SAFETY: a port table's value, copied at once to the scratch area.
    unsafe { conntrack::copy_value(&mut s.owner, owner) };
    let filter = u32::from(s.owner.filter);
    if filter & net::FILTER_ENDPOINT != 0 {
        return true;
    }
    if filter & net::FILTER_ADDRESS == 0 {
        return false;
    }
    s.peer_key = SnatPeerKey {
        external: packet.dst,
        peer: *peer,
        port: packet.dport,
        proto: packet.proto,
        _pad: 0,
    };
    A::snat_peers().get_ptr(&s.peer_key).is_some()
}

/// A hairpinned packet (to `packet.dst`, `packet.dport`) that `admitting` refused or found
/// no holder for: whether the mapping behind that port sent a refused hairpinned packet
/// to the sender's own mapping on that address within `PUNCH_TICKS` (its owner is then
/// left in `s.owner`, as `admitting` leaves it). Else the sender's punch is recorded for
/// the other side's answer, when the sender has a mapping on that address (no one else
/// can know its port). This is what two punches through an outside NAT do, and it works
/// where ports are shared per destination and no `SnatOwner` names the mapping.
#[inline(always)]
pub fn punched<A: Family>(s: &mut Scratch<A>, packet: &Packet<A>) -> bool {
    if packet.proto != PROTO_TCP && packet.proto != PROTO_UDP {
        return false;
    }
    s.snat_key = SnatKey {
        internal: packet.src,
        external: packet.dst,
        port: packet.sport,
        proto: packet.proto,
        _pad: 0,
    };
    let Some(mapping) = A::snat().get_ptr(&s.snat_key) else {
        return false;
    };
    // SAFETY: valid map value pointer, read at once.
    let own = unsafe { (*mapping).port };
    // Under the default filtering another sandbox's mapping may share the sender's port:
    // only the first mapping on it speaks for it, punching or answering a punch (else
    // that one could take the place of the mapping its peer means).
    s.port_key = lookup::port_key(packet.dst, own, packet.proto);
    if !first_on_port(s, packet.src, packet.sport) {
        return false;
    }
    let now = conntrack::now();
    s.punch_key = PunchKey {
        external: packet.dst,
        from: packet.dport,
        to: own,
        proto: packet.proto,
        _pad: [0; 3],
    };
    if let Some(punch) = A::punches().get_ptr(&s.punch_key) {
        // SAFETY: a punch table's value, copied at once to the scratch area.
        unsafe { conntrack::copy_value(&mut s.punch, punch) };
        if now.wrapping_sub(s.punch.last_seen) <= PUNCH_TICKS && still_mapped(s, packet) {
            s.owner = SnatOwner {
                internal: s.punch.internal,
                port: s.punch.port,
                filter: 0,
                _pad: 0,
            };
            let _ = A::punches().remove(&s.punch_key);
            return true;
        }
    }
    s.punch_key.from = own;
    s.punch_key.to = packet.dport;
    s.punch = Punch {
        internal: packet.src,
        port: packet.sport,
        _pad: 0,
        last_seen: now,
    };
    let _ = A::punches().insert(&s.punch_key, &s.punch, 0);
    false
}

/// Whether the sender of the punch in `s.punch` still has the mapping it punched from
/// (`packet.dport` on `packet.dst`): one that expired since may have left its port to
/// another sandbox.
#[inline(always)]
fn still_mapped<A: Family>(s: &mut Scratch<A>, packet: &Packet<A>) -> bool {
    s.snat_key = SnatKey {
        internal: s.punch.internal,
        external: packet.dst,
        port: s.punch.port,
        proto: packet.proto,
        _pad: 0,
    };
    // SAFETY: valid map value pointer, field read.
    A::snat().get_ptr(&s.snat_key).is_some_and(|m| unsafe { (*m).port } == packet.dport)
}
