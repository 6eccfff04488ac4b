//! The eBPF dataplane: natd's own TC programs and BPF maps do the NAT, the connection
//! tracking and the isolation. `loader` loads and attaches (pinned, adopted on restart),
//! `maps` writes the configuration maps, `conntrack` expires and lists flows.
pub mod adopt;
pub mod conntrack;
pub mod drift;
pub mod housekeeper;
pub mod kernel_form;
pub mod loader;
pub mod mapping_stats;
pub mod mappings;
mod legacy;
pub mod maps;
mod pins;
pub mod portmarks;
pub mod sizes;
pub mod slots;
pub mod tables;

use std::{collections::BTreeSet, path::PathBuf, sync::Arc};

use aya::Ebpf;
use nat_common::{Ct4Entry, Ct4Key, names::map};

use super::{
    Dataplane, DataplaneError, Desired, Flow, GcReport, Housekeeping, IfaceRole, PortRule, Stats, SyncReport,
    WrittenState,
};
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

/// How long after a failed growth of the IPv6 tables a tick tries again.
const GROWTH_RETRY: std::time::Duration = std::time::Duration::from_secs(300);

/// `natctl info`'s word for programs taken from the last start's pins (`adopt`).
pub const ADOPTED: &str = "adopted from the last start's pins, not verified again";

pub struct EbpfDataplane {
    ebpf: Ebpf,
    /// The table sizes it was loaded with, and the expiry settings (what a reload needs).
    sizes: sizes::TableSizes,
    timeouts: conntrack::Timeouts,
    /// The last growth of the IPv6 tables failed: not tried again before this, and why
    /// (`natctl info`). IPv6 works meanwhile, on the dormant tables' few entries.
    growth_failed: Option<(std::time::Instant, String)>,
    /// The programs adopted from the last start's pins (`adopt`), by name.
    adopted: std::collections::HashMap<String, aya::programs::Program>,
    pin_dir: PathBuf,
    /// Expiry and reads, outside the daemon's lock.
    keeper: Arc<housekeeper::Housekeeper>,
    cgroup_root: Option<PathBuf>,
    writer: maps::MapWriter,
    /// natd 0.1's flows, converted at the first sync (they need the mappings' slots).
    legacy: Vec<(legacy::LegacyKey, legacy::LegacyEntry)>,
    /// What start-up did to pinned maps, reported by the first sync.
    pin_report: Vec<String>,
    /// Replaced tables the old programs may still write to until the first
    /// sync switches the links (`pins::copy_delta`).
    retiring: Vec<(String, aya::maps::MapData)>,
    fast_path: bool,
    /// The interfaces (index, name, role) whose attachments the last sync checked: a sync
    /// for the same set (a port change) skips the check; a drift found on a pinned link
    /// makes the next sync check them all.
    links_checked: Option<BTreeSet<(u32, String, IfaceRole)>>,
    /// The links natd keeps pinned, as of the last complete check (for the drift check).
    pins: Option<Arc<BTreeSet<String>>>,
    /// What the programs on natd's links and natd's own are (`loader::ProgramCache`).
    programs: loader::ProgramCache,
    /// The edges (ifindex, MAC, is a bridge) of the last sync, to notice one whose role
    /// moved to another interface with the same MAC (a hostbridge network over it, or its
    /// removal).
    edges: Vec<(u32, [u8; 6], bool)>,
}

impl EbpfDataplane {
    /// `ipv6`: natd has an IPv6 network (the IPv6 tables get their full sizes).
    pub fn open(config: &DaemonConfig, ipv6: bool) -> Result<Self, DataplaneError> {
        let pin_dir = config.bpffs.clone();
        loader::ensure_bpffs(&pin_dir)?;
        for dir in [pin_dir.join("maps"), pin_dir.join("links")] {
            std::fs::create_dir_all(&dir).map_err(|e| err(&format!("create {}", dir.display()), e))?;
        }
        let sizes = sizes::TableSizes::of(config, ipv6)?;
        let timeouts = conntrack::Timeouts {
            mapping_refresh_inbound: config.masquerade_refresh_inbound,
            ..conntrack::Timeouts::with(&config.conntrack_timeouts)
        };
        Self::load(pin_dir, sizes, timeouts)
    }

