//! natd's settings: command-line flags, each also a key of a JSON config file (Docker's
//! daemon.json names where Docker has one). Flags win over the file, the file over defaults.
mod args;
pub mod checks;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

pub use args::DaemonArgs;
use args::{FileConfig, NumberOrString};
pub use checks::{
    parse_port_range, parse_v4_subnet, parse_v6_subnet, subnet_of, validate_ifname, validate_mtu,
};
use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Deserialize;

use crate::dataplane::CtTimeout;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("invalid {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneKind {
    Auto,
    Ebpf,
    Nftables,
    /// Plumbing only: no NAT, no isolation.
    None,
}

impl std::fmt::Display for DataplaneKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DataplaneKind::Auto => "auto",
            DataplaneKind::Ebpf => "ebpf",
            DataplaneKind::Nftables => "nftables",
            DataplaneKind::None => "none",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated settings natd runs with.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub bridge: String,
    /// Address of the bridge, with the default network's prefix length.
    pub bip: Ipv4Network,
    pub fixed_cidr: Option<Ipv4Network>,
    pub fixed_cidr_v6: Option<Ipv6Network>,
    /// The default network has IPv6: `--ipv6`, or `--fixed-cidr-v6` alone (which meant IPv6
    /// before `--ipv6` existed, and still does).
    pub ipv6: bool,
    pub mtu: u32,
    pub default_gateway: Option<Ipv4Addr>,
    pub default_gateway_v6: Option<Ipv6Addr>,
    pub dns: Vec<IpAddr>,
    pub icc: bool,
    pub ip_masq: bool,
    pub uplinks: Vec<String>,
    pub dataplane: DataplaneKind,
    pub name_prefix: String,
    pub port_range: Option<(u16, u16)>,
    pub masquerade_port_range: Option<(u16, u16)>,
    /// `--masquerade-ports`: networks without their own choice use it.
    pub masquerade_ports: crate::model::PortAssignment,
    /// `--masquerade-refresh-inbound`.
    pub masquerade_refresh_inbound: bool,
    pub conntrack_max: u32,
    /// Capacity of the embryonic-flow table.
    pub conntrack_embryonic_max: u32,
    /// Published mappings natd allows (`--max-published-ports`).
    pub max_published_ports: u32,
    /// Capacity of the masquerade tables, per family (`--masquerade-max`).
    pub masquerade_max: u32,
    /// Percentage of each connection table one source address may hold (0: no quota).
    pub conntrack_source_share: u32,
    /// Docker 28.2's allow-direct-routing.
    pub allow_direct_routing: bool,
    pub fast_path: bool,
    /// (kind, seconds) overrides of the connection-tracking timeouts.
    pub conntrack_timeouts: Vec<(CtTimeout, u64)>,
    pub gc_interval: u64,
    pub log_format: LogFormat,
    /// Where Prometheus metrics are served (None: not at all).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Published ports with series of their own in /metrics (the busiest by packets).
    pub metrics_port_series: usize,
    /// Overlay networks' cluster store (None: overlay networks are refused).
    pub cluster: Option<ClusterConfig>,
}

/// `--cluster-store`, `--cluster-advertise`, `--cluster-ttl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd client endpoints, HOST:PORT.
    pub endpoints: Vec<String>,
    /// An interface name or an address.
    pub advertise: String,
    pub ttl: u64,
    /// Seconds after which a vanished host's address claims are released.
    pub claim_grace: u64,
    /// `kv.cacertfile`, `kv.certfile`, `kv.keyfile`: TLS to the store.
    pub tls: Option<StoreTls>,
    /// `kv.username`, `kv.passwordfile`: etcd authentication.
    pub auth: Option<StoreAuth>,
}

/// The store's TLS files, read and checked when natd starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreTls {
    pub ca_pem: Vec<u8>,
    /// Client certificate and key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct StoreAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for StoreAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreAuth").field("username", &self.username).finish_non_exhaustive()
    }
}

pub const DEFAULT_CLUSTER_TTL: u64 = 20;
pub const DEFAULT_CLAIM_GRACE: u64 = 86_400;

