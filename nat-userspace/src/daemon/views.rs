//! What the API shows: records with their live status, counters, flows, `info`.
use super::{Daemon, error::Result};
use crate::{
    api::{AttachedSandbox, InfoResponse, MappingStatsView, NetworkView, SandboxView, StatsView},
    dataplane::Flow,
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

    pub fn stats(&self) -> StatsView {
        let raw = self.dataplane.stats();
        let mut mappings = Vec::new();
        for sandbox in self.state.sandboxes.values() {
            for rule in self.port_rules_of(sandbox) {
                let (packets, bytes) = raw.mappings.get(&rule.mapping_id).copied().unwrap_or_default();
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
        StatsView {
            dataplane: self.dataplane.kind().to_string(),
            counters: raw.counters,
            mappings,
            maps: raw.maps,
        }
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