    fn load(pin_dir: PathBuf, sizes: sizes::TableSizes, timeouts: conntrack::Timeouts) -> Result<Self, DataplaneError> {
        let loader::Loaded {
            mut ebpf,
            adopted,
            carry,
            report: mut pin_report,
        } = loader::load(&pin_dir, sizes)?;
        for (name, had, kept) in pins::restore_all(&ebpf, &carry.tables)? {
            if kept < had {
                pin_report.push(format!("{name}: {} {} did not fit the new size", had - kept, pins::entry_word(&name)));
            }
        }
        if let Some(stats) = &carry.mapping_stats {
            stats.restore(&ebpf)?;
        }
        mapping_stats::write_slots(&mut ebpf, sizes.published_ports)?;
        let cookie =
            netns::current_cookie().map_err(|e| err("netns cookie (SO_NETNS_COOKIE, Linux >= 5.14)", e))?;
        maps::write_netns_cookie(&mut ebpf, cookie)?;
        let mut writer = maps::MapWriter::new(sizes.published_ports);
        writer.adopt(&ebpf);
        // The programs adopted are the ones that ran with the filter on: every port in use
        // has been marked all along, by them and by the natd that started it.
        if !adopted.is_empty() && maps::port_filter_on(&ebpf) {
            writer.set_port_filter(true);
        }
        let keeper = Arc::new(housekeeper::Housekeeper::new(&ebpf, timeouts, pin_dir.join("links"))?);
        Ok(Self {
            ebpf,
            sizes,
            timeouts,
            growth_failed: None,
            adopted,
            pin_dir,
            keeper,
            cgroup_root: loader::cgroup2_root(),
            writer,
            legacy: carry.legacy,
            retiring: carry.retiring,
            pin_report,
            fast_path: false,
            links_checked: None,
            pins: None,
            programs: Default::default(),
            edges: Vec::new(),
        })
    }

    /// The first IPv6 network: the IPv6 tables, dormant until now, are replaced by
    /// full-size ones, as a restart with new sizes does (`loader::load`: programs verified
    /// on maps of their own first, what the replaced tables hold carried over). The sync
    /// that follows fills the maps and switches every link to the reloaded programs, then
    /// copies what the old programs wrote meanwhile. Seconds, once per set of pins. True:
    /// grown (a new writer: the sync writes everything).
    ///
    /// A growth that fails (the verifier, the memory for the tables) is logged and reported
    /// by `natctl info`, and the sync goes on without it: IPv6 works on the dormant tables
    /// (256 flows, published IPv6 ports, IPv6 sandboxes: past that, the sync that writes
    /// one more fails) and the growth is tried again by the first tick `GROWTH_RETRY`
    /// after, never by every request (each try holds the daemon's lock for seconds).
    fn grow_ipv6_tables(&mut self, desired: &Desired) -> bool {
        if self.sizes.ipv6 {
            return false;
        }
        if !desired.networks.iter().any(|n| n.v6.is_some()) {
            // The IPv6 network that wanted them is gone: nothing to try again.
            self.growth_failed = None;
            return false;
        }
        if self.growth_failed.as_ref().is_some_and(|(at, _)| at.elapsed() < GROWTH_RETRY) {
            return false;
        }
        let sizes = sizes::TableSizes { ipv6: true, ..self.sizes };
        let started = std::time::Instant::now();
        let load = || -> Result<Self, DataplaneError> {
            // Test builds: a growth that fails on demand (fail point `grow-ipv6-tables`).
            fail::fail_point!("grow-ipv6-tables", |_| Err(DataplaneError::Ebpf(
                "injected by fail point grow-ipv6-tables".into()
            )));
            Self::load(self.pin_dir.clone(), sizes, self.timeouts)
        };
        let mut grown = match load() {
            Ok(grown) => grown,
            Err(e) => {
                tracing::warn!(error = %e, "the IPv6 tables could not grow: IPv6 runs on the dormant tables");
                self.growth_failed = Some((std::time::Instant::now(), e.to_string()));
                return false;
            }
        };
        grown.legacy = std::mem::take(&mut self.legacy);
        grown.retiring.append(&mut self.retiring);
        grown.edges = std::mem::take(&mut self.edges);
        // The marks are in `NATD_PORT_MARKS`, which the growth keeps: the filter stays as
        // it was (a new writer would turn it off for the programs still running).
        grown.writer.set_port_filter(self.writer.port_filter());
        let mut report = std::mem::take(&mut self.pin_report);
        report.push(format!(
            "IPv6 tables grown from {} entries to full size for the first IPv6 network",
            sizes::IPV6_DORMANT_ENTRIES
        ));
        report.append(&mut grown.pin_report);
        grown.pin_report = report;
        tracing::info!(ms = started.elapsed().as_millis() as u64, "IPv6 tables grown for the first IPv6 network");
        // The old object goes: its programs stay on the links (which hold them and their
        // maps) until the sync switches each link.
        *self = grown;
        true
    }

