//! From natd's records to the dataplane: the desired kernel state (`Desired`) is computed
//! from the snapshot and two netlink dumps, and the dataplane makes the kernel match it.
//! Runs after every mutating request, on the periodic tick (which also expires idle flows
//! and follows address changes of the host), and at reconcile.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use ipnetwork::IpNetwork;
use tracing::warn;

use super::{
    Daemon, drivers,
    error::{Result, internal},
};
use crate::{
    config::DataplaneKind,
    dataplane::{Desired, EndpointRule, Iface, IfaceRole, NetworkRule, NetworkRule6, PortRule, SyncReport},
    model::{GatewayMode, HairpinSource, Network, PortAssignment, Sandbox},
    sys::{
        netfilter,
        netlink::{Link, LinkKind},
        sysctl,
    },
};

/// The host's links and addresses: two netlink dumps, whatever the number of sandboxes.
#[derive(Clone)]
pub(super) struct KernelView {
    pub(super) addresses: Vec<(u32, IpNetwork)>,
    pub(super) links: HashMap<String, Link>,
}

impl KernelView {
    pub(super) async fn dump(nl: &crate::sys::netlink::Netlink) -> Result<Self> {
        Ok(Self {
            addresses: nl.all_addresses().await?,
            links: nl.links().await?.into_iter().map(|l| (l.name.clone(), l)).collect(),
        })
    }

    /// Whether the two views differ in what a sync reads from them: links, and addresses
    /// but the IPv6 link-local ones (every veth has one, a sync ignores them, and natd's
    /// own changes look links up without their addresses).
    pub(super) fn same_as(&self, other: &KernelView) -> bool {
        let used = |view: &KernelView| -> std::collections::BTreeSet<(u32, IpNetwork)> {
            view.addresses
                .iter()
                .filter(|(_, net)| match net.ip() {
                    IpAddr::V6(v6) => is_global_v6(v6),
                    IpAddr::V4(_) => true,
                })
                .copied()
                .collect()
        };
        self.links == other.links && used(self) == used(other)
    }
}

impl Daemon {
    fn desired_dataplane(&self, view: &KernelView) -> Desired {
        let (quota_embryonic, quota_promoted) = self.config.source_quotas();
        let mut desired = Desired {
            snat_ports: self.snat_ports,
            fast_path: self.fast_path.is_on(),
            direct_routing: self.config.allow_direct_routing,
            quota_embryonic,
            quota_promoted,
            ..Default::default()
        };
        let (addresses, links) = (&view.addresses, &view.links);
        // Link-local addresses (one per veth) are never looked up: the programs leave link
        // traffic alone before any lookup, and they would fill the table.
        desired.local_addrs = addresses
            .iter()
            .map(|(_, net)| net.ip())
            .filter(|ip| match ip {
                IpAddr::V6(v6) => is_global_v6(*v6),
                IpAddr::V4(_) => true,
            })
            .collect();
        desired.ifaces = self.edges(view);
        for network in self.state.networks.values() {
            if drivers::of(network.driver).translated() {
                desired.networks.push(NetworkRule {
                    id: network.id,
                    bridge: network.bridge.clone(),
                    bridge_ifindex: links.get(&network.bridge).map_or(0, |l| l.index),
                    subnet: network.subnet,
                    gateway: network.gateway,
                    icc: network.icc,
                    internal: network.internal,
                    masquerade: network.masquerades() && network.gateway_mode_v4 == GatewayMode::Nat,
                    routed: network.gateway_mode_v4 == GatewayMode::Routed && !network.internal,
                    v6: network
                        .subnet_v6
                        .zip(network.gateway_v6)
                        .map(|(subnet, gateway)| NetworkRule6 {
                            subnet,
                            gateway,
                            masquerade: network.masquerades() && network.gateway_mode_v6 == GatewayMode::Nat,
                            routed: network.gateway_mode_v6 == GatewayMode::Routed && !network.internal,
                        }),
                    trusted: network.trusted_host_interfaces.clone(),
                    nat_filtering: network.nat.filtering,
                    random_ports: network.nat.ports.unwrap_or(self.config.masquerade_ports) == PortAssignment::Random,
                    hairpin_external: network.nat.hairpin_source == HairpinSource::External,
                });
            }
        }
        for sandbox in self.state.sandboxes.values() {
            for endpoint in &sandbox.endpoints {
                let Some(network) = self.state.networks.get(&endpoint.network) else {
                    continue;
                };
                // No NAT and no isolation on the host's LAN: nothing to attach there.
                if !drivers::of(network.driver).translated() {
                    continue;
                }
                let Some(veth) = links.get(&endpoint.host_ifname) else {
                    continue;
                };
                let network_id = network.id;
                let addr6 = endpoint.ipv6.filter(|_| network.subnet_v6.is_some());
                desired.ifaces.push(iface(
                    veth,
                    IfaceRole::SandboxVeth {
                        network_id,
                        addr: endpoint.ipv4,
                        addr6,
                    },
                ));
                let rule = EndpointRule {
                    addr: IpAddr::V4(endpoint.ipv4),
                    host_ifindex: veth.index,
                    network_id,
                    mac: parse_mac(&endpoint.mac),
                    gw_mac: links.get(&network.bridge).map_or([0; 6], |b| mac6(&b.mac)),
                    mtu: sandbox.mtu.unwrap_or(network.mtu),
                };
                desired.endpoints.push(rule);
                if let Some(v6) = addr6 {
                    desired.endpoints.push(EndpointRule {
                        addr: IpAddr::V6(v6),
                        ..rule
                    });
                }
            }
        }
        desired
    }

