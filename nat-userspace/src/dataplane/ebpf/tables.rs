//! natd's maps by name, from the loaded object or from a second set of descriptors of the
//! same maps (`Tables`): housekeeping and reads work on their own set outside the
//! daemon's lock while requests write through the object's. Whole maps are read in
//! batches (`sys::bpf_map`).
use std::{collections::HashMap as StdHashMap, os::fd::AsFd as _};

use aya::{
    Ebpf, Pod,
    maps::{Map, MapData},
};

use super::err;
use crate::{dataplane::DataplaneError, sys::bpf_map};

/// Maps by name: the loaded object, or `Tables`.
pub trait MapSet {
    fn map(&self, name: &str) -> Option<&Map>;
    fn map_mut(&mut self, name: &str) -> Option<&mut Map>;
}

impl MapSet for Ebpf {
    fn map(&self, name: &str) -> Option<&Map> {
        Ebpf::map(self, name)
    }

    fn map_mut(&mut self, name: &str) -> Option<&mut Map> {
        Ebpf::map_mut(self, name)
    }
}

/// Descriptors of their own for every map of a loaded object (the same kernel maps).
pub struct Tables {
    maps: StdHashMap<String, Map>,
    /// Max entries of each map, read once: fixed for a map's life.
    capacities: StdHashMap<String, u32>,
}

impl MapSet for Tables {
    fn map(&self, name: &str) -> Option<&Map> {
        self.maps.get(name)
    }

    fn map_mut(&mut self, name: &str) -> Option<&mut Map> {
        self.maps.get_mut(name)
    }
}

impl Tables {
    pub fn share(ebpf: &Ebpf) -> Result<Self, DataplaneError> {
        let (mut maps, mut capacities) = (StdHashMap::new(), StdHashMap::new());
        for (name, map) in ebpf.maps() {
            let Some(data) = data(map) else { continue };
            if let Ok(info) = data.info() {
                capacities.insert(name.to_string(), info.max_entries());
            }
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| err(&format!("duplicate the descriptor of {name}"), e))?;
            let shared = MapData::from_fd(fd)
                .and_then(Map::from_map_data)
                .map_err(|e| err(name, e))?;
            maps.insert(name.to_string(), shared);
        }
        Ok(Self { maps, capacities })
    }
}

impl Tables {
    /// The capacity of the map `name` as the kernel made it (0: not one of these).
    pub fn capacity(&self, name: &str) -> u32 {
        self.capacities.get(name).copied().unwrap_or(0)
    }

    /// The kernel memory charged for each map now, bytes, by name (a map whose fdinfo
    /// cannot be read is left out).
    pub fn memory(&self) -> std::collections::BTreeMap<String, u64> {
        self.maps
            .iter()
            .filter_map(|(name, map)| Some((name.clone(), bpf_map::memlock(data(map)?.fd().as_fd()).ok()?)))
            .collect()
    }
}

/// The map behind any of the kinds natd's object has.
pub fn data(map: &Map) -> Option<&MapData> {
    match map {
        Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::LpmTrie(d) => Some(d),
        _ => None,
    }
}

/// The descriptor of the map `name`.
fn fd_of<'a>(maps: &'a (impl MapSet + ?Sized), name: &str) -> Result<std::os::fd::BorrowedFd<'a>, DataplaneError> {
    let map = maps.map(name).and_then(data).ok_or_else(|| err("map missing", name))?;
    Ok(map.fd().as_fd())
}

/// Every (key, value) of the hash map `name`, read in batches.
pub fn read_all<K: Pod, V: Pod>(maps: &(impl MapSet + ?Sized), name: &str) -> Result<Vec<(K, V)>, DataplaneError> {
    let (ks, vs) = (size_of::<K>(), size_of::<V>());
    let (keys, values, count) = bpf_map::dump(fd_of(maps, name)?, ks, vs).map_err(|e| err(&format!("read {name}"), e))?;
    Ok((0..count)
        .map(|i| {
            // SAFETY: Pod types, read unaligned from the bytes the kernel copied, each of
            // exactly the map's key and value size.
            unsafe {
                (
                    std::ptr::read_unaligned(keys[i * ks..].as_ptr().cast::<K>()),
                    std::ptr::read_unaligned(values[i * vs..].as_ptr().cast::<V>()),
                )
            }
        })
        .collect())
}

