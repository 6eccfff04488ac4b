//! natd 0.1's connection table (`NATD_CT`: 16-byte address keys, one entry per direction
//! with its mapping named by a hashed id) and its conversion into today's compact IPv4
//! entries, done at the first sync, when the slots of the mappings are known.
use std::path::Path;

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData},
};
use nat_common::{Ct4Entry, Ct4Key, csum, ct};

use super::err;
use crate::dataplane::DataplaneError;

/// natd 0.1's connection table.
pub const LEGACY_CT: &str = "NATD_CT";

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

/// Reads natd 0.1's pinned table at `path` into `into`: how many entries it held.
pub fn read_pinned<K: aya::Pod, V: aya::Pod>(path: &Path, into: &mut Vec<(K, V)>) -> usize {
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

/// Writes converted flows into a table of the new object (as many as fit).
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
