//! Connection tracking in two tables: `NATD_CT4_NEW` (an LRU) holds flows until their
//! handshake completes, `NATD_CT4` (preallocated) holds established ones, so a flood of
//! unanswered flows evicts its own kind and never locks out an established flow. Each flow
//! is two entries, one per direction, inserted reply first (which claims the translated
//! tuple atomically, BPF_NOEXIST) and never half-installed. Lookups try the established
//! table first: an established packet costs one lookup. Expiry is the agent's job.
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use nat_common::{Ct4Entry, Ct4Key, PROTO_TCP, clock, counter, csum, ct};

use crate::{
    counters::bump,
    lookup,
    maps::{NATD_CT4, NATD_CT4_NEW, NATD_SCRATCH},
    parse::{Ipv4Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;
/// `gen_slot` of a flow that depends on no mapping or endpoint.
pub const NO_SLOT: u32 = u32::MAX;

pub enum InsertError {
    /// The tuple is taken by another flow.
    Clash,
    /// The table is full (or another map error): only this new flow is refused.
    Full,
}

/// An IPv4 tuple, addresses and ports in network byte order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    #[inline(always)]
    pub fn of(packet: &Ipv4Packet) -> Self {
        Self {
            src: packet.src,
            dst: packet.dst,
            sport: packet.sport,
            dport: packet.dport,
            proto: packet.proto,
        }
    }

    #[inline(always)]
    pub fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    #[inline(always)]
    pub fn key(&self) -> Ct4Key {
        Ct4Key {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// What a packet matching an entry becomes.
    #[inline(always)]
    pub fn of_entry(entry: &Ct4Entry, proto: u8) -> Self {
        Self {
            src: entry.src,
            dst: entry.dst,
            sport: entry.sport,
            dport: entry.dport,
            proto,
        }
    }

    /// The 32-bit word the two ports form at the start of a TCP/UDP header.
    #[inline(always)]
    fn ports_word(&self) -> u32 {
        let (s, d) = (self.sport.to_ne_bytes(), self.dport.to_ne_bytes());
        u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
    }
}

#[inline(always)]
pub fn is_reply_kind(kind: u8) -> bool {
    kind == ct::DNAT_REPLY || kind == ct::SNAT_REPLY
}

#[inline(always)]
pub fn now() -> u32 {
    // SAFETY: no preconditions.
    clock::ticks(unsafe { bpf_ktime_get_coarse_ns() })
}

/// How one direction of a new flow is translated and forwarded.
#[derive(Clone, Copy)]
pub struct Leg {
    pub kind: u8,
    pub hooks: u8,
    pub flags: u8,
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub mtu: u16,
}

impl Leg {
    /// A direction that only the kernel's normal path forwards.
    #[inline(always)]
    pub fn slow(kind: u8, hooks: u8, in_ifindex: u32) -> Self {
        Self {
            kind,
            hooks,
            flags: if hooks & ct::HOOK_UPLINK_INGRESS != 0 {
                ct::FROM_OUTSIDE
            } else {
                0
            },
            in_ifindex,
            out_ifindex: 0,
            smac: [0; 6],
            dmac: [0; 6],
            mtu: 0,
        }
    }
}

/// Everything a new flow needs: both tuples, both legs, and what it depends on.
pub struct NewFlow {
    pub original: Tuple,
    pub translated: Tuple,
    pub forward: Leg,
    pub reply: Leg,
    pub gen_slot: u32,
    pub generation: u32,
}

/// A new flow and room for its two entries, in `NATD_SCRATCH`.
pub struct Scratch {
    pub flow: NewFlow,
    pub forward: Ct4Entry,
    pub reply: Ct4Entry,
}

/// This CPU's scratch area (None only if the map is missing, which loading prevents).
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: a per-CPU map value; programs on one CPU do not nest, so nothing else uses
    // it until this program returns.
    NATD_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn fill_entry(out: &mut Ct4Entry, from: &Tuple, to: &Tuple, leg: &Leg, flow: &NewFlow) {
    out.src = to.src;
    out.dst = to.dst;
    out.sport = to.sport;
    out.dport = to.dport;
    out.addr_csum = csum::diff2([from.src, from.dst], [to.src, to.dst]);
    out.port_csum = csum::diff1(from.ports_word(), to.ports_word());
    out.out_ifindex = leg.out_ifindex;
    out.in_ifindex = leg.in_ifindex;
    out.smac = leg.smac;
    out.dmac = leg.dmac;
    out.mtu = leg.mtu;
    out.kind = leg.kind;
    out.hooks = leg.hooks;
    out.flags = leg.flags;
    out.tcp = 0;
    out._pad = [0; 2];
    out.gen_slot = flow.gen_slot;
    out.generation = flow.generation;
    out.seq = 0;
    out.last_seen = now();
}

/// Inserts a reply-direction entry: its tuple may be claimed by an established flow too.
#[inline(always)]
fn insert_new(key: &Ct4Key, entry: &Ct4Entry) -> Result<(), InsertError> {
    if NATD_CT4.get_ptr(key).is_some() {
        return Err(InsertError::Clash);
    }
    insert_embryonic(key, entry)
}

/// Inserts into the embryonic table only. For a forward entry the packet's lookup just
/// found the tuple in neither table.
#[inline(always)]
fn insert_embryonic(key: &Ct4Key, entry: &Ct4Entry) -> Result<(), InsertError> {
    match NATD_CT4_NEW.insert(key, entry, BPF_NOEXIST) {
        Ok(()) => Ok(()),
        Err(e) if e == -EEXIST => Err(InsertError::Clash),
        Err(_) => Err(InsertError::Full),
    }
}

/// Fills the reply direction's entry; returns its key.
#[inline(always)]
fn fill_reply(s: &mut Scratch) -> Ct4Key {
    let from = s.flow.translated.reversed();
    let to = s.flow.original.reversed();
    fill_entry(&mut s.reply, &from, &to, &s.flow.reply, &s.flow);
    from.key()
}

/// Inserts a new flow (embryonic): the reply direction's entry first, then the forward
/// one (left in `s.forward`); if the second fails the first is removed again.
#[inline(never)]
pub fn create(s: &mut Scratch) -> Result<(), InsertError> {
    let reply_key = fill_reply(s);
    insert_new(&reply_key, &s.reply)?;
    finish(s)
}

/// Claims only the reply tuple (the NAT port search); `finish` adds the forward entry. A
/// TCP tuple whose old flow is closed in both directions (or reset) is taken over, with
/// remove and a BPF_NOEXIST insert, so two CPUs can never both take it.
#[inline(never)]
pub fn claim_reply(s: &mut Scratch) -> Result<(), InsertError> {
    let key = fill_reply(s);
    match insert_new(&key, &s.reply) {
        Err(InsertError::Clash) if s.flow.original.proto == PROTO_TCP => {
            let old = lookup(&key).ok_or(InsertError::Clash)?;
            // SAFETY: valid map value pointer, read before anything is removed.
            let old_entry = unsafe { &*old.entry };
            if old_entry.kind != s.flow.reply.kind || !closed(&key, old_entry) {
                return Err(InsertError::Clash);
            }
            forget(&key, old_entry);
            insert_new(&key, &s.reply)?;
            bump(counter::CT_TAKEOVER);
            Ok(())
        }
        other => other,
    }
}

/// Adds the forward entry (left in `s.forward`) of a flow whose reply tuple is claimed;
/// on failure the claim is given up.
#[inline(always)]
pub fn finish(s: &mut Scratch) -> Result<(), InsertError> {
    let flow = &s.flow;
    fill_entry(
        &mut s.forward,
        &flow.original,
        &flow.translated,
        &flow.forward,
        flow,
    );
    if flow.original.proto == PROTO_TCP {
        s.forward.tcp = ct::TCP_SYN;
    }
    if let Err(e) = insert_embryonic(&flow.original.key(), &s.forward) {
        let _ = NATD_CT4_NEW.remove(&flow.translated.reversed().key());
        return Err(e);
    }
    Ok(())
}

/// Whether a TCP flow is over: reset, or finished in both directions.
#[inline(always)]
fn closed(key: &Ct4Key, entry: &Ct4Entry) -> bool {
    // SAFETY: valid map value pointer, field read.
    let peer_tcp = lookup(&key.peer(entry))
        .map(|p| unsafe { (*p.entry).tcp })
        .unwrap_or(ct::TCP_RST);
    let both = entry.tcp | peer_tcp;
    both & ct::TCP_RST != 0 || (entry.tcp & ct::TCP_FIN != 0 && peer_tcp & ct::TCP_FIN != 0)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Established,
    Embryonic,
}

/// An entry found for a packet.
pub struct Hit {
    pub entry: *mut Ct4Entry,
    pub table: Table,
}

#[inline(always)]
pub fn lookup(key: &Ct4Key) -> Option<Hit> {
    if let Some(entry) = NATD_CT4.get_ptr_mut(key) {
        return Some(Hit {
            entry,
            table: Table::Established,
        });
    }
    NATD_CT4_NEW.get_ptr_mut(key).map(|entry| Hit {
        entry,
        table: Table::Embryonic,
    })
}

/// Removes both entries of a flow from whichever table holds them: the original
/// direction first, so the tuple the reply entry claims is never free while an entry that
/// translates into it remains.
#[inline(always)]
pub fn forget(key: &Ct4Key, entry: &Ct4Entry) {
    let peer = key.peer(entry);
    let (first, second) = if is_reply_kind(entry.kind) {
        (peer, *key)
    } else {
        (*key, peer)
    };
    let _ = NATD_CT4.remove(&first);
    let _ = NATD_CT4_NEW.remove(&first);
    let _ = NATD_CT4.remove(&second);
    let _ = NATD_CT4_NEW.remove(&second);
}

/// Whether the mapping or endpoint the flow depends on is still the one it started with.
#[inline(always)]
pub fn live(entry: &Ct4Entry) -> bool {
    entry.gen_slot == NO_SLOT || lookup::generation(entry.gen_slot) == entry.generation
}

/// The timestamp, written only when the coarse clock moved.
#[inline(always)]
pub fn touch(entry: *mut Ct4Entry) {
    let now = now();
    // SAFETY: a pointer into a map value; racing CPUs write the same tick.
    unsafe {
        if (*entry).last_seen != now {
            (*entry).last_seen = now;
        }
    }
}

/// What the tracker decided about a packet of a known flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Translate and forward it as the flow says.
    Forward,
    /// The flow's handshake completed with this packet: move it to the established table.
    Promote,
    /// A SYN on a flow that is over: the tuple starts a new flow.
    Restart,
}

/// Follows a packet of a known flow: TCP events are recorded only when plausible for the
/// direction (a SYN-ACK only from the responder, a FIN only with ACK, the originator's ACK
/// must acknowledge the SYN-ACK's sequence number); implausible ones are counted and
/// change nothing. UDP and ICMP flows are established once a reply was seen and the
/// originator spoke again.
#[inline(always)]
pub fn track(key: &Ct4Key, hit: &Hit, packet: &Ipv4Packet) -> Verdict {
    let entry = hit.entry;
    // SAFETY: a pointer into a map value; only this entry's own direction writes these
    // fields (one CPU at a time per direction in practice; a lost update only delays).
    let (kind, tcp_seen) = unsafe { ((*entry).kind, (*entry).tcp) };
    let reply_direction = is_reply_kind(kind);
    if packet.proto != PROTO_TCP {
        if reply_direction {
            // SAFETY: as above.
            unsafe { (*entry).flags |= ct::REPLIED };
            return Verdict::Forward;
        }
        return embryonic_confirmed(key, hit, |peer| peer.flags & ct::REPLIED != 0);
    }
    let flags = packet.tcp_flags;
    let mut seen = 0u8;
    let mut plausible = true;
    if flags & TCP_RST != 0 {
        plausible = flags & TCP_SYN == 0;
        seen = ct::TCP_RST;
    } else if flags & TCP_SYN != 0 && flags & TCP_ACK != 0 {
        plausible = reply_direction && tcp_seen & ct::TCP_ESTABLISHED == 0;
        if plausible {
            // SAFETY: as above.
            unsafe { (*entry).seq = packet.seq };
        }
        seen = ct::TCP_SYNACK;
    } else if flags & TCP_SYN != 0 {
        if reply_direction {
            plausible = false;
        } else if tcp_seen & (ct::TCP_FIN | ct::TCP_RST) != 0 {
            return Verdict::Restart;
        }
        seen = ct::TCP_SYN;
    } else if flags & TCP_FIN != 0 {
        plausible = flags & TCP_ACK != 0;
        seen = ct::TCP_FIN;
    }
    if !plausible {
        bump(counter::TCP_INVALID);
        return Verdict::Forward;
    }
    if seen != 0 {
        // SAFETY: as above.
        unsafe { (*entry).tcp = tcp_seen | seen };
    }
    if reply_direction || flags & (TCP_SYN | TCP_RST) != 0 || flags & TCP_ACK == 0 {
        return Verdict::Forward;
    }
    // The originator's ACK: it completes the handshake if it acknowledges the SYN-ACK.
    let ack = u32::from_be(packet.ack);
    embryonic_confirmed(key, hit, |peer| {
        peer.tcp & ct::TCP_SYNACK != 0 && ack == u32::from_be(peer.seq).wrapping_add(1)
    })
}

/// For a packet of the originator of an embryonic flow: promote when the reply entry
/// shows what completes the exchange.
#[inline(always)]
fn embryonic_confirmed(key: &Ct4Key, hit: &Hit, confirmed: impl Fn(&Ct4Entry) -> bool) -> Verdict {
    if hit.table != Table::Embryonic {
        return Verdict::Forward;
    }
    // SAFETY: a pointer into a map value; only the peer's key is read.
    let peer_key = key.peer(unsafe { &*hit.entry });
    match NATD_CT4_NEW.get_ptr(&peer_key) {
        // SAFETY: as above.
        Some(peer) if confirmed(unsafe { &*peer }) => Verdict::Promote,
        Some(_) => {
            if key.proto == PROTO_TCP {
                bump(counter::TCP_INVALID);
            }
            Verdict::Forward
        }
        None => Verdict::Forward,
    }
}

/// Moves a flow whose handshake completed from the embryonic table to the established
/// one. If the established table is full the flow stays embryonic (and keeps working).
#[inline(never)]
pub fn promote(key: &Ct4Key, hit: &Hit) {
    let Some(s) = scratch() else {
        return;
    };
    // SAFETY: a pointer into a map value, copied (the flow is being moved between maps).
    s.forward = unsafe { *hit.entry };
    s.forward.tcp |= ct::TCP_ESTABLISHED;
    let peer_key = key.peer(&s.forward);
    let Some(peer) = NATD_CT4_NEW.get_ptr(&peer_key) else {
        return;
    };
    // SAFETY: as above.
    s.reply = unsafe { *peer };
    // The reply direction first: it holds the claim on the translated tuple.
    let (first, second) = if is_reply_kind(s.forward.kind) {
        ((key, &s.forward), (&peer_key, &s.reply))
    } else {
        ((&peer_key, &s.reply), (key, &s.forward))
    };
    match NATD_CT4.insert(first.0, first.1, BPF_NOEXIST) {
        Ok(()) => {}
        // Another CPU promoted it already.
        Err(e) if e == -EEXIST => return,
        Err(_) => {
            bump(counter::CT_PROMOTE_FULL);
            return;
        }
    }
    if NATD_CT4.insert(second.0, second.1, BPF_NOEXIST).is_err() {
        let _ = NATD_CT4.remove(first.0);
        bump(counter::CT_PROMOTE_FULL);
        return;
    }
    let _ = NATD_CT4_NEW.remove(second.0);
    let _ = NATD_CT4_NEW.remove(first.0);
    bump(counter::CT_PROMOTED);
}
