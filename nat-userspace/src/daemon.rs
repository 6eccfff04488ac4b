//! natd's core: validates requests, allocates addresses and ports, wires the kernel through
//! `netlink`/`netns`, persists through `state`, and keeps the dataplane in sync. Every
//! mutating operation validates first, then changes the kernel with undo on failure, then
//! commits, so a refused or failed request leaves nothing behind.
use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    str::FromStr as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use tracing::{info, warn};

use crate::{
    api::{
        AttachedSandbox, ConnectRequest, Driver, Endpoint, InfoResponse, Network, NetworkCreate, NetworkMode,
        NetworkView, PortMapping, RunRequest, Sandbox, SandboxView,
    },
    config::{self, DaemonConfig},
    dataplane::{self, Dataplane, Desired, Iface, IfaceRole, PortRule},
    ipam,
    netlink::{self, LinkKind, Netlink, NetlinkError},
    netns,
    portspec::{ExposeSpec, Proto, PublishSpec},
    process,
    state::{Change, Snapshot, StateError, Store},
};

#[cfg(test)]
mod tests {
    #[test]
    fn generated_names() {
        use super::is_generated_ifname as g;
        assert!(g("natd", "natdv1f") && g("natd", "natdp1f") && g("natd", "natdb2"));
        assert!(!g("natd", "natd0") && !g("natd", "natdbr") && !g("natd", "natdv") && !g("natd", "eth0"));
        assert!(!g("natd", "natdvX1") && !g("natd", "natdbackup"));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Dataplane(#[from] dataplane::DataplaneError),
    #[error("{0}")]
    Internal(String),
}

type Result<T, E = DaemonError> = std::result::Result<T, E>;

fn invalid(message: impl Into<String>) -> DaemonError {
    DaemonError::Invalid(message.into())
}

pub const DEFAULT_NETWORK: &str = "bridge";
const RESERVED_NETWORK_NAMES: [&str; 3] = ["bridge", "host", "none"];

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Docker's rule for container and network names.
fn validate_name(kind: &str, name: &str) -> Result<()> {
    let ok = name.len() >= 2
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "Invalid {kind} name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed (2-64 characters)"
        )))
    }
}

pub struct Daemon {
    config: DaemonConfig,
    store: Store,
    state: Snapshot,
    nl: Netlink,
    dataplane: Box<dyn Dataplane>,
    uplinks: Vec<String>,
    port_range: (u16, u16),
    snat_ports: (u16, u16),
    last_reconcile: Vec<String>,
    /// Sandbox ports whose hairpin mode was set (ifindex, mode), to set it once.
    hairpin_set: HashSet<(u32, bool)>,
}

impl Daemon {
    pub async fn start(config: DaemonConfig) -> anyhow::Result<Self> {
        let (store, state) = Store::open(&config.state_dir)?;
        let nl = Netlink::connect()?;
        for (key, value) in [("net.ipv4.ip_forward", "1")].into_iter().chain(
            config
                .fixed_cidr_v6
                .map(|_| ("net.ipv6.conf.all.forwarding", "1")),
        ) {
            if let Err(e) = netlink::write_sysctl(key, value) {
                warn!(key, error = %e, "cannot set sysctl");
            }
        }
        let uplinks = resolve_uplinks(&nl, &config.uplinks).await?;
        let port_range = match config.port_range {
            Some(range) => range,
            None => local_port_range(),
        };
        let snat_ports = config
            .masquerade_port_range
            .unwrap_or_else(|| masquerade_ports(local_port_range()));
        let dataplane = dataplane::create(&config)?;
        info!(dataplane = dataplane.kind(), ?uplinks, "dataplane ready");
        let mut daemon = Self {
            config,
            store,
            state,
            nl,
            dataplane,
            uplinks,
            port_range,
            snat_ports,
            last_reconcile: Vec::new(),
            hairpin_set: HashSet::new(),
        };
        daemon.ensure_default_network().await?;
        let report = daemon.reconcile().await?;
        for line in &report {
            info!(target: "natd::reconcile", "{line}");
        }
        if report.is_empty() {
            info!(target: "natd::reconcile", "kernel state matches the stored state");
        }
        daemon.last_reconcile = report;
        Ok(daemon)
    }

    fn alloc_id(&mut self) -> (u32, Change) {
        let id = self.state.next_id.max(1);
        self.state.next_id = id + 1;
        (id as u32, Change::NextId(id + 1))
    }

    /// The network named `bridge` follows natd's flags: created on first start, updated when
    /// the flags change.
    async fn ensure_default_network(&mut self) -> Result<()> {
        let existing = self.state.networks.get(DEFAULT_NETWORK).cloned();
        let (id, id_change) = match &existing {
            Some(n) => (n.id, None),
            None => {
                let (id, change) = self.alloc_id();
                (id, Some(change))
            }
        };
        let cfg = &self.config;
        let adopted = match &existing {
            Some(n) if n.bridge == cfg.bridge => n.bridge_adopted,
            _ => self.nl.link(&cfg.bridge).await?.is_some(),
        };
        let network = Network {
            id,
            name: DEFAULT_NETWORK.into(),
            driver: Driver::Bridge,
            bridge: cfg.bridge.clone(),
            bridge_adopted: adopted,
            subnet: config::subnet_of(cfg.bip).to_string(),
            gateway: cfg.bip.ip(),
            aux_gateway: cfg.default_gateway.filter(|g| *g != cfg.bip.ip()),
            ip_range: cfg.fixed_cidr.map(|c| c.to_string()),
            subnet_v6: cfg.fixed_cidr_v6.map(|c| c.to_string()),
            gateway_v6: cfg.fixed_cidr_v6.map(first_v6_host),
            aux_gateway_v6: cfg.default_gateway_v6,
            internal: false,
            icc: cfg.icc,
            ip_masq: cfg.ip_masq,
            mtu: cfg.mtu,
            default: true,
            created: existing.as_ref().map(|n| n.created).unwrap_or_else(now),
            parent: None,
        };
        if existing.as_ref() != Some(&network) {
            if let Some(old) = &existing {
                info!(old = %old.subnet, new = %network.subnet, "default network settings changed");
                for sandbox in self.state.sandboxes.values() {
                    for ep in sandbox.endpoints.iter().filter(|e| e.network == DEFAULT_NETWORK) {
                        if !cfg.bip.contains(ep.ipv4) {
                            warn!(sandbox = %sandbox.name, ip = %ep.ipv4, "address is outside the new --bip subnet; reconnect the sandbox");
                        }
                    }
                }
            }
            let mut changes = vec![Change::PutNetwork(network.clone())];
            changes.extend(id_change);
            self.store.commit(changes)?;
            self.state.networks.insert(network.name.clone(), network);
        }
        Ok(())
    }

    // ----- reconcile ---------------------------------------------------------------------

    /// Makes the kernel match the stored state and removes what natd owns but no longer
    /// needs. Returns one line per change.
    pub async fn reconcile(&mut self) -> Result<Vec<String>> {
        let mut report = Vec::new();
        let networks: Vec<Network> = self.state.networks.values().cloned().collect();
        for network in &networks {
            if self.ensure_bridge(network).await? {
                report.push(format!(
                    "created bridge {} for network {}",
                    network.bridge, network.name
                ));
            }
        }
        let sandboxes: Vec<Sandbox> = self.state.sandboxes.values().cloned().collect();
        for sandbox in &sandboxes {
            report.extend(self.reconcile_sandbox(sandbox).await);
        }
        report.extend(self.remove_stale().await?);
        let sync = self.sync_dataplane().await?;
        report.extend(sync.attached.iter().map(|l| format!("attached program {l}")));
        report.extend(
            sync.detached
                .iter()
                .map(|l| format!("detached stale program {l}")),
        );
        self.last_reconcile = report.clone();
        Ok(report)
    }

