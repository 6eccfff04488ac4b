//! Published ports of a running sandbox: `natctl port add` publishes more ports without
//! recreating the sandbox, `natctl port rm` withdraws some. Same rules and wording as `run
//! -p` (the allocator in `ports`); nothing in the kernel changes before the commit, so
//! there is nothing to roll back: the dataplane follows in the sync after it.
use std::net::IpAddr;

use tracing::info;

use super::{
    Daemon,
    error::{Result, conflict, invalid},
    ports::{self, PortRequest},
    sandboxes::{check_publish_families, parse_publish},
    sync,
};
use crate::{
    api::SandboxView,
    model::{NetworkMode, PortMapping, display_host_ip},
    portspec::{PortRange, Proto, PublishSpec, parse_range},
    state::Change,
};

/// `[IP:]PORT[-PORT][/PROTO]`: which published host ports to withdraw.
struct Withdrawal {
    /// None: on every address; `0.0.0.0` and `[::]` pick one family's unspecified address.
    host_ip: Option<IpAddr>,
    ports: PortRange,
    proto: Proto,
}

impl Withdrawal {
    fn parse(text: &str) -> Result<Self> {
        let bad = || {
            invalid(format!(
                "invalid published port {text:?}: expected [IP:]PORT[-PORT][/PROTO]"
            ))
        };
        let (rest, proto) = match text.rsplit_once('/') {
            Some((rest, proto)) => (rest, proto.parse::<Proto>().map_err(|_| bad())?),
            None => (text, Proto::Tcp),
        };
        let (host_ip, ports) = match rest.rsplit_once(':') {
            Some((ip, ports)) => {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                (Some(ip.parse::<IpAddr>().map_err(|_| bad())?), ports)
            }
            None => (None, rest),
        };
        let ports = parse_range(ports).ok_or_else(bad)?;
        Ok(Self {
            host_ip,
            ports,
            proto,
        })
    }

    fn matches(&self, m: &PortMapping) -> bool {
        m.proto == self.proto
            && (self.ports.first..=self.ports.last).contains(&m.host_port)
            && self.host_ip.is_none_or(|ip| same_address(m.host_ip, Some(ip)))
    }
}

