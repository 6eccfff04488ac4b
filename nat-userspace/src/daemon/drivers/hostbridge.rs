//! The `hostbridge` driver (what pipework does): sandboxes get addresses on the host's LAN
//! through a bridge that holds the host's NIC. Creating such a network moves the NIC's
//! addresses and routes onto the bridge and enslaves the NIC; removing it puts everything
//! back. No NAT and no isolation; addresses are checked on the wire (ARP probe, RFC 5227)
//! before use.
use std::{net::Ipv4Addr, time::Duration};

use async_trait::async_trait;
use ipnetwork::{IpNetwork, Ipv4Network};

use super::{AddressCheck, EndpointContext, NetworkDriver, PlanContext, ip_range, options};
use crate::{
    api::NetworkCreate,
    config,
    daemon::{
        error::{Result, conflict, internal, invalid, not_found},
        names, now,
        rollback::{Rollback, Undo},
    },
    model::{Driver, Network, ParentState, SavedRoute},
    sys::{
        arp,
        netlink::{LinkKind, Netlink, NetlinkError, RT_TABLE_MAIN, RTPROT_KERNEL, Route},
    },
};

pub struct HostBridgeDriver;

/// How long an ARP probe waits for an answer (twice).
const PROBE_WAIT: Duration = Duration::from_millis(400);

#[async_trait]
impl NetworkDriver for HostBridgeDriver {
    fn kind(&self) -> Driver {
        Driver::HostBridge
    }

    async fn plan(&self, ctx: &PlanContext<'_>, req: &NetworkCreate, id: u32) -> Result<Network> {
        super::addressing::refuse_ipv6(req, "hostbridge")?;
        let opts = options(req, &["parent", "bridge-name"])?;
        let (subnet, gateway) = lan_subnet_and_gateway(req)?;
        let ip_range = ip_range(subnet, req.ip_range.as_deref())?;
        if req.internal || req.icc == Some(false) {
            return Err(invalid(
                "--internal and --icc=false do not apply to hostbridge networks (no NAT, no isolation)",
            ));
        }
        if ctx.networks.values().any(|n| n.subnet.overlaps(subnet)) {
            return Err(conflict("Pool overlaps with other one on this address space"));
        }
        let parent = opts.get("parent").map(|p| p.to_string());
        let bridge = match (opts.get("bridge-name"), &parent) {
            (Some(name), _) => name.to_string(),
            (None, Some(_)) => names::bridge(&ctx.config.name_prefix, id),
            (None, None) => {
                return Err(invalid(
                    "a hostbridge network needs --opt parent=IFACE, or --opt bridge-name=NAME of an existing bridge",
                ));
            }
        };
        config::validate_ifname(&bridge).map_err(invalid)?;
        if ctx.networks.values().any(|n| n.bridge == bridge) {
            return Err(conflict(format!(
                "bridge {bridge} is already used by another network"
            )));
        }
        let existing = ctx.nl.link(&bridge).await?;
        if let Some(link) = &existing
            && link.kind != LinkKind::Bridge
        {
            return Err(conflict(format!("interface {bridge} exists and is not a bridge")));
        }
        let mtu = match &parent {
            Some(parent) => {
                let parent_mtu = check_parent(ctx, parent).await?;
                existing.as_ref().map_or(parent_mtu, |l| l.mtu)
            }
            None => {
                existing
                    .as_ref()
                    .ok_or_else(|| {
                        not_found(format!(
                            "bridge {bridge} not found (create it or give --opt parent=IFACE)"
                        ))
                    })?
                    .mtu
            }
        };
        Ok(Network {
            id,
            name: req.name.clone(),
            driver: Driver::HostBridge,
            bridge,
            bridge_adopted: existing.is_some(),
            subnet,
            gateway,
            aux_gateway: None,
            ip_range,
            subnet_v6: None,
            gateway_v6: None,
            aux_gateway_v6: None,
            internal: false,
            icc: true,
            ip_masq: false,
            mtu: req.mtu.unwrap_or(mtu),
            default: false,
            gateway_mode_v4: Default::default(),
            gateway_mode_v6: Default::default(),
            created: now(),
            overlay: None,
            trusted_host_interfaces: Vec::new(),
            nat: Default::default(),
            // Filled in by setup: what the NIC had before.
            parent: parent.map(|parent| ParentState {
                parent,
                ..Default::default()
            }),
        })
    }

