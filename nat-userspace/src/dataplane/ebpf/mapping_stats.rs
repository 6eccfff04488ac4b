//! Traffic per published mapping (`NATD_MAPPING_STATS`): one region per CPU id, each of
//! `slots` counters (`NATD_STATS_SLOTS`, natd's `--max-published-ports`), placed by
//! `nat_common::mapping_stats_index`. natd reads them through a shared mapping of the
//! array: a scrape sums the slots it names from memory, where a per-CPU array took a
//! syscall per batch and 38 ms for its 131,072 slots. Also the carry of the counters over
//! a replacement of the array (a size change, or the per-CPU array of layouts 1 to 3).
use std::{
    num::NonZeroUsize,
    os::fd::AsFd as _,
    path::Path,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{
    Ebpf,
    maps::{Map, MapData, MapInfo, MapType},
};
use nat_common::{MappingStats, mapping_stats_index, names::map};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use super::{
    err,
    tables::{self, MapSet},
};
use crate::{dataplane::DataplaneError, sys::bpf_map};

/// The kernel's size of one counter pair (values rounded up to 8 bytes: 16 already).
const VALUE: usize = size_of::<MappingStats>();

/// The ids of the possible CPUs, in order (`/sys/devices/system/cpu/possible`, e.g. "0-3"
/// or "0,2-5"): a per-CPU map's values come in this order.
fn possible_cpu_ids() -> Result<Vec<u32>, DataplaneError> {
    let path = "/sys/devices/system/cpu/possible";
    let text = std::fs::read_to_string(path).map_err(|e| err(path, e))?;
    let mut ids = Vec::new();
    for range in text.trim().split(',') {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let (Ok(first), Ok(last)) = (first.parse::<u32>(), last.parse::<u32>()) else {
            return Err(err(path, format!("cannot read {text:?}")));
        };
        ids.extend(first..=last);
    }
    Ok(ids)
}

/// Regions of counters: one per CPU id the programs may see from
/// `bpf_get_smp_processor_id` (the highest possible id and one: the kernel's
/// `nr_cpu_ids`, the number of possible CPUs when they are numbered without gaps). Fixed
/// for the kernel's life: read once.
pub fn cpu_regions() -> Result<u32, DataplaneError> {
    static REGIONS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    if let Some(regions) = REGIONS.get() {
        return Ok(*regions);
    }
    let regions = possible_cpu_ids()?.last().map_or(1, |last| last + 1);
    Ok(*REGIONS.get_or_init(|| regions))
}

/// Entries of `NATD_MAPPING_STATS` for `slots` published ports.
pub fn entries(slots: u32, regions: u32) -> u32 {
    slots.saturating_mul(regions)
}

/// The counters, mapped read-only into natd's memory.
pub struct StatsRegions {
    base: NonNull<u8>,
    len: usize,
    slots: u32,
    regions: u32,
}

// SAFETY: memory shared with the kernel, only read, through atomics.
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
        let regions = cpu_regions()?;
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
            slots: capacity / regions.max(1),
            regions,
        }))
    }

    fn counter(&self, index: u32, field: usize) -> u64 {
        // SAFETY: inside the mapping (the caller keeps `index` below its entries), 8-byte
        // aligned (page-aligned base, 16-byte values); the programs write it concurrently,
        // so it is read atomically.
        let word = unsafe { &*self.base.as_ptr().add(index as usize * VALUE + field * 8).cast::<AtomicU64>() };
        word.load(Ordering::Relaxed)
    }

    /// The counters of `slot`, summed over CPUs (zero beyond the regions).
    pub fn sum(&self, slot: u32) -> (u64, u64) {
        if slot >= self.slots {
            return (0, 0);
        }
        (0..self.regions).fold((0, 0), |(packets, bytes), cpu| {
            let index = mapping_stats_index(cpu, self.slots, slot);
            (packets + self.counter(index, 0), bytes + self.counter(index, 1))
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

/// Zeroes the counters of `slots` on every CPU (slots given to new mappings); `per_cpu`:
/// the slots of each region (the writer's `--max-published-ports`).
pub fn zero(ebpf: &Ebpf, slots: &[u32], per_cpu: u32) -> Result<(), DataplaneError> {
    if slots.is_empty() {
        return Ok(());
    }
    match ebpf.map(map::MAPPING_STATS) {
        Some(Map::Array(_)) => {
            let zeroed: Vec<(u32, MappingStats)> = (0..cpu_regions()?)
                .flat_map(|cpu| {
                    slots
                        .iter()
                        .filter(|s| **s < per_cpu)
                        .map(move |s| (mapping_stats_index(cpu, per_cpu, *s), MappingStats::default()))
                })
                .collect();
            tables::write_all(ebpf, map::MAPPING_STATS, &zeroed)
        }
        // The per-CPU array of an object before layout 4.
        _ => tables::write_per_cpu(ebpf, map::MAPPING_STATS, slots, MappingStats::default()),
    }
}

/// The counters of a replaced `NATD_MAPPING_STATS` that counted anything: (CPU id, slot,
/// counters).
#[derive(Debug, Default)]
pub struct StatsCarry {
    counted: Vec<(u32, u32, MappingStats)>,
}

impl StatsCarry {
    /// Reads the pinned array at `path`: layout 4's regions or the per-CPU array of
    /// layouts 1 to 3 (None: it cannot be read).
    pub fn read_pinned(path: &Path) -> Option<Self> {
        let info = MapInfo::from_pin(path).ok()?;
        let data = MapData::from_pin(path).ok()?;
        let fd = data.fd().as_fd();
        let counted = |s: &MappingStats| s.packets > 0 || s.bytes > 0;
        let mut carry = Vec::new();
        match info.map_type().ok()? {
            MapType::PerCpuArray => {
                let ids = possible_cpu_ids().ok()?;
                let (_, values, count) = bpf_map::dump(fd, 4, VALUE * ids.len()).ok()?;
                for slot in 0..count {
                    for (k, cpu) in ids.iter().enumerate() {
                        let stats = read(&values, slot * ids.len() + k);
                        if counted(&stats) {
                            carry.push((*cpu, slot as u32, stats));
                        }
                    }
                }
            }
            MapType::Array => {
                let (_, values, count) = bpf_map::dump(fd, 4, VALUE).ok()?;
                let slots = count / cpu_regions().ok()?.max(1) as usize;
                for index in 0..count {
                    let stats = read(&values, index);
                    if counted(&stats) && slots > 0 {
                        carry.push(((index / slots) as u32, (index % slots) as u32, stats));
                    }
                }
            }
            _ => return None,
        }
        Some(Self { counted: carry })
    }

    /// Slots with traffic (what a report counts).
    pub fn slots_counted(&self) -> usize {
        self.counted.iter().map(|(_, slot, _)| *slot).collect::<std::collections::HashSet<_>>().len()
    }

    /// Writes the counters into the loaded object's array, each CPU into its region. A
    /// start never makes the regions smaller than the slots mappings hold
    /// (`loader::check_fit`), so what falls beyond them counted for no mapping natd has.
    pub fn restore(&self, ebpf: &Ebpf) -> Result<(), DataplaneError> {
        let Some(Map::Array(data)) = ebpf.map(map::MAPPING_STATS) else {
            return Ok(());
        };
        let capacity = data.info().map_err(|e| err(map::MAPPING_STATS, e))?.max_entries();
        let regions = cpu_regions()?;
        let per_cpu = capacity / regions.max(1);
        let entries: Vec<(u32, MappingStats)> = self
            .counted
            .iter()
            .filter(|(cpu, slot, _)| *cpu < regions && *slot < per_cpu)
            .map(|(cpu, slot, stats)| (mapping_stats_index(*cpu, per_cpu, *slot), *stats))
            .collect();
        tables::write_all(ebpf, map::MAPPING_STATS, &entries)
    }
}

fn read(values: &[u8], index: usize) -> MappingStats {
    // SAFETY: a Pod value the kernel copied, `VALUE` bytes each.
    unsafe { std::ptr::read_unaligned(values[index * VALUE..].as_ptr().cast::<MappingStats>()) }
}
