//! Reconcile: the one path from the records to the kernel. It brings back bridges, veths
//! and namespaces that are missing, removes what carries natd's generated names but no
//! record explains, and syncs the dataplane. Start-up and `POST /v1/reconcile` use it.
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use super::{Daemon, endpoints::DefaultRoute, error::Result, names, rollback::Rollback};
use crate::{
    model::{NetworkMode, Sandbox},
    sys::{netlink::Link, netns, process},
};

impl Daemon {
    /// Makes the kernel match the stored state and removes what natd owns but no longer
    /// needs. Returns one line per change.
    pub async fn reconcile(&mut self) -> Result<Vec<String>> {
        let mut report = self.ensure_networks().await?;
        let sandboxes: Vec<Sandbox> = self.state.sandboxes.values().cloned().collect();
        // One dump, not two lookups per sandbox (seconds at a thousand sandboxes).
        let links: HashMap<String, Link> = self.nl.links().await?.into_iter().map(|l| (l.name.clone(), l)).collect();
        for sandbox in &sandboxes {
            report.extend(self.reconcile_sandbox(sandbox, &links).await);
        }
        report.extend(self.remove_stale().await?);
        // A VXLAN device brought back is empty: the other hosts' sandboxes go in now, not at
        // the next change of the cluster.
        if let Err(e) = self.overlay_apply().await {
            report.push(format!("overlay networks: {e}"));
        }
        // Everything afresh, the published ports' rules and the host's links included.
        self.port_rules.forget();
        self.forget_view();
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

    /// A sandbox's namespace and veths, brought back if they are gone. `links`: the host's
    /// links as reconcile began (the networks' bridges already brought back).
    async fn reconcile_sandbox(&mut self, sandbox: &Sandbox, links: &HashMap<String, Link>) -> Vec<String> {
        let mut report = Vec::new();
        let Some(path) = sandbox.netns.as_ref().map(PathBuf::from) else {
            return report;
        };
        let routed = sandbox.cni.as_ref().is_none_or(|c| c.default_route);
        if matches!(sandbox.mode, NetworkMode::Container(_)) {
            return report;
        }
        // A path that names another namespace than the one the sandbox got (deleted, and
        // made again under the same name by someone else) is not the sandbox's: never
        // re-wired, handled like a namespace that is gone.
        let recycled = sandbox
            .netns_cookie
            .is_some_and(|cookie| path.exists() && netns::cookie_of(&path).is_some_and(|now| now != cookie));
        if recycled && !sandbox.netns_owned {
            report.push(format!(
                "sandbox {}: {} now names another network namespace than the one it adopted; \
                 not re-wired",
                sandbox.name,
                path.display()
            ));
        }
        if !path.exists() || !netns::is_netns(&path) || (recycled && !sandbox.netns_owned) {
            if sandbox.cni.is_some() {
                // The runtime deleted the container while natd could not hear its DEL. A
                // refusal (another sandbox shares the namespace) is reported, never fatal.
                match self.rm(&sandbox.name).await {
                    Ok(warnings) => report.push(format!(
                        "removed CNI attachment {} (its namespace is gone){}",
                        sandbox.name,
                        if warnings.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", warnings.join("; "))
                        }
                    )),
                    Err(e) => report.push(format!(
                        "sandbox {}: its namespace is gone but it cannot be removed: {e}",
                        sandbox.name
                    )),
                }
                return report;
            }
            if !sandbox.netns_owned {
                if !recycled {
                    report.push(format!(
                        "sandbox {}: adopted namespace {} is gone; remove the sandbox",
                        sandbox.name,
                        path.display()
                    ));
                }
                return report;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            match netns::create_named(name) {
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
            match links.get(&endpoint.host_ifname) {
                Some(link) => {
                    if let Some(bridge) = links.get(&network.bridge)
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
                None => {
                    let mtu = sandbox.mtu.unwrap_or(network.mtu);
                    // A half-made endpoint is removed again; the next reconcile retries.
                    let mut rollback = Rollback::new("reconcile");
                    let wired = self
                        .wire_endpoint(
                            &path,
                            &network,
                            endpoint,
                            DefaultRoute::of(i == 0 && routed, sandbox.netns_owned),
                            mtu,
                            &mut rollback,
                        )
                        .await;
                    match rollback.settle(&self.nl, wired).await {
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
            }
        }
        report
    }

    /// Interfaces, namespaces and /etc/netns entries carrying natd's generated names that
    /// no stored object explains.
    async fn remove_stale(&mut self) -> Result<Vec<String>> {
        let mut report = Vec::new();
        let prefix = &self.config.name_prefix;
        let vxlans: Vec<String> = self
            .state
            .networks
            .values()
            .filter(|n| n.overlay.is_some())
            .map(|n| names::vxlan(prefix, n.id))
            .collect();
        let wanted_links: HashSet<&str> = self
            .state
            .sandboxes
            .values()
            .flat_map(|s| s.endpoints.iter().map(|e| e.host_ifname.as_str()))
            .chain(self.state.networks.values().map(|n| n.bridge.as_str()))
            .chain(vxlans.iter().map(String::as_str))
            .collect();
        for link in self.nl.links().await? {
            if names::is_generated_ifname(prefix, &link.name) && !wanted_links.contains(link.name.as_str()) {
                self.nl.delete_link(link.index).await?;
                report.push(format!("removed stale interface {}", link.name));
            }
        }
        let ns_prefix = names::sandbox_ns_prefix(prefix);
        let wanted_ns: HashSet<&str> = self
            .state
            .sandboxes
            .values()
            .filter(|s| s.netns_owned)
            .filter_map(|s| s.netns.as_deref())
            .collect();
        for (name, path) in entries_with_prefix(Path::new(netns::NETNS_RUN_DIR), &ns_prefix) {
            if !wanted_ns.contains(path.to_string_lossy().as_ref()) {
                process::kill_all(&netns::pids_in(&path));
                netns::delete_named(&path)?;
                report.push(format!("removed stale namespace {name}"));
            }
        }
        let wanted_etc: HashSet<&str> = self
            .state
            .sandboxes
            .values()
            .filter_map(|s| s.etc_name.as_deref())
            .collect();
        for (name, _) in entries_with_prefix(Path::new(netns::NETNS_ETC_DIR), &ns_prefix) {
            if !wanted_etc.contains(name.as_str()) {
                let _ = netns::remove_etc(&name);
                report.push(format!("removed stale /etc/netns/{name}"));
            }
        }
        Ok(report)
    }
}

/// (name, path) of the entries of `dir` whose name starts with `prefix`.
pub(super) fn entries_with_prefix(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| (e.file_name().to_string_lossy().to_string(), e.path()))
                .filter(|(name, _)| name.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}