    async fn reconcile_sandbox(&mut self, sandbox: &Sandbox) -> Vec<String> {
        let mut report = Vec::new();
        let Some(path) = sandbox.netns.as_ref().map(PathBuf::from) else {
            return report;
        };
        if matches!(sandbox.mode, NetworkMode::Container(_)) {
            return report;
        }
        if !path.exists() || !netns::is_netns(&path) {
            if !sandbox.netns_owned {
                report.push(format!(
                    "sandbox {}: adopted namespace {} is gone; remove the sandbox",
                    sandbox.name,
                    path.display()
                ));
                return report;
            }
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            match netns::create_named(&name) {
                Ok(_) => report.push(format!(
                    "sandbox {}: recreated namespace {}",
                    sandbox.name,
                    path.display()
                )),
                Err(e) => {
                    report.push(format!(
                        "sandbox {}: cannot recreate namespace: {e}",
                        sandbox.name
                    ));
                    return report;
                }
            }
        }
        for (i, endpoint) in sandbox.endpoints.iter().enumerate() {
            let Some(network) = self.state.networks.get(&endpoint.network).cloned() else {
                continue;
            };
            match self.nl.link(&endpoint.host_ifname).await {
                Ok(Some(link)) => {
                    if let Ok(Some(bridge)) = self.nl.link(&network.bridge).await
                        && (link.master != Some(bridge.index) || !link.up)
                    {
                        let _ = self.nl.set_master(link.index, bridge.index).await;
                        let _ = self.nl.set_up(link.index).await;
                        report.push(format!(
                            "sandbox {}: re-attached {} to {}",
                            sandbox.name, link.name, network.bridge
                        ));
                    }
                }
                Ok(None) => {
                    let sandbox_mtu = sandbox.mtu.unwrap_or(network.mtu);
                    match self
                        .wire_endpoint(&path, &network, endpoint, i == 0, sandbox_mtu)
                        .await
                    {
                        Ok(_) => report.push(format!(
                            "sandbox {}: recreated {} ({} in the sandbox, {})",
                            sandbox.name, endpoint.host_ifname, endpoint.ifname, endpoint.ipv4
                        )),
                        Err(e) => report.push(format!(
                            "sandbox {}: cannot recreate {}: {e}",
                            sandbox.name, endpoint.host_ifname
                        )),
                    }
                }
                Err(e) => report.push(format!("sandbox {}: {e}", sandbox.name)),
            }
        }
        report
    }

