//! Traffic per published mapping (`NATD_MAPPING_STATS`): one region per possible CPU,
//! each of `slots` counters (`NATD_STATS_SLOTS`, natd's `--max-published-ports`), CPU
//! `c`'s counters of slot `s` at `c * slots + s`. natd reads them through a shared
//! mapping of the array: a scrape sums the slots it names from memory, where a per-CPU
//! array took a syscall per batch and 38 ms for its 131,072 slots. Also the carry of the
//! counters over a replacement of the array (a size change, or layout 3's per-CPU array).
use std::{num::NonZeroUsize, os::fd::AsFd as _, path::Path, ptr::NonNull};

use aya::{
    Ebpf,
    maps::{Map, MapData, MapInfo, MapType},
};
use nat_common::{MappingStats, names::map};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use super::{
    err,
    tables::{self, MapSet},
};
use crate::{dataplane::DataplaneError, sys::bpf_map};

/// The kernel's size of one counter pair (values rounded up to 8 bytes: 16 already).
const VALUE: usize = size_of::<MappingStats>();

/// The possible CPUs: every CPU the programs may run on has a region.
pub fn possible_cpus() -> Result<u32, DataplaneError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| err("possible CPUs", e))?;
    Ok(cpus as u32)
}

/// Entries of `NATD_MAPPING_STATS` for `slots` published ports.
pub fn entries(slots: u32, cpus: u32) -> u32 {
    slots.saturating_mul(cpus)
}

/// The counters, mapped read-only into natd's memory.
pub struct StatsRegions {
    base: NonNull<u8>,
    len: usize,
    slots: u32,
    cpus: u32,
}

// SAFETY: memory shared with the kernel, only read (volatile: the programs write it).
unsafe impl Send for StatsRegions {}
// SAFETY: as above.
unsafe impl Sync for StatsRegions {}

impl StatsRegions {
    /// The loaded object's counters (`None`: the per-CPU array of an object before layout
    /// 4, which a test build can play as the previous datapath).
    pub fn open(maps: &(impl MapSet + ?Sized)) -> Result<Option<Self>, DataplaneError> {
        let Some(Map::Array(data)) = maps.map(map::MAPPING_STATS) else {
            return Ok(None);
        };
        let capacity = data.info().map_err(|e| err(map::MAPPING_STATS, e))?.max_entries();
        let cpus = possible_cpus()?;
        let len = capacity as usize * VALUE;
        let Some(length) = NonZeroUsize::new(len) else {
            return Ok(None);
        };
        // SAFETY: a shared read-only mapping of the value area of an mmapable array (the
        // kernel refuses the call for any other map), unmapped on drop.
        let base = unsafe { mmap(None, length, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, data.fd().as_fd(), 0) }
            .map_err(|e| err(&format!("mmap {}", map::MAPPING_STATS), e))?;
        Ok(Some(Self {
            base: base.cast(),
            len,
            slots: capacity / cpus.max(1),
            cpus,
        }))
    }

    /// The counters of `slot`, summed over CPUs (zero beyond the regions).
    pub fn sum(&self, slot: u32) -> (u64, u64) {
        if slot >= self.slots {
            return (0, 0);
        }
        (0..self.cpus).fold((0, 0), |(packets, bytes), cpu| {
            let index = (cpu * self.slots + slot) as usize;
            // SAFETY: inside the mapping (slot and CPU below the regions' bounds), 16-byte
            // aligned (page-aligned base); a volatile read of memory the programs write.
            let value = unsafe { std::ptr::read_volatile(self.base.as_ptr().add(index * VALUE).cast::<MappingStats>()) };
            (packets + value.packets, bytes + value.bytes)
        })
    }
}

impl Drop for StatsRegions {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, of that length, no longer referenced.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}

/// Tells the programs the size of each CPU's region (they count nothing until then).
/// Nothing to do for an object before layout 4.
pub fn write_slots(ebpf: &mut Ebpf, slots: u32) -> Result<(), DataplaneError> {
    if ebpf.map(map::STATS_SLOTS).is_none() {
        return Ok(());
    }
    tables::write_all(&*ebpf, map::STATS_SLOTS, &[(0u32, slots)])
}

