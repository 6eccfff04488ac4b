//! The NAT dataplane behind one trait: natd computes the desired kernel state from its
//! store (attachments, published ports, masqueraded subnets) and each implementation makes
//! the kernel match it with the smallest set of changes.
pub mod ebpf;
pub mod nftables;
mod none;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::{
    config::{DaemonConfig, DataplaneKind},
    portspec::Proto,
};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("eBPF dataplane: {0}")]
    Ebpf(String),
    #[error("nftables dataplane: {0}")]
    Nftables(String),
    #[error("no dataplane could be started: eBPF: {ebpf}; nftables: {nftables}")]
    NoneAvailable { ebpf: String, nftables: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IfaceRole {
    /// An edge: an interface of natd's namespace that is not natd's own (a NIC, a VLAN, a
    /// bridge natd does not run, a VPN device). Everything arriving there is from outside,
    /// everything leaving there is masqueraded with `addr` / `addr6` (None: no address of
    /// that family to leave with; IPv6: no global one). `link_layer`: false for devices
    /// whose frames start at the IP header (TUN).
    Edge {
        addr: Option<Ipv4Addr>,
        addr6: Option<Ipv6Addr>,
        link_layer: bool,
        /// Macvlan devices of natd's namespace are stacked on it.
        macvlan_uppers: bool,
    },
    /// The host end of a sandbox's veth; the sandbox's addresses are the only sources it
    /// may send from.
    SandboxVeth {
        network_id: u32,
        addr: Ipv4Addr,
        addr6: Option<Ipv6Addr>,
    },
}

/// An interface in natd's namespace the dataplane must serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub index: u32,
    pub name: String,
    pub role: IfaceRole,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// A bridge (an edge's role moves to one with the NIC's MAC when a hostbridge network
    /// takes the NIC, and back).
    pub bridge: bool,
}

/// A sandbox's endpoint on one address (IPv4 or IPv6): where the fast path delivers
/// packets to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointRule {
    pub addr: IpAddr,
    /// The host end of its veth.
    pub host_ifindex: u32,
    pub network_id: u32,
    pub mac: [u8; 6],
    /// The bridge's MAC (the sandbox's gateway).
    pub gw_mac: [u8; 6],
    pub mtu: u32,
}

/// One published port, ready for the kernel. Its family is the target's: a host address,
/// when given, is of the same family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRule {
    /// None: every local address of the family (0.0.0.0 / [::]).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub proto: Proto,
    pub target: IpAddr,
    pub target_port: u16,
    /// The mapping's id (`PortMapping::id`: sequential, kept with the record), for its
    /// statistics; the container port a mapping opens on the sandbox's address has the
    /// mapping's id with `OPEN_PORT_ID` set. Flows are told apart by the mapping's slot,
    /// which the dataplane keys by the fields above, not by this id.
    pub mapping_id: u32,
    /// The id natd gave the rule before ids were kept with the records (a hash of its
    /// fields and its sandbox's id), which natd 0.1's connection entries carry.
    pub legacy_id: u32,
    /// An open container port (the sandbox's address and port translated to themselves)
    /// that only edges its network trusts may use.
    pub trusted_only: bool,
}

/// Set in the id of the rule that opens a mapping's container port on the sandbox's own
/// address (mapping ids stay below it).
pub const OPEN_PORT_ID: u32 = 1 << 31;

impl PortRule {
    /// `host_ip` (None: every address of the family) and `host_port` to `target` and
    /// `target_port`, for the mapping `id` of sandbox `sandbox_id`.
    pub fn new(
        host_ip: Option<IpAddr>,
        host_port: u16,
        proto: Proto,
        (target, target_port): (IpAddr, u16),
        (id, sandbox_id): (u32, u32),
    ) -> Self {
        Self {
            host_ip,
            host_port,
            proto,
            target,
            target_port,
            mapping_id: id,
            legacy_id: legacy_id(host_ip, host_port, proto, target, target_port, sandbox_id),
            trusted_only: false,
        }
    }

    /// The container port opened on the sandbox's own address (routed mode, trusted
    /// edges, `allow-direct-routing`): translated to itself.
    pub fn open_port(proto: Proto, target: IpAddr, port: u16, (id, sandbox_id): (u32, u32), trusted_only: bool) -> Self {
        Self {
            trusted_only,
            ..Self::new(Some(target), port, proto, (target, port), (id | OPEN_PORT_ID, sandbox_id))
        }
    }

    /// Whether the rule opens a container port on the sandbox's address rather than
    /// publishing a host port.
    pub fn is_open_port(&self) -> bool {
        self.host_ip == Some(self.target) && self.host_port == self.target_port
    }
}

