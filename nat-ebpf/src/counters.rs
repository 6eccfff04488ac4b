//! Per-CPU counters only: no shared counter is written from two CPUs, and nothing is
//! logged per packet.
use aya_ebpf::helpers::bpf_get_smp_processor_id;
use nat_common::{counter, mapping_stats_index};

use crate::maps;

#[inline(always)]
pub fn bump(id: u32) {
    add(id, 1);
}

#[inline(always)]
pub fn add(id: u32, by: u64) {
    if let Some(slot) = maps::NATD_COUNTERS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += by };
    }
}

/// Traffic of one published mapping, by its slot, in this CPU's region.
#[inline(always)]
pub fn mapping(slot: u32, len: u32) {
    let slots = maps::NATD_STATS_SLOTS.get(0).copied().unwrap_or(0);
    if slot >= slots {
        return;
    }
    // SAFETY: a helper without arguments; below the possible CPUs, which natd sized the
    // array for (`get_ptr_mut` checks the bound anyway).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if let Some(stats) = maps::NATD_MAPPING_STATS.get_ptr_mut(mapping_stats_index(cpu, slots, slot)) {
        // SAFETY: this CPU's region, only this CPU writes it while the program runs.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += u64::from(len);
        }
    }
}

/// Every packet a TC program sees, by layer 3 and 4 protocol.
#[inline(always)]
pub fn packet(len: u32, l3: u8, l4: u8) {
    bump(counter::PACKETS_SEEN);
    add(counter::BYTES_SEEN, u64::from(len));
    bump(match l3 {
        4 => counter::IPV4,
        6 => counter::IPV6,
        _ => counter::OTHER_L3,
    });
    match l4 {
        6 => bump(counter::TCP),
        17 => bump(counter::UDP),
        1 | 58 => bump(counter::ICMP),
        _ => {}
    }
}
