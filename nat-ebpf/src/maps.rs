//! Every map the programs share with the agent. Pinned by name under natd's `--bpffs`
//! directory, so translations, connection state and counters outlive a natd restart.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use nat_common::{
    AddrKey, CtEntry, CtKey, DEFAULT_CT_ENTRIES, IfaceConfig, IfaceStats, MAX_IFACES, MAX_LOCAL_ADDRS,
    MAX_MASQ_NETS, MAX_PORT_MAPPINGS, MasqNet, NatConfig, PortKey, PortTarget, counter,
};

#[map]
pub static NATD_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

#[map]
pub static NATD_IFACE_STATS: HashMap<u32, IfaceStats> = HashMap::pinned(MAX_IFACES, 0);

#[map]
pub static NATD_IFACE_CONFIG: HashMap<u32, IfaceConfig> = HashMap::pinned(MAX_IFACES, 0);

/// Connection tracking: two entries per flow (one per direction). A preallocated hash, not
/// an LRU: when it is full only new flows are refused, established ones are never evicted.
/// The agent expires idle entries.
#[map]
pub static NATD_CT: HashMap<CtKey, CtEntry> = HashMap::pinned(DEFAULT_CT_ENTRIES, 0);

/// Published ports: host address (or 0.0.0.0) and port -> sandbox address and port.
#[map]
pub static NATD_PORTS: HashMap<PortKey, PortTarget> = HashMap::pinned(MAX_PORT_MAPPINGS, 0);

/// The host's own addresses, for ports published on every address.
#[map]
pub static NATD_LOCAL_ADDRS: HashMap<AddrKey, u32> = HashMap::pinned(MAX_LOCAL_ADDRS, 0);

/// Sandbox subnets whose outbound traffic is masqueraded.
#[map]
pub static NATD_MASQ_V4: LpmTrie<[u8; 4], MasqNet> = LpmTrie::pinned(MAX_MASQ_NETS, BPF_F_NO_PREALLOC);

#[map]
pub static NATD_CONFIG: Array<NatConfig> = Array::pinned(1, 0);
