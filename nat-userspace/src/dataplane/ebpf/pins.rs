//! Pinned maps across natd versions and settings. aya reopens a map pinned by name
//! without comparing it to the object's definition, so natd does: a pinned map whose
//! type, key, value, size or flags differ from what this natd carries (an upgrade, or a
//! changed `--conntrack-max`) is replaced, and maps no natd uses any more are removed.
//! Nothing is thrown away on the way: a replaced hash table whose entries kept their
//! layout (a new size, new flags) is read out first and its entries written into the new
//! map as they were (flows, masquerade mappings, and the configuration whose slots and
//! generations the flows refer to), and the connection table of natd 0.1 (`legacy`) is
//! converted into today's compact entries. The per-mapping counters come over into the
//! new array's regions (`mapping_stats::StatsCarry`: what the old programs count between
//! the read and the switch of the links, milliseconds, is not). Other replaced maps start
//! empty: natd refills configuration before any program runs on them, the datapath's
//! counters start again.
use std::{collections::BTreeMap, path::Path};

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, MapInfo, MapType},
};
use std::os::fd::AsFd as _;

use nat_common::{
    Ct4Entry, Ct4Key, Ct6Entry, Ct6Key, LAYOUT_VERSION, Port4Key, Port6Key, Snat4Key, Snat4Owner, Snat6Key,
    Snat6Owner, SnatMapping, names::map,
};

use super::{
    err,
    legacy::{self, LEGACY_CT, LegacyEntry, LegacyKey},
    mapping_stats, tables,
};
use crate::{dataplane::DataplaneError, sys::bpf_map};

/// What a map must look like: (type, key size, value size, max entries, flags).
pub type Shape = (u32, u32, u32, u32, u32);

/// The maps of the object natd carries, with the sizes it loads them with.
pub fn expected(overrides: &[(&str, u32)]) -> Result<BTreeMap<String, Shape>, DataplaneError> {
    let object = aya_obj::Object::parse(&crate::ebpf_object()).map_err(|e| err("parse the eBPF object", e))?;
    Ok(object
        .maps
        .iter()
        .map(|(name, m)| {
            let max = overrides
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| *v)
                .unwrap_or(m.max_entries());
            (
                name.clone(),
                (m.map_type(), m.key_size(), m.value_size(), max, m.map_flags()),
            )
        })
        .collect())
}

/// The entries of one hash table as the kernel keeps them: keys and values one after the
/// other, each of the map's key and value size.
pub struct RawEntries {
    keys: Vec<u8>,
    values: Vec<u8>,
    count: usize,
}

/// Entries read out of pinned tables that are being replaced.
#[derive(Default)]
pub struct CarryOver {
    /// Every replaced hash table whose entries kept their layout, by name.
    pub tables: Vec<(String, RawEntries)>,
    /// natd 0.1's table, converted when the slots of mappings are known (first sync).
    pub legacy: Vec<(LegacyKey, LegacyEntry)>,
    /// The replaced tables themselves, unpinned but kept open: the programs still
    /// attached use them until the links are switched, and what they write meanwhile is
    /// copied after the switch (`copy_delta`).
    pub retiring: Vec<(String, MapData)>,
    /// The counters of a replaced `NATD_MAPPING_STATS` (another size, or a layout before
    /// 4), written into the new array each CPU into its region.
    pub mapping_stats: Option<mapping_stats::StatsCarry>,
}

/// What a start does to one pinned map.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    /// It fits this natd: adopted as it is.
    Keep,
    /// Replaced by one of the new definition (same key and value), its entries carried over.
    Carry { why: String },
    /// Replaced, its contents rebuilt by natd (configuration) or lost (counters).
    Replace { why: String },
    /// No natd map of that name any more.
    Remove,
}

