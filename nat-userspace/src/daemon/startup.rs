//! What happens when natd starts: open the store, find the uplinks and port ranges, open
//! the dataplane, bring the default network in line with the flags, then reconcile the
//! kernel with the records.
use std::collections::{BTreeMap, HashSet};

use tracing::{info, warn};

use super::{DEFAULT_NETWORK, Daemon, drivers, error::Result, error::invalid, now, sync};
use crate::{
    config::DaemonConfig,
    dataplane,
    model::{Driver, Network, Sandbox},
    state::{Change, Store},
    sys::{netlink::Netlink, sysctl},
};

impl Daemon {
    pub async fn start(config: DaemonConfig) -> anyhow::Result<Self> {
        let (store, state) = Store::open(&config.state_dir)?;
        check_published_ports(&config, &state)?;
        let nl = Netlink::connect()?;
        let mut forwarding = vec!["net.ipv4.ip_forward"];
        // Networks created with --ipv6 need it as much as the default one.
        let ipv6 = config.ipv6 || state.networks.values().any(|n| n.has_ipv6());
        if ipv6 {
            forwarding.push("net.ipv6.conf.all.forwarding");
        }
        for key in forwarding {
            if let Err(e) = sysctl::write(key, "1") {
                warn!(key, error = %e, "cannot set sysctl");
            }
        }
        let uplinks = resolve_uplinks(&nl, &config.uplinks, &state.networks).await?;
        let local_ports = sysctl::local_port_range().unwrap_or((32768, 60999));
        let port_range = config.port_range.unwrap_or(local_ports);
        let snat_ports = config
            .masquerade_port_range
            .unwrap_or_else(|| masquerade_ports(local_ports));
        // The dataplane first: loading and verifying the programs takes seconds, and the
        // cluster lease granted at join is only renewed once start-up is done (with a short
        // --cluster-ttl it expired meanwhile and the host was dropped by its peers).
        let cluster_store = super::overlay::open_store(&config).await?;
        let dataplane = dataplane::create(&config, ipv6)?;
        let cluster = super::overlay::join(&config, &nl, cluster_store).await?;
        let ula_pool = crate::ipam6::ula_pool(&super::overlay::host_id(&config.state_dir)?);
        info!(dataplane = %dataplane.kind(), ?uplinks, "dataplane ready");
        let port_book = super::ports::PortBook::of(state.sandboxes.values().flat_map(|s| s.ports.iter()));
        let reserved = super::ports::Reserved::new(state.sandboxes.values().flat_map(|s| s.ports.iter().map(|m| m.host_port)));
        let mut daemon = Self {
            config,
            store,
            state,
            port_book,
            reserved,
            port_rules: Default::default(),
            touched_links: None,
            nl,
            dataplane,
            uplinks,
            port_range,
            port_cursor: Default::default(),
            snat_ports,
            last_reconcile: Vec::new(),
            hairpin_set: HashSet::new(),
            localnet_set: HashSet::new(),
            ra_checked: HashSet::new(),
            kernel_view: None,
            view_epoch: 0,
            sync_failed: false,
            last_desired: None,
            cluster,
            underlay_applied: Default::default(),
            ula_pool,
            fast_path: sync::FastPath::new(false, ""),
        };
        daemon.fast_path = sync::FastPath::new(
            daemon.config.fast_path && daemon.dataplane.kind() == crate::config::DataplaneKind::Ebpf,
            &daemon.config.name_prefix,
        );
        daemon.number_stored_mappings()?;
        daemon.ensure_default_network().await?;
        daemon.close_underlay_until_loaded();
        let report = daemon.reconcile().await?;
        for line in &report {
            info!(target: "natd::reconcile", "{line}");
        }
        if report.is_empty() {
            info!(target: "natd::reconcile", "kernel state matches the stored state");
        }
        Ok(daemon)
    }

    /// Records written before mappings had ids (`PortMapping::id`) get theirs, in one
    /// commit. The dataplane finds each mapping's slot by its fields, so its flows carry on.
    fn number_stored_mappings(&mut self) -> Result<()> {
        let mut changes = Vec::new();
        let unnumbered: Vec<Sandbox> = self
            .state
            .sandboxes
            .values()
            .filter(|s| s.ports.iter().any(|m| m.id == 0))
            .cloned()
            .collect();
        for mut sandbox in unnumbered {
            changes.extend(self.number_mappings(&mut sandbox.ports)?);
            changes.push(Change::PutSandbox(sandbox));
        }
        if changes.is_empty() {
            return Ok(());
        }
        info!(sandboxes = changes.iter().filter(|c| matches!(c, Change::PutSandbox(_))).count(), "published ports given their ids");
        self.commit(changes)
    }

