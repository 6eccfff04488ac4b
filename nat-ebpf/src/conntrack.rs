//! Connection tracking in two tables per family: `NATD_CT4_NEW`/`NATD_CT6_NEW` (LRUs) hold
//! flows until their handshake completes, `NATD_CT4`/`NATD_CT6` (preallocated) hold
//! established ones, so a flood of
//! unanswered flows evicts its own kind and never locks out an established flow. Each flow
//! is two entries, one per direction, inserted reply first (which claims the translated
//! tuple atomically, BPF_NOEXIST) and never half-installed. Lookups try the established
//! table first: an established packet costs one lookup. Expiry is the agent's job.
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use nat_common::{
    CtEntry, CtKey, PROTO_TCP, PortKey, PortTarget, Punch, PunchKey, SnatKey, SnatOwner, SnatPeerKey, clock, counter, csum, ct,
    port_marks,
};

use crate::{
    counters::bump,
    family::Family,
    lookup,
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    portmarks, quota,
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
    /// The flow's source has its quota of embryonic flows (`NatConfig`).
    Quota,
}

/// A tuple, addresses and ports in network byte order: the same layout as a table key,
/// so a tuple is looked up where it lies (no 40-byte IPv6 key copies on the stack).
pub type Tuple<A> = CtKey<A>;

pub trait TupleOps<A>: Sized {
    fn of(packet: &Packet<A>) -> Self;
    /// `of`, written into `self`.
    fn set_from(&mut self, packet: &Packet<A>);
    fn reversed(&self) -> Self;
    /// `reversed`, written into `out` (no temporary: IPv6 tuples are 40 bytes).
    fn reverse_into(&self, out: &mut Self);
    /// What a packet matching an entry becomes.
    fn of_entry(entry: &CtEntry<A>, proto: u8) -> Self;
    /// The 32-bit word the two ports form at the start of a TCP/UDP header.
    fn ports_word(&self) -> u32;
}

impl<A: Family> TupleOps<A> for Tuple<A> {
    #[inline(always)]
    fn of(packet: &Packet<A>) -> Self {
        Self {
            src: packet.src,
            dst: packet.dst,
            sport: packet.sport,
            dport: packet.dport,
            proto: packet.proto,
            _pad: [0; 3],
        }
    }

    #[inline(always)]
    fn set_from(&mut self, packet: &Packet<A>) {
        self.src = packet.src;
        self.dst = packet.dst;
        self.sport = packet.sport;
        self.dport = packet.dport;
        self.proto = packet.proto;
        self._pad = [0; 3];
    }

    #[inline(always)]
    fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    #[inline(always)]
    fn reverse_into(&self, out: &mut Self) {
        out.src = self.dst;
        out.dst = self.src;
        out.sport = self.dport;
        out.dport = self.sport;
        out.proto = self.proto;
        out._pad = [0; 3];
    }

