//! natd's nftables table as text for libnftables: the fixed part (sets, chains, counters)
//! from the networks and edges, and the elements of the port maps from the published
//! ports. Kept apart from the dataplane logic so a reader sees the whole ruleset here.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use crate::dataplane::{Desired, PortRule};

pub const DROP_COUNTERS: [&str; 6] = [
    "drop_direct_access",
    "drop_cross_network",
    "drop_icc",
    "drop_internal",
    "drop_loopback_spoof",
    "drop_no_ipv6",
];

/// (map, element) of a published port.
pub fn port_element(rule: &PortRule) -> (&'static str, String) {
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

/// An open container port (routed mode, `allow-direct-routing`: a rule that translates
/// the sandbox's address to itself): its element of the `open` set, which lets it past the
/// direct-access drop from any edge. Open only to trusted edges: none here (see
/// `trusted_elements`).
pub fn open_element(rule: &PortRule) -> Option<String> {
    (rule.is_open_port() && !rule.trusted_only)
        .then(|| format!("{} . {} . {}", rule.target, rule.proto, rule.target_port))
}

/// An open container port for the edges its network trusts: one element of the
/// `trusted_open` set per edge name.
pub fn trusted_elements(rule: &PortRule, trusted: &[String]) -> Vec<String> {
    if !(rule.is_open_port() && rule.trusted_only) {
        return Vec::new();
    }
    trusted
        .iter()
        .map(|name| {
            format!(
                "\"{name}\" . {} . {} . {}",
                rule.target, rule.proto, rule.target_port
            )
        })
        .collect()
}

/// The edges trusted by the network whose subnet holds the rule's target.
pub fn trusted_of<'a>(desired: &'a Desired, rule: &PortRule) -> &'a [String] {
    desired
        .networks
        .iter()
        .find(|n| match rule.target {
            std::net::IpAddr::V4(ip) => n.subnet.contains(ip),
            std::net::IpAddr::V6(ip) => n.v6.is_some_and(|v6| v6.subnet.contains(ip)),
        })
        .map_or(&[], |n| n.trusted.as_slice())
}

pub fn hairpin_element(rule: &PortRule) -> String {
    format!(
        "{t} . {t} . {} . {}",
        rule.proto,
        rule.target_port,
        t = rule.target
    )
}

/// The table family a rule's elements go to: `ip` or `ip6` (the target's family).
pub fn family_of(rule: &PortRule) -> &'static str {
    if rule.target.is_ipv4() { "ip" } else { "ip6" }
}

/// `add`/`delete element` commands, one per table and map with all its elements.
pub fn element_commands(verb: &str, table: &str, rules: &[&PortRule], desired: &Desired) -> String {
    let mut by_map: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for rule in rules {
        by_map
            .entry((family_of(rule), "trusted_open"))
            .or_default()
            .extend(trusted_elements(rule, trusted_of(desired, rule)));
        let family = family_of(rule);
        let (map, element) = port_element(rule);
        by_map.entry((family, map)).or_default().push(element);
        let hairpin = hairpin_element(rule);
        let entry = by_map.entry((family, "hairpin")).or_default();
        if !entry.contains(&hairpin) {
            entry.push(hairpin);
        }
        if let Some(open) = open_element(rule) {
            by_map.entry((family, "open")).or_default().push(open);
        }
    }
    let mut out = String::new();
    for ((family, map), elements) in by_map.into_iter().filter(|(_, e)| !e.is_empty()) {
        // A delete must not name an element twice; adds are idempotent anyway.
        let _ = writeln!(
            out,
            "{verb} element {family} {table} {map} {{ {} }}",
            elements.join(", ")
        );
    }
    out
}

/// The table without port elements: sets of interfaces and networks, chains, counters.
/// Filter and NAT chains go in together, in one transaction.
/// The whole fixed part of natd's table. One template on purpose: the reader sees the
/// ruleset exactly as the kernel gets it, chains in hook order.
pub fn table(name: &str, desired: &Desired) -> String {
    family_table(name, desired, &IPV4)
}

