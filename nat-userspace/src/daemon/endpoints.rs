//! Endpoints: a sandbox's interface on one network. Addresses come from the network's
//! pool (checked with the driver), the veth pair is wired into the bridge and the
//! sandbox, and `network connect`/`disconnect` add and remove them on a running sandbox.
use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    path::Path,
};

use super::{
    Daemon,
    drivers::{self, AddressCheck, EndpointContext},
    error::{Result, conflict, invalid},
    names,
    rollback::{Rollback, Undo},
};
use crate::{
    api::{ConnectRequest, SandboxView},
    ipam,
    ipam6::{self, Ipam6Error},
    model::{Endpoint, Network, NetworkMode},
    state::Change,
    sys::{
        netlink::{self, Netlink},
        netns,
    },
};

/// How many allocated addresses in a row may turn out to be used on a LAN before giving up.
const PROBE_ATTEMPTS: usize = 8;

/// A requested address: `IP`, or pipework's `IP/PREFIX@GATEWAY`.
struct RequestedIp<'a> {
    ip: Option<&'a str>,
    prefix: Option<&'a str>,
    gateway: Option<&'a str>,
}

fn split_requested(text: Option<&str>) -> RequestedIp<'_> {
    let Some(text) = text else {
        return RequestedIp {
            ip: None,
            prefix: None,
            gateway: None,
        };
    };
    let (address, gateway) = text.split_once('@').map_or((text, None), |(a, g)| (a, Some(g)));
    let (ip, prefix) = address
        .split_once('/')
        .map_or((address, None), |(a, p)| (a, Some(p)));
    RequestedIp {
        ip: Some(ip),
        prefix,
        gateway,
    }
}

/// Refuses an endpoint the network's bridge cannot take: a Linux bridge has at most
/// `sys::netlink::BRIDGE_MAX_PORTS` ports, and the kernel's own refusal ("exchange full", all Docker
/// says past 1,023 containers on a network) would come after the namespace and veth.
fn check_bridge_room(network: &str, bridge: &str, attached: usize, others: usize) -> Result<()> {
    if attached + others < crate::sys::netlink::BRIDGE_MAX_PORTS {
        return Ok(());
    }
    let besides = match others {
        0 => String::new(),
        n => format!(" and {n} port(s) of its own"),
    };
    Err(conflict(format!(
        "network {network} is full: its bridge {bridge} has {attached} sandbox endpoints{besides}, and a \
         Linux bridge takes at most {} ports; connect further sandboxes to another network",
        crate::sys::netlink::BRIDGE_MAX_PORTS
    )))
}