/// Host addresses as mappings store them: 0.0.0.0 is None.
fn same_address(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    let normal = |ip: Option<IpAddr>| ip.filter(|ip| *ip != IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    normal(a) == normal(b)
}

impl Daemon {
    /// A port is published on an address that is the host's, or on every address: one that
    /// is not (a typo, another host's, an address that left) is refused as Docker refuses
    /// to bind it. Loopback is always the host's.
    pub(super) async fn check_host_addresses(&mut self, specs: &[PublishSpec]) -> Result<()> {
        let bound: Vec<(&PublishSpec, IpAddr)> = specs
            .iter()
            .filter_map(|s| Some((s, s.host_ip?)))
            .filter(|(_, ip)| !ip.is_unspecified() && !ip.is_loopback())
            .collect();
        if bound.is_empty() {
            return Ok(());
        }
        let local: Vec<IpAddr> = self
            .nl
            .all_addresses()
            .await?
            .into_iter()
            .map(|(_, a)| a.ip())
            .collect();
        if let Some((spec, ip)) = bound.iter().find(|(_, ip)| !local.contains(ip)) {
            return Err(invalid(format!(
                "failed to bind host port for {spec}: cannot assign requested address \
                 ({ip} is not an address of this host)"
            )));
        }
        // An address added a moment ago whose event natd has not followed yet: the sync
        // after this request reads the host's addresses again, or the port would wait
        // for the next tick (the programs take only the host's known addresses as its own).
        if bound
            .iter()
            .any(|(_, ip)| self.kernel_view.as_ref().is_some_and(|view| !view.has_address(*ip)))
        {
            self.forget_view();
        }
        Ok(())
    }

    /// Publishes more ports of a running bridge-mode sandbox.
    pub async fn port_add(&mut self, name: &str, publish: &[String]) -> Result<SandboxView> {
        let mut sandbox = self.sandbox(name)?.clone();
        if sandbox.mode != NetworkMode::Bridge || sandbox.endpoints.is_empty() {
            return Err(invalid(format!(
                "cannot publish ports of {name}: port publishing needs a sandbox on a bridge network"
            )));
        }
        let network = self.network(&sandbox.endpoints[0].network)?.clone();
        if !super::drivers::of(network.driver).translated() {
            return Err(invalid(format!(
                "port publishing is not supported on hostbridge network {}: its sandboxes have addresses on the LAN \
                 and are reachable directly",
                network.name
            )));
        }
        if publish.is_empty() {
            return Err(invalid("no port to publish given".to_string()));
        }
        let specs = parse_publish(publish)?;
        check_publish_families(&specs, &network, self.dataplane.kind())?;
        self.check_host_addresses(&specs).await?;
        let request = PortRequest {
            publish: &specs,
            publish_all: false,
            expose: &[],
            // The first endpoint's network is where published ports lead.
            ipv6: network.has_ipv6() && sandbox.endpoints[0].ipv6.is_some(),
        };
        let host = ports::host_sockets(&request);
        let mut added = ports::allocate(&self.port_book, &host, self.port_range, &mut self.port_cursor, &request)
            .map_err(|e| conflict(e.to_string()))?;
        let numbered = self.number_mappings(&mut added)?;
        let summary: Vec<String> = added.iter().map(describe).collect();
        let before = self.port_rules_of(&sandbox);
        sandbox.publish.extend(specs);
        sandbox.ports.extend(added);
        let after = self.port_rules_of(&sandbox);
        self.check_mapping_room(after.len().saturating_sub(before.len()))?;
        self.commit(numbered.into_iter().chain([Change::PutSandbox(sandbox.clone())]).collect())?;
        let (new, gone) = sync::rule_diff(&before, &after);
        self.sync_ports(name, &new, &gone).await?;
        info!(sandbox = name, ports = %summary.join(", "), "ports published");
        Ok(self.view(&sandbox))
    }

    /// Withdraws published ports of a sandbox (flows through them end with them).
    pub async fn port_rm(&mut self, name: &str, specs: &[String]) -> Result<SandboxView> {
        let mut sandbox = self.sandbox(name)?.clone();
        let withdrawals = specs
            .iter()
            .map(|s| Withdrawal::parse(s))
            .collect::<Result<Vec<_>>>()?;
        if withdrawals.is_empty() {
            return Err(invalid("no published port to withdraw given".to_string()));
        }
        for (w, text) in withdrawals.iter().zip(specs) {
            if !sandbox.ports.iter().any(|m| w.matches(m)) {
                return Err(invalid(format!("{name} does not publish {text}")));
            }
        }
        let (count, rules_before) = (sandbox.ports.len(), self.port_rules_of(&sandbox));
        sandbox
            .ports
            .retain(|m| !withdrawals.iter().any(|w| w.matches(m)));
        let removed = count - sandbox.ports.len();
        // A `-p` spec whose host ports are all withdrawn (on every address it was published
        // on: 0.0.0.0 and [::] for one without address) is withdrawn with them. Each
        // remaining mapping counts for the first spec it fits, so a wide range (`1-65535:80`)
        // does not live on through another spec's port.
        let fits = |spec: &PublishSpec, m: &PortMapping| {
            spec.host_ports.is_some_and(|range| {
                m.proto == spec.proto
                    && (range.first..=range.last).contains(&m.host_port)
                    && (spec.container_ports.first..=spec.container_ports.last).contains(&m.container_port)
                    && (spec.host_ip.is_none() || same_address(m.host_ip, spec.host_ip))
            })
        };
        let mut kept = vec![false; sandbox.publish.len()];
        for m in &sandbox.ports {
            if let Some(i) = sandbox.publish.iter().position(|spec| fits(spec, m)) {
                kept[i] = true;
            }
        }
        let mut kept = kept.into_iter();
        sandbox
            .publish
            .retain(|spec| kept.next().unwrap_or(true) || spec.host_ports.is_none());
        self.commit(vec![Change::PutSandbox(sandbox.clone())])?;
        let (new, gone) = sync::rule_diff(&rules_before, &self.port_rules_of(&sandbox));
        self.sync_ports(name, &new, &gone).await?;
        info!(sandbox = name, removed, "published ports withdrawn");
        Ok(self.view(&sandbox))
    }
}

fn describe(m: &PortMapping) -> String {
    format!(
        "{}:{}->{}/{}",
        display_host_ip(m.host_ip),
        m.host_port,
        m.container_port,
        m.proto
    )
}
