//! The records natd persists (one JSON document per network and per sandbox in the redb
//! store) and returns in its API. Fields are typed; the JSON they serialize to is the
//! one natd has always written (addresses and subnets as strings), so existing state files
//! keep loading (see the `reads_records_written_by_earlier_natd` test).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use crate::portspec::{ExposeSpec, Proto, PublishSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Bridge,
    /// Sandboxes on the host's LAN through a bridge holding the host's NIC (pipework).
    HostBridge,
    /// One subnet across hosts: a bridge per host joined by VXLAN, membership in the
    /// cluster store.
    Overlay,
}

impl Driver {
    /// The name `network create -d` takes and `network ls` shows.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Bridge => "bridge",
            Driver::HostBridge => "hostbridge",
            Driver::Overlay => "overlay",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: u32,
    pub name: String,
    pub driver: Driver,
    /// The Linux bridge that carries this network.
    pub bridge: String,
    /// The bridge existed before natd used it: natd never deletes it.
    pub bridge_adopted: bool,
    pub subnet: Ipv4Network,
    /// Address of the bridge.
    pub gateway: Ipv4Addr,
    /// Default route of sandboxes when it differs from the bridge address (--default-gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<Ipv4Network>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_v6: Option<Ipv6Network>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_v6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_gateway_v6: Option<Ipv6Addr>,
    pub internal: bool,
    pub icc: bool,
    pub ip_masq: bool,
    pub mtu: u32,
    /// The network named `bridge`, configured by natd's flags.
    pub default: bool,
    /// `-o com.docker.network.bridge.gateway_mode_ipv4`: how traffic leaves the network.
    #[serde(default, skip_serializing_if = "GatewayMode::is_nat")]
    pub gateway_mode_v4: GatewayMode,
    /// `-o com.docker.network.bridge.gateway_mode_ipv6`.
    #[serde(default, skip_serializing_if = "GatewayMode::is_nat")]
    pub gateway_mode_v6: GatewayMode,
    pub created: u64,
    /// hostbridge: the NIC natd put into the bridge and what it had before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentState>,
    /// overlay: how this host joins the network's other hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayLink>,
    /// `-o com.docker.network.bridge.trusted_host_interfaces=IF[:IF...]` (Docker 28.2):
    /// edges that may reach published container ports on the sandboxes' own addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_host_interfaces: Vec<String>,
    /// `-o natd.nat.filtering`, `-o natd.nat.masquerade-ports`: how its masquerade maps
    /// and filters (RFC 4787).
    #[serde(default, skip_serializing_if = "NatBehaviour::is_default")]
    pub nat: NatBehaviour,
}

/// A network's masquerade behaviour beyond Linux's defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatBehaviour {
    #[serde(default)]
    pub filtering: NatFiltering,
    /// None: the daemon's `--masquerade-ports`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortAssignment>,
    #[serde(default, skip_serializing_if = "HairpinSource::is_default")]
    pub hairpin_source: HairpinSource,
}

impl NatBehaviour {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Which inbound packets reach a sandbox through its masquerade mapping (RFC 4787
/// section 5). Every mapping is endpoint-independent; only filtering is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatFiltering {
    /// Replies only, from the address and port sent to (Linux's and Docker's).
    #[default]
    AddressAndPortDependent,
    /// From any port of an address the mapping has sent to.
    AddressDependent,
    /// From anywhere ("full cone"), to the mapping's port only.
    EndpointIndependent,
}

impl NatFiltering {
    pub const ALL: [NatFiltering; 3] = [
        NatFiltering::AddressAndPortDependent,
        NatFiltering::AddressDependent,
        NatFiltering::EndpointIndependent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NatFiltering::AddressAndPortDependent => "address-and-port-dependent",
            NatFiltering::AddressDependent => "address-dependent",
            NatFiltering::EndpointIndependent => "endpoint-independent",
        }
    }
}

impl std::str::FromStr for NatFiltering {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
            format!("unknown NAT filtering {s:?} (known: {})", known.join(", "))
        })
    }
}

