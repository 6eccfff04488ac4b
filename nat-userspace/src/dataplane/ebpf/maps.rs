//! The one writer of natd's maps: from `Desired` to map entries, element by element (a
//! new mapping appears with one update, a removed one disappears with one delete, never
//! half-installed). The agent, the packet tests and the benchmark all write maps through
//! here, so the bytes they install are the bytes natd installs.
use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv4Addr,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuHashMap, PerCpuValues, lpm_trie::Key},
};
use nat_common::{
    AddrKey, FAMILY_V4, IfaceConfig, IfaceStats, MappingStats, NatConfig, NetInfo, PortKey, PortTarget, addr,
    names::map, net, role,
};

use super::err;
use crate::dataplane::{DataplaneError, Desired, Iface, IfaceRole, NetworkRule, PortRule};

pub fn v4_bytes(ip: Ipv4Addr) -> [u8; 16] {
    addr::v4(ip.octets())
}

pub fn v4_of(bytes: &[u8; 16]) -> Ipv4Addr {
    Ipv4Addr::from(addr::v4_octets(bytes))
}

pub fn iface_config(iface: &Iface) -> IfaceConfig {
    match iface.role {
        IfaceRole::Uplink { addr } => IfaceConfig {
            role: role::UPLINK,
            network_id: 0,
            addr: addr.map(v4_bytes).unwrap_or_default(),
            family: if addr.is_some() { FAMILY_V4 } else { 0 },
            _pad: [0; 7],
        },
        IfaceRole::SandboxVeth { network_id } => IfaceConfig {
            role: role::SANDBOX_VETH,
            network_id,
            ..Default::default()
        },
    }
}

pub fn port_entry(rule: &PortRule) -> (PortKey, PortTarget) {
    (
        PortKey {
            addr: rule.host_ip.map(v4_bytes).unwrap_or_default(),
            port: rule.host_port.to_be(),
            proto: rule.proto.number(),
            family: FAMILY_V4,
        },
        PortTarget {
            addr: v4_bytes(rule.target),
            port: rule.target_port.to_be(),
            _pad: [0; 2],
            mapping_id: rule.mapping_id,
        },
    )
}

pub fn net_info(n: &NetworkRule) -> NetInfo {
    NetInfo {
        network_id: n.id,
        flags: (if n.icc { net::ICC } else { 0 })
            | (if n.internal { net::INTERNAL } else { 0 })
            | (if n.masquerade { net::MASQ } else { 0 }),
        gateway: v4_bytes(n.gateway),
        subnet: v4_bytes(n.subnet.network()),
        prefix_len: n.subnet.prefix(),
        _pad: [0; 7],
    }
}

pub fn local_addr(ip: Ipv4Addr) -> AddrKey {
    AddrKey {
        addr: v4_bytes(ip),
        family: FAMILY_V4,
        _pad: [0; 3],
    }
}

fn hash_map<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<HashMap<&'a mut MapData, K, V>, DataplaneError> {
    HashMap::try_from(ebpf.map_mut(name).ok_or_else(|| err("map missing", name))?).map_err(|e| err(name, e))
}

/// Deletes what is not wanted and writes what differs: one syscall per changed element.
fn sync_hash<K, V>(
    map: &mut HashMap<&mut MapData, K, V>,
    want: &BTreeMap<K, V>,
    name: &str,
) -> Result<(), DataplaneError>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    let have: BTreeMap<K, V> = map.iter().filter_map(Result::ok).collect();
    for key in have.keys().filter(|k| !want.contains_key(k)) {
        let _ = map.remove(key);
    }
    for (key, value) in want {
        if have.get(key) != Some(value) {
            map.insert(key, value, 0).map_err(|e| err(name, e))?;
        }
    }
    Ok(())
}

/// Makes every configuration map hold `desired`. Returns the mapping ids now published.
/// Order matters: a program never finds a port mapping whose counters or network are
/// not there yet.
pub fn write(ebpf: &mut Ebpf, desired: &Desired) -> Result<HashSet<u32>, DataplaneError> {
    write_ifaces(ebpf, &desired.ifaces)?;
    write_local_addrs(ebpf, &desired.local_addrs)?;
    write_networks(ebpf, &desired.networks)?;
    write_config(ebpf, desired.snat_ports)?;
    write_ports(ebpf, &desired.ports)
}

fn write_ifaces(ebpf: &mut Ebpf, ifaces: &[Iface]) -> Result<(), DataplaneError> {
    let want: BTreeMap<u32, IfaceConfig> = ifaces.iter().map(|i| (i.index, iface_config(i))).collect();
    sync_hash(&mut hash_map(ebpf, map::IFACE_CONFIG)?, &want, map::IFACE_CONFIG)?;
    let mut stats = hash_map::<u32, IfaceStats>(ebpf, map::IFACE_STATS)?;
    let stale: Vec<u32> = stats
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains_key(k))
        .collect();
    for key in stale {
        let _ = stats.remove(&key);
    }
    Ok(())
}

