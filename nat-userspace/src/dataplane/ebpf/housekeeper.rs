//! The eBPF dataplane's work that does not need the daemon's lock: the expiry pass with
//! the sweep of port marks, and the reads behind `stats`, `info` and `/metrics`. It works
//! on descriptors of its own (`Tables`) for the same maps, reading them in batches, so
//! requests, which write through the loaded object under the lock, never wait for a walk
//! of a table. What it races with is what the programs race with all the time: the
//! expiry pass removes a flow only if neither of its entries changed since it read them,
//! and a sweep clears only marks older than its walk.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use nat_common::{
    Addr6, Ct4Entry, Ct4Key, Ct6Entry, Ct6Key, EndpointInfo, IfaceConfig, MappingStats, NetInfo4, Port4Key,
    Port4Target, Port6Key, Port6Target, counter, names::map,
};

use super::{
    conntrack::{self, PortsInUse, Timeouts},
    drift,
    mapping_stats::StatsRegions,
    portmarks::{self, PortMarks},
    tables::{self, Tables},
};
use crate::dataplane::{DataplaneError, DriftCheck, GcReport, Housekeeping, Stats};

pub struct Housekeeper {
    /// The expiry pass's descriptors (one pass at a time).
    expiry: Mutex<Tables>,
    /// The reads' descriptors (and the drift check's).
    reads: Arc<Tables>,
    /// Where the links are pinned, and the program each ran at the last drift check.
    links_dir: PathBuf,
    link_programs: Arc<Mutex<HashMap<String, u32>>>,
    marks: Option<PortMarks>,
    /// The per-mapping counters, mapped (`None`: an object before layout 4, read by syscall).
    mapping_stats: Option<StatsRegions>,
    /// The connection tables' fill as the last expiry pass left them.
    last_fill: Mutex<Option<std::collections::BTreeMap<&'static str, usize>>>,
    /// The configuration tables' entries as the last drift check read them.
    drift_counted: drift::Counted,
    timeouts: Timeouts,
}

impl Housekeeper {
    pub fn new(
        ebpf: &aya::Ebpf,
        timeouts: Timeouts,
        links_dir: PathBuf,
    ) -> Result<Self, DataplaneError> {
        let expiry = Tables::share(ebpf)?;
        let marks = PortMarks::open(&expiry)?;
        let reads = Tables::share(ebpf)?;
        let mapping_stats = StatsRegions::open(&reads)?;
        Ok(Self {
            expiry: Mutex::new(expiry),
            reads: Arc::new(reads),
            mapping_stats,
            links_dir,
            link_programs: Arc::default(),
            marks,
            last_fill: Mutex::new(None),
            drift_counted: drift::Counted::default(),
            timeouts,
        })
    }

    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let Ok(sums) = tables::per_cpu_sums::<u64>(&*self.reads, map::COUNTERS, |sum, v| *sum += v) else {
            return Vec::new();
        };
        counter::ALL
            .iter()
            .filter_map(|(id, name)| Some((*name, *sums.get(*id as usize)?)))
            .collect()
    }

    /// Entries of a hash map (0 when it cannot be read).
    fn entries<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> usize {
        tables::count::<K, V>(&*self.reads, name).unwrap_or(0)
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }
}