/// The source a sandbox of the network has when it reaches a published port through a
/// host address (hairpinning).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HairpinSource {
    /// Its own address (Docker's; to its own published port, the network's gateway).
    #[default]
    Internal,
    /// Its external address and masquerade mapping, what any peer sees (RFC 4787 REQ-9a).
    External,
}

impl HairpinSource {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    pub fn name(self) -> &'static str {
        match self {
            HairpinSource::Internal => "internal",
            HairpinSource::External => "external",
        }
    }
}

impl std::str::FromStr for HairpinSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "internal" => Ok(HairpinSource::Internal),
            "external" => Ok(HairpinSource::External),
            other => Err(format!("unknown hairpin source {other:?} (known: internal, external)")),
        }
    }
}

/// How a new masquerade mapping picks its external port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PortAssignment {
    /// The sandbox's own port when free (Linux's MASQUERADE), else one of its class and
    /// parity.
    #[default]
    Preserve,
    /// A random port of the masquerade range (RFC 6056).
    Random,
}

impl PortAssignment {
    pub fn name(self) -> &'static str {
        match self {
            PortAssignment::Preserve => "preserve",
            PortAssignment::Random => "random",
        }
    }
}

impl std::str::FromStr for PortAssignment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "preserve" => Ok(PortAssignment::Preserve),
            "random" => Ok(PortAssignment::Random),
            other => Err(format!("unknown masquerade port assignment {other:?} (known: preserve, random)")),
        }
    }
}

/// Docker 27's gateway mode of a bridge network, per address family: `nat` masquerades
/// outbound traffic and publishes ports on the host's addresses; `routed` forwards the
/// sandboxes' own addresses unchanged (the host's neighbours route to them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayMode {
    #[default]
    Nat,
    Routed,
}

impl GatewayMode {
    pub fn name(self) -> &'static str {
        match self {
            GatewayMode::Nat => "nat",
            GatewayMode::Routed => "routed",
        }
    }

    /// Skipped when serializing, so records of networks without a mode stay as they were.
    pub fn is_nat(&self) -> bool {
        *self == GatewayMode::Nat
    }
}

impl std::str::FromStr for GatewayMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nat" => Ok(GatewayMode::Nat),
            "routed" => Ok(GatewayMode::Routed),
            other => Err(format!("unknown gateway mode {other}")),
        }
    }
}

/// An overlay network's VXLAN on this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayLink {
    /// VXLAN network identifier, the same on every host.
    pub vni: u32,
    /// This host's underlay address (`--cluster-advertise`) the device sends from.
    pub local: Ipv4Addr,
}

impl Network {
    /// The bridge's gateway address with the subnet's prefix.
    pub fn gateway_cidr(&self) -> IpNetwork {
        IpNetwork::V4(Ipv4Network::new(self.gateway, self.subnet.prefix()).expect("prefix of a valid subnet"))
    }

    pub fn gateway_v6_cidr(&self) -> Option<IpNetwork> {
        let (subnet, gateway) = (self.subnet_v6?, self.gateway_v6?);
        Ipv6Network::new(gateway, subnet.prefix()).ok().map(IpNetwork::V6)
    }

    /// Whether sandboxes of the network get IPv6 addresses.
    pub fn has_ipv6(&self) -> bool {
        self.subnet_v6.is_some()
    }

    /// Whether outbound traffic of the network is masqueraded.
    pub fn masquerades(&self) -> bool {
        self.ip_masq && !self.internal
    }
}

/// What a hostbridge network's parent NIC had before natd enslaved it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentState {
    pub parent: String,
    pub addresses: Vec<IpNetwork>,
    pub routes: Vec<SavedRoute>,
}

/// A route through the parent NIC: destination, gateway, metric, protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRoute(pub IpNetwork, pub Option<IpAddr>, pub Option<u32>, pub u8);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode", content = "target")]
pub enum NetworkMode {
    /// Attached to the default network or a user-defined one.
    Bridge,
    None,
    Host,
    Container(String),
}