    /// Interfaces, namespaces and /etc/netns entries carrying natd's prefix that no stored
    /// object explains.
    async fn remove_stale(&mut self) -> Result<Vec<String>> {
        let mut report = Vec::new();
        let prefix = &self.config.name_prefix;
        let wanted_links: HashSet<String> = self
            .state
            .sandboxes
            .values()
            .flat_map(|s| s.endpoints.iter().map(|e| e.host_ifname.clone()))
            .chain(self.state.networks.values().map(|n| n.bridge.clone()))
            .collect();
        for link in self.nl.links().await? {
            if is_generated_ifname(prefix, &link.name) && !wanted_links.contains(&link.name) {
                self.nl.delete_link(link.index).await?;
                report.push(format!("removed stale interface {}", link.name));
            }
        }
        let wanted_ns: HashSet<String> = self
            .state
            .sandboxes
            .values()
            .filter(|s| s.netns_owned)
            .filter_map(|s| s.netns.clone())
            .collect();
        let ns_prefix = sandbox_ns_prefix(prefix);
        if let Ok(entries) = std::fs::read_dir(netns::NETNS_RUN_DIR) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let path = entry.path();
                if name.starts_with(&ns_prefix) && !wanted_ns.contains(&path.display().to_string()) {
                    process::kill_all(&netns::pids_in(&path));
                    netns::delete_named(&path)?;
                    report.push(format!("removed stale namespace {name}"));
                }
            }
        }
        let wanted_etc: HashSet<String> = self
            .state
            .sandboxes
            .values()
            .filter_map(|s| s.etc_name.clone())
            .collect();
        if let Ok(entries) = std::fs::read_dir(netns::NETNS_ETC_DIR) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with(&ns_prefix) && !wanted_etc.contains(&name) {
                    let _ = netns::remove_etc(&name);
                    report.push(format!("removed stale /etc/netns/{name}"));
                }
            }
        }
        Ok(report)
    }

    async fn desired_dataplane(&self) -> Result<Desired> {
        let mut desired = Desired {
            snat_ports: self.snat_ports,
            ..Default::default()
        };
        // Two dumps, whatever the number of sandboxes: no netlink round trip per veth.
        let addresses = self.nl.all_addresses().await?;
        let links: std::collections::HashMap<String, u32> = self
            .nl
            .links()
            .await?
            .into_iter()
            .map(|l| (l.name, l.index))
            .collect();
        let first_v4 = |index: u32| {
            addresses.iter().find_map(|(i, net)| match net {
                IpNetwork::V4(v4) if *i == index => Some(v4.ip()),
                _ => None,
            })
        };
        desired.local_addrs = addresses
            .iter()
            .filter_map(|(_, net)| match net {
                IpNetwork::V4(v4) => Some(v4.ip()),
                _ => None,
            })
            .collect();
        for uplink in &self.uplinks {
            if let Some(&index) = links.get(uplink) {
                desired.ifaces.push(Iface {
                    index,
                    name: uplink.clone(),
                    role: IfaceRole::Uplink {
                        addr: first_v4(index),
                    },
                });
            }
        }
        for network in self
            .state
            .networks
            .values()
            .filter(|n| n.driver == Driver::Bridge)
        {
            desired.networks.push(dataplane::NetworkRule {
                id: network.id,
                bridge: network.bridge.clone(),
                subnet: parse_v4(&network.subnet)?,
                gateway: network.gateway,
                icc: network.icc,
                internal: network.internal,
                masquerade: network.ip_masq && !network.internal,
            });
        }
        for sandbox in self.state.sandboxes.values() {
            for endpoint in &sandbox.endpoints {
                let Some(network) = self.state.networks.get(&endpoint.network) else {
                    continue;
                };
                // No NAT and no isolation on the host's LAN: nothing to attach there.
                if network.driver == Driver::HostBridge {
                    continue;
                }
                let network_id = network.id;
                if let Some(&index) = links.get(&endpoint.host_ifname) {
                    desired.ifaces.push(Iface {
                        index,
                        name: endpoint.host_ifname.clone(),
                        role: IfaceRole::SandboxVeth { network_id },
                    });
                }
            }
            desired.ports.extend(port_rules(sandbox));
        }
        Ok(desired)
    }

    /// Called several times a second: puts back kernel state removed behind natd's back.
    pub fn heal(&mut self) -> Result<bool> {
        let healed = self.dataplane.heal()?;
        if healed {
            warn!(
                "the dataplane's kernel state was removed from outside (e.g. a firewall reload); re-applied"
            );
            self.last_reconcile
                .push("re-applied the dataplane after it was removed from outside".into());
        }
        Ok(healed)
    }

    /// Periodic housekeeping: expire idle flows and follow address changes of the host.
    pub async fn tick(&mut self) -> Result<()> {
        let gc = self.dataplane.gc()?;
        if gc.expired > 0 {
            tracing::debug!(scanned = gc.scanned, expired = gc.expired, "conntrack gc");
        }
        self.sync_dataplane().await?;
        Ok(())
    }

    async fn sync_dataplane(&mut self) -> Result<dataplane::SyncReport> {
        let desired = self.desired_dataplane().await?;
        // With netfilter doing the NAT, a sandbox reaching its own published port is
        // bridged back out of the port it came in on (Docker does the same without its
        // userland proxy); the eBPF dataplane routes hairpin traffic and needs no such mode.
        let hairpin = self.dataplane.kind() == "nftables";
        for iface in &desired.ifaces {
            if matches!(iface.role, IfaceRole::SandboxVeth { .. })
                && self.hairpin_set.insert((iface.index, hairpin))
                && let Err(e) = self.nl.set_hairpin(iface.index, hairpin).await
            {
                warn!(iface = %iface.name, error = %e, "cannot set hairpin mode");
            }
        }
        reserve_host_ports(&desired.ports);
        Ok(self.dataplane.sync(&desired)?)
    }

    // ----- bridges and endpoints ---------------------------------------------------------

    /// Creates the network's bridge if missing and gives it its gateway address(es), MTU and
    /// up state. Returns whether it had to be created.
    async fn ensure_bridge(&self, network: &Network) -> Result<bool> {
        if network.driver == Driver::HostBridge {
            // The LAN's bridge carries the host's own addresses, never a natd gateway.
            let link = self.nl.link(&network.bridge).await?.ok_or_else(|| {
                DaemonError::Conflict(format!(
                    "bridge {} of hostbridge network {} is gone; remove and recreate the network",
                    network.bridge, network.name
                ))
            })?;
            if !link.up {
                self.nl.set_up(link.index).await?;
            }
            return Ok(false);
        }
        let (link, created) = match self.nl.link(&network.bridge).await? {
            Some(link) => (link, false),
            None => (self.nl.create_bridge(&network.bridge, network.mtu).await?, true),
        };
        if link.kind != LinkKind::Bridge {
            return Err(DaemonError::Conflict(format!(
                "interface {} exists and is not a bridge",
                network.bridge
            )));
        }
        let subnet = parse_v4(&network.subnet)?;
        let gateway = IpNetwork::V4(
            Ipv4Network::new(network.gateway, subnet.prefix()).map_err(|e| invalid(e.to_string()))?,
        );
        self.nl.add_address(link.index, gateway).await?;
        if let (Some(subnet6), Some(gw6)) = (&network.subnet_v6, network.gateway_v6) {
            let subnet6 = parse_v6(subnet6)?;
            self.nl
                .add_address(
                    link.index,
                    IpNetwork::V6(
                        Ipv6Network::new(gw6, subnet6.prefix()).map_err(|e| invalid(e.to_string()))?,
                    ),
                )
                .await?;
        }
        if !network.bridge_adopted && link.mtu != network.mtu {
            self.nl.set_mtu(link.index, network.mtu).await?;
        }
        if !link.up {
            self.nl.set_up(link.index).await?;
        }
        // Replies of published-port flows are translated as they leave a sandbox, so they
        // reach the host's IP layer with a host address as source; accept_local lets the
        // bridge take them. The sandbox hook drops anything a sandbox sends with a host
        // address of its own making, so nothing else can use this.
        let key = format!("net/ipv4/conf/{}/accept_local", network.bridge);
        if let Err(e) = std::fs::write(Path::new("/proc/sys").join(&key), "1") {
            warn!(bridge = %network.bridge, error = %e, "cannot set accept_local");
        }
        Ok(created)
    }

    /// Creates the veth pair of one endpoint, plugs the host end into the bridge and sets up
    /// the sandbox end (name, MTU, addresses, default route). Undoes itself on failure.
    async fn wire_endpoint(
        &self,
        netns_path: &Path,
        network: &Network,
        endpoint: &Endpoint,
        default_route: bool,
        mtu: u32,
    ) -> Result<String> {
        let peer = endpoint.host_ifname.replacen(
            &format!("{}v", self.config.name_prefix),
            &format!("{}p", self.config.name_prefix),
            1,
        );
        let bridge = self.nl.require_link(&network.bridge).await?;
        // A leftover peer from an interrupted run would make the create fail.
        if let Some(old) = self.nl.link(&peer).await? {
            self.nl.delete_link(old.index).await?;
        }
        let host = self.nl.create_veth(&endpoint.host_ifname, &peer, mtu).await?;
        let result = async {
            self.nl.set_master(host.index, bridge.index).await?;
            self.nl.set_up(host.index).await?;
            let peer_link = self.nl.require_link(&peer).await?;
            let fd = netns::open(netns_path)?;
            self.nl.move_to_netns(peer_link.index, fd.as_fd()).await?;
            let inner = Netlink::connect_in(netns_path)?;
            let peer_link = inner.require_link(&peer).await?;
            inner.rename(peer_link.index, &endpoint.ifname).await?;
            inner.set_mtu(peer_link.index, mtu).await?;
            inner
                .add_address(
                    peer_link.index,
                    IpNetwork::V4(
                        Ipv4Network::new(endpoint.ipv4, endpoint.prefix_len)
                            .map_err(|e| invalid(e.to_string()))?,
                    ),
                )
                .await?;
            if let Some(v6) = endpoint.ipv6 {
                inner
                    .add_address(
                        peer_link.index,
                        IpNetwork::V6(
                            Ipv6Network::new(v6, endpoint.prefix_len_v6)
                                .map_err(|e| invalid(e.to_string()))?,
                        ),
                    )
                    .await?;
            }
            inner.set_up(peer_link.index).await?;
            if let Some(lo) = inner.link("lo").await? {
                inner.set_up(lo.index).await?;
            }
            if default_route && !network.internal {
                let gw = endpoint
                    .gateway
                    .or(network.aux_gateway)
                    .unwrap_or(network.gateway);
                inner.add_default_route_v4(gw, peer_link.index).await?;
                if let Some(gw6) = network.aux_gateway_v6.or(network.gateway_v6)
                    && endpoint.ipv6.is_some()
                {
                    inner.add_default_route_v6(gw6, peer_link.index).await?;
                }
            }
            let mac = inner.require_link(&endpoint.ifname).await?.mac;
            Ok::<_, DaemonError>(netlink::format_mac(&mac))
        }
        .await;
        if result.is_err() {
            let _ = self.nl.delete_link(host.index).await;
        }
        result
    }

    async fn unwire_endpoint(&self, endpoint: &Endpoint) -> Result<()> {
        if let Some(link) = self.nl.link(&endpoint.host_ifname).await? {
            self.nl.delete_link(link.index).await?;
        }
        Ok(())
    }

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
        let mut used: HashSet<Ipv6Addr> = self
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

    /// Picks (or checks) the addresses of a new endpoint; no side effects.
    fn plan_endpoint(
        &self,
        network: &Network,
        requested_ip: Option<&str>,
        ifname: String,
        endpoint_id: u32,
        excluded: &HashSet<Ipv4Addr>,
    ) -> Result<Endpoint> {
        let subnet = parse_v4(&network.subnet)?;
        let pool = network.ip_range.as_deref().map(parse_v4).transpose()?;
        let mut used = self.used_v4(network);
        used.extend(excluded);
        let ipv4 = match requested_ip {
            Some(text) => {
                let ip: Ipv4Addr = text
                    .parse()
                    .map_err(|_| invalid(format!("invalid IPv4 address: {text}")))?;
                ipam::check_requested_v4(subnet, ip, &used).map_err(|e| match e {
                    ipam::IpamError::InUse { .. } => DaemonError::Conflict(e.to_string()),
                    other => invalid(other.to_string()),
                })?;
                ip
            }
            None => ipam::allocate_v4(&network.name, subnet, pool, &used)
                .map_err(|e| DaemonError::Conflict(e.to_string()))?,
        };
        let (ipv6, prefix_len_v6) = match &network.subnet_v6 {
            Some(subnet6) => {
                let subnet6 = parse_v6(subnet6)?;
                let ip = ipam::allocate_v6(&network.name, subnet6, &self.used_v6(network))
                    .map_err(|e| DaemonError::Conflict(e.to_string()))?;
                (Some(ip), subnet6.prefix())
            }
            None => (None, 0),
        };
        Ok(Endpoint {
            network: network.name.clone(),
            host_ifname: format!("{}v{endpoint_id:x}", self.config.name_prefix),
            ifname,
            ipv4,
            prefix_len: subnet.prefix(),
            ipv6,
            prefix_len_v6,
            mac: String::new(),
            gateway: None,
        })
    }

    /// `plan_endpoint`, plus on a hostbridge network an ARP probe on the LAN: a requested
    /// address in use is refused, an allocated one is skipped for the next.
    async fn plan_on_network(
        &self,
        network: &Network,
        requested_ip: Option<&str>,
        ifname: String,
        endpoint_id: u32,
    ) -> Result<Endpoint> {
        let mut excluded = HashSet::new();
        if network.driver == Driver::HostBridge {
            // The host's own addresses on the LAN are taken too.
            for (_, address) in self.nl.all_addresses().await? {
                if let IpNetwork::V4(v4) = address {
                    excluded.insert(v4.ip());
                }
            }
        }
        for _ in 0..8 {
            let endpoint =
                self.plan_endpoint(network, requested_ip, ifname.clone(), endpoint_id, &excluded)?;
            if network.driver != Driver::HostBridge {
                return Ok(endpoint);
            }
            let bridge = self.nl.require_link(&network.bridge).await?;
            let ip = endpoint.ipv4;
            let in_use = tokio::task::spawn_blocking(move || {
                crate::hostbridge::address_in_use(bridge.index, &bridge.mac, ip, Duration::from_millis(400))
            })
            .await
            .map_err(|e| DaemonError::Internal(e.to_string()))?
            .map_err(|e| DaemonError::Internal(format!("ARP probe on {}: {e}", network.bridge)))?;
            if !in_use {
                return Ok(endpoint);
            }
            if requested_ip.is_some() {
                return Err(DaemonError::Conflict(format!(
                    "Address already in use: {ip} answers ARP on the LAN ({})",
                    network.bridge
                )));
            }
            excluded.insert(ip);
        }
        Err(DaemonError::Conflict(format!(
            "no free address found on the LAN of network {}",
            network.name
        )))
    }

    // ----- ports -------------------------------------------------------------------------

    /// Turns `-p`/`-P` into concrete host ports, refusing taken ones with Docker's message.
    /// One index of what is taken, so publishing tens of thousands of ports stays linear.
    fn allocate_ports(
        &self,
        publish: &[PublishSpec],
        publish_all: bool,
        expose: &[ExposeSpec],
    ) -> Result<Vec<PortMapping>> {
        let mut book = PortBook::default();
        for mapping in self.state.sandboxes.values().flat_map(|s| s.ports.iter()) {
            book.add(mapping);
        }
        let host_used = host_ports_in_use();
        let mut out: Vec<PortMapping> = Vec::new();
        let random = |book: &PortBook, ip: Option<IpAddr>, proto: Proto, range: (u16, u16)| {
            (range.0..=range.1).find(|p| !host_used.contains(&(proto, *p)) && !book.taken(ip, *p, proto))
        };
        let push = |book: &mut PortBook, out: &mut Vec<PortMapping>, m: PortMapping| {
            book.add(&m);
            out.push(m);
        };
        for spec in publish {
            match spec.host_ports {
                Some(host) if host.count() == spec.container_ports.count() => {
                    let listening = host_listening_ports();
                    for (h, c) in host.ports().zip(spec.container_ports.ports()) {
                        if book.taken(spec.host_ip, h, spec.proto) {
                            return Err(DaemonError::Conflict(format!(
                                "Bind for {}:{h} failed: port is already allocated",
                                display_ip(spec.host_ip)
                            )));
                        }
                        if listening.contains(&(spec.proto, h)) {
                            return Err(DaemonError::Conflict(format!(
                                "Bind for {}:{h} failed: address already in use by a process on the host",
                                display_ip(spec.host_ip)
                            )));
                        }
                        let m = PortMapping {
                            host_ip: spec.host_ip,
                            host_port: h,
                            container_port: c,
                            proto: spec.proto,
                        };
                        push(&mut book, &mut out, m);
                    }
                }
                Some(host) => {
                    // A host range with a single container port: any free port of the range.
                    let port = random(&book, spec.host_ip, spec.proto, (host.first, host.last)).ok_or_else(
                        || {
                            DaemonError::Conflict(format!(
                                "Bind for {}:{host} failed: port is already allocated",
                                display_ip(spec.host_ip)
                            ))
                        },
                    )?;
                    let m = PortMapping {
                        host_ip: spec.host_ip,
                        host_port: port,
                        container_port: spec.container_ports.first,
                        proto: spec.proto,
                    };
                    push(&mut book, &mut out, m);
                }
                None => {
                    for c in spec.container_ports.ports() {
                        let port =
                            random(&book, spec.host_ip, spec.proto, self.port_range).ok_or_else(|| {
                                DaemonError::Conflict("no free host port left in the port range".into())
                            })?;
                        let m = PortMapping {
                            host_ip: spec.host_ip,
                            host_port: port,
                            container_port: c,
                            proto: spec.proto,
                        };
                        push(&mut book, &mut out, m);
                    }
                }
            }
        }
        if publish_all {
            for spec in expose {
                for c in spec.ports.ports() {
                    if out.iter().any(|m| m.container_port == c && m.proto == spec.proto) {
                        continue;
                    }
                    let port = random(&book, None, spec.proto, self.port_range).ok_or_else(|| {
                        DaemonError::Conflict("no free host port left in the port range".into())
                    })?;
                    let m = PortMapping {
                        host_ip: None,
                        host_port: port,
                        container_port: c,
                        proto: spec.proto,
                    };
                    push(&mut book, &mut out, m);
                }
            }
        }
        Ok(out)
    }

    // ----- sandboxes ---------------------------------------------------------------------

    pub async fn run(&mut self, req: RunRequest) -> Result<SandboxView> {
        validate_name("container", &req.name)?;
        if self.state.sandboxes.contains_key(&req.name) {
            return Err(DaemonError::Conflict(format!(
                "Conflict. The container name \"{}\" is already in use",
                req.name
            )));
        }
        let network_arg = req.network.clone().unwrap_or_else(|| DEFAULT_NETWORK.to_string());
        let (mode, network) = match network_arg.as_str() {
            "none" => (NetworkMode::None, None),
            "host" => (NetworkMode::Host, None),
            other => match other.strip_prefix("container:") {
                Some(target) => {
                    if !self.state.sandboxes.contains_key(target) {
                        return Err(DaemonError::NotFound(format!("No such container: {target}")));
                    }
                    (NetworkMode::Container(target.to_string()), None)
                }
                None => {
                    let network = self
                        .state
                        .networks
                        .get(other)
                        .cloned()
                        .ok_or_else(|| DaemonError::NotFound(format!("network {other} not found")))?;
                    (NetworkMode::Bridge, Some(network))
                }
            },
        };
        let shares = matches!(mode, NetworkMode::Host | NetworkMode::Container(_));
        if req.ip.is_some() && network.is_none() {
            return Err(invalid(format!(
                "--ip needs a bridge network, not --network {network_arg}"
            )));
        }
        let publish = req
            .publish
            .iter()
            .map(|p| PublishSpec::from_str(p).map_err(|e| invalid(e.to_string())))
            .collect::<Result<Vec<_>>>()?;
        for spec in &publish {
            if spec.proto == Proto::Sctp {
                return Err(invalid(format!(
                    "cannot publish {spec}: SCTP is not supported by natd's dataplane yet \
                     (SCTP's CRC32c checksum cannot be updated incrementally)"
                )));
            }
            if let Some(IpAddr::V6(ip)) = spec.host_ip {
                return Err(invalid(format!(
                    "cannot publish {spec}: publishing on an IPv6 address ({ip}) needs natd's IPv6 datapath, \
                     which is not available yet"
                )));
            }
        }
        let expose = req
            .expose
            .iter()
            .map(|p| ExposeSpec::from_str(p).map_err(|e| invalid(e.to_string())))
            .collect::<Result<Vec<_>>>()?;
        if (!publish.is_empty() || req.publish_all) && network.is_none() {
            let kind = match &mode {
                NetworkMode::Container(_) => "the container type network mode",
                NetworkMode::Host => "the host network mode",
                _ => "the none network mode",
            };
            return Err(invalid(format!(
                "conflicting options: port publishing and {kind}"
            )));
        }
        if shares && (!req.dns.is_empty() || req.mtu.is_some()) {
            return Err(invalid(format!(
                "conflicting options: --dns/--mtu and --network {network_arg} (the namespace is not the sandbox's own)"
            )));
        }
        if shares && req.netns.is_some() {
            return Err(invalid(format!(
                "conflicting options: --netns and --network {network_arg}"
            )));
        }
        let dns = req
            .dns
            .iter()
            .map(|d| {
                d.parse::<IpAddr>()
                    .map_err(|_| invalid(format!("invalid DNS server address: {d}")))
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(mtu) = req.mtu {
            config::validate_mtu(mtu).map_err(invalid)?;
        }
        if let Some(path) = &req.netns {
            let path = Path::new(path);
            if !netns::is_netns(path) {
                return Err(invalid(format!("{} is not a network namespace", path.display())));
            }
            let id = netns::identity(path);
            if let Some(other) = self
                .state
                .sandboxes
                .values()
                .find(|s| s.netns.as_deref().map(|p| netns::identity(Path::new(p))) == Some(id))
            {
                return Err(DaemonError::Conflict(format!(
                    "network namespace {} is already used by sandbox {}",
                    path.display(),
                    other.name
                )));
            }
        }
        let mut all_exposed = expose.clone();
        for spec in &publish {
            all_exposed.push(ExposeSpec {
                ports: spec.container_ports,
                proto: spec.proto,
            });
        }
        if let Some(net) = network.as_ref().filter(|n| n.driver == Driver::HostBridge)
            && (!publish.is_empty() || req.publish_all)
        {
            return Err(invalid(format!(
                "port publishing is not supported on hostbridge network {}: its sandboxes have addresses on the LAN \
                 and are reachable directly",
                net.name
            )));
        }
        let ports = self.allocate_ports(&publish, req.publish_all, &all_exposed)?;

        let (id, id_change) = self.alloc_id();
        let mut changes = vec![id_change];
        let endpoint = match &network {
            Some(net) => {
                let (eid, c) = self.alloc_id();
                changes.push(c);
                Some(
                    self.plan_on_network(net, req.ip.as_deref(), "eth0".into(), eid)
                        .await?,
                )
            }
            None => None,
        };

        // Side effects from here on; `undo` collects what to roll back.
        let ns_name = format!("{}{}", sandbox_ns_prefix(&self.config.name_prefix), req.name);
        let (netns_path, netns_owned, etc_name) = match (&mode, &req.netns) {
            (NetworkMode::Host | NetworkMode::Container(_), _) => (None, false, None),
            (_, Some(path)) => {
                let base = Path::new(path)
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string());
                (Some(PathBuf::from(path)), false, base)
            }
            (_, None) => (Some(netns::create_named(&ns_name)?), true, Some(ns_name.clone())),
        };
        let result = self
            .finish_run(
                &req,
                id,
                mode,
                network,
                endpoint,
                netns_path.clone(),
                netns_owned,
                etc_name.clone(),
                dns,
                publish,
                expose,
                ports,
            )
            .await;
        match result {
            Ok(sandbox) => {
                changes.push(Change::PutSandbox(sandbox.clone()));
                if let Err(e) = self.store.commit(changes) {
                    self.teardown(&sandbox).await;
                    return Err(e.into());
                }
                self.state.sandboxes.insert(sandbox.name.clone(), sandbox.clone());
                if let Err(e) = self.sync_dataplane().await {
                    warn!(error = %e, "dataplane sync after run");
                }
                info!(sandbox = %sandbox.name, "sandbox created");
                Ok(self.view(&sandbox))
            }
            Err(e) => {
                if netns_owned && let Some(path) = &netns_path {
                    process::kill_all(&netns::pids_in(path));
                    let _ = netns::delete_named(path);
                }
                if let Some(name) = etc_name.filter(|_| netns_owned) {
                    let _ = netns::remove_etc(&name);
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish_run(
        &self,
        req: &RunRequest,
        id: u32,
        mode: NetworkMode,
        network: Option<Network>,
        endpoint: Option<Endpoint>,
        netns_path: Option<PathBuf>,
        netns_owned: bool,
        etc_name: Option<String>,
        dns: Vec<IpAddr>,
        publish: Vec<PublishSpec>,
        expose: Vec<ExposeSpec>,
        ports: Vec<PortMapping>,
    ) -> Result<Sandbox> {
        let mut endpoints = Vec::new();
        if let Some(path) = &netns_path {
            let inner = Netlink::connect_in(path)?;
            if let Some(lo) = inner.link("lo").await? {
                inner.set_up(lo.index).await?;
            }
            if let (Some(network), Some(mut endpoint)) = (network.as_ref(), endpoint) {
                let mtu = req.mtu.unwrap_or(network.mtu);
                endpoint.mac = self.wire_endpoint(path, network, &endpoint, true, mtu).await?;
                endpoints.push(endpoint);
            }
        }
        let servers = if dns.is_empty() {
            self.config.dns.clone()
        } else {
            dns.clone()
        };
        if let Some(name) = etc_name.as_ref().filter(|_| netns_path.is_some())
            && netns_owned
        {
            netns::write_resolv_conf(name, &servers)
                .map_err(|e| DaemonError::Internal(format!("write /etc/netns/{name}/resolv.conf: {e}")))?;
        }
        let mut sandbox = Sandbox {
            id,
            name: req.name.clone(),
            mode,
            netns: netns_path.as_ref().map(|p| p.display().to_string()),
            netns_owned,
            etc_name: etc_name.filter(|_| netns_owned),
            endpoints,
            dns,
            mtu: req.mtu,
            publish,
            publish_all: req.publish_all,
            expose,
            ports,
            command: req.command.clone(),
            pid: None,
            pid_start: None,
            log: None,
            created: now(),
        };
        if !req.command.is_empty() {
            let log_dir = self.config.state_dir.join("logs");
            std::fs::create_dir_all(&log_dir)
                .map_err(|e| DaemonError::Internal(format!("create {}: {e}", log_dir.display())))?;
            let log = log_dir.join(format!("{}.log", req.name));
            let (enter_ns, enter_etc) = self.enter_target(&sandbox);
            let plan = netns::EnterPlan::new(Path::new(&enter_ns), enter_etc.as_deref())?;
            let spawned = process::spawn_detached(&req.command, plan, &log);
            match spawned {
                Ok((pid, started)) => {
                    sandbox.pid = Some(pid);
                    sandbox.pid_start = started;
                    sandbox.log = Some(log.display().to_string());
                }
                Err(e) => {
                    for endpoint in &sandbox.endpoints {
                        let _ = self.unwire_endpoint(endpoint).await;
                    }
                    return Err(invalid(format!(
                        "cannot start {:?} in sandbox {}: {e}",
                        req.command.join(" "),
                        req.name
                    )));
                }
            }
        }
        Ok(sandbox)
    }

    /// Namespace and /etc/netns name a process of this sandbox lives in.
    fn enter_target(&self, sandbox: &Sandbox) -> (String, Option<String>) {
        let mut current = sandbox;
        for _ in 0..16 {
            match &current.mode {
                NetworkMode::Host => break,
                NetworkMode::Container(target) => match self.state.sandboxes.get(target) {
                    Some(t) => current = t,
                    None => break,
                },
                _ => {
                    if let Some(ns) = &current.netns {
                        return (ns.clone(), current.etc_name.clone());
                    }
                    break;
                }
            }
        }
        (format!("/proc/{}/ns/net", std::process::id()), None)
    }

    async fn teardown(&self, sandbox: &Sandbox) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(pid) = sandbox.pid {
            let started = sandbox.pid_start;
            let _ = tokio::task::spawn_blocking(move || process::stop(pid, started, Duration::from_secs(5)))
                .await;
        }
        for endpoint in &sandbox.endpoints {
            if let Err(e) = self.unwire_endpoint(endpoint).await {
                errors.push(e.to_string());
            }
        }
        if sandbox.netns_owned
            && let Some(path) = &sandbox.netns
        {
            let path = Path::new(path);
            process::kill_all(&netns::pids_in(path));
            if let Err(e) = netns::delete_named(path) {
                errors.push(e.to_string());
            }
        }
        if let Some(name) = &sandbox.etc_name
            && let Err(e) = netns::remove_etc(name)
        {
            errors.push(format!("remove /etc/netns/{name}: {e}"));
        }
        errors
    }

    pub async fn rm(&mut self, name: &str) -> Result<Vec<String>> {
        let sandbox = self.sandbox(name)?.clone();
        let users: Vec<&str> = self
            .state
            .sandboxes
            .values()
            .filter(|s| s.mode == NetworkMode::Container(name.to_string()))
            .map(|s| s.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(DaemonError::Conflict(format!(
                "cannot remove {name}: sandboxes {} share its network namespace (--network container:{name}); remove them first",
                users.join(", ")
            )));
        }
        let errors = self.teardown(&sandbox).await;
        self.store.commit(vec![Change::DeleteSandbox(name.to_string())])?;
        self.state.sandboxes.remove(name);
        if let Err(e) = self.sync_dataplane().await {
            warn!(error = %e, "dataplane sync after rm");
        }
        for e in &errors {
            warn!(sandbox = name, error = %e, "teardown");
        }
        Ok(errors)
    }

    fn sandbox(&self, name: &str) -> Result<&Sandbox> {
        self.state
            .sandboxes
            .get(name)
            .ok_or_else(|| DaemonError::NotFound(format!("No such container: {name}")))
    }

    fn network(&self, name: &str) -> Result<&Network> {
        self.state
            .networks
            .get(name)
            .ok_or_else(|| DaemonError::NotFound(format!("network {name} not found")))
    }

    pub fn view(&self, sandbox: &Sandbox) -> SandboxView {
        let status = match (sandbox.command.is_empty(), sandbox.pid) {
            (true, _) => "created",
            (false, Some(pid)) if process::is_running(pid, sandbox.pid_start) => "running",
            (false, _) => "exited",
        };
        let (enter_netns, enter_etc) = self.enter_target(sandbox);
        SandboxView {
            sandbox: sandbox.clone(),
            status: status.into(),
            enter_netns,
            enter_etc,
        }
    }

    pub fn inspect(&self, name: &str) -> Result<SandboxView> {
        Ok(self.view(self.sandbox(name)?))
    }

    pub fn list(&self) -> Vec<SandboxView> {
        self.state.sandboxes.values().map(|s| self.view(s)).collect()
    }

    // ----- networks ----------------------------------------------------------------------

    pub async fn network_create(&mut self, req: NetworkCreate) -> Result<NetworkView> {
        validate_name("network", &req.name)?;
        if self.state.networks.contains_key(&req.name) || RESERVED_NETWORK_NAMES.contains(&req.name.as_str())
        {
            return Err(DaemonError::Conflict(format!(
                "network with name {} already exists",
                req.name
            )));
        }
        match req.driver.as_deref() {
            None | Some("bridge") => {}
            Some("hostbridge") => return self.hostbridge_create(req).await,
            Some(other) => {
                return Err(invalid(format!(
                    "plugin \"{other}\" not found (natd supports the bridge and hostbridge drivers)"
                )));
            }
        }
        let mut bridge_name = None;
        for (key, value) in &req.options {
            match key.as_str() {
                "bridge-name" | "com.docker.network.bridge.name" => bridge_name = Some(value.clone()),
                other => {
                    return Err(invalid(format!(
                        "unknown network option {other:?} (known: bridge-name)"
                    )));
                }
            }
        }
        let mtu = req.mtu.unwrap_or(self.config.mtu);
        config::validate_mtu(mtu).map_err(invalid)?;
        let host_routes = self.nl.routes_v4().await?;
        let bridges: HashSet<String> = self.state.networks.values().map(|n| n.bridge.clone()).collect();
        let mut bridge_indexes = HashSet::new();
        for name in &bridges {
            if let Some(link) = self.nl.link(name).await? {
                bridge_indexes.insert(link.index);
            }
        }
        // Routes through natd's own bridges are its networks, compared separately below.
        let foreign_routes: Vec<(Ipv4Network, Option<u32>)> = host_routes
            .iter()
            .filter_map(|r| match r.destination {
                IpNetwork::V4(d) if d.prefix() > 0 => Some((d, r.oif)),
                _ => None,
            })
            .filter(|(_, oif)| oif.is_none_or(|o| !bridge_indexes.contains(&o)))
            .collect();
        let networks: Vec<Ipv4Network> = self
            .state
            .networks
            .values()
            .filter_map(|n| parse_v4(&n.subnet).ok())
            .collect();
        let subnet = match &req.subnet {
            Some(text) => {
                let subnet = config::parse_v4_subnet("subnet", text).map_err(|e| invalid(e.to_string()))?;
                if subnet.prefix() > 30 {
                    return Err(invalid(format!(
                        "subnet {subnet} is too small for sandboxes (at most /30)"
                    )));
                }
                if networks.iter().any(|n| n.overlaps(subnet)) {
                    return Err(DaemonError::Conflict(
                        "Pool overlaps with other one on this address space".into(),
                    ));
                }
                if let Some((route, _)) = foreign_routes.iter().find(|(r, _)| r.overlaps(subnet)) {
                    return Err(DaemonError::Conflict(format!(
                        "subnet {subnet} overlaps with route {route} on the host"
                    )));
                }
                subnet
            }
            None => {
                let mut taken = networks.clone();
                taken.extend(foreign_routes.iter().map(|(r, _)| *r));
                ipam::pick_free_subnet(&taken).map_err(|e| DaemonError::Conflict(e.to_string()))?
            }
        };
        let gateway = match &req.gateway {
            Some(text) => {
                let gw: Ipv4Addr = text
                    .parse()
                    .map_err(|_| invalid(format!("invalid gateway address: {text}")))?;
                if !subnet.contains(gw) {
                    return Err(invalid(format!("no matching subnet for gateway {gw}")));
                }
                if gw == subnet.network() || gw == subnet.broadcast() {
                    return Err(invalid(format!(
                        "gateway {gw} is the network or broadcast address of {subnet}"
                    )));
                }
                gw
            }
            None => ipam::default_gateway(subnet),
        };
        let ip_range = parse_ip_range(subnet, req.ip_range.as_deref())?;
        let (id, id_change) = self.alloc_id();
        let bridge = bridge_name.unwrap_or_else(|| format!("{}b{id:x}", self.config.name_prefix));
        config::validate_ifname(&bridge).map_err(invalid)?;
        if bridges.contains(&bridge) {
            return Err(DaemonError::Conflict(format!(
                "bridge {bridge} is already used by another network"
            )));
        }
        let adopted = match self.nl.link(&bridge).await? {
            Some(link) if link.kind == LinkKind::Bridge => true,
            Some(_) => {
                return Err(DaemonError::Conflict(format!(
                    "interface {bridge} exists and is not a bridge"
                )));
            }
            None => false,
        };
        let network = Network {
            id,
            name: req.name.clone(),
            driver: Driver::Bridge,
            bridge,
            bridge_adopted: adopted,
            subnet: subnet.to_string(),
            gateway,
            aux_gateway: None,
            ip_range,
            subnet_v6: None,
            gateway_v6: None,
            aux_gateway_v6: None,
            internal: req.internal,
            icc: req.icc.unwrap_or(true),
            ip_masq: !req.internal,
            mtu,
            default: false,
            created: now(),
            parent: None,
        };
        if let Err(e) = self.ensure_bridge(&network).await {
            self.undo_bridge(&network).await;
            return Err(e);
        }
        self.commit_network(network, id_change).await
    }

    /// Persists a network whose kernel side is in place; undoes that side if it cannot.
    async fn commit_network(&mut self, network: Network, id_change: Change) -> Result<NetworkView> {
        if let Err(e) = self
            .store
            .commit(vec![id_change, Change::PutNetwork(network.clone())])
        {
            self.undo_bridge(&network).await;
            return Err(e.into());
        }
        self.state.networks.insert(network.name.clone(), network.clone());
        info!(network = %network.name, subnet = %network.subnet, driver = ?network.driver, "network created");
        Ok(self.network_view(&network))
    }

    /// `network create -d hostbridge`: a bridge on the host's LAN. With `parent` natd builds
    /// it around the NIC (addresses and routes move onto the bridge); without, it uses an
    /// existing bridge as it is.
    async fn hostbridge_create(&mut self, req: NetworkCreate) -> Result<NetworkView> {
        let mut bridge_name = None;
        let mut parent = None;
        for (key, value) in &req.options {
            match key.as_str() {
                "bridge-name" | "com.docker.network.bridge.name" => bridge_name = Some(value.clone()),
                "parent" => parent = Some(value.clone()),
                other => {
                    return Err(invalid(format!(
                        "unknown network option {other:?} (known: parent, bridge-name)"
                    )));
                }
            }
        }
        let subnet_text = req
            .subnet
            .as_deref()
            .ok_or_else(|| invalid("a hostbridge network needs --subnet (the LAN's subnet)"))?;
        let subnet = config::parse_v4_subnet("subnet", subnet_text).map_err(|e| invalid(e.to_string()))?;
        let gateway_text = req
            .gateway
            .as_deref()
            .ok_or_else(|| invalid("a hostbridge network needs --gateway (the LAN's router)"))?;
        let gateway: Ipv4Addr = gateway_text
            .parse()
            .map_err(|_| invalid(format!("invalid gateway address: {gateway_text}")))?;
        if !subnet.contains(gateway) {
            return Err(invalid(format!("no matching subnet for gateway {gateway}")));
        }
        let ip_range = parse_ip_range(subnet, req.ip_range.as_deref())?;
        if req.internal || req.icc == Some(false) {
            return Err(invalid(
                "--internal and --icc=false do not apply to hostbridge networks (no NAT, no isolation)",
            ));
        }
        let overlapping = self
            .state
            .networks
            .values()
            .filter_map(|n| parse_v4(&n.subnet).ok())
            .any(|n| n.overlaps(subnet));
        if overlapping {
            return Err(DaemonError::Conflict(
                "Pool overlaps with other one on this address space".into(),
            ));
        }
        let (id, id_change) = self.alloc_id();
        let bridge = match (&bridge_name, &parent) {
            (Some(name), _) => name.clone(),
            (None, Some(_)) => format!("{}b{id:x}", self.config.name_prefix),
            (None, None) => {
                return Err(invalid(
                    "a hostbridge network needs --opt parent=IFACE, or --opt bridge-name=NAME of an existing bridge",
                ));
            }
        };
        config::validate_ifname(&bridge).map_err(invalid)?;
        if self.state.networks.values().any(|n| n.bridge == bridge) {
            return Err(DaemonError::Conflict(format!(
                "bridge {bridge} is already used by another network"
            )));
        }
        let existing = self.nl.link(&bridge).await?;
        if let Some(link) = &existing
            && link.kind != LinkKind::Bridge
        {
            return Err(DaemonError::Conflict(format!(
                "interface {bridge} exists and is not a bridge"
            )));
        }
        let mut created = false;
        let parent_state = match &parent {
            Some(parent_name) => {
                let parent_link = self.nl.link(parent_name).await?.ok_or_else(|| {
                    DaemonError::NotFound(format!("parent interface {parent_name} not found"))
                })?;
                if parent_link.master.is_some() {
                    return Err(DaemonError::Conflict(format!(
                        "parent interface {parent_name} is already in a bridge"
                    )));
                }
                if self.uplinks.contains(parent_name) {
                    return Err(invalid(format!(
                        "{parent_name} is natd's uplink; use another interface as parent"
                    )));
                }
                if existing.is_none() {
                    self.nl.create_bridge(&bridge, parent_link.mtu).await?;
                    created = true;
                }
                match crate::hostbridge::attach_parent(&self.nl, &bridge, parent_name).await {
                    Ok(state) => Some(state),
                    Err(e) => {
                        if created && let Ok(Some(link)) = self.nl.link(&bridge).await {
                            let _ = self.nl.delete_link(link.index).await;
                        }
                        return Err(e.into());
                    }
                }
            }
            None => {
                let link = existing.clone().ok_or_else(|| {
                    DaemonError::NotFound(format!(
                        "bridge {bridge} not found (create it or give --opt parent=IFACE)"
                    ))
                })?;
                if !link.up {
                    self.nl.set_up(link.index).await?;
                }
                None
            }
        };
        let mtu = match self.nl.link(&bridge).await? {
            Some(link) => link.mtu,
            None => self.config.mtu,
        };
        let network = Network {
            id,
            name: req.name.clone(),
            driver: Driver::HostBridge,
            bridge,
            bridge_adopted: !created,
            subnet: subnet.to_string(),
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
            created: now(),
            parent: parent_state,
        };
        self.commit_network(network, id_change).await
    }

    async fn undo_hostbridge(&self, network: &Network) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(state) = &network.parent {
            errors.extend(crate::hostbridge::restore_parent(&self.nl, &network.bridge, state).await);
        }
        if !network.bridge_adopted
            && let Ok(Some(link)) = self.nl.link(&network.bridge).await
            && let Err(e) = self.nl.delete_link(link.index).await
        {
            errors.push(e.to_string());
        }
        errors
    }

    /// Removes a bridge natd created, or natd's address from an adopted one.
    async fn undo_bridge(&self, network: &Network) -> Vec<String> {
        if network.driver == Driver::HostBridge {
            return self.undo_hostbridge(network).await;
        }
        let mut errors = Vec::new();
        let Ok(Some(link)) = self.nl.link(&network.bridge).await else {
            return errors;
        };
        if network.bridge_adopted {
            if let Ok(subnet) = parse_v4(&network.subnet)
                && let Ok(addr) = Ipv4Network::new(network.gateway, subnet.prefix())
                && let Err(e) = self.nl.del_address(link.index, IpNetwork::V4(addr)).await
            {
                errors.push(e.to_string());
            }
        } else if let Err(e) = self.nl.delete_link(link.index).await {
            errors.push(e.to_string());
        }
        errors
    }

    pub async fn network_rm(&mut self, name: &str) -> Result<()> {
        let network = self.network(name)?.clone();
        if network.default {
            return Err(DaemonError::Conflict(format!(
                "{name} is a pre-defined network and cannot be removed"
            )));
        }
        let users: Vec<&str> = self
            .state
            .sandboxes
            .values()
            .filter(|s| s.endpoints.iter().any(|e| e.network == name))
            .map(|s| s.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(DaemonError::Conflict(format!(
                "error while removing network: network {name} id {} has active endpoints ({})",
                network.id,
                users.join(", ")
            )));
        }
        for e in self.undo_bridge(&network).await {
            warn!(network = name, error = %e, "bridge teardown");
        }
        self.store.commit(vec![Change::DeleteNetwork(name.to_string())])?;
        self.state.networks.remove(name);
        Ok(())
    }

    pub fn network_view(&self, network: &Network) -> NetworkView {
        let sandboxes = self
            .state
            .sandboxes
            .values()
            .flat_map(|s| s.endpoints.iter().map(move |e| (s, e)))
            .filter(|(_, e)| e.network == network.name)
            .map(|(s, e)| AttachedSandbox {
                name: s.name.clone(),
                ipv4: format!("{}/{}", e.ipv4, e.prefix_len),
                ipv6: e.ipv6.map(|ip| format!("{ip}/{}", e.prefix_len_v6)),
                mac: e.mac.clone(),
            })
            .collect();
        NetworkView {
            network: network.clone(),
            sandboxes,
        }
    }

    pub fn network_inspect(&self, name: &str) -> Result<NetworkView> {
        Ok(self.network_view(self.network(name)?))
    }

    pub fn network_list(&self) -> Vec<NetworkView> {
        self.state
            .networks
            .values()
            .map(|n| self.network_view(n))
            .collect()
    }

    pub async fn connect(&mut self, network_name: &str, req: ConnectRequest) -> Result<SandboxView> {
        let network = self.network(network_name)?.clone();
        let sandbox = self.sandbox(&req.sandbox)?.clone();
        let Some(path) = sandbox
            .netns
            .clone()
            .filter(|_| !matches!(sandbox.mode, NetworkMode::Container(_) | NetworkMode::Host))
        else {
            return Err(invalid(
                "container sharing network namespace with another container or host cannot be connected to any other network",
            ));
        };
        if sandbox.endpoints.iter().any(|e| e.network == network_name) {
            return Err(DaemonError::Conflict(format!(
                "endpoint with name {} already exists in network {network_name}",
                sandbox.name
            )));
        }
        let index = (0..)
            .find(|i| !sandbox.endpoints.iter().any(|e| e.ifname == format!("eth{i}")))
            .unwrap_or(0);
        let (eid, id_change) = self.alloc_id();
        // pipework's form: IP/PREFIX@GATEWAY.
        let (ip_text, gateway) = match req
            .ip
            .as_deref()
            .map(|t| t.split_once('@').map(|(a, g)| (a, Some(g))).unwrap_or((t, None)))
        {
            Some((ip, gw)) => (Some(ip), gw),
            None => (None, None),
        };
        let (ip_text, prefix) =
            match ip_text.map(|t| t.split_once('/').map(|(a, p)| (a, Some(p))).unwrap_or((t, None))) {
                Some((ip, p)) => (Some(ip), p),
                None => (None, None),
            };
        let mut endpoint = self
            .plan_on_network(&network, ip_text, format!("eth{index}"), eid)
            .await?;
        if let Some(prefix) = prefix {
            endpoint.prefix_len = prefix
                .parse::<u8>()
                .ok()
                .filter(|p| (1..=32).contains(p))
                .ok_or_else(|| invalid(format!("invalid prefix length: {prefix}")))?;
        }
        if let Some(gateway) = gateway {
            endpoint.gateway = Some(
                gateway
                    .parse()
                    .map_err(|_| invalid(format!("invalid gateway address: {gateway}")))?,
            );
        }
        let first = sandbox.endpoints.is_empty();
        let mtu = sandbox.mtu.unwrap_or(network.mtu);
        endpoint.mac = self
            .wire_endpoint(Path::new(&path), &network, &endpoint, first, mtu)
            .await?;
        let mut updated = sandbox.clone();
        updated.endpoints.push(endpoint.clone());
        if updated.mode == NetworkMode::None {
            updated.mode = NetworkMode::Bridge;
        }
        if let Err(e) = self
            .store
            .commit(vec![id_change, Change::PutSandbox(updated.clone())])
        {
            let _ = self.unwire_endpoint(&endpoint).await;
            return Err(e.into());
        }
        self.state.sandboxes.insert(updated.name.clone(), updated.clone());
        if let Err(e) = self.sync_dataplane().await {
            warn!(error = %e, "dataplane sync after connect");
        }
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
        self.store.commit(vec![Change::PutSandbox(updated.clone())])?;
        self.state.sandboxes.insert(updated.name.clone(), updated.clone());
        if let Err(e) = self.sync_dataplane().await {
            warn!(error = %e, "dataplane sync after disconnect");
        }
        Ok(self.view(&updated))
    }

    pub fn stats(&self) -> crate::api::StatsView {
        let raw = self.dataplane.stats();
        let mut mappings = Vec::new();
        for sandbox in self.state.sandboxes.values() {
            for rule in port_rules(sandbox) {
                let (packets, bytes) = raw.mappings.get(&rule.mapping_id).copied().unwrap_or_default();
                let host = rule
                    .host_ip
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "0.0.0.0".into());
                mappings.push(crate::api::MappingStatsView {
                    sandbox: sandbox.name.clone(),
                    mapping: format!(
                        "{host}:{}->{}:{}/{}",
                        rule.host_port, rule.target, rule.target_port, rule.proto
                    ),
                    mapping_id: rule.mapping_id,
                    packets,
                    bytes,
                });
            }
        }
        crate::api::StatsView {
            dataplane: self.dataplane.kind().into(),
            counters: raw.counters,
            mappings,
            maps: raw.maps,
        }
    }

    pub fn flows(&self) -> Vec<dataplane::Flow> {
        self.dataplane.flows()
    }

    pub fn info(&self) -> InfoResponse {
        let running = self
            .state
            .sandboxes
            .values()
            .filter(|s| s.pid.is_some_and(|p| process::is_running(p, s.pid_start)))
            .count();
        InfoResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().to_string())
                .unwrap_or_default(),
            dataplane: self.dataplane.kind().into(),
            dataplane_detail: self.dataplane.info(),
            networks: self.state.networks.len(),
            sandboxes: self.state.sandboxes.len(),
            running,
            port_mappings: self.state.sandboxes.values().map(|s| s.ports.len()).sum(),
            uplinks: self.uplinks.clone(),
            default_bridge: self.config.bridge.clone(),
            name_prefix: self.config.name_prefix.clone(),
            state_dir: self.config.state_dir.display().to_string(),
            last_reconcile: self.last_reconcile.clone(),
        }
    }
}

