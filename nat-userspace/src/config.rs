//! natd's settings: command-line flags, each also a key of a JSON config file (Docker's
//! daemon.json names where Docker has one). Flags win over the file, the file over defaults.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use clap::Parser;
use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Deserialize;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

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
    /// IPv6 subnet of the default network; sandboxes get an IPv6 address from it.
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
    /// Uplink interface (repeatable); default: the interface of the default route.
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
    /// Capacity of the connection table (two entries per flow).
    #[arg(long = "conntrack-max")]
    pub conntrack_max: Option<u32>,
    /// Idle timeout of tracked flows, KIND=SECONDS (repeatable); kinds: tcp-syn,
    /// tcp-established, tcp-closing, tcp-closed, udp, udp-replied, icmp.
    #[arg(long = "conntrack-timeout")]
    pub conntrack_timeout: Vec<String>,
    /// Seconds between connection-table sweeps (and address refreshes).
    #[arg(long = "gc-interval")]
    pub gc_interval: Option<u64>,
    #[arg(long = "log-format", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Remove everything natd owns (sandboxes, networks, pinned programs, state) and exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// The config file: same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    bpffs: Option<PathBuf>,
    bridge: Option<String>,
    bip: Option<String>,
    fixed_cidr: Option<String>,
    fixed_cidr_v6: Option<String>,
    mtu: Option<NumberOrString>,
    default_gateway: Option<String>,
    default_gateway_v6: Option<String>,
    #[serde(default)]
    dns: Vec<String>,
    icc: Option<bool>,
    ip_masq: Option<bool>,
    #[serde(default)]
    uplink: Vec<String>,
    dataplane: Option<DataplaneKind>,
    name_prefix: Option<String>,
    port_range: Option<String>,
    masquerade_port_range: Option<String>,
    conntrack_max: Option<u32>,
    #[serde(default)]
    conntrack_timeout: Vec<String>,
    gc_interval: Option<u64>,
    log_format: Option<LogFormat>,
}

/// daemon.json examples write `"mtu": "1500"`; Docker itself wants a number. Take both.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(u32),
    String(String),
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
    pub conntrack_max: u32,
    /// (kind, seconds) overrides of the connection-tracking timeouts.
    pub conntrack_timeouts: Vec<(String, u64)>,
    pub gc_interval: u64,
    pub log_format: LogFormat,
}

pub const CONNTRACK_TIMEOUT_KINDS: [&str; 7] = [
    "tcp-syn",
    "tcp-established",
    "tcp-closing",
    "tcp-closed",
    "udp",
    "udp-replied",
    "icmp",
];

pub const DEFAULT_SOCKET: &str = "/run/natd/natd.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/natd";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/natd";
pub const DEFAULT_BRIDGE: &str = "natd0";
pub const DEFAULT_BIP: &str = "172.18.0.1/16";
pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_PREFIX: &str = "natd";