/// One interface of a sandbox on one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub network: String,
    /// The veth end in natd's namespace, enslaved to the network's bridge.
    pub host_ifname: String,
    /// The name inside the sandbox: eth0, eth1, ...
    pub ifname: String,
    pub ipv4: Ipv4Addr,
    pub prefix_len: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default)]
    pub prefix_len_v6: u8,
    pub mac: String,
    /// Default route of this endpoint when it differs from the network's (`IP/PREFIX@GW`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
}

impl Endpoint {
    pub fn ipv4_cidr(&self) -> Option<IpNetwork> {
        Ipv4Network::new(self.ipv4, self.prefix_len)
            .ok()
            .map(IpNetwork::V4)
    }

    pub fn ipv6_cidr(&self) -> Option<IpNetwork> {
        Ipv6Network::new(self.ipv6?, self.prefix_len_v6)
            .ok()
            .map(IpNetwork::V6)
    }
}

/// A published port after allocation: one host port to one container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// None: every address of the host (0.0.0.0).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
    /// Sequential, from the counter sandbox and network ids come from, given when the
    /// mapping is made and kept with it (0: not given yet; records of natd before ids
    /// get theirs at start). Its statistics and its flows' entries name it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u32,
}

fn is_zero(id: &u32) -> bool {
    *id == 0
}

impl PortMapping {
    pub fn host_display(&self) -> String {
        format!("{}:{}", display_host_ip(self.host_ip), self.host_port)
    }
}