/// `natd --cleanup`: removes every sandbox, network, pinned object and the state database.
/// Keeps going on errors and returns them.
pub async fn cleanup(config: &DaemonConfig) -> Vec<String> {
    let mut errors = Vec::new();
    let nl = match Netlink::connect() {
        Ok(nl) => nl,
        Err(e) => return vec![e.to_string()],
    };
    let snapshot = match Store::open(&config.state_dir) {
        Ok((_, snapshot)) => snapshot,
        Err(e) => {
            errors.push(format!("{e} (removing by name prefix only)"));
            Snapshot::default()
        }
    };
    for sandbox in snapshot.sandboxes.values() {
        if let Some(pid) = sandbox.pid {
            process::stop(pid, sandbox.pid_start, Duration::from_secs(5));
        }
        if sandbox.netns_owned
            && let Some(path) = &sandbox.netns
        {
            process::kill_all(&netns::pids_in(Path::new(path)));
        }
        for endpoint in &sandbox.endpoints {
            if let Ok(Some(link)) = nl.link(&endpoint.host_ifname).await
                && let Err(e) = nl.delete_link(link.index).await
            {
                errors.push(e.to_string());
            }
        }
        if sandbox.netns_owned
            && let Some(path) = &sandbox.netns
            && let Err(e) = netns::delete_named(Path::new(path))
        {
            errors.push(e.to_string());
        }
    }
    for network in snapshot.networks.values() {
        if let Some(state) = &network.parent {
            errors.extend(crate::hostbridge::restore_parent(&nl, &network.bridge, state).await);
        }
    }
    let mut bridges: BTreeMap<String, bool> = snapshot
        .networks
        .values()
        .map(|n| (n.bridge.clone(), n.bridge_adopted))
        .collect();
    bridges.entry(config.bridge.clone()).or_insert(true);
    for (bridge, adopted) in bridges {
        if adopted {
            continue;
        }
        if let Ok(Some(link)) = nl.link(&bridge).await
            && let Err(e) = nl.delete_link(link.index).await
        {
            errors.push(e.to_string());
        }
    }
    // Whatever else carries the prefix.
    let prefix = &config.name_prefix;
    if let Ok(links) = nl.links().await {
        for link in links {
            if is_generated_ifname(prefix, &link.name)
                && let Err(e) = nl.delete_link(link.index).await
            {
                errors.push(e.to_string());
            }
        }
    }
    let ns_prefix = sandbox_ns_prefix(prefix);
    for dir in [netns::NETNS_RUN_DIR, netns::NETNS_ETC_DIR] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if !name.starts_with(&ns_prefix) {
                    continue;
                }
                let result = if dir == netns::NETNS_RUN_DIR {
                    process::kill_all(&netns::pids_in(&entry.path()));
                    netns::delete_named(&entry.path()).map_err(|e| e.to_string())
                } else {
                    netns::remove_etc(&name).map_err(|e| e.to_string())
                };
                if let Err(e) = result {
                    errors.push(e);
                }
            }
        }
    }
    errors.extend(dataplane::ebpf::cleanup_pin_dir(&config.bpffs));
    errors.extend(dataplane::nftables::remove_leftovers(config));
    let db = config.state_dir.join(crate::state::DB_FILE);
    if let Err(e) = std::fs::remove_file(&db)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        errors.push(format!("remove {}: {e}", db.display()));
    }
    errors
}

