//! Names of natd's maps and programs. The kernel side declares them as identifiers
//! (`#[map] static NATD_CT4`, `#[classifier] fn natd_edge_in`), which aya's macros
//! cannot take from a constant; everything else uses these constants, and a unit test of
//! the agent checks that the built object carries exactly these names.

/// Maps, pinned by these names under `<bpffs>/maps`.
pub mod map {
    pub const COUNTERS: &str = "NATD_COUNTERS";
    pub const IFACE_CONFIG: &str = "NATD_IFACE_CONFIG";
    /// Established IPv4 flows (two entries each), preallocated: a full table refuses new
    /// flows and never evicts an established one.
    pub const CT4: &str = "NATD_CT4";
    /// IPv4 flows that have not completed their handshake (an LRU: a flood of them evicts
    /// its own kind, never an established flow).
    pub const CT4_NEW: &str = "NATD_CT4_NEW";
    pub const PORTS4: &str = "NATD_PORTS4";
    pub const ENDPOINTS4: &str = "NATD_ENDPOINTS4";
    /// The IPv6 counterparts: their own maps, keys sized for IPv6, so IPv4 lookups stay
    /// compact.
    pub const CT6: &str = "NATD_CT6";
    pub const CT6_NEW: &str = "NATD_CT6_NEW";
    pub const PORTS6: &str = "NATD_PORTS6";
    pub const ENDPOINTS6: &str = "NATD_ENDPOINTS6";
    pub const LOCAL6: &str = "NATD_LOCAL6";
    pub const NETS6: &str = "NATD_NETS6";
    pub const GENERATIONS: &str = "NATD_GENERATIONS";
    /// Traffic per published mapping (`MappingStats`), an mmapable array of one region
    /// per possible CPU, each of `STATS_SLOTS` slots: natd reads it without a syscall.
    pub const MAPPING_STATS: &str = "NATD_MAPPING_STATS";
    /// The slots of each CPU's region of `MAPPING_STATS` (natd's `--max-published-ports`),
    /// one `u32`: 0 until natd writes it, and nothing is counted meanwhile.
    pub const STATS_SLOTS: &str = "NATD_STATS_SLOTS";
    pub const LOCAL4: &str = "NATD_LOCAL4";
    pub const NETS4: &str = "NATD_NETS4";
    pub const NETWORKS: &str = "NATD_NETWORKS";
    pub const CONFIG: &str = "NATD_CONFIG";
    pub const NETNS: &str = "NATD_NETNS";
    /// Per-source flow counts for the quotas (`nat_common::SourceQuota`).
    pub const QUOTA4: &str = "NATD_QUOTA4";
    pub const QUOTA6: &str = "NATD_QUOTA6";
    /// (edge, network) pairs whose edge the network trusts (`nat_common::TrustKey`).
    pub const TRUSTED: &str = "NATD_TRUSTED";
    pub const SOCK_ORIG: &str = "NATD_SOCK_ORIG";
    /// The layout version of the pinned maps (`LAYOUT_VERSION`), one `u32`.
    pub const LAYOUT: &str = "NATD_LAYOUT";
    /// The host-bound miss filter (`nat_common::port_marks`), an mmapable array: natd
    /// clears a mark with a compare-and-swap, so a mark the programs write meanwhile stays.
    pub const PORT_MARKS: &str = "NATD_PORT_MARKS";
    /// Masquerade mappings (`nat_common::SnatKey` -> `SnatMapping`), who holds each
    /// external port (`PortKey` -> `SnatOwner`), and the remote addresses each mapping has
    /// sent to (`SnatPeerKey`, an LRU).
    pub const SNAT4: &str = "NATD_SNAT4";
    pub const SNAT4_PORTS: &str = "NATD_SNAT4_PORTS";
    pub const SNAT4_PEERS: &str = "NATD_SNAT4_PEERS";
    pub const SNAT6: &str = "NATD_SNAT6";
    pub const SNAT6_PORTS: &str = "NATD_SNAT6_PORTS";
    pub const SNAT6_PEERS: &str = "NATD_SNAT6_PEERS";
    /// Ports mappings of the default filtering use (`PortKey` -> `SnatOwner` naming the
    /// first of them; an LRU: they share ports, and must never crowd out the holdings).
    pub const SNAT4_SHARED: &str = "NATD_SNAT4_SHARED";
    pub const SNAT6_SHARED: &str = "NATD_SNAT6_SHARED";
    /// Hairpinned packets their target's filtering refused (`PunchKey` -> `Punch`, an LRU).
    pub const PUNCH4: &str = "NATD_PUNCH4";
    pub const PUNCH6: &str = "NATD_PUNCH6";
    /// Per-CPU working memory of the programs that start flows, never pinned.
    pub const SCRATCH: &str = "NATD_SCRATCH";
    pub const SCRATCH6: &str = "NATD_SCRATCH6";
    /// Per-CPU room for parsed packets the IPv6 programs and ICMP errors work on, never
    /// pinned.
    pub const PACKETS4: &str = "NATD_PACKETS4";
    pub const PACKETS6: &str = "NATD_PACKETS6";
    /// Benchmark only (never written by natd): the warm test-run wrapper's frame and the
    /// program it tail-calls.
    pub const BENCH_FRAME: &str = "NATD_BENCH_FRAME";
    pub const BENCH_JUMP: &str = "NATD_BENCH_JUMP";
    pub const BENCH_ROUTE: &str = "NATD_BENCH_ROUTE";

