//! Checks of single settings, shared by the flags, the config file and the API (subnets,
//! MTU, interface names, port ranges). Each names the setting and says what is wrong.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use super::{ConfigError, invalid};
use crate::dataplane::CtTimeout;

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

pub fn validate_prefix(prefix: &str) -> Result<(), ConfigError> {
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

/// `--bip`: the bridge's address with the default network's prefix.
pub fn bip(text: &str) -> Result<Ipv4Network, ConfigError> {
    let bip: Ipv4Network = text.parse().map_err(|e| invalid("bip", format!("{text}: {e}")))?;
    if bip.ip() == bip.network() || bip.prefix() > 30 {
        return Err(invalid(
            "bip",
            format!("{text}: give the bridge address with its prefix, e.g. 172.18.0.1/16"),
        ));
    }
    Ok(bip)
}

/// `--fixed-cidr`: a pool inside the bridge subnet.
pub fn fixed_cidr(text: &str, bip: Ipv4Network) -> Result<Ipv4Network, ConfigError> {
    let net = parse_v4_subnet("fixed-cidr", text)?;
    if !bip.contains(net.network()) || net.prefix() < bip.prefix() {
        return Err(invalid(
            "fixed-cidr",
            format!("{text} is not inside the bridge subnet {}", subnet_of(bip)),
        ));
    }
    Ok(net)
}

pub fn default_gateway(text: &str, bip: Ipv4Network) -> Result<Ipv4Addr, ConfigError> {
    let ip: Ipv4Addr = text
        .parse()
        .map_err(|_| invalid("default-gateway", format!("{text} is not an IPv4 address")))?;
    if !bip.contains(ip) {
        return Err(invalid(
            "default-gateway",
            format!("{ip} is not in the bridge subnet {}", subnet_of(bip)),
        ));
    }
    Ok(ip)
}

pub fn default_gateway_v6(text: &str, fixed_cidr_v6: Option<Ipv6Network>) -> Result<Ipv6Addr, ConfigError> {
    let ip: Ipv6Addr = text
        .parse()
        .map_err(|_| invalid("default-gateway-v6", format!("{text} is not an IPv6 address")))?;
    if fixed_cidr_v6.is_none() {
        return Err(invalid("default-gateway-v6", "needs fixed-cidr-v6"));
    }
    Ok(ip)
}

pub fn dns_server(text: &str) -> Result<IpAddr, ConfigError> {
    text.parse()
        .map_err(|_| invalid("dns", format!("{text} is not an IP address")))
}

/// `--conntrack-timeout KIND=SECONDS`.
pub fn conntrack_timeout(item: &str) -> Result<(CtTimeout, u64), ConfigError> {
    let (kind, secs) = item
        .split_once('=')
        .ok_or_else(|| invalid("conntrack-timeout", format!("{item}: expected KIND=SECONDS")))?;
    let Some(kind) = CtTimeout::from_name(kind) else {
        let known: Vec<&str> = CtTimeout::ALL.iter().map(|k| k.name()).collect();
        return Err(invalid(
            "conntrack-timeout",
            format!("unknown kind {kind:?} (known: {})", known.join(", ")),
        ));
    };
    let secs: u64 = secs.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
        invalid(
            "conntrack-timeout",
            format!("{item}: SECONDS must be a positive number"),
        )
    })?;
    Ok((kind, secs))
}

