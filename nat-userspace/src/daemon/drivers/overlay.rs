//! The `overlay` driver: one subnet across the hosts that share a cluster store. Each host
//! has the network's bridge with the same (anycast) gateway address, NATs its own
//! sandboxes like a bridge network, and joins the other hosts' sandboxes at layer 2
//! through a VXLAN device on the bridge. The store coordinates names, subnets, VNIs and
//! addresses; `daemon::overlay` programs the remote sandboxes into the VXLAN device.
use std::net::Ipv4Addr;

use async_trait::async_trait;
use ipnetwork::Ipv4Network;

use super::{
    AddressCheck, EndpointContext, NetworkDriver, PlanContext, bridge::BridgeDriver, ip_range, options,
};
use crate::{
    api::NetworkCreate,
    cluster::{Claim, ClaimOutcome, Cluster, CreateError, OverlayRecord},
    config,
    daemon::{
        error::{DaemonError, Result, conflict, internal, invalid, unavailable},
        names, now,
        rollback::{Rollback, Undo},
    },
    ipam,
    model::{Driver, Network, OverlayLink},
    sys::{
        netlink::{self, Link, Netlink},
        vxlan,
    },
};

/// VNIs natd picks from when none is given (Docker's overlay starts at 4096 too).
const FIRST_AUTO_VNI: u32 = 4096;
use crate::cluster::validate::MAX_VNI;

pub struct OverlayDriver;

fn no_cluster() -> DaemonError {
    invalid(
        "overlay networks need a cluster store: start natd with --cluster-store etcd://HOST:PORT and --cluster-advertise IFACE|IP",
    )
}

fn store_error(e: impl std::fmt::Display) -> DaemonError {
    unavailable(e.to_string())
}

/// The link that carries the advertised address: VXLAN packets leave through it.
pub async fn underlay(nl: &Netlink, address: Ipv4Addr) -> Result<Link> {
    for (index, net) in nl.all_addresses().await? {
        if net.ip() == std::net::IpAddr::V4(address) {
            let links = nl.links().await?;
            if let Some(link) = links.into_iter().find(|l| l.index == index) {
                return Ok(link);
            }
        }
    }
    Err(invalid(format!(
        "the advertised address {address} is on no interface of this host"
    )))
}

/// The MTU an overlay network's sandboxes get on this host: the underlay's minus VXLAN.
pub async fn overlay_mtu(nl: &Netlink, cluster: &Cluster) -> Result<u32> {
    Ok(underlay(nl, cluster.advertise).await?.mtu - vxlan::OVERHEAD_V4)
}

/// A stored overlay network as this host runs it (from the cluster's record).
pub fn local_network(record: &OverlayRecord, id: u32, prefix: &str, mtu: u32, local: Ipv4Addr) -> Network {
    Network {
        id,
        name: record.name.clone(),
        driver: Driver::Overlay,
        bridge: names::bridge(prefix, id),
        bridge_adopted: false,
        subnet: record.subnet,
        gateway: record.gateway,
        aux_gateway: None,
        ip_range: None,
        subnet_v6: None,
        gateway_v6: None,
        aux_gateway_v6: None,
        internal: record.internal,
        icc: true,
        ip_masq: !record.internal,
        mtu,
        default: false,
        gateway_mode_v4: Default::default(),
        gateway_mode_v6: Default::default(),
        created: record.created,
        parent: None,
        overlay: Some(OverlayLink {
            vni: record.vni,
            local,
        }),
        trusted_host_interfaces: Vec::new(),
        nat: Default::default(),
    }
}

pub fn record_of(network: &Network, created_by: &str) -> OverlayRecord {
    OverlayRecord {
        name: network.name.clone(),
        subnet: network.subnet,
        gateway: network.gateway,
        vni: network.overlay.as_ref().map_or(0, |o| o.vni),
        internal: network.internal,
        created: network.created,
        created_by: created_by.to_string(),
    }
}

impl OverlayDriver {
    /// Creates (or finds) the VXLAN device and puts it on the bridge.
    async fn attach_vxlan(nl: &Netlink, network: &Network, rollback: Option<&mut Rollback>) -> Result<()> {
        let name = vxlan_name(network);
        let overlay = network.overlay.as_ref().ok_or_else(|| {
            internal(format!(
                "overlay network {} without its VXLAN settings",
                network.name
            ))
        })?;
        let bridge = nl.require_link(&network.bridge).await?;
        let link = match nl.link(&name).await? {
            Some(link) => link,
            None => {
                let under = underlay(nl, overlay.local).await?;
                let link =
                    vxlan::create(nl, &name, overlay.vni, overlay.local, under.index, network.mtu).await?;
                if let Some(rb) = rollback {
                    rb.record(Undo::DeleteLink(name.clone()))?;
                }
                link
            }
        };
        if link.master != Some(bridge.index) {
            nl.set_master(link.index, bridge.index).await?;
        }
        if !link.up {
            nl.set_up(link.index).await?;
        }
        Ok(())
    }
}

