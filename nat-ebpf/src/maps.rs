//! Every map the programs share with the agent. Pinned by name under natd's `--bpffs`
//! directory, so translations, connection state and counters outlive a natd restart.
//! Names are `nat_common::names::map` (aya's macro takes the identifier as the name).
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use nat_common::{
    Addr6, BenchFrame, BenchRoute, Ct4Entry, Ct4Key, Ct6Entry, Ct6Key, DEFAULT_CT_ENTRIES, EndpointInfo,
    GENERATION_SLOTS, IfaceConfig, MAX_ENDPOINTS, MAX_IFACES, MAX_LOCAL_ADDRS, MAX_NETWORKS,
    MAX_PORT_MAPPINGS, MAX_PUNCHES, MAX_QUOTA_SOURCES, MAX_SNAT_MAPPINGS, MAX_SNAT_PEERS, MAX_SOCK_REWRITES, MAX_TRUSTED, MappingStats, NatConfig, NetInfo4,
    NetInfo6, Port4Key, Port4Target, Port6Key, Port6Target, Punch4, Punch4Key, Punch6, Punch6Key, Snat4Key, Snat4Owner, Snat4PeerKey, Snat6Key,
    Snat6Owner, Snat6PeerKey, SnatMapping, SockKey, SockOrig, SourceQuota, TrustKey,
    counter, port_marks,
};

/// natd's hash tables allocate an entry when it is inserted (BPF_F_NO_PREALLOC), so their
/// kernel memory follows what they hold: preallocated, the tables took 262 MiB at
/// defaults, most of it for flows, mappings and IPv6 tables a host did not have. Only the
/// buckets (16 bytes per entry of capacity, rounded to a power of two) are allocated up
/// front. LRU maps cannot do this (the kernel always preallocates them). A table at its
/// size refuses an insert as before (E2BIG), and an insert that finds no memory (ENOMEM,
/// the per-CPU cache drained by a burst until it refills) is refused the same way and
/// handled by the same paths (a flow stays embryonic, counted in `CT_PROMOTE_FULL`; a
/// port a new mapping tries counts as taken and the search moves on; a masquerade mapping
/// goes unrecorded, `SNAT_MAPPING_UNRECORDED`).
const BY_USE: u32 = BPF_F_NO_PREALLOC;

#[map]
pub static NATD_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

/// The layout version of these maps (`nat_common::LAYOUT_VERSION`), written by natd; the
/// programs never read it.
#[map]
pub static NATD_LAYOUT: Array<u32> = Array::pinned(1, 0);

/// The host-bound miss filter (`nat_common::port_marks`). Mmapable so natd can clear a
/// mark with a compare-and-swap that loses to the programs' writes.
#[map]
pub static NATD_PORT_MARKS: Array<u32> = Array::pinned(port_marks::ENTRIES, BPF_F_MMAPABLE);

#[map]
pub static NATD_IFACE_CONFIG: HashMap<u32, IfaceConfig> = HashMap::pinned(MAX_IFACES, BY_USE);

/// Established IPv4 flows, two entries each (one per direction). Not an LRU: when it is
/// full new flows stay embryonic, established ones are never evicted.
/// natd sizes it (`--conntrack-max`) and expires idle entries.
#[map]
pub static NATD_CT4: HashMap<Ct4Key, Ct4Entry> = HashMap::pinned(DEFAULT_CT_ENTRIES, BY_USE);

/// Flows whose handshake is not complete (TCP: the originator has not acknowledged the
/// SYN-ACK; UDP and ICMP: no exchange both ways yet). An LRU, so a flood of them evicts
/// its own kind, never an established flow.
#[map]
pub static NATD_CT4_NEW: LruHashMap<Ct4Key, Ct4Entry> = LruHashMap::pinned(DEFAULT_CT_ENTRIES / 4, 0);

/// Published ports: host address (or 0.0.0.0) and port -> sandbox address and port.
#[map]
pub static NATD_PORTS4: HashMap<Port4Key, Port4Target> = HashMap::pinned(MAX_PORT_MAPPINGS, BY_USE);

