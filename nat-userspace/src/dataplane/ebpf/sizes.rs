//! How large natd makes its maps: the connection tables as configured
//! (`--conntrack-max`, `--conntrack-embryonic-max`), the published-port tables and the
//! per-mapping counters (`--max-published-ports`; the counters once per possible CPU), the
//! masquerade tables (`--masquerade-max`),
//! every other map as its definition in the object says, except the IPv6 tables while natd
//! has no IPv6 network (dormant: a few entries each, so a host without IPv6 does not hold
//! their memory).
use std::path::Path;

use aya::maps::MapInfo;
use nat_common::names::map;

use super::{mapping_stats, pins};
use crate::config::DaemonConfig;

/// Sizes of the tables: the connection tables' (established flows and embryonic ones),
/// and whether the IPv6 tables have their full sizes.
#[derive(Clone, Copy, Debug)]
pub struct TableSizes {
    pub established: u32,
    pub embryonic: u32,
    /// Published mappings natd allows: `NATD_PORTS4`/`NATD_PORTS6` and each CPU's region
    /// of `NATD_MAPPING_STATS`.
    pub published_ports: u32,
    /// Regions of per-mapping counters: one per CPU id, or one for an object before
    /// layout 4 (a test build playing it), whose per-CPU array has a value per CPU.
    pub stats_regions: u32,
    /// Masquerade mappings per family, and their held ports, shared ports and peers.
    pub masquerade: u32,
    /// False while natd has no IPv6 network: the IPv6 tables then hold
    /// `IPV6_DORMANT_ENTRIES` each (nothing but an IPv6 network's sandboxes and published
    /// ports puts entries there), and the first IPv6 network grows them
    /// (`EbpfDataplane::grow_ipv6_tables`).
    pub ipv6: bool,
}

/// The tables only IPv6 traffic of natd's networks fills. The LRUs among them are
/// preallocated whatever they hold: 47 MiB at full size.
pub const IPV6_TABLES: [&str; 10] = [
    map::CT6,
    map::CT6_NEW,
    map::PORTS6,
    map::ENDPOINTS6,
    map::SNAT6,
    map::SNAT6_PORTS,
    map::SNAT6_PEERS,
    map::SNAT6_SHARED,
    map::QUOTA6,
    map::PUNCH6,
];

/// The IPv6 tables whose entries are live state (flows, mappings, published ports,
/// endpoints): full-size tables are kept while one of them holds anything. The others
/// (peers, shared ports, quotas, punches) only qualify what those hold.
const IPV6_LIVE: [&str; 6] = [map::CT6, map::CT6_NEW, map::SNAT6, map::SNAT6_PORTS, map::PORTS6, map::ENDPOINTS6];

/// The masquerade tables (`--masquerade-max`): mappings, the ports they hold, the ports
/// mappings of the default filtering share, the peers they sent to.
const MASQUERADE_TABLES: [&str; 8] = [
    map::SNAT4,
    map::SNAT4_PORTS,
    map::SNAT4_SHARED,
    map::SNAT4_PEERS,
    map::SNAT6,
    map::SNAT6_PORTS,
    map::SNAT6_SHARED,
    map::SNAT6_PEERS,
];

/// Entries of each IPv6 table while no IPv6 network needs them.
pub const IPV6_DORMANT_ENTRIES: u32 = 256;

/// Whether IPv6 tables are at full size, judged by `NATD_PORTS6`'s capacity (whose full
/// size, `--max-published-ports`, is never below `MIN_PORT_MAPPINGS`, above the dormant
/// size; `--conntrack-max` may be below it).
pub fn ipv6_tables_full(ports6_capacity: u32) -> bool {
    ports6_capacity > IPV6_DORMANT_ENTRIES
}

impl TableSizes {
    /// The sizes `config` asks for; `ipv6`: natd has an IPv6 network (see `ipv6_full`).
    pub fn of(config: &DaemonConfig, ipv6: bool) -> Result<Self, crate::dataplane::DataplaneError> {
        Ok(Self {
            established: config.conntrack_max,
            embryonic: config.conntrack_embryonic_max,
            published_ports: config.max_published_ports,
            stats_regions: if crate::ebpf_object_layout() < 4 { 1 } else { mapping_stats::cpu_regions()? },
            masquerade: config.masquerade_max,
            ipv6: Self::ipv6_full(&config.bpffs, ipv6),
        })
    }

    /// The sizes that differ from the object's definitions: what natd loads it with.
    pub fn overrides(&self) -> Vec<(&'static str, u32)> {
        let mut sizes = vec![
            (map::CT4, self.established),
            (map::CT4_NEW, self.embryonic),
            (map::CT6, self.established),
            (map::CT6_NEW, self.embryonic),
            (map::PORTS4, self.published_ports),
            (map::PORTS6, self.published_ports),
            (map::MAPPING_STATS, mapping_stats::entries(self.published_ports, self.stats_regions)),
        ];
        sizes.extend(MASQUERADE_TABLES.iter().map(|name| (*name, self.masquerade)));
        if !self.ipv6 {
            sizes.retain(|(name, _)| !IPV6_TABLES.contains(name));
            sizes.extend(IPV6_TABLES.iter().map(|name| (*name, IPV6_DORMANT_ENTRIES)));
        }
        sizes
    }

    /// Whether a start gives the IPv6 tables their full sizes: `wanted` (natd has an IPv6
    /// network), or full-size ones pinned under `pin_dir` still hold IPv6 state (an IPv6
    /// network removed a moment ago leaves its flows). Full-size tables that hold nothing
    /// go dormant again: their memory back, as after a natd of an earlier layout, whose
    /// IPv6 tables were always full.
    pub fn ipv6_full(pin_dir: &Path, wanted: bool) -> bool {
        if wanted {
            return true;
        }
        let maps = pin_dir.join("maps");
        let pinned_full =
            MapInfo::from_pin(maps.join(map::PORTS6)).is_ok_and(|info| ipv6_tables_full(info.max_entries()));
        pinned_full && IPV6_LIVE.iter().any(|name| pins::entries_in(&maps, name) > 0)
    }
}
