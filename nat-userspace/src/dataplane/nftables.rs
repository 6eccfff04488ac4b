//! The nftables fallback dataplane: the same behaviour through rules in natd's own table
//! (`table ip <name-prefix>`), applied through libnftables as atomic batches. Published
//! ports live in maps with concatenated keys (`proto . port` and `address . proto . port`
//! to `address . port`), so a lookup costs the same with 10 or 65 000 mappings and adding
//! or removing a mapping is one element update. The kernel's conntrack does the tracking.
//!
//! Differences from the eBPF dataplane (see docs/architecture.md): no access to published
//! ports through 127.0.0.1 (that needs route_localnet, which natd never sets), flows are
//! the kernel's (`conntrack -L`, not `natctl ct ls`), and bridged traffic goes through
//! netfilter (bridge-nf-call-iptables) for icc=false and same-bridge hairpin.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    process::Command,
};

use super::{Dataplane, DataplaneError, Desired, Flow, GcReport, PortRule, Stats, SyncReport, nft::Nft};
use crate::config::DaemonConfig;

const DROP_COUNTERS: [&str; 4] = [
    "drop_direct_access",
    "drop_cross_network",
    "drop_icc",
    "drop_internal",
];

fn err(e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Nftables(e.to_string())
}

pub struct NftablesDataplane {
    nft: Nft,
    table: String,
    /// What was last applied: the table's fixed part and the elements of the port maps.
    applied_static: Option<String>,
    applied_ports: BTreeMap<String, PortRule>,
    last: Option<Desired>,
}

/// (map, element) of a published port.
fn port_element(rule: &PortRule) -> (&'static str, String) {
    let target = format!("{} . {}", rule.target, rule.target_port);
    match rule.host_ip {
        None => (
            "ports_any",
            format!("{} . {} : {target}", rule.proto, rule.host_port),
        ),
        Some(ip) => (
            "ports_ip",
            format!("{ip} . {} . {} : {target}", rule.proto, rule.host_port),
        ),
    }
}

fn hairpin_element(rule: &PortRule) -> String {
    format!(
        "{t} . {t} . {} . {}",
        rule.proto,
        rule.target_port,
        t = rule.target
    )
}

/// `add`/`delete element` commands, one per map with all its elements.
fn element_commands(verb: &str, table: &str, rules: &[&PortRule]) -> String {
    let mut by_map: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for rule in rules {
        let (map, element) = port_element(rule);
        by_map.entry(map).or_default().push(element);
        let hairpin = hairpin_element(rule);
        let entry = by_map.entry("hairpin").or_default();
        if !entry.contains(&hairpin) {
            entry.push(hairpin);
        }
    }
    let mut out = String::new();
    for (map, elements) in by_map {
        // A delete must not name an element twice; adds are idempotent anyway.
        let _ = writeln!(
            out,
            "{verb} element ip {table} {map} {{ {} }}",
            elements.join(", ")
        );
    }
    out
}

impl NftablesDataplane {
    pub fn open(config: &DaemonConfig) -> Result<Self, DataplaneError> {
        let mut nft = Nft::new(false).map_err(err)?;
        // Probe: nf_tables must be usable here.
        nft.run("list tables")
            .map_err(|e| err(format!("nf_tables is not usable: {e}")))?;
        // Bridged traffic must traverse netfilter for icc=false and same-bridge hairpin.
        let _ = std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1");
        Ok(Self {
            nft,
            table: config.name_prefix.clone(),
            applied_static: None,
            applied_ports: BTreeMap::new(),
            last: None,
        })
    }

    fn table_exists(&mut self) -> bool {
        self.nft.run(&format!("list table ip {}", self.table)).is_ok()
    }