/// The VXLAN device's name: the bridge's (`<prefix>b<id>`) with `x` for `b`.
pub fn vxlan_name(network: &Network) -> String {
    let suffix = format!("b{:x}", network.id);
    let prefix = network.bridge.strip_suffix(&suffix).unwrap_or(&network.bridge);
    names::vxlan(prefix, network.id)
}

#[async_trait]
impl NetworkDriver for OverlayDriver {
    fn kind(&self) -> Driver {
        Driver::Overlay
    }

    async fn plan(&self, ctx: &PlanContext<'_>, req: &NetworkCreate, id: u32) -> Result<Network> {
        super::addressing::refuse_ipv6(req, "overlay")?;
        let cluster = ctx.cluster.ok_or_else(no_cluster)?;
        let opts = options(req, &["vni", "com.docker.network.driver.overlay.vxlanid_list"])?;
        // What other hosts created up to now, read fresh.
        cluster.refresh().await.map_err(store_error)?;
        let view = cluster.view();
        if view.networks.contains_key(&req.name) {
            return Err(conflict(format!("network with name {} already exists", req.name)));
        }
        let mtu_max = overlay_mtu(ctx.nl, cluster).await?;
        let mtu = req.mtu.unwrap_or(mtu_max);
        config::validate_mtu(mtu).map_err(invalid)?;
        if mtu > mtu_max {
            return Err(invalid(format!(
                "MTU {mtu} does not fit the underlay: at most {mtu_max} (the underlay's MTU minus {} bytes of VXLAN headers)",
                vxlan::OVERHEAD_V4
            )));
        }
        let cluster_subnets: Vec<Ipv4Network> = view.networks.values().map(|n| n.subnet).collect();
        let requested = super::addressing::split(req, "overlay")?;
        let subnet = BridgeDriver::subnet(
            ctx,
            requested.subnet_v4,
            &cluster_subnets,
            ipam::pick_free_overlay_subnet,
        )
        .await?;
        let gateway = BridgeDriver::gateway(subnet, requested.gateway_v4)?;
        let used_vnis: Vec<u32> = view.networks.values().map(|n| n.vni).collect();
        let vni = match opts
            .get("vni")
            .or(opts.get("com.docker.network.driver.overlay.vxlanid_list"))
        {
            Some(text) => {
                let vni: u32 = text
                    .parse()
                    .ok()
                    .filter(|v| (1..=MAX_VNI).contains(v))
                    .ok_or_else(|| {
                        invalid(format!(
                            "invalid VNI {text:?}: it must be a number from 1 to {MAX_VNI}"
                        ))
                    })?;
                if used_vnis.contains(&vni) {
                    return Err(conflict(format!(
                        "VNI {vni} is already used by another overlay network"
                    )));
                }
                vni
            }
            None => (FIRST_AUTO_VNI..=MAX_VNI)
                .find(|v| !used_vnis.contains(v))
                .ok_or_else(|| conflict("no free VNI left"))?,
        };
        if ip_range(subnet, req.ip_range.as_deref())?.is_some() {
            return Err(invalid(
                "--ip-range is not supported on overlay networks (addresses are coordinated across hosts)",
            ));
        }
        let record = OverlayRecord {
            name: req.name.clone(),
            subnet,
            gateway,
            vni,
            internal: req.internal,
            created: now(),
            created_by: cluster.host_id.clone(),
        };
        let mut network = local_network(&record, id, &ctx.config.name_prefix, mtu, cluster.advertise);
        network.icc = req.icc.unwrap_or(true);
        Ok(network)
    }

    async fn announce(&self, ctx: &PlanContext<'_>, network: &Network) -> Result<()> {
        let cluster = ctx.cluster.ok_or_else(no_cluster)?;
        // The overlap check again, at the revision the create is conditioned on.
        let revision = cluster.refresh().await.map_err(store_error)?;
        if let Some(other) = cluster
            .view()
            .networks
            .values()
            .find(|n| n.name != network.name && n.subnet.overlaps(network.subnet))
        {
            return Err(conflict(format!(
                "Pool overlaps with other one on this address space (overlay network {})",
                other.name
            )));
        }
        cluster
            .create_network(&record_of(network, &cluster.host_id), revision)
            .await
            .map_err(|e| match e {
                CreateError::Store(e) => store_error(e),
                other => conflict(other.to_string()),
            })
    }