impl Housekeeping for Housekeeper {
    fn gc(&self) -> Result<GcReport, DataplaneError> {
        let mut tables = self.expiry.lock().unwrap_or_else(|e| e.into_inner());
        // Marks made before the walks below began, of ports they find unused, go.
        let before = conntrack::now_ticks().saturating_sub(1);
        let mut used = PortsInUse::default();
        let report = conntrack::expire(&mut *tables, &self.timeouts, &mut used)?;
        if let Some(marks) = &self.marks {
            let cleared = portmarks::sweep(&*tables, marks, used, before);
            tracing::debug!(cleared, "port marks of unused ports cleared");
        }
        *self.last_fill.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.fill.clone());
        Ok(report)
    }

    fn stats(&self, slots: &[(u32, u32)], exact: bool) -> Stats {
        let mut stats = Stats {
            counters: self
                .counters()
                .into_iter()
                .map(|(name, value)| (name.to_string(), value))
                .collect(),
            ..Default::default()
        };
        if let Some(regions) = &self.mapping_stats {
            stats.mappings = slots.iter().map(|(id, slot)| (*id, regions.sum(*slot))).collect();
        } else if !slots.is_empty()
            // The per-CPU array of an object before layout 4.
            && let Ok(per_slot) = tables::per_cpu_sums::<MappingStats>(&*self.reads, map::MAPPING_STATS, |sum, v| {
                sum.packets += v.packets;
                sum.bytes += v.bytes;
            })
        {
            stats.mappings = slots
                .iter()
                .filter_map(|(id, slot)| {
                    let s = per_slot.get(*slot as usize)?;
                    Some((*id, (s.packets, s.bytes)))
                })
                .collect();
        }
        let last = if exact {
            None
        } else {
            self.last_fill.lock().unwrap_or_else(|e| e.into_inner()).clone()
        };
        // The tables the expiry pass walks (connection and masquerade tables) are counted
        // by it, the configuration tables by the last drift check (a tick ago at most);
        // the others, and all of them for an exact read, are read.
        let drift = if exact {
            Default::default()
        } else {
            self.drift_counted.lock().unwrap_or_else(|e| e.into_inner()).clone()
        };
        let counted = |name: &str| {
            last.as_ref()
                .and_then(|fill| fill.get(name).copied())
                .or_else(|| drift.get(name).copied())
        };
        let ct4 = |name| counted(name).unwrap_or_else(|| self.entries::<Ct4Key, Ct4Entry>(name));
        let ct6 = |name| counted(name).unwrap_or_else(|| self.entries::<Ct6Key, Ct6Entry>(name));
        let or_read = |name, read: fn(&Self, &str) -> usize| counted(name).unwrap_or_else(|| read(self, name));
        for (name, entries) in [
            (map::CT4, ct4(map::CT4)),
            (map::CT4_NEW, ct4(map::CT4_NEW)),
            (map::CT6, ct6(map::CT6)),
            (map::CT6_NEW, ct6(map::CT6_NEW)),
            (map::PORTS4, or_read(map::PORTS4, Self::entries::<Port4Key, Port4Target>)),
            (map::PORTS6, or_read(map::PORTS6, Self::entries::<Port6Key, Port6Target>)),
            (map::ENDPOINTS6, or_read(map::ENDPOINTS6, Self::entries::<Addr6, EndpointInfo>)),
            (map::ENDPOINTS4, or_read(map::ENDPOINTS4, Self::entries::<u32, EndpointInfo>)),
            (map::LOCAL4, or_read(map::LOCAL4, Self::entries::<u32, u32>)),
            (map::NETWORKS, or_read(map::NETWORKS, Self::entries::<u32, NetInfo4>)),
            (map::IFACE_CONFIG, or_read(map::IFACE_CONFIG, Self::entries::<u32, IfaceConfig>)),
            (map::SNAT4, or_read(map::SNAT4, Self::entries::<nat_common::Snat4Key, nat_common::SnatMapping>)),
            (map::SNAT6, or_read(map::SNAT6, Self::entries::<nat_common::Snat6Key, nat_common::SnatMapping>)),
            (map::SNAT4_PORTS, or_read(map::SNAT4_PORTS, Self::entries::<Port4Key, nat_common::Snat4Owner>)),
            (map::SNAT6_PORTS, or_read(map::SNAT6_PORTS, Self::entries::<Port6Key, nat_common::Snat6Owner>)),
            (map::SNAT4_SHARED, or_read(map::SNAT4_SHARED, Self::entries::<Port4Key, nat_common::Snat4Owner>)),
            (map::SNAT6_SHARED, or_read(map::SNAT6_SHARED, Self::entries::<Port6Key, nat_common::Snat6Owner>)),
            (map::PUNCH4, self.entries::<nat_common::Punch4Key, nat_common::Punch4>(map::PUNCH4)),
            (map::PUNCH6, self.entries::<nat_common::Punch6Key, nat_common::Punch6>(map::PUNCH6)),
        ] {
            // The capacity the kernel made the map with (sizes set at load, dormant tables).
            stats.maps.insert(name.to_string(), (entries, self.reads.capacity(name)));
        }
        stats.map_memory = self.reads.memory();
        stats
    }

    fn drift_check(&self) -> Option<Box<dyn DriftCheck>> {
        Some(Box::new(drift::Check::new(
            Arc::clone(&self.reads),
            self.links_dir.clone(),
            Arc::clone(&self.link_programs),
            Arc::clone(&self.drift_counted),
        )))
    }
}