impl DaemonConfig {
    pub fn load(args: &DaemonArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    fn merge(args: &DaemonArgs, file: FileConfig) -> Result<Self, ConfigError> {
        let pick = |flag: &Option<String>, from_file: Option<String>| flag.clone().or(from_file);
        let bip_text = pick(&args.bip, file.bip).unwrap_or_else(|| DEFAULT_BIP.to_string());
        let bip: Ipv4Network = bip_text
            .parse()
            .map_err(|e| invalid("bip", format!("{bip_text}: {e}")))?;
        if bip.ip() == bip.network() || bip.prefix() > 30 {
            return Err(invalid(
                "bip",
                format!("{bip_text}: give the bridge address with its prefix, e.g. 172.18.0.1/16"),
            ));
        }
        let fixed_cidr = match pick(&args.fixed_cidr, file.fixed_cidr) {
            None => None,
            Some(text) => {
                let net = parse_v4_subnet("fixed-cidr", &text)?;
                if !bip.contains(net.network()) || net.prefix() < bip.prefix() {
                    return Err(invalid(
                        "fixed-cidr",
                        format!("{text} is not inside the bridge subnet {}", subnet_of(bip)),
                    ));
                }
                Some(net)
            }
        };
        let fixed_cidr_v6 = match pick(&args.fixed_cidr_v6, file.fixed_cidr_v6) {
            None => None,
            Some(text) => Some(parse_v6_subnet("fixed-cidr-v6", &text)?),
        };
        let mtu = match (args.mtu, file.mtu) {
            (Some(m), _) => m,
            (None, Some(NumberOrString::Number(m))) => m,
            (None, Some(NumberOrString::String(s))) => s
                .trim()
                .parse()
                .map_err(|_| invalid("mtu", format!("{s} is not a number")))?,
            (None, None) => DEFAULT_MTU,
        };
        validate_mtu(mtu).map_err(|m| invalid("mtu", m))?;
        let default_gateway = match pick(&args.default_gateway, file.default_gateway) {
            None => None,
            Some(text) => {
                let ip: Ipv4Addr = text
                    .parse()
                    .map_err(|_| invalid("default-gateway", format!("{text} is not an IPv4 address")))?;
                if !bip.contains(ip) {
                    return Err(invalid(
                        "default-gateway",
                        format!("{ip} is not in the bridge subnet {}", subnet_of(bip)),
                    ));
                }
                Some(ip)
            }
        };
        let default_gateway_v6 = match pick(&args.default_gateway_v6, file.default_gateway_v6) {
            None => None,
            Some(text) => {
                let ip: Ipv6Addr = text
                    .parse()
                    .map_err(|_| invalid("default-gateway-v6", format!("{text} is not an IPv6 address")))?;
                if fixed_cidr_v6.is_none() {
                    return Err(invalid("default-gateway-v6", "needs fixed-cidr-v6"));
                }
                Some(ip)
            }
        };
        let dns_text = if args.dns.is_empty() {
            file.dns
        } else {
            args.dns.clone()
        };
        let dns = dns_text
            .iter()
            .map(|d| {
                d.parse::<IpAddr>()
                    .map_err(|_| invalid("dns", format!("{d} is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let name_prefix =
            pick(&args.name_prefix, file.name_prefix).unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        validate_prefix(&name_prefix)?;
        let bridge = pick(&args.bridge, file.bridge).unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        validate_ifname(&bridge).map_err(|m| invalid("bridge", m))?;
        let uplinks = if args.uplink.is_empty() {
            file.uplink
        } else {
            args.uplink.clone()
        };
        for uplink in &uplinks {
            validate_ifname(uplink).map_err(|m| invalid("uplink", m))?;
        }
        let port_range = match pick(&args.port_range, file.port_range) {
            None => None,
            Some(text) => Some(parse_port_range(&text).map_err(|m| invalid("port-range", m))?),
        };
        let masquerade_port_range = match pick(&args.masquerade_port_range, file.masquerade_port_range) {
            None => None,
            Some(text) => Some(parse_port_range(&text).map_err(|m| invalid("masquerade-port-range", m))?),
        };
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
        let timeout_text = if args.conntrack_timeout.is_empty() {
            file.conntrack_timeout
        } else {
            args.conntrack_timeout.clone()
        };
        let mut conntrack_timeouts = Vec::new();
        for item in &timeout_text {
            let (kind, secs) = item
                .split_once('=')
                .ok_or_else(|| invalid("conntrack-timeout", format!("{item}: expected KIND=SECONDS")))?;
            if !CONNTRACK_TIMEOUT_KINDS.contains(&kind) {
                return Err(invalid(
                    "conntrack-timeout",
                    format!(
                        "unknown kind {kind:?} (known: {})",
                        CONNTRACK_TIMEOUT_KINDS.join(", ")
                    ),
                ));
            }
            let secs: u64 = secs.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                invalid(
                    "conntrack-timeout",
                    format!("{item}: SECONDS must be a positive number"),
                )
            })?;
            conntrack_timeouts.push((kind.to_string(), secs));
        }
        let gc_interval = args.gc_interval.or(file.gc_interval).unwrap_or(5);
        if gc_interval == 0 {
            return Err(invalid("gc-interval", "must be at least 1 second"));
        }
        Ok(Self {
            conntrack_timeouts,
            gc_interval,
            masquerade_port_range,
            conntrack_max,
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
            fixed_cidr,
            fixed_cidr_v6,
            mtu,
            default_gateway,
            default_gateway_v6,
            dns,
            icc: args.icc.or(file.icc).unwrap_or(true),
            ip_masq: args.ip_masq.or(file.ip_masq).unwrap_or(true),
            uplinks,
            dataplane: args.dataplane.or(file.dataplane).unwrap_or(DataplaneKind::Auto),
            name_prefix,
            port_range,
            log_format: args.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
        })
    }
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

pub fn subnet_of(net: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(net.network(), net.prefix()).expect("prefix already validated")
}

/// A subnet in CIDR form without host bits, as Docker requires for --subnet.
pub fn parse_v4_subnet(key: &'static str, text: &str) -> Result<Ipv4Network, ConfigError> {
    let net: Ipv4Network = text
        .parse()
        .map_err(|_| invalid(key, format!("invalid CIDR address: {text}")))?;
    if net.ip() != net.network() {
        return Err(invalid(
            key,
            format!(
                "invalid CIDR address: {text} has host bits set (did you mean {}?)",
                subnet_of(net)
            ),
        ));
    }
    Ok(net)
}

pub fn parse_v6_subnet(key: &'static str, text: &str) -> Result<Ipv6Network, ConfigError> {
    let net: Ipv6Network = text
        .parse()
        .map_err(|_| invalid(key, format!("invalid CIDR address: {text}")))?;
    if net.ip() != net.network() {
        return Err(invalid(
            key,
            format!("invalid CIDR address: {text} has host bits set"),
        ));
    }
    if net.prefix() > 124 {
        return Err(invalid(key, format!("{text} is too small for sandboxes")));
    }
    Ok(net)
}

pub fn validate_mtu(mtu: u32) -> Result<(), String> {
    if (68..=65535).contains(&mtu) {
        Ok(())
    } else {
        Err(format!("MTU {mtu} is out of range (68-65535)"))
    }
}

fn validate_prefix(prefix: &str) -> Result<(), ConfigError> {
    // Interface names are at most 15 bytes and natd appends a kind letter and an id of up to 8.
    if prefix.is_empty()
        || prefix.len() > 6
        || !prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        || !prefix.starts_with(|c: char| c.is_ascii_lowercase())
    {
        return Err(invalid(
            "name-prefix",
            format!("{prefix:?}: use 1-6 lowercase letters or digits, starting with a letter"),
        ));
    }
    Ok(())
}

pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!(
            "{name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        ));
    }
    Ok(())
}

pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = text
        .split_once('-')
        .ok_or_else(|| format!("{text}: expected FIRST-LAST"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .map_err(|_| format!("{text}: invalid port {lo}"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .map_err(|_| format!("{text}: invalid port {hi}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{text}: expected 1 <= FIRST <= LAST"));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
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
