//! The nftables fallback dataplane: the same behaviour through rules in natd's own tables
//! (`table ip <name-prefix>`, and `table ip6 <name-prefix>` when a network has IPv6), applied through libnftables as atomic batches. Published
//! ports live in maps with concatenated keys (`proto . port` and `address . proto . port`
//! to `address . port`), so a lookup costs the same with 10 or 65 000 mappings and adding
//! or removing a mapping is one element update. The kernel's conntrack does the tracking.
//!
//! The host reaches published ports through 127.0.0.1 as with Docker 28 without its
//! userland proxy: the output chain translates loopback destinations, natd's bridges carry
//! `route_localnet` (set by natd's sync) so the translated packet may leave with source
//! 127.0.0.1, postrouting masquerades it to the bridge's address, and a raw-priority guard
//! drops every packet for 127.0.0.0/8 that does not arrive on `lo` (CVE-2020-8558: neither
//! a neighbour nor a sandbox reaches the host's loopback services through it).
//!
//! Differences from the eBPF dataplane (see docs/architecture.md): flows are the kernel's
//! (`conntrack -L`, not `natctl ct ls`), and bridged traffic goes through netfilter
//! (bridge-nf-call-iptables) for icc=false and same-bridge hairpin.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    process::Command,
    sync::{Arc, Mutex},
};

mod heal;
mod ruleset;

use ruleset::{element_commands, port_element};

use super::{Dataplane, DataplaneError, Desired, Flow, GcReport, PortRule, Stats, SyncReport};
use crate::{
    config::{DaemonConfig, DataplaneKind},
    sys::{nft::Nft, sysctl},
};

fn err(e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Nftables(e.to_string())
}

pub struct NftablesDataplane {
    /// What natd applied, shared with the healer thread: a firewall reload is repaired
    /// without waiting for the daemon's lock (a slow request must not leave the host
    /// unguarded).
    applied: Arc<Mutex<Applied>>,
    table: String,
}

/// natd's tables as last applied, and a libnftables context to apply them with.
struct Applied {
    nft: Nft,
    table: String,
    /// The table's fixed part and the elements of the port maps.
    fixed: Option<String>,
    ports: BTreeMap<String, PortRule>,
    last: Option<Desired>,
    /// Times the tables were found removed from outside and put back.
    heals: u64,
}

impl NftablesDataplane {
    pub fn open(config: &DaemonConfig) -> Result<Self, DataplaneError> {
        let mut nft = Nft::new(false).map_err(err)?;
        // Probe: nf_tables must be usable here.
        nft.run("list tables")
            .map_err(|e| err(format!("nf_tables is not usable: {e}")))?;
        // Bridged traffic must traverse netfilter for icc=false and same-bridge hairpin.
        if let Err(e) = sysctl::write("net.bridge.bridge-nf-call-iptables", "1") {
            tracing::warn!(error = %e, "cannot make bridged traffic traverse netfilter (icc=false needs it)");
        }
        if config.masquerade_ports == crate::model::PortAssignment::Random {
            // nftables' own `random` picks a port per flow: the mapping would depend on the
            // destination (a symmetric NAT). Networks asking for it are refused at create.
            tracing::warn!(
                "--masquerade-ports random applies to the eBPF dataplane only: nftables keeps sandbox ports \
                 (endpoint-independent while free)"
            );
        }
        let applied = Arc::new(Mutex::new(Applied {
            nft,
            table: config.name_prefix.clone(),
            fixed: None,
            ports: BTreeMap::new(),
            last: None,
            heals: 0,
        }));
        heal::spawn(Arc::clone(&applied));
        Ok(Self {
            applied,
            table: config.name_prefix.clone(),
        })
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes kernel conntrack entries of a removed mapping so its flows (UDP too) end.
    fn forget_flows(rule: &PortRule) {
        let family = if rule.target.is_ipv4() { "ipv4" } else { "ipv6" };
        let _ = Command::new("conntrack")
            .args([
                "-D",
                "-f",
                family,
                "-p",
                &rule.proto.to_string(),
                "--orig-port-dst",
                &rule.host_port.to_string(),
            ])
            .args([
                "--reply-src",
                &rule.target.to_string(),
                "--reply-port-src",
                &rule.target_port.to_string(),
            ])
            .output();
    }
}

impl Applied {
    /// Whether natd's `ip` and `ip6` tables exist: one `list tables` (names only), not a
    /// listing of every table with all its map elements (the healer runs it on every
    /// ruleset change and four times a second).
    fn tables_present(&mut self) -> (bool, bool) {
        let listed = self.nft.run("list tables").unwrap_or_default();
        let has = |family: &str| {
            let wanted = format!("table {family} {}", self.table);
            listed.lines().any(|l| l.trim() == wanted)
        };
        (has("ip"), has("ip6"))
    }