    /// The table without port elements: sets of interfaces and networks, chains, counters.
    /// Filter and NAT chains go in together, in one transaction.
    fn static_part(&self, desired: &Desired) -> String {
        let mut uplinks = BTreeSet::new();
        for iface in &desired.ifaces {
            if let super::IfaceRole::Uplink { .. } = iface.role {
                uplinks.insert(format!("\"{}\"", iface.name));
            }
        }
        let bridges: BTreeSet<String> = desired
            .networks
            .iter()
            .map(|n| format!("\"{}\"", n.bridge))
            .collect();
        let nets: Vec<String> = desired.networks.iter().map(|n| n.subnet.to_string()).collect();
        let masq: Vec<String> = desired
            .networks
            .iter()
            .filter(|n| n.masquerade)
            .map(|n| n.subnet.to_string())
            .collect();
        let elements = |items: &[String]| {
            if items.is_empty() {
                String::new()
            } else {
                format!("elements = {{ {} }}", items.join(", "))
            }
        };
        let uplinks: Vec<String> = uplinks.into_iter().collect();
        let bridges_list: Vec<String> = bridges.iter().cloned().collect();
        let mut forward = String::new();
        for n in &desired.networks {
            let b = &n.bridge;
            if !n.icc {
                let _ = writeln!(
                    forward,
                    "    iifname \"{b}\" oifname \"{b}\" counter name \"drop_icc\" drop"
                );
            }
            if n.internal {
                let _ = writeln!(
                    forward,
                    "    iifname \"{b}\" oifname != \"{b}\" counter name \"drop_internal\" drop"
                );
                let _ = writeln!(
                    forward,
                    "    oifname \"{b}\" iifname != \"{b}\" counter name \"drop_internal\" drop"
                );
            }
            if !bridges_list.is_empty() {
                let _ = writeln!(
                    forward,
                    "    iifname \"{b}\" oifname @bridges oifname != \"{b}\" counter name \"drop_cross_network\" drop"
                );
            }
        }
        let counters: String = DROP_COUNTERS
            .iter()
            .map(|c| format!("  counter {c} {{ }}\n"))
            .collect();
        format!(
            "table ip {t} {{
{counters}  set uplinks {{ type ifname; {up} }}
  set bridges {{ type ifname; {br} }}
  set nets {{ type ipv4_addr; flags interval; {nets} }}
  set masq_nets {{ type ipv4_addr; flags interval; {masq} }}
  set hairpin {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service; }}
  map ports_any {{ type inet_proto . inet_service : ipv4_addr . inet_service; counter; }}
  map ports_ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; counter; }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ct status dnat accept
    ct state established,related accept
    iifname @uplinks ip daddr @nets counter name \"drop_direct_access\" drop
{forward}  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr 127.0.0.0/8 return
    dnat ip to ip daddr . meta l4proto . th dport map @ports_ip
    fib daddr type local dnat ip to meta l4proto . th dport map @ports_any
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    ip daddr 127.0.0.0/8 return
    dnat ip to ip daddr . meta l4proto . th dport map @ports_ip
    fib daddr type local dnat ip to meta l4proto . th dport map @ports_any
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr . ip daddr . meta l4proto . th dport @hairpin masquerade
    ip saddr @masq_nets oifname @uplinks masquerade
  }}
}}
",
            t = self.table,
            up = elements(&uplinks),
            br = elements(&bridges_list),
            nets = elements(&nets),
            masq = elements(&masq),
        )
    }

    /// Deletes kernel conntrack entries of a removed mapping so its flows (UDP too) end.
    fn forget_flows(rule: &PortRule) {
        let _ = Command::new("conntrack")
            .args([
                "-D",
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

impl Dataplane for NftablesDataplane {
    fn kind(&self) -> &'static str {
        "nftables"
    }

    fn sync(&mut self, desired: &Desired) -> Result<SyncReport, DataplaneError> {
        let mut report = SyncReport::default();
        let fixed = self.static_part(desired);
        let wanted: BTreeMap<String, PortRule> = desired
            .ports
            .iter()
            .map(|r| (format!("{} {}", port_element(r).0, port_element(r).1), *r))
            .collect();
        let exists = self.table_exists();
        if !exists || self.applied_static.as_deref() != Some(fixed.as_str()) {
            // The whole table in one transaction: never a moment with NAT rules but without
            // the filter rules that guard them.
            let mut batch = String::new();
            if exists {
                let _ = writeln!(batch, "delete table ip {}", self.table);
            }
            batch.push_str(&fixed);
            let all: Vec<&PortRule> = wanted.values().collect();
            if !all.is_empty() {
                batch.push_str(&element_commands("add", &self.table, &all));
            }
            self.nft.run(&batch).map_err(err)?;
            report.attached.push(format!(
                "table ip {} ({} published ports)",
                self.table,
                wanted.len()
            ));
        } else {
            let mut batch = String::new();
            let gone: Vec<&PortRule> = self
                .applied_ports
                .iter()
                .filter(|(e, _)| !wanted.contains_key(*e))
                .map(|(_, r)| r)
                .collect();
            let new: Vec<&PortRule> = wanted
                .iter()
                .filter(|(e, _)| !self.applied_ports.contains_key(*e))
                .map(|(_, r)| r)
                .collect();
            if !gone.is_empty() {
                // Hairpin elements are shared by mappings to the same sandbox port: only
                // those no remaining mapping needs go.
                let keep: BTreeSet<String> = wanted.values().map(hairpin_element).collect();
                let mut by_map: BTreeMap<&str, Vec<String>> = BTreeMap::new();
                for rule in &gone {
                    let (map, element) = port_element(rule);
                    by_map.entry(map).or_default().push(element);
                    let hairpin = hairpin_element(rule);
                    let entry = by_map.entry("hairpin").or_default();
                    if !keep.contains(&hairpin) && !entry.contains(&hairpin) {
                        entry.push(hairpin);
                    }
                }
                for (map, elements) in by_map.into_iter().filter(|(_, e)| !e.is_empty()) {
                    let _ = writeln!(
                        batch,
                        "delete element ip {} {map} {{ {} }}",
                        self.table,
                        elements.join(", ")
                    );
                }
            }
            if !new.is_empty() {
                batch.push_str(&element_commands("add", &self.table, &new));
            }
            if !batch.is_empty() {
                self.nft.run(&batch).map_err(err)?;
            }
        }
        for (element, rule) in &self.applied_ports {
            if !wanted.contains_key(element) {
                Self::forget_flows(rule);
                report.flows_invalidated += 1;
            }
        }
        self.applied_static = Some(fixed);
        self.applied_ports = wanted;
        self.last = Some(desired.clone());
        Ok(report)
    }

    fn heal(&mut self) -> Result<bool, DataplaneError> {
        if self.last.is_none() || self.table_exists() {
            return Ok(false);
        }
        let desired = self.last.clone().unwrap_or_default();
        self.applied_static = None;
        self.sync(&desired)?;
        Ok(true)
    }

    fn gc(&mut self) -> Result<GcReport, DataplaneError> {
        Ok(GcReport::default())
    }

    fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "table": format!("ip {}", self.table),
            "published_ports": self.applied_ports.len(),
            "conntrack": "kernel (conntrack -L)",
        })
    }

    fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        let Ok(mut nft) = Nft::new(true) else { return stats };
        let Ok(text) = nft.run(&format!("list table ip {}", self.table)) else {
            return stats;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
            return stats;
        };
        let by_element: BTreeMap<(String, u64), u32> = self
            .applied_ports
            .values()
            .map(|r| ((r.proto.to_string(), u64::from(r.host_port)), r.mapping_id))
            .collect();
        for item in json["nftables"].as_array().into_iter().flatten() {
            if let Some(counter) = item.get("counter")
                && let Some(name) = counter["name"].as_str()
            {
                stats
                    .counters
                    .insert(name.to_string(), counter["packets"].as_u64().unwrap_or(0));
            }
            if let Some(map) = item.get("map") {
                let name = map["name"].as_str().unwrap_or_default().to_string();
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
                    if let Some(id) = by_element.get(&(proto, port)) {
                        let packets = key["counter"]["packets"].as_u64().unwrap_or(0);
                        let bytes = key["counter"]["bytes"].as_u64().unwrap_or(0);
                        stats.mappings.insert(*id, (packets, bytes));
                    }
                }
            }
        }
        stats
    }

    fn flows(&self) -> Vec<Flow> {
        Vec::new()
    }

    fn cleanup(&mut self) -> Vec<String> {
        delete_table(&mut self.nft, &self.table)
    }
}

/// Removes natd's table if it is there (used on cleanup and when another dataplane takes
/// over).
pub fn delete_table(nft: &mut Nft, table: &str) -> Vec<String> {
    if nft.run(&format!("list table ip {table}")).is_err() {
        return Vec::new();
    }
    match nft.run(&format!("delete table ip {table}")) {
        Ok(_) => Vec::new(),
        Err(e) => vec![e.to_string()],
    }
}

/// `natd --cleanup` and dataplane switches: remove the table without a running dataplane.
pub fn remove_leftovers(config: &DaemonConfig) -> Vec<String> {
    match Nft::new(false) {
        Ok(mut nft) => delete_table(&mut nft, &config.name_prefix),
        Err(e) => vec![e.to_string()],
    }
}
