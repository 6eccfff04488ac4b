//! Names of natd's maps and programs. The kernel side declares them as identifiers
//! (`#[map] static NATD_CT`, `#[classifier] fn natd_uplink_ingress`), which aya's macros
//! cannot take from a constant; everything else uses these constants, and a unit test of
//! the agent checks that the built object carries exactly these names.

/// Maps, pinned by these names under `<bpffs>/maps`.
pub mod map {
    pub const COUNTERS: &str = "NATD_COUNTERS";
    pub const IFACE_STATS: &str = "NATD_IFACE_STATS";
    pub const IFACE_CONFIG: &str = "NATD_IFACE_CONFIG";
    pub const CT: &str = "NATD_CT";
    pub const PORTS: &str = "NATD_PORTS";
    pub const MAPPING_STATS: &str = "NATD_MAPPING_STATS";
    pub const LOCAL_ADDRS: &str = "NATD_LOCAL_ADDRS";
    pub const NETS_V4: &str = "NATD_NETS_V4";
    pub const NETWORKS: &str = "NATD_NETWORKS";
    pub const CONFIG: &str = "NATD_CONFIG";
    pub const NETNS: &str = "NATD_NETNS";
    pub const SOCK_ORIG: &str = "NATD_SOCK_ORIG";

    pub const ALL: &[&str] = &[
        COUNTERS,
        IFACE_STATS,
        IFACE_CONFIG,
        CT,
        PORTS,
        MAPPING_STATS,
        LOCAL_ADDRS,
        NETS_V4,
        NETWORKS,
        CONFIG,
        NETNS,
        SOCK_ORIG,
    ];
}

/// Programs.
pub mod program {
    /// TCX ingress of every uplink.
    pub const UPLINK_INGRESS: &str = "natd_uplink_ingress";
    /// TCX egress of every uplink.
    pub const UPLINK_EGRESS: &str = "natd_uplink_egress";
    /// TCX ingress of the host end of every sandbox veth.
    pub const SANDBOX_INGRESS: &str = "natd_sandbox_ingress";
    /// Never attached: the benchmark's and tests' baseline for a test run's own cost.
    pub const EMPTY: &str = "natd_empty";
    /// TC programs natd attaches.
    pub const TC: &[&str] = &[UPLINK_INGRESS, UPLINK_EGRESS, SANDBOX_INGRESS];

    pub const CONNECT4: &str = "natd_connect4";
    pub const SENDMSG4: &str = "natd_sendmsg4";
    pub const RECVMSG4: &str = "natd_recvmsg4";
    pub const GETPEERNAME4: &str = "natd_getpeername4";
    /// Socket hooks, attached to the cgroup v2 root and filtered by natd's netns cookie.
    pub const SOCKET: &[&str] = &[CONNECT4, SENDMSG4, RECVMSG4, GETPEERNAME4];

    pub const ALL: &[&str] = &[
        UPLINK_INGRESS,
        UPLINK_EGRESS,
        SANDBOX_INGRESS,
        EMPTY,
        CONNECT4,
        SENDMSG4,
        RECVMSG4,
        GETPEERNAME4,
    ];
}