/// FNV-1a over every field of a rule and its sandbox's id: the id natd gave a rule before
/// ids were kept with the records (colliding ids shared a slot: at 100,000 mappings a
/// collision is more likely than not).
fn legacy_id(host_ip: Option<IpAddr>, host_port: u16, proto: Proto, target: IpAddr, target_port: u16, sandbox_id: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    match host_ip {
        None => feed(&[0; 4]),
        Some(ip) => feed(&octets(ip)),
    }
    feed(&host_port.to_be_bytes());
    feed(&[proto.number()]);
    feed(&octets(target));
    feed(&target_port.to_be_bytes());
    feed(&sandbox_id.to_be_bytes());
    hash.max(1)
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A natd network as the dataplane needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkRule {
    pub id: u32,
    pub bridge: String,
    /// The bridge's ifindex (0 when it is missing).
    pub bridge_ifindex: u32,
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub icc: bool,
    pub internal: bool,
    pub masquerade: bool,
    /// `gateway_mode_ipv4=routed`: sandbox addresses reachable on published container
    /// ports, outbound flows tracked untranslated.
    pub routed: bool,
    /// The network's IPv6 side, if it has one.
    pub v6: Option<NetworkRule6>,
    /// Edges (by name) that may reach published container ports on its sandboxes'
    /// addresses (`com.docker.network.bridge.trusted_host_interfaces`).
    pub trusted: Vec<String>,
    /// Which inbound packets its masquerade mappings admit (both families).
    pub nat_filtering: crate::model::NatFiltering,
    /// New mappings take random ports instead of the sandboxes' own.
    pub random_ports: bool,
    /// Its sandboxes reach published ports through host addresses with their external
    /// address and mapping as the source (`natd.nat.hairpin-source=external`).
    pub hairpin_external: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkRule6 {
    pub subnet: Ipv6Network,
    pub gateway: Ipv6Addr,
    /// `gateway_mode_ipv6=nat` (and not internal): masqueraded and published like IPv4.
    pub masquerade: bool,
    /// `gateway_mode_ipv6=routed` (and not internal): no NAT, sandbox addresses reachable
    /// on published container ports, outbound flows tracked untranslated.
    pub routed: bool,
}

/// What the kernel should look like, computed from natd's state.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub ifaces: Vec<Iface>,
    /// Every address of natd's namespace (targets of ports published on 0.0.0.0 / [::]).
    pub local_addrs: Vec<IpAddr>,
    pub networks: Vec<NetworkRule>,
    pub ports: Vec<PortRule>,
    pub endpoints: Vec<EndpointRule>,
    /// Inclusive range of NAT source ports for masquerade.
    pub snat_ports: (u16, u16),
    /// Whether new flows may bypass the host (`--fast-path`, and no netfilter rules).
    pub fast_path: bool,
    /// The daemon's `allow-direct-routing`: every edge reaches published container ports
    /// on sandbox addresses.
    pub direct_routing: bool,
    /// Per-source quotas of embryonic and promoted flows (0: none).
    pub quota_embryonic: u32,
    pub quota_promoted: u32,
}

impl Desired {
    /// (edge ifindex, network id) of every edge a network trusts that exists now.
    pub fn trusted_edges(&self) -> Vec<(u32, u32)> {
        let mut pairs = Vec::new();
        for network in &self.networks {
            for name in &network.trusted {
                if let Some(edge) = self
                    .ifaces
                    .iter()
                    .find(|i| &i.name == name && matches!(i.role, IfaceRole::Edge { .. }))
                {
                    pairs.push((edge.index, network.id));
                }
            }
        }
        pairs
    }
}

/// One tracked flow, as `natctl ct ls` shows it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Flow {
    pub proto: String,
    pub kind: String,
    pub state: String,
    /// The tuple as it arrived: source, source port, destination, destination port.
    pub original: (std::net::IpAddr, u16, std::net::IpAddr, u16),
    /// The tuple after translation.
    pub translated: (std::net::IpAddr, u16, std::net::IpAddr, u16),
    pub mapping_id: u32,
    /// Whether the flow bypasses the host (redirected by the programs).
    pub fast: bool,
    /// Whether the flow completed its handshake (else it is still embryonic).
    pub established: bool,
    pub idle_s: u64,
    /// Seconds until the flow expires if nothing more passes (API 1.2).
    #[serde(default)]
    pub expires_s: u64,
    /// A masqueraded flow's mapping (RFC 4787): its external address and port, which
    /// every flow of the same sandbox address and port shares, and how long it outlives
    /// its last flow (API 1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<FlowMapping>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FlowMapping {
    pub external: std::net::SocketAddr,
    /// Seconds the mapping lives once its last flow is gone.
    pub outlives_flows_s: u64,
}

