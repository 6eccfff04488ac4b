//! Per-CPU counters: no locks and no per-packet logging on the fast path.
use aya_ebpf::programs::TcContext;
use nat_common::{IfaceStats, counter};

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

/// Traffic of one published mapping (the agent creates the entry with the mapping).
#[inline(always)]
pub fn mapping(mapping_id: u32, len: u32) {
    if mapping_id == 0 {
        return;
    }
    if let Some(stats) = maps::NATD_MAPPING_STATS.get_ptr_mut(&mapping_id) {
        // SAFETY: per-CPU value of this CPU.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += u64::from(len);
        }
    }
}

#[inline(always)]
pub fn count_iface(ctx: &TcContext) {
    let len = u64::from(ctx.len());
    bump(counter::PACKETS_SEEN);
    add(counter::BYTES_SEEN, len);
    // SAFETY: the ifindex field is always readable in a TC context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if let Some(stats) = maps::NATD_IFACE_STATS.get_ptr_mut(&ifindex) {
        // SAFETY: pointer into the map value; a lost update between CPUs only skews a counter.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += len;
        }
    } else if maps::NATD_IFACE_CONFIG.get_ptr(&ifindex).is_some() {
        let first = IfaceStats {
            packets: 1,
            bytes: len,
        };
        let _ = maps::NATD_IFACE_STATS.insert(&ifindex, &first, 0);
    }
}

#[inline(always)]
pub fn count_l3(l3: u8, l4: u8) {
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
