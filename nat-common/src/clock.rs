//! The coarse clock of flow timestamps: `bpf_ktime_get_coarse_ns() >> TICK_SHIFT`, kept in
//! a u32 (a tick is 2^30 ns, about 1.07 s; the counter wraps after 146 years). A flow's
//! timestamp is written only when the tick changes, so a busy flow's entry is written at
//! most about once a second instead of on every packet.
pub const TICK_SHIFT: u32 = 30;

/// Ticks of a CLOCK_MONOTONIC(_COARSE) time in ns.
#[inline(always)]
pub const fn ticks(ns: u64) -> u32 {
    (ns >> TICK_SHIFT) as u32
}

/// Nanoseconds in `ticks` ticks.
pub const fn ns(ticks: u32) -> u64 {
    (ticks as u64) << TICK_SHIFT
}
