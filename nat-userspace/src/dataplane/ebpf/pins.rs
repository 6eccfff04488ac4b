//! Pinned maps across natd versions and settings. aya reopens a map pinned by name
//! without comparing it to the object's definition, so natd does: a pinned map whose
//! type, key, value, size or flags differ from what this natd carries (an upgrade, or a
//! changed `--conntrack-max`) is replaced, and maps no natd uses any more are removed.
//! Flows are never thrown away on the way: the connection tables are read out first and
//! written into the new maps, and the connection table of natd 0.1 (`NATD_CT`, 16-byte
//! address keys) is converted into today's compact entries.
use std::{collections::BTreeMap, path::Path};

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, MapInfo},
};
use nat_common::{Ct4Entry, Ct4Key, Ct6Entry, Ct6Key, LAYOUT_VERSION, csum, ct, names::map};

use super::err;
use crate::dataplane::DataplaneError;

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

/// Flows read out of pinned tables that are being replaced.
#[derive(Default)]
pub struct CarryOver {
    pub established: Vec<(Ct4Key, Ct4Entry)>,
    pub embryonic: Vec<(Ct4Key, Ct4Entry)>,
    pub established6: Vec<(Ct6Key, Ct6Entry)>,
    pub embryonic6: Vec<(Ct6Key, Ct6Entry)>,
    /// natd 0.1's table, converted when the slots of mappings are known (first sync).
    pub legacy: Vec<(LegacyKey, LegacyEntry)>,
    /// The replaced connection tables themselves, unpinned but kept open: the programs
    /// still attached use them until the links are switched, and the flows they start
    /// meanwhile are copied after the switch (`copy_delta`).
    pub retiring: Vec<(String, MapData)>,
}

/// What a start does to one pinned map.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    /// It fits this natd: adopted as it is.
    Keep,
    /// Replaced by one of the new definition, its flows carried over.
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
    if CONNECTION_TABLES.contains(&name) && s.1 == e.1 && s.2 == e.2 {
        Fate::Carry { why }
    } else {
        Fate::Replace { why }
    }
}

/// The tables whose entries are flows: carried over when replaced.
const CONNECTION_TABLES: [&str; 4] = [map::CT4, map::CT4_NEW, map::CT6, map::CT6_NEW];

/// How many entries the pinned table `name` holds (what a replacement would carry over).
pub fn flows_in(maps_dir: &Path, name: &str) -> usize {
    fn count<K: aya::Pod, V: aya::Pod>(path: &Path) -> usize {
        read_pinned(path, &mut Vec::<(K, V)>::new())
    }
    let path = maps_dir.join(name);
    match name {
        map::CT4 | map::CT4_NEW => count::<Ct4Key, Ct4Entry>(&path),
        map::CT6 | map::CT6_NEW => count::<Ct6Key, Ct6Entry>(&path),
        LEGACY_CT => count::<LegacyKey, LegacyEntry>(&path),
        _ => 0,
    }
}

/// Prepares `maps_dir` for loading: keeps what fits, replaces what does not (carrying
/// flows over), removes what no natd uses. Returns the carried flows and what it did.
pub fn prepare(maps_dir: &Path, expected: &BTreeMap<String, Shape>) -> (CarryOver, Vec<String>) {
    let mut carry = CarryOver::default();
    let mut report = Vec::new();
    for (name, fate) in assess(maps_dir, expected) {
        let path = maps_dir.join(&name);
        let carried = match (&fate, name.as_str()) {
            (Fate::Keep, _) => continue,
            (Fate::Carry { .. }, map::CT4) => read_pinned(&path, &mut carry.established),
            (Fate::Carry { .. }, map::CT4_NEW) => read_pinned(&path, &mut carry.embryonic),
            (Fate::Carry { .. }, map::CT6) => read_pinned(&path, &mut carry.established6),
            (Fate::Carry { .. }, map::CT6_NEW) => read_pinned(&path, &mut carry.embryonic6),
            (Fate::Carry { .. }, LEGACY_CT) => read_pinned(&path, &mut carry.legacy),
            _ => 0,
        };
        if CONNECTION_TABLES.contains(&name.as_str())
            && matches!(fate, Fate::Carry { .. })
            && let Ok(old) = MapData::from_pin(&path)
        {
            carry.retiring.push((name.clone(), old));
        }
        match std::fs::remove_file(&path) {
            Ok(()) => report.push(match fate {
                Fate::Carry { why, .. } => format!("replaced pinned map {name} ({why}; {carried} flows carried over)"),
                Fate::Replace { why } => format!("replaced pinned map {name} ({why})"),
                _ => format!("removed pinned map {name} (no longer used)"),
            }),
            Err(e) => report.push(format!("cannot remove pinned map {name}: {e}")),
        }
    }
    (carry, report)
}