/// Every pinned map under `maps_dir` and what a start of this natd would do to it,
/// without changing anything (`natd --check-upgrade` prints it).
pub fn assess(maps_dir: &Path, expected: &BTreeMap<String, Shape>) -> Vec<(String, Fate)> {
    let Ok(entries) = std::fs::read_dir(maps_dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Fate)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            let info = MapInfo::from_pin(entry.path()).ok()?;
            Some((name.clone(), fate(&name, &info, expected.get(&name))))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn shape_of(info: &MapInfo) -> Option<Shape> {
    info.map_type().ok().map(|t| {
        (
            t as u32,
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_flags(),
        )
    })
}

fn fate(name: &str, info: &MapInfo, expected: Option<&Shape>) -> Fate {
    let shape = shape_of(info);
    let Some(e) = expected else {
        if name == LEGACY_CT && info.key_size() == 40 && info.value_size() == 80 {
            return Fate::Carry {
                why: "natd 0.1's connection table, converted".into(),
            };
        }
        return Fate::Remove;
    };
    let Some(s) = shape else {
        return Fate::Replace { why: "its type is unknown to this natd".into() };
    };
    if s == *e {
        return Fate::Keep;
    }
    let why = if (s.0, s.1, s.2, s.4) == (e.0, e.1, e.2, e.4) {
        format!("{} entries -> {}", s.3, e.3)
    } else {
        format!("definition changed: type {} key {} value {} flags {:#x} -> type {} key {} value {} flags {:#x}", s.0, s.1, s.2, s.4, e.0, e.1, e.2, e.4)
    };
    let hash = |t: u32| HASH_TYPES.iter().any(|h| *h as u32 == t);
    if hash(s.0) && hash(e.0) && s.1 == e.1 && s.2 == e.2 {
        Fate::Carry { why }
    } else {
        Fate::Replace { why }
    }
}

/// Entries copy between any two hash maps (hash or LRU hash) with the same key and value
/// sizes. A layout change that gives an entry's bytes another meaning converts that table
/// before this raw carry (the versioning rule, `nat_common::LAYOUT_VERSION`).
const HASH_TYPES: [MapType; 2] = [MapType::Hash, MapType::LruHash];

/// The hash tables the programs write whose entries must survive a switch (flows,
/// masquerade mappings and their ports): what the old programs write into a replaced one
/// until the links switch is copied after (`copy_delta`). The LRUs the programs also write
/// (peers, shared ports, quotas, punches, socket rewrites) are soft state: what the old
/// programs add to a replaced one in that window is not copied.
const PROGRAM_WRITTEN: [&str; 8] = [
    map::CT4,
    map::CT4_NEW,
    map::CT6,
    map::CT6_NEW,
    map::SNAT4,
    map::SNAT4_PORTS,
    map::SNAT6,
    map::SNAT6_PORTS,
];

/// What an entry of the table `name` is, for reports.
pub fn entry_word(name: &str) -> &'static str {
    match name {
        map::CT4 | map::CT4_NEW | map::CT6 | map::CT6_NEW | LEGACY_CT => "flows",
        map::SNAT4 | map::SNAT6 => "masquerade mappings",
        map::SNAT4_PORTS | map::SNAT6_PORTS => "held external ports",
        _ => "entries",
    }
}

/// Every entry of the pinned hash table at `path`, raw (None: it cannot be read).
fn read_raw(path: &Path) -> Option<RawEntries> {
    let info = MapInfo::from_pin(path).ok()?;
    let data = MapData::from_pin(path).ok()?;
    let (keys, values, count) =
        bpf_map::dump(data.fd().as_fd(), info.key_size() as usize, info.value_size() as usize).ok()?;
    Some(RawEntries { keys, values, count })
}

/// How many entries the pinned table `name` holds (what a replacement would carry over).
pub fn entries_in(maps_dir: &Path, name: &str) -> usize {
    read_raw(&maps_dir.join(name)).map_or(0, |raw| raw.count)
}

/// Prepares `maps_dir` for loading: keeps what fits, replaces what does not (carrying
/// entries over), removes what no natd uses. Returns the carried entries and what it did.
pub fn prepare(maps_dir: &Path, expected: &BTreeMap<String, Shape>) -> (CarryOver, Vec<String>) {
    let mut carry = CarryOver::default();
    let mut report = Vec::new();
    for (name, fate) in assess(maps_dir, expected) {
        let path = maps_dir.join(&name);
        let carried = match (&fate, name.as_str()) {
            (Fate::Keep, _) => continue,
            (Fate::Carry { .. }, LEGACY_CT) => legacy::read_pinned(&path, &mut carry.legacy),
            (Fate::Carry { .. } | Fate::Replace { .. }, map::MAPPING_STATS) => {
                carry.mapping_stats = mapping_stats::StatsCarry::read_pinned(&path);
                carry.mapping_stats.as_ref().map_or(0, mapping_stats::StatsCarry::slots_counted)
            }
            (Fate::Carry { .. }, _) => match read_raw(&path) {
                Some(raw) => {
                    let count = raw.count;
                    carry.tables.push((name.clone(), raw));
                    count
                }
                None => 0,
            },
            _ => 0,
        };
        if PROGRAM_WRITTEN.contains(&name.as_str())
            && matches!(fate, Fate::Carry { .. })
            && let Ok(old) = MapData::from_pin(&path)
        {
            carry.retiring.push((name.clone(), old));
        }
        match std::fs::remove_file(&path) {
            Ok(()) => report.push(match fate {
                Fate::Carry { why, .. } => {
                    format!("replaced pinned map {name} ({why}; {carried} {} carried over)", entry_word(&name))
                }
                Fate::Replace { why } if name == map::MAPPING_STATS => {
                    format!("replaced pinned map {name} ({why}; the counters of {carried} mappings carried over)")
                }
                Fate::Replace { why } => format!("replaced pinned map {name} ({why})"),
                _ => format!("removed pinned map {name} (no longer used)"),
            }),
            Err(e) => report.push(format!("cannot remove pinned map {name}: {e}")),
        }
    }
    (carry, report)
}


