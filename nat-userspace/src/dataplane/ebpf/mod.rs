//! The eBPF dataplane: natd's own TC programs and BPF maps do the NAT, the connection
//! tracking and the isolation. `loader` loads and attaches (pinned, adopted on restart),
//! `maps` writes the configuration maps, `conntrack` expires and lists flows.
pub mod conntrack;
pub mod loader;
pub mod maps;

use std::path::PathBuf;

use aya::{
    Ebpf,
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
};
use nat_common::{
    AddrKey, CtEntry, CtKey, IfaceConfig, IfaceStats, MappingStats, NetInfo, PortKey, PortTarget, counter,
    names::map,
};

use super::{Dataplane, DataplaneError, Desired, Flow, GcReport, Stats, SyncReport};
use crate::{
    config::{DaemonConfig, DataplaneKind},
    sys::netns,
};

/// The error with its whole source chain: aya's syscall errors keep the errno in a source.
pub(crate) fn err(context: &str, e: impl std::fmt::Display + std::fmt::Debug) -> DataplaneError {
    let debug = format!("{e:?}");
    let text = e.to_string();
    let detail = match debug.find("io_error") {
        Some(at) => format!("{text} ({})", &debug[at..]),
        None => text,
    };
    DataplaneError::Ebpf(format!("{context}: {detail}"))
}

pub struct EbpfDataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    timeouts: conntrack::Timeouts,
    ct_capacity: u32,
    cgroup_root: Option<PathBuf>,
}

impl EbpfDataplane {
    pub fn open(config: &DaemonConfig) -> Result<Self, DataplaneError> {
        let pin_dir = config.bpffs.clone();
        loader::ensure_bpffs(&pin_dir)?;
        for dir in [pin_dir.join("maps"), pin_dir.join("links")] {
            std::fs::create_dir_all(&dir).map_err(|e| err(&format!("create {}", dir.display()), e))?;
        }
        let mut ebpf = loader::load(&pin_dir, config.conntrack_max)?;
        let cookie =
            netns::current_cookie().map_err(|e| err("netns cookie (SO_NETNS_COOKIE, Linux >= 5.14)", e))?;
        maps::write_netns_cookie(&mut ebpf, cookie)?;
        Ok(Self {
            ebpf,
            pin_dir,
            timeouts: conntrack::Timeouts::with(&config.conntrack_timeouts),
            ct_capacity: config.conntrack_max,
            cgroup_root: loader::cgroup2_root(),
        })
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let Some(array) = self
            .ebpf
            .map(map::COUNTERS)
            .and_then(|m| PerCpuArray::<_, u64>::try_from(m).ok())
        else {
            return Vec::new();
        };
        counter::ALL
            .iter()
            .filter_map(|(id, name)| Some((*name, array.get(id, 0).ok()?.iter().sum())))
            .collect()
    }
}

impl Dataplane for EbpfDataplane {
    fn kind(&self) -> DataplaneKind {
        DataplaneKind::Ebpf
    }

    fn sync(&mut self, desired: &Desired) -> Result<SyncReport, DataplaneError> {
        let mut report = SyncReport::default();
        // Maps first, then attachments: a program never runs on a half-filled map.
        let live = maps::write(&mut self.ebpf, desired)?;
        report.flows_invalidated = conntrack::invalidate(&mut self.ebpf, &live)?;
        let mut links = loader::Links {
            ebpf: &mut self.ebpf,
            dir: self.pin_dir.join("links"),
            cgroup_root: self.cgroup_root.as_deref(),
        };
        links.sync(desired, &mut report)?;
        Ok(report)
    }

    fn gc(&mut self) -> Result<GcReport, DataplaneError> {
        conntrack::expire(&mut self.ebpf, &self.timeouts)
    }