/// How many entries the hash map `name` holds (None: it cannot be read).
pub fn count<K: Pod, V: Pod>(maps: &(impl MapSet + ?Sized), name: &str) -> Option<usize> {
    read_all::<K, V>(maps, name).ok().map(|all| all.len())
}

/// Every slot of the per-CPU array `name`, summed over CPUs with `add`, read in batches.
pub fn per_cpu_sums<V: Pod + Default>(
    maps: &(impl MapSet + ?Sized),
    name: &str,
    add: impl Fn(&mut V, &V),
) -> Result<Vec<V>, DataplaneError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| err("possible CPUs", e))?;
    let stride = size_of::<V>().next_multiple_of(8);
    let (_, values, count) =
        bpf_map::dump(fd_of(maps, name)?, 4, stride * cpus).map_err(|e| err(&format!("read {name}"), e))?;
    Ok((0..count)
        .map(|i| {
            let mut sum = V::default();
            for cpu in 0..cpus {
                let at = (i * cpus + cpu) * stride;
                // SAFETY: a Pod value the kernel copied, `stride` bytes apart per CPU.
                let value = unsafe { std::ptr::read_unaligned(values[at..].as_ptr().cast::<V>()) };
                add(&mut sum, &value);
            }
            sum
        })
        .collect())
}

/// Writes `entries` into the map `name` in one batch (BPF_ANY).
pub fn write_all<K: Pod, V: Pod>(maps: &(impl MapSet + ?Sized), name: &str, entries: &[(K, V)]) -> Result<(), DataplaneError> {
    if entries.is_empty() {
        return Ok(());
    }
    let (keys, values) = raw_entries(entries);
    bpf_map::update(fd_of(maps, name)?, &keys, &values, entries.len()).map_err(|e| err(&format!("write {name}"), e))
}

/// Sets slots of the per-CPU array `name`, each to `value` on every CPU, in one batch.
pub fn write_per_cpu<V: Pod>(maps: &(impl MapSet + ?Sized), name: &str, slots: &[u32], value: V) -> Result<(), DataplaneError> {
    if slots.is_empty() {
        return Ok(());
    }
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| err("possible CPUs", e))?;
    let stride = size_of::<V>().next_multiple_of(8);
    let mut values = vec![0u8; slots.len() * cpus * stride];
    for i in 0..slots.len() * cpus {
        // SAFETY: a Pod value written unaligned into its stride of the buffer.
        unsafe { std::ptr::write_unaligned(values[i * stride..].as_mut_ptr().cast::<V>(), value) };
    }
    let keys: Vec<u8> = slots.iter().flat_map(|s| s.to_ne_bytes()).collect();
    bpf_map::update(fd_of(maps, name)?, &keys, &values, slots.len()).map_err(|e| err(&format!("write {name}"), e))
}

fn raw_entries<K: Pod, V: Pod>(entries: &[(K, V)]) -> (Vec<u8>, Vec<u8>) {
    let (ks, vs) = (size_of::<K>(), size_of::<V>());
    let (mut keys, mut values) = (vec![0u8; entries.len() * ks], vec![0u8; entries.len() * vs]);
    for (i, (k, v)) in entries.iter().enumerate() {
        // SAFETY: Pod values written unaligned into buffers of exactly their size each.
        unsafe {
            std::ptr::write_unaligned(keys[i * ks..].as_mut_ptr().cast::<K>(), *k);
            std::ptr::write_unaligned(values[i * vs..].as_mut_ptr().cast::<V>(), *v);
        }
    }
    (keys, values)
}