fn write_local_addrs(ebpf: &mut Ebpf, addrs: &[Ipv4Addr]) -> Result<(), DataplaneError> {
    let want: BTreeMap<AddrKey, u32> = addrs.iter().map(|ip| (local_addr(*ip), 1)).collect();
    sync_hash(&mut hash_map(ebpf, map::LOCAL_ADDRS)?, &want, map::LOCAL_ADDRS)
}

fn write_networks(ebpf: &mut Ebpf, networks: &[NetworkRule]) -> Result<(), DataplaneError> {
    let infos: Vec<NetInfo> = networks.iter().map(net_info).collect();
    let by_id: BTreeMap<u32, NetInfo> = infos.iter().map(|i| (i.network_id, *i)).collect();
    sync_hash(&mut hash_map(ebpf, map::NETWORKS)?, &by_id, map::NETWORKS)?;
    let mut trie: LpmTrie<&mut MapData, [u8; 4], NetInfo> = LpmTrie::try_from(
        ebpf.map_mut(map::NETS_V4)
            .ok_or_else(|| err("map missing", map::NETS_V4))?,
    )
    .map_err(|e| err(map::NETS_V4, e))?;
    let want: BTreeMap<(u32, [u8; 4]), NetInfo> = infos
        .iter()
        .map(|i| ((u32::from(i.prefix_len), addr::v4_octets(&i.subnet)), *i))
        .collect();
    let have: Vec<Key<[u8; 4]>> = trie.keys().filter_map(Result::ok).collect();
    for key in have {
        if !want.contains_key(&(key.prefix_len(), key.data())) {
            let _ = trie.remove(&key);
        }
    }
    for ((prefix, data), value) in &want {
        trie.insert(&Key::new(*prefix, *data), *value, 0)
            .map_err(|e| err(map::NETS_V4, e))?;
    }
    Ok(())
}

fn write_config(ebpf: &mut Ebpf, snat_ports: (u16, u16)) -> Result<(), DataplaneError> {
    let mut config: Array<&mut MapData, NatConfig> = Array::try_from(
        ebpf.map_mut(map::CONFIG)
            .ok_or_else(|| err("map missing", map::CONFIG))?,
    )
    .map_err(|e| err(map::CONFIG, e))?;
    let value = NatConfig {
        snat_port_min: snat_ports.0,
        snat_port_max: snat_ports.1,
        _pad: 0,
    };
    config.set(0, value, 0).map_err(|e| err(map::CONFIG, e))
}

fn write_ports(ebpf: &mut Ebpf, ports: &[PortRule]) -> Result<HashSet<u32>, DataplaneError> {
    let want: BTreeMap<PortKey, PortTarget> = ports.iter().map(port_entry).collect();
    let live: HashSet<u32> = want.values().map(|t| t.mapping_id).collect();
    // Counters exist before the mapping does, so the programs only ever add to them.
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| err("nr_cpus", e))?;
    let mut stats: PerCpuHashMap<&mut MapData, u32, MappingStats> = PerCpuHashMap::try_from(
        ebpf.map_mut(map::MAPPING_STATS)
            .ok_or_else(|| err("map missing", map::MAPPING_STATS))?,
    )
    .map_err(|e| err(map::MAPPING_STATS, e))?;
    let have: HashSet<u32> = stats.keys().filter_map(Result::ok).collect();
    for id in have.difference(&live) {
        let _ = stats.remove(id);
    }
    for id in live.difference(&have) {
        let zeros = PerCpuValues::try_from(vec![MappingStats::default(); cpus])
            .map_err(|e| err(map::MAPPING_STATS, e))?;
        stats
            .insert(id, zeros, 0)
            .map_err(|e| err(map::MAPPING_STATS, e))?;
    }
    sync_hash(&mut hash_map(ebpf, map::PORTS)?, &want, map::PORTS)?;
    Ok(live)
}

/// The cookie of the network namespace natd serves: socket hooks act only there.
pub fn write_netns_cookie(ebpf: &mut Ebpf, cookie: u64) -> Result<(), DataplaneError> {
    let mut netns: Array<&mut MapData, u64> = Array::try_from(
        ebpf.map_mut(map::NETNS)
            .ok_or_else(|| err("map missing", map::NETNS))?,
    )
    .map_err(|e| err(map::NETNS, e))?;
    netns.set(0, cookie, 0).map_err(|e| err(map::NETNS, e))
}

/// Entries of a hash map, for `stats` (0 when the map cannot be read).
pub fn entries<K: aya::Pod, V: aya::Pod>(ebpf: &Ebpf, name: &str) -> usize {
    ebpf.map(name)
        .and_then(|m| HashMap::<_, K, V>::try_from(m).ok())
        .map(|m| m.keys().count())
        .unwrap_or(0)
}
