//! The `bridge` driver: a Linux bridge with natd's gateway address, sandboxes behind NAT,
//! isolated from other networks by the dataplane (Docker's default driver).
use std::{collections::HashSet, net::Ipv4Addr};

use async_trait::async_trait;
use ipnetwork::{IpNetwork, Ipv4Network};
use tracing::warn;

use super::{AddressCheck, EndpointContext, NetworkDriver, PlanContext, addressing, ip_range, options};
use crate::{
    api::NetworkCreate,
    config,
    daemon::{
        error::{Result, conflict, invalid},
        names, now,
        rollback::{Rollback, Undo},
    },
    ipam,
    model::{Driver, Network},
    sys::{
        netlink::{LinkKind, Netlink},
        sysctl,
    },
};

/// The bridge's link-local address on networks with IPv6 (Docker's too).
const LINK_LOCAL_GATEWAY: &str = "fe80::1/64";

pub struct BridgeDriver;

impl BridgeDriver {
    /// Subnets a new network must not overlap: natd's networks and the host's routes
    /// (routes through natd's own bridges are its networks, compared separately).
    pub(super) async fn taken_subnets(ctx: &PlanContext<'_>) -> Result<(Vec<Ipv4Network>, Vec<Ipv4Network>)> {
        Self::taken_by(ctx.nl, ctx.networks).await
    }

    /// The subnets of natd's `networks`, and the IPv4 routes on the host that are not on
    /// one of their bridges (the underlay's and any the operator made).
    pub async fn taken_by(
        nl: &Netlink,
        networks: &std::collections::BTreeMap<String, crate::model::Network>,
    ) -> Result<(Vec<Ipv4Network>, Vec<Ipv4Network>)> {
        let mut bridge_indexes = HashSet::new();
        for network in networks.values() {
            if let Some(link) = nl.link(&network.bridge).await? {
                bridge_indexes.insert(link.index);
            }
        }
        let routes = nl
            .routes_v4()
            .await?
            .into_iter()
            .filter_map(|r| match r.destination {
                IpNetwork::V4(d) if d.prefix() > 0 && r.oif.is_none_or(|o| !bridge_indexes.contains(&o)) => {
                    Some(d)
                }
                _ => None,
            })
            .collect();
        let networks = networks.values().map(|n| n.subnet).collect();
        Ok((networks, routes))
    }

    /// `--subnet` checked against what is taken, or the first free one from `pick`'s pool.
    /// `elsewhere`: subnets taken beyond this host (an overlay's other networks).
    pub(super) async fn subnet(
        ctx: &PlanContext<'_>,
        requested: Option<&str>,
        elsewhere: &[Ipv4Network],
        pick: fn(&[Ipv4Network]) -> Result<Ipv4Network, ipam::IpamError>,
    ) -> Result<Ipv4Network> {
        let (mut networks, routes) = Self::taken_subnets(ctx).await?;
        networks.extend_from_slice(elsewhere);
        let Some(text) = requested else {
            let taken: Vec<Ipv4Network> = networks.into_iter().chain(routes).collect();
            return pick(&taken).map_err(|e| conflict(e.to_string()));
        };
        let subnet = config::parse_v4_subnet("subnet", text).map_err(|e| invalid(e.to_string()))?;
        if subnet.prefix() > 30 {
            return Err(invalid(format!(
                "subnet {subnet} is too small for sandboxes (at most /30)"
            )));
        }
        if networks.iter().any(|n| n.overlaps(subnet)) {
            return Err(conflict("Pool overlaps with other one on this address space"));
        }
        if let Some(route) = routes.iter().find(|r| r.overlaps(subnet)) {
            return Err(conflict(format!(
                "subnet {subnet} overlaps with route {route} on the host"
            )));
        }
        Ok(subnet)
    }