    /// Every published-port rule, and what changed since the last sync: `None` when every
    /// sandbox's rules were computed afresh (start, reconcile, a failed sync, a network changed), else the
    /// rules added and removed by the sandboxes whose records changed (`commit` marks them).
    fn refresh_port_rules(&mut self) -> (Vec<PortRule>, Option<PortChange>) {
        let Some(mut by_sandbox) = self.port_rules.by_sandbox.take() else {
            let by_sandbox: BTreeMap<String, Vec<PortRule>> = self
                .state
                .sandboxes
                .values()
                .map(|s| (s.name.clone(), self.port_rules_of(s)))
                .filter(|(_, rules)| !rules.is_empty())
                .collect();
            let all = by_sandbox.values().flatten().copied().collect();
            self.port_rules = PortRules {
                by_sandbox: Some(by_sandbox),
                dirty: HashSet::new(),
            };
            return (all, None);
        };
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for name in std::mem::take(&mut self.port_rules.dirty) {
            let old = by_sandbox.remove(&name).unwrap_or_default();
            let new = self
                .state
                .sandboxes
                .get(&name)
                .map(|s| self.port_rules_of(s))
                .unwrap_or_default();
            let (plus, minus) = rule_diff(&old, &new);
            added.extend(plus);
            removed.extend(minus);
            if !new.is_empty() {
                by_sandbox.insert(name, new);
            }
        }
        let all = by_sandbox.values().flatten().copied().collect();
        self.port_rules.by_sandbox = Some(by_sandbox);
        (all, Some((added, removed)))
    }

    /// The host's links and addresses: the last view with the links natd's own changes
    /// touched looked up again (one request each), or two dumps when the view may be stale
    /// (start, a tick that found the host changed, a foreign interface changed, a network changed). A dump of every
    /// link grows with the sandboxes (and the kernel's fill of each veth's peer namespace
    /// with the number of namespaces): not for every request.
    async fn current_view(&mut self) -> Result<std::sync::Arc<KernelView>> {
        let touched = self.touched_links.take();
        if let (Some(mut view), Some(touched)) = (self.kernel_view.take(), touched) {
            if touched.is_empty() {
                return Ok(view);
            }
            // A copy only while the tick compares the old one.
            let view_mut = std::sync::Arc::make_mut(&mut view);
            let mut gone = Vec::new();
            for name in &touched {
                match self.nl.link(name).await? {
                    Some(link) => {
                        view_mut.links.insert(name.clone(), link);
                    }
                    None => gone.extend(view_mut.links.remove(name).map(|l| l.index)),
                }
            }
            view_mut.addresses.retain(|(index, _)| !gone.contains(index));
            return Ok(view);
        }
        Ok(std::sync::Arc::new(KernelView::dump(&self.nl).await?))
    }

    /// The next sync takes a whole new view of the host's links and addresses.
    pub(super) fn forget_view(&mut self) {
        self.touched_links = None;
    }