/// The IPv6 table (`table ip6 <name>`), when a network has IPv6: the same rules over the
/// networks' IPv6 subnets. [::1] is never translated here: IPv6 has no route_localnet,
/// so such a packet could not leave the host (the eBPF dataplane's socket hooks do it).
pub fn table6(name: &str, desired: &Desired) -> Option<String> {
    desired
        .networks
        .iter()
        .any(|n| n.v6.is_some())
        .then(|| family_table(name, desired, &IPV6))
}

/// What differs between natd's IPv4 and IPv6 tables.
struct Family {
    table: &'static str,
    l3: &'static str,
    addr: &'static str,
    loopback: &'static str,
    /// Whether the host's own connections to loopback are translated (IPv4 only).
    loopback_nat: bool,
}

const IPV4: Family = Family {
    table: "ip",
    l3: "ip",
    addr: "ipv4_addr",
    loopback: "127.0.0.0/8",
    loopback_nat: true,
};

const IPV6: Family = Family {
    table: "ip6",
    l3: "ip6",
    addr: "ipv6_addr",
    loopback: "::1",
    loopback_nat: false,
};

fn family_table(name: &str, desired: &Desired, f: &Family) -> String {
    let bridges: BTreeSet<String> = desired
        .networks
        .iter()
        .map(|n| format!("\"{}\"", n.bridge))
        .collect();
    let v6 = f.table == "ip6";
    // (subnet, masqueraded, hairpin source external) of each network in this family.
    let subnets: Vec<(String, bool, bool)> = desired
        .networks
        .iter()
        .filter_map(|n| match (v6, n.v6) {
            (false, _) => Some((n.subnet.to_string(), n.masquerade, n.hairpin_external)),
            (true, Some(n6)) => Some((n6.subnet.to_string(), n6.masquerade, n.hairpin_external)),
            (true, None) => None,
        })
        .collect();
    let nets: Vec<String> = subnets.iter().map(|(s, _, _)| s.clone()).collect();
    let masq: Vec<String> = subnets
        .iter()
        .filter(|(_, m, _)| *m)
        .map(|(s, _, _)| s.clone())
        .collect();
    let hairpin_external: Vec<String> = subnets
        .iter()
        .filter(|(_, m, h)| *m && *h)
        .map(|(s, _, _)| s.clone())
        .collect();
    let elements = |items: &[String]| {
        if items.is_empty() {
            String::new()
        } else {
            format!("elements = {{ {} }}", items.join(", "))
        }
    };
    let bridges_list: Vec<String> = bridges.iter().cloned().collect();
    let mut forward = String::new();
    // IPv6 routed from a network that has none (its sandboxes could still send some).
    if v6 {
        for n in desired.networks.iter().filter(|n| n.v6.is_none()) {
            let _ = writeln!(
                forward,
                "    iifname \"{}\" counter name \"drop_no_ipv6\" drop",
                n.bridge
            );
        }
    }
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
    let (l3, addr, lo) = (f.l3, f.addr, f.loopback);
    let (output_loopback, postrouting_loopback) = if f.loopback_nat {
        (
            String::new(),
            format!("{l3} saddr {lo} oifname @bridges masquerade\n"),
        )
    } else {
        (format!("{l3} daddr {lo} return\n"), String::new())
    };
    format!(
        "table {family} {t} {{
{counters}  set bridges {{ type ifname; {br} }}
  set nets {{ type {addr}; flags interval; {nets} }}
  set masq_nets {{ type {addr}; flags interval; {masq} }}
  set hairpin_external_nets {{ type {addr}; flags interval; {hairpin_external} }}
  set hairpin {{ type {addr} . {addr} . inet_proto . inet_service; }}
  set open {{ type {addr} . inet_proto . inet_service; }}
  set trusted_open {{ type ifname . {addr} . inet_proto . inet_service; }}
  map ports_any {{ type inet_proto . inet_service : {addr} . inet_service; counter; }}
  map ports_ip {{ type {addr} . inet_proto . inet_service : {addr} . inet_service; counter; }}
  chain guard {{
type filter hook prerouting priority raw; policy accept;
iifname != \"lo\" {l3} daddr {lo} counter name \"drop_loopback_spoof\" drop
  }}
  chain forward {{
type filter hook forward priority filter; policy accept;
ct status dnat accept
ct state established,related accept
iifname != @bridges {l3} daddr . meta l4proto . th dport @open accept
iifname . {l3} daddr . meta l4proto . th dport @trusted_open accept
iifname != @bridges {l3} daddr @nets counter name \"drop_direct_access\" drop
{forward}  }}
  chain prerouting {{
type nat hook prerouting priority dstnat; policy accept;
{l3} daddr {lo} return
fib daddr type local dnat {l3} to {l3} daddr . meta l4proto . th dport map @ports_ip
fib daddr type local dnat {l3} to meta l4proto . th dport map @ports_any
  }}
  chain output {{
type nat hook output priority -100; policy accept;
{output_loopback}fib daddr type local dnat {l3} to {l3} daddr . meta l4proto . th dport map @ports_ip
fib daddr type local dnat {l3} to meta l4proto . th dport map @ports_any
  }}
  chain postrouting {{
type nat hook postrouting priority srcnat; policy accept;
{l3} saddr @hairpin_external_nets ct status dnat ct original {l3} daddr != @nets oifname @bridges snat {l3} to ct original {l3} daddr
{l3} saddr . {l3} daddr . meta l4proto . th dport @hairpin masquerade
{l3} saddr @masq_nets oifname != @bridges masquerade
{postrouting_loopback}  }}
}}
",
        family = f.table,
        t = name,
        br = elements(&bridges_list),
        nets = elements(&nets),
        masq = elements(&masq),
        hairpin_external = elements(&hairpin_external),
    )
}

