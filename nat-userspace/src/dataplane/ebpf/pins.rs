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
use nat_common::{Ct4Entry, Ct4Key, Ct6Entry, Ct6Key, csum, ct, names::map};

use super::err;
use crate::dataplane::DataplaneError;

/// What a map must look like: (type, key size, value size, max entries, flags).
type Shape = (u32, u32, u32, u32, u32);

/// The maps of the object natd carries, with the sizes it loads them with.
pub fn expected(overrides: &[(&str, u32)]) -> Result<BTreeMap<String, Shape>, DataplaneError> {
    let object = aya_obj::Object::parse(crate::EBPF_OBJECT).map_err(|e| err("parse the eBPF object", e))?;
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
}

/// Prepares `maps_dir` for loading: keeps what fits, replaces what does not (carrying
/// flows over), removes what no natd uses. Returns the carried flows and what it did.
pub fn prepare(maps_dir: &Path, expected: &BTreeMap<String, Shape>) -> (CarryOver, Vec<String>) {
    let mut carry = CarryOver::default();
    let mut report = Vec::new();
    let Ok(entries) = std::fs::read_dir(maps_dir) else {
        return (carry, report);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        let Ok(info) = MapInfo::from_pin(&path) else {
            continue;
        };
        let shape: Option<Shape> = info.map_type().ok().map(|t| {
            (
                t as u32,
                info.key_size(),
                info.value_size(),
                info.max_entries(),
                info.map_flags(),
            )
        });
        if expected.get(&name).is_some() && expected.get(&name) == shape.as_ref() {
            continue;
        }
        let same_entries = |e: &Shape| shape.is_some_and(|s| s.1 == e.1 && s.2 == e.2);
        let carried = match (name.as_str(), expected.get(&name)) {
            (map::CT4, Some(e)) if same_entries(e) => read_pinned(&path, &mut carry.established),
            (map::CT4_NEW, Some(e)) if same_entries(e) => read_pinned(&path, &mut carry.embryonic),
            (map::CT6, Some(e)) if same_entries(e) => read_pinned(&path, &mut carry.established6),
            (map::CT6_NEW, Some(e)) if same_entries(e) => read_pinned(&path, &mut carry.embryonic6),
            (LEGACY_CT, None) if info.key_size() == 40 && info.value_size() == 80 => {
                read_pinned(&path, &mut carry.legacy)
            }
            _ => 0,
        };
        match std::fs::remove_file(&path) {
            Ok(()) if carried > 0 => report.push(format!(
                "replaced pinned map {name} ({carried} flows carried over)"
            )),
            Ok(()) if expected.contains_key(&name) => {
                report.push(format!("replaced pinned map {name} (its definition changed)"))
            }
            Ok(()) => report.push(format!("removed pinned map {name} (no longer used)")),
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
