//! Connection tracking in `NATD_CT`: tuple keys, pair insertion that never half-installs a
//! flow, and per-packet state updates. Expiry is the agent's job (it sees both directions).
use aya_ebpf::helpers::bpf_ktime_get_ns;
use nat_common::{CtEntry, CtKey, FAMILY_V4, PROTO_TCP, ct};

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

#[inline(always)]
pub fn v4_addr(raw: u32) -> [u8; 16] {
    let mut addr = [0u8; 16];
    let bytes = raw.to_ne_bytes();
    addr[0] = bytes[0];
    addr[1] = bytes[1];
    addr[2] = bytes[2];
    addr[3] = bytes[3];
    addr
}

#[inline(always)]
pub fn v4_raw(addr: &[u8; 16]) -> u32 {
    u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]])
}

#[inline(always)]
pub fn key_v4(src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey {
        src: v4_addr(src),
        dst: v4_addr(dst),
        sport,
        dport,
        proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    }
}

#[inline(always)]
pub fn packet_key(packet: &Ipv4Packet) -> CtKey {
    key_v4(packet.src, packet.dst, packet.sport, packet.dport, packet.proto)
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn new_entry(kind: u8, rewrite: u8, addr: u32, port: u16, mapping_id: u32, proto: u8) -> CtEntry {
    let now = now();
    CtEntry {
        addr: v4_addr(addr),
        port,
        rewrite,
        kind,
        state: if proto == PROTO_TCP { ct::TCP_SYN_SENT } else { ct::DGRAM_NEW },
        _pad: [0; 3],
        mapping_id,
        _pad2: 0,
        created_ns: now,
        last_seen_ns: now,
        packets: 0,
        bytes: 0,
    }
}

/// Inserts the reply entry, then the forward entry; if the second fails the first is
/// removed again, so a flow is either fully tracked or not at all.
#[inline(always)]
pub fn insert_pair(fwd_key: &CtKey, fwd: &CtEntry, rev_key: &CtKey, rev: &CtEntry) -> Result<(), InsertError> {
    insert_new(rev_key, rev)?;
    if let Err(e) = insert_new(fwd_key, fwd) {
        let _ = NATD_CT.remove(rev_key);
        return Err(e);
    }
    Ok(())
}

#[inline(always)]
pub fn insert_new(key: &CtKey, entry: &CtEntry) -> Result<(), InsertError> {
    match NATD_CT.insert(key, entry, BPF_NOEXIST) {
        Ok(()) => Ok(()),
        Err(e) if e == -EEXIST => Err(InsertError::Clash),
        Err(_) => Err(InsertError::Full),
    }
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
                if state == ct::TCP_CLOSED || state == ct::TCP_CLOSING { ct::TCP_SYN_SENT } else { state }
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
