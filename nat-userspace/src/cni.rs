//! The CNI protocol as natd-cni speaks it (spec 1.1, answering 0.3.0 to 1.1.0 requests in
//! the version asked for): the network configuration read on stdin, the result and error
//! objects written on stdout, and how an attachment maps onto a natd sandbox.
use std::{net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Versions natd-cni answers in. 0.1/0.2 results have another shape (`ip4`/`ip6`) that no
/// runtime of today asks for.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const DEFAULT_NETWORK: &str = "bridge";

/// The spec's error codes (section "Error"), those natd-cni uses.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific (100 and up): natd refused or failed the request.
    pub const NATD_REFUSED: u32 = 100;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn to_json(&self, version: &str) -> Value {
        let mut out = json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            out["details"] = Value::String(self.details.clone());
        }
        out
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

/// The plugin's configuration (its object in the conflist plus what the runtime injects).
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// natd's API socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The natd network to attach to.
    #[serde(default)]
    pub network: Option<String>,
    /// Lines about every call are appended here (runtimes drop a plugin's stderr).
    #[serde(rename = "logFile", default)]
    pub log_file: Option<PathBuf>,
    #[serde(default)]
    pub dns: Option<Dns>,
    /// `"hostPortOverListener": true`: a hostPort a process of the host listens on is
    /// published anyway (the pod then takes that port's traffic from the process). Off by
    /// default: a pod must not shadow sshd or the kubelet.
    #[serde(rename = "hostPortOverListener", default)]
    pub host_port_over_listener: bool,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: RuntimeConfig,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<AttachmentRef>>,
    /// The name spec 1.1.0 as tagged gave the GC list (fixed later; libcni sends both).
    #[serde(rename = "cni.dev/attachments", default)]
    pub attachments: Option<Vec<AttachmentRef>>,
}

impl NetConf {
    pub fn network(&self) -> &str {
        self.network.as_deref().unwrap_or(DEFAULT_NETWORK)
    }

    /// GC's list of attachments to keep.
    pub fn keep_list(&self) -> Option<&[AttachmentRef]> {
        self.valid_attachments.as_deref().or(self.attachments.as_deref())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    #[serde(rename = "portMappings", default)]
    pub port_mappings: Vec<PortMapping>,
}

/// One entry of the `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort", default)]
    pub host_port: i64,
    #[serde(rename = "containerPort")]
    pub container_port: i64,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(rename = "hostIP", default)]
    pub host_ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AttachmentRef {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Whether `version` is one natd-cni answers in.
pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(
            CniError::new(code::INCOMPATIBLE_VERSION, "incompatible CNI versions").with_details(format!(
                "config is {version:?}, natd-cni supports {SUPPORTED_VERSIONS:?}"
            )),
        )
    }
}

/// `version` >= `minimum` (both dotted numbers).
pub fn version_at_least(version: &str, minimum: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(version) >= parse(minimum)
}

/// `-p` specs natd understands, one per mapping. A host port of 0 is refused as the
/// reference portmap plugin refuses it: a port natd picked could not be reported back
/// through a CNI result, and podman already picks one itself before calling the plugin.
pub fn publish_specs(mappings: &[PortMapping]) -> Result<Vec<String>, CniError> {
    mappings
        .iter()
        .map(|m| {
            let proto = m.protocol.as_deref().unwrap_or("tcp").to_ascii_lowercase();
            if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
                return Err(invalid_mapping(m, format!("unknown protocol {proto:?}")));
            }
            if !(1..=65535).contains(&m.container_port) {
                return Err(invalid_mapping(
                    m,
                    format!("invalid container port {}", m.container_port),
                ));
            }
            if !(1..=65535).contains(&m.host_port) {
                return Err(invalid_mapping(
                    m,
                    format!(
                        "invalid host port {} (natd-cni needs an explicit hostPort: a port chosen by natd \
                         could not be reported back to the runtime)",
                        m.host_port
                    ),
                ));
            }
            let host_ip = match m.host_ip.as_deref().filter(|ip| !ip.is_empty()) {
                None => String::new(),
                Some(text) => match text.parse::<IpAddr>() {
                    Ok(IpAddr::V4(ip)) => format!("{ip}:"),
                    Ok(IpAddr::V6(ip)) => format!("[{ip}]:"),
                    Err(_) => return Err(invalid_mapping(m, format!("invalid hostIP {text:?}"))),
                },
            };
            Ok(format!("{host_ip}{}:{}/{proto}", m.host_port, m.container_port))
        })
        .collect()
}

fn invalid_mapping(m: &PortMapping, why: String) -> CniError {
    CniError::new(code::INVALID_CONFIG, "invalid port mapping").with_details(format!("{m:?}: {why}"))
}

/// natd's sandbox name for (container id, interface): readable (the id's start) and
/// unique (a hash of both), within natd's 64-character name rule.
pub fn sandbox_name(container_id: &str, ifname: &str) -> String {
    let hash = crate::stable_hash(container_id.bytes().chain([0]).chain(ifname.bytes()));
    let readable: String = container_id
        .chars()
        .take(24)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("cni-{readable}-{hash:016x}")
}

