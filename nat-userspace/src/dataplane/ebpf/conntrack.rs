//! natd's side of the connection tables: idle expiry (the programs never delete on their
//! own clock; natd sees both entries of a flow at once), removal of flows whose mapping or
//! endpoint is gone, and the `natctl ct ls` listing. Both tables are walked: established
//! flows (`NATD_CT4`) and embryonic ones (`NATD_CT4_NEW`).
use std::{collections::HashMap as StdHashMap, time::Duration};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use nat_common::{Ct4Entry, Ct4Key, clock, ct, names::map};

use super::{err, maps::from_raw};
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

    fn for_flow(&self, proto: u8, state: FlowState) -> Duration {
        match (proto, state) {
            (6, FlowState::Closed) => self.tcp_closed,
            (6, FlowState::Closing) => self.tcp_closing,
            (6, FlowState::Established) => self.tcp_established,
            (6, _) => self.tcp_syn,
            (17, FlowState::Established | FlowState::Replied) => self.udp_replied,
            (17, _) => self.udp,
            _ => self.icmp,
        }
    }
}

/// The state of a flow from its two entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    New,
    Replied,
    Established,
    Closing,
    Closed,
}

impl FlowState {
    fn name(self, proto: u8) -> &'static str {
        match (proto, self) {
            (6, FlowState::New) => "syn-sent",
            (6, FlowState::Replied) => "syn-received",
            (_, FlowState::New) => "new",
            (_, FlowState::Replied) => "replied",
            (_, FlowState::Established) => "established",
            (_, FlowState::Closing) => "closing",
            (_, FlowState::Closed) => "closed",
        }
    }
}

pub fn flow_state(proto: u8, a: &Ct4Entry, b: Option<&Ct4Entry>) -> FlowState {
    let b_tcp = b.map(|b| b.tcp).unwrap_or(0);
    let b_flags = b.map(|b| b.flags).unwrap_or(0);
    let tcp = a.tcp | b_tcp;
    if proto == 6 {
        if tcp & ct::TCP_RST != 0 || (a.tcp & ct::TCP_FIN != 0 && b_tcp & ct::TCP_FIN != 0) {
            return FlowState::Closed;
        }
        if tcp & ct::TCP_FIN != 0 {
            return FlowState::Closing;
        }
        if tcp & ct::TCP_ESTABLISHED != 0 {
            return FlowState::Established;
        }
        return if tcp & ct::TCP_SYNACK != 0 {
            FlowState::Replied
        } else {
            FlowState::New
        };
    }
    if (a.flags | b_flags) & ct::REPLIED != 0 {
        FlowState::Replied
    } else {
        FlowState::New
    }
}

/// CLOCK_MONOTONIC_COARSE in ticks: the clock of the programs' `last_seen`.
pub fn now_ticks() -> u32 {
    let ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0);
    clock::ticks(ns)
}

fn idle(now: u32, entry: &Ct4Entry, peer: Option<&Ct4Entry>) -> Duration {
    let last = entry.last_seen.max(peer.map(|p| p.last_seen).unwrap_or(0));
    Duration::from_nanos(clock::ns(now.saturating_sub(last)))
}

fn table<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<HashMap<&'a mut MapData, Ct4Key, Ct4Entry>, DataplaneError> {
    HashMap::try_from(ebpf.map_mut(name).ok_or_else(|| err("map missing", name))?).map_err(|e| err(name, e))
}

/// Every entry of both tables, and whether it is established.
pub fn entries(ebpf: &Ebpf) -> Vec<(Ct4Key, Ct4Entry, bool)> {
    let mut out = Vec::new();
    for (name, established) in [(map::CT4, true), (map::CT4_NEW, false)] {
        if let Some(m) = ebpf
            .map(name)
            .and_then(|m| HashMap::<_, Ct4Key, Ct4Entry>::try_from(m).ok())
        {
            out.extend(m.iter().filter_map(Result::ok).map(|(k, e)| (k, e, established)));
        }
    }
    out
}

fn generations(ebpf: &Ebpf) -> Option<Array<&MapData, u32>> {
    Array::try_from(ebpf.map(map::GENERATIONS)?).ok()
}

/// Whether the mapping or endpoint a flow depends on is still the one it started with.
fn live(generations: Option<&Array<&MapData, u32>>, entry: &Ct4Entry) -> bool {
    if entry.gen_slot == u32::MAX {
        return true;
    }
    generations
        .and_then(|g| g.get(&entry.gen_slot, 0).ok())
        .is_none_or(|g| g == entry.generation)
}

