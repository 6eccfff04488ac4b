//! Where settings come from: natd's flags (clap) and the JSON config file, whose keys are
//! the long flag names (Docker's daemon.json names where Docker has one).
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

use super::{DataplaneKind, LogFormat};

/// Flags of `natd`. Every field is optional here so that the config file can fill it.
#[derive(Debug, Parser, Default)]
#[command(
    name = "natd",
    version,
    about = "natd: Docker-style bridge networking for network namespaces, NAT in eBPF"
)]
pub struct DaemonArgs {
    /// JSON config file (keys as the long flag names, e.g. "fixed-cidr", "dns": [..]).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Unix socket the API listens on (mode 0600).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Directory of the state database and sandbox logs.
    #[arg(long = "state-dir")]
    pub state_dir: Option<PathBuf>,
    /// bpffs directory where maps and program links are pinned.
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// Bridge of the default network; an existing bridge is adopted.
    #[arg(short = 'b', long)]
    pub bridge: Option<String>,
    /// Bridge address and subnet of the default network (CIDR, e.g. 172.18.0.1/16).
    #[arg(long)]
    pub bip: Option<String>,
    /// Pool inside --bip that sandboxes get IPv4 addresses from.
    #[arg(long = "fixed-cidr")]
    pub fixed_cidr: Option<String>,
    /// Give the default network IPv6: sandboxes get an address from --fixed-cidr-v6, or
    /// without it from a /64 of this host's unique-local fdXX:XXXX:XXXX::/48.
    #[arg(long)]
    pub ipv6: bool,
    /// IPv6 subnet of the default network; sandboxes get an IPv6 address from it. Implies
    /// --ipv6 (as it did before --ipv6 existed).
    #[arg(long = "fixed-cidr-v6")]
    pub fixed_cidr_v6: Option<String>,
    /// MTU of bridges and sandbox interfaces.
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Default IPv4 gateway of sandboxes on the default network (instead of the bridge address).
    #[arg(long = "default-gateway")]
    pub default_gateway: Option<String>,
    /// Default IPv6 gateway of sandboxes on the default network.
    #[arg(long = "default-gateway-v6")]
    pub default_gateway_v6: Option<String>,
    /// DNS server written to sandboxes' resolv.conf (repeatable).
    #[arg(long)]
    pub dns: Vec<String>,
    /// Allow traffic between sandboxes of the default network.
    #[arg(long, action = clap::ArgAction::Set)]
    pub icc: Option<bool>,
    /// Masquerade traffic leaving the default network.
    #[arg(long = "ip-masq", action = clap::ArgAction::Set)]
    pub ip_masq: Option<bool>,
    /// Uplink interface (repeatable); default: the interfaces of the default routes. Every
    /// interface that is not natd's own is an edge (published ports answer there,
    /// sandbox traffic is masqueraded there); the uplinks lend their address to an edge
    /// that has none of a family.
    #[arg(long)]
    pub uplink: Vec<String>,
    /// Which dataplane does the NAT.
    #[arg(long, value_enum)]
    pub dataplane: Option<DataplaneKind>,
    /// Prefix of every interface and network namespace natd creates (at most 6 characters).
    #[arg(long = "name-prefix")]
    pub name_prefix: Option<String>,
    /// Range that random host ports are taken from (default: the host's ip_local_port_range).
    #[arg(long = "port-range")]
    pub port_range: Option<String>,
    /// Range of NAT source ports for masquerade (default: above or below the host's
    /// ip_local_port_range, so they never collide with the host's own connections).
    #[arg(long = "masquerade-port-range")]
    pub masquerade_port_range: Option<String>,
    /// How a new masquerade mapping picks its external port: the sandbox's own when free
    /// (preserve, as Linux's MASQUERADE; default) or a random one of the range (random,
    /// RFC 6056). A network's `-o natd.nat.masquerade-ports` overrides it.
    #[arg(long = "masquerade-ports", value_enum)]
    pub masquerade_ports: Option<crate::model::PortAssignment>,
    /// Let inbound packets keep a masquerade mapping alive too (RFC 4787 REQ-6a; default
    /// false: only what sandboxes send does, so nobody outside holds a port open).
    #[arg(long = "masquerade-refresh-inbound", action = clap::ArgAction::Set)]
    pub masquerade_refresh_inbound: Option<bool>,
    /// Capacity of the connection table (two entries per flow).
    #[arg(long = "conntrack-max")]
    pub conntrack_max: Option<u32>,
    /// Capacity of the table of flows whose handshake has not completed (an LRU: a flood of
    /// unanswered flows evicts its own kind, never an established flow). Default: a quarter
    /// of --conntrack-max.
    #[arg(long = "conntrack-embryonic-max")]
    pub conntrack_embryonic_max: Option<u32>,
    /// Published mappings natd allows (each `-p` port, per protocol and host address).
    /// Sizes the published-port tables and the per-mapping counters, which take 16 bytes
    /// per mapping per possible CPU (2 MiB per CPU at the default, 131072, the most).
    /// At least 1024, and never below the mappings natd has.
    #[arg(long = "max-published-ports")]
    pub max_published_ports: Option<u32>,
    /// Masquerade mappings each family's tables hold (one per sandbox address, port,
    /// protocol and external address in use), and as many held ports, shared ports and
    /// remembered peers (the peers and shared ports are LRUs, allocated whole: 21 MiB for
    /// IPv4 at the default, 131072). At least 1024, and never below the mappings held.
    #[arg(long = "masquerade-max")]
    pub masquerade_max: Option<u32>,
    /// Percentage of each connection table one source address may hold: its pending flows
    /// (TCP until the handshake completes, UDP/ICMP until answered) in the embryonic
    /// table, its UDP/ICMP flows in the established one. One client cannot churn or fill
    /// the tables with a flood. 0 turns the quotas off. Default 10.
    #[arg(long = "conntrack-source-share")]
    pub conntrack_source_share: Option<u32>,
    /// Let every edge reach published container ports on sandbox addresses directly
    /// (Docker 28.2's allow-direct-routing; default false: only through published host
    /// ports, or from edges a network trusts).
    #[arg(long = "allow-direct-routing", action = clap::ArgAction::Set)]
    pub allow_direct_routing: Option<bool>,
    /// Let flows bypass the host's routing and the bridge (redirected by natd's programs);
    /// natd turns it off by itself while netfilter rules exist in its namespace.
    #[arg(long = "fast-path", action = clap::ArgAction::Set)]
    pub fast_path: Option<bool>,
    /// Idle timeout of tracked flows, KIND=SECONDS (repeatable); kinds: tcp-syn,
    /// tcp-established, tcp-closing, tcp-closed, udp, udp-replied, icmp, and mapping (how
    /// long a UDP/ICMP masquerade mapping outlives its last flow).
    #[arg(long = "conntrack-timeout")]
    pub conntrack_timeout: Vec<String>,
    /// Seconds between connection-table sweeps (and address refreshes).
    #[arg(long = "gc-interval")]
    pub gc_interval: Option<u64>,
    #[arg(long = "log-format", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Serve Prometheus metrics on ADDR:PORT (path /metrics); off unless given.
    #[arg(long = "metrics-addr")]
    pub metrics_addr: Option<String>,
    /// Published ports with series of their own in /metrics: the busiest N by packets;
    /// the rest are summed into one series (mapping="other"). Default 1000.
    #[arg(long = "metrics-port-series")]
    pub metrics_port_series: Option<usize>,
    /// Cluster store for overlay networks: etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long = "cluster-store")]
    pub cluster_store: Option<String>,
    /// This host's underlay address for overlay traffic: an interface (its first IPv4
    /// address) or an address; Docker's optional :PORT suffix is accepted and ignored.
    #[arg(long = "cluster-advertise")]
    pub cluster_advertise: Option<String>,
    /// Seconds a host's registration lives without renewal (a dead host's sandboxes leave
    /// the others' forwarding tables within this time).
    #[arg(long = "cluster-ttl")]
    pub cluster_ttl: Option<u64>,
    /// Seconds a host's registration must have been gone before any live host releases
    /// its address claims (default 86400: a day, so a host down for maintenance keeps its
    /// sandboxes' addresses).
    #[arg(long = "cluster-claim-grace")]
    pub cluster_claim_grace: Option<u64>,
    /// Cluster store option KEY=VALUE (repeatable; Docker's names): kv.cacertfile (TLS: the
    /// CA the store's certificate must be signed by), kv.certfile and kv.keyfile (a client
    /// certificate), kv.username and kv.passwordfile (etcd authentication; the password is
    /// read from the file, never given on the command line).
    #[arg(long = "cluster-store-opt")]
    pub cluster_store_opt: Vec<String>,
    /// Remove everything natd owns (sandboxes, networks, pinned programs, state) and exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Say what a start of this natd, with these settings, would do to the pinned maps
    /// (adopt, replace carrying flows, refuse a newer layout) and exit, changing nothing.
    /// Exit status 0: a start would go ahead; 78: it would refuse.
    #[arg(long = "check-upgrade")]
    pub check_upgrade: bool,
}