/// Names natd generates: `<prefix>v<hex>` and `<prefix>p<hex>` (the two ends of a sandbox
/// veth) and `<prefix>b<hex>` (a user network's bridge). Only these are ever swept.
pub fn is_generated_ifname(prefix: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let mut chars = rest.chars();
    matches!(chars.next(), Some('v' | 'p' | 'b'))
        && !chars.as_str().is_empty()
        && chars
            .as_str()
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// Namespaces (and /etc/netns entries) natd creates are named `<prefix>-sbx-<sandbox>`;
/// reconcile and cleanup only ever remove names of that shape.
pub fn sandbox_ns_prefix(prefix: &str) -> String {
    format!("{prefix}-sbx-")
}

fn display_ip(ip: Option<IpAddr>) -> String {
    match ip {
        None => "0.0.0.0".into(),
        Some(IpAddr::V6(v6)) => format!("[{v6}]"),
        Some(v4) => v4.to_string(),
    }
}

/// `--ip-range`: a pool inside the network's subnet.
fn parse_ip_range(subnet: Ipv4Network, text: Option<&str>) -> Result<Option<String>> {
    let Some(text) = text else { return Ok(None) };
    let range = config::parse_v4_subnet("ip-range", text).map_err(|e| invalid(e.to_string()))?;
    if !subnet.contains(range.network()) || range.prefix() < subnet.prefix() {
        return Err(invalid(format!("no matching subnet for range {range}")));
    }
    Ok(Some(range.to_string()))
}

fn parse_v4(text: &str) -> Result<Ipv4Network> {
    text.parse()
        .map_err(|_| DaemonError::Internal(format!("stored subnet {text} is invalid")))
}

fn parse_v6(text: &str) -> Result<Ipv6Network> {
    text.parse()
        .map_err(|_| DaemonError::Internal(format!("stored subnet {text} is invalid")))
}

fn first_v6_host(net: Ipv6Network) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) + 1)
}