    /// Why the IPv6 tables are dormant, for `natctl info` (None: they are full).
    fn ipv6_tables_state(&self) -> Option<String> {
        (!self.sizes.ipv6).then(|| match &self.growth_failed {
            Some((_, why)) => format!("dormant: growth failed ({why})"),
            None => "dormant (no IPv6 network yet)".to_string(),
        })
    }

    /// Turns the host-bound miss filter on once every link runs these programs, which
    /// mark the ports of what they make: what the tables hold already (made by the
    /// programs before a restart or an upgrade, carried over, or pinned by a natd that did
    /// not mark, layout 1) is marked first. This is layout 1's converter.
    fn start_port_filter(&mut self, desired: &Desired) -> Result<(), DataplaneError> {
        let Some(marks) = self.writer.marks(&self.ebpf)? else {
            return Ok(());
        };
        let Some(used) = portmarks::used(&self.ebpf) else {
            // A table not read to its end: the filter stays off until a later sync reads
            // them all (a port missed here would be a live one).
            tracing::warn!("host-bound miss filter not started: a table could not be read");
            return Ok(());
        };
        marks.mark_all(used.iter().copied(), conntrack::now_ticks());
        self.writer.set_port_filter(true);
        self.writer.write(&mut self.ebpf, desired)?;
        tracing::info!(ports_in_use = used.len(), "host-bound miss filter on");
        Ok(())
    }

    /// Flows that left by an edge whose role a bridge with the same MAC took over (a
    /// hostbridge network over the NIC), or that left by such a bridge now gone (the
    /// network removed, the NIC back), leave by the new interface from now on. Other
    /// interfaces that share a MAC (VLANs and their parent) never take each other's flows.
    fn follow_edges(&mut self, desired: &Desired, report: &mut SyncReport) -> Result<(), DataplaneError> {
        let now: Vec<(u32, [u8; 6], bool)> = desired
            .ifaces
            .iter()
            .filter(|i| matches!(i.role, IfaceRole::Edge { .. }) && i.mac != [0; 6])
            .map(|i| (i.index, i.mac, i.bridge))
            .collect();
        for &(index, mac, bridge) in &now {
            let moved_from = self.edges.iter().find(|(old, old_mac, old_bridge)| {
                *old_mac == mac && *old != index && (bridge || *old_bridge) && !now.iter().any(|(i, ..)| i == old)
            });
            if let Some(&(old, ..)) = moved_from {
                let moved = conntrack::retarget(&mut self.ebpf, old, index)?;
                report
                    .attached
                    .push(format!("{moved} flow entries moved from edge {old} to {index}"));
            }
        }
        self.edges = now;
        Ok(())
    }

    /// natd 0.1's flows into today's table, once the mappings have their slots.
    fn convert_legacy(&mut self, ports: &[PortRule]) -> Result<usize, DataplaneError> {
        let legacy = std::mem::take(&mut self.legacy);
        if legacy.is_empty() {
            return Ok(0);
        }
        let now = conntrack::now_ticks();
        // natd 0.1's entries name their mapping by the id it hashed then.
        let slots = self.writer.legacy_slots(ports);
        let generations = self.writer.generations_of(&self.ebpf, slots.values().copied());
        let converted: Vec<(Ct4Key, Ct4Entry)> = legacy
            .iter()
            .filter_map(|(k, e)| {
                legacy::convert(k, e, now, |id| {
                    let slot = *slots.get(&id)?;
                    Some((slot, *generations.get(&slot)?))
                })
            })
            .collect();
        legacy::restore(&mut self.ebpf, map::CT4, &converted)
    }