/// The config file: same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub bpffs: Option<PathBuf>,
    pub bridge: Option<String>,
    pub bip: Option<String>,
    pub fixed_cidr: Option<String>,
    pub fixed_cidr_v6: Option<String>,
    /// daemon.json's `"ipv6": true`.
    pub ipv6: Option<bool>,
    pub mtu: Option<NumberOrString>,
    pub default_gateway: Option<String>,
    pub default_gateway_v6: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    pub icc: Option<bool>,
    pub ip_masq: Option<bool>,
    #[serde(default)]
    pub uplink: Vec<String>,
    pub dataplane: Option<DataplaneKind>,
    pub name_prefix: Option<String>,
    pub port_range: Option<String>,
    pub masquerade_port_range: Option<String>,
    pub masquerade_ports: Option<crate::model::PortAssignment>,
    pub masquerade_refresh_inbound: Option<bool>,
    pub conntrack_max: Option<u32>,
    pub conntrack_embryonic_max: Option<u32>,
    pub max_published_ports: Option<u32>,
    pub masquerade_max: Option<u32>,
    pub conntrack_source_share: Option<u32>,
    pub allow_direct_routing: Option<bool>,
    pub fast_path: Option<bool>,
    #[serde(default)]
    pub conntrack_timeout: Vec<String>,
    pub gc_interval: Option<u64>,
    pub log_format: Option<LogFormat>,
    pub metrics_addr: Option<String>,
    pub metrics_port_series: Option<usize>,
    pub cluster_store: Option<String>,
    pub cluster_advertise: Option<String>,
    pub cluster_ttl: Option<u64>,
    pub cluster_claim_grace: Option<u64>,
    #[serde(default)]
    pub cluster_store_opts: std::collections::BTreeMap<String, String>,
}

/// daemon.json examples write `"mtu": "1500"`; Docker itself wants a number. Take both.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum NumberOrString {
    Number(u32),
    Text(String),
}
