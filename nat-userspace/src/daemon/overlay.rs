//! Overlay networks on this host, kept in line with the cluster store: overlay networks
//! created on other hosts are set up here, ones removed there are removed here, this
//! host's address claims carry its sandboxes' MACs (and nothing else), and each overlay's
//! VXLAN device holds exactly one FDB and one neighbour entry per sandbox of the other
//! live hosts. Level-triggered: any view of the store, after any missed event, converges.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    sync::Arc,
};

use ipnetwork::{IpNetwork, Ipv4Network};
use tracing::{info, warn};

use super::{
    Daemon,
    drivers::{self, overlay, underlay},
    error::{Result, internal, unavailable},
    rollback::Rollback,
};
use crate::{
    api::AttachedSandbox,
    cluster::{Claim, ClaimOutcome, Cluster, ClusterView, OverlayRecord, etcd::Etcd, store::StoreError},
    config::DaemonConfig,
    model::{Driver, Network},
    state::Change,
    sys::{netlink::Netlink, vxlan},
};

/// The store of `--cluster-store`, tried once before natd changes anything: wrong
/// certificates or credentials stop natd here, naming the option; a store that is down
/// does not (natd starts and the agent keeps trying).
pub(super) async fn open_store(config: &DaemonConfig) -> anyhow::Result<Option<Arc<Etcd>>> {
    let Some(settings) = &config.cluster else {
        return Ok(None);
    };
    let store = Arc::new(Etcd::new(settings));
    if let Err(e) = store.probe().await {
        anyhow::bail!("--cluster-store-opt: {e}");
    }
    Ok(Some(store))
}

/// Joins the cluster of `store` (from `open_store`), if any. The store may be down: natd
/// starts anyway and the agent keeps trying (bridge networks do not need it).
pub(super) async fn join(
    config: &DaemonConfig,
    nl: &Netlink,
    store: Option<Arc<Etcd>>,
) -> anyhow::Result<Option<Arc<Cluster>>> {
    let (Some(settings), Some(store)) = (&config.cluster, store) else {
        return Ok(None);
    };
    let advertise = advertised_address(nl, &settings.advertise).await?;
    let host_id = host_id(&config.state_dir)?;
    let host_name = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    let cluster = Arc::new(Cluster::new(host_id, host_name, advertise, settings.ttl, settings.claim_grace, store));
    match cluster.register().await {
        Ok(()) => {
            info!(host = %cluster.host_id, %advertise, store = %cluster.store.describe(), "joined the cluster")
        }
        Err(e) => warn!(store = %cluster.store.describe(), "cannot register in the cluster store yet: {e}"),
    }
    if let Err(e) = cluster.refresh().await {
        warn!("cannot read the cluster store yet: {e}");
    }
    Ok(Some(cluster))
}

/// `--cluster-advertise`: an address of this host, or an interface's first IPv4 address.
async fn advertised_address(nl: &Netlink, text: &str) -> anyhow::Result<Ipv4Addr> {
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        if ip.is_loopback() || ip.is_unspecified() {
            anyhow::bail!("--cluster-advertise: {ip} cannot be advertised to other hosts");
        }
        overlay::underlay(nl, ip).await?;
        return Ok(ip);
    }
    let link = nl
        .link(text)
        .await?
        .ok_or_else(|| anyhow::anyhow!("--cluster-advertise: no interface named {text}"))?;
    nl.addresses(link.index)
        .await?
        .into_iter()
        .find_map(|a| match a {
            IpNetwork::V4(v4) => Some(v4.ip()),
            IpNetwork::V6(_) => None,
        })
        .ok_or_else(|| anyhow::anyhow!("--cluster-advertise: interface {text} has no IPv4 address"))
}