impl Daemon {
    fn used_v4(&self, network: &Network) -> HashSet<Ipv4Addr> {
        let mut used: HashSet<Ipv4Addr> = self
            .state
            .sandboxes
            .values()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.network == network.name)
            .map(|e| e.ipv4)
            .collect();
        used.insert(network.gateway);
        used.extend(network.aux_gateway);
        used
    }

    fn used_v6(&self, network: &Network) -> HashSet<Ipv6Addr> {
        let mut used: HashSet<_> = self
            .state
            .sandboxes
            .values()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.network == network.name)
            .filter_map(|e| e.ipv6)
            .collect();
        used.extend(network.gateway_v6);
        used.extend(network.aux_gateway_v6);
        used
    }

    /// The IPv6 address of a new endpoint: `--ip6` checked as Docker checks it, else the
    /// next free one when the network has IPv6. Returns it with its prefix length.
    fn address_v6(&self, network: &Network, requested: Option<&str>) -> Result<(Option<Ipv6Addr>, u8)> {
        let used = self.used_v6(network);
        let Some(text) = requested else {
            let Some(subnet) = network.subnet_v6 else {
                return Ok((None, 0));
            };
            let ip = ipam::allocate_v6(&network.name, subnet, &used).map_err(|e| conflict(e.to_string()))?;
            return Ok((Some(ip), subnet.prefix()));
        };
        let ip = ipam6::parse_requested(text).map_err(|e| invalid(e.to_string()))?;
        // As Docker: static addresses only on user-defined networks, and this one needs IPv6.
        let Some(subnet) = network.subnet_v6.filter(|_| !network.default) else {
            return Err(invalid(
                "user specified IP address is supported only when connecting to networks with user configured subnets",
            ));
        };
        ipam6::check_requested(subnet, ip, &used).map_err(|e| match e {
            Ipam6Error::InUse(_) => conflict(e.to_string()),
            other => invalid(other.to_string()),
        })?;
        Ok((Some(ip), subnet.prefix()))
    }

    /// Picks (or checks) the addresses of a new endpoint with IPAM; no side effects.
    fn address_endpoint(
        &self,
        network: &Network,
        requested: Option<&str>,
        requested_v6: Option<&str>,
        ifname: &str,
        endpoint_id: u32,
        excluded: &HashSet<Ipv4Addr>,
    ) -> Result<Endpoint> {
        let mut used = self.used_v4(network);
        used.extend(excluded);
        let ipv4 = match requested {
            Some(text) => {
                let ip: Ipv4Addr = text
                    .parse()
                    .map_err(|_| invalid(format!("invalid IPv4 address: {text}")))?;
                ipam::check_requested_v4(network.subnet, ip, &used).map_err(|e| match e {
                    ipam::IpamError::InUse { .. } => conflict(e.to_string()),
                    other => invalid(other.to_string()),
                })?;
                ip
            }
            None => ipam::allocate_v4(&network.name, network.subnet, network.ip_range, &used)
                .map_err(|e| conflict(e.to_string()))?,
        };
        let (ipv6, prefix_len_v6) = self.address_v6(network, requested_v6)?;
        Ok(Endpoint {
            network: network.name.clone(),
            host_ifname: names::host_veth(&self.config.name_prefix, endpoint_id),
            ifname: ifname.to_string(),
            ipv4,
            prefix_len: network.subnet.prefix(),
            ipv6,
            prefix_len_v6,
            mac: String::new(),
            gateway: None,
        })
    }

    /// Plans an endpoint on `network`: IPAM, then the driver's own check of the address
    /// (an ARP probe on a LAN): a requested address in use is refused, an allocated one is
    /// skipped for the next.
    pub(super) async fn plan_endpoint(
        &self,
        network: &Network,
        requested: Option<&str>,
        requested_v6: Option<&str>,
        ifname: &str,
        endpoint_id: u32,
        sandbox: &str,
    ) -> Result<Endpoint> {
        let driver = drivers::of(network.driver);
        let attached = self
            .state
            .sandboxes
            .values()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.network == network.name)
            .count();
        check_bridge_room(&network.name, &network.bridge, attached, driver.other_bridge_ports())?;
        let ctx = EndpointContext {
            nl: &self.nl,
            cluster: self.cluster.as_deref(),
            sandbox,
        };
        let mut excluded: HashSet<Ipv4Addr> = driver
            .foreign_addresses(&ctx, network)
            .await?
            .into_iter()
            .collect();
        let parsed = split_requested(requested);
        for _ in 0..PROBE_ATTEMPTS {
            let mut endpoint =
                self.address_endpoint(network, parsed.ip, requested_v6, ifname, endpoint_id, &excluded)?;
            if let Some(prefix) = parsed.prefix {
                endpoint.prefix_len = prefix
                    .parse::<u8>()
                    .ok()
                    .filter(|p| (1..=32).contains(p))
                    .ok_or_else(|| invalid(format!("invalid prefix length: {prefix}")))?;
            }
            if let Some(gateway) = parsed.gateway {
                endpoint.gateway = Some(
                    gateway
                        .parse()
                        .map_err(|_| invalid(format!("invalid gateway address: {gateway}")))?,
                );
            }
            match driver.check_address(&ctx, network, endpoint.ipv4).await? {
                AddressCheck::Free => return Ok(endpoint),
                AddressCheck::InUse(who) if parsed.ip.is_some() => {
                    return Err(conflict(format!("Address already in use: {who}")));
                }
                AddressCheck::InUse(_) => {
                    excluded.insert(endpoint.ipv4);
                }
            }
        }
        Err(conflict(format!(
            "no free address found on the LAN of network {}",
            network.name
        )))
    }

    /// Creates the veth pair of one endpoint, plugs the host end into the bridge and sets
    /// up the sandbox end (name, MTU, addresses, default route).
    pub(super) async fn wire_endpoint(
        &self,
        netns_path: &Path,
        network: &Network,
        endpoint: &Endpoint,
        default_route: DefaultRoute,
        mtu: u32,
        rollback: &mut Rollback,
    ) -> Result<Wired> {
        let inner = Netlink::connect_in(netns_path)?;
        if inner.link(&endpoint.ifname).await?.is_some() {
            return Err(conflict(format!(
                "interface {} already exists in network namespace {}",
                endpoint.ifname,
                netns_path.display()
            )));
        }
        // The namespace's own default routes are judged before anything is made: a refusal
        // leaves no trace, and routes natd replaces are put back by the rollback (recorded
        // before the veth, so undone after it and its route are gone).
        let gateway_v6 = network
            .aux_gateway_v6
            .or(network.gateway_v6)
            .filter(|_| endpoint.ipv6.is_some());
        let mut routed = default_route != DefaultRoute::No && !network.internal;
        if routed {
            let mut theirs = inner.default_routes(false).await?;
            if gateway_v6.is_some() {
                theirs.extend(inner.default_routes(true).await?);
            }
            match default_route {
                _ if theirs.is_empty() => {}
                DefaultRoute::IfNone => routed = false,
                DefaultRoute::Exclusive => {
                    return Err(conflict(format!(
                        "network namespace {} already has a default route: natd adds its own only when \
                         asked to replace it (--replace-default-route)",
                        netns_path.display()
                    )));
                }
                _ => {
                    for route in &theirs {
                        inner.delete_route(route.clone()).await?;
                    }
                    rollback.record(Undo::RestoreRoutes {
                        netns: netns_path.to_owned(),
                        routes: theirs,
                    })?;
                }
            }
        }
        let bridge = self.nl.require_link(&network.bridge).await?;
        let mac = drivers::of(network.driver).endpoint_mac(endpoint.ipv4);
        let fd = netns::open(netns_path)?;
        // The sandbox's end is made in its namespace under its final name.
        self.nl
            .create_veth_into(&endpoint.host_ifname, bridge.index, mtu, &endpoint.ifname, fd.as_fd(), mac)
            .await?;
        rollback.record(Undo::DeleteLink(endpoint.host_ifname.clone()))?;
        let peer_link = inner.require_link(&endpoint.ifname).await?;
        for address in endpoint.ipv4_cidr().into_iter().chain(endpoint.ipv6_cidr()) {
            inner.add_address(peer_link.index, address).await?;
        }
        inner.set_up(peer_link.index).await?;
        if let Some(lo) = inner.link("lo").await? {
            inner.set_up(lo.index).await?;
        }
        if routed {
            let gw = endpoint
                .gateway
                .or(network.aux_gateway)
                .unwrap_or(network.gateway);
            inner.add_default_route(gw.into(), peer_link.index).await?;
            if let Some(gw6) = gateway_v6 {
                inner.add_default_route(gw6.into(), peer_link.index).await?;
            }
        }
        let mac = inner.require_link(&endpoint.ifname).await?.mac;
        Ok(Wired {
            mac: netlink::format_mac(&mac),
            default_route: routed,
        })
    }

    /// Removes an endpoint's veth pair (deleting the host end takes the sandbox end along).
    pub(super) async fn unwire_endpoint(&self, endpoint: &Endpoint) -> Result<()> {
        if let Some(link) = self.nl.link(&endpoint.host_ifname).await? {
            self.nl.delete_link(link.index).await?;
        }
        Ok(())
    }

    pub async fn connect(&mut self, network_name: &str, req: ConnectRequest) -> Result<SandboxView> {
        let result = self.connect_sandbox(network_name, req).await;
        if result.is_err() {
            self.release_unused_claims().await;
        }
        result
    }

    async fn connect_sandbox(&mut self, network_name: &str, req: ConnectRequest) -> Result<SandboxView> {
        let network = self.network(network_name)?.clone();
        let sandbox = self.sandbox(&req.sandbox)?.clone();
        let Some(path) = sandbox.netns.clone().filter(|_| sandbox.has_own_netns()) else {
            return Err(invalid(
                "container sharing network namespace with another container or host cannot be connected to any other network",
            ));
        };
        if sandbox.endpoints.iter().any(|e| e.network == network_name) {
            return Err(conflict(format!(
                "endpoint with name {} already exists in network {network_name}",
                sandbox.name
            )));
        }
        let index = (0..)
            .find(|i| !sandbox.endpoints.iter().any(|e| e.ifname == format!("eth{i}")))
            .unwrap_or(0);
        let (eid, id_change) = self.alloc_id();
        let mut endpoint = self
            .plan_endpoint(
                &network,
                req.ip.as_deref(),
                req.ip6.as_deref(),
                &format!("eth{index}"),
                eid,
                &sandbox.name,
            )
            .await?;
        let first = sandbox.endpoints.is_empty();
        let mtu = sandbox.mtu.unwrap_or(network.mtu);

        let mut rollback = Rollback::new("network connect");
        let result = async {
            endpoint.mac = self
                .wire_endpoint(
                    Path::new(&path),
                    &network,
                    &endpoint,
                    DefaultRoute::of(first, sandbox.netns_owned),
                    mtu,
                    &mut rollback,
                )
                .await?
                .mac;
            let mut updated = sandbox.clone();
            updated.endpoints.push(endpoint.clone());
            if updated.mode == NetworkMode::None {
                updated.mode = NetworkMode::Bridge;
            }
            self.commit(vec![id_change, Change::PutSandbox(updated.clone())])?;
            Ok(updated)
        }
        .await;
        let updated = rollback.settle(&self.nl, result).await?;
        self.sync_after_change().await?;
        Ok(self.view(&updated))
    }

    pub async fn disconnect(&mut self, network_name: &str, req: ConnectRequest) -> Result<SandboxView> {
        self.network(network_name)?;
        let sandbox = self.sandbox(&req.sandbox)?.clone();
        let Some(endpoint) = sandbox
            .endpoints
            .iter()
            .find(|e| e.network == network_name)
            .cloned()
        else {
            return Err(invalid(format!(
                "container {} is not connected to network {network_name}",
                sandbox.name
            )));
        };
        let mut updated = sandbox.clone();
        updated.endpoints.retain(|e| e.network != network_name);
        if !updated.ports.is_empty() && updated.endpoints.is_empty() {
            return Err(invalid(format!(
                "cannot disconnect {} from its last network while it publishes ports",
                sandbox.name
            )));
        }
        self.unwire_endpoint(&endpoint).await?;
        self.commit_and_sync(vec![Change::PutSandbox(updated.clone())])
            .await?;
        Ok(self.view(&updated))
    }
}