/// `--cluster-store etcd://HOST:PORT[,HOST:PORT]`, with `--cluster-advertise` required
/// alongside (Docker's pairing) and the TTL in a range a lease can have.
pub fn cluster(
    store: Option<String>,
    advertise: Option<String>,
    ttl: Option<u64>,
    claim_grace: Option<u64>,
    options: (Option<super::StoreTls>, Option<super::StoreAuth>),
) -> Result<Option<super::ClusterConfig>, ConfigError> {
    let Some(store) = store else {
        if options.0.is_some() || options.1.is_some() {
            return Err(invalid("cluster-store-opt", "needs --cluster-store"));
        }
        if advertise.is_some() {
            return Err(invalid("cluster-advertise", "needs --cluster-store"));
        }
        if claim_grace.is_some() {
            return Err(invalid("cluster-claim-grace", "needs --cluster-store"));
        }
        return Ok(None);
    };
    let Some(rest) = store.strip_prefix("etcd://") else {
        return Err(invalid(
            "cluster-store",
            format!("{store:?}: unsupported store (natd supports etcd://HOST:PORT[,HOST:PORT...])"),
        ));
    };
    let endpoints: Vec<String> = rest.split(',').map(|e| e.trim_end_matches('/').to_string()).collect();
    for endpoint in &endpoints {
        let port = endpoint.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
        if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
            return Err(invalid(
                "cluster-store",
                format!("{endpoint:?} is not HOST:PORT"),
            ));
        }
    }
    let Some(advertise) = advertise else {
        return Err(invalid(
            "cluster-advertise",
            "is required with --cluster-store (an interface or address other hosts reach this one at)",
        ));
    };
    let bare = advertise.trim_start_matches('[').split(']').next().unwrap_or_default();
    if advertise.parse::<Ipv6Addr>().is_ok() || bare.parse::<Ipv6Addr>().is_ok() {
        return Err(invalid(
            "cluster-advertise",
            format!("{advertise}: IPv6 underlays are not supported; give an IPv4 address or an interface with one"),
        ));
    }
    // Docker's form is IFACE:PORT or IP:PORT; the port was its API's and means nothing here.
    let advertise = match advertise.rsplit_once(':') {
        Some((head, port)) if port.parse::<u16>().is_ok() => head.to_string(),
        _ => advertise,
    };
    if advertise.parse::<Ipv4Addr>().is_err() {
        validate_ifname(&advertise).map_err(|m| invalid("cluster-advertise", m))?;
    }
    let ttl = ttl.unwrap_or(super::DEFAULT_CLUSTER_TTL);
    if !(3..=3600).contains(&ttl) {
        return Err(invalid("cluster-ttl", format!("{ttl} is out of range (3-3600 seconds)")));
    }
    let claim_grace = claim_grace.unwrap_or(super::DEFAULT_CLAIM_GRACE);
    if claim_grace < 2 * ttl {
        return Err(invalid(
            "cluster-claim-grace",
            format!("{claim_grace} s is shorter than two leases ({} s): a restarting host would lose its addresses", 2 * ttl),
        ));
    }
    Ok(Some(super::ClusterConfig {
        endpoints,
        advertise,
        ttl,
        claim_grace,
        tls: options.0,
        auth: options.1,
    }))
}

/// Store option keys natd knows (Docker's `kv.` names, and etcd's user and password).
const STORE_OPTIONS: [&str; 5] = ["kv.cacertfile", "kv.certfile", "kv.keyfile", "kv.username", "kv.passwordfile"];

/// `--cluster-store-opt KEY=VALUE` (daemon.json `cluster-store-opts`, command line first):
/// the files read now, so a wrong path or a file of the wrong kind stops natd before it
/// touches anything, naming the option.
pub fn store_options(
    args: &[String],
    file: &std::collections::BTreeMap<String, String>,
) -> Result<(Option<super::StoreTls>, Option<super::StoreAuth>), ConfigError> {
    let mut options = file.clone();
    for item in args {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| invalid("cluster-store-opt", format!("{item:?} is not KEY=VALUE")))?;
        options.insert(key.to_string(), value.to_string());
    }
    if let Some(key) = options.keys().find(|k| !STORE_OPTIONS.contains(&k.as_str())) {
        return Err(invalid(
            "cluster-store-opt",
            format!("unknown option {key} (natd knows {})", STORE_OPTIONS.join(", ")),
        ));
    }
    let read = |key: &'static str, marker: &str, what: &str| -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = options.get(key) else {
            return Ok(None);
        };
        let bytes = std::fs::read(path).map_err(|e| invalid("cluster-store-opt", format!("{key}={path}: {e}")))?;
        if !String::from_utf8_lossy(&bytes).contains(marker) {
            return Err(invalid("cluster-store-opt", format!("{key}={path}: not a PEM {what}")));
        }
        Ok(Some(bytes))
    };
    let ca = read("kv.cacertfile", "-----BEGIN CERTIFICATE-----", "certificate")?;
    let cert = read("kv.certfile", "-----BEGIN CERTIFICATE-----", "certificate")?;
    let key = read("kv.keyfile", "PRIVATE KEY-----", "private key")?;
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(invalid("cluster-store-opt", "kv.certfile and kv.keyfile go together")),
    };
    let tls = match (ca, identity) {
        (Some(ca_pem), identity) => Some(super::StoreTls { ca_pem, identity }),
        (None, None) => None,
        (None, Some(_)) => {
            return Err(invalid(
                "cluster-store-opt",
                "a client certificate needs kv.cacertfile (the CA the store's certificate is checked against)",
            ));
        }
    };
    let auth = match (options.get("kv.username"), options.get("kv.passwordfile")) {
        (Some(username), Some(path)) => {
            let password = std::fs::read_to_string(path)
                .map_err(|e| invalid("cluster-store-opt", format!("kv.passwordfile={path}: {e}")))?;
            let password = password.trim_end_matches(['\n', '\r']).to_string();
            if username.is_empty() || password.is_empty() {
                return Err(invalid("cluster-store-opt", "kv.username and the password in kv.passwordfile must not be empty"));
            }
            Some(super::StoreAuth { username: username.clone(), password })
        }
        (None, None) => None,
        _ => return Err(invalid("cluster-store-opt", "kv.username and kv.passwordfile go together")),
    };
    Ok((tls, auth))
}
