//! The HTTP/JSON API between natctl and natd: request and response bodies, and the
//! records natd persists (a sandbox or network is returned as it is stored).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::portspec::{Proto, PublishSpec};

pub const API_PREFIX: &str = "/v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Bridge,
    /// Sandboxes on the host's LAN through a bridge holding the host's NIC (pipework).
    HostBridge,
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
    pub subnet: String,
    /// Address of the bridge.
    pub gateway: Ipv4Addr,
    /// Default route of sandboxes when it differs from the bridge address (--default-gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_v6: Option<String>,
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
    pub created: u64,
    /// hostbridge: the NIC natd put into the bridge and what it had before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::hostbridge::ParentState>,
}

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

/// A published port after allocation: one host port to one container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// None: every address of the host (0.0.0.0).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl PortMapping {
    pub fn host_display(&self) -> String {
        match self.host_ip {
            None => format!("0.0.0.0:{}", self.host_port),
            Some(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.host_port),
            Some(ip) => format!("{ip}:{}", self.host_port),
        }
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
    /// Name under /etc/netns whose files are bind-mounted over /etc inside the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etc_name: Option<String>,
    pub endpoints: Vec<Endpoint>,
    pub dns: Vec<IpAddr>,
    pub mtu: Option<u32>,
    pub publish: Vec<PublishSpec>,
    pub publish_all: bool,
    pub expose: Vec<crate::portspec::ExposeSpec>,
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
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NetworkCreate {
    pub name: String,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub ip_range: Option<String>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub icc: Option<bool>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// `--opt KEY=VALUE`; natd knows `bridge-name` (Docker's com.docker.network.bridge.name too).
    #[serde(default)]
    pub options: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunRequest {
    pub name: String,
    /// bridge | none | host | container:NAME | a network name.
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub publish_all: bool,
    #[serde(default)]
    pub expose: Vec<String>,
    #[serde(default)]
    pub netns: Option<String>,
    #[serde(default)]
    pub command: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnectRequest {
    pub sandbox: String,
    #[serde(default)]
    pub ip: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkView {
    #[serde(flatten)]
    pub network: Network,
    /// Sandboxes attached, with their addresses.
    pub sandboxes: Vec<AttachedSandbox>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachedSandbox {
    pub name: String,
    pub ipv4: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    pub mac: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxView {
    #[serde(flatten)]
    pub sandbox: Sandbox,
    /// running | exited | none (no command) | unknown.
    pub status: String,
    /// Namespace to enter for `natctl exec` (natd's own for host mode and resolved for container:).
    pub enter_netns: String,
    /// /etc/netns/<name> to bind over /etc when entering, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enter_etc: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InfoResponse {
    pub version: String,
    pub kernel: String,
    pub dataplane: String,
    pub dataplane_detail: serde_json::Value,
    pub networks: usize,
    pub sandboxes: usize,
    pub running: usize,
    pub port_mappings: usize,
    pub uplinks: Vec<String>,
    pub default_bridge: String,
    pub name_prefix: String,
    pub state_dir: String,
    pub last_reconcile: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

/// `GET /v1/stats`: what the dataplane counted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatsView {
    pub dataplane: String,
    /// Every counter of the dataplane, by name (drops are the `drop_*` ones).
    pub counters: std::collections::BTreeMap<String, u64>,
    pub mappings: Vec<MappingStatsView>,
    /// Map name -> (entries, capacity).
    pub maps: std::collections::BTreeMap<String, (usize, u32)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MappingStatsView {
    pub sandbox: String,
    pub mapping: String,
    pub mapping_id: u32,
    pub packets: u64,
    pub bytes: u64,
}