/// Writes every carried table into the object's map of the same name: (name, entries
/// carried, entries written: fewer when the new table is smaller).
pub fn restore_all(ebpf: &Ebpf, carried: &[(String, RawEntries)]) -> Result<Vec<(String, usize, usize)>, DataplaneError> {
    let mut out = Vec::new();
    for (name, raw) in carried {
        let map = ebpf.map(name).and_then(tables::data).ok_or_else(|| err("map missing", name))?;
        let fd = map.fd().as_fd();
        match bpf_map::update(fd, &raw.keys, &raw.values, raw.count) {
            Ok(()) => {}
            // A hash table smaller than what it held (E2BIG), or short of memory: one at a
            // time, as many as fit.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ArgumentListTooLong | std::io::ErrorKind::OutOfMemory) => {
                let (ks, vs) = (raw.keys.len() / raw.count, raw.values.len() / raw.count);
                for i in 0..raw.count {
                    let _ = bpf_map::update(fd, &raw.keys[i * ks..][..ks], &raw.values[i * vs..][..vs], 1);
                }
            }
            Err(e) => return Err(err(&format!("carry the entries of {name} over"), e)),
        }
        // Counted in the new table: a smaller LRU takes every write and evicts.
        let (ks, vs) = (raw.keys.len() / raw.count.max(1), raw.values.len() / raw.count.max(1));
        let kept = if raw.count == 0 {
            0
        } else {
            bpf_map::dump(fd, ks, vs).map_err(|e| err(&format!("read {name}"), e))?.2
        };
        out.push((name.clone(), raw.count, kept));
    }
    Ok(out)
}


/// Copies into the new tables what the programs wrote into the replaced ones between the
/// snapshot and the switch of the links: flows and mappings made in that window, and newer
/// state (last seen, TCP events) of those carried before. An entry the new table has is
/// replaced only by one seen later and otherwise the same (a mapping's port, a port's
/// holder). Returns (copied, refused: the table full, or the new programs gave the tuple,
/// the source or the port to another meanwhile).
pub fn copy_delta(ebpf: &mut Ebpf, retiring: Vec<(String, MapData)>) -> Result<(usize, usize), DataplaneError> {
    /// Whether the old table's entry replaces the new table's: Some(yes or no), None when
    /// the two disagree (refused).
    type Newer<V> = fn(old: &V, now: &V) -> Option<bool>;
    fn copy<K: aya::Pod, V: aya::Pod>(
        ebpf: &mut Ebpf,
        name: &str,
        old: MapData,
        newer: Newer<V>,
    ) -> Result<(usize, usize), DataplaneError> {
        let mut entries = Vec::new();
        if let Ok(map) = Map::from_map_data(old)
            && let Ok(table) = HashMap::<_, K, V>::try_from(map)
        {
            entries.extend(table.iter().filter_map(Result::ok));
        }
        let mut table: HashMap<&mut MapData, K, V> =
            HashMap::try_from(ebpf.map_mut(name).ok_or_else(|| err("map missing", name))?)
                .map_err(|e| err(name, e))?;
        let (mut copied, mut refused) = (0, 0);
        for (key, old) in &entries {
            let write = match table.get(key, 0) {
                Err(_) => Some(true),
                Ok(now) => newer(old, &now),
            };
            match write {
                Some(true) => match table.insert(key, old, 0) {
                    Ok(()) => copied += 1,
                    Err(_) => refused += 1,
                },
                Some(false) => {}
                None => refused += 1,
            }
        }
        Ok((copied, refused))
    }
    // Ticks wrap: "later" is a positive difference.
    fn later(old: u32, now: u32) -> bool {
        (old.wrapping_sub(now) as i32) > 0
    }
    // Each table on its own: a mapping made in the window whose port the new programs gave
    // to another source meanwhile still comes over (the port's holder stays the new one's,
    // refused above); a window of milliseconds, at an upgrade.
    let (mut copied, mut refused) = (0, 0);
    for (name, old) in retiring {
        let (c, r) = match name.as_str() {
            map::CT4 | map::CT4_NEW => {
                copy::<Ct4Key, Ct4Entry>(ebpf, &name, old, |o, n| Some(later(o.last_seen, n.last_seen)))?
            }
            map::CT6 | map::CT6_NEW => {
                copy::<Ct6Key, Ct6Entry>(ebpf, &name, old, |o, n| Some(later(o.last_seen, n.last_seen)))?
            }
            map::SNAT4 => copy::<Snat4Key, SnatMapping>(ebpf, &name, old, |o, n| {
                (o.port == n.port).then(|| later(o.last_seen, n.last_seen))
            })?,
            map::SNAT6 => copy::<Snat6Key, SnatMapping>(ebpf, &name, old, |o, n| {
                (o.port == n.port).then(|| later(o.last_seen, n.last_seen))
            })?,
            map::SNAT4_PORTS => copy::<Port4Key, Snat4Owner>(ebpf, &name, old, |o, n| (o == n).then_some(false))?,
            map::SNAT6_PORTS => copy::<Port6Key, Snat6Owner>(ebpf, &name, old, |o, n| (o == n).then_some(false))?,
            _ => (0, 0),
        };
        copied += c;
        refused += r;
    }
    Ok((copied, refused))
}

