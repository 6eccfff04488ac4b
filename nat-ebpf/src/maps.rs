//! Every map the programs share with the agent. Pinned by name under natd's `--bpffs`
//! directory, so translations, connection state and counters outlive a natd restart.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use nat_common::{
    AddrKey, CtEntry, CtKey, DEFAULT_CT_ENTRIES, IfaceConfig, IfaceStats, MAX_IFACES, MAX_LOCAL_ADDRS,
    MAX_NETWORKS, MAX_PORT_MAPPINGS, MAX_SOCK_REWRITES, MappingStats, NatConfig, NetInfo, PortKey,
    PortTarget, SockKey, SockOrig, counter,
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

/// Traffic per published mapping; the agent creates the entries, programs only add.
#[map]
pub static NATD_MAPPING_STATS: PerCpuHashMap<u32, MappingStats> = PerCpuHashMap::pinned(MAX_PORT_MAPPINGS, 0);

/// The host's own addresses, for ports published on every address.
#[map]
pub static NATD_LOCAL_ADDRS: HashMap<AddrKey, u32> = HashMap::pinned(MAX_LOCAL_ADDRS, 0);

/// natd's networks by subnet (longest prefix match on an address).
#[map]
pub static NATD_NETS_V4: LpmTrie<[u8; 4], NetInfo> = LpmTrie::pinned(MAX_NETWORKS, BPF_F_NO_PREALLOC);

/// natd's networks by id (the id sandbox veths carry in `NATD_IFACE_CONFIG`).
#[map]
pub static NATD_NETWORKS: HashMap<u32, NetInfo> = HashMap::pinned(MAX_NETWORKS, 0);

#[map]
pub static NATD_CONFIG: Array<NatConfig> = Array::pinned(1, 0);

/// The cookie of the network namespace natd serves: socket hooks act only there.
#[map]
pub static NATD_NETNS: Array<u64> = Array::pinned(1, 0);

/// Sockets whose destination the connect/sendmsg hooks rewrote, to restore the address the
/// application used in recvmsg/getpeername.
#[map]
pub static NATD_SOCK_ORIG: LruHashMap<SockKey, SockOrig> = LruHashMap::pinned(MAX_SOCK_REWRITES, 0);
