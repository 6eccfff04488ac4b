//! The addresses `network create` asks for: `--subnet` and `--gateway` (each given up to
//! once per address family, as Docker's bridge driver takes them), `--ipv6` with its
//! subnet from the request or the host's unique-local pool, and the gateway modes.
use std::{collections::BTreeMap, net::Ipv6Addr};

use ipnetwork::Ipv6Network;

use super::PlanContext;
use crate::{
    api::NetworkCreate,
    daemon::error::{DaemonError, Result, conflict, invalid},
    ipam,
    ipam6::{self, Ipam6Error},
    model::GatewayMode,
};

/// Docker's option names of the gateway modes.
pub const GATEWAY_MODE_V4: &str = "com.docker.network.bridge.gateway_mode_ipv4";
pub const GATEWAY_MODE_V6: &str = "com.docker.network.bridge.gateway_mode_ipv6";
pub const TRUSTED_HOST_INTERFACES: &str = "com.docker.network.bridge.trusted_host_interfaces";

/// `--subnet` and `--gateway` of a request, by address family.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Requested<'a> {
    pub subnet_v4: Option<&'a str>,
    pub gateway_v4: Option<&'a str>,
    pub subnet_v6: Option<&'a str>,
    pub gateway_v6: Option<&'a str>,
}

/// An address or subnet in text is IPv6 when it has a colon (IPv4 ones never do); an
/// invalid one is then refused by the family's own parser, in its words.
fn is_v6(text: &str) -> bool {
    text.contains(':')
}

/// Splits `--subnet`/`--gateway` by family. `driver` names the driver in errors.
pub fn split<'a>(req: &'a NetworkCreate, driver: &str) -> Result<Requested<'a>> {
    let mut out = Requested::default();
    for text in &req.subnet {
        let slot = if is_v6(text) {
            &mut out.subnet_v6
        } else {
            &mut out.subnet_v4
        };
        if slot.replace(text.as_str()).is_some() {
            return Err(invalid(format!(
                "{driver} driver doesn't support multiple subnets"
            )));
        }
    }
    for text in &req.gateway {
        let (slot, family) = if is_v6(text) {
            (&mut out.gateway_v6, "IPv6")
        } else {
            (&mut out.gateway_v4, "IPv4")
        };
        if slot.replace(text.as_str()).is_some() {
            return Err(invalid(format!(
                "{driver} driver takes at most one {family} gateway (one per subnet)"
            )));
        }
    }
    // Docker 27 ignores an IPv6 subnet without --ipv6; natd says so instead, so that
    // nobody believes the network has IPv6.
    if !req.ipv6 {
        if let Some(subnet) = out.subnet_v6 {
            return Err(invalid(format!("an IPv6 subnet needs --ipv6 (subnet {subnet})")));
        }
        if let Some(gateway) = out.gateway_v6 {
            return Err(invalid(format!(
                "an IPv6 gateway needs --ipv6 (gateway {gateway})"
            )));
        }
    }
    if let (Some(gateway), None) = (out.gateway_v6, out.subnet_v6) {
        return Err(invalid(format!(
            "no matching subnet for gateway {gateway}: an IPv6 --gateway needs an IPv6 --subnet"
        )));
    }
    Ok(out)
}

/// Drivers without IPv6 refuse `--ipv6` and IPv6 subnets or gateways, naming themselves.
pub fn refuse_ipv6(req: &NetworkCreate, networks_of: &str) -> Result<()> {
    let any_v6 = req.subnet.iter().chain(&req.gateway).any(|t| is_v6(t));
    if req.ipv6 || any_v6 {
        return Err(invalid(format!(
            "IPv6 is not supported on {networks_of} networks yet"
        )));
    }
    Ok(())
}

fn ipam6_error(e: Ipam6Error) -> DaemonError {
    match e {
        Ipam6Error::Overlaps | Ipam6Error::PoolExhausted(_) => conflict(e.to_string()),
        other => invalid(other.to_string()),
    }
}

/// The IPv6 subnet and gateway of a new network with `--ipv6`: the requested subnet,
/// checked and free, or the lowest free /64 of the host's ULA pool; the requested gateway
/// or the subnet's first address. None without `--ipv6`.
pub fn plan_v6(
    ctx: &PlanContext<'_>,
    req: &NetworkCreate,
    requested: &Requested<'_>,
) -> Result<Option<(Ipv6Network, Ipv6Addr)>> {
    if !req.ipv6 {
        return Ok(None);
    }
    let taken: Vec<Ipv6Network> = ctx.networks.values().filter_map(|n| n.subnet_v6).collect();
    let subnet = match requested.subnet_v6 {
        Some(text) => ipam6::parse_subnet(text).and_then(|s| ipam6::check_free(s, &taken)),
        None => ipam6::pick_free_v6(ctx.ula_pool, &taken),
    }
    .map_err(ipam6_error)?;
    let gateway = match requested.gateway_v6 {
        Some(text) => ipam6::parse_gateway(subnet, text).map_err(ipam6_error)?,
        None => ipam::first_v6_host(subnet),
    };
    Ok(Some((subnet, gateway)))
}