/// Which host ports are taken, by protocol and port: the host addresses they are bound to
/// (None: every address).
#[derive(Default)]
struct PortBook {
    taken: std::collections::HashMap<(Proto, u16), Vec<Option<IpAddr>>>,
}

impl PortBook {
    fn add(&mut self, m: &PortMapping) {
        self.taken
            .entry((m.proto, m.host_port))
            .or_default()
            .push(m.host_ip);
    }

    /// 0.0.0.0 conflicts with every address, a specific address with itself and 0.0.0.0.
    fn taken(&self, ip: Option<IpAddr>, port: u16, proto: Proto) -> bool {
        self.taken
            .get(&(proto, port))
            .is_some_and(|ips| ips.iter().any(|h| h.is_none() || ip.is_none() || *h == ip))
    }
}

/// The kernel-side form of a sandbox's published ports (IPv4 host addresses; ports bound
/// to an IPv6 address wait for the IPv6 datapath).
fn port_rules(sandbox: &Sandbox) -> Vec<PortRule> {
    let Some(endpoint) = sandbox.endpoints.first() else {
        return Vec::new();
    };
    sandbox
        .ports
        .iter()
        .filter_map(|m| {
            let host_ip = match m.host_ip {
                None => None,
                Some(IpAddr::V4(v4)) if v4.is_unspecified() => None,
                Some(IpAddr::V4(v4)) => Some(v4),
                Some(IpAddr::V6(_)) => return None,
            };
            Some(PortRule::new(
                host_ip,
                m.host_port,
                m.proto,
                endpoint.ipv4,
                m.container_port,
                sandbox.id,
            ))
        })
        .collect()
}