fn read_pinned<K: aya::Pod, V: aya::Pod>(path: &Path, into: &mut Vec<(K, V)>) -> usize {
    let Ok(data) = MapData::from_pin(path) else {
        return 0;
    };
    let Ok(map) = Map::from_map_data(data) else {
        return 0;
    };
    let Ok(table) = HashMap::<_, K, V>::try_from(map) else {
        return 0;
    };
    let before = into.len();
    into.extend(table.iter().filter_map(Result::ok));
    into.len() - before
}

/// Writes carried flows into a table of the new object (as many as fit).
pub fn restore<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    flows: &[(K, V)],
) -> Result<usize, DataplaneError> {
    let mut table: HashMap<&mut MapData, K, V> =
        HashMap::try_from(ebpf.map_mut(name).ok_or_else(|| err("map missing", name))?)
            .map_err(|e| err(name, e))?;
    Ok(flows
        .iter()
        .filter(|(k, e)| table.insert(k, e, 0).is_ok())
        .count())
}

/// Copies into the new tables what the programs wrote into the replaced ones between the
/// snapshot and the switch of the links: flows started in that window, and newer state
/// (last seen, TCP events) of flows carried before. An entry the new table has is replaced
/// only by one seen later. Returns (copied, refused: the table full, or the new programs
/// gave the tuple to another flow meanwhile).
pub fn copy_delta(ebpf: &mut Ebpf, retiring: Vec<(String, MapData)>) -> Result<(usize, usize), DataplaneError> {
    fn copy<K: aya::Pod, V: aya::Pod>(
        ebpf: &mut Ebpf,
        name: &str,
        old: MapData,
        last_seen: fn(&V) -> u32,
    ) -> Result<(usize, usize), DataplaneError> {
        let mut flows = Vec::new();
        if let Ok(map) = Map::from_map_data(old)
            && let Ok(table) = HashMap::<_, K, V>::try_from(map)
        {
            flows.extend(table.iter().filter_map(Result::ok));
        }
        let mut table: HashMap<&mut MapData, K, V> =
            HashMap::try_from(ebpf.map_mut(name).ok_or_else(|| err("map missing", name))?)
                .map_err(|e| err(name, e))?;
        let (mut copied, mut refused) = (0, 0);
        for (key, old) in &flows {
            let newer = match table.get(key, 0) {
                Err(_) => true,
                // Ticks wrap: "later" is a positive difference.
                Ok(now) => (last_seen(old).wrapping_sub(last_seen(&now)) as i32) > 0,
            };
            if newer {
                match table.insert(key, old, 0) {
                    Ok(()) => copied += 1,
                    Err(_) => refused += 1,
                }
            }
        }
        Ok((copied, refused))
    }
    let (mut copied, mut refused) = (0, 0);
    for (name, old) in retiring {
        let (c, r) = match name.as_str() {
            map::CT4 | map::CT4_NEW => copy::<Ct4Key, Ct4Entry>(ebpf, &name, old, |e| e.last_seen)?,
            map::CT6 | map::CT6_NEW => copy::<Ct6Key, Ct6Entry>(ebpf, &name, old, |e| e.last_seen)?,
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

/// natd 0.1's connection table.
const LEGACY_CT: &str = "NATD_CT";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LegacyKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LegacyEntry {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub rewrite: u8,
    pub kind: u8,
    pub state: u8,
    pub _pad: u8,
    pub mapping_id: u32,
    pub _pad2: u32,
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(std::mem::size_of::<LegacyKey>() == 40 && std::mem::size_of::<LegacyEntry>() == 80);

// SAFETY: #[repr(C)] integers and byte arrays without implicit padding (asserted sizes).
unsafe impl aya::Pod for LegacyKey {}
// SAFETY: as above.
unsafe impl aya::Pod for LegacyEntry {}

fn raw4(a: &[u8; 16]) -> u32 {
    u32::from_ne_bytes([a[0], a[1], a[2], a[3]])
}

/// natd 0.1's entry as today's (slow path: its forwarding details are not known; a
/// published-port flow keeps the slot of its mapping, found by `slot_of` its mapping id,
/// and is dropped if the mapping is gone).
pub fn convert(
    key: &LegacyKey,
    old: &LegacyEntry,
    now: u32,
    slot_of: impl Fn(u32) -> Option<(u32, u32)>,
) -> Option<(Ct4Key, Ct4Entry)> {
    const OLD_ESTABLISHED: u8 = 2;
    const OLD_CLOSING: u8 = 3;
    const OLD_CLOSED: u8 = 4;
    const OLD_REPLIED: u8 = 6;
    if key.family != nat_common::FAMILY_V4 {
        return None;
    }
    let k = Ct4Key {
        src: raw4(&key.src),
        dst: raw4(&key.dst),
        sport: key.sport,
        dport: key.dport,
        proto: key.proto,
        _pad: [0; 3],
    };
    let hooks = match old.kind {
        ct::DNAT_FORWARD => ct::HOOK_EDGE_INGRESS | ct::HOOK_SANDBOX,
        ct::DNAT_REPLY => ct::HOOK_EDGE_EGRESS | ct::HOOK_SANDBOX,
        ct::SNAT_FORWARD => ct::HOOK_EDGE_EGRESS,
        ct::SNAT_REPLY => ct::HOOK_EDGE_INGRESS,
        _ => return None,
    };
    let (gen_slot, generation) = match old.kind {
        ct::DNAT_FORWARD | ct::DNAT_REPLY => slot_of(old.mapping_id)?,
        _ => (u32::MAX, 0),
    };
    let (src, dst) = (raw4(&old.src), raw4(&old.dst));
    let ports = |s: u16, d: u16| {
        let (s, d) = (s.to_ne_bytes(), d.to_ne_bytes());
        u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
    };
    let tcp = match old.state {
        OLD_ESTABLISHED => ct::TCP_SYN | ct::TCP_SYNACK | ct::TCP_ESTABLISHED,
        OLD_CLOSING => ct::TCP_ESTABLISHED | ct::TCP_FIN,
        OLD_CLOSED => ct::TCP_RST,
        _ => ct::TCP_SYN,
    };
    let entry = Ct4Entry {
        src,
        dst,
        sport: old.sport,
        dport: old.dport,
        addr_csum: csum::diff2([k.src, k.dst], [src, dst]),
        port_csum: csum::diff1(ports(k.sport, k.dport), ports(old.sport, old.dport)),
        kind: old.kind,
        hooks,
        flags: (if hooks & ct::HOOK_EDGE_INGRESS != 0 {
            ct::FROM_OUTSIDE
        } else {
            0
        }) | (if old.state == OLD_REPLIED { ct::REPLIED } else { 0 }),
        tcp: if key.proto == nat_common::PROTO_TCP {
            tcp
        } else {
            0
        },
        gen_slot,
        generation,
        last_seen: now,
        ..Default::default()
    };
    Some((k, entry))
}