/// The element updates that turn the applied port maps into the wanted ones, as one
/// batch (empty when nothing changed).
pub fn element_changes(
    table: &str,
    applied: &BTreeMap<String, PortRule>,
    wanted: &BTreeMap<String, PortRule>,
    desired: &Desired,
) -> String {
    let mut batch = String::new();
    let gone: Vec<&PortRule> = applied
        .iter()
        .filter(|(e, _)| !wanted.contains_key(*e))
        .map(|(_, r)| r)
        .collect();
    let new: Vec<&PortRule> = wanted
        .iter()
        .filter(|(e, _)| !applied.contains_key(*e))
        .map(|(_, r)| r)
        .collect();
    if !gone.is_empty() {
        // Hairpin elements are shared by mappings to the same sandbox port: only
        // those no remaining mapping needs go.
        let keep: BTreeSet<String> = wanted.values().map(hairpin_element).collect();
        let mut by_map: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
        for rule in &gone {
            let family = family_of(rule);
            let (map, element) = port_element(rule);
            by_map.entry((family, map)).or_default().push(element);
            let hairpin = hairpin_element(rule);
            let entry = by_map.entry((family, "hairpin")).or_default();
            if !keep.contains(&hairpin) && !entry.contains(&hairpin) {
                entry.push(hairpin);
            }
            if let Some(open) = open_element(rule) {
                by_map.entry((family, "open")).or_default().push(open);
            }
            by_map
                .entry((family, "trusted_open"))
                .or_default()
                .extend(trusted_elements(rule, trusted_of(desired, rule)));
        }
        for ((family, map), elements) in by_map.into_iter().filter(|(_, e)| !e.is_empty()) {
            let _ = writeln!(
                batch,
                "delete element {family} {} {map} {{ {} }}",
                table,
                elements.join(", ")
            );
        }
    }
    if !new.is_empty() {
        batch.push_str(&element_commands("add", table, &new, desired));
    }
    batch
}