/// Zeroes the counters of `slots` on every CPU (slots given to new mappings).
pub fn zero(ebpf: &Ebpf, slots: &[u32]) -> Result<(), DataplaneError> {
    match ebpf.map(map::MAPPING_STATS) {
        Some(Map::Array(data)) => {
            let capacity = data.info().map_err(|e| err(map::MAPPING_STATS, e))?.max_entries();
            let cpus = possible_cpus()?;
            let per_cpu = capacity / cpus.max(1);
            let zeroed: Vec<(u32, MappingStats)> = (0..cpus)
                .flat_map(|cpu| slots.iter().filter(|s| **s < per_cpu).map(move |s| (cpu * per_cpu + s, MappingStats::default())))
                .collect();
            tables::write_all(ebpf, map::MAPPING_STATS, &zeroed)
        }
        // The per-CPU array of an object before layout 4.
        _ => tables::write_per_cpu(ebpf, map::MAPPING_STATS, slots, MappingStats::default()),
    }
}

/// Each CPU's counters of each slot of a replaced `NATD_MAPPING_STATS`, by CPU then slot.
#[derive(Debug, Default)]
pub struct StatsCarry {
    per_cpu: Vec<Vec<MappingStats>>,
}

impl StatsCarry {
    /// Reads the pinned array at `path`: layout 4's regions or the per-CPU array of
    /// layouts 1 to 3 (None: it cannot be read).
    pub fn read_pinned(path: &Path) -> Option<Self> {
        let info = MapInfo::from_pin(path).ok()?;
        let data = MapData::from_pin(path).ok()?;
        let cpus = possible_cpus().ok()? as usize;
        let fd = data.fd().as_fd();
        let mut per_cpu = vec![Vec::new(); cpus];
        match info.map_type().ok()? {
            MapType::PerCpuArray => {
                let (_, values, count) = bpf_map::dump(fd, 4, VALUE * cpus).ok()?;
                for (cpu, slots) in per_cpu.iter_mut().enumerate() {
                    slots.extend((0..count).map(|slot| read(&values, slot * cpus + cpu)));
                }
            }
            MapType::Array => {
                let (_, values, count) = bpf_map::dump(fd, 4, VALUE).ok()?;
                let slots = count / cpus;
                for (cpu, region) in per_cpu.iter_mut().enumerate() {
                    region.extend((0..slots).map(|slot| read(&values, cpu * slots + slot)));
                }
            }
            _ => return None,
        }
        Some(Self { per_cpu })
    }

    /// Slots with traffic (what a report counts).
    pub fn slots_counted(&self) -> usize {
        let longest = self.per_cpu.iter().map(Vec::len).max().unwrap_or(0);
        (0..longest)
            .filter(|slot| self.per_cpu.iter().any(|region| region.get(*slot).is_some_and(|s| s.packets > 0)))
            .count()
    }

    /// Writes the counters into the loaded object's array, each CPU into its region (slots
    /// beyond the new regions are gone: no mapping can hold them, `--max-published-ports`
    /// is checked against the mappings natd has before a start).
    pub fn restore(&self, ebpf: &Ebpf) -> Result<(), DataplaneError> {
        let Some(Map::Array(data)) = ebpf.map(map::MAPPING_STATS) else {
            return Ok(());
        };
        let capacity = data.info().map_err(|e| err(map::MAPPING_STATS, e))?.max_entries();
        let cpus = possible_cpus()?;
        let per_cpu = capacity / cpus.max(1);
        let entries: Vec<(u32, MappingStats)> = self
            .per_cpu
            .iter()
            .enumerate()
            .take(cpus as usize)
            .flat_map(|(cpu, region)| {
                region
                    .iter()
                    .enumerate()
                    .take(per_cpu as usize)
                    .filter(|(_, s)| s.packets > 0 || s.bytes > 0)
                    .map(move |(slot, s)| (cpu as u32 * per_cpu + slot as u32, *s))
            })
            .collect();
        tables::write_all(ebpf, map::MAPPING_STATS, &entries)
    }
}

fn read(values: &[u8], index: usize) -> MappingStats {
    // SAFETY: a Pod value the kernel copied, `VALUE` bytes each.
    unsafe { std::ptr::read_unaligned(values[index * VALUE..].as_ptr().cast::<MappingStats>()) }
}
