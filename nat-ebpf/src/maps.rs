//! Every map the programs share with the agent. Pinned by name under natd's `--bpffs`
//! directory, so counters and (later) connection state outlive a natd restart.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use nat_common::{IfaceConfig, IfaceStats, MAX_IFACES, counter};

#[map]
pub static NATD_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

#[map]
pub static NATD_IFACE_STATS: HashMap<u32, IfaceStats> = HashMap::pinned(MAX_IFACES, 0);

#[map]
pub static NATD_IFACE_CONFIG: HashMap<u32, IfaceConfig> = HashMap::pinned(MAX_IFACES, 0);