/// What wiring an endpoint made: the sandbox end's MAC address, and whether it gave the
/// sandbox its default route.
pub(super) struct Wired {
    pub mac: String,
    pub default_route: bool,
}

/// Whether an endpoint gives its sandbox the default route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DefaultRoute {
    /// Another attachment of the namespace has it (a second interface, a CNI `eth1`).
    No,
    /// Only if the namespace has none, and no error if it has: a CNI attachment after
    /// another plugin's (the runtime's other network routes the container; natd's is then
    /// an additional interface, as the bridge plugin's is without `isDefaultGateway`).
    IfNone,
    /// Only if the namespace has none: an adopted namespace with a route of its own is
    /// refused (its owner's routing is not natd's to change).
    Exclusive,
    /// The request said so, or the namespace is natd's own.
    Replace,
}

impl DefaultRoute {
    pub(super) fn of(wanted: bool, replace: bool) -> Self {
        match (wanted, replace) {
            (false, _) => DefaultRoute::No,
            (true, false) => DefaultRoute::Exclusive,
            (true, true) => DefaultRoute::Replace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel refuses the 1,025th port of a bridge (BR_MAX_PORTS, EXFULL): natd refuses
    /// the endpoint that would be it, before anything is made.
    #[test]
    fn a_full_bridge_is_refused_by_name() {
        assert!(check_bridge_room("web", "natdb2", 1022, 0).is_ok());
        let full = check_bridge_room("web", "natdb2", 1023, 0).unwrap_err();
        assert_eq!(full.class(), super::super::error::ErrorClass::Conflict);
        assert!(full.to_string().starts_with("network web is full: its bridge natdb2 has 1023 sandbox endpoints, and"), "{full}");
        assert!(full.to_string().contains("at most 1023 ports"), "{full}");
        assert!(check_bridge_room("lan", "natdb3", 1021, 1).is_ok());
        let full = check_bridge_room("lan", "natdb3", 1022, 1).unwrap_err().to_string();
        assert!(full.contains("1022 sandbox endpoints and 1 port(s) of its own"), "{full}");
    }
}