    #[inline(always)]
    fn of_entry(entry: &CtEntry<A>, proto: u8) -> Self {
        Self {
            src: entry.src,
            dst: entry.dst,
            sport: entry.sport,
            dport: entry.dport,
            proto,
            _pad: [0; 3],
        }
    }

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
            flags: if hooks & ct::HOOK_EDGE_INGRESS != 0 {
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
pub struct NewFlow<A> {
    pub original: Tuple<A>,
    pub translated: Tuple<A>,
    pub forward: Leg,
    pub reply: Leg,
    pub gen_slot: u32,
    pub generation: u32,
    /// TCP: the SYN's sequence number (the originator's initial one).
    pub syn_seq: u32,
}

/// A new flow and room for its two entries, in `NATD_SCRATCH`.
pub struct Scratch<A> {
    pub flow: NewFlow<A>,
    /// The reply direction's key (the translated tuple reversed) and what it becomes.
    pub reply_key: Tuple<A>,
    pub reply_to: Tuple<A>,
    pub forward: CtEntry<A>,
    pub reply: CtEntry<A>,
    /// IPv6: the copy of the entry an established packet is forwarded by (88 bytes the
    /// stack of that path cannot spare).
    pub current: CtEntry<A>,
    /// The masquerade mapping being looked up or made (`mapping`), and the tuple of a
    /// host socket lookup (its first fields are the kernel's `bpf_sock_tuple`).
    pub snat_key: SnatKey<A>,
    pub port_key: PortKey<A>,
    pub owner: SnatOwner<A>,
    pub peer_key: SnatPeerKey<A>,
    /// A refused hairpin's record (`mapping::punched`).
    pub punch_key: PunchKey<A>,
    pub punch: Punch<A>,
    pub sock: Tuple<A>,
    /// Where a new flow from outside goes (a published port's target, or a mapping's).
    pub target: PortTarget<A>,
    /// The counter a prepared masqueraded flow bumps when it starts.
    pub new_counter: u32,
    /// The ports a new mapping tries (`mapping`): `min + (start + step * i) % span`. In
    /// map memory, not registers: the verifier then walks the port loops once, not once
    /// per way of filling them.
    pub port_min: u32,
    pub port_span: u32,
    pub port_start: u32,
    pub port_step: u32,
    /// Whether the port found becomes the source's mapping (else the flow's alone).
    pub record: u32,
}

/// This CPU's scratch area of the family (None only if the map is missing, which loading
/// prevents).
#[inline(always)]
pub fn scratch<A: Family>() -> Option<&'static mut Scratch<A>> {
    // SAFETY: a per-CPU map value; programs on one CPU do not nest, so nothing else uses
    // it until this program returns.
    A::scratch_ptr().map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn fill_entry<A: Family>(out: &mut CtEntry<A>, from: &Tuple<A>, to: &Tuple<A>, leg: &Leg, flow: &NewFlow<A>) {
    out.src = to.src;
    out.dst = to.dst;
    out.sport = to.sport;
    out.dport = to.dport;
    out.addr_csum = csum::add(
        A::csum_diff1(&from.src, &to.src),
        A::csum_diff1(&from.dst, &to.dst),
    );
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
fn insert_new<A: Family>(key: &CtKey<A>, entry: &CtEntry<A>) -> Result<(), InsertError> {
    if A::ct().get_ptr(key).is_some() {
        return Err(InsertError::Clash);
    }
    insert_embryonic(key, entry)
}

/// Inserts into the embryonic table only. For a forward entry the packet's lookup just
/// found the tuple in neither table.
#[inline(always)]
fn insert_embryonic<A: Family>(key: &CtKey<A>, entry: &CtEntry<A>) -> Result<(), InsertError> {
    match A::ct_new().insert(key, entry, BPF_NOEXIST) {
        Ok(()) => {
            mark_port(key, entry, entry.last_seen);
            Ok(())
        }
        Err(e) if e == -EEXIST => Err(InsertError::Clash),
        Err(_) => Err(InsertError::Full),
    }
}

/// Marks the destination port of an entry looked up at an edge's ingress as natd's
/// (`portmarks`), at clock tick `now`.
#[inline(always)]
fn mark_port<A>(key: &CtKey<A>, entry: &CtEntry<A>, now: u32) {
    if let Some(index) = port_marks::of_flow(key, entry) {
        portmarks::set(index, now);
    }
}

/// Fills the reply direction's entry and its key (`s.reply_key`).
#[inline(always)]
fn fill_reply<A: Family>(s: &mut Scratch<A>) {
    s.flow.translated.reverse_into(&mut s.reply_key);
    s.flow.original.reverse_into(&mut s.reply_to);
    fill_entry(&mut s.reply, &s.reply_key, &s.reply_to, &s.flow.reply, &s.flow);
}

/// Inserts a new flow (embryonic): the reply direction's entry first, then the forward
/// one (left in `s.forward`); if the second fails the first is removed again.
#[inline(never)]
pub fn create<A: Family>(s: &mut Scratch<A>) -> Result<(), InsertError> {
    fill_reply(s);
    insert_new(&s.reply_key, &s.reply)?;
    finish(s)
}

/// Claims only the reply tuple (the NAT port search); `finish` adds the forward entry. A
/// TCP tuple whose old flow is closed in both directions (or reset) is taken over, with
/// remove and a BPF_NOEXIST insert, so two CPUs can never both take it.
#[inline(never)]
pub fn claim_reply<A: Family>(s: &mut Scratch<A>) -> Result<(), InsertError> {
    fill_reply(s);
    let key = &s.reply_key;
    match insert_new(key, &s.reply) {
        Err(InsertError::Clash) if s.flow.original.proto == PROTO_TCP => {
            let old = lookup(key).ok_or(InsertError::Clash)?;
            // SAFETY: valid map value pointer, read before anything is removed.
            let old_entry = unsafe { &*old.entry };
            if old_entry.kind != s.flow.reply.kind || !closed(key, old_entry) {
                return Err(InsertError::Clash);
            }
            forget(key, old_entry);
            insert_new(key, &s.reply)?;
            bump(counter::CT_TAKEOVER);
            Ok(())
        }
        other => other,
    }
}

/// Adds the forward entry (left in `s.forward`) of a flow whose reply tuple is claimed;
/// on failure the claim is given up.
#[inline(always)]
pub fn finish<A: Family>(s: &mut Scratch<A>) -> Result<(), InsertError> {
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
        s.forward.seq = flow.syn_seq;
    }
    if let Err(e) = insert_embryonic(&flow.original, &s.forward) {
        let _ = A::ct_new().remove(&s.reply_key);
        return Err(e);
    }
    Ok(())
}

/// Whether a TCP flow is over: reset, or finished in both directions. A reply entry
/// without its forward one is an orphan only once its clock tick has passed: within it,
/// it may be a flow another CPU is starting (its reply tuple claimed, its forward entry
/// not inserted yet), which must not be taken over.
#[inline(never)]
fn closed<A: Family>(key: &CtKey<A>, entry: &CtEntry<A>) -> bool {
    let orphan = if entry.last_seen == now() { 0 } else { ct::TCP_RST };
    // SAFETY: valid map value pointer, field read.
    let peer_tcp = lookup(&key.peer(entry)).map(|p| unsafe { (*p.entry).tcp }).unwrap_or(orphan);
    let both = entry.tcp | peer_tcp;
    both & ct::TCP_RST != 0 || (entry.tcp & ct::TCP_FIN != 0 && peer_tcp & ct::TCP_FIN != 0)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Established,
    Embryonic,
}

/// An entry found for a packet.
pub struct Hit<A> {
    pub entry: *mut CtEntry<A>,
    pub table: Table,
}

#[inline(always)]
pub fn lookup<A: Family>(key: &CtKey<A>) -> Option<Hit<A>> {
    if let Some(entry) = A::ct().get_ptr_mut(key) {
        return Some(Hit {
            entry,
            table: Table::Established,
        });
    }
    A::ct_new().get_ptr_mut(key).map(|entry| Hit {
        entry,
        table: Table::Embryonic,
    })
}

/// Removes both entries of a flow from whichever table holds them: the original
/// direction first, so the tuple the reply entry claims is never free while an entry that
/// translates into it remains.
#[inline(never)]
pub fn forget<A: Family>(key: &CtKey<A>, entry: &CtEntry<A>) {
    let peer = key.peer(entry);
    let (first, second) = if is_reply_kind(entry.kind) {
        (&peer, key)
    } else {
        (key, &peer)
    };
    let _ = A::ct().remove(first);
    let _ = A::ct_new().remove(first);
    let _ = A::ct().remove(second);
    let _ = A::ct_new().remove(second);
}

/// Whether the mapping or endpoint the flow depends on is still the one it started with.
#[inline(always)]
pub fn live<A>(entry: &CtEntry<A>) -> bool {
    entry.gen_slot == NO_SLOT || lookup::generation(entry.gen_slot) == entry.generation
}

/// The timestamp, written only when the coarse clock moved.
#[inline(always)]
pub fn touch<A>(entry: *mut CtEntry<A>) {
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
/// must acknowledge the SYN-ACK's sequence number, an RST only with the sequence number
/// its receiver expects: RFC 5961, as Linux's conntrack since 5.x); implausible ones are
/// counted and change nothing. UDP and ICMP flows are established once a reply was seen
/// and the originator spoke again.
#[inline(always)]
pub fn track<A: Family>(key: &CtKey<A>, hit: &Hit<A>, packet: &Packet<A>) -> Verdict {
    let entry = hit.entry;
    // SAFETY: a pointer into a map value; only this entry's own direction writes these
    // fields (one CPU at a time per direction in practice; a lost update only delays).
    let (kind, tcp_seen) = unsafe { ((*entry).kind, (*entry).tcp) };
    let reply_direction = is_reply_kind(kind);
    if packet.proto != PROTO_TCP {
        if reply_direction {
            // SAFETY: as above.
            unsafe {
                if (*entry).flags & ct::REPLIED == 0 {
                    (*entry).flags |= ct::REPLIED;
                    // The originator is where this reply goes.
                    quota::release_embryonic(&(*entry).dst, kind);
                }
            }
            return Verdict::Forward;
        }
        return embryonic_confirmed(key, hit, |peer| peer.flags & ct::REPLIED != 0);
    }
    let flags = packet.tcp_flags;
    if hit.table == Table::Established && flags & TCP_RST == 0 {
        record_end(entry, seq_end(packet));
    }
    let mut seen = 0u8;
    let mut plausible = true;
    if flags & TCP_RST != 0 {
        plausible = flags & TCP_SYN == 0;
        if plausible && !rst_expected(key, hit, packet) {
            // Blind or stale: the endpoint judges it (RFC 5961); the flow stays as it is.
            bump(counter::TCP_RST_IGNORED);
            return Verdict::Forward;
        }
        seen = ct::TCP_RST;
    } else if flags & TCP_SYN != 0 && flags & TCP_ACK != 0 {
        // From the originator it answers the responder's own SYN (simultaneous open):
        // judged below as the handshake's last ACK is.
        if reply_direction {
            plausible = tcp_seen & ct::TCP_ESTABLISHED == 0;
            // Established (a simultaneous open's second SYN-ACK comes after), the entry
            // tracks where the direction's segments end instead.
            if plausible && hit.table == Table::Embryonic {
                // SAFETY: as above.
                unsafe { (*entry).seq = packet.seq };
            }
            seen = ct::TCP_SYNACK;
        }
    } else if flags & TCP_SYN != 0 {
        if reply_direction {
            // Simultaneous open (RFC 793 section 3.4, RFC 5382 REQ-2: a NAT must support
            // it): the responder's own SYN before any SYN-ACK of its own, kept as one (its
            // sequence number is what the originator's SYN-ACK acknowledges).
            plausible = tcp_seen & (ct::TCP_SYNACK | ct::TCP_ESTABLISHED) == 0;
            if plausible {
                // SAFETY: as above.
                unsafe { (*entry).seq = packet.seq };
            }
            seen = ct::TCP_SYNACK;
        } else if tcp_seen & (ct::TCP_FIN | ct::TCP_RST) != 0 {
            return Verdict::Restart;
        } else {
            seen = ct::TCP_SYN;
        }
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
    if reply_direction || flags & TCP_RST != 0 || flags & TCP_ACK == 0 {
        return Verdict::Forward;
    }
    // The originator's ACK (or SYN-ACK): it completes the handshake if it acknowledges
    // the responder's SYN.
    let ack = u32::from_be(packet.ack);
    embryonic_confirmed(key, hit, |peer| {
        peer.tcp & ct::TCP_SYNACK != 0 && ack == u32::from_be(peer.seq).wrapping_add(1)
    })
}

/// Where a TCP segment ends in its sender's sequence space (host byte order): its
/// sequence number plus its payload, plus one for a SYN or FIN. A BIG TCP packet, whose
/// length is not in its header, counts as empty (the end then lags until the next one).
#[inline(always)]
pub fn seq_end<A>(packet: &Packet<A>) -> u32 {
    let header = (packet.l4 - packet.l3) as u32 + u32::from(packet.tcp_hlen);
    let payload = packet.tot_len.saturating_sub(header);
    let control = u32::from(packet.tcp_flags & (TCP_SYN | TCP_FIN) != 0);
    u32::from_be(packet.seq).wrapping_add(payload).wrapping_add(control)
}

/// An established direction's furthest segment end: its SND.NXT as far as natd saw.
/// Only moved forward (serial arithmetic), so a reordered or forged older segment does not
/// pull it back; written only when it moves (data segments, not pure ACKs). Flows carried
/// over from a natd that kept something else there start again at their next segment.
#[inline(always)]
fn record_end<A>(entry: *mut CtEntry<A>, end: u32) {
    // SAFETY: a pointer into a map value, written by this direction only.
    unsafe {
        let last = u32::from_be((*entry).seq);
        let ahead = end.wrapping_sub(last);
        if last == 0 || (ahead != 0 && ahead <= SEQ_ADVANCE_MAX) {
            (*entry).seq = end.to_be();
        }
    }
}

/// How far one segment may move a direction's recorded end. natd is on the path: a
/// sender's segments pass here in order, each at most the receiver's window beyond what
/// was acknowledged, so the end moves by a segment's length at a time (64 KiB with GSO,
/// 512 KiB with BIG TCP), or by what was lost before natd saw it. A segment further
/// ahead is forged: recorded, it would let its author's RST at that end reset the flow
/// (a blind reset in two packets instead of RFC 5961's one in 2^32).
const SEQ_ADVANCE_MAX: u32 = 8 << 20;

/// Whether an RST carries the sequence number its sender's peer expects next (RFC 5961
/// 3.2: only such an RST resets a receiver; anything else, in the window or not, is
/// challenged or dropped there). Established: exactly the sender's furthest segment end,
/// which an endpoint's RST carries (SND.NXT, RFC 793), also right after data its peer has
/// not acknowledged yet. During the handshake (RFC 793 3.4): from the responder,
/// acknowledging the originator's SYN or following its own SYN-ACK; from the originator,
/// following its SYN.
#[inline(never)]
fn rst_expected<A: Family>(key: &CtKey<A>, hit: &Hit<A>, packet: &Packet<A>) -> bool {
    // SAFETY: valid map value pointers, fields read at once.
    let entry = unsafe { &*hit.entry };
    let seq = u32::from_be(packet.seq);
    if hit.table == Table::Established {
        return seq == u32::from_be(entry.seq);
    }
    if !is_reply_kind(entry.kind) {
        return seq == u32::from_be(entry.seq).wrapping_add(1);
    }
    let Some(peer) = lookup(&key.peer(entry)) else {
        // Half a flow (being removed): nothing left to protect.
        return true;
    };
    // SAFETY: as above.
    let syn = u32::from_be(unsafe { (*peer.entry).seq });
    let acks_syn = packet.tcp_flags & TCP_ACK != 0 && u32::from_be(packet.ack) == syn.wrapping_add(1);
    let after_synack = entry.tcp & ct::TCP_SYNACK != 0 && seq == u32::from_be(entry.seq).wrapping_add(1);
    acks_syn || after_synack
}

/// For a packet of the originator of an embryonic flow: promote when the reply entry
/// shows what completes the exchange.
#[inline(always)]
fn embryonic_confirmed<A: Family>(
    key: &CtKey<A>,
    hit: &Hit<A>,
    confirmed: impl Fn(&CtEntry<A>) -> bool,
) -> Verdict {
    if hit.table != Table::Embryonic {
        return Verdict::Forward;
    }
    // SAFETY: a pointer into a map value; only the peer's key is read.
    let peer_key = key.peer(unsafe { &*hit.entry });
    match A::ct_new().get_ptr(&peer_key) {
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

/// `*to = *from` for a map value, as one inlined copy. The plain assignment between two
/// map pointers (into this CPU's scratch area) becomes a call to the out-of-line,
/// byte-at-a-time `memmove` of compiler_builtins (LLVM cannot rule out that they
/// overlap): 15 % of an IPv6 packet's time in the benchmark's profile. They never overlap
/// (the scratch area is a map of its own).
///
/// # Safety
/// `from` is a valid value pointer of a map other than the one `to` is in.
#[inline(always)]
pub unsafe fn copy_value<T: Copy>(to: &mut T, from: *const T) {
    // SAFETY: as the caller guarantees.
    unsafe { core::ptr::copy_nonoverlapping(from, to, 1) }
}

/// Moves a flow whose handshake completed from the embryonic table to the established
/// one (`end`: where the originator's packet ends, `seq_end`). If the established table
/// is full, or a UDP/ICMP flow's source has its quota of promoted flows, the flow stays
/// embryonic (and keeps working).
#[inline(never)]
pub fn promote<A: Family>(key: &CtKey<A>, hit: &Hit<A>, end: u32) {
    let Some(s) = scratch::<A>() else {
        return;
    };
    // SAFETY: a pointer into a connection table's value, copied to the scratch area (the
    // flow is being moved between maps).
    unsafe { copy_value(&mut s.forward, hit.entry) };
    let kind = s.forward.kind;
    if key.proto != PROTO_TCP && !quota::promotion_room(&key.src, kind) {
        bump(counter::PROMOTE_SOURCE_QUOTA);
        return;
    }
    s.forward.tcp |= ct::TCP_ESTABLISHED;
    let peer_key = key.peer(&s.forward);
    let Some(peer) = A::ct_new().get_ptr(&peer_key) else {
        return;
    };
    // SAFETY: as above.
    unsafe { copy_value(&mut s.reply, peer) };
    if key.proto == PROTO_TCP {
        // From here on each direction keeps its furthest segment end (see `rst_expected`):
        // the responder's is its SYN-ACK's, the originator's this packet's.
        s.reply.seq = u32::from_be(s.reply.seq).wrapping_add(1).to_be();
        s.forward.seq = end.to_be();
    }
    // The reply direction first: it holds the claim on the translated tuple.
    let (first, second) = if is_reply_kind(s.forward.kind) {
        ((key, &s.forward), (&peer_key, &s.reply))
    } else {
        ((&peer_key, &s.reply), (key, &s.forward))
    };
    // natd's tick may walk the established table before the move and the embryonic one
    // after it, seeing the flow in neither: a mark of now, made before the flow can be
    // missed, is one its sweep keeps whatever its walk saw.
    let now = now();
    mark_port(first.0, first.1, now);
    mark_port(second.0, second.1, now);
    match A::ct().insert(first.0, first.1, BPF_NOEXIST) {
        Ok(()) => {}
        // Another CPU promoted it already.
        Err(e) if e == -EEXIST => return,
        Err(_) => {
            bump(counter::CT_PROMOTE_FULL);
            return;
        }
    }
    if A::ct().insert(second.0, second.1, BPF_NOEXIST).is_err() {
        let _ = A::ct().remove(first.0);
        bump(counter::CT_PROMOTE_FULL);
        return;
    }
    let _ = A::ct_new().remove(second.0);
    let _ = A::ct_new().remove(first.0);
    if key.proto == PROTO_TCP {
        quota::release_embryonic(&key.src, kind);
    } else {
        quota::count_promoted(&key.src, kind);
    }
    bump(counter::CT_PROMOTED);
}
