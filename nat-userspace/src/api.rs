//! The HTTP/JSON API between natctl and natd: its paths (used by the server's router and
//! by the client) and the request and response bodies. A sandbox or network is returned as
//! it is stored (`model`), with a view of what is live.
use serde::{Deserialize, Serialize};

use crate::model::{CniAttachment, Network, Sandbox};

/// The version of the API this natd speaks and this natctl expects, in the response
/// header `API_VERSION_HEADER` of every answer (Docker's `Api-Version`) and in `info`.
/// Within `/v1` requests and responses change only additively: new fields are optional,
/// and every earlier shape of a request is still accepted (`subnet` as one string, 1.0),
/// so an older natctl keeps working against a newer natd. History:
/// - 1.0: natd before it reported a version.
/// - 1.1: the version header and `info.api_version`; `subnet` and `gateway` may be lists.
/// - 1.2: conntrack flows carry `expires_s` and their masquerade `mapping`.
pub const API_VERSION: &str = "1.2";
pub const API_VERSION_HEADER: &str = "natd-api-version";

/// Every path of the API. Parameterised paths come as a route pattern (axum's `{name}`
/// syntax) for the server and a function for the client.
pub mod paths {
    pub const INFO: &str = "/v1/info";
    pub const NETWORKS: &str = "/v1/networks";
    pub const NETWORK: &str = "/v1/networks/{name}";
    pub const NETWORK_CONNECT: &str = "/v1/networks/{name}/connect";
    pub const NETWORK_DISCONNECT: &str = "/v1/networks/{name}/disconnect";
    pub const SANDBOXES: &str = "/v1/sandboxes";
    pub const SANDBOX: &str = "/v1/sandboxes/{name}";
    /// POST publishes more ports of a running sandbox, DELETE withdraws some.
    pub const SANDBOX_PORTS: &str = "/v1/sandboxes/{name}/ports";
    pub const RECONCILE: &str = "/v1/reconcile";
    pub const STATS: &str = "/v1/stats";
    pub const CONNTRACK: &str = "/v1/conntrack";
    /// Only in builds with the `failpoints` feature (tests).
    pub const FAILPOINTS: &str = "/v1/debug/failpoints";