/// A CNI result, built in the 1.x shape and written in the version asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// The namespace path for the container's interface, None for host interfaces.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IpConfig {
    /// CIDR notation.
    pub address: ipnetwork::IpNetwork,
    pub gateway: Option<IpAddr>,
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub dst: ipnetwork::IpNetwork,
    pub gw: Option<IpAddr>,
}

impl CniResult {
    /// 1.0.0 and 1.1.0 share a shape; 0.3.x and 0.4.0 carry `version` in each IP and know
    /// no interface MTU.
    pub fn to_json(&self, version: &str) -> Value {
        let legacy = !version_at_least(version, "1.0.0");
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut v = json!({ "name": i.name });
                if let Some(mac) = &i.mac {
                    v["mac"] = json!(mac);
                }
                if let (Some(mtu), false) = (i.mtu, legacy) {
                    v["mtu"] = json!(mtu);
                }
                if let Some(sandbox) = &i.sandbox {
                    v["sandbox"] = json!(sandbox);
                }
                v
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = json!({ "address": ip.address.to_string() });
                if legacy {
                    v["version"] = json!(if ip.address.is_ipv4() { "4" } else { "6" });
                }
                if let Some(gw) = ip.gateway {
                    v["gateway"] = json!(gw.to_string());
                }
                if let Some(index) = ip.interface {
                    v["interface"] = json!(index);
                }
                v
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut v = json!({ "dst": r.dst.to_string() });
                if let Some(gw) = r.gw {
                    v["gw"] = json!(gw.to_string());
                }
                v
            })
            .collect();
        json!({
            "cniVersion": version,
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": self.dns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(host: i64, container: i64, proto: &str, ip: Option<&str>) -> PortMapping {
        PortMapping {
            host_port: host,
            container_port: container,
            protocol: Some(proto.into()),
            host_ip: ip.map(Into::into),
        }
    }

    #[test]
    fn port_mappings_become_publish_specs() {
        let specs = publish_specs(&[
            mapping(8080, 80, "tcp", None),
            mapping(5353, 53, "UDP", Some("127.0.0.1")),
            mapping(9000, 90, "tcp", Some("")),
        ])
        .unwrap();
        assert_eq!(specs, ["8080:80/tcp", "127.0.0.1:5353:53/udp", "9000:90/tcp"]);
        let zero = publish_specs(&[mapping(0, 80, "tcp", None)]).unwrap_err();
        assert_eq!(zero.code, code::INVALID_CONFIG);
        assert!(zero.details.contains("invalid host port 0"), "{zero}");
        assert!(publish_specs(&[mapping(80, 80, "icmp", None)]).is_err());
        assert!(publish_specs(&[mapping(80, 80, "tcp", Some("nonsense"))]).is_err());
    }

    #[test]
    fn sandbox_names_are_valid_unique_and_stable() {
        let id = "9bda406675c1a7b3f0c5e1d2c3b4a5968778695a4b3c2d1e0f9e8d7c6b5a4938";
        let a = sandbox_name(id, "eth0");
        assert_eq!(a, sandbox_name(id, "eth0"));
        assert_ne!(a, sandbox_name(id, "eth1"));
        assert!(
            a.starts_with("cni-9bda406675c1a7b3f0c5e1d2-") && a.len() <= 64,
            "{a}"
        );
        assert!(sandbox_name("a/b c", "eth0").starts_with("cni-a_b_c-"));
    }

    #[test]
    fn results_follow_the_requested_version() {
        let result = CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("02:00:00:00:00:01".into()),
                mtu: Some(1500),
                sandbox: Some("/run/netns/x".into()),
            }],
            ips: vec![IpConfig {
                address: "172.18.0.2/16".parse().unwrap(),
                gateway: Some("172.18.0.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("172.18.0.1".parse().unwrap()),
            }],
            dns: Dns::default(),
        };
        let new = result.to_json("1.1.0");
        assert_eq!(new["cniVersion"], "1.1.0");
        assert_eq!(new["interfaces"][0]["mtu"], 1500);
        assert!(new["ips"][0].get("version").is_none());
        let old = result.to_json("0.4.0");
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][0].get("mtu").is_none());
        assert_eq!(old["routes"][0]["gw"], "172.18.0.1");
    }

    #[test]
    fn versions_are_checked_and_compared() {
        assert!(check_version("1.1.0").is_ok() && check_version("0.4.0").is_ok());
        assert_eq!(
            check_version("0.2.0").unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        assert!(version_at_least("1.1.0", "1.1.0") && !version_at_least("1.0.0", "1.1.0"));
        assert!(version_at_least("0.4.0", "0.4.0") && !version_at_least("0.3.1", "0.4.0"));
    }

    #[test]
    fn the_gc_list_is_read_under_both_names() {
        let conf: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.1.0","name":"n","type":"natd-cni",
                "cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(conf.keep_list().unwrap()[0].container_id, "c1");
        assert_eq!(conf.network(), DEFAULT_NETWORK);
    }
}