    pub(super) async fn sync_dataplane(&mut self) -> Result<SyncReport> {
        self.view_epoch += 1;
        let view = match self.current_view().await {
            Ok(view) => view,
            Err(e) => {
                self.forget_view();
                self.sync_failed = true;
                return Err(e);
            }
        };
        // From now on, natd's own changes are followed link by link (`commit`).
        self.touched_links = Some(HashSet::new());
        let mut desired = self.desired_dataplane(&view);
        let (ports, changed) = self.refresh_port_rules();
        desired.ports = ports;
        self.warn_router_advertised_edges(&desired.ifaces);
        self.kernel_view = Some(view);
        let report = self.apply_desired(desired, changed).await;
        self.sync_failed = report.is_err();
        report
    }

    /// After a change of published ports only (`added`, `removed`): the rest of the last
    /// sync's state stands, so only those port rules reach the dataplane. Without a last
    /// sync (start), a full one.
    pub(super) async fn sync_ports(&mut self, sandbox: &str, added: &[PortRule], removed: &[PortRule]) -> Result<()> {
        // A view to take again (`forget_view`) means a full sync: the host changed.
        let (Some(desired), Some(by_sandbox), Some(_)) = (
            self.last_desired.as_mut(),
            self.port_rules.by_sandbox.as_mut(),
            self.touched_links.as_ref(),
        ) else {
            return self.sync_after_change().await;
        };
        // The sandbox's rules as they are now, as a sync would have computed them.
        let gone: HashSet<&PortRule> = removed.iter().collect();
        let mut rules = by_sandbox.remove(sandbox).unwrap_or_default();
        rules.retain(|r| !gone.contains(r));
        rules.extend_from_slice(added);
        if !rules.is_empty() {
            by_sandbox.insert(sandbox.to_string(), rules);
        }
        self.port_rules.dirty.remove(sandbox);
        if !removed.is_empty() {
            desired.ports.retain(|r| !gone.contains(r));
        }
        desired.ports.extend_from_slice(added);
        for rule in removed.iter().filter(|r| !r.is_open_port()) {
            self.reserved.remove(rule.host_port);
        }
        for rule in added.iter().filter(|r| !r.is_open_port()) {
            self.reserved.add(rule.host_port);
        }
        if let Err(e) = self.reserved.write() {
            warn!(error = %e, "cannot reserve published ports in ip_local_reserved_ports");
        }
        let changed = self.dataplane.change_ports(desired, added, removed);
        if changed.is_err() {
            // What reached the kernel is not known: the tick syncs everything again.
            self.sync_failed = true;
            self.port_rules = PortRules::default();
        }
        changed.map(|_| ()).map_err(|e| stored_but_not_applied(e.into()))
    }

    /// `changed`: the port rules added and removed since the last sync, when known (the
    /// dataplane may then write only those).
    async fn apply_desired(
        &mut self,
        desired: Desired,
        changed: Option<PortChange>,
    ) -> Result<SyncReport> {
        // With netfilter doing the NAT, a sandbox reaching its own published port is
        // bridged back out of the port it came in on (Docker does the same without its
        // userland proxy); the eBPF dataplane routes hairpin traffic and needs no such mode.
        let netfilter_nat = self.dataplane.kind() == DataplaneKind::Nftables;
        for iface in &desired.ifaces {
            if matches!(iface.role, IfaceRole::SandboxVeth { .. })
                && self.hairpin_set.insert((iface.index, netfilter_nat))
                && let Err(e) = self.nl.set_hairpin(iface.index, netfilter_nat).await
            {
                warn!(iface = %iface.name, error = %e, "cannot set hairpin mode");
            }
        }
        // The nftables dataplane translates 127.0.0.1 to sandboxes, which needs
        // route_localnet on natd's bridges (its raw guard drops 127.0.0.0/8 from anywhere
        // but lo); every other dataplane keeps it off.
        let localnet = if netfilter_nat { "1" } else { "0" };
        for network in &desired.networks {
            if self.localnet_set.insert((network.bridge.clone(), netfilter_nat))
                && let Err(e) = sysctl::write_iface_v4(&network.bridge, "route_localnet", localnet)
            {
                warn!(bridge = %network.bridge, error = %e, "cannot set route_localnet");
            }
        }
        // Published host ports go into ip_local_reserved_ports of natd's namespace
        // (`ports::Reserved`).
        match &changed {
            Some((added, removed)) => {
                for rule in removed.iter().filter(|r| !r.is_open_port()) {
                    self.reserved.remove(rule.host_port);
                }
                for rule in added.iter().filter(|r| !r.is_open_port()) {
                    self.reserved.add(rule.host_port);
                }
            }
            None => self.reserved.reset(reserved_ports(&desired)),
        }
        if let Err(e) = self.reserved.write() {
            warn!(error = %e, "cannot reserve published ports in ip_local_reserved_ports");
        }
        let report = match &changed {
            Some((added, removed)) => self.dataplane.sync_with_ports(&desired, added, removed),
            None => self.dataplane.sync(&desired),
        };
        if report.is_err() {
            // What reached the kernel is not known: the next sync computes everything.
            self.port_rules = PortRules::default();
        }
        let report = report?;
        self.last_desired = Some(desired);
        Ok(report)
    }

