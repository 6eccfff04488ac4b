//! The host-bound miss filter's marks (`nat_common::port_marks`): the programs mark the
//! destination port of every flow entry they make for packets arriving at an edge, and of
//! every mapping's port, right after making it (before the packet that made it leaves, so
//! before any answer can arrive); natd marks published ports before writing them and
//! clears marks nothing uses any more. Depends on the maps only.
use nat_common::port_marks;

use crate::maps::NATD_PORT_MARKS;

/// Marks `port` (network byte order) of `proto` as possibly natd's, at clock tick `now`
/// (natd clears only marks older than its last walk of the tables).
#[inline(always)]
pub fn mark(proto: u8, port: u16, now: u32) {
    if let Some(index) = port_marks::index(proto, port) {
        set(index, now);
    }
}

/// Sets mark `index` (`port_marks::index`) to tick `now`.
#[inline(always)]
pub fn set(index: u32, now: u32) {
    // 0 is "unmarked": the first tick after boot marks as 1.
    let now = if now == 0 { 1 } else { now };
    if let Some(slot) = NATD_PORT_MARKS.get_ptr_mut(index) {
        // SAFETY: a valid array value pointer; an aligned u32 store is atomic, as natd's
        // compare-and-swap on the mmapped array expects. Written only when the tick
        // changed: a busy port's cache line stays shared.
        unsafe {
            if core::ptr::read_volatile(slot) != now {
                core::ptr::write_volatile(slot, now);
            }
        }
    }
}

/// Whether no flow, mapping or published port can use `port` of `proto` (a protocol
/// without ports is never unmarked).
#[inline(always)]
pub fn unmarked(proto: u8, port: u16) -> bool {
    let Some(index) = port_marks::index(proto, port) else {
        return false;
    };
    // SAFETY: a valid array value pointer, one aligned u32 read.
    NATD_PORT_MARKS
        .get_ptr(index)
        .is_some_and(|slot| unsafe { core::ptr::read_volatile(slot) } == 0)
}
