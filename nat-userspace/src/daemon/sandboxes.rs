//! Sandboxes: `run` validates a request into a `RunPlan` (mode, network, endpoint,
//! namespace, published ports: every refusal happens here, before any side effect), then
//! applies it with a rollback stack; `rm` tears one down.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr as _,
    time::Duration,
};

use tracing::{info, warn};

use super::{
    DEFAULT_NETWORK, Daemon, drivers,
    endpoints::DefaultRoute,
    error::{Result, conflict, internal, invalid},
    names, now,
    ports::{self, PortRequest},
    rollback::{Rollback, Undo},
};
use crate::{
    api::{RunRequest, SandboxView},
    config,
    model::{CniAttachment, Endpoint, Network, NetworkMode, PortMapping, Sandbox},
    portspec::{ExposeSpec, Proto, PublishSpec},
    state::Change,
    sys::{netlink::Netlink, netns, process},
};

/// Where the sandbox's network namespace comes from.
enum NetnsPlan {
    /// Host mode or `container:`: not a namespace of its own.
    Shared,
    /// `--netns PATH`: someone else's, adopted and never deleted.
    Adopt(PathBuf),
    /// A new one, `/run/netns/<name>`.
    Create(String),
}

/// A validated `run` request: everything `apply_run` needs, nothing left to refuse.
struct RunPlan {
    id: u32,
    name: String,
    mode: NetworkMode,
    /// The network and the endpoint on it, for bridge mode.
    attachment: Option<(Network, Endpoint)>,
    netns: NetnsPlan,
    /// `--replace-default-route` for an adopted namespace.
    replace_default_route: bool,
    dns: Vec<IpAddr>,
    mtu: Option<u32>,
    publish: Vec<PublishSpec>,
    publish_all: bool,
    expose: Vec<ExposeSpec>,
    ports: Vec<PortMapping>,
    command: Vec<String>,
    cni: Option<CniAttachment>,
    changes: Vec<Change>,
}

/// `-p` specs, refusing what the dataplane cannot publish.
pub(super) fn parse_publish(specs: &[String]) -> Result<Vec<PublishSpec>> {
    let publish = specs
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
    }
    Ok(publish)
}

/// A `-p` on an IPv6 host address needs a sandbox with an IPv6 address on `network`;
/// `[::1]` needs the eBPF dataplane's socket hooks (IPv6 has no route_localnet: netfilter
/// cannot send a packet from ::1 to a sandbox).
pub(super) fn check_publish_families(
    publish: &[PublishSpec],
    network: &Network,
    dataplane: config::DataplaneKind,
) -> Result<()> {
    if dataplane == config::DataplaneKind::Nftables
        && let Some(spec) = publish
            .iter()
            .find(|s| s.host_ip == Some(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)))
    {
        return Err(invalid(format!(
            "cannot publish {spec}: ports on [::1] need the eBPF dataplane \
             (the nftables dataplane cannot route IPv6 loopback traffic to a sandbox)"
        )));
    }
    if network.has_ipv6() {
        return Ok(());
    }
    if let Some(spec) = publish.iter().find(|s| matches!(s.host_ip, Some(IpAddr::V6(_)))) {
        let how = if network.default {
            "start natd with --ipv6"
        } else {
            "create it with --ipv6"
        };
        return Err(invalid(format!(
            "cannot publish {spec}: network {} has no IPv6 ({how})",
            network.name
        )));
    }
    Ok(())
}

/// Docker's rule for container and network names.
pub(super) fn validate_name(kind: &str, name: &str) -> Result<()> {
    if crate::cluster::validate::valid_name(name) {
        Ok(())
    } else {
        Err(invalid(format!(
            "Invalid {kind} name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed (2-64 characters)"
        )))
    }
}

impl Daemon {
    /// `--network`: the mode and, for bridge mode, the network.
    fn resolve_mode(&self, network: Option<&str>) -> Result<(NetworkMode, Option<Network>)> {
        match network.unwrap_or(DEFAULT_NETWORK) {
            "none" => Ok((NetworkMode::None, None)),
            "host" => Ok((NetworkMode::Host, None)),
            other => match other.strip_prefix("container:") {
                Some(target) => {
                    self.sandbox(target)?;
                    Ok((NetworkMode::Container(target.to_string()), None))
                }
                None => Ok((NetworkMode::Bridge, Some(self.network(other)?.clone()))),
            },
        }
    }

