//! natd's side of the masquerade mappings (`NATD_SNAT*`, kernel side `nat-ebpf`'s
//! `mapping`): the programs make them and never remove them; the expiry pass does, after
//! the connection tables'. A mapping lives while any of its flows does, then for
//! `mapping` seconds after its last outbound packet (RFC 4787 REQ-5, REQ-6; inbound ones
//! count too with `--masquerade-refresh-inbound`); a TCP mapping only `tcp-closed`
//! seconds after its last connection (RFC 5382 ties it to the connection). With it go
//! the port it held and the addresses it admitted.
use std::{
    collections::{HashMap as StdHashMap, HashSet},
    time::Duration,
};

use aya::{
    Pod,
    maps::{HashMap, MapData},
};
use nat_common::{CtEntry, CtKey, PROTO_TCP, PortKey, SnatKey, SnatMapping, SnatOwner, SnatPeerKey, clock, ct, port_marks};

use super::{
    conntrack::{Family, PortsInUse},
    err,
    tables::{MapSet, read_all},
};
use crate::dataplane::DataplaneError;

use super::conntrack::Timeouts;

/// The mapping a masqueraded flow's forward entry uses.
pub fn mapping_of<A: Copy>(key: &CtKey<A>, entry: &CtEntry<A>) -> SnatKey<A> {
    SnatKey {
        internal: key.src,
        external: entry.src,
        port: key.sport,
        proto: key.proto,
        _pad: 0,
    }
}

/// What the connection tables say about mappings: which have flows left, and the last
/// refreshing packet of the flows that ended (kept in the mapping, so a restart loses
/// nothing).
pub struct Usage<A> {
    pub alive: HashSet<SnatKey<A>>,
    /// External (address, port, protocol) of live flows: a port a flow uses is never
    /// taken from under it.
    pub ports_in_use: HashSet<(A, u16, u8)>,
    pub ended: StdHashMap<SnatKey<A>, u32>,
}

impl<A: Family> Usage<A>
where
    SnatKey<A>: Eq + std::hash::Hash,
{
    pub fn new() -> Self {
        Self {
            alive: HashSet::new(),
            ports_in_use: HashSet::new(),
            ended: StdHashMap::new(),
        }
    }

    /// A flow of the tables: `entry` is its forward direction, `reply` the other;
    /// `ending`: the expiry pass removes it.
    pub fn flow(&mut self, key: &CtKey<A>, entry: &CtEntry<A>, reply: Option<&CtEntry<A>>, ending: bool, inbound_refresh: bool) {
        if entry.kind != ct::SNAT_FORWARD || entry.src == key.src {
            // Not masqueraded (routed flows keep their source).
            return;
        }
        let mapping = mapping_of(key, entry);
        if ending {
            let mut last = entry.last_seen;
            if inbound_refresh {
                last = last.max(reply.map_or(0, |r| r.last_seen));
            }
            let seen = self.ended.entry(mapping).or_default();
            *seen = (*seen).max(last);
        } else {
            self.alive.insert(mapping);
            self.ports_in_use.insert((entry.src, entry.sport, key.proto));
        }
    }
}

fn table<'a, K: Pod, V: Pod>(ebpf: &'a mut (impl MapSet + ?Sized), name: &str) -> Result<HashMap<&'a mut MapData, K, V>, DataplaneError> {
    HashMap::try_from(ebpf.map_mut(name).ok_or_else(|| err("map missing", name))?).map_err(|e| err(name, e))
}

