//! `network create` and `network rm`: the checks every driver shares (name, reserved
//! names, driver), then the driver's own plan and setup under a rollback stack.
use tracing::{info, warn};

use super::{
    Daemon,
    drivers::{self, PlanContext},
    error::{Result, conflict, invalid},
    rollback::Rollback,
    sandboxes::validate_name,
};
use crate::{
    api::{NetworkCreate, NetworkView},
    state::Change,
};

/// Names `--network` gives a meaning of its own.
const RESERVED_NETWORK_NAMES: [&str; 3] = ["bridge", "host", "none"];

impl Daemon {
    pub async fn network_create(&mut self, req: NetworkCreate) -> Result<NetworkView> {
        validate_name("network", &req.name)?;
        if self.state.networks.contains_key(&req.name) || RESERVED_NETWORK_NAMES.contains(&req.name.as_str())
        {
            return Err(conflict(format!("network with name {} already exists", req.name)));
        }
        let driver_name = req.driver.as_deref().unwrap_or("bridge");
        let driver = drivers::by_name(driver_name).ok_or_else(|| {
            invalid(format!(
                "plugin \"{driver_name}\" not found (natd supports the bridge, hostbridge and overlay drivers)"
            ))
        })?;
        let (id, id_change) = self.alloc_id();
        let planned = {
            let ctx = PlanContext {
                nl: &self.nl,
                config: &self.config,
                networks: &self.state.networks,
                cluster: self.cluster.as_deref(),
                ula_pool: self.ula_pool,
                dataplane: self.dataplane.kind(),
            };
            let planned = driver.plan(&ctx, &req, id).await?;
            driver.announce(&ctx, &planned).await?;
            planned
        };

        let mut rollback = Rollback::new("network create");
        let result = async {
            let network = driver.setup(&self.nl, planned.clone(), &mut rollback).await?;
            self.commit(vec![id_change, Change::PutNetwork(network.clone())])?;
            Ok(network)
        }
        .await;
        let network = match rollback.settle(&self.nl, result).await {
            Ok(network) => network,
            Err(e) => {
                if let Err(undo) = driver.unannounce(self.cluster.as_deref(), &planned).await {
                    warn!(network = %planned.name, error = %undo, "cannot withdraw the network after a failed create");
                }
                return Err(e);
            }
        };
        if network.has_ipv6() {
            self.enable_ipv6_forwarding();
        }
        self.sync_after_change().await?;
        info!(network = %network.name, subnet = %network.subnet, subnet_v6 = ?network.subnet_v6, driver = network.driver.name(), "network created");
        Ok(self.network_view(&network))
    }

    /// IPv6 forwarding in natd's namespace, needed by every network with IPv6 (sandboxes
    /// reach beyond their bridge through natd's routing). A failure is logged: the network
    /// still works inside itself.
    pub(super) fn enable_ipv6_forwarding(&self) {
        if let Err(e) = crate::sys::sysctl::write("net.ipv6.conf.all.forwarding", "1") {
            warn!(error = %e, "cannot enable IPv6 forwarding");
        }
    }

    pub async fn network_rm(&mut self, name: &str) -> Result<()> {
        let network = self.network(name)?.clone();
        if network.default {
            return Err(conflict(format!(
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
            return Err(conflict(format!(
                "error while removing network: network {name} id {} has active endpoints ({})",
                network.id,
                users.join(", ")
            )));
        }
        drivers::of(network.driver)
            .withdraw(self.cluster.as_deref(), &network)
            .await?;
        for e in drivers::of(network.driver).teardown(&self.nl, &network).await {
            warn!(network = name, error = %e, "network teardown");
        }
        self.commit_and_sync(vec![Change::DeleteNetwork(name.to_string())])
            .await
    }
}