/// The kernel's own connection table in `Stats::maps` (nftables dataplane).
pub const KERNEL_CONNTRACK: &str = "nf_conntrack";

/// Counters, per-mapping traffic and map fill levels.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub counters: std::collections::BTreeMap<String, u64>,
    /// mapping id -> (packets, bytes).
    pub mappings: std::collections::BTreeMap<u32, (u64, u64)>,
    /// map name -> (entries, capacity); the nftables dataplane reports the kernel's
    /// conntrack as `KERNEL_CONNTRACK`.
    pub maps: std::collections::BTreeMap<String, (usize, u32)>,
    /// map name -> kernel memory charged for it, bytes (eBPF dataplane: every map).
    #[serde(default)]
    pub map_memory: std::collections::BTreeMap<String, u64>,
}

/// What a sync changed, for the reconcile report.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub attached: Vec<String>,
    pub detached: Vec<String>,
    pub adopted: Vec<String>,
    pub flows_invalidated: usize,
}

/// The idle timeouts of tracked flows an operator can set (`--conntrack-timeout KIND=SECONDS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtTimeout {
    TcpSyn,
    TcpEstablished,
    TcpClosing,
    TcpClosed,
    Udp,
    UdpReplied,
    Icmp,
    /// A UDP/ICMP masquerade mapping after its last flow.
    Mapping,
}

impl CtTimeout {
    pub const ALL: [CtTimeout; 8] = [
        CtTimeout::TcpSyn,
        CtTimeout::TcpEstablished,
        CtTimeout::TcpClosing,
        CtTimeout::TcpClosed,
        CtTimeout::Udp,
        CtTimeout::UdpReplied,
        CtTimeout::Icmp,
        CtTimeout::Mapping,
    ];