/// Removes the mappings whose time is up, their ports and admitted addresses, and ports
/// and addresses no mapping accounts for. Returns how many mappings went, and how many
/// entries each of the four tables kept (what `/metrics` shows until the next pass).
/// The ports of the mappings and holdings that stay are added to `used` (`port_marks`).
pub fn expire<A: Family>(
    ebpf: &mut (impl MapSet + ?Sized),
    usage: &Usage<A>,
    timeouts: &Timeouts,
    now: u32,
    used: &mut PortsInUse,
) -> Result<(usize, Vec<(&'static str, usize)>), DataplaneError>
where
    SnatKey<A>: Pod + Eq + std::hash::Hash,
    PortKey<A>: Pod + Eq + std::hash::Hash,
    SnatOwner<A>: Pod,
    SnatPeerKey<A>: Pod,
{
    let [mappings_name, ports_name, peers_name, shared_name] = A::SNAT;
    if ebpf.map(mappings_name).is_none() {
        // An object from before mappings (the previous datapath a test build can load).
        return Ok((0, Vec::new()));
    }
    let mut expired = 0;
    let mut kept: StdHashMap<SnatKey<A>, u16> = StdHashMap::new();
    // Only tables read whole are counted (a failed read falls back to reading them for
    // `/metrics`).
    let mut fill = Vec::new();
    {
        let read = read_all::<SnatKey<A>, SnatMapping>(ebpf, mappings_name);
        used.complete &= read.is_ok();
        let counted = read.is_ok();
        let all = read.unwrap_or_default();
        let mut mappings = table::<SnatKey<A>, SnatMapping>(ebpf, mappings_name)?;
        for (key, mut mapping) in all {
            if usage.alive.contains(&key) {
                kept.insert(key, mapping.port);
                continue;
            }
            let last = mapping.last_seen.max(usage.ended.get(&key).copied().unwrap_or(0));
            let limit = if key.proto == PROTO_TCP {
                timeouts.tcp_closed
            } else {
                timeouts.mapping
            };
            let idle = Duration::from_nanos(clock::ns(now.saturating_sub(last)));
            if idle > limit {
                if mappings.remove(&key).is_ok() {
                    expired += 1;
                }
            } else {
                if last != mapping.last_seen {
                    mapping.last_seen = last;
                    // BPF_EXIST: one the programs removed meanwhile stays gone.
                    let _ = mappings.insert(key, mapping, 2);
                }
                kept.insert(key, mapping.port);
            }
        }
        if counted {
            fill.push((mappings_name, kept.len()));
        }
    }
    used.ports.extend(kept.iter().filter_map(|(key, port)| port_marks::index(key.proto, *port)));
    let mut held: HashSet<PortKey<A>> = HashSet::new();
    // Holdings, then the marks of shared ports (an object from before them has none).
    for name in [ports_name, shared_name] {
        if ebpf.map(name).is_none() {
            continue;
        }
        let read = read_all::<PortKey<A>, SnatOwner<A>>(ebpf, name);
        used.complete &= read.is_ok();
        let counted = read.is_ok();
        let all = read.unwrap_or_default();
        let mut ports = table::<PortKey<A>, SnatOwner<A>>(ebpf, name)?;
        let mut stayed = 0;
        for (port, owner) in all {
            let mapping = SnatKey {
                internal: owner.internal,
                external: port.addr,
                port: owner.port,
                proto: port.proto,
                _pad: 0,
            };
            let accounted = kept.get(&mapping) == Some(&port.port)
                || usage.ports_in_use.contains(&(port.addr, port.port, port.proto));
            if !accounted {
                let _ = ports.remove(&port);
                continue;
            }
            used.ports.extend(port_marks::of_port(&port));
            stayed += 1;
            if name == ports_name {
                held.insert(port);
            }
        }
        if counted {
            fill.push((name, stayed));
        }
    }
    let all: Vec<(SnatPeerKey<A>, u32)> = read_all(ebpf, peers_name).unwrap_or_default();
    let mut peers = table::<SnatPeerKey<A>, u32>(ebpf, peers_name)?;
    for (peer, _) in all {
        let port = PortKey {
            addr: peer.external,
            port: peer.port,
            proto: peer.proto,
            _pad: 0,
        };
        if !held.contains(&port) {
            let _ = peers.remove(&peer);
        }
    }
    Ok((expired, fill))
}

/// Every mapping of a family, read in one walk (`natctl ct ls` shows each flow's beside
/// it: one walk, not a lookup per flow).
pub fn all<A: Family>(ebpf: &(impl MapSet + ?Sized)) -> StdHashMap<SnatKey<A>, SnatMapping>
where
    SnatKey<A>: Pod + Eq + std::hash::Hash,
{
    read_all::<SnatKey<A>, SnatMapping>(ebpf, A::SNAT[0])
        .map(|all| all.into_iter().collect())
        .unwrap_or_default()
}