/// Removes flows idle for longer than their state allows, and flows of removed mappings
/// or endpoints. A flow is judged on both entries and removed only if neither changed
/// since the walk (a packet may have used it meanwhile), original direction first: the
/// reply entry holds the claim on the translated tuple, which must never be free while an
/// entry that translates into it remains.
pub fn expire(ebpf: &mut Ebpf, timeouts: &Timeouts) -> Result<GcReport, DataplaneError> {
    let now = now_ticks();
    let all = entries(ebpf);
    let by_key: StdHashMap<Ct4Key, &Ct4Entry> = all.iter().map(|(k, e, _)| (*k, e)).collect();
    let gens = generations(ebpf);
    // (key, last_seen) of each entry to remove, the original direction before its peer.
    let mut doomed: Vec<Vec<(Ct4Key, u32)>> = Vec::new();
    for (key, entry, _) in &all {
        let peer_key = key.peer(entry);
        let peer = by_key.get(&peer_key).copied();
        let reply = entry.kind == ct::DNAT_REPLY || entry.kind == ct::SNAT_REPLY;
        if reply && peer.is_some() {
            // Judged with its original direction.
            continue;
        }
        // An entry without its peer is the remains of a refused insert or an LRU eviction:
        // short grace.
        let limit = match peer {
            None => timeouts.tcp_closed,
            Some(p) => timeouts.for_flow(key.proto, flow_state(key.proto, entry, Some(p))),
        };
        if idle(now, entry, peer) > limit || !live(gens.as_ref(), entry) {
            let mut flow = vec![(*key, entry.last_seen)];
            flow.extend(peer.map(|p| (peer_key, p.last_seen)));
            doomed.push(flow);
        }
    }
    let mut expired = 0;
    let mut later = Vec::new();
    {
        let mut established = table(ebpf, map::CT4)?;
        for flow in &doomed {
            match unchanged(&established, flow) {
                Check::Absent => later.push(flow),
                Check::Changed => {}
                Check::Unchanged => expired += remove(&mut established, flow),
            }
        }
    }
    let mut embryonic = table(ebpf, map::CT4_NEW)?;
    for flow in later {
        if unchanged(&embryonic, flow) == Check::Unchanged {
            expired += remove(&mut embryonic, flow);
        }
    }
    Ok(GcReport {
        scanned: all.len(),
        expired,
    })
}

#[derive(PartialEq, Eq)]
enum Check {
    /// None of the flow's entries is in this table.
    Absent,
    /// A packet used the flow since the walk.
    Changed,
    Unchanged,
}

fn unchanged(t: &HashMap<&mut MapData, Ct4Key, Ct4Entry>, flow: &[(Ct4Key, u32)]) -> Check {
    let mut present = false;
    for (key, seen) in flow {
        if let Ok(entry) = t.get(key, 0) {
            if entry.last_seen != *seen {
                return Check::Changed;
            }
            present = true;
        }
    }
    if present { Check::Unchanged } else { Check::Absent }
}

/// Removes a flow's entries in their order (original direction first).
fn remove(t: &mut HashMap<&mut MapData, Ct4Key, Ct4Entry>, flow: &[(Ct4Key, u32)]) -> usize {
    flow.iter().filter(|(key, _)| t.remove(key).is_ok()).count()
}

/// Flows that leave by interface `old` leave by `new` from now on (an uplink whose role a
/// bridge took over, or gave back: same MAC, another interface). Returns how many entries
/// changed.
pub fn retarget(ebpf: &mut Ebpf, old: u32, new: u32) -> Result<usize, DataplaneError> {
    let mut moved = 0;
    for name in [map::CT4, map::CT4_NEW] {
        let mut t = table(ebpf, name)?;
        let hits: Vec<(Ct4Key, Ct4Entry)> = t
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| e.out_ifindex == old)
            .collect();
        for (key, mut entry) in hits {
            entry.out_ifindex = new;
            // BPF_EXIST: an entry expired meanwhile stays gone.
            if t.insert(key, entry, 2).is_ok() {
                moved += 1;
            }
        }
    }
    Ok(moved)
}

/// Every tracked flow entry as `natctl ct ls` shows it.
pub fn flows(ebpf: &Ebpf, mapping_of_slot: impl Fn(u32) -> Option<u32>) -> Vec<Flow> {
    let now = now_ticks();
    let all = entries(ebpf);
    let by_key: StdHashMap<Ct4Key, &Ct4Entry> = all.iter().map(|(k, e, _)| (*k, e)).collect();
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
    let addr = |a: u32| std::net::IpAddr::V4(from_raw(a));
    all.iter()
        .map(|(k, e, established)| {
            let peer = by_key.get(&k.peer(e)).copied();
            Flow {
                proto: proto_name(k.proto).into(),
                kind: kind_name(e.kind).into(),
                state: flow_state(k.proto, e, peer).name(k.proto).into(),
                original: (
                    addr(k.src),
                    u16::from_be(k.sport),
                    addr(k.dst),
                    u16::from_be(k.dport),
                ),
                translated: (
                    addr(e.src),
                    u16::from_be(e.sport),
                    addr(e.dst),
                    u16::from_be(e.dport),
                ),
                mapping_id: match e.kind {
                    ct::DNAT_FORWARD | ct::DNAT_REPLY => mapping_of_slot(e.gen_slot).unwrap_or(0),
                    _ => 0,
                },
                fast: e.flags & ct::FAST != 0,
                established: *established,
                idle_s: idle(now, e, None).as_secs(),
            }
        })
        .collect()
}
