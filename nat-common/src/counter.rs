//! Per-CPU counters kept by the TC programs, indexed by these ids. Each id is declared
//! together with its display name (`natctl stats`, the benchmark report, metrics), and a
//! compile-time check keeps the table in id order, so a name can never drift from its id.

macro_rules! counters {
    ($($id:ident = $n:literal => $name:literal,)*) => {
        $(pub const $id: u32 = $n;)*
        /// Every counter as (id, display name), in id order.
        pub const ALL: &[(u32, &str)] = &[$(($id, $name)),*];
    };
}

counters! {
    PACKETS_SEEN = 0 => "packets_seen",
    BYTES_SEEN = 1 => "bytes_seen",
    IPV4 = 2 => "ipv4",
    IPV6 = 3 => "ipv6",
    TCP = 4 => "tcp",
    UDP = 5 => "udp",
    ICMP = 6 => "icmp",
    OTHER_L3 = 7 => "other_l3",
    MALFORMED = 8 => "malformed",
    DNAT_NEW = 9 => "dnat_new",
    DNAT_ESTABLISHED = 10 => "dnat_established",
    DNAT_REPLY = 11 => "dnat_reply",
    SNAT_NEW = 12 => "snat_new",
    SNAT_ESTABLISHED = 13 => "snat_established",
    SNAT_REPLY = 14 => "snat_reply",
    DROP_CT_FULL = 15 => "drop_ct_full",
    DROP_NO_PORT = 16 => "drop_no_port",
    DROP_NO_EDGE_ADDR = 17 => "drop_no_edge_addr",
    DROP_FRAGMENT = 18 => "drop_fragment",
    DROP_TUPLE_CLASH = 19 => "drop_tuple_clash",
    STALE_MAPPING = 20 => "stale_mapping",
    CSUM_ERROR = 21 => "csum_error",
    DROP_CROSS_NETWORK = 22 => "drop_cross_network",
    DROP_ICC = 23 => "drop_icc",
    DROP_INTERNAL = 24 => "drop_internal",
    DROP_DIRECT_ACCESS = 25 => "drop_direct_access",
    DROP_LOOPBACK_SPOOF = 26 => "drop_loopback_spoof",
    HAIRPIN_NEW = 27 => "hairpin_new",
    ICMP_ERROR_TRANSLATED = 28 => "icmp_error_translated",
    SOCK_REWRITES = 29 => "sock_rewrites",
    DROP_SPOOFED_SOURCE = 30 => "drop_spoofed_source",
    FAST_TO_SANDBOX = 31 => "fast_to_sandbox",
    FAST_TO_EDGE = 32 => "fast_to_edge",
    FAST_TO_EDGE_NEIGH = 33 => "fast_to_edge_neigh",
    SLOW_TTL = 34 => "slow_ttl",
    SLOW_MTU = 35 => "slow_mtu",
    SLOW_HEADER = 36 => "slow_header",
    CT_PROMOTED = 37 => "ct_promoted",
    CT_PROMOTE_FULL = 38 => "ct_promote_full",
    TCP_INVALID = 39 => "tcp_invalid",
    DROP_TCP_NO_FLOW = 40 => "drop_tcp_no_flow",
    DROP_UNTRANSLATED = 41 => "drop_untranslated",
    DROP_SPOOFED_FLOW = 42 => "drop_spoofed_flow",
    CT_TAKEOVER = 43 => "ct_takeover",
    FIB_NOT_EDGE = 44 => "fib_not_edge",
    FIB_FAILED = 45 => "fib_failed",
    ORPHAN_REMOVED = 46 => "orphan_removed",
    ROUTED_NEW = 47 => "routed_new",
    DROP_ROGUE_ND = 48 => "drop_rogue_nd",
    DROP_NO_IPV6 = 49 => "drop_no_ipv6",
    DROP_DIRECT_UNPUBLISHED = 50 => "drop_direct_unpublished",
    DROP_LINK_SPOOF = 51 => "drop_link_spoof",
    TCP_RST_IGNORED = 52 => "tcp_rst_ignored",
    DROP_SOURCE_QUOTA = 53 => "drop_source_quota",
    PROMOTE_SOURCE_QUOTA = 54 => "promote_source_quota",
    DROP_ETHERTYPE = 55 => "drop_ethertype",
    DROP_UNKNOWN_EDGE = 56 => "drop_unknown_edge",
    SNAT_MAPPING_NEW = 57 => "snat_mapping_new",
    SNAT_MAPPING_REUSED = 58 => "snat_mapping_reused",
    SNAT_PORT_PRESERVED = 59 => "snat_port_preserved",
    SNAT_MAPPING_UNRECORDED = 60 => "snat_mapping_unrecorded",
    INBOUND_FILTER_ADMITTED = 61 => "inbound_filter_admitted",
    HAIRPIN_MAPPING_NEW = 62 => "hairpin_mapping_new",
    DROP_UNSOLICITED_SYN = 63 => "drop_unsolicited_syn",
}

/// Slots of the counter array (room to grow without resizing the pinned map).
pub const COUNT: u32 = 64;

const _: () = {
    let mut i = 0;
    while i < ALL.len() {
        assert!(ALL[i].0 == i as u32, "counter table out of id order");
        i += 1;
    }
    assert!(ALL.len() as u32 <= COUNT, "more counters than slots");
};

/// The display name of a counter id.
pub fn name(id: u32) -> Option<&'static str> {
    ALL.get(id as usize).map(|(_, name)| *name)
}