/// `-o com.docker.network.bridge.gateway_mode_ipv4|ipv6=nat|routed` (default nat).
pub fn gateway_modes(opts: &BTreeMap<&str, &str>) -> Result<(GatewayMode, GatewayMode)> {
    let mode = |key: &str| -> Result<GatewayMode> {
        match opts.get(key) {
            Some(text) => text.parse().map_err(invalid),
            None => Ok(GatewayMode::Nat),
        }
    };
    Ok((mode(GATEWAY_MODE_V4)?, mode(GATEWAY_MODE_V6)?))
}

/// `-o com.docker.network.bridge.trusted_host_interfaces=IF[:IF...]`: interface names
/// separated by colons, as Docker 28.2 takes them (empty parts are skipped).
pub fn trusted_host_interfaces(opts: &BTreeMap<&str, &str>) -> Result<Vec<String>> {
    let Some(text) = opts.get(TRUSTED_HOST_INTERFACES) else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for name in text.split(':').filter(|n| !n.is_empty()) {
        crate::config::validate_ifname(name)
            .map_err(|m| invalid(format!("invalid value for {TRUSTED_HOST_INTERFACES}: {m}")))?;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// What `network inspect` shows of a bridge network's options, in Docker's names.
pub fn bridge_options(network: &crate::model::Network) -> BTreeMap<String, String> {
    let mut options = BTreeMap::from([
        (
            GATEWAY_MODE_V4.to_string(),
            network.gateway_mode_v4.name().to_string(),
        ),
        (
            GATEWAY_MODE_V6.to_string(),
            network.gateway_mode_v6.name().to_string(),
        ),
    ]);
    if !network.trusted_host_interfaces.is_empty() {
        options.insert(
            TRUSTED_HOST_INTERFACES.to_string(),
            network.trusted_host_interfaces.join(":"),
        );
    }
    super::nat::options(network, &mut options);
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(subnets: &[&str], gateways: &[&str], ipv6: bool) -> NetworkCreate {
        NetworkCreate {
            name: "n".into(),
            subnet: subnets.iter().map(|s| s.to_string()).collect(),
            gateway: gateways.iter().map(|s| s.to_string()).collect(),
            ipv6,
            ..Default::default()
        }
    }

    fn err(r: &NetworkCreate) -> String {
        split(r, "bridge").unwrap_err().to_string()
    }

    #[test]
    fn subnets_and_gateways_split_by_family() {
        let r = req(
            &["2001:db8::/64", "10.9.0.0/24"],
            &["10.9.0.254", "2001:db8::fe"],
            true,
        );
        assert_eq!(
            split(&r, "bridge").unwrap(),
            Requested {
                subnet_v4: Some("10.9.0.0/24"),
                gateway_v4: Some("10.9.0.254"),
                subnet_v6: Some("2001:db8::/64"),
                gateway_v6: Some("2001:db8::fe"),
            }
        );
        assert_eq!(
            err(&req(&["10.9.0.0/24", "10.10.0.0/24"], &[], false)),
            "bridge driver doesn't support multiple subnets"
        );
        assert_eq!(
            err(&req(&["2001:db8::/64", "2001:db9::/64"], &[], true)),
            "bridge driver doesn't support multiple subnets"
        );
        assert_eq!(
            err(&req(&["2001:db8::/64"], &[], false)),
            "an IPv6 subnet needs --ipv6 (subnet 2001:db8::/64)"
        );
        assert!(
            err(&req(&[], &["2001:db8::1"], true)).starts_with("no matching subnet for gateway 2001:db8::1")
        );
        // --ipv6 alone is fine: the subnet comes from the ULA pool.
        assert_eq!(
            split(&req(&[], &[], true), "bridge").unwrap(),
            Requested::default()
        );
    }

    #[test]
    fn other_drivers_refuse_ipv6_by_name() {
        assert_eq!(
            refuse_ipv6(&req(&[], &[], true), "overlay")
                .unwrap_err()
                .to_string(),
            "IPv6 is not supported on overlay networks yet"
        );
        assert!(refuse_ipv6(&req(&["2001:db8::/64"], &[], false), "hostbridge").is_err());
        assert!(refuse_ipv6(&req(&["10.0.0.0/24"], &["10.0.0.1"], false), "hostbridge").is_ok());
    }

    #[test]
    fn gateway_modes_default_to_nat_and_refuse_unknown_values() {
        let opts = BTreeMap::from([(GATEWAY_MODE_V6, "routed")]);
        assert_eq!(
            gateway_modes(&opts).unwrap(),
            (GatewayMode::Nat, GatewayMode::Routed)
        );
        let opts = BTreeMap::from([(GATEWAY_MODE_V4, "bridged")]);
        assert_eq!(
            gateway_modes(&opts).unwrap_err().to_string(),
            "unknown gateway mode bridged"
        );
    }
}