    fn sync(&mut self, desired: &Desired) -> Result<SyncReport, DataplaneError> {
        let mut report = SyncReport::default();
        let table6 = ruleset::table6(&self.table, desired);
        let mut fixed = ruleset::table(&self.table, desired);
        fixed.push_str(table6.as_deref().unwrap_or_default());
        // IPv6 mappings only where a network has IPv6 (the table exists).
        let wanted: BTreeMap<String, PortRule> = desired
            .ports
            .iter()
            .filter(|r| r.target.is_ipv4() || table6.is_some())
            .map(|r| {
                let (map, element) = port_element(r);
                (format!("{} {map} {element}", ruleset::family_of(r)), *r)
            })
            .collect();
        let (exists, exists6) = self.tables_present();
        if !exists || exists6 != table6.is_some() || self.fixed.as_deref() != Some(fixed.as_str()) {
            // The whole table in one transaction: never a moment with NAT rules but without
            // the filter rules that guard them.
            let mut batch = String::new();
            if exists {
                let _ = writeln!(batch, "delete table ip {}", self.table);
            }
            if exists6 {
                let _ = writeln!(batch, "delete table ip6 {}", self.table);
            }
            batch.push_str(&fixed);
            let all: Vec<&PortRule> = wanted.values().collect();
            if !all.is_empty() {
                batch.push_str(&element_commands("add", &self.table, &all, desired));
            }
            self.nft.run(&batch).map_err(err)?;
            report.attached.push(format!(
                "table ip {} ({} published ports)",
                self.table,
                wanted.len()
            ));
        } else {
            let batch = ruleset::element_changes(&self.table, &self.ports, &wanted, desired);
            if !batch.is_empty() {
                self.nft.run(&batch).map_err(err)?;
            }
        }
        for (element, rule) in &self.ports {
            if !wanted.contains_key(element) {
                NftablesDataplane::forget_flows(rule);
                report.flows_invalidated += 1;
            }
        }
        self.fixed = Some(fixed);
        self.ports = wanted;
        self.last = Some(desired.clone());
        Ok(report)
    }

    /// Puts natd's tables back if something outside natd removed them (`nft flush
    /// ruleset`, a firewall reload).
    fn heal(&mut self) -> Result<bool, DataplaneError> {
        if self.last.is_none() {
            return Ok(false);
        }
        let want6 = self.fixed.as_deref().is_some_and(|t| t.contains("table ip6 "));
        let (exists, exists6) = self.tables_present();
        if exists && (!want6 || exists6) {
            return Ok(false);
        }
        let Some(desired) = self.last.clone() else {
            return Ok(false);
        };
        self.fixed = None;
        self.sync(&desired)?;
        self.heals += 1;
        Ok(true)
    }
}

impl Dataplane for NftablesDataplane {
    fn kind(&self) -> DataplaneKind {
        DataplaneKind::Nftables
    }

    fn sync(&mut self, desired: &Desired) -> Result<SyncReport, DataplaneError> {
        self.applied().sync(desired)
    }

    fn gc(&mut self) -> Result<GcReport, DataplaneError> {
        Ok(GcReport::default())
    }