/// Masquerade mappings (endpoint-independent: one external port per sandbox address, port
/// and external address, whatever the destination), and who holds each external port.
/// Not LRUs: a mapping evicted under a live flow would change the sandbox's external port
/// behind its back; when full, new flows get a port of their own (counted).
#[map]
pub static NATD_SNAT4: HashMap<Snat4Key, SnatMapping> = HashMap::pinned(MAX_SNAT_MAPPINGS, BY_USE);

#[map]
pub static NATD_SNAT4_PORTS: HashMap<Port4Key, Snat4Owner> = HashMap::pinned(MAX_SNAT_MAPPINGS, BY_USE);

/// Remote addresses each mapping sent to, for address-dependent filtering.
#[map]
pub static NATD_SNAT4_PEERS: LruHashMap<Snat4PeerKey, u32> = LruHashMap::pinned(MAX_SNAT_PEERS, 0);

#[map]
pub static NATD_SNAT6: HashMap<Snat6Key, SnatMapping> = HashMap::pinned(MAX_SNAT_MAPPINGS, BY_USE);

#[map]
pub static NATD_SNAT6_PORTS: HashMap<Port6Key, Snat6Owner> = HashMap::pinned(MAX_SNAT_MAPPINGS, BY_USE);

#[map]
pub static NATD_SNAT6_PEERS: LruHashMap<Snat6PeerKey, u32> = LruHashMap::pinned(MAX_SNAT_PEERS, 0);

/// Ports mappings of the default filtering use, and the first of them.
#[map]
pub static NATD_SNAT4_SHARED: LruHashMap<Port4Key, Snat4Owner> = LruHashMap::pinned(MAX_SNAT_MAPPINGS, 0);

#[map]
pub static NATD_SNAT6_SHARED: LruHashMap<Port6Key, Snat6Owner> = LruHashMap::pinned(MAX_SNAT_MAPPINGS, 0);

/// Hairpinned packets their target's filtering refused, which its answer may pass.
#[map]
pub static NATD_PUNCH4: LruHashMap<Punch4Key, Punch4> = LruHashMap::pinned(MAX_PUNCHES, 0);

#[map]
pub static NATD_PUNCH6: LruHashMap<Punch6Key, Punch6> = LruHashMap::pinned(MAX_PUNCHES, 0);

/// Sandbox endpoints by address: where the fast path delivers their packets.
#[map]
pub static NATD_ENDPOINTS4: HashMap<u32, EndpointInfo> = HashMap::pinned(MAX_ENDPOINTS, BY_USE);

/// The IPv6 counterparts of the tables above (their own maps: IPv6 keys are 40 bytes,
/// IPv4 lookups stay on 16-byte keys). Sized like the IPv4 ones; natd sizes both.
#[map]
pub static NATD_CT6: HashMap<Ct6Key, Ct6Entry> = HashMap::pinned(DEFAULT_CT_ENTRIES, BY_USE);

#[map]
pub static NATD_CT6_NEW: LruHashMap<Ct6Key, Ct6Entry> = LruHashMap::pinned(DEFAULT_CT_ENTRIES / 4, 0);

#[map]
pub static NATD_PORTS6: HashMap<Port6Key, Port6Target> = HashMap::pinned(MAX_PORT_MAPPINGS, BY_USE);

#[map]
pub static NATD_ENDPOINTS6: HashMap<Addr6, EndpointInfo> = HashMap::pinned(MAX_ENDPOINTS, BY_USE);

/// The host's own IPv6 addresses.
#[map]
pub static NATD_LOCAL6: HashMap<Addr6, u32> = HashMap::pinned(MAX_LOCAL_ADDRS, BY_USE);

/// natd's networks' IPv6 subnets (longest prefix match).
#[map]
pub static NATD_NETS6: LpmTrie<[u8; 16], NetInfo6> = LpmTrie::pinned(MAX_NETWORKS, BPF_F_NO_PREALLOC);

/// The current generation of every published mapping and endpoint, by slot: a flow whose
/// generation differs belongs to something that was removed or changed.
#[map]
pub static NATD_GENERATIONS: Array<u32> = Array::pinned(GENERATION_SLOTS, 0);