    /// `--gateway` inside `subnet` (not its network or broadcast address), or the first host.
    pub(super) fn gateway(subnet: Ipv4Network, requested: Option<&str>) -> Result<Ipv4Addr> {
        let Some(text) = requested else {
            return Ok(ipam::default_gateway(subnet));
        };
        let gw: Ipv4Addr = text
            .parse()
            .map_err(|_| invalid(format!("invalid gateway address: {text}")))?;
        if !subnet.contains(gw) {
            return Err(invalid(format!(
                "invalid gateway {gw}: parent subnet {subnet} doesn't contain this address"
            )));
        }
        if gw == subnet.network() || gw == subnet.broadcast() {
            return Err(invalid(format!(
                "gateway {gw} is the network or broadcast address of {subnet}"
            )));
        }
        Ok(gw)
    }

    /// Creates or adopts the bridge and gives it the gateway address, MTU and up state.
    /// Returns whether the bridge had to be created.
    pub(super) async fn bring_up(
        nl: &Netlink,
        network: &Network,
        mut rollback: Option<&mut Rollback>,
    ) -> Result<bool> {
        let (link, created) = match nl.link(&network.bridge).await? {
            Some(link) => (link, false),
            None => {
                let link = nl.create_bridge(&network.bridge, network.mtu).await?;
                if let Some(rb) = rollback.as_deref_mut() {
                    rb.record(Undo::DeleteLink(network.bridge.clone()))?;
                }
                (link, true)
            }
        };
        if link.kind != LinkKind::Bridge {
            return Err(conflict(format!(
                "interface {} exists and is not a bridge",
                network.bridge
            )));
        }
        if network.subnet_v6.is_some() {
            // No kernel-made link-local address (it would be tentative, duplicate address
            // detection, for a second or two once the first port comes up, and until then
            // the host sends no neighbour solicitation on the bridge: a new network's first
            // IPv6 packets through the kernel waited 2 s). natd gives the bridge fe80::1
            // without detection instead, as Docker does; the bridge is natd's.
            for (setting, value) in [("addr_gen_mode", "1"), ("accept_dad", "0")] {
                if let Err(e) = sysctl::write_iface_v6(&network.bridge, setting, value) {
                    warn!(bridge = %network.bridge, error = %e, "cannot set {setting}");
                }
            }
        }
        let had = nl.addresses(link.index).await?;
        let mut addresses = vec![network.gateway_cidr()];
        addresses.extend(network.gateway_v6_cidr());
        if network.subnet_v6.is_some() {
            addresses.push(LINK_LOCAL_GATEWAY.parse().expect("a valid address"));
        }
        for address in addresses {
            if had.contains(&address) {
                continue;
            }
            nl.add_address(link.index, address).await?;
            // A created bridge takes its addresses along when it is deleted.
            if !created && let Some(rb) = rollback.as_deref_mut() {
                rb.record(Undo::DeleteAddress {
                    link: network.bridge.clone(),
                    address,
                })?;
            }
        }
        if !network.bridge_adopted && link.mtu != network.mtu {
            nl.set_mtu(link.index, network.mtu).await?;
        }
        if !link.up {
            nl.set_up(link.index).await?;
        }
        // Replies of published-port flows are translated as they leave a sandbox, so they
        // reach the host's IP layer with a host address as source; accept_local lets the
        // bridge take them. The sandbox hook drops anything a sandbox sends with a host
        // address of its own making, so nothing else can use this.
        if let Err(e) = sysctl::write_iface_v4(&network.bridge, "accept_local", "1") {
            warn!(bridge = %network.bridge, error = %e, "cannot set accept_local");
        }
        Ok(created)
    }
}

#[async_trait]
impl NetworkDriver for BridgeDriver {
    fn kind(&self) -> Driver {
        Driver::Bridge
    }