    pub const ALL: &[&str] = &[
        COUNTERS,
        IFACE_CONFIG,
        CT4,
        CT4_NEW,
        PORTS4,
        ENDPOINTS4,
        CT6,
        CT6_NEW,
        PORTS6,
        ENDPOINTS6,
        LOCAL6,
        NETS6,
        GENERATIONS,
        MAPPING_STATS,
        STATS_SLOTS,
        LOCAL4,
        NETS4,
        NETWORKS,
        CONFIG,
        NETNS,
        QUOTA4,
        QUOTA6,
        TRUSTED,
        SOCK_ORIG,
        LAYOUT,
        PORT_MARKS,
        SNAT4,
        SNAT4_PORTS,
        SNAT4_PEERS,
        SNAT6,
        SNAT6_PORTS,
        SNAT6_PEERS,
        SNAT4_SHARED,
        SNAT6_SHARED,
        PUNCH4,
        PUNCH6,
        SCRATCH,
        SCRATCH6,
        PACKETS4,
        PACKETS6,
        BENCH_FRAME,
        BENCH_JUMP,
        BENCH_ROUTE,
    ];

    /// The maps of `ALL` that are never pinned (new with every load of the object).
    pub const UNPINNED: &[&str] = &[SCRATCH, SCRATCH6, PACKETS4, PACKETS6, BENCH_FRAME, BENCH_JUMP, BENCH_ROUTE];
}

