//! What the API shows: records with their live status, counters, flows, `info`.
use std::collections::HashSet;

use super::{Daemon, error::Result};
use crate::{
    api::{AttachedSandbox, InfoResponse, MappingStatsView, NetworkView, SandboxView, StatsView},
    dataplane::{Flow, Housekeeping, Stats},
    model::{Network, Sandbox},
    sys::process,
};

impl Daemon {
    pub fn view(&self, sandbox: &Sandbox) -> SandboxView {
        let status = match (sandbox.command.is_empty(), sandbox.pid) {
            (true, _) => "created",
            (false, Some(pid)) if process::is_running(pid, sandbox.pid_start) => "running",
            (false, _) => "exited",
        };
        let (enter_netns, enter_etc) = self.enter_target(sandbox);
        let inactive_ports = match &self.kernel_view {
            Some(view) => sandbox
                .ports
                .iter()
                .filter(|m| {
                    m.host_ip
                        .is_some_and(|ip| !ip.is_unspecified() && !ip.is_loopback() && !view.has_address(ip))
                })
                .map(|m| m.host_display())
                .collect(),
            None => Vec::new(),
        };
        SandboxView {
            sandbox: sandbox.clone(),
            status: status.into(),
            enter_netns,
            enter_etc,
            inactive_ports,
        }
    }

    pub fn inspect(&self, name: &str) -> Result<SandboxView> {
        Ok(self.view(self.sandbox(name)?))
    }

    pub fn list(&self) -> Vec<SandboxView> {
        self.state.sandboxes.values().map(|s| self.view(s)).collect()
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
                host: None,
            })
            .chain(self.remote_sandboxes(network))
            .collect();
        let options = match network.driver {
            crate::model::Driver::Bridge => super::drivers::addressing::bridge_options(network),
            _ => Default::default(),
        };
        NetworkView {
            network: network.clone(),
            sandboxes,
            enable_ipv6: network.has_ipv6(),
            options,
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

    /// What reading the statistics needs, taken under the lock without reading a map: the
    /// read itself (`StatsSource::read`) runs after the lock is released. `exact`: see
    /// `Housekeeping::stats`.
    pub fn stats_source(&self, exact: bool) -> StatsSource {
        let dataplane = self.dataplane.kind().to_string();
        match self.dataplane.housekeeping() {
            Some(keeper) => StatsSource {
                dataplane,
                read: Read::Keeper(keeper, self.dataplane.mapping_slots(), exact),
            },
            None => StatsSource {
                dataplane,
                read: Read::Done(self.dataplane.stats()),
            },
        }
    }

    /// `raw` with each mapping's sandbox and description. With `limit`, only the `limit`
    /// busiest mappings (by packets) are listed one by one, the others summed into one
    /// row whose mapping is `other`.
    pub fn stats_view(&self, dataplane: String, raw: Stats, limit: Option<usize>) -> StatsView {
        let shown: Option<HashSet<u32>> = limit.filter(|l| raw.mappings.len() > *l).map(|limit| {
            let mut busiest: Vec<(u64, u32)> = raw.mappings.iter().map(|(id, (packets, _))| (*packets, *id)).collect();
            busiest.select_nth_unstable_by(limit.saturating_sub(1), |a, b| b.cmp(a));
            busiest.truncate(limit);
            busiest.into_iter().map(|(_, id)| id).collect()
        });
        let mut mappings = Vec::new();
        let mut other = MappingStatsView {
            sandbox: String::new(),
            mapping: "other".into(),
            mapping_id: 0,
            packets: 0,
            bytes: 0,
        };
        for sandbox in self.state.sandboxes.values() {
            // Under the lock: the rules the last sync computed, not computed again.
            let rules = match self.port_rules.cached(&sandbox.name) {
                Some(rules) => std::borrow::Cow::Borrowed(rules),
                None => std::borrow::Cow::Owned(self.port_rules_of(sandbox)),
            };
            for rule in rules.iter() {
                let (packets, bytes) = raw.mappings.get(&rule.mapping_id).copied().unwrap_or_default();
                if shown.as_ref().is_some_and(|s| !s.contains(&rule.mapping_id)) {
                    other.packets += packets;
                    other.bytes += bytes;
                    continue;
                }
                let host = rule
                    .host_ip
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "0.0.0.0".into());
                mappings.push(MappingStatsView {
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
        if shown.is_some() {
            mappings.push(other);
        }
        StatsView {
            dataplane,
            counters: raw.counters,
            mappings,
            maps: raw.maps,
            map_memory: raw.map_memory,
        }
    }

    /// Published ports with series of their own in /metrics.
    pub fn metrics_port_series(&self) -> usize {
        self.config.metrics_port_series
    }

    /// (sandboxes, networks) managed.
    pub fn counts(&self) -> (usize, usize) {
        (self.state.sandboxes.len(), self.state.networks.len())
    }

    pub fn flows(&self) -> Vec<Flow> {
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
            api_version: crate::api::API_VERSION.into(),
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().to_string())
                .unwrap_or_default(),
            dataplane: self.dataplane.kind().to_string(),
            dataplane_detail: self.dataplane.info(),
            fast_path: self.fast_path.describe(),
            networks: self.state.networks.len(),
            sandboxes: self.state.sandboxes.len(),
            running,
            port_mappings: self.state.sandboxes.values().map(|s| s.ports.len()).sum(),
            uplinks: self
                .uplinks
                .iter()
                .map(|u| {
                    self.kernel_view
                        .as_ref()
                        .map_or(u.clone(), |v| v.describe_uplink(u))
                })
                .collect(),
            default_bridge: self.config.bridge.clone(),
            name_prefix: self.config.name_prefix.clone(),
            state_dir: self.config.state_dir.display().to_string(),
            last_reconcile: self.last_reconcile.clone(),
            cluster: self.cluster_info(),
        }
    }
}

enum Read {
    Keeper(std::sync::Arc<dyn Housekeeping>, Vec<(u32, u32)>, bool),
    Done(Stats),
}

/// Statistics to read outside the daemon's lock (see `Daemon::stats_source`).
pub struct StatsSource {
    pub dataplane: String,
    read: Read,
}

impl StatsSource {
    /// Reads the maps (blocking: run it off the async workers).
    pub fn read(self) -> (String, Stats) {
        let stats = match self.read {
            Read::Keeper(keeper, slots, exact) => keeper.stats(&slots, exact),
            Read::Done(stats) => stats,
        };
        (self.dataplane, stats)
    }
}
