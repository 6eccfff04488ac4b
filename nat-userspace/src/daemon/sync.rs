//! From natd's records to the dataplane: the desired kernel state (`Desired`) is computed
//! from the snapshot and two netlink dumps, and the dataplane makes the kernel match it.
//! Runs after every mutating request, on the periodic tick (which also expires idle flows
//! and follows address changes of the host), and at reconcile.
use std::{collections::HashMap, net::IpAddr};

use ipnetwork::IpNetwork;
use tracing::warn;

use super::{
    Daemon, drivers,
    error::{Result, internal},
};
use crate::{
    config::DataplaneKind,
    dataplane::{Desired, Iface, IfaceRole, NetworkRule, PortRule, SyncReport},
    model::Sandbox,
    sys::sysctl,
};

impl Daemon {
    async fn desired_dataplane(&self) -> Result<Desired> {
        let mut desired = Desired {
            snat_ports: self.snat_ports,
            ..Default::default()
        };
        // Two dumps, whatever the number of sandboxes: no netlink round trip per veth.
        let addresses = self.nl.all_addresses().await?;
        let links: HashMap<String, u32> = self
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
        for network in self.state.networks.values() {
            if drivers::of(network.driver).translated() {
                desired.networks.push(NetworkRule {
                    id: network.id,
                    bridge: network.bridge.clone(),
                    subnet: network.subnet,
                    gateway: network.gateway,
                    icc: network.icc,
                    internal: network.internal,
                    masquerade: network.masquerades(),
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
                if let Some(&index) = links.get(&endpoint.host_ifname) {
                    desired.ifaces.push(Iface {
                        index,
                        name: endpoint.host_ifname.clone(),
                        role: IfaceRole::SandboxVeth {
                            network_id: network.id,
                        },
                    });
                }
            }
            desired.ports.extend(port_rules(sandbox));
        }
        Ok(desired)
    }

    pub(super) async fn sync_dataplane(&mut self) -> Result<SyncReport> {
        let desired = self.desired_dataplane().await?;
        // With netfilter doing the NAT, a sandbox reaching its own published port is
        // bridged back out of the port it came in on (Docker does the same without its
        // userland proxy); the eBPF dataplane routes hairpin traffic and needs no such mode.
        let hairpin = self.dataplane.kind() == DataplaneKind::Nftables;
        for iface in &desired.ifaces {
            if matches!(iface.role, IfaceRole::SandboxVeth { .. })
                && self.hairpin_set.insert((iface.index, hairpin))
                && let Err(e) = self.nl.set_hairpin(iface.index, hairpin).await
            {
                warn!(iface = %iface.name, error = %e, "cannot set hairpin mode");
            }
        }
        // Published host ports go into ip_local_reserved_ports of natd's namespace, so the
        // host never picks one as the source port of its own connections (whose replies
        // would otherwise be taken for connections to the sandbox).
        let ports: Vec<u16> = desired.ports.iter().map(|r| r.host_port).collect();
        if let Err(e) = sysctl::reserve_local_ports(&ports) {
            warn!(error = %e, "cannot reserve published ports in ip_local_reserved_ports");
        }
        Ok(self.dataplane.sync(&desired)?)
    }

    /// After a committed change: the change is stored, so a dataplane failure is reported
    /// (and retried on every tick), not undone.
    pub(super) async fn sync_after_change(&mut self) -> Result<()> {
        self.sync_dataplane().await.map(|_| ()).map_err(|e| {
            internal(
                "the change is stored, but the dataplane could not be brought in line \
                 (natd retries on every housekeeping tick)",
            )
            .because(e)
        })
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
}

/// The kernel-side form of a sandbox's published ports (IPv4 host addresses; ports bound
/// to an IPv6 address wait for the IPv6 datapath).
pub(super) fn port_rules(sandbox: &Sandbox) -> Vec<PortRule> {
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