/// Published host ports go into `ip_local_reserved_ports` of natd's namespace, so the
/// host never picks one as the source port of its own connections (whose replies would
/// otherwise be taken for connections to the sandbox).
fn reserve_host_ports(rules: &[PortRule]) {
    let mut ports: Vec<u16> = rules.iter().map(|r| r.host_port).collect();
    ports.sort_unstable();
    ports.dedup();
    // Runs as ranges: tens of thousands of ports stay a short line.
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ports.len() {
        let mut j = i;
        while j + 1 < ports.len() && ports[j + 1] == ports[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            ports[i].to_string()
        } else {
            format!("{}-{}", ports[i], ports[j])
        });
        i = j + 1;
    }
    let text = parts.join(",");
    let current = netlink::read_sysctl("net.ipv4.ip_local_reserved_ports").unwrap_or_default();
    if current != text
        && let Err(e) = netlink::write_sysctl(
            "net.ipv4.ip_local_reserved_ports",
            if text.is_empty() { "\n" } else { &text },
        )
    {
        warn!(error = %e, "cannot reserve published ports in ip_local_reserved_ports");
    }
}

/// (protocol, port) of sockets of natd's namespace, from /proc/net: with `listening_only`,
/// TCP listeners and bound UDP sockets; otherwise every socket.
fn host_sockets(listening_only: bool) -> HashSet<(Proto, u16)> {
    let mut out = HashSet::new();
    for (file, proto) in [
        ("/proc/net/tcp", Proto::Tcp),
        ("/proc/net/tcp6", Proto::Tcp),
        ("/proc/net/udp", Proto::Udp),
        ("/proc/net/udp6", Proto::Udp),
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let (Some(local), Some(_remote), Some(state)) = (fields.nth(1), fields.next(), fields.next())
            else {
                continue;
            };
            let Some(port) = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            // 0A: TCP_LISTEN; 07: TCP_CLOSE, which is how bound UDP sockets show.
            if !listening_only
                || (proto == Proto::Tcp && state == "0A")
                || (proto == Proto::Udp && state == "07")
            {
                out.insert((proto, port));
            }
        }
    }
    out
}