    async fn withdraw(&self, cluster: Option<&Cluster>, network: &Network) -> Result<()> {
        let cluster = cluster.ok_or_else(no_cluster)?;
        let revision = cluster.refresh().await.map_err(store_error)?;
        let view = cluster.view();
        let Some(record) = view.networks.get(&network.name) else {
            return Ok(()); // Already removed by another host.
        };
        let users: Vec<String> = view
            .claims
            .get(&network.name)
            .into_iter()
            .flatten()
            .filter(|(_, c)| c.host != cluster.host_id && view.hosts.contains_key(&c.host))
            .map(|(ip, c)| format!("{} ({ip}) on host {}", c.sandbox, view.host_name(&c.host)))
            .collect();
        if !users.is_empty() {
            return Err(conflict(format!(
                "error while removing network: network {} id {} has active endpoints ({})",
                network.name,
                network.id,
                users.join(", ")
            )));
        }
        // Only if nobody claimed an address since the check above.
        if !cluster
            .remove_network(record, Some(revision))
            .await
            .map_err(store_error)?
        {
            return Err(conflict(format!(
                "network {} changed in the cluster store meanwhile; try again",
                network.name
            )));
        }
        Ok(())
    }

    async fn unannounce(&self, cluster: Option<&Cluster>, network: &Network) -> Result<()> {
        let cluster = cluster.ok_or_else(no_cluster)?;
        cluster
            .remove_network(&record_of(network, &cluster.host_id), None)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn setup(&self, nl: &Netlink, network: Network, rollback: &mut Rollback) -> Result<Network> {
        BridgeDriver::bring_up(nl, &network, Some(&mut *rollback)).await?;
        Self::attach_vxlan(nl, &network, Some(rollback)).await?;
        Ok(network)
    }

    async fn ensure(&self, nl: &Netlink, network: &Network) -> Result<bool> {
        let created = BridgeDriver::bring_up(nl, network, None).await?;
        Self::attach_vxlan(nl, network, None).await?;
        Ok(created)
    }

    async fn teardown(&self, nl: &Netlink, network: &Network) -> Vec<String> {
        let mut errors = Vec::new();
        for name in [vxlan_name(network), network.bridge.clone()] {
            if let Ok(Some(link)) = nl.link(&name).await
                && let Err(e) = nl.delete_link(link.index).await
            {
                errors.push(e.to_string());
            }
        }
        errors
    }

    /// Every address the cluster view has claimed on the network (the claim at the end
    /// stays the final word: the view may be behind).
    async fn foreign_addresses(&self, ctx: &EndpointContext<'_>, network: &Network) -> Result<Vec<Ipv4Addr>> {
        let cluster = ctx.cluster.ok_or_else(no_cluster)?;
        Ok(cluster
            .view()
            .claims
            .get(&network.name)
            .map(|claims| claims.keys().copied().collect())
            .unwrap_or_default())
    }

    async fn check_address(
        &self,
        ctx: &EndpointContext<'_>,
        network: &Network,
        ip: Ipv4Addr,
    ) -> Result<AddressCheck> {
        let cluster = ctx.cluster.ok_or_else(no_cluster)?;
        let claim = Claim {
            host: cluster.host_id.clone(),
            sandbox: ctx.sandbox.to_string(),
            // Known before the interface exists: the other hosts can program it at once.
            mac: self.endpoint_mac(ip).map(|m| netlink::format_mac(&m)),
        };
        match cluster
            .claim(&network.name, ip, &claim)
            .await
            .map_err(store_error)?
        {
            ClaimOutcome::Claimed => Ok(AddressCheck::Free),
            ClaimOutcome::Taken(owner) => Ok(AddressCheck::InUse(format!(
                "{ip} is used by {} on host {}",
                owner.sandbox,
                cluster.view().host_name(&owner.host)
            ))),
        }
    }

    fn translated(&self) -> bool {
        true
    }

    /// The VXLAN device.
    fn other_bridge_ports(&self) -> usize {
        1
    }

    /// Docker's 02:42 followed by the address: when an address is reused on another host,
    /// the neighbour entries other sandboxes still hold for it stay right.
    fn endpoint_mac(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        Some(crate::cluster::validate::overlay_mac(ip))
    }
}