/// This host's id in the cluster: made once, kept in the state directory (Docker's
/// engine-id), so a restarted natd is the same host to its peers.
pub(super) fn host_id(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join("host-id");
    if let Ok(text) = std::fs::read_to_string(&path)
        && !text.trim().is_empty()
    {
        return Ok(text.trim().to_string());
    }
    let id = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?
        .trim()
        .replace('-', "");
    std::fs::create_dir_all(state_dir)?;
    // On disk before anyone sees it: a power loss must not mint another identity after
    // the store knows this one (the host's claims would be orphaned). The new name is on
    // disk only once the directory is.
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(id.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(state_dir)?.sync_all()?;
    Ok(id)
}

/// `natd --cleanup`: gives back this host's address claims and registration, so the
/// addresses of the sandboxes it removes are free for the other hosts at once.
pub(super) async fn leave(config: &DaemonConfig, networks: impl Iterator<Item = &Network>) -> Vec<String> {
    let (Some(settings), Ok(id)) = (
        &config.cluster,
        std::fs::read_to_string(config.state_dir.join("host-id")),
    ) else {
        return Vec::new();
    };
    let cluster = Cluster::new(
        id.trim().to_string(),
        String::new(),
        Ipv4Addr::UNSPECIFIED,
        settings.ttl,
        settings.claim_grace,
        Arc::new(Etcd::new(settings)),
    );
    let mut errors = Vec::new();
    for network in networks.filter(|n| n.driver == Driver::Overlay) {
        match cluster.claims(&network.name).await {
            Ok(claims) => {
                for (ip, claim) in claims.iter().filter(|(_, c)| c.host == cluster.host_id) {
                    if let Err(e) = cluster.release(&network.name, *ip, claim).await {
                        errors.push(format!("release {ip} on {}: {e}", network.name));
                    }
                }
            }
            Err(e) => errors.push(format!("overlay network {}: {e}", network.name)),
        }
    }
    if let Err(e) = cluster.deregister().await {
        errors.push(e.to_string());
    }
    errors
}

impl Daemon {
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.clone()
    }

    fn overlay_networks(&self) -> Vec<Network> {
        self.state
            .networks
            .values()
            .filter(|n| n.driver == Driver::Overlay)
            .cloned()
            .collect()
    }

    fn has_local_endpoints(&self, network: &str) -> bool {
        self.state
            .sandboxes
            .values()
            .any(|s| s.endpoints.iter().any(|e| e.network == network))
    }

    /// `natctl info`'s cluster part.
    pub fn cluster_info(&self) -> Option<crate::api::ClusterInfo> {
        let cluster = self.cluster.as_ref()?;
        let view = cluster.view();
        Some(crate::api::ClusterInfo {
            store: cluster.store.describe(),
            host_id: cluster.host_id.clone(),
            advertise: cluster.advertise.to_string(),
            reachable: cluster.reachable(),
            hosts: view.hosts.values().map(|h| format!("{} ({}, {})", h.name, h.addr, &h.id[..h.id.len().min(8)])).collect(),
            overlay_networks: view.networks.len(),
            rejected_records: cluster
                .rejected_records()
                .into_iter()
                .map(|(key, why)| format!("{key}: {why}"))
                .collect(),
            underlay_drops: underlay::drops(&self.config.name_prefix).map(|(non_member, spoofed)| {
                crate::api::UnderlayDrops { non_member, spoofed }
            }),
        })
    }

    /// Sandboxes of other hosts on an overlay network, for `network inspect`.
    pub(super) fn remote_sandboxes(&self, network: &Network) -> Vec<AttachedSandbox> {
        let (Some(cluster), Driver::Overlay) = (&self.cluster, network.driver) else {
            return Vec::new();
        };
        let view = cluster.view();
        view.claims
            .get(&network.name)
            .into_iter()
            .flatten()
            .filter(|(_, c)| c.host != cluster.host_id)
            .map(|(ip, c)| AttachedSandbox {
                name: c.sandbox.clone(),
                ipv4: format!("{ip}/{}", network.subnet.prefix()),
                ipv6: None,
                mac: c.mac.clone().unwrap_or_default(),
                host: Some(view.host_name(&c.host)),
            })
            .collect()
    }

    /// Brings this host's overlay networks in line with the cluster's view. Each network
    /// is handled on its own: one that cannot be joined does not hold up the others, and
    /// the claims and forwarding passes always run. Joining and removing are confirmed
    /// against the store first (the view may be older than a request that just changed it).
    pub async fn overlay_apply(&mut self) -> Result<()> {
        let Some(cluster) = self.cluster.clone() else {
            return Ok(());
        };
        let view = cluster.view();
        if !view.loaded {
            return Ok(());
        }
        let store = |e: StoreError| unavailable(e.to_string());
        let mut errors = Vec::new();
        let mut changed = false;
        let mut rejected = view.rejected();
        // Removals first: a network re-created elsewhere with a VNI that one removed here
        // used is joined in the same pass.
        for network in self.overlay_networks() {
            if view.networks.contains_key(&network.name) || self.has_local_endpoints(&network.name) {
                continue;
            }
            match cluster.network_record(&network.name).await {
                Ok(Some(_)) => continue, // The view is behind (a create that just happened).
                Ok(None) => {}
                Err(e) => {
                    errors.push(format!("checking {}: {e}", network.name));
                    continue;
                }
            }
            for e in drivers::of(Driver::Overlay).teardown(&self.nl, &network).await {
                warn!(network = %network.name, error = %e, "overlay teardown");
            }
            match self.commit(vec![Change::DeleteNetwork(network.name.clone())]) {
                Ok(()) => {
                    info!(network = %network.name, "overlay network removed from the cluster; removed here");
                    changed = true;
                }
                Err(e) => errors.push(format!("removing {}: {e}", network.name)),
            }
        }
        for record in view.networks.values() {
            match self.state.networks.get(&record.name) {
                None => {
                    if let Some(other) = self
                        .overlay_networks()
                        .into_iter()
                        .find(|n| n.overlay.as_ref().is_some_and(|o| o.vni == record.vni))
                    {
                        rejected.insert(
                            crate::cluster::network_key(&record.name),
                            format!("VNI {} is network {}'s on this host", record.vni, other.name),
                        );
                        continue;
                    }
                    match self.local_conflict(record.subnet).await {
                        Ok(None) => {}
                        Ok(Some(why)) => {
                            rejected.insert(crate::cluster::network_key(&record.name), why);
                            continue;
                        }
                        Err(e) => {
                            errors.push(format!("joining {}: {e}", record.name));
                            continue;
                        }
                    }
                    let joined = async {
                        if cluster.network_record(&record.name).await.map_err(store)?.as_ref() != Some(record) {
                            return Ok(false); // Gone or re-created meanwhile: the next view says.
                        }
                        self.join_overlay(&cluster, record).await.map(|()| true)
                    };
                    match joined.await {
                        Ok(j) => changed |= j,
                        Err(e) => errors.push(format!("joining {}: {e}", record.name)),
                    }
                }
                Some(local) if local.driver != Driver::Overlay => {
                    warn!(network = %record.name, "a local network has the name of an overlay network of the cluster; not joining it");
                }
                Some(local) if !same_network(local, record) => {
                    warn!(network = %record.name, "the cluster's overlay network of this name is another one (re-created elsewhere); remove the local sandboxes on it");
                }
                Some(_) => {}
            }
        }
        if changed && let Err(e) = self.sync_after_change().await {
            errors.push(e.to_string());
        }
        errors.extend(self.publish_claims(&cluster).await);
        errors.extend(self.program_peers(&cluster, &view, &mut rejected).await);
        cluster.report_rejected(rejected);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(internal(errors.join("; ")))
        }
    }

    async fn join_overlay(&mut self, cluster: &Cluster, record: &OverlayRecord) -> Result<()> {
        let mtu = overlay::overlay_mtu(&self.nl, cluster).await?;
        let (id, id_change) = self.alloc_id();
        let network = overlay::local_network(record, id, &self.config.name_prefix, mtu, cluster.advertise);
        let mut rollback = Rollback::new("join overlay network");
        let result = async {
            let network = drivers::of(Driver::Overlay)
                .setup(&self.nl, network, &mut rollback)
                .await?;
            self.commit(vec![id_change, Change::PutNetwork(network.clone())])?;
            Ok(network)
        }
        .await;
        let network = rollback.settle(&self.nl, result).await?;
        info!(network = %network.name, subnet = %network.subnet, vni = record.vni, "joined overlay network");
        Ok(())
    }

    /// Overlay networks of this host that are the cluster's network of that name (not
    /// one removed or re-created elsewhere): the only ones claims and peers are kept for.
    fn current_overlays(&self, view: &ClusterView) -> Vec<Network> {
        self.overlay_networks()
            .into_iter()
            .filter(|n| view.networks.get(&n.name).is_some_and(|r| same_network(n, r)))
            .collect()
    }

    /// This host's claims in the store say exactly which of its sandboxes use which
    /// address with which MAC: missing MACs are filled in, claims without a sandbox (a
    /// failed run, a crash before the commit) are given back. Returns the errors, per
    /// network.
    pub(super) async fn publish_claims(&self, cluster: &Cluster) -> Vec<String> {
        let mut errors = Vec::new();
        let view = cluster.view();
        for network in self.current_overlays(&view) {
            if let Err(e) = self.publish_network_claims(cluster, &view, &network).await {
                errors.push(format!("claims of {}: {e}", network.name));
            }
        }
        errors
    }

    async fn publish_network_claims(
        &self,
        cluster: &Cluster,
        view: &ClusterView,
        network: &Network,
    ) -> Result<(), StoreError> {
        let local: BTreeMap<Ipv4Addr, Claim> = self
            .state
            .sandboxes
            .values()
            .flat_map(|s| s.endpoints.iter().map(move |e| (s, e)))
            .filter(|(_, e)| e.network == network.name)
            .map(|(s, e)| {
                let mac = (!e.mac.is_empty()).then(|| e.mac.clone());
                let claim = Claim {
                    host: cluster.host_id.clone(),
                    sandbox: s.name.clone(),
                    mac,
                };
                (e.ipv4, claim)
            })
            .collect();
        // Nothing to do when the view already shows exactly these claims (any later change
        // of them reaches the view, and this runs again): no store round trip per request.
        let seen: BTreeMap<Ipv4Addr, Claim> = view
            .claims
            .get(&network.name)
            .into_iter()
            .flatten()
            .filter(|(_, c)| c.host == cluster.host_id)
            .map(|(ip, c)| (*ip, c.clone()))
            .collect();
        if seen == local {
            return Ok(());
        }
        let stored = cluster.claims(&network.name).await?;
        for (ip, want) in &local {
            match stored.get(ip) {
                Some(have) if have == want => {}
                Some(have) if have.host == cluster.host_id => {
                    cluster.replace_claim(&network.name, *ip, have, want).await?;
                }
                Some(have) => warn!(
                    network = %network.name, %ip, other = %have.host,
                    "address of sandbox {} is claimed by another host too", want.sandbox
                ),
                None => {
                    if let ClaimOutcome::Taken(have) = cluster.claim(&network.name, *ip, want).await? {
                        warn!(network = %network.name, %ip, other = %have.host, "address of sandbox {} is claimed by another host", want.sandbox);
                    }
                }
            }
        }
        for (ip, have) in &stored {
            if have.host == cluster.host_id && !local.contains_key(ip) && cluster.release(&network.name, *ip, have).await? {
                info!(network = %network.name, %ip, "released an address no sandbox here uses");
            }
        }
        Ok(())
    }

    /// The host's addresses as the last sync saw them (the housekeeping tick syncs again
    /// when they change), so a pass over the cluster's view, which runs on every watched
    /// change, does not dump them; a dump when no sync has run yet.
    async fn host_addresses(&self) -> Result<Vec<(u32, IpNetwork)>> {
        match &self.kernel_view {
            Some(view) => Ok(view.addresses.clone()),
            None => Ok(self.nl.all_addresses().await?),
        }
    }

    /// What on this host an overlay network's subnet would collide with: another network,
    /// a route natd did not make (the underlay's included), or an address of the host.
    async fn local_conflict(&self, subnet: Ipv4Network) -> Result<Option<String>> {
        if let Some(other) = self.state.networks.values().find(|n| n.subnet.overlaps(subnet)) {
            return Ok(Some(format!("subnet {subnet} overlaps network {} ({}) on this host", other.name, other.subnet)));
        }
        let (_, routes) = drivers::bridge::BridgeDriver::taken_by(&self.nl, &self.state.networks).await?;
        if let Some(route) = routes.iter().find(|r| r.overlaps(subnet)) {
            return Ok(Some(format!("subnet {subnet} overlaps route {route} on this host")));
        }
        for (_, address) in self.host_addresses().await? {
            if let IpNetwork::V4(a) = address
                && subnet.contains(a.ip())
            {
                return Ok(Some(format!("subnet {subnet} holds address {} of this host", a.ip())));
            }
        }
        Ok(None)
    }

    /// Puts the other hosts' sandboxes into each overlay's VXLAN device and the underlay
    /// filter, leaving out (and noting in `rejected`) what would collide with this host:
    /// a host at one of this host's addresses, a claim of a local sandbox's address, a
    /// MAC claimed twice.
    async fn program_peers(
        &self,
        cluster: &Cluster,
        view: &ClusterView,
        rejected: &mut BTreeMap<String, String>,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        let own_addresses: BTreeSet<Ipv4Addr> = match self.host_addresses().await {
            Ok(all) => all
                .into_iter()
                .filter_map(|(_, a)| match a {
                    IpNetwork::V4(a) => Some(a.ip()),
                    IpNetwork::V6(_) => None,
                })
                .collect(),
            Err(e) => return vec![format!("addresses of this host: {e}")],
        };
        let mut allowed = underlay::Allowed::default();
        for (id, host) in view.hosts.iter().filter(|(id, _)| **id != cluster.host_id) {
            if own_addresses.contains(&host.addr) {
                rejected.insert(
                    crate::cluster::host_key(id),
                    format!("underlay address {} is an address of this host", host.addr),
                );
            } else {
                allowed.members.insert(host.addr);
            }
        }
        // Every overlay device here is filtered, also one whose network left the cluster's
        // view (removed or re-created elsewhere while local sandboxes still use it): its
        // VNI is in the set with no speakers, so nothing reaches it from the underlay.
        allowed
            .vnis
            .extend(self.overlay_networks().iter().filter_map(|n| n.overlay.as_ref().map(|o| o.vni)));
        for network in self.current_overlays(view) {
            let Some(vni) = network.overlay.as_ref().map(|o| o.vni) else {
                continue;
            };
            let local: BTreeMap<Ipv4Addr, &str> = self
                .state
                .sandboxes
                .values()
                .flat_map(|s| s.endpoints.iter().map(move |e| (e.ipv4, s.name.as_str(), &e.network)))
                .filter(|(_, _, n)| **n == network.name)
                .map(|(ip, name, _)| (ip, name))
                .collect();
            let mut peers = Vec::new();
            // MACs derive from addresses (`validate::claim_mac`): one claim per address makes
            // one per MAC, and a local sandbox's MAC comes only with its address.
            for (ip, mac, underlay) in view.remote_endpoints(&network.name, &cluster.host_id) {
                let key = crate::cluster::claim_key(&network.name, ip);
                if !allowed.members.contains(&underlay) {
                    continue; // Its host was rejected above.
                }
                if let Some(sandbox) = local.get(&ip) {
                    rejected.insert(key, format!("address {ip} is sandbox {sandbox}'s on this host"));
                } else {
                    allowed.speakers.insert((underlay, vni, mac, ip));
                    peers.push(vxlan::Peer { ip, mac, underlay });
                }
            }
            peers.sort();
            let programmed = async {
                let Some(device) = self.nl.link(&overlay::vxlan_name(&network)).await? else {
                    return Ok((0, 0));
                };
                vxlan::program(&self.nl, device.index, &peers).await
            };
            match programmed.await {
                Ok((0, 0)) => {}
                Ok((added, removed)) => {
                    info!(network = %network.name, peers = peers.len(), added, removed, "overlay forwarding entries updated")
                }
                Err(e) => errors.push(format!("forwarding entries of {}: {e}", network.name)),
            }
        }
        if let Err(e) = self.apply_underlay_filter(allowed) {
            errors.push(format!("underlay filter: {e}"));
        }
        errors
    }

    /// Until the cluster's view is first read (the store may be down after a reboot), the
    /// overlay devices natd recreated are closed to the underlay: their VNIs with no member
    /// and no sandbox. The first pass over the view replaces it.
    pub(super) fn close_underlay_until_loaded(&self) {
        if self.cluster.is_none() || underlay::present(&self.config.name_prefix) {
            return;
        }
        let allowed = underlay::Allowed {
            vnis: self.overlay_networks().iter().filter_map(|n| n.overlay.as_ref().map(|o| o.vni)).collect(),
            ..Default::default()
        };
        match underlay::apply(&self.config.name_prefix, &allowed) {
            Ok(()) => *self.underlay_applied.lock().expect("underlay filter lock") = Some(allowed),
            Err(e) => warn!("underlay filter: {e}"),
        }
    }

    /// The housekeeping tick: the underlay filter's table put back if something removed
    /// it (`nft flush ruleset`), without waiting for a change in the cluster.
    pub(super) fn heal_underlay_filter(&self) {
        let prefix = &self.config.name_prefix;
        let applied = self.underlay_applied.lock().expect("underlay filter lock");
        let Some(allowed) = applied.as_ref() else {
            return;
        };
        if underlay::present(prefix) {
            return;
        }
        match underlay::apply(prefix, allowed) {
            Ok(()) => warn!("{FILTER_PUT_BACK}"),
            Err(e) => warn!("putting the underlay filter back: {e}"),
        }
    }

    /// Writes the underlay filter when what it allows changed, or when its table is gone.
    fn apply_underlay_filter(&self, allowed: underlay::Allowed) -> std::result::Result<(), crate::sys::nft::NftError> {
        let prefix = &self.config.name_prefix;
        let mut applied = self.underlay_applied.lock().expect("underlay filter lock");
        let present = underlay::present(prefix);
        if applied.as_ref() == Some(&allowed) && present {
            return Ok(());
        }
        underlay::apply(prefix, &allowed)?;
        if applied.is_some() && !present {
            warn!("{FILTER_PUT_BACK}");
        }
        if applied.as_ref().is_none_or(|a| a.members != allowed.members || a.vnis != allowed.vnis) {
            info!(
                members = allowed.members.len(),
                sandboxes = allowed.speakers.len(),
                vnis = allowed.vnis.len(),
                "underlay filter: VXLAN accepted from these hosts only"
            );
        }
        *applied = Some(allowed);
        Ok(())
    }

    /// After a change or a failed request: this host's claims follow its sandboxes (MACs
    /// filled in, addresses of removed or never-made endpoints given back). Never fails the
    /// caller; skipped while the store is unreachable (the agent catches up when it is back).
    pub(super) async fn release_unused_claims(&self) {
        if let Some(cluster) = self.cluster.as_ref().filter(|c| c.reachable()) {
            for e in self.publish_claims(cluster).await {
                warn!("overlay address claims: {e}");
            }
        }
    }
}

const FILTER_PUT_BACK: &str = "the underlay filter's table was removed behind natd's back; put back";

/// Whether this host's network is the cluster's network `record` (same subnet and VNI).
fn same_network(local: &Network, record: &OverlayRecord) -> bool {
    local.subnet == record.subnet && local.overlay.as_ref().map(|o| o.vni) == Some(record.vni)
}

#[cfg(test)]
mod tests {
    use super::host_id;

    /// The identity is written to a temporary file, synced, then renamed: what a crash
    /// leaves half-written is that file, never the identity.
    #[test]
    fn a_torn_write_never_changes_the_host_id() {
        let dir = std::env::temp_dir().join(format!("natd-host-id-{}", std::process::id()));
        let id = host_id(&dir).unwrap();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        std::fs::write(dir.join("host-id.tmp"), &id[..7]).unwrap();
        assert_eq!(host_id(&dir).unwrap(), id, "a torn temporary file is not read");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
