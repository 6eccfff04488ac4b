//! natd's side of the connection tables: idle expiry (the programs never delete on their
//! own clock; natd sees both entries of a flow at once), removal of flows whose mapping or
//! endpoint is gone, and the `natctl ct ls` listing. Both tables of both families are
//! walked: established flows (`NATD_CT4`, `NATD_CT6`) and embryonic ones (`NATD_CT4_NEW`,
//! `NATD_CT6_NEW`).
use std::{
    collections::{HashMap as StdHashMap, HashSet},
    hash::Hash,
    net::IpAddr,
    time::Duration,
};

use aya::{
    Pod,
    maps::{Array, HashMap, MapData},
};
use nat_common::{Addr6, CtEntry, CtKey, SourceQuota, clock, ct, names::map, port_marks};

use super::{
    err,
    kernel_form::{from_raw, from_raw6},
    mappings,
    tables::{MapSet, read_all},
};
use crate::dataplane::{CtTimeout, DataplaneError, Flow, FlowMapping, GcReport};

/// An address family's connection tables.
pub trait Family: Copy + Eq + Hash + Pod + 'static {
    /// Established and embryonic table.
    const TABLES: [&'static str; 2];
    /// Flows per source (the per-source quotas).
    const QUOTA: &'static str;
    /// Masquerade mappings, the ports they hold, the addresses they admit, the ports the
    /// default filtering's share.
    const SNAT: [&'static str; 4];
    /// Published ports.
    const PUBLISHED: &'static str;
    fn ip(self) -> IpAddr;
    /// What a quota counts the originator of a flow of entry kind `kind` under, as the
    /// programs key it (`nat-ebpf` `quota_key`): the IPv4 address, `quota_key6` (IPv6).
    fn quota_key(self, kind: u8) -> Self;
}

impl Family for u32 {
    const TABLES: [&'static str; 2] = [map::CT4, map::CT4_NEW];
    const QUOTA: &'static str = map::QUOTA4;
    const SNAT: [&'static str; 4] = [map::SNAT4, map::SNAT4_PORTS, map::SNAT4_PEERS, map::SNAT4_SHARED];
    const PUBLISHED: &'static str = map::PORTS4;
    fn ip(self) -> IpAddr {
        IpAddr::V4(from_raw(self))
    }
    fn quota_key(self, _kind: u8) -> Self {
        self
    }
}

impl Family for Addr6 {
    const TABLES: [&'static str; 2] = [map::CT6, map::CT6_NEW];
    const QUOTA: &'static str = map::QUOTA6;
    const SNAT: [&'static str; 4] = [map::SNAT6, map::SNAT6_PORTS, map::SNAT6_PEERS, map::SNAT6_SHARED];
    const PUBLISHED: &'static str = map::PORTS6;
    fn ip(self) -> IpAddr {
        IpAddr::V6(from_raw6(self))
    }
    fn quota_key(self, kind: u8) -> Self {
        nat_common::quota_key6(self, kind)
    }
}

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
    /// How long a UDP or ICMP masquerade mapping outlives its last flow, from its last
    /// outbound packet (RFC 4787 REQ-5: at least 2 minutes, 5 recommended).
    pub mapping: Duration,
    /// Inbound packets refresh mappings too (RFC 4787 REQ-6a, off by default).
    pub mapping_refresh_inbound: bool,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            // RFC 5382 REQ-5: at least 4 minutes for a connection being opened or closed
            // ("transitory"), 2 h 4 min for an established one.
            tcp_syn: Duration::from_secs(240),
            tcp_established: Duration::from_secs(7440),
            tcp_closing: Duration::from_secs(240),
            tcp_closed: Duration::from_secs(10),
            udp: Duration::from_secs(30),
            udp_replied: Duration::from_secs(180),
            icmp: Duration::from_secs(30),
            mapping: Duration::from_secs(300),
            mapping_refresh_inbound: false,
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
                CtTimeout::Mapping => t.mapping = d,
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

pub fn flow_state<A>(proto: u8, a: &CtEntry<A>, b: Option<&CtEntry<A>>) -> FlowState {
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

fn idle<A>(now: u32, entry: &CtEntry<A>, peer: Option<&CtEntry<A>>) -> Duration {
    let last = entry.last_seen.max(peer.map(|p| p.last_seen).unwrap_or(0));
    Duration::from_nanos(clock::ns(now.saturating_sub(last)))
}

fn table<'a, A: Family>(
    ebpf: &'a mut (impl MapSet + ?Sized),
    name: &str,
) -> Result<HashMap<&'a mut MapData, CtKey<A>, CtEntry<A>>, DataplaneError>
where
    CtKey<A>: Pod,
    CtEntry<A>: Pod,
{
    HashMap::try_from(ebpf.map_mut(name).ok_or_else(|| err("map missing", name))?).map_err(|e| err(name, e))
}

/// Every entry of both tables of a family, and whether it is established.
pub fn entries<A: Family>(ebpf: &(impl MapSet + ?Sized)) -> Vec<(CtKey<A>, CtEntry<A>, bool)>
where
    CtKey<A>: Pod,
    CtEntry<A>: Pod,
{
    entries_read(ebpf).0
}

/// `entries`, and whether both tables were read to their end (a failed read ends a walk
/// early).
pub fn entries_read<A: Family>(ebpf: &(impl MapSet + ?Sized)) -> (Vec<(CtKey<A>, CtEntry<A>, bool)>, bool)
where
    CtKey<A>: Pod,
    CtEntry<A>: Pod,
{
    let (mut out, mut complete) = (Vec::new(), true);
    for (name, established) in [(A::TABLES[0], true), (A::TABLES[1], false)] {
        match read_all::<CtKey<A>, CtEntry<A>>(ebpf, name) {
            Ok(all) => out.extend(all.into_iter().map(|(k, e)| (k, e, established))),
            Err(_) => complete = false,
        }
    }
    (out, complete)
}

/// The ports (`port_marks` indexes) an expiry pass saw in use, and whether it read every
/// table it walked completely: a sweep of the marks relies on it only then.
pub struct PortsInUse {
    pub ports: HashSet<u32>,
    pub complete: bool,
}

impl Default for PortsInUse {
    /// Nothing seen yet, nothing failed.
    fn default() -> Self {
        Self {
            ports: HashSet::new(),
            complete: true,
        }
    }
}

fn generations(ebpf: &(impl MapSet + ?Sized)) -> Option<Array<&MapData, u32>> {
    Array::try_from(ebpf.map(map::GENERATIONS)?).ok()
}

/// Whether the mapping or endpoint a flow depends on is still the one it started with.
fn live<A>(generations: Option<&Array<&MapData, u32>>, entry: &CtEntry<A>) -> bool {
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
/// The ports (`port_marks` indexes) the flows and mappings the pass leaves use are added
/// to `used`.
pub fn expire(ebpf: &mut (impl MapSet + ?Sized), timeouts: &Timeouts, used: &mut PortsInUse) -> Result<GcReport, DataplaneError> {
    // One family's failure does not keep the other's flows from expiring.
    let (v4, v6) = (
        expire_family::<u32>(ebpf, timeouts, used),
        expire_family::<Addr6>(ebpf, timeouts, used),
    );
    let (v4, v6) = (v4?, v6?);
    Ok(GcReport {
        scanned: v4.scanned + v6.scanned,
        expired: v4.expired + v6.expired,
        mappings_expired: v4.mappings_expired + v6.mappings_expired,
        fill: v4.fill.into_iter().chain(v6.fill).collect(),
    })
}

fn expire_family<A: Family>(ebpf: &mut (impl MapSet + ?Sized), timeouts: &Timeouts, used: &mut PortsInUse) -> Result<GcReport, DataplaneError>
where
    CtKey<A>: Pod,
    CtEntry<A>: Pod,
    nat_common::SnatKey<A>: Pod,
    nat_common::PortKey<A>: Pod,
    nat_common::SnatOwner<A>: Pod,
    nat_common::SnatPeerKey<A>: Pod,
{
    let now = now_ticks();
    let (all, complete) = entries_read::<A>(ebpf);
    used.complete &= complete;
    // Flows this pass removes too: a packet may be using one right now.
    used.ports.extend(all.iter().filter_map(|(key, entry, _)| port_marks::of_flow(key, entry)));
    let by_key: StdHashMap<CtKey<A>, &CtEntry<A>> = all.iter().map(|(k, e, _)| (*k, e)).collect();
    let gens = generations(ebpf);
    // (key, last_seen) of each entry to remove, the original direction before its peer.
    let mut doomed: Vec<Vec<(CtKey<A>, u32)>> = Vec::new();
    // What each source holds among the flows that stay (see `recount_sources`).
    let mut sources: StdHashMap<A, SourceQuota> = StdHashMap::new();
    let mut usage = mappings::Usage::<A>::new();
    for (key, entry, established) in &all {
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
        let ending = idle(now, entry, peer) > limit || !live(gens.as_ref(), entry);
        usage.flow(key, entry, peer, ending, timeouts.mapping_refresh_inbound);
        if ending {
            let mut flow = vec![(*key, entry.last_seen)];
            flow.extend(peer.map(|p| (peer_key, p.last_seen)));
            doomed.push(flow);
        } else if !reply {
            let held = sources.entry(key.src.quota_key(entry.kind)).or_default();
            let tcp = key.proto == nat_common::PROTO_TCP;
            let answered = peer.is_some_and(|p| p.flags & ct::REPLIED != 0);
            if !*established && (tcp || !answered) {
                held.embryonic += 1;
            } else if *established && !tcp {
                held.promoted += 1;
            }
        }
    }
    recount_sources::<A>(ebpf, &sources)?;
    let mut removed = (0, 0);
    let mut later = Vec::new();
    {
        let mut established = table::<A>(ebpf, A::TABLES[0])?;
        for flow in &doomed {
            match unchanged(&established, flow) {
                Check::Absent => later.push(flow),
                Check::Changed => {}
                Check::Unchanged => removed.0 += remove(&mut established, flow),
            }
        }
    }
    let mut embryonic = table::<A>(ebpf, A::TABLES[1])?;
    for flow in later {
        if unchanged(&embryonic, flow) == Check::Unchanged {
            removed.1 += remove(&mut embryonic, flow);
        }
    }
    drop(embryonic);
    let expired = removed.0 + removed.1;
    let (mappings_expired, mappings_fill) = mappings::expire::<A>(ebpf, &usage, timeouts, now, used)?;
    let established = all.iter().filter(|(_, _, established)| *established).count();
    let (removed_established, removed_embryonic) = removed;
    Ok(GcReport {
        scanned: all.len(),
        expired,
        mappings_expired,
        fill: [
            (A::TABLES[0], established.saturating_sub(removed_established)),
            (A::TABLES[1], (all.len() - established).saturating_sub(removed_embryonic)),
        ]
        .into_iter()
        .chain(mappings_fill)
        .collect(),
    })
}

/// Sets every source's quota count to what it holds now: the programs only count up (a
/// flow's end is not theirs to see), so each expiry pass brings the counts back to the
/// live flows, and forgets sources that hold none.
fn recount_sources<A: Family>(
    ebpf: &mut (impl MapSet + ?Sized),
    live: &StdHashMap<A, SourceQuota>,
) -> Result<(), DataplaneError> {
    let counted: Vec<(A, SourceQuota)> = read_all(ebpf, A::QUOTA).unwrap_or_default();
    let mut quota: HashMap<&mut MapData, A, SourceQuota> = HashMap::try_from(
        ebpf.map_mut(A::QUOTA)
            .ok_or_else(|| err("map missing", A::QUOTA))?,
    )
    .map_err(|e| err(A::QUOTA, e))?;
    for (src, count) in counted {
        match live.get(&src) {
            None => {
                let _ = quota.remove(&src);
            }
            Some(now) if *now != count => {
                let _ = quota.insert(src, *now, 0);
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[derive(PartialEq, Eq)]
enum Check {
    /// None of the flow's entries is in this table.
    Absent,
    /// A packet used the flow since the walk.
    Changed,
    Unchanged,
}

fn unchanged<A: Family>(t: &HashMap<&mut MapData, CtKey<A>, CtEntry<A>>, flow: &[(CtKey<A>, u32)]) -> Check
where
    CtKey<A>: Pod,
    CtEntry<A>: Pod,
{
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
fn remove<A: Family>(t: &mut HashMap<&mut MapData, CtKey<A>, CtEntry<A>>, flow: &[(CtKey<A>, u32)]) -> usize
where
    CtKey<A>: Pod,
    CtEntry<A>: Pod,
{
    flow.iter().filter(|(key, _)| t.remove(key).is_ok()).count()
}

/// Flows that leave by interface `old` leave by `new` from now on (an uplink whose role a
/// bridge took over, or gave back: same MAC, another interface). Returns how many entries
/// changed.
pub fn retarget(ebpf: &mut (impl MapSet + ?Sized), old: u32, new: u32) -> Result<usize, DataplaneError> {
    Ok(retarget_family::<u32>(ebpf, old, new)? + retarget_family::<Addr6>(ebpf, old, new)?)
}

fn retarget_family<A: Family>(ebpf: &mut (impl MapSet + ?Sized), old: u32, new: u32) -> Result<usize, DataplaneError>
where
    CtKey<A>: Pod,
    CtEntry<A>: Pod,
{
    let mut moved = 0;
    for name in A::TABLES {
        let mut t = table::<A>(ebpf, name)?;
        let hits: Vec<(CtKey<A>, CtEntry<A>)> = t
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
pub fn flows(ebpf: &(impl MapSet + ?Sized), timeouts: &Timeouts, mapping_of_slot: impl Fn(u32) -> Option<u32>) -> Vec<Flow> {
    let mut out = flows_of::<u32>(ebpf, timeouts, &mapping_of_slot);
    out.extend(flows_of::<Addr6>(ebpf, timeouts, &mapping_of_slot));
    out
}

fn flows_of<A: Family>(ebpf: &(impl MapSet + ?Sized), timeouts: &Timeouts, mapping_of_slot: &impl Fn(u32) -> Option<u32>) -> Vec<Flow>
where
    CtKey<A>: Pod,
    CtEntry<A>: Pod,
    nat_common::SnatKey<A>: Pod,
{
    let now = now_ticks();
    let all = entries::<A>(ebpf);
    let by_key: StdHashMap<CtKey<A>, &CtEntry<A>> = all.iter().map(|(k, e, _)| (*k, e)).collect();
    let snat = mappings::all::<A>(ebpf);
    let proto_name = |p: u8| match p {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        58 => "icmpv6",
        _ => "other",
    };
    let kind_name = |k: u8| match k {
        ct::DNAT_FORWARD => "dnat",
        ct::DNAT_REPLY => "dnat-reply",
        ct::SNAT_FORWARD => "snat",
        ct::SNAT_REPLY => "snat-reply",
        _ => "unknown",
    };
    let addr = |a: A| a.ip();
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
                // Published ports' flows, also hairpins with the external source (masqueraded).
                mapping_id: mapping_of_slot(e.gen_slot).unwrap_or(0),
                fast: e.flags & ct::FAST != 0,
                established: *established,
                idle_s: idle(now, e, None).as_secs(),
                expires_s: {
                    let state = flow_state(k.proto, e, peer);
                    let limit = if peer.is_some() {
                        timeouts.for_flow(k.proto, state)
                    } else {
                        timeouts.tcp_closed
                    };
                    limit.saturating_sub(idle(now, e, peer)).as_secs()
                },
                mapping: (e.kind == ct::SNAT_FORWARD && e.src != k.src)
                    .then(|| snat.get(&mappings::mapping_of(k, e)))
                    .flatten()
                    .map(|m| FlowMapping {
                        external: std::net::SocketAddr::new(addr(e.src), u16::from_be(m.port)),
                        outlives_flows_s: if k.proto == nat_common::PROTO_TCP {
                            timeouts.tcp_closed.as_secs()
                        } else {
                            timeouts.mapping.as_secs()
                        },
                    }),
            }
        })
        .collect()
}