    fn info(&self) -> serde_json::Value {
        let applied = self.applied();
        serde_json::json!({
            "table": format!("ip {}", self.table),
            "table6": applied.fixed.as_deref().is_some_and(|t| t.contains("table ip6 ")).then(|| format!("ip6 {}", self.table)),
            "published_ports": applied.ports.len(),
            "conntrack": "kernel (conntrack -L)",
            "reapplied_after_removal": applied.heals,
        })
    }

    fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        // Flows of this dataplane are the kernel's conntrack entries (per namespace).
        let count = sysctl::read("net.netfilter.nf_conntrack_count")
            .ok()
            .and_then(|t| t.parse::<usize>().ok());
        let max = sysctl::read("net.netfilter.nf_conntrack_max")
            .ok()
            .and_then(|t| t.parse::<u32>().ok());
        if let (Some(count), Some(max)) = (count, max) {
            stats
                .maps
                .insert(super::KERNEL_CONNTRACK.to_string(), (count, max));
        }
        let Ok(mut nft) = Nft::new(true) else { return stats };
        let by_element: BTreeMap<(&str, String, u64), u32> = self
            .applied()
            .ports
            .values()
            .map(|r| {
                (
                    (ruleset::family_of(r), r.proto.to_string(), u64::from(r.host_port)),
                    r.mapping_id,
                )
            })
            .collect();
        for family in ["ip", "ip6"] {
            let Ok(text) = nft.run(&format!("list table {family} {}", self.table)) else {
                continue;
            };
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
                add_table_stats(&json, family, &by_element, &mut stats);
            }
        }
        stats
    }

    fn flows(&self) -> Vec<Flow> {
        Vec::new()
    }
}

/// Removes natd's table if it is there (used on cleanup and when another dataplane takes
/// over).
pub fn delete_table(nft: &mut Nft, table: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for family in ["ip", "ip6"] {
        if nft.run(&format!("list table {family} {table}")).is_err() {
            continue;
        }
        if let Err(e) = nft.run(&format!("delete table {family} {table}")) {
            errors.push(e.to_string());
        }
    }
    errors
}

/// `natd --cleanup` and dataplane switches: remove the table without a running dataplane.
pub fn remove_leftovers(config: &DaemonConfig) -> Vec<String> {
    match Nft::new(false) {
        Ok(mut nft) => delete_table(&mut nft, &config.name_prefix),
        Err(e) => vec![e.to_string()],
    }
}

/// One table's counters (summed over both families), map sizes (`ports_any`, `ip6
/// ports_any`) and per-mapping traffic.
fn add_table_stats(
    json: &serde_json::Value,
    family: &str,
    by_element: &BTreeMap<(&str, String, u64), u32>,
    stats: &mut Stats,
) {
    for item in json["nftables"].as_array().into_iter().flatten() {
        if let Some(counter) = item.get("counter")
            && let Some(name) = counter["name"].as_str()
        {
            *stats.counters.entry(name.to_string()).or_default() += counter["packets"].as_u64().unwrap_or(0);
        }
        if let Some(map) = item.get("map") {
            let name = map["name"].as_str().unwrap_or_default();
            let name = if family == "ip" {
                name.to_string()
            } else {
                format!("{family} {name}")
            };
            let elements = map["elem"].as_array().cloned().unwrap_or_default();
            stats.maps.insert(name, (elements.len(), 0));
            for element in elements {
                let key = &element[0]["elem"];
                let concat = key["val"]["concat"].as_array().cloned().unwrap_or_default();
                let n = concat.len();
                if n < 2 {
                    continue;
                }
                let proto = concat[n - 2].as_str().unwrap_or_default().to_string();
                let port = concat[n - 1].as_u64().unwrap_or(0);
                if let Some(id) = by_element.get(&(family, proto, port)) {
                    let packets = key["counter"]["packets"].as_u64().unwrap_or(0);
                    let bytes = key["counter"]["bytes"].as_u64().unwrap_or(0);
                    let entry = stats.mappings.entry(*id).or_default();
                    entry.0 += packets;
                    entry.1 += bytes;
                }
            }
        }
    }
}