    /// After a committed change: the change is stored, so a dataplane failure is reported
    /// (and retried on every tick), not undone.
    pub(super) async fn sync_after_change(&mut self) -> Result<()> {
        self.sync_dataplane()
            .await
            .map(|_| ())
            .map_err(stored_but_not_applied)?;
        // Overlay address claims follow the change (MACs of new endpoints, released
        // addresses); the agent retries if the store cannot be reached now.
        self.release_unused_claims().await;
        Ok(())
    }

    /// Whether the firewall check is due (about once a second): the name prefix to check
    /// with. The check itself (`netfilter::forwarding_rules`, a few milliseconds) runs
    /// without the daemon's lock; `follow_firewall` applies its result.
    pub fn firewall_check_due(&self) -> Option<String> {
        self.fast_path
            .check_due()
            .then(|| self.config.name_prefix.clone())
    }

    /// A firewall that appeared or went away switches the fast path (flows already
    /// bypassing the host included: the programs read the switch on every packet).
    pub async fn follow_firewall(&mut self, found: Option<String>) -> Result<()> {
        let before = self.fast_path.is_on();
        self.fast_path.record(found);
        if self.fast_path.is_on() != before {
            self.sync_dataplane().await?;
        }
        Ok(())
    }

    /// The dataplane's housekeeping, which the tick runs before `tick` without this lock.
    pub fn housekeeping(&self) -> Option<std::sync::Arc<dyn crate::dataplane::Housekeeping>> {
        self.dataplane.housekeeping()
    }

    /// Periodic housekeeping: expire idle flows (unless the dataplane's housekeeping did
    /// outside the lock), repair what changed behind natd's back and follow address
    /// changes of the host.
    pub async fn tick(&mut self) -> Result<()> {
        if self.dataplane.housekeeping().is_none() {
            log_gc(&self.dataplane.gc()?);
        }
        self.dataplane.recheck();
        self.forget_view();
        self.sync_dataplane().await?;
        Ok(())
    }
}

pub fn log_gc(gc: &crate::dataplane::GcReport) {
    if gc.expired > 0 || gc.mappings_expired > 0 {
        tracing::debug!(scanned = gc.scanned, expired = gc.expired, mappings = gc.mappings_expired, "conntrack gc");
    }
}

/// The interface that plays an uplink's role: the uplink itself, or the bridge it is a
/// port of (a hostbridge network over the host's NIC: the bridge holds the NIC's
/// addresses, MAC and routes, and the host's traffic goes through it).
pub(super) fn effective_uplink<'a>(links: &'a HashMap<String, Link>, name: &str) -> Option<&'a Link> {
    let link = links.get(name)?;
    match link.master {
        Some(master) => links
            .values()
            .find(|l| l.index == master && l.kind == LinkKind::Bridge),
        None => Some(link),
    }
}

impl KernelView {
    /// Whether `ip` is one of the host's addresses as of the last sync.
    pub(super) fn has_address(&self, ip: IpAddr) -> bool {
        self.addresses.iter().any(|(_, a)| a.ip() == ip)
    }

    /// `name`, or `name via BRIDGE` when a bridge plays its role.
    pub(super) fn describe_uplink(&self, name: &str) -> String {
        match effective_uplink(&self.links, name) {
            Some(link) if link.name != name => format!("{name} via {}", link.name),
            _ => name.to_string(),
        }
    }
}

fn stored_but_not_applied(e: super::DaemonError) -> super::DaemonError {
    internal(
        "the change is stored, but the dataplane could not be brought in line \
         (natd retries on every housekeeping tick)",
    )
    .because(e)
}

fn mac6(bytes: &[u8]) -> [u8; 6] {
    let mut mac = [0u8; 6];
    if bytes.len() == 6 {
        mac.copy_from_slice(bytes);
    }
    mac
}

/// A MAC as natd stores it (`aa:bb:cc:dd:ee:ff`); all zero when it cannot be read.
fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    mac6(&bytes)
}