/// Programs. Kernel program names keep 15 characters (BPF_OBJ_NAME_LEN): these differ
/// within them, so `bpftool prog` and run-time statistics tell them apart.
pub mod program {
    /// TCX ingress of every edge (an interface of natd's namespace that is not natd's
    /// own: NICs, VLANs, other bridges, VPN devices).
    pub const EDGE_INGRESS: &str = "natd_edge_in";
    /// TCX egress of every edge.
    pub const EDGE_EGRESS: &str = "natd_edge_out";
    /// TCX ingress of the host end of every sandbox veth.
    pub const SANDBOX_INGRESS: &str = "natd_sandbox_ingress";
    /// The IPv6 halves, attached right after each of the above (TCX order): the IPv4
    /// programs hand IPv6 packets on (TCX_NEXT) and these hand on everything else. Two
    /// programs keep each within the verifier's stack and instruction limits.
    pub const EDGE_INGRESS6: &str = "natd_edge_in6";
    pub const EDGE_EGRESS6: &str = "natd_edge_out6";
    pub const SANDBOX_INGRESS6: &str = "natd_sandbox_ingress6";
    /// The same for edges without a link layer (TUN devices: frames start at the IP
    /// header).
    pub const EDGE3_INGRESS: &str = "natd_edge3_in";
    pub const EDGE3_EGRESS: &str = "natd_edge3_out";
    pub const EDGE3_INGRESS6: &str = "natd_edge3_in6";
    pub const EDGE3_EGRESS6: &str = "natd_edge3_out6";
    /// Names earlier natd versions gave the edge programs (when they ran on uplinks only):
    /// their pinned links are renamed and upgraded in place, never detached.
    pub const RENAMED: &[(&str, &str)] = &[
        ("natd_uplink_ingress", EDGE_INGRESS),
        ("natd_uplink_egress", EDGE_EGRESS),
        ("natd_uplink_ingress6", EDGE_INGRESS6),
        ("natd_uplink_egress6", EDGE_EGRESS6),
    ];
    /// Never attached by natd: the benchmark's and tests' baseline for a test run's own cost.
    pub const EMPTY: &str = "natd_empty";
    /// Benchmark only: restores a frame, then tail-calls the program under test.
    pub const BENCH_WRAPPER: &str = "natd_bench_wrapper";
    /// Benchmark only: the redirect-only baseline (routing by redirect, no NAT).
    pub const BENCH_REDIRECT_INGRESS: &str = "natd_bench_redirect_ingress";
    pub const BENCH_REDIRECT_SANDBOX: &str = "natd_bench_redirect_sandbox";
    pub const BENCH_REDIRECT_INGRESS6: &str = "natd_bench_redirect_ingress6";
    pub const BENCH_REDIRECT_SANDBOX6: &str = "natd_bench_redirect_sandbox6";
    /// TC programs natd attaches.
    pub const TC: &[&str] = &[
        EDGE_INGRESS,
        EDGE_EGRESS,
        SANDBOX_INGRESS,
        EDGE_INGRESS6,
        EDGE_EGRESS6,
        SANDBOX_INGRESS6,
        EDGE3_INGRESS,
        EDGE3_EGRESS,
        EDGE3_INGRESS6,
        EDGE3_EGRESS6,
    ];

    pub const CONNECT4: &str = "natd_connect4";
    pub const SENDMSG4: &str = "natd_sendmsg4";
    pub const RECVMSG4: &str = "natd_recvmsg4";
    pub const GETPEERNAME4: &str = "natd_getpeername4";
    pub const CONNECT6: &str = "natd_connect6";
    pub const SENDMSG6: &str = "natd_sendmsg6";
    pub const RECVMSG6: &str = "natd_recvmsg6";
    pub const GETPEERNAME6: &str = "natd_getpeername6";
    /// Socket hooks, attached to the cgroup v2 root and filtered by natd's netns cookie.
    pub const SOCKET: &[&str] = &[
        CONNECT4,
        SENDMSG4,
        RECVMSG4,
        GETPEERNAME4,
        CONNECT6,
        SENDMSG6,
        RECVMSG6,
        GETPEERNAME6,
    ];

    pub const ALL: &[&str] = &[
        EDGE_INGRESS,
        EDGE_EGRESS,
        SANDBOX_INGRESS,
        EDGE_INGRESS6,
        EDGE_EGRESS6,
        SANDBOX_INGRESS6,
        EDGE3_INGRESS,
        EDGE3_EGRESS,
        EDGE3_INGRESS6,
        EDGE3_EGRESS6,
        EMPTY,
        BENCH_WRAPPER,
        BENCH_REDIRECT_INGRESS,
        BENCH_REDIRECT_SANDBOX,
        BENCH_REDIRECT_INGRESS6,
        BENCH_REDIRECT_SANDBOX6,
        CONNECT4,
        SENDMSG4,
        RECVMSG4,
        GETPEERNAME4,
        CONNECT6,
        SENDMSG6,
        RECVMSG6,
        GETPEERNAME6,
    ];
}
