//! The host-bound miss filter's marks (`nat_common::port_marks`; kernel side `nat-ebpf`'s
//! `portmarks`), seen through a shared mapping of the array. The programs mark the ports
//! of the flows and mappings they make; natd marks published ports before writing them,
//! marks every port the pinned tables use when it takes them over (from programs that
//! may not have marked: layout 1, or a switch in progress) and then turns the filter on,
//! and each tick clears the marks of ports nothing uses any more. A clear is a
//! compare-and-swap on a mark older than the tick's walk of the tables began: a mark the
//! programs write meanwhile (a flow made after the walk read its table) is never lost.
use std::{
    collections::HashSet,
    num::NonZeroUsize,
    os::fd::AsFd,
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{Pod, maps::Map};
use nat_common::{CtEntry, CtKey, PortKey, PortTarget, SnatOwner, names::map, port_marks};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use super::{
    conntrack::{Family, PortsInUse},
    err,
    tables::{MapSet, read_all},
};
use crate::dataplane::DataplaneError;

/// The kernel rounds an array's values up to 8 bytes: mark `i` is at `i * STRIDE`.
const STRIDE: usize = 8;
const LEN: usize = port_marks::ENTRIES as usize * STRIDE;

/// The marks, mapped into natd's memory.
pub struct PortMarks {
    base: NonNull<u8>,
}

// SAFETY: the mapping is memory shared with the kernel, touched only through atomics.
unsafe impl Send for PortMarks {}
// SAFETY: as above.
unsafe impl Sync for PortMarks {}

impl PortMarks {
    /// The loaded object's marks; `None` for an object from before them (layout 1, which
    /// a test build can load as the previous datapath).
    pub fn open(ebpf: &(impl MapSet + ?Sized)) -> Result<Option<Self>, DataplaneError> {
        let Some(found) = ebpf.map(map::PORT_MARKS) else {
            return Ok(None);
        };
        let Map::Array(data) = found else {
            return Err(err(map::PORT_MARKS, "not an array"));
        };
        let len = NonZeroUsize::new(LEN).expect("non-empty");
        // SAFETY: a shared mapping of the whole value area of an mmapable array (the
        // kernel refuses the call for any other map), unmapped on drop, accessed through
        // atomics only.
        let base = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                data.fd().as_fd(),
                0,
            )
        }
        .map_err(|e| err(&format!("mmap {}", map::PORT_MARKS), e))?;
        Ok(Some(Self { base: base.cast() }))
    }

    fn slot(&self, index: u32) -> &AtomicU32 {
        assert!(index < port_marks::ENTRIES);
        // SAFETY: inside the mapping (index checked), 8-byte aligned (page-aligned base).
        unsafe { &*self.base.as_ptr().add(index as usize * STRIDE).cast::<AtomicU32>() }
    }

    /// Sets the marks `indexes` (`port_marks::index`) to tick `now`.
    pub fn mark_all(&self, indexes: impl IntoIterator<Item = u32>, now: u32) {
        for index in indexes {
            self.slot(index).store(now.max(1), Ordering::Relaxed);
        }
    }

    /// Clears the marks made before tick `before` of ports not in `used`; returns how many.
    fn sweep(&self, used: &HashSet<u32>, before: u32) -> usize {
        (0..port_marks::ENTRIES)
            .filter(|index| {
                let slot = self.slot(*index);
                let seen = slot.load(Ordering::Relaxed);
                seen != 0
                    && seen < before
                    && !used.contains(index)
                    && slot.compare_exchange(seen, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            })
            .count()
    }

    /// How many ports are marked.
    pub fn marked(&self) -> usize {
        (0..port_marks::ENTRIES)
            .filter(|index| self.slot(*index).load(Ordering::Relaxed) != 0)
            .count()
    }
}

impl Drop for PortMarks {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, of that length, no longer referenced.
        let _ = unsafe { munmap(self.base.cast(), LEN) };
    }
}

/// Every port the pinned tables use: flows, mappings' holdings and shared ports,
/// published ports (what a takeover marks); `None` unless every table was read to its end.
pub fn used(ebpf: &(impl MapSet + ?Sized)) -> Option<HashSet<u32>> {
    let mut used = HashSet::new();
    family_used::<u32>(ebpf, &mut used)?;
    family_used::<nat_common::Addr6>(ebpf, &mut used)?;
    Some(used)
}

fn family_used<A: Family>(ebpf: &(impl MapSet + ?Sized), used: &mut HashSet<u32>) -> Option<()>
where
    CtKey<A>: Pod,
    CtEntry<A>: Pod,
    PortKey<A>: Pod,
    SnatOwner<A>: Pod,
    PortTarget<A>: Pod,
{
    let (flows, complete) = super::conntrack::entries_read::<A>(ebpf);
    complete.then_some(())?;
    used.extend(flows.iter().filter_map(|(key, entry, _)| port_marks::of_flow(key, entry)));
    let [_, holdings, _, shared] = A::SNAT;
    for name in [holdings, shared] {
        used.extend(keys::<PortKey<A>, SnatOwner<A>>(ebpf, name)?.iter().filter_map(port_marks::of_port));
    }
    used.extend(keys::<PortKey<A>, PortTarget<A>>(ebpf, A::PUBLISHED)?.iter().filter_map(port_marks::of_port));
    Some(())
}

/// The tick's sweep, after the expiry pass (which began at tick `before` or later and
/// added the ports of the flows and mappings it saw to `used`): clears the marks made
/// before `before` of ports neither those nor a published port use. Returns how many; none
/// when a table was not read to its end (a port missing from `used` would be a live one).
pub fn sweep(ebpf: &(impl MapSet + ?Sized), marks: &PortMarks, mut used: PortsInUse, before: u32) -> usize {
    let published4 = keys::<PortKey<u32>, PortTarget<u32>>(ebpf, map::PORTS4);
    let published6 = keys::<PortKey<nat_common::Addr6>, PortTarget<nat_common::Addr6>>(ebpf, map::PORTS6);
    let (Some(published4), Some(published6), true) = (published4, published6, used.complete) else {
        return 0;
    };
    used.ports.extend(published4.iter().filter_map(port_marks::of_port));
    used.ports.extend(published6.iter().filter_map(port_marks::of_port));
    marks.sweep(&used.ports, before)
}

/// The keys of a hash map, `None` unless every one was read.
fn keys<K: Pod, V: Pod>(ebpf: &(impl MapSet + ?Sized), name: &str) -> Option<Vec<K>> {
    let all = read_all::<K, V>(ebpf, name).ok()?;
    Some(all.into_iter().map(|(k, _)| k).collect())
}