pub const DEFAULT_SOCKET: &str = "/run/natd/natd.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/natd";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/natd";
pub const DEFAULT_BRIDGE: &str = "natd0";
pub const DEFAULT_BIP: &str = "172.18.0.1/16";
pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_PREFIX: &str = "natd";

impl DaemonConfig {
    /// Flows one source address may hold: (embryonic, promoted UDP/ICMP). A table of N
    /// entries holds N/2 flows; 0 means no quota.
    pub fn source_quotas(&self) -> (u32, u32) {
        let share = |entries: u32| {
            if self.conntrack_source_share == 0 {
                0
            } else {
                ((u64::from(entries) / 2 * u64::from(self.conntrack_source_share) / 100) as u32).max(16)
            }
        };
        (share(self.conntrack_embryonic_max), share(self.conntrack_max))
    }
}

impl DaemonConfig {
    pub fn load(args: &DaemonArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    /// Flags win over the file, the file over defaults; every value is checked.
    fn merge(args: &DaemonArgs, file: FileConfig) -> Result<Self, ConfigError> {
        let bip = checks::bip(&pick(&args.bip, file.bip).unwrap_or_else(|| DEFAULT_BIP.to_string()))?;
        let fixed_cidr_v6 = parsed(pick(&args.fixed_cidr_v6, file.fixed_cidr_v6), |t| {
            parse_v6_subnet("fixed-cidr-v6", t)
        })?;
        let name_prefix =
            pick(&args.name_prefix, file.name_prefix).unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        checks::validate_prefix(&name_prefix)?;
        let bridge = pick(&args.bridge, file.bridge).unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        validate_ifname(&bridge).map_err(|m| invalid("bridge", m))?;
        let uplinks = list(&args.uplink, file.uplink);
        for uplink in &uplinks {
            validate_ifname(uplink).map_err(|m| invalid("uplink", m))?;
        }
        let port_range = |key: &'static str| move |t: &str| parse_port_range(t).map_err(|m| invalid(key, m));
        let conntrack_max = args
            .conntrack_max
            .or(file.conntrack_max)
            .unwrap_or(nat_common::DEFAULT_CT_ENTRIES);
        if !(64..=16_777_216).contains(&conntrack_max) {
            return Err(invalid(
                "conntrack-max",
                format!("{conntrack_max} is out of range (64-16777216)"),
            ));
        }
        let conntrack_embryonic_max = args
            .conntrack_embryonic_max
            .or(file.conntrack_embryonic_max)
            .unwrap_or((conntrack_max / 4).max(1024));
        if !(64..=16_777_216).contains(&conntrack_embryonic_max) {
            return Err(invalid(
                "conntrack-embryonic-max",
                format!("{conntrack_embryonic_max} is out of range (64-16777216)"),
            ));
        }
        let max_published_ports = args
            .max_published_ports
            .or(file.max_published_ports)
            .unwrap_or(nat_common::MAX_PORT_MAPPINGS);
        let allowed = nat_common::MIN_PORT_MAPPINGS..=nat_common::MAX_PORT_MAPPINGS;
        if !allowed.contains(&max_published_ports) {
            return Err(invalid(
                "max-published-ports",
                format!("{max_published_ports} is out of range ({}-{})", allowed.start(), allowed.end()),
            ));
        }
        let masquerade_max = args
            .masquerade_max
            .or(file.masquerade_max)
            .unwrap_or(nat_common::MAX_SNAT_MAPPINGS);
        let allowed = nat_common::MIN_SNAT_MAPPINGS..=nat_common::MAX_SNAT_MAPPINGS_SET;
        if !allowed.contains(&masquerade_max) {
            return Err(invalid(
                "masquerade-max",
                format!("{masquerade_max} is out of range ({}-{})", allowed.start(), allowed.end()),
            ));
        }
        let conntrack_source_share = args
            .conntrack_source_share
            .or(file.conntrack_source_share)
            .unwrap_or(10);
        if conntrack_source_share > 100 {
            return Err(invalid(
                "conntrack-source-share",
                format!("{conntrack_source_share} is not a percentage (0-100)"),
            ));
        }
        let cluster = checks::cluster(
            pick(&args.cluster_store, file.cluster_store),
            pick(&args.cluster_advertise, file.cluster_advertise),
            args.cluster_ttl.or(file.cluster_ttl),
            args.cluster_claim_grace.or(file.cluster_claim_grace),
            checks::store_options(&args.cluster_store_opt, &file.cluster_store_opts)?,
        )?;
        let gc_interval = args.gc_interval.or(file.gc_interval).unwrap_or(5);
        if gc_interval == 0 {
            return Err(invalid("gc-interval", "must be at least 1 second"));
        }
        Ok(Self {
            socket: args
                .socket
                .clone()
                .or(file.socket)
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            state_dir: args
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            bpffs: args
                .bpffs
                .clone()
                .or(file.bpffs)
                .unwrap_or_else(|| DEFAULT_BPFFS.into()),
            bridge,
            bip,
            fixed_cidr: parsed(pick(&args.fixed_cidr, file.fixed_cidr), |t| {
                checks::fixed_cidr(t, bip)
            })?,
            fixed_cidr_v6,
            ipv6: args.ipv6 || file.ipv6.unwrap_or(false) || fixed_cidr_v6.is_some(),
            mtu: mtu(args.mtu, file.mtu)?,
            default_gateway: parsed(pick(&args.default_gateway, file.default_gateway), |t| {
                checks::default_gateway(t, bip)
            })?,
            default_gateway_v6: parsed(pick(&args.default_gateway_v6, file.default_gateway_v6), |t| {
                checks::default_gateway_v6(t, fixed_cidr_v6)
            })?,
            dns: list(&args.dns, file.dns)
                .iter()
                .map(|d| checks::dns_server(d))
                .collect::<Result<_, _>>()?,
            icc: args.icc.or(file.icc).unwrap_or(true),
            ip_masq: args.ip_masq.or(file.ip_masq).unwrap_or(true),
            uplinks,
            dataplane: args.dataplane.or(file.dataplane).unwrap_or(DataplaneKind::Auto),
            name_prefix,
            port_range: parsed(pick(&args.port_range, file.port_range), port_range("port-range"))?,
            masquerade_port_range: parsed(
                pick(&args.masquerade_port_range, file.masquerade_port_range),
                port_range("masquerade-port-range"),
            )?,
            masquerade_ports: args.masquerade_ports.or(file.masquerade_ports).unwrap_or_default(),
            masquerade_refresh_inbound: args
                .masquerade_refresh_inbound
                .or(file.masquerade_refresh_inbound)
                .unwrap_or(false),
            conntrack_max,
            conntrack_embryonic_max,
            max_published_ports,
            masquerade_max,
            conntrack_source_share,
            allow_direct_routing: args
                .allow_direct_routing
                .or(file.allow_direct_routing)
                .unwrap_or(false),
            fast_path: args.fast_path.or(file.fast_path).unwrap_or(true),
            conntrack_timeouts: list(&args.conntrack_timeout, file.conntrack_timeout)
                .iter()
                .map(|t| checks::conntrack_timeout(t))
                .collect::<Result<_, _>>()?,
            gc_interval,
            log_format: args.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
            metrics_addr: parsed(pick(&args.metrics_addr, file.metrics_addr), |t| {
                t.parse().map_err(|_| {
                    invalid(
                        "metrics-addr",
                        format!("{t:?} is not an ADDRESS:PORT (e.g. 127.0.0.1:9323)"),
                    )
                })
            })?,
            metrics_port_series: args
                .metrics_port_series
                .or(file.metrics_port_series)
                .unwrap_or(DEFAULT_METRICS_PORT_SERIES),
            cluster,
        })
    }
}

/// Published ports with series of their own in /metrics unless configured: enough for
/// the busiest of a host, bounded for a scraper whatever the host publishes.
pub const DEFAULT_METRICS_PORT_SERIES: usize = 1000;

/// The flag when given, else the file's value.
fn pick(flag: &Option<String>, from_file: Option<String>) -> Option<String> {
    flag.clone().or(from_file)
}

/// A repeatable flag when given at least once, else the file's list.
fn list(flag: &[String], from_file: Vec<String>) -> Vec<String> {
    if flag.is_empty() { from_file } else { flag.to_vec() }
}

/// An optional setting, checked when present.
fn parsed<T>(
    text: Option<String>,
    check: impl Fn(&str) -> Result<T, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    text.as_deref().map(check).transpose()
}

/// daemon.json examples write `"mtu": "1500"`; Docker itself wants a number. Take both.
fn mtu(flag: Option<u32>, from_file: Option<NumberOrString>) -> Result<u32, ConfigError> {
    let mtu = match (flag, from_file) {
        (Some(m), _) => m,
        (None, Some(NumberOrString::Number(m))) => m,
        (None, Some(NumberOrString::Text(s))) => s
            .trim()
            .parse()
            .map_err(|_| invalid("mtu", format!("{s} is not a number")))?,
        (None, None) => DEFAULT_MTU,
    };
    validate_mtu(mtu).map_err(|m| invalid("mtu", m))?;
    Ok(mtu)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn args(list: &[&str]) -> DaemonArgs {
        DaemonArgs::parse_from(std::iter::once("natd").chain(list.iter().copied()))
    }

    #[test]
    fn defaults() {
        let cfg = DaemonConfig::load(&args(&[])).unwrap();
        assert_eq!(cfg.bridge, "natd0");
        assert_eq!(cfg.bip.to_string(), "172.18.0.1/16");
        assert_eq!(cfg.mtu, 1500);
        assert!(cfg.icc && cfg.ip_masq);
        assert_eq!(cfg.dataplane, DataplaneKind::Auto);
    }

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("natd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("daemon.json");
        std::fs::write(
            &path,
            r#"{"bip": "192.168.1.5/24", "fixed-cidr": "192.168.1.128/25", "mtu": "1400",
                "default-gateway": "192.168.1.254", "dns": ["10.20.1.2", "10.20.1.3"],
                "fixed-cidr-v6": "2001:db8::/64", "icc": false}"#,
        )
        .unwrap();
        let cfg = DaemonConfig::load(&args(&["--config", path.to_str().unwrap(), "--mtu", "1450"])).unwrap();
        assert_eq!(cfg.mtu, 1450, "flag wins over file");
        assert_eq!(cfg.bip.to_string(), "192.168.1.5/24");
        assert_eq!(cfg.fixed_cidr.unwrap().to_string(), "192.168.1.128/25");
        assert_eq!(cfg.default_gateway, Some("192.168.1.254".parse().unwrap()));
        assert_eq!(cfg.dns.len(), 2);
        assert!(!cfg.icc);
        assert!(cfg.ipv6, "--fixed-cidr-v6 implies IPv6");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ipv6_from_the_flag_or_the_file() {
        assert!(!DaemonConfig::load(&args(&[])).unwrap().ipv6);
        let cfg = DaemonConfig::load(&args(&["--ipv6"])).unwrap();
        assert!(cfg.ipv6 && cfg.fixed_cidr_v6.is_none());
        let dir = std::env::temp_dir().join(format!("natd-cfg6-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("daemon.json");
        std::fs::write(&path, r#"{"ipv6": true}"#).unwrap();
        assert!(
            DaemonConfig::load(&args(&["--config", path.to_str().unwrap()]))
                .unwrap()
                .ipv6
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn seed_daemon_json_with_fixed_cidr_outside_bip_is_refused() {
        // The seed's example puts fixed-cidr 10.20.0.0/16 outside bip 192.168.1.5/24.
        let err = DaemonConfig::load(&args(&[
            "--bip",
            "192.168.1.5/24",
            "--fixed-cidr",
            "10.20.0.0/16",
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("not inside the bridge subnet"), "{err}");
    }

    #[test]
    fn cluster_settings() {
        let cfg = DaemonConfig::load(&args(&[
            "--cluster-store",
            "etcd://10.0.0.1:2379,10.0.0.2:2379",
            "--cluster-advertise",
            "eth1:2376",
        ]))
        .unwrap();
        let cluster = cfg.cluster.unwrap();
        assert_eq!(cluster.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(
            (cluster.advertise.as_str(), cluster.ttl),
            ("eth1", DEFAULT_CLUSTER_TTL)
        );
        assert!(DaemonConfig::load(&args(&[])).unwrap().cluster.is_none());
        for (flags, needle) in [
            (
                vec![
                    "--cluster-store",
                    "consul://h:8500",
                    "--cluster-advertise",
                    "eth0",
                ],
                "unsupported store",
            ),
            (
                vec!["--cluster-store", "etcd://h", "--cluster-advertise", "eth0"],
                "is not HOST:PORT",
            ),
            (vec!["--cluster-store", "etcd://h:2379"], "cluster-advertise"),
            (vec!["--cluster-advertise", "eth0"], "needs --cluster-store"),
            (
                vec![
                    "--cluster-store",
                    "etcd://h:2379",
                    "--cluster-advertise",
                    "[2001:db8::1]:2376",
                ],
                "IPv6 underlays are not supported",
            ),
            (
                vec![
                    "--cluster-store",
                    "etcd://h:2379",
                    "--cluster-advertise",
                    "eth0",
                    "--cluster-ttl",
                    "1",
                ],
                "cluster-ttl",
            ),
        ] {
            let err = DaemonConfig::load(&args(&flags)).unwrap_err().to_string();
            assert!(err.contains(needle), "{flags:?}: {err}");
        }
    }

    #[test]
    fn cluster_store_options() {
        let dir = std::env::temp_dir().join(format!("natd-store-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("ca.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        let password = dir.join("password");
        std::fs::write(&password, "secret\n").unwrap();
        let base = ["--cluster-store", "etcd://h:2379", "--cluster-advertise", "eth0"];
        let with = |opts: &[String]| {
            let mut flags: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            for opt in opts {
                flags.extend(["--cluster-store-opt".to_string(), opt.clone()]);
            }
            DaemonConfig::load(&args(&flags.iter().map(String::as_str).collect::<Vec<_>>()))
        };
        let ca = format!("kv.cacertfile={}", pem.display());
        let cluster = with(&[ca.clone(), "kv.username=natd".into(), format!("kv.passwordfile={}", password.display())])
            .unwrap()
            .cluster
            .unwrap();
        assert!(cluster.tls.is_some_and(|t| t.identity.is_none()));
        let auth = cluster.auth.unwrap();
        assert_eq!((auth.username.as_str(), auth.password.as_str()), ("natd", "secret"));
        assert!(!format!("{auth:?}").contains("secret"), "the password never reaches a log");
        for (opts, needle) in [
            (vec!["kv.path=/x".to_string()], "unknown option kv.path"),
            (vec!["kv.cacertfile".to_string()], "is not KEY=VALUE"),
            (vec![format!("kv.certfile={}", pem.display()), format!("kv.keyfile={}", pem.display())], "not a PEM private key"),
            (vec!["kv.username=natd".to_string()], "go together"),
            (vec!["kv.username=natd".to_string(), format!("kv.passwordfile={}", dir.join("missing").display())], "kv.passwordfile="),
        ] {
            let err = with(&opts).unwrap_err().to_string();
            assert!(err.contains(needle), "{opts:?}: {err}");
        }
        let err = DaemonConfig::load(&args(&["--cluster-store-opt", &ca])).unwrap_err().to_string();
        assert!(err.contains("needs --cluster-store"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_bad_values() {
        for (flags, needle) in [
            (vec!["--bip", "172.18.0.0/16"], "bridge address"),
            (vec!["--bip", "nonsense"], "bip"),
            (vec!["--fixed-cidr", "172.18.1.1/24"], "host bits"),
            (vec!["--mtu", "20"], "out of range"),
            (vec!["--default-gateway", "10.0.0.1"], "not in the bridge subnet"),
            (vec!["--dns", "dns.example"], "not an IP address"),
            (vec!["--name-prefix", "Way-too-long"], "name-prefix"),
            (vec!["--port-range", "9000-8000"], "FIRST <= LAST"),
        ] {
            let err = DaemonConfig::load(&args(&flags)).unwrap_err().to_string();
            assert!(err.contains(needle), "{flags:?}: {err}");
        }
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let path = std::env::temp_dir().join(format!("natd-cfg-bad-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"bridgee": "x"}"#).unwrap();
        let err = DaemonConfig::load(&args(&["--config", path.to_str().unwrap()])).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        std::fs::remove_file(path).unwrap();
    }
}