    /// `pattern` with its `{name}` filled in (names are validated to need no escaping).
    pub fn with_name(pattern: &str, name: &str) -> String {
        pattern.replace("{name}", name)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NetworkCreate {
    pub name: String,
    #[serde(default)]
    pub driver: Option<String>,
    /// `--subnet`, at most one per address family (one string from earlier natctl).
    #[serde(default, deserialize_with = "one_or_many")]
    pub subnet: Vec<String>,
    /// `--gateway`, matched to the subnets by address family.
    #[serde(default, deserialize_with = "one_or_many")]
    pub gateway: Vec<String>,
    /// `--ipv6`: sandboxes get IPv6 addresses too (from the IPv6 `--subnet`, or from a /64
    /// of the host's unique-local pool).
    #[serde(default)]
    pub ipv6: bool,
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
    /// `--ip6`: a static IPv6 address on a network with a user-configured IPv6 subnet.
    #[serde(default)]
    pub ip6: Option<String>,
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
    /// `--replace-default-route`: an adopted namespace that has a default route already
    /// gets natd's instead (without it such a namespace is refused).
    #[serde(default)]
    pub replace_default_route: bool,
    /// Name of the interface inside the sandbox (default eth0).
    #[serde(default)]
    pub ifname: Option<String>,
    /// A CNI attachment (natd-cni): the runtime owns the namespace. Its published ports
    /// (hostPort) are refused on a port a host process listens on, as natctl's are, unless
    /// `host_port_over_listener` (natd-cni's `"hostPortOverListener": true`).
    #[serde(default)]
    pub cni: Option<CniAttachment>,
    #[serde(default)]
    pub host_port_over_listener: bool,
    #[serde(default)]
    pub command: Vec<String>,
}

/// `natctl port add|rm`: `-p` specs to publish, or `[IP:]PORT[-PORT][/PROTO]` to withdraw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PortsRequest {
    pub ports: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnectRequest {
    pub sandbox: String,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub ip6: Option<String>,
}

/// A list field that earlier clients sent as a single string (or null).
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(OneOrMany::One(text)) => vec![text],
        Some(OneOrMany::Many(list)) => list,
    })
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkView {
    #[serde(flatten)]
    pub network: Network,
    /// Sandboxes attached, with their addresses.
    pub sandboxes: Vec<AttachedSandbox>,
    /// Whether sandboxes get IPv6 addresses (Docker's EnableIPv6).
    #[serde(default)]
    pub enable_ipv6: bool,
    /// Driver options in Docker's names (the gateway modes of a bridge network).
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachedSandbox {
    pub name: String,
    pub ipv4: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    pub mac: String,
    /// overlay: the host the sandbox runs on, when it is another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxView {
    #[serde(flatten)]
    pub sandbox: Sandbox,
    /// created (no command) | running | exited.
    pub status: String,
    /// Namespace to enter for `natctl exec` (natd's own for host mode and resolved for container:).
    pub enter_netns: String,
    /// /etc/netns/<name> to bind over /etc when entering, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enter_etc: Option<String>,
    /// Published ports (`HOST:PORT` as `port` shows them) that answer nowhere now: bound
    /// to an address the host no longer has. They answer again when it comes back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inactive_ports: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InfoResponse {
    pub version: String,
    /// `API_VERSION` (absent from natd before 1.1).
    #[serde(default)]
    pub api_version: String,
    pub kernel: String,
    pub dataplane: String,
    pub dataplane_detail: serde_json::Value,
    /// Whether flows bypass the host, and if not why.
    #[serde(default)]
    pub fast_path: String,
    pub networks: usize,
    pub sandboxes: usize,
    pub running: usize,
    pub port_mappings: usize,
    pub uplinks: Vec<String>,
    pub default_bridge: String,
    pub name_prefix: String,
    pub state_dir: String,
    pub last_reconcile: Vec<String>,
    /// Membership of a cluster (`--cluster-store`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub store: String,
    pub host_id: String,
    pub advertise: String,
    /// The last list of the store succeeded.
    pub reachable: bool,
    /// Live hosts (names) as this host last saw them.
    pub hosts: Vec<String>,
    pub overlay_networks: usize,
    /// Records of the store natd does not apply: "key: why".
    #[serde(default)]
    pub rejected_records: Vec<String>,
    /// VXLAN the underlay filter dropped (None: no filter on this host yet).
    #[serde(default)]
    pub underlay_drops: Option<UnderlayDrops>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnderlayDrops {
    /// Frames for natd's VNIs from an address that is no live member's.
    pub non_member: u64,
    /// Frames from a member that carry none of that member's sandboxes.
    pub spoofed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_create_takes_one_subnet_or_several() {
        let old: NetworkCreate =
            serde_json::from_str(r#"{"name":"n","subnet":"10.1.0.0/24","gateway":null}"#).unwrap();
        assert_eq!(old.subnet, ["10.1.0.0/24"]);
        assert!(old.gateway.is_empty() && !old.ipv6);
        let new: NetworkCreate =
            serde_json::from_str(r#"{"name":"n","subnet":["10.1.0.0/24","2001:db8::/64"],"ipv6":true}"#)
                .unwrap();
        assert_eq!(new.subnet.len(), 2);
        assert!(new.ipv6);
    }
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
    /// Map name -> kernel memory charged for it, bytes (eBPF dataplane; absent from
    /// natd before 0.3).
    #[serde(default)]
    pub map_memory: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MappingStatsView {
    pub sandbox: String,
    pub mapping: String,
    pub mapping_id: u32,
    pub packets: u64,
    pub bytes: u64,
}

/// `POST /v1/debug/failpoints` (builds with the `failpoints` feature): configure a fail
/// point as the `fail` crate understands it, e.g. `{"name": "rollback-record",
/// "actions": "2*off->return"}`; `"actions": "off"` removes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailpointRequest {
    pub name: String,
    pub actions: String,
}
