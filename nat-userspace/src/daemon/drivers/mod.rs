//! Network drivers behind one abstraction (netavark's `NetworkDriver`, libnetwork's
//! drivers): what differs between a NATed bridge network and one on the host's LAN is
//! answered here, and nowhere else asks which driver a network has.
pub mod addressing;
pub mod bridge;
pub mod hostbridge;
pub mod nat;
pub mod overlay;
pub mod underlay;

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnetwork::Ipv4Network;

use async_trait::async_trait;

use super::{error::Result, rollback::Rollback};
use crate::{
    api::NetworkCreate,
    config::{self, DaemonConfig},
    cluster::Cluster,
    ipam,
    model::{Driver, Network},
    sys::netlink::Netlink,
};

/// What a driver sees when it plans a network.
pub struct PlanContext<'a> {
    pub nl: &'a Netlink,
    pub config: &'a DaemonConfig,
    /// Every network natd has.
    pub networks: &'a BTreeMap<String, Network>,
    /// The cluster natd is a member of (`--cluster-store`).
    pub cluster: Option<&'a Cluster>,
    /// The host's unique-local /48 that `--ipv6` networks without an IPv6 subnet get a
    /// /64 of.
    pub ula_pool: ipnetwork::Ipv6Network,
    /// The dataplane natd runs (never `Auto`).
    pub dataplane: crate::config::DataplaneKind,
}

/// What a driver sees when it checks a new endpoint's address.
pub struct EndpointContext<'a> {
    pub nl: &'a Netlink,
    pub cluster: Option<&'a Cluster>,
    /// The sandbox the endpoint is for.
    pub sandbox: &'a str,
}

/// Whether an address a sandbox is about to get is free where the network lives.
pub enum AddressCheck {
    Free,
    /// Someone else uses it; the text says who.
    InUse(String),
}

#[async_trait]
pub trait NetworkDriver: Send + Sync {
    fn kind(&self) -> Driver;

    /// Validates `req` into the network to create (id already allocated). No side effects.
    async fn plan(&self, ctx: &PlanContext<'_>, req: &NetworkCreate, id: u32) -> Result<Network>;

    /// Makes the planned network known beyond this host before it is set up (overlay:
    /// the cluster store). Undone by `withdraw` when the setup fails.
    async fn announce(&self, _ctx: &PlanContext<'_>, _network: &Network) -> Result<()> {
        Ok(())
    }

    /// `network rm`: refuses while the network is in use elsewhere, then removes what
    /// `announce` made known.
    async fn withdraw(&self, _cluster: Option<&Cluster>, _network: &Network) -> Result<()> {
        Ok(())
    }

    /// Undoes `announce` after a failed create (no checks: nobody can use it yet).
    async fn unannounce(&self, _cluster: Option<&Cluster>, _network: &Network) -> Result<()> {
        Ok(())
    }

    /// Puts the planned network into the kernel, recording each change in `rollback`;
    /// returns the network as created (e.g. with what its parent NIC had before).
    async fn setup(&self, nl: &Netlink, network: Network, rollback: &mut Rollback) -> Result<Network>;

    /// Reconcile: brings back what is missing of a stored network. Returns whether it had
    /// to create the bridge.
    async fn ensure(&self, nl: &Netlink, network: &Network) -> Result<bool>;

    /// Removes what natd put into the kernel for the network; keeps going on errors and
    /// returns them.
    async fn teardown(&self, nl: &Netlink, network: &Network) -> Vec<String>;

    /// Addresses of the network's segment IPAM must never hand out, besides natd's own
    /// records (e.g. the host's addresses on a LAN).
    async fn foreign_addresses(&self, ctx: &EndpointContext<'_>, network: &Network) -> Result<Vec<Ipv4Addr>>;

    /// Checks on the wire that `ip` is free before a sandbox gets it.
    /// (overlay: claims it in the cluster store.)
    async fn check_address(&self, ctx: &EndpointContext<'_>, network: &Network, ip: Ipv4Addr) -> Result<AddressCheck>;

    /// Whether natd's dataplane serves the network: NAT, published ports and isolation.
    fn translated(&self) -> bool;

    /// Ports of the network's bridge that are not sandboxes' (the LAN's NIC, the VXLAN
    /// device): they count against `sys::netlink::BRIDGE_MAX_PORTS`.
    fn other_bridge_ports(&self) -> usize {
        0
    }

    /// The MAC an endpoint with address `ip` gets, when the driver fixes it (None: the
    /// kernel's random one).
    fn endpoint_mac(&self, _ip: Ipv4Addr) -> Option<[u8; 6]> {
        None
    }
}

static BRIDGE: bridge::BridgeDriver = bridge::BridgeDriver;
static HOSTBRIDGE: hostbridge::HostBridgeDriver = hostbridge::HostBridgeDriver;
static OVERLAY: overlay::OverlayDriver = overlay::OverlayDriver;

/// The driver of a stored network.
pub fn of(kind: Driver) -> &'static dyn NetworkDriver {
    match kind {
        Driver::Bridge => &BRIDGE,
        Driver::HostBridge => &HOSTBRIDGE,
        Driver::Overlay => &OVERLAY,
    }
}

/// The driver `network create -d NAME` asks for.
pub fn by_name(name: &str) -> Option<&'static dyn NetworkDriver> {
    [Driver::Bridge, Driver::HostBridge, Driver::Overlay]
        .into_iter()
        .find(|d| d.name() == name)
        .map(of)
}

/// `--opt KEY=VALUE` of a create request, checked against what the driver knows.
pub fn options<'a>(req: &'a NetworkCreate, known: &[&str]) -> Result<BTreeMap<&'a str, &'a str>> {
    let mut out = BTreeMap::new();
    for (key, value) in &req.options {
        // Docker's long name of the bridge option.
        let key = if key == "com.docker.network.bridge.name" {
            "bridge-name"
        } else {
            key.as_str()
        };
        if !known.contains(&key) {
            return Err(super::error::invalid(format!(
                "unknown network option {key:?} (known: {})",
                known.join(", ")
            )));
        }
        out.insert(key, value.as_str());
    }
    Ok(out)
}

/// `--ip-range`: a pool inside the network's subnet.
pub fn ip_range(subnet: Ipv4Network, text: Option<&str>) -> Result<Option<Ipv4Network>> {
    let Some(text) = text else { return Ok(None) };
    let range =
        config::parse_v4_subnet("ip-range", text).map_err(|e| super::error::invalid(e.to_string()))?;
    ipam::check_pool(subnet, range).map_err(|e| super::error::invalid(e.to_string()))?;
    Ok(Some(range))
}