    async fn setup(&self, nl: &Netlink, mut network: Network, rollback: &mut Rollback) -> Result<Network> {
        if !network.bridge_adopted {
            nl.create_bridge(&network.bridge, network.mtu).await?;
            rollback.record(Undo::DeleteLink(network.bridge.clone()))?;
        }
        match network.parent.take() {
            Some(planned) => {
                let state = attach_parent(nl, &network.bridge, &planned.parent).await?;
                rollback.record(Undo::RestoreParent {
                    bridge: network.bridge.clone(),
                    state: state.clone(),
                })?;
                network.parent = Some(state);
            }
            None => {
                let link = nl.require_link(&network.bridge).await?;
                if !link.up {
                    nl.set_up(link.index).await?;
                }
            }
        }
        Ok(network)
    }

    async fn ensure(&self, nl: &Netlink, network: &Network) -> Result<bool> {
        // The LAN's bridge carries the host's own addresses, never a natd gateway.
        let link = nl.link(&network.bridge).await?.ok_or_else(|| {
            conflict(format!(
                "bridge {} of hostbridge network {} is gone; remove and recreate the network",
                network.bridge, network.name
            ))
        })?;
        if !link.up {
            nl.set_up(link.index).await?;
        }
        Ok(false)
    }

    async fn teardown(&self, nl: &Netlink, network: &Network) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(state) = &network.parent {
            errors.extend(restore_parent(nl, &network.bridge, state).await);
        }
        if !network.bridge_adopted
            && let Ok(Some(link)) = nl.link(&network.bridge).await
            && let Err(e) = nl.delete_link(link.index).await
        {
            errors.push(e.to_string());
        }
        errors
    }

    async fn foreign_addresses(
        &self,
        ctx: &EndpointContext<'_>,
        _network: &Network,
    ) -> Result<Vec<Ipv4Addr>> {
        // The host's own addresses on the LAN are taken too.
        Ok(ctx
            .nl
            .all_addresses()
            .await?
            .into_iter()
            .filter_map(|(_, address)| match address {
                IpNetwork::V4(v4) => Some(v4.ip()),
                IpNetwork::V6(_) => None,
            })
            .collect())
    }

    async fn check_address(
        &self,
        ctx: &EndpointContext<'_>,
        network: &Network,
        ip: Ipv4Addr,
    ) -> Result<AddressCheck> {
        let bridge = ctx.nl.require_link(&network.bridge).await?;
        let in_use = tokio::task::spawn_blocking(move || {
            arp::address_in_use(bridge.index, &bridge.mac, ip, PROBE_WAIT)
        })
        .await
        .map_err(|e| internal("ARP probe task").because(e))?
        .map_err(|e| internal(format!("ARP probe on {}", network.bridge)).because(e))?;
        Ok(if in_use {
            AddressCheck::InUse(format!("{ip} answers ARP on the LAN ({})", network.bridge))
        } else {
            AddressCheck::Free
        })
    }

    fn translated(&self) -> bool {
        false
    }

    /// The LAN interface. An adopted bridge may hold more ports of its own: the kernel's
    /// refusal (worded by `request_err`) covers those.
    fn other_bridge_ports(&self) -> usize {
        1
    }
}

/// The LAN's subnet and router, both required: natd cannot guess a LAN's addressing.
fn lan_subnet_and_gateway(req: &NetworkCreate) -> Result<(Ipv4Network, Ipv4Addr)> {
    let requested = super::addressing::split(req, "hostbridge")?;
    let subnet_text = requested
        .subnet_v4
        .ok_or_else(|| invalid("a hostbridge network needs --subnet (the LAN's subnet)"))?;
    let subnet = config::parse_v4_subnet("subnet", subnet_text).map_err(|e| invalid(e.to_string()))?;
    let gateway_text = requested
        .gateway_v4
        .ok_or_else(|| invalid("a hostbridge network needs --gateway (the LAN's router)"))?;
    let gateway: Ipv4Addr = gateway_text
        .parse()
        .map_err(|_| invalid(format!("invalid gateway address: {gateway_text}")))?;
    if !subnet.contains(gateway) {
        return Err(invalid(format!("no matching subnet for gateway {gateway}")));
    }
    Ok((subnet, gateway))
}