    fn parse_ports(req: &RunRequest) -> Result<(Vec<PublishSpec>, Vec<ExposeSpec>)> {
        let publish = parse_publish(&req.publish)?;
        let expose = req
            .expose
            .iter()
            .map(|p| ExposeSpec::from_str(p).map_err(|e| invalid(e.to_string())))
            .collect::<Result<Vec<_>>>()?;
        Ok((publish, expose))
    }

    /// Options that only make sense with a namespace of the sandbox's own.
    fn check_mode_options(req: &RunRequest, mode: &NetworkMode, network: Option<&Network>) -> Result<()> {
        let network_arg = req.network.as_deref().unwrap_or(DEFAULT_NETWORK);
        let shares = matches!(mode, NetworkMode::Host | NetworkMode::Container(_));
        for (flag, given) in [("--ip", &req.ip), ("--ip6", &req.ip6)] {
            if given.is_some() && network.is_none() {
                return Err(invalid(format!(
                    "{flag} needs a bridge network, not --network {network_arg}"
                )));
            }
        }
        if (!req.publish.is_empty() || req.publish_all) && network.is_none() {
            let kind = match mode {
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
        if let Some(net) = network.filter(|n| !drivers::of(n.driver).translated())
            && (!req.publish.is_empty() || req.publish_all)
        {
            return Err(invalid(format!(
                "port publishing is not supported on hostbridge network {}: its sandboxes have addresses on the LAN \
                 and are reachable directly",
                net.name
            )));
        }
        Ok(())
    }

    /// A namespace is one sandbox's, except that the CNI attachments of one container
    /// (eth0, eth1, ...) share it; and never the host's: natd's own namespace (which
    /// holds its bridges and uplinks) and the initial one are refused, whatever path names
    /// them. Returns whether another attachment is already there.
    fn check_adopted_netns(&self, path: &str, cni: Option<&CniAttachment>) -> Result<bool> {
        let path = Path::new(path);
        if !netns::is_netns(path) {
            return Err(invalid(format!("{} is not a network namespace", path.display())));
        }
        let id = netns::identity(path);
        let what = if id.is_some() && id == netns::identity(Path::new("/proc/self/ns/net")) {
            Some("natd's own network namespace (the host's, with its bridges and uplinks)")
        } else if netns::is_initial(path) {
            Some("the initial network namespace (the host's)")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(invalid(format!(
                "{} is {what}: a sandbox never gets the host's namespace (--network host shares it)",
                path.display()
            )));
        }
        let users: Vec<&Sandbox> = self
            .state
            .sandboxes
            .values()
            .filter(|s| s.netns.as_deref().map(|p| netns::identity(Path::new(p))) == Some(id))
            .collect();
        let same_container = |s: &&Sandbox| matches!((s.cni.as_ref(), cni), (Some(a), Some(b)) if a.container_id == b.container_id);
        if let Some(other) = users.iter().find(|s| !same_container(s)) {
            return Err(conflict(format!(
                "network namespace {} is already used by sandbox {}",
                path.display(),
                other.name
            )));
        }
        Ok(!users.is_empty())
    }

    /// Every check of a `run` request, and every choice (ids, addresses, host ports).
    async fn plan_run(&mut self, req: RunRequest) -> Result<RunPlan> {
        validate_name("container", &req.name)?;
        if self.state.sandboxes.contains_key(&req.name) {
            return Err(conflict(format!(
                "Conflict. The container name \"{}\" is already in use",
                req.name
            )));
        }
        let (mode, network) = self.resolve_mode(req.network.as_deref())?;
        Self::check_mode_options(&req, &mode, network.as_ref())?;
        let (publish, expose) = Self::parse_ports(&req)?;
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
        let shared_netns = match &req.netns {
            Some(path) => self.check_adopted_netns(path, req.cni.as_ref())?,
            None => false,
        };
        let ifname = req.ifname.as_deref().unwrap_or("eth0");
        config::validate_ifname(ifname)
            .map_err(|m| invalid(format!("invalid interface name {ifname:?}: {m}")))?;
        if req.cni.is_some() && req.netns.is_none() {
            return Err(invalid(
                "a CNI attachment needs the runtime's network namespace (netns)",
            ));
        }
        // `-P` publishes --expose and the container side of every -p.
        let mut all_exposed = expose.clone();
        all_exposed.extend(publish.iter().map(|spec| ExposeSpec {
            ports: spec.container_ports,
            proto: spec.proto,
        }));
        if let Some(network) = &network {
            check_publish_families(&publish, network, self.dataplane.kind())?;
        }
        self.check_host_addresses(&publish).await?;
        let request = PortRequest {
            publish: &publish,
            publish_all: req.publish_all,
            expose: &all_exposed,
            ipv6: network.as_ref().is_some_and(|n| n.has_ipv6()),
        };
        // A hostPort a host process listens on is refused for CNI attachments too (a pod
        // must not shadow sshd or the kubelet): runtimes that reserve their ports (podman)
        // bind them after the network is set up, so what listens now is the host's.
        // `hostPortOverListener` lets the operator allow it.
        let host = if req.cni.is_some() && req.host_port_over_listener {
            Default::default()
        } else {
            ports::host_sockets(&request)
        };
        let mut ports = ports::allocate(&self.port_book, &host, self.port_range, &mut self.port_cursor, &request)
            .map_err(|e| conflict(e.to_string()))?;
        self.check_mapping_room(super::sync::rules_at_most(
            ports.len(),
            network.as_ref(),
            self.config.allow_direct_routing,
        ))?;

        let (id, id_change) = self.alloc_id();
        let mut changes = vec![id_change];
        changes.extend(self.number_mappings(&mut ports)?);
        let attachment = match network {
            Some(network) => {
                if let Some(ip) = req.ip.as_deref().filter(|ip| ip.contains(['/', '@'])) {
                    return Err(invalid(format!("invalid IPv4 address: {ip}")));
                }
                let (eid, change) = self.alloc_id();
                changes.push(change);
                let endpoint = self
                    .plan_endpoint(
                        &network,
                        req.ip.as_deref(),
                        req.ip6.as_deref(),
                        ifname,
                        eid,
                        &req.name,
                    )
                    .await?;
                Some((network, endpoint))
            }
            None => None,
        };
        let netns = match (&mode, &req.netns) {
            (NetworkMode::Host | NetworkMode::Container(_), _) => NetnsPlan::Shared,
            (_, Some(path)) => NetnsPlan::Adopt(PathBuf::from(path)),
            (_, None) => NetnsPlan::Create(names::sandbox_ns(&self.config.name_prefix, &req.name)),
        };
        Ok(RunPlan {
            id,
            name: req.name,
            mode,
            attachment,
            netns,
            replace_default_route: req.replace_default_route,
            dns,
            mtu: req.mtu,
            publish,
            publish_all: req.publish_all,
            expose,
            ports,
            command: req.command,
            cni: req.cni.map(|cni| CniAttachment {
                default_route: !shared_netns,
                ..cni
            }),
            changes,
        })
    }

    pub async fn run(&mut self, req: RunRequest) -> Result<SandboxView> {
        let result = self.run_sandbox(req).await;
        if result.is_err() {
            self.release_unused_claims().await;
        }
        result
    }

    async fn run_sandbox(&mut self, req: RunRequest) -> Result<SandboxView> {
        let mut plan = self.plan_run(req).await?;
        let mut rollback = Rollback::new("run");
        let result = async {
            let sandbox = self.apply_run(&plan, &mut rollback).await?;
            let mut changes = std::mem::take(&mut plan.changes);
            changes.push(Change::PutSandbox(sandbox.clone()));
            self.commit(changes)?;
            Ok(sandbox)
        }
        .await;
        let sandbox = rollback.settle(&self.nl, result).await?;
        self.sync_after_change().await?;
        info!(sandbox = %sandbox.name, "sandbox created");
        Ok(self.view(&sandbox))
    }

    /// The kernel side of a planned sandbox: namespace, endpoint, resolv.conf, process.
    async fn apply_run(&self, plan: &RunPlan, rollback: &mut Rollback) -> Result<Sandbox> {
        let (netns_path, netns_owned, etc_name) = match &plan.netns {
            NetnsPlan::Shared => (None, false, None),
            NetnsPlan::Adopt(path) => {
                let base = path.file_name().map(|n| n.to_string_lossy().to_string());
                (Some(path.clone()), false, base)
            }
            NetnsPlan::Create(name) => {
                let path = netns::create_named(name)?;
                rollback.record(Undo::DeleteNetns(path.clone()))?;
                (Some(path), true, Some(name.clone()))
            }
        };
        let mut endpoints = Vec::new();
        let default_route = match DefaultRoute::of(
            plan.cni.as_ref().is_none_or(|c| c.default_route),
            netns_owned || plan.replace_default_route,
        ) {
            DefaultRoute::Exclusive if plan.cni.is_some() => DefaultRoute::IfNone,
            other => other,
        };
        let mut cni = plan.cni.clone();
        if let Some(path) = &netns_path {
            let inner = Netlink::connect_in(path)?;
            if let Some(lo) = inner.link("lo").await? {
                inner.set_up(lo.index).await?;
            }
            if let Some((network, endpoint)) = &plan.attachment {
                let mut endpoint = endpoint.clone();
                let mtu = plan.mtu.unwrap_or(network.mtu);
                let wired = self
                    .wire_endpoint(path, network, &endpoint, default_route, mtu, rollback)
                    .await?;
                endpoint.mac = wired.mac;
                if let Some(cni) = &mut cni {
                    // Reconcile and CHECK expect the route only where natd added it.
                    cni.default_route = wired.default_route;
                }
                endpoints.push(endpoint);
            }
        }
        if netns_owned && let Some(name) = &etc_name {
            let servers = if plan.dns.is_empty() {
                &self.config.dns
            } else {
                &plan.dns
            };
            netns::write_resolv_conf(name, servers)
                .map_err(|e| internal(format!("write /etc/netns/{name}/resolv.conf")).because(e))?;
            rollback.record(Undo::RemoveEtc(name.clone()))?;
        }
        let mut sandbox = Sandbox {
            id: plan.id,
            name: plan.name.clone(),
            mode: plan.mode.clone(),
            netns: netns_path.as_ref().map(|p| p.display().to_string()),
            netns_owned,
            netns_cookie: netns_path
                .as_deref()
                .filter(|_| !matches!(plan.netns, NetnsPlan::Shared))
                .and_then(netns::cookie_of),
            etc_name: etc_name.filter(|_| netns_owned),
            endpoints,
            dns: plan.dns.clone(),
            mtu: plan.mtu,
            publish: plan.publish.clone(),
            publish_all: plan.publish_all,
            expose: plan.expose.clone(),
            ports: plan.ports.clone(),
            command: plan.command.clone(),
            pid: None,
            pid_start: None,
            log: None,
            created: now(),
            cni,
        };
        if !plan.command.is_empty() {
            self.start_command(&mut sandbox, rollback)?;
        }
        Ok(sandbox)
    }

    /// Starts the sandbox's command detached, output to `<state-dir>/logs/NAME.log`.
    fn start_command(&self, sandbox: &mut Sandbox, rollback: &mut Rollback) -> Result<()> {
        let log_dir = self.config.state_dir.join("logs");
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| internal(format!("create {}", log_dir.display())).because(e))?;
        let log = log_dir.join(format!("{}.log", sandbox.name));
        let (enter_ns, enter_etc) = self.enter_target(sandbox);
        let plan = netns::EnterPlan::new(Path::new(&enter_ns), enter_etc.as_deref())?;
        let (pid, started) = process::spawn_detached(&sandbox.command, plan, &log).map_err(|e| {
            // A command that cannot be found is the request's fault; anything else is ours.
            let message = format!(
                "cannot start {:?} in sandbox {}",
                sandbox.command.join(" "),
                sandbox.name
            );
            match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => invalid(message),
                _ => internal(message),
            }
            .because(e)
        })?;
        rollback.record(Undo::StopProcess { pid, started })?;
        sandbox.pid = Some(pid);
        sandbox.pid_start = started;
        sandbox.log = Some(log.display().to_string());
        Ok(())
    }

    /// Namespace and /etc/netns name a process of this sandbox lives in.
    pub(super) fn enter_target(&self, sandbox: &Sandbox) -> (String, Option<String>) {
        let mut current = sandbox;
        // container: chains are short; the bound only protects against a corrupt cycle.
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

    /// Stops the sandbox's process and removes its veths, namespace and /etc/netns entry.
    /// Keeps going on errors and returns them.
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
            return Err(conflict(format!(
                "cannot remove {name}: sandboxes {} share its network namespace (--network container:{name}); remove them first",
                users.join(", ")
            )));
        }
        let errors = self.teardown(&sandbox).await;
        self.commit_and_sync(vec![Change::DeleteSandbox(name.to_string())])
            .await?;
        for e in &errors {
            warn!(sandbox = name, error = %e, "teardown");
        }
        Ok(errors)
    }
}