    async fn plan(&self, ctx: &PlanContext<'_>, req: &NetworkCreate, id: u32) -> Result<Network> {
        let opts = options(
            req,
            &[
                "bridge-name",
                addressing::GATEWAY_MODE_V4,
                addressing::GATEWAY_MODE_V6,
                addressing::TRUSTED_HOST_INTERFACES,
                super::nat::FILTERING,
                super::nat::MASQUERADE_PORTS,
                super::nat::HAIRPIN_SOURCE,
            ],
        )?;
        let nat = super::nat::behaviour(&opts, req.internal, ctx.dataplane)?;
        let (gateway_mode_v4, gateway_mode_v6) = addressing::gateway_modes(&opts)?;
        let trusted_host_interfaces = addressing::trusted_host_interfaces(&opts)?;
        let requested = addressing::split(req, "bridge")?;
        let mtu = req.mtu.unwrap_or(ctx.config.mtu);
        config::validate_mtu(mtu).map_err(invalid)?;
        let subnet = Self::subnet(ctx, requested.subnet_v4, &[], ipam::pick_free_subnet).await?;
        let gateway = Self::gateway(subnet, requested.gateway_v4)?;
        let v6 = addressing::plan_v6(ctx, req, &requested)?;
        let ip_range = ip_range(subnet, req.ip_range.as_deref())?;
        let bridge = opts
            .get("bridge-name")
            .map(|b| b.to_string())
            .unwrap_or_else(|| names::bridge(&ctx.config.name_prefix, id));
        config::validate_ifname(&bridge).map_err(invalid)?;
        if ctx.networks.values().any(|n| n.bridge == bridge) {
            return Err(conflict(format!(
                "bridge {bridge} is already used by another network"
            )));
        }
        let adopted = match ctx.nl.link(&bridge).await? {
            Some(link) if link.kind == LinkKind::Bridge => true,
            Some(_) => {
                return Err(conflict(format!("interface {bridge} exists and is not a bridge")));
            }
            None => false,
        };
        Ok(Network {
            id,
            name: req.name.clone(),
            driver: Driver::Bridge,
            bridge,
            bridge_adopted: adopted,
            subnet,
            gateway,
            aux_gateway: None,
            ip_range,
            subnet_v6: v6.map(|(subnet, _)| subnet),
            gateway_v6: v6.map(|(_, gateway)| gateway),
            aux_gateway_v6: None,
            internal: req.internal,
            icc: req.icc.unwrap_or(true),
            ip_masq: !req.internal,
            mtu,
            default: false,
            gateway_mode_v4,
            gateway_mode_v6,
            created: now(),
            parent: None,
            overlay: None,
            trusted_host_interfaces,
            nat,
        })
    }

    async fn setup(&self, nl: &Netlink, network: Network, rollback: &mut Rollback) -> Result<Network> {
        Self::bring_up(nl, &network, Some(rollback)).await?;
        Ok(network)
    }

    async fn ensure(&self, nl: &Netlink, network: &Network) -> Result<bool> {
        Self::bring_up(nl, network, None).await
    }

    async fn teardown(&self, nl: &Netlink, network: &Network) -> Vec<String> {
        let mut errors = Vec::new();
        let Ok(Some(link)) = nl.link(&network.bridge).await else {
            return errors;
        };
        if network.bridge_adopted {
            // Someone else's bridge: only natd's addresses go.
            let mut addresses = vec![network.gateway_cidr()];
            addresses.extend(network.gateway_v6_cidr());
            for address in addresses {
                if let Err(e) = nl.del_address(link.index, address).await {
                    errors.push(e.to_string());
                }
            }
        } else if let Err(e) = nl.delete_link(link.index).await {
            errors.push(e.to_string());
        }
        errors
    }

    async fn foreign_addresses(
        &self,
        _ctx: &EndpointContext<'_>,
        _network: &Network,
    ) -> Result<Vec<Ipv4Addr>> {
        Ok(Vec::new())
    }

    async fn check_address(
        &self,
        _ctx: &EndpointContext<'_>,
        _network: &Network,
        _ip: Ipv4Addr,
    ) -> Result<AddressCheck> {
        // natd owns the subnet: its records are the whole truth.
        Ok(AddressCheck::Free)
    }

    fn translated(&self) -> bool {
        true
    }
}