    fn info(&self) -> serde_json::Value {
        let counters: serde_json::Map<String, serde_json::Value> = self
            .counters()
            .into_iter()
            .map(|(name, value)| (name.to_string(), value.into()))
            .collect();
        let mut ifaces = serde_json::Map::new();
        if let Some(stats) = self
            .ebpf
            .map(map::IFACE_STATS)
            .and_then(|m| HashMap::<_, u32, IfaceStats>::try_from(m).ok())
        {
            for (index, value) in stats.iter().filter_map(Result::ok) {
                ifaces.insert(
                    index.to_string(),
                    serde_json::json!({"packets": value.packets, "bytes": value.bytes}),
                );
            }
        }
        serde_json::json!({
            "attach": "tcx",
            "socket_hooks_cgroup": self.cgroup_root.as_ref().map(|p| p.display().to_string()),
            "pin_dir": self.pin_dir.display().to_string(),
            "links": loader::Links::pinned(&self.pin_dir.join("links")),
            "counters": counters,
            "interfaces": ifaces,
            "maps": {
                "conntrack": {"entries": maps::entries::<CtKey, CtEntry>(&self.ebpf, map::CT), "capacity": self.ct_capacity},
                "ports": {"entries": maps::entries::<PortKey, PortTarget>(&self.ebpf, map::PORTS), "capacity": nat_common::MAX_PORT_MAPPINGS},
            },
        })
    }

    fn stats(&self) -> Stats {
        let mut stats = Stats {
            counters: self
                .counters()
                .into_iter()
                .map(|(name, value)| (name.to_string(), value))
                .collect(),
            ..Default::default()
        };
        if let Some(per_cpu) = self
            .ebpf
            .map(map::MAPPING_STATS)
            .and_then(|m| PerCpuHashMap::<_, u32, MappingStats>::try_from(m).ok())
        {
            for (id, values) in per_cpu.iter().filter_map(Result::ok) {
                let packets = values.iter().map(|v| v.packets).sum();
                let bytes = values.iter().map(|v| v.bytes).sum();
                stats.mappings.insert(id, (packets, bytes));
            }
        }
        let ebpf = &self.ebpf;
        for (name, entries, capacity) in [
            (
                map::CT,
                maps::entries::<CtKey, CtEntry>(ebpf, map::CT),
                self.ct_capacity,
            ),
            (
                map::PORTS,
                maps::entries::<PortKey, PortTarget>(ebpf, map::PORTS),
                nat_common::MAX_PORT_MAPPINGS,
            ),
            (
                map::LOCAL_ADDRS,
                maps::entries::<AddrKey, u32>(ebpf, map::LOCAL_ADDRS),
                nat_common::MAX_LOCAL_ADDRS,
            ),
            (
                map::NETWORKS,
                maps::entries::<u32, NetInfo>(ebpf, map::NETWORKS),
                nat_common::MAX_NETWORKS,
            ),
            (
                map::IFACE_CONFIG,
                maps::entries::<u32, IfaceConfig>(ebpf, map::IFACE_CONFIG),
                nat_common::MAX_IFACES,
            ),
        ] {
            stats.maps.insert(name.to_string(), (entries, capacity));
        }
        stats
    }

    fn flows(&self) -> Vec<Flow> {
        conntrack::flows(&self.ebpf)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use nat_common::names::{map, program};

    /// The kernel side names its maps and programs with identifiers; they must be the
    /// names natd, the tests and the benchmark use (nat_common::names).
    #[test]
    fn the_object_carries_exactly_the_shared_names() {
        let object = aya_obj::Object::parse(crate::EBPF_OBJECT).expect("parse natd's eBPF object");
        let maps: BTreeSet<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            .filter(|m| !m.starts_with('.'))
            .collect();
        let programs: BTreeSet<&str> = object.programs.keys().map(String::as_str).collect();
        assert_eq!(maps, map::ALL.iter().copied().collect::<BTreeSet<_>>());
        assert_eq!(programs, program::ALL.iter().copied().collect::<BTreeSet<_>>());
    }
}
