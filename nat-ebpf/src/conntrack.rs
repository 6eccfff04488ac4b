//! Connection tracking in `NATD_CT`: tuple keys, flows inserted as a pair that is never
//! half-installed, and per-packet state updates. Expiry is the agent's job (it sees both
//! directions at once).
use aya_ebpf::helpers::bpf_ktime_get_ns;
use nat_common::{
    CtEntry, CtKey, FAMILY_V4, PROTO_TCP,
    addr::{v4_from_raw, v4_raw},
    ct,
};

use crate::{
    maps::NATD_CT,
    parse::{Ipv4Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

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
    pub fn key(&self) -> CtKey {
        CtKey {
            src: v4_from_raw(self.src),
            dst: v4_from_raw(self.dst),
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    #[inline(always)]
    pub fn of_entry(entry: &CtEntry, proto: u8) -> Self {
        Self {
            src: v4_raw(&entry.src),
            dst: v4_raw(&entry.dst),
            sport: entry.sport,
            dport: entry.dport,
            proto,
        }
    }
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn entry(kind: u8, from: &Tuple, to: &Tuple, mapping_id: u32) -> CtEntry {
    let now = now();
    let mut rewrite = 0;
    if from.src != to.src || from.sport != to.sport {
        rewrite |= ct::REWRITE_SRC;
    }
    if from.dst != to.dst || from.dport != to.dport {
        rewrite |= ct::REWRITE_DST;
    }
    CtEntry {
        src: v4_from_raw(to.src),
        dst: v4_from_raw(to.dst),
        sport: to.sport,
        dport: to.dport,
        rewrite,
        kind,
        state: if from.proto == PROTO_TCP {
            ct::TCP_SYN_SENT
        } else {
            ct::DGRAM_NEW
        },
        _pad: 0,
        mapping_id,
        _pad2: 0,
        created_ns: now,
        last_seen_ns: now,
        packets: 0,
        bytes: 0,
    }
}

/// The reply direction's entry first (it claims the translated tuple), then the forward
/// one; if the second fails the first is removed again.
#[inline(always)]
pub fn track(
    original: &Tuple,
    translated: &Tuple,
    kinds: (u8, u8),
    mapping_id: u32,
) -> Result<CtEntry, InsertError> {
    let reply_key = translated.reversed().key();
    let reply = entry(kinds.1, &translated.reversed(), &original.reversed(), mapping_id);
    insert_new(&reply_key, &reply)?;
    let forward = entry(kinds.0, original, translated, mapping_id);
    if let Err(e) = insert_new(&original.key(), &forward) {
        let _ = NATD_CT.remove(&reply_key);
        return Err(e);
    }
    Ok(forward)
}

/// Claims only the reply tuple (masquerade port search); `finish` adds the forward entry.
/// A TCP flow that has seen FIN or RST from the far side no longer needs its tuple: it is
/// taken over (as netfilter reuses TIME_WAIT/CLOSE tuples), so short connections to one
/// server do not exhaust the NAT port range.
#[inline(always)]
pub fn claim_reply(original: &Tuple, translated: &Tuple, kind: u8) -> Result<(), InsertError> {
    let key = translated.reversed().key();
    let reply = entry(kind, &translated.reversed(), &original.reversed(), 0);
    match insert_new(&key, &reply) {
        Err(InsertError::Clash) if original.proto == PROTO_TCP => {
            let Some(old) = NATD_CT.get_ptr(&key) else {
                return Err(InsertError::Clash);
            };
            // SAFETY: valid map value pointer; only fields are read.
            let stale_forward = unsafe {
                let closed = (*old).state == ct::TCP_CLOSING || (*old).state == ct::TCP_CLOSED;
                if (*old).kind != kind || !closed {
                    return Err(InsertError::Clash);
                }
                key.peer(&*old)
            };
            let _ = NATD_CT.remove(&stale_forward);
            NATD_CT.insert(&key, &reply, 0).map_err(|_| InsertError::Full)
        }
        other => other,
    }
}

#[inline(always)]
pub fn finish(original: &Tuple, translated: &Tuple, kind: u8) -> Result<CtEntry, InsertError> {
    let forward = entry(kind, original, translated, 0);
    if let Err(e) = insert_new(&original.key(), &forward) {
        let _ = NATD_CT.remove(&translated.reversed().key());
        return Err(e);
    }
    Ok(forward)
}

#[inline(always)]
fn insert_new(key: &CtKey, entry: &CtEntry) -> Result<(), InsertError> {
    match NATD_CT.insert(key, entry, BPF_NOEXIST) {
        Ok(()) => Ok(()),
        Err(e) if e == -EEXIST => Err(InsertError::Clash),
        Err(_) => Err(InsertError::Full),
    }
}

/// Removes both entries of the flow `key` belongs to.
#[inline(always)]
pub fn forget(key: &CtKey, entry: &CtEntry) {
    let _ = NATD_CT.remove(&key.peer(entry));
    let _ = NATD_CT.remove(key);
}

/// Accounts a packet on its entry and follows TCP's flags.
#[inline(always)]
pub fn touch(entry: *mut CtEntry, packet: &Ipv4Packet, len: u32) {
    // SAFETY: a pointer into a map value; racing CPUs can only skew counters and timestamps.
    unsafe {
        (*entry).last_seen_ns = now();
        (*entry).packets += 1;
        (*entry).bytes += u64::from(len);
        if packet.proto == PROTO_TCP {
            let flags = packet.tcp_flags;
            let state = (*entry).state;
            let next = if flags & TCP_RST != 0 {
                ct::TCP_CLOSED
            } else if flags & TCP_FIN != 0 {
                ct::TCP_CLOSING
            } else if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
                // A new connection on a tuple whose previous one ended.
                if state == ct::TCP_CLOSED || state == ct::TCP_CLOSING {
                    ct::TCP_SYN_SENT
                } else {
                    state
                }
            } else if flags & TCP_ACK != 0 && state == ct::TCP_SYN_SENT {
                ct::TCP_ESTABLISHED
            } else {
                state
            };
            (*entry).state = next;
        } else if (*entry).kind == ct::DNAT_REPLY || (*entry).kind == ct::SNAT_REPLY {
            (*entry).state = ct::DGRAM_REPLIED;
        }
    }
}