    /// Maps first, then attachments: a program never runs on a half-filled map. `ports`:
    /// the published ports changed only by these (added, removed).
    fn sync_maps_then_links(
        &mut self,
        desired: &Desired,
        ports: Option<(&[PortRule], &[PortRule])>,
    ) -> Result<SyncReport, DataplaneError> {
        let ports = if self.grow_ipv6_tables(desired) { None } else { ports };
        let mut report = SyncReport::default();
        report.attached.append(&mut self.pin_report);
        match ports {
            Some((added, removed)) => self.writer.write_with_ports(&mut self.ebpf, desired, added, removed)?,
            None => self.writer.write(&mut self.ebpf, desired)?,
        }
        self.fast_path = desired.fast_path;
        self.follow_edges(desired, &mut report)?;
        let converted = self.convert_legacy(&desired.ports)?;
        if converted > 0 {
            report.attached.push(format!(
                "{converted} flows of natd 0.1's connection table carried over"
            ));
        }
        let ifaces: BTreeSet<(u32, String, IfaceRole)> = desired
            .ifaces
            .iter()
            .map(|i| (i.index, i.name.clone(), i.role))
            .collect();
        if self.links_checked.as_ref() == Some(&ifaces) {
            return Ok(report);
        }
        let checked = self.links_checked.take().unwrap_or_default();
        let known = self.pins.take().filter(|_| !checked.is_empty());
        let mut links = loader::Links {
            ebpf: &mut self.ebpf,
            adopted: &mut self.adopted,
            dir: self.pin_dir.join("links"),
            cgroup_root: self.cgroup_root.as_deref(),
            programs: &mut self.programs,
            checked: &checked,
            known: known.as_deref(),
        };
        // Until every link is attached, every sync tries again (and checks every link).
        let (complete, pinned) = match links.sync(desired, &mut report) {
            // The pins as natd left them were not as it left them: read them.
            Err(e) if links.known.is_some() => {
                tracing::info!(error = %e, "pinned links changed behind natd's back: reading them again");
                links.known = None;
                links.sync(desired, &mut report)?
            }
            result => result?,
        };
        if complete {
            self.links_checked = Some(ifaces);
            self.pins = Some(Arc::new(pinned));
        } else {
            self.pins = None;
        }
        if !self.retiring.is_empty() {
            // Every link runs the new programs on the new maps now: what the old ones
            // started since the snapshot comes over, then the old tables go.
            let (copied, refused) = pins::copy_delta(&mut self.ebpf, std::mem::take(&mut self.retiring))?;
            report
                .attached
                .push(format!("{copied} entries written or updated during the switch carried over"));
            if refused > 0 {
                tracing::warn!(refused, "entries of the switch window did not fit the new tables");
            }
        }
        if self.links_checked.is_some() && !self.writer.port_filter() {
            self.start_port_filter(desired)?;
        }
        Ok(report)
    }

}

/// `natctl info`'s fill of the tables that fill with traffic, from `Housekeeping::stats`
/// (read outside the daemon's lock).
pub fn table_fill(stats: &Stats) -> serde_json::Value {
    let fill = |name: &str| {
        let (entries, capacity) = stats.maps.get(name).copied().unwrap_or_default();
        serde_json::json!({"entries": entries, "capacity": capacity})
    };
    let published = stats.maps.get(map::PORTS4).map_or(0, |(_, capacity)| *capacity);
    let cpus = mapping_stats::cpu_regions().unwrap_or(0);
    serde_json::json!({
        "conntrack": fill(map::CT4),
        "conntrack_embryonic": fill(map::CT4_NEW),
        "conntrack6": fill(map::CT6),
        "conntrack6_embryonic": fill(map::CT6_NEW),
        "ports": fill(map::PORTS4),
        "memory_bytes": stats.map_memory.values().sum::<u64>(),
        // A region per possible CPU, a counter pair (16 bytes) per mapping natd allows
        // (`--max-published-ports`, the published-port tables' capacity).
        "mapping_counters": {
            "mappings": published,
            "cpus": cpus,
            "bytes_per_cpu": u64::from(published) * size_of::<nat_common::MappingStats>() as u64,
            "memory_bytes": stats.map_memory.get(map::MAPPING_STATS).copied().unwrap_or(0),
        },
    })
}

