//! natd's side of the connection table: idle expiry (the programs never delete on their
//! own clock; natd sees both entries of a flow at once), invalidation of flows whose
//! mapping is gone, and the `natctl ct ls` listing.
use std::{
    collections::{HashMap as StdHashMap, HashSet},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use nat_common::{CtEntry, CtKey, ct, names::map};

use super::{err, maps::v4_of};
use crate::dataplane::{CtTimeout, DataplaneError, Flow, GcReport};

/// Idle timeouts of tracked flows, by state.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub tcp_closed: Duration,
    pub udp: Duration,
    pub udp_replied: Duration,
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn: Duration::from_secs(120),
            // RFC 5382 asks for at least 2 h 4 min for established TCP.
            tcp_established: Duration::from_secs(7440),
            tcp_closing: Duration::from_secs(120),
            tcp_closed: Duration::from_secs(10),
            udp: Duration::from_secs(30),
            udp_replied: Duration::from_secs(180),
            icmp: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    /// Defaults with the operator's `--conntrack-timeout KIND=SECONDS` applied.
    pub fn with(overrides: &[(CtTimeout, u64)]) -> Self {
        let mut t = Self::default();
        for (kind, secs) in overrides {
            let d = Duration::from_secs(*secs);
            match kind {
                CtTimeout::TcpSyn => t.tcp_syn = d,
                CtTimeout::TcpEstablished => t.tcp_established = d,
                CtTimeout::TcpClosing => t.tcp_closing = d,
                CtTimeout::TcpClosed => t.tcp_closed = d,
                CtTimeout::Udp => t.udp = d,
                CtTimeout::UdpReplied => t.udp_replied = d,
                CtTimeout::Icmp => t.icmp = d,
            }
        }
        t
    }

    fn for_flow(&self, proto: u8, state: u8, replied: bool) -> Duration {
        match proto {
            6 => match state {
                ct::TCP_ESTABLISHED => self.tcp_established,
                ct::TCP_CLOSING => self.tcp_closing,
                ct::TCP_CLOSED => self.tcp_closed,
                _ => self.tcp_syn,
            },
            17 if replied => self.udp_replied,
            17 => self.udp,
            _ => self.icmp,
        }
    }
}

/// CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The state of a flow from its two entries: the more final TCP state wins.
fn flow_state(a: &CtEntry, b: Option<&CtEntry>) -> (u8, bool, u64) {
    let b_state = b.map(|b| b.state).unwrap_or(0);
    let rank = |s: u8| match s {
        ct::TCP_CLOSED => 4,
        ct::TCP_CLOSING => 3,
        ct::TCP_ESTABLISHED => 2,
        _ => 1,
    };
    let state = if rank(a.state) >= rank(b_state) {
        a.state
    } else {
        b_state
    };
    let replied =
        a.state == ct::DGRAM_REPLIED || b_state == ct::DGRAM_REPLIED || b.is_some_and(|b| b.packets > 0);
    let last = a.last_seen_ns.max(b.map(|b| b.last_seen_ns).unwrap_or(0));
    (state, replied, last)
}

fn table(ebpf: &mut Ebpf) -> Result<HashMap<&mut MapData, CtKey, CtEntry>, DataplaneError> {
    HashMap::try_from(ebpf.map_mut(map::CT).ok_or_else(|| err("map missing", map::CT))?)
        .map_err(|e| err(map::CT, e))
}

pub fn entries(ebpf: &Ebpf) -> Vec<(CtKey, CtEntry)> {
    ebpf.map(map::CT)
        .and_then(|m| HashMap::<_, CtKey, CtEntry>::try_from(m).ok())
        .map(|m| m.iter().filter_map(Result::ok).collect())
        .unwrap_or_default()
}

/// Removes flows idle for longer than their state allows, judging both entries together.
pub fn expire(ebpf: &mut Ebpf, timeouts: &Timeouts) -> Result<GcReport, DataplaneError> {
    let now = monotonic_ns();
    let mut map = table(ebpf)?;
    let entries: StdHashMap<CtKey, CtEntry> = map.iter().filter_map(Result::ok).collect();
    let mut expired = Vec::new();
    for (key, entry) in &entries {
        let peer = entries.get(&key.peer(entry));
        let (state, replied, last) = flow_state(entry, peer);
        let idle = Duration::from_nanos(now.saturating_sub(last));
        // An entry without its peer is the remains of a refused insert: short grace.
        let limit = if peer.is_none() {
            timeouts.tcp_closed
        } else {
            timeouts.for_flow(key.proto, state, replied)
        };
        if idle > limit {
            expired.push(*key);
        }
    }
    for key in &expired {
        let _ = map.remove(key);
    }
    Ok(GcReport {
        scanned: entries.len(),
        expired: expired.len(),
    })
}

/// Flows of mappings that no longer exist are removed at once (UDP included); the
/// programs also refuse them packet by packet.
pub fn invalidate(ebpf: &mut Ebpf, live: &HashSet<u32>) -> Result<usize, DataplaneError> {
    let mut map = table(ebpf)?;
    let dead: Vec<CtKey> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, e)| {
            (e.kind == ct::DNAT_FORWARD || e.kind == ct::DNAT_REPLY) && !live.contains(&e.mapping_id)
        })
        .map(|(k, _)| k)
        .collect();
    for key in &dead {
        let _ = map.remove(key);
    }
    Ok(dead.len())
}

/// Every tracked flow entry as `natctl ct ls` shows it.
pub fn flows(ebpf: &Ebpf) -> Vec<Flow> {
    let now = monotonic_ns();
    let proto_name = |p: u8| match p {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        _ => "other",
    };
    let kind_name = |k: u8| match k {
        ct::DNAT_FORWARD => "dnat",
        ct::DNAT_REPLY => "dnat-reply",
        ct::SNAT_FORWARD => "snat",
        ct::SNAT_REPLY => "snat-reply",
        _ => "unknown",
    };
    let state_name = |s: u8| match s {
        ct::TCP_SYN_SENT => "syn-sent",
        ct::TCP_ESTABLISHED => "established",
        ct::TCP_CLOSING => "closing",
        ct::TCP_CLOSED => "closed",
        ct::DGRAM_REPLIED => "replied",
        _ => "new",
    };
    let addr = |a: &[u8; 16]| std::net::IpAddr::V4(v4_of(a));
    entries(ebpf)
        .iter()
        .map(|(k, e)| Flow {
            proto: proto_name(k.proto).into(),
            kind: kind_name(e.kind).into(),
            state: state_name(e.state).into(),
            original: (
                addr(&k.src),
                u16::from_be(k.sport),
                addr(&k.dst),
                u16::from_be(k.dport),
            ),
            translated: (
                addr(&e.src),
                u16::from_be(e.sport),
                addr(&e.dst),
                u16::from_be(e.dport),
            ),
            mapping_id: e.mapping_id,
            packets: e.packets,
            bytes: e.bytes,
            age_s: now.saturating_sub(e.created_ns) / 1_000_000_000,
            idle_s: now.saturating_sub(e.last_seen_ns) / 1_000_000_000,
        })
        .collect()
}