pub(super) fn iface(link: &Link, role: IfaceRole) -> Iface {
    Iface {
        index: link.index,
        name: link.name.clone(),
        role,
        mac: mac6(&link.mac),
        mtu: link.mtu,
        bridge: link.kind == LinkKind::Bridge,
    }
}

/// Whether flows may bypass the host: wanted by the operator (`--fast-path`) and no
/// netfilter rules on the forward path in natd's namespace, which bypassed packets would
/// escape (checked at start and on every housekeeping tick, not per request).
pub struct FastPath {
    wanted: bool,
    /// What keeps it off: netfilter rules found, or the operator.
    blocked_by: Option<String>,
    last_check: Instant,
}

impl FastPath {
    /// How often the ruleset is listed (a listing takes a few milliseconds).
    const CHECK_EVERY: Duration = Duration::from_secs(1);

    pub fn new(wanted: bool, prefix: &str) -> Self {
        let mut fast = Self {
            wanted,
            blocked_by: None,
            last_check: Instant::now(),
        };
        fast.check(prefix);
        fast
    }

    pub fn check_due(&self) -> bool {
        self.wanted && self.last_check.elapsed() >= Self::CHECK_EVERY
    }

    pub fn is_on(&self) -> bool {
        self.wanted && self.blocked_by.is_none()
    }

    pub fn check(&mut self, prefix: &str) {
        if self.wanted {
            self.record(netfilter::forwarding_rules(prefix));
        }
    }

    /// The result of a check: the forwarding rules found, if any.
    pub fn record(&mut self, found: Option<String>) {
        if !self.wanted {
            return;
        }
        self.last_check = Instant::now();
        if found != self.blocked_by {
            match &found {
                Some(rules) => warn!("fast path off: netfilter rules see forwarded traffic ({rules})"),
                None => tracing::info!("fast path on: no netfilter rule on the forward path"),
            }
        }
        self.blocked_by = found;
    }

    /// For `natctl info`.
    pub fn describe(&self) -> String {
        match (&self.blocked_by, self.wanted) {
            (_, false) => "off (--fast-path=false)".into(),
            (Some(rules), true) => {
                format!("off: netfilter rules in natd's namespace see forwarded traffic ({rules})")
            }
            (None, true) => "on".into(),
        }
    }
}

impl Daemon {
    /// Refuses a request that would take natd past the published mappings its dataplane
    /// can hold (eBPF: `--max-published-ports`, which sizes its tables): `adding` more (at
    /// most) than it holds now. Checked before anything is stored.
    pub(super) fn check_mapping_room(&self, adding: usize) -> super::error::Result<()> {
        let Some((held, allowed)) = self.dataplane.mapping_room() else {
            return Ok(());
        };
        if adding > 0 && held + adding > allowed {
            return Err(super::error::invalid(format!(
                "cannot publish up to {adding} more mappings: natd allows {allowed} published mappings \
                 (--max-published-ports) and has {held}"
            )));
        }
        Ok(())
    }

    /// The kernel-side form of a sandbox's published ports (see `port_rules`).
    pub(super) fn port_rules_of(&self, sandbox: &Sandbox) -> Vec<PortRule> {
        let network = sandbox
            .endpoints
            .first()
            .and_then(|e| self.state.networks.get(&e.network));
        port_rules(sandbox, network, self.config.allow_direct_routing)
    }
}