fn host_listening_ports() -> HashSet<(Proto, u16)> {
    host_sockets(true)
}

fn host_ports_in_use() -> HashSet<(Proto, u16)> {
    host_sockets(false)
}

/// Masquerade ports sit outside the host's ephemeral range, so a NAT port can never equal
/// the source port of one of the host's own connections.
fn masquerade_ports(local: (u16, u16)) -> (u16, u16) {
    if local.1 <= 65535 - 1024 {
        (local.1 + 1, 65535)
    } else if local.0 > 2048 {
        (1024, local.0 - 1)
    } else {
        (61000, 65535)
    }
}

/// The host's ephemeral port range in natd's namespace (Docker allocates from it too).
fn local_port_range() -> (u16, u16) {
    netlink::read_sysctl("net.ipv4.ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
            Some((parts.next()?, parts.next()?))
        })
        .unwrap_or((32768, 60999))
}

/// `--uplink` as given, else the interfaces of the IPv4 default routes.
async fn resolve_uplinks(nl: &Netlink, configured: &[String]) -> Result<Vec<String>> {
    if !configured.is_empty() {
        for name in configured {
            if nl.link(name).await?.is_none() {
                return Err(invalid(format!("uplink {name}: no such interface")));
            }
        }
        return Ok(configured.to_vec());
    }
    let routes = nl.routes_v4().await?;
    let links = nl.links().await?;
    let mut out: Vec<String> = routes
        .iter()
        .filter(|r| r.destination.prefix() == 0)
        .filter_map(|r| r.oif)
        .filter_map(|oif| links.iter().find(|l| l.index == oif).map(|l| l.name.clone()))
        .collect();
    out.dedup();
    if out.is_empty() {
        warn!("no --uplink given and no default route: published ports and masquerade have no uplink");
    }
    Ok(out)
}