/// A host address as Docker shows it in port bindings: `0.0.0.0`, `[::1]`, `10.0.0.1`.
pub fn display_host_ip(ip: Option<IpAddr>) -> String {
    match ip {
        None => "0.0.0.0".into(),
        Some(IpAddr::V6(v6)) => format!("[{v6}]"),
        Some(v4) => v4.to_string(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: u32,
    pub name: String,
    pub mode: NetworkMode,
    /// Path of the network namespace (None in host mode: natd's own namespace).
    pub netns: Option<String>,
    /// natd created the namespace and deletes it with the sandbox.
    pub netns_owned: bool,
    /// The cookie of the namespace when the sandbox got it (SO_NETNS_COOKIE: never reused,
    /// unlike nsfs inode numbers): a path that later names another namespace (deleted and
    /// made again under the same name) is never re-wired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_cookie: Option<u64>,
    /// Name under /etc/netns whose files are bind-mounted over /etc inside the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etc_name: Option<String>,
    pub endpoints: Vec<Endpoint>,
    pub dns: Vec<IpAddr>,
    pub mtu: Option<u32>,
    pub publish: Vec<PublishSpec>,
    pub publish_all: bool,
    pub expose: Vec<ExposeSpec>,
    pub ports: Vec<PortMapping>,
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Start time of `pid` (clock ticks since boot), to never signal a recycled pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    pub created: u64,
    /// Set when a container runtime made this sandbox through the CNI plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniAttachment>,
}

/// A CNI attachment: what the runtime knows the sandbox by. The runtime owns its namespace:
/// when that namespace is gone, natd's reconcile removes the sandbox (a DEL natd missed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachment {
    pub container_id: String,
    pub ifname: String,
    /// The CNI network (the conflist's `name`), for GC.
    pub network: String,
    /// natd gave the container its default route through this attachment: the first of a
    /// container's attachments does; more (`podman network connect`) only add an interface.
    #[serde(default = "default_true")]
    pub default_route: bool,
}

fn default_true() -> bool {
    true
}

impl Sandbox {
    /// Whether the sandbox has a namespace of its own (not host mode, not another's).
    pub fn has_own_netns(&self) -> bool {
        self.netns.is_some() && !matches!(self.mode, NetworkMode::Container(_) | NetworkMode::Host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_modes_parse_and_persist() {
        assert_eq!("routed".parse::<GatewayMode>(), Ok(GatewayMode::Routed));
        assert_eq!("nat".parse::<GatewayMode>(), Ok(GatewayMode::Nat));
        assert_eq!(
            "bogus".parse::<GatewayMode>().unwrap_err(),
            "unknown gateway mode bogus"
        );
        let mut network: Network = serde_json::from_str(NETWORK_V0).unwrap();
        network.gateway_mode_v6 = GatewayMode::Routed;
        let text = serde_json::to_string(&network).unwrap();
        assert!(text.contains(r#""gateway_mode_v6":"routed""#), "{text}");
        assert!(!text.contains("gateway_mode_v4"), "{text}");
        let again: Network = serde_json::from_str(&text).unwrap();
        assert_eq!(again, network);
    }

    #[test]
    fn an_unspecified_host_address_shows_as_docker_shows_it() {
        assert_eq!(display_host_ip(None), "0.0.0.0");
        assert_eq!(display_host_ip(Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED))), "[::]");
        assert_eq!(
            display_host_ip(Some("2001:db8::1".parse().unwrap())),
            "[2001:db8::1]"
        );
    }

    /// Records exactly as natd 0.1 (untyped subnets) wrote them into natd.redb.
    const NETWORK_V0: &str = r#"{"id":7,"name":"lan","driver":"hostbridge","bridge":"br0","bridge_adopted":false,"subnet":"192.0.2.0/24","gateway":"192.0.2.1","ip_range":"192.0.2.128/25","subnet_v6":"2001:db8::/64","gateway_v6":"2001:db8::1","internal":false,"icc":true,"ip_masq":false,"mtu":1500,"default":false,"created":1764300000,"parent":{"parent":"eth1","addresses":["192.0.2.10/24","2001:db8::10/64"],"routes":[["0.0.0.0/0","192.0.2.1",100,4],["198.51.100.0/24",null,null,3]]}}"#;
    const SANDBOX_V0: &str = r#"{"id":9,"name":"web","mode":{"mode":"bridge"},"netns":"/run/netns/natd-sbx-web","netns_owned":true,"etc_name":"natd-sbx-web","endpoints":[{"network":"bridge","host_ifname":"natdva","ifname":"eth0","ipv4":"172.18.0.2","prefix_len":16,"prefix_len_v6":0,"mac":"02:42:ac:12:00:02"}],"dns":["192.0.2.53"],"mtu":null,"publish":[{"host_ip":null,"host_ports":{"first":8080,"last":8080},"container_ports":{"first":80,"last":80},"proto":"tcp"}],"publish_all":false,"expose":[],"ports":[{"host_ip":null,"host_port":8080,"container_port":80,"proto":"tcp"}],"command":["busybox","httpd"],"pid":4242,"pid_start":1000,"log":"/var/lib/natd/logs/web.log","created":1764300001}"#;

    #[test]
    fn reads_records_written_by_earlier_natd() {
        let network: Network = serde_json::from_str(NETWORK_V0).expect("network record");
        assert_eq!(network.subnet, "192.0.2.0/24".parse::<Ipv4Network>().unwrap());
        assert_eq!(network.ip_range.unwrap().to_string(), "192.0.2.128/25");
        assert_eq!(network.subnet_v6.unwrap().to_string(), "2001:db8::/64");
        let parent = network.parent.as_ref().unwrap();
        assert_eq!(parent.addresses.len(), 2);
        assert_eq!(parent.routes[0].1, Some("192.0.2.1".parse().unwrap()));
        // And writes them back in the same shape.
        let again: serde_json::Value = serde_json::to_value(&network).unwrap();
        let before: serde_json::Value = serde_json::from_str(NETWORK_V0).unwrap();
        assert_eq!(again, before);

        let sandbox: Sandbox = serde_json::from_str(SANDBOX_V0).expect("sandbox record");
        assert_eq!(sandbox.ports[0].host_display(), "0.0.0.0:8080");
        assert_eq!(network.gateway_mode_v4, GatewayMode::Nat);
        assert_eq!(network.gateway_mode_v6, GatewayMode::Nat);
        let again: serde_json::Value = serde_json::to_value(&sandbox).unwrap();
        let before: serde_json::Value = serde_json::from_str(SANDBOX_V0).unwrap();
        assert_eq!(again, before);
    }
}