impl Dataplane for EbpfDataplane {
    fn kind(&self) -> DataplaneKind {
        DataplaneKind::Ebpf
    }

    fn sync(&mut self, desired: &Desired) -> Result<SyncReport, DataplaneError> {
        self.sync_maps_then_links(desired, None)
    }

    fn sync_with_ports(
        &mut self,
        desired: &Desired,
        added: &[PortRule],
        removed: &[PortRule],
    ) -> Result<SyncReport, DataplaneError> {
        self.sync_maps_then_links(desired, Some((added, removed)))
    }

    fn change_ports(
        &mut self,
        desired: &Desired,
        added: &[PortRule],
        removed: &[PortRule],
    ) -> Result<SyncReport, DataplaneError> {
        if self.grow_ipv6_tables(desired) {
            return self.sync(desired);
        }
        if self.writer.change_ports(&mut self.ebpf, added, removed)? {
            return Ok(SyncReport::default());
        }
        self.sync(desired)
    }

    fn gc(&mut self) -> Result<GcReport, DataplaneError> {
        self.recheck();
        self.keeper.gc()
    }

    fn housekeeping(&self) -> Option<Arc<dyn Housekeeping>> {
        Some(self.keeper.clone())
    }

    fn recheck(&mut self) {
        // The tick's sync compares with the kernel's maps, not with what natd remembers
        // writing: changes made behind natd's back are repaired within a tick.
        self.writer.reread();
        self.links_checked = None;
    }

    fn written(&self) -> Option<WrittenState> {
        Some(WrittenState(Box::new(drift::EbpfWritten {
            mirror: self.writer.mirror().clone(),
            pins: self.pins.clone(),
        })))
    }

    fn forget_drifted(&mut self, drifted: &[String]) -> bool {
        for name in drifted {
            if name == drift::LINKS {
                self.links_checked = None;
            } else {
                self.writer.mirror_mut().forget(name);
            }
        }
        // Work the last sync left: a write that failed midway, edges not attached yet,
        // tables or flows to carry over, a growth of the IPv6 tables to try again.
        !drifted.is_empty()
            || self.writer.mirror().unknown()
            || self.links_checked.is_none()
            || !self.retiring.is_empty()
            || !self.legacy.is_empty()
            || self.growth_failed.as_ref().is_some_and(|(at, _)| at.elapsed() >= GROWTH_RETRY)
    }

    fn mapping_slots(&self) -> Vec<(u32, u32)> {
        self.writer.mapping_slots()
    }

    fn mapping_room(&self) -> Option<(usize, usize)> {
        Some(self.writer.mapping_room())
    }

    fn info(&self) -> serde_json::Value {
        let counters: serde_json::Map<String, serde_json::Value> = self
            .keeper
            .counters()
            .into_iter()
            .map(|(name, value)| (name.to_string(), value.into()))
            .collect();
        serde_json::json!({
            "attach": "tcx",
            "socket_hooks_cgroup": self.cgroup_root.as_ref().map(|p| p.display().to_string()),
            "pin_dir": self.pin_dir.display().to_string(),
            "programs": if self.adopted.is_empty() { "loaded and verified at start" } else { ADOPTED },
            "links": loader::Links::pinned(&self.pin_dir.join("links")),
            "counters": counters,
            "fast_path": self.fast_path,
            "port_filter": {
                "on": self.writer.port_filter(),
                "ports_marked": self.writer.opened_marks().map(portmarks::PortMarks::marked),
            },
            "ipv6_tables": self.ipv6_tables_state().unwrap_or_else(|| "full".to_string()),
        })
    }

    fn stats(&self) -> Stats {
        self.keeper.stats(&self.mapping_slots(), true)
    }

    fn flows(&self) -> Vec<Flow> {
        conntrack::flows(&self.ebpf, &self.keeper.timeouts(), |slot| self.writer.mapping_of_slot(slot))
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