/// The version of the pinned maps' layout under `maps_dir` (`NATD_LAYOUT`), if recorded.
/// 0 is what a start that failed before recording (a program the verifier refused, natd
/// killed while verifying) leaves: the layout of the pins beside it, which that start did
/// not change, is its predecessor's, read as for pins from before versions.
pub fn pinned_layout(maps_dir: &Path) -> Result<Option<u32>, DataplaneError> {
    let path = maps_dir.join(map::LAYOUT);
    if !path.exists() {
        return Ok(None);
    }
    let unreadable = |e: String| {
        DataplaneError::Ebpf(format!(
            "the layout record {} cannot be read ({e}): nothing was changed; a natd that cannot read \
             it cannot know the pinned maps' layout (a newer natd's?)",
            path.display()
        ))
    };
    let data = MapData::from_pin(&path).map_err(|e| unreadable(e.to_string()))?;
    let array = aya::maps::Array::<_, u32>::try_from(Map::from_map_data(data).map_err(|e| unreadable(e.to_string()))?)
        .map_err(|e| unreadable(e.to_string()))?;
    let version = array.get(&0, 0).map_err(|e| unreadable(e.to_string()))?;
    Ok((version != 0).then_some(version))
}

/// Whether this natd can take over the pinned maps under `maps_dir`: their layout is its
/// own, or one it converts. A newer layout (a downgrade) is refused before anything is
/// changed. Pins of a natd that predates layout versions are version 1, the layout they
/// have (`LAYOUT_VERSION` 1 is the layout of that time).
pub fn check_layout(maps_dir: &Path) -> Result<u32, DataplaneError> {
    let pinned = pinned_layout(maps_dir)?.unwrap_or(1);
    if pinned > LAYOUT_VERSION {
        return Err(DataplaneError::Ebpf(format!(
            "the maps pinned under {} have layout version {pinned}, newer than this natd's \
             ({LAYOUT_VERSION}): it cannot read them (a downgrade). Nothing was changed: run the newer \
             natd, or remove natd's state with `natd --cleanup` (every tracked flow is lost)",
            maps_dir.display()
        )));
    }
    if pinned < OLDEST_CONVERTED {
        return Err(DataplaneError::Ebpf(format!(
            "the maps pinned under {} have layout version {pinned}; this natd converts versions \
             {OLDEST_CONVERTED} to {LAYOUT_VERSION} only. Nothing was changed: upgrade through an \
             intermediate natd, or remove natd's state with `natd --cleanup`",
            maps_dir.display()
        )));
    }
    Ok(pinned)
}

/// Records this natd's layout version in the loaded object's `NATD_LAYOUT` (an object
/// from before layout versions, a test build's fixture, has none to record).
pub fn record_layout(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    if ebpf.map(map::LAYOUT).is_none() {
        return Ok(());
    }
    let mut array: aya::maps::Array<&mut MapData, u32> = aya::maps::Array::try_from(
        ebpf.map_mut(map::LAYOUT).ok_or_else(|| err("map missing", map::LAYOUT))?,
    )
    .map_err(|e| err(map::LAYOUT, e))?;
    array.set(0, crate::ebpf_object_layout(), 0).map_err(|e| err(map::LAYOUT, e))
}

/// The oldest layout version this natd converts (every version since has a converter here).
const OLDEST_CONVERTED: u32 = 1;