    /// The network named `bridge` follows natd's flags: created on first start, updated
    /// when the flags change.
    async fn ensure_default_network(&mut self) -> Result<()> {
        let existing = self.state.networks.get(DEFAULT_NETWORK).cloned();
        let (id, id_change) = match &existing {
            Some(n) => (n.id, None),
            None => {
                let (id, change) = self.alloc_id();
                (id, Some(change))
            }
        };
        let subnet_v6 = self.default_subnet_v6(existing.as_ref())?;
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
            subnet: crate::config::subnet_of(cfg.bip),
            gateway: cfg.bip.ip(),
            aux_gateway: cfg.default_gateway.filter(|g| *g != cfg.bip.ip()),
            ip_range: cfg.fixed_cidr,
            subnet_v6,
            gateway_v6: subnet_v6.map(crate::ipam::first_v6_host),
            aux_gateway_v6: cfg.default_gateway_v6,
            internal: false,
            icc: cfg.icc,
            ip_masq: cfg.ip_masq,
            mtu: cfg.mtu,
            default: true,
            gateway_mode_v4: Default::default(),
            gateway_mode_v6: Default::default(),
            created: existing.as_ref().map(|n| n.created).unwrap_or_else(now),
            parent: None,
            overlay: None,
            trusted_host_interfaces: Vec::new(),
            nat: Default::default(),
        };
        if existing.as_ref() == Some(&network) {
            return Ok(());
        }
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
        let mut changes = vec![Change::PutNetwork(network)];
        changes.extend(id_change);
        self.commit(changes)
    }

    /// The default network's IPv6 subnet: `--fixed-cidr-v6`; with `--ipv6` alone the /64 of
    /// the host's ULA pool it already has (stable across restarts), or the lowest free one.
    fn default_subnet_v6(&self, existing: Option<&Network>) -> Result<Option<ipnetwork::Ipv6Network>> {
        if let Some(fixed) = self.config.fixed_cidr_v6 {
            return Ok(Some(fixed));
        }
        if !self.config.ipv6 {
            return Ok(None);
        }
        if let Some(kept) = existing.and_then(|n| n.subnet_v6) {
            return Ok(Some(kept));
        }
        let taken: Vec<_> = self
            .state
            .networks
            .values()
            .filter(|n| n.name != DEFAULT_NETWORK)
            .filter_map(|n| n.subnet_v6)
            .collect();
        crate::ipam6::pick_free_v6(self.ula_pool, &taken)
            .map(Some)
            .map_err(|e| invalid(format!("--ipv6: {e}")))
    }

    /// Reconcile brings every network's kernel side back; used at start-up, on
    /// `POST /v1/reconcile`, and never on the periodic tick.
    pub(super) async fn ensure_networks(&mut self) -> Result<Vec<String>> {
        let mut report = Vec::new();
        let networks: Vec<Network> = self.state.networks.values().cloned().collect();
        for network in &networks {
            if drivers::of(network.driver).ensure(&self.nl, network).await? {
                report.push(format!(
                    "created bridge {} for network {}",
                    network.bridge, network.name
                ));
            }
        }
        Ok(report)
    }
}

/// A start whose `--max-published-ports` is below the mappings natd has would drop some
/// (and the counters of their slots): refused before anything is loaded.
fn check_published_ports(config: &DaemonConfig, state: &crate::state::Snapshot) -> Result<()> {
    if matches!(config.dataplane, crate::config::DataplaneKind::Nftables | crate::config::DataplaneKind::None) {
        return Ok(());
    }
    let held: usize = state
        .sandboxes
        .values()
        .map(|sandbox| {
            let network = sandbox.endpoints.first().and_then(|e| state.networks.get(&e.network));
            sync::port_rules(sandbox, network, config.allow_direct_routing).len()
        })
        .sum();
    if held > config.max_published_ports as usize {
        return Err(invalid(format!(
            "max-published-ports: natd has {held} published mappings, more than {} allows. Nothing was \
             changed: start with --max-published-ports {held} or more (or remove some first)",
            config.max_published_ports
        )));
    }
    Ok(())
}

/// Masquerade ports sit outside the host's ephemeral range, so a NAT port can never equal
/// the source port of one of the host's own connections.
fn masquerade_ports(local: (u16, u16)) -> (u16, u16) {
    if local.1 <= 65535 - 1024 {
        (local.1 + 1, 65535)
    } else if local.0 > 2048 {
        (1024, local.0 - 1)
    } else {
        nat_common::DEFAULT_SNAT_PORTS
    }
}

/// `--uplink` as given, else the interfaces of the IPv4 default routes. A default route
/// on the bridge of a hostbridge network over a NIC names that NIC: the bridge plays the
/// uplink's role only while the network exists (`sync::effective_uplink`).
async fn resolve_uplinks(
    nl: &Netlink,
    configured: &[String],
    networks: &BTreeMap<String, Network>,
) -> Result<Vec<String>> {
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
    let parent_of = |bridge: &str| {
        networks
            .values()
            .filter(|n| n.bridge == bridge)
            .find_map(|n| n.parent.as_ref().map(|p| p.parent.clone()))
    };
    let mut out: Vec<String> = routes
        .iter()
        .filter(|r| r.destination.prefix() == 0)
        .filter_map(|r| r.oif)
        .filter_map(|oif| links.iter().find(|l| l.index == oif).map(|l| l.name.clone()))
        .map(|name| parent_of(&name).unwrap_or(name))
        .collect();
    out.dedup();
    if out.is_empty() {
        warn!("no --uplink given and no default route: published ports and masquerade have no uplink");
    }
    Ok(out)
}