/// The NIC a new hostbridge network takes into its bridge: it must exist and be in no
/// bridge. Returns its MTU.
async fn check_parent(ctx: &PlanContext<'_>, parent: &str) -> Result<u32> {
    let link = ctx
        .nl
        .link(parent)
        .await?
        .ok_or_else(|| not_found(format!("parent interface {parent} not found")))?;
    if link.master.is_some() {
        return Err(conflict(format!(
            "parent interface {parent} is already in a bridge"
        )));
    }
    // natd's uplink may be the parent (a one-NIC host): the bridge takes over its addresses
    // and routes, and with them the uplink's role (`sync::effective_uplink`).
    Ok(link.mtu)
}

/// Moves `parent`'s addresses and routes onto `bridge` and enslaves `parent`; on failure
/// everything done so far is undone.
pub async fn attach_parent(nl: &Netlink, bridge: &str, parent: &str) -> Result<ParentState, NetlinkError> {
    let bridge_link = nl.require_link(bridge).await?;
    let parent_link = nl.require_link(parent).await?;
    let addresses: Vec<IpNetwork> = nl
        .addresses(parent_link.index)
        .await?
        .into_iter()
        .filter(|a| match a {
            IpNetwork::V4(_) => true,
            // Link-local IPv6 addresses belong to the device, not to the host's identity.
            IpNetwork::V6(v6) => (v6.ip().segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    let routes: Vec<Route> = nl
        .routes_v4()
        .await?
        .into_iter()
        .filter(|r| {
            r.oif == Some(parent_link.index) && r.protocol != RTPROT_KERNEL && r.table == RT_TABLE_MAIN
        })
        .collect();
    let state = ParentState {
        parent: parent.to_string(),
        addresses: addresses.clone(),
        routes: routes
            .iter()
            .map(|r| SavedRoute(r.destination, r.gateway, r.priority, r.protocol))
            .collect(),
    };
    let result = async {
        // The bridge takes over the NIC's identity: same MAC, so neighbours' ARP caches
        // stay right.
        nl.set_mac(bridge_link.index, &parent_link.mac).await?;
        nl.set_up(bridge_link.index).await?;
        for address in &addresses {
            nl.del_address(parent_link.index, *address).await?;
            nl.add_address(bridge_link.index, *address).await?;
        }
        nl.set_master(parent_link.index, bridge_link.index).await?;
        nl.set_up(parent_link.index).await?;
        for route in &routes {
            nl.add_route_v4(route, bridge_link.index).await?;
        }
        Ok::<_, NetlinkError>(())
    }
    .await;
    if let Err(e) = result {
        let _ = restore_parent(nl, bridge, &state).await;
        return Err(e);
    }
    Ok(state)
}

/// Puts the NIC back as it was: out of the bridge, with its addresses and routes.
/// Collects errors and keeps going.
pub async fn restore_parent(nl: &Netlink, bridge: &str, state: &ParentState) -> Vec<String> {
    let mut errors = Vec::new();
    let Ok(Some(parent)) = nl.link(&state.parent).await else {
        return vec![format!("parent {} is gone", state.parent)];
    };
    let bridge = nl.link(bridge).await.ok().flatten();
    if let Err(e) = nl.set_nomaster(parent.index).await {
        errors.push(e.to_string());
    }
    for address in &state.addresses {
        if let Some(bridge) = &bridge
            && let Err(e) = nl.del_address(bridge.index, *address).await
        {
            errors.push(e.to_string());
        }
        if let Err(e) = nl.add_address(parent.index, *address).await {
            errors.push(e.to_string());
        }
    }
    if let Err(e) = nl.set_up(parent.index).await {
        errors.push(e.to_string());
    }
    for SavedRoute(destination, gateway, priority, protocol) in &state.routes {
        let route = Route {
            destination: *destination,
            gateway: *gateway,
            oif: None,
            protocol: *protocol,
            priority: *priority,
            table: RT_TABLE_MAIN,
        };
        if let Err(e) = nl.add_route_v4(&route, parent.index).await {
            errors.push(e.to_string());
        }
    }
    errors
}