    /// The KIND of `--conntrack-timeout KIND=SECONDS`.
    pub fn name(self) -> &'static str {
        match self {
            CtTimeout::TcpSyn => "tcp-syn",
            CtTimeout::TcpEstablished => "tcp-established",
            CtTimeout::TcpClosing => "tcp-closing",
            CtTimeout::TcpClosed => "tcp-closed",
            CtTimeout::Udp => "udp",
            CtTimeout::UdpReplied => "udp-replied",
            CtTimeout::Icmp => "icmp",
            CtTimeout::Mapping => "mapping",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Connection-table housekeeping results.
#[derive(Debug, Default)]
pub struct GcReport {
    pub scanned: usize,
    pub expired: usize,
    /// Masquerade mappings whose time was up.
    pub mappings_expired: usize,
    /// Entries each connection and masquerade table holds after the pass (what it read,
    /// less what it removed).
    pub fill: std::collections::BTreeMap<&'static str, usize>,
}

pub trait Dataplane: Send + Sync {
    fn kind(&self) -> DataplaneKind;
    /// Makes the kernel match `desired`: attach what is missing, detach what is stale, and
    /// update maps element by element so no mapping is ever half-installed.
    fn sync(&mut self, desired: &Desired) -> Result<SyncReport, DataplaneError>;
    /// A full sync in which the published ports changed only by `added` and `removed`
    /// (`desired` holds them all): a dataplane may write just those. By default, a full sync.
    fn sync_with_ports(
        &mut self,
        desired: &Desired,
        added: &[PortRule],
        removed: &[PortRule],
    ) -> Result<SyncReport, DataplaneError> {
        let _ = (added, removed);
        self.sync(desired)
    }
    /// `sync_with_ports` when nothing but those ports changed: a dataplane may skip the
    /// rest.
    fn change_ports(
        &mut self,
        desired: &Desired,
        added: &[PortRule],
        removed: &[PortRule],
    ) -> Result<SyncReport, DataplaneError> {
        self.sync_with_ports(desired, added, removed)
    }
    /// Expires idle flows; called periodically (by the daemon only for a dataplane without
    /// `housekeeping`).
    fn gc(&mut self) -> Result<GcReport, DataplaneError>;
    /// The work that runs outside the daemon's lock (expiry, statistics), if this
    /// dataplane has any.
    fn housekeeping(&self) -> Option<std::sync::Arc<dyn Housekeeping>> {
        None
    }
    /// The next sync compares with the kernel instead of what was last written, and checks
    /// every attachment: the tick's repair of changes made behind natd's back (for a
    /// dataplane without a `Housekeeping::drift_check`).
    fn recheck(&mut self) {}
    /// What this dataplane last wrote, for its drift check: cheap to take (the lock is
    /// held), None without a drift check.
    fn written(&self) -> Option<WrittenState> {
        None
    }
    /// Forgets what the drift check found changed behind natd's back (`DriftCheck::confirm`),
    /// so the next sync reads it from the kernel and repairs it. True when a sync is due:
    /// something drifted, or the last one left work undone (an edge not attached yet).
    fn forget_drifted(&mut self, drifted: &[String]) -> bool {
        !drifted.is_empty()
    }
    /// (mapping id, statistics slot) of every published mapping, for `Housekeeping::stats`.
    fn mapping_slots(&self) -> Vec<(u32, u32)> {
        Vec::new()
    }
    /// (published mappings held, the most it can hold), where the dataplane has a limit.
    fn mapping_room(&self) -> Option<(usize, usize)> {
        None
    }
    /// Attachments and map sizes for `natctl info`.
    fn info(&self) -> serde_json::Value;
    fn stats(&self) -> Stats;
    fn flows(&self) -> Vec<Flow>;
}

/// A dataplane's housekeeping: shared with the daemon's tasks and run without its lock.
pub trait Housekeeping: Send + Sync {
    /// Expires idle flows (and what only they kept).
    fn gc(&self) -> Result<GcReport, DataplaneError>;
    /// Counters, map fill levels and the traffic of the mappings in `slots`. `exact`:
    /// every table is counted now; else the connection and masquerade tables as the last
    /// expiry pass left them and the configuration tables as the last drift check read
    /// them (when they ran; both a `--gc-interval` old at most), so a scrape every few
    /// seconds does not read them whole each time.
    fn stats(&self, slots: &[(u32, u32)], exact: bool) -> Stats;
    /// A comparison of the kernel's state with what was written (None: the tick's sync
    /// compares under the lock, `Dataplane::recheck`).
    fn drift_check(&self) -> Option<Box<dyn DriftCheck>> {
        None
    }
}

/// What a dataplane last wrote (`Dataplane::written`), for its own `DriftCheck` only.
pub struct WrittenState(pub Box<dyn std::any::Any + Send + Sync>);

/// Changes made behind natd's back, found in three steps so that no table-sized work
/// holds the daemon's lock: `read` the kernel's state (no lock), `compare` it with what
/// was written (taken under the lock after the read; no lock), `confirm` under the lock
/// what still differs (a request may have written it since).
pub trait DriftCheck: Send {
    fn read(&mut self);
    fn compare(&mut self, written: &WrittenState);
    /// The names of what drifted (maps, links), for `Dataplane::forget_drifted`.
    fn confirm(&self, written: &WrittenState) -> Vec<String>;
}

/// The one factory: `auto` prefers eBPF and falls back to nftables. Whatever another
/// dataplane left in the kernel (after a switch) is removed first. `ipv6`: natd has an
/// IPv6 network (the eBPF dataplane sizes its IPv6 tables by it).
pub fn create(config: &DaemonConfig, ipv6: bool) -> Result<Box<dyn Dataplane>, DataplaneError> {
    let dataplane = open(config, ipv6)?;
    let leftovers = match dataplane.kind() {
        DataplaneKind::Ebpf => nftables::remove_leftovers(config),
        DataplaneKind::Nftables => ebpf::loader::cleanup_pin_dir(&config.bpffs),
        _ => remove_all(config),
    };
    for e in leftovers {
        tracing::warn!("removing the other dataplane's leftovers: {e}");
    }
    Ok(dataplane)
}

/// Removes what any dataplane put into the kernel, without a running one (`natd
/// --cleanup`, dataplane switches). Keeps going on errors and returns them.
pub fn remove_all(config: &DaemonConfig) -> Vec<String> {
    let mut errors = nftables::remove_leftovers(config);
    errors.extend(ebpf::loader::cleanup_pin_dir(&config.bpffs));
    errors
}

fn open(config: &DaemonConfig, ipv6: bool) -> Result<Box<dyn Dataplane>, DataplaneError> {
    match config.dataplane {
        DataplaneKind::None => Ok(Box::new(none::NoDataplane)),
        DataplaneKind::Ebpf => Ok(Box::new(ebpf::EbpfDataplane::open(config, ipv6)?)),
        DataplaneKind::Nftables => Ok(Box::new(nftables::NftablesDataplane::open(config)?)),
        DataplaneKind::Auto => match ebpf::EbpfDataplane::open(config, ipv6) {
            Ok(dp) => Ok(Box::new(dp)),
            Err(ebpf_err) => {
                tracing::warn!(error = %ebpf_err, "eBPF dataplane unavailable, trying nftables");
                match nftables::NftablesDataplane::open(config) {
                    Ok(dp) => Ok(Box::new(dp)),
                    Err(nft_err) => Err(DataplaneError::NoneAvailable {
                        ebpf: ebpf_err.to_string(),
                        nftables: nft_err.to_string(),
                    }),
                }
            }
        },
    }
}