/// The kernel-side form of a sandbox's published ports: each mapping in its family,
/// aimed at the sandbox's address of that family on its first network (`network`). On a
/// family whose gateway mode is routed nothing is translated: the mapping opens the
/// container port on the sandbox's own address (a rule that translates it to itself), as
/// Docker's routed mode opens it in its firewall. In nat mode the container port is also
/// opened on the sandbox's address when edges may reach it directly (Docker 28.2): for
/// every edge with `allow-direct-routing`, else for the edges the network trusts.
pub(super) fn port_rules(sandbox: &Sandbox, network: Option<&Network>, direct_routing: bool) -> Vec<PortRule> {
    let Some(endpoint) = sandbox.endpoints.first() else {
        return Vec::new();
    };
    let routed = |v6: bool| {
        network.is_some_and(|n| {
            let mode = if v6 { n.gateway_mode_v6 } else { n.gateway_mode_v4 };
            mode == GatewayMode::Routed && !n.internal
        })
    };
    let direct = direct_rules(network, direct_routing);
    let mut rules: Vec<PortRule> = Vec::new();
    for m in &sandbox.ports {
        let (host_ip, target) = match m.host_ip {
            None => (None, IpAddr::V4(endpoint.ipv4)),
            Some(IpAddr::V4(v4)) => (Some(IpAddr::V4(v4)), IpAddr::V4(endpoint.ipv4)),
            // Refused when the sandbox has no IPv6 address; skipped here for records
            // written before that check.
            Some(IpAddr::V6(v6)) => match endpoint.ipv6 {
                Some(ip6) => (Some(IpAddr::V6(v6)), IpAddr::V6(ip6)),
                None => continue,
            },
        };
        let ids = (m.id, sandbox.id);
        let rule = if routed(target.is_ipv6()) {
            PortRule::open_port(m.proto, target, m.container_port, ids, false)
        } else {
            if let Some(trusted_only) = direct {
                rules.push(PortRule::open_port(m.proto, target, m.container_port, ids, trusted_only));
            }
            PortRule::new(
                host_ip.filter(|ip| !ip.is_unspecified()),
                m.host_port,
                m.proto,
                (target, m.container_port),
                ids,
            )
        };
        rules.push(rule);
    }
    // One open port per container port, however many host ports lead to it.
    let mut seen = HashSet::new();
    rules.retain(|r| seen.insert((r.host_ip, r.host_port, r.proto, r.target, r.target_port)));
    rules
}

/// Whether a network's sandboxes also get their container ports opened to edges directly
/// (Some(only to the edges it trusts)).
fn direct_rules(network: Option<&Network>, direct_routing: bool) -> Option<bool> {
    network.and_then(|n| {
        if n.internal || !drivers::of(n.driver).translated() {
            None
        } else if direct_routing {
            Some(false)
        } else if !n.trusted_host_interfaces.is_empty() {
            Some(true)
        } else {
            None
        }
    })
}

/// The most rules `mappings` published ports of a sandbox on `network` make (one each, two
/// where the container port is also opened directly).
pub(super) fn rules_at_most(mappings: usize, network: Option<&Network>, direct_routing: bool) -> usize {
    mappings * if direct_rules(network, direct_routing).is_some() { 2 } else { 1 }
}

/// Published-port rules added and removed.
type PortChange = (Vec<PortRule>, Vec<PortRule>);

/// Published-port rules by sandbox as the last sync computed them (`None`: to be computed
/// from every sandbox), and the sandboxes whose records changed since (`commit` adds them).
#[derive(Default)]
pub(super) struct PortRules {
    by_sandbox: Option<BTreeMap<String, Vec<PortRule>>>,
    dirty: HashSet<String>,
}

impl PortRules {
    /// `sandbox`'s rules as the last sync computed them, if its record has not changed
    /// since.
    pub(super) fn cached(&self, sandbox: &str) -> Option<&[PortRule]> {
        if self.dirty.contains(sandbox) {
            return None;
        }
        let by_sandbox = self.by_sandbox.as_ref()?;
        Some(by_sandbox.get(sandbox).map_or(&[], Vec::as_slice))
    }

    /// A sandbox's record changed (its rules are computed again at the next sync).
    pub(super) fn touch(&mut self, sandbox: &str) {
        if self.by_sandbox.is_some() {
            self.dirty.insert(sandbox.to_string());
        }
    }

    /// Something every rule may depend on changed (a network).
    pub(super) fn forget(&mut self) {
        *self = Self::default();
    }
}

/// Rules in `after` and not in `before`, and the other way round.
pub(super) fn rule_diff(before: &[PortRule], after: &[PortRule]) -> (Vec<PortRule>, Vec<PortRule>) {
    let (had, has): (HashSet<&PortRule>, HashSet<&PortRule>) = (before.iter().collect(), after.iter().collect());
    (
        after.iter().filter(|r| !had.contains(r)).copied().collect(),
        before.iter().filter(|r| !has.contains(r)).copied().collect(),
    )
}

/// Host ports to keep out of the host's own ephemeral range: published ones, not a routed
/// network's open container ports (no host port is taken there).
fn reserved_ports(desired: &Desired) -> impl Iterator<Item = u16> + '_ {
    desired.ports.iter().filter(|r| !r.is_open_port()).map(|r| r.host_port)
}

/// A global unicast address (not link-local, loopback, multicast or unspecified).
pub(super) fn is_global_v6(ip: std::net::Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || first & 0xffc0 == 0xfe80)
}