/// Traffic per published mapping: CPU `c`'s counters of slot `s` at `c * slots + s`
/// (`slots` from `NATD_STATS_SLOTS`). One region per CPU, so no counter is written from two
/// CPUs and no cache line is shared between them (a per-CPU array would do the same, but
/// natd could only read it with a syscall per batch: 38 ms a scrape at 131,072 slots);
/// mmapable, so natd reads it as memory. natd sizes it (published ports x possible CPUs).
#[map]
pub static NATD_MAPPING_STATS: Array<MappingStats> = Array::pinned(MAX_PORT_MAPPINGS, BPF_F_MMAPABLE);

#[map]
pub static NATD_STATS_SLOTS: Array<u32> = Array::pinned(1, 0);

/// The host's own IPv4 addresses, for ports published on every address.
#[map]
pub static NATD_LOCAL4: HashMap<u32, u32> = HashMap::pinned(MAX_LOCAL_ADDRS, BY_USE);

/// natd's networks by subnet (longest prefix match on an address).
#[map]
pub static NATD_NETS4: LpmTrie<[u8; 4], NetInfo4> = LpmTrie::pinned(MAX_NETWORKS, BPF_F_NO_PREALLOC);

/// natd's networks by id (the id sandbox veths carry in `NATD_IFACE_CONFIG`).
#[map]
pub static NATD_NETWORKS: HashMap<u32, NetInfo4> = HashMap::pinned(MAX_NETWORKS, BY_USE);

#[map]
pub static NATD_CONFIG: Array<NatConfig> = Array::pinned(1, 0);

/// The cookie of the network namespace natd serves: socket hooks act only there.
#[map]
pub static NATD_NETNS: Array<u64> = Array::pinned(1, 0);

/// Flows per source address, for the per-source quotas (`NatConfig`): counted up here,
/// set to the live count by natd's expiry pass.
#[map]
pub static NATD_QUOTA4: LruHashMap<u32, SourceQuota> = LruHashMap::pinned(MAX_QUOTA_SOURCES, 0);

#[map]
pub static NATD_QUOTA6: LruHashMap<Addr6, SourceQuota> = LruHashMap::pinned(MAX_QUOTA_SOURCES, 0);

/// Edges a network trusts: they may reach its sandboxes' published container ports on
/// the sandboxes' own addresses (`com.docker.network.bridge.trusted_host_interfaces`).
#[map]
pub static NATD_TRUSTED: HashMap<TrustKey, u32> = HashMap::pinned(MAX_TRUSTED, BY_USE);

/// Sockets whose destination the connect/sendmsg hooks rewrote, to restore the address the
/// application used in recvmsg/getpeername.
#[map]
pub static NATD_SOCK_ORIG: LruHashMap<SockKey, SockOrig> = LruHashMap::pinned(MAX_SOCK_REWRITES, 0);

/// Benchmark only, never pinned: the frame the warm-run wrapper restores, and the program
/// it then tail-calls.
#[map]
pub static NATD_BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);

#[map]
pub static NATD_BENCH_JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Benchmark only: the redirect-only baseline's route out of the sandbox.
#[map]
pub static NATD_BENCH_ROUTE: Array<BenchRoute> = Array::with_max_entries(1, 0);

/// Working memory of the programs that start flows (a new flow's tuples and both entries):
/// the verifier allows 512 bytes of stack for a whole call chain, and these alone would
/// take most of it in every frame that handles them. Programs run to completion on one
/// CPU without nesting, so one slot per CPU is enough.
#[map]
pub static NATD_SCRATCH: PerCpuArray<crate::conntrack::Scratch<u32>> = PerCpuArray::with_max_entries(1, 0);

/// Parsed packets of the IPv6 programs (slot 0) and packets quoted in ICMP errors (slot 1),
/// per CPU: an IPv6 packet's fields would take a fifth of the stack in every frame.
#[map]
pub static NATD_PACKETS4: PerCpuArray<crate::parse::Ipv4Packet> = PerCpuArray::with_max_entries(2, 0);

#[map]
pub static NATD_PACKETS6: PerCpuArray<crate::parse::Ipv6Packet> = PerCpuArray::with_max_entries(2, 0);

#[map]
pub static NATD_SCRATCH6: PerCpuArray<crate::conntrack::Scratch<Addr6>> = PerCpuArray::with_max_entries(1, 0);
