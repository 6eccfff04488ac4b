//! Whether netfilter rules see forwarded traffic in natd's namespace (a user's own
//! firewall): natd's fast path bypasses netfilter, so it stays off while such rules exist.
use super::nft::Nft;

/// Hooks forwarded packets traverse.
const FORWARD_HOOKS: [&str; 3] = ["prerouting", "forward", "postrouting"];

/// A description of the rules found (e.g. `chain ip filter FORWARD (2 rules)`), or None
/// when forwarded packets meet no netfilter rule. natd's own nftables table (the nftables
/// dataplane, table `skip_table`) does not count.
pub fn forwarding_rules(skip_table: &str) -> Option<String> {
    let mut found = Vec::new();
    if let Ok(names) = std::fs::read_to_string("/proc/net/ip_tables_names")
        && !names.trim().is_empty()
    {
        found.push(format!(
            "iptables-legacy tables: {}",
            names.split_whitespace().collect::<Vec<_>>().join(", ")
        ));
    }
    if let Some(json) = Nft::new(true)
        .ok()
        .and_then(|mut nft| nft.run("list ruleset").ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
    {
        found.extend(chains_with_rules(&json, skip_table));
    }
    (!found.is_empty()).then(|| found.join("; "))
}

/// Base chains on a forwarding hook that hold rules or drop by policy.
fn chains_with_rules(json: &serde_json::Value, skip_table: &str) -> Vec<String> {
    let items = json["nftables"].as_array().cloned().unwrap_or_default();
    let rules_in = |family: &str, table: &str, chain: &str| {
        items
            .iter()
            .filter_map(|i| i.get("rule"))
            .filter(|r| r["family"] == family && r["table"] == table && r["chain"] == chain)
            .count()
    };
    items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c["hook"].as_str().is_some_and(|h| FORWARD_HOOKS.contains(&h)))
        .filter(|c| c["table"] != skip_table)
        .filter_map(|c| {
            let (family, table, name) = (c["family"].as_str()?, c["table"].as_str()?, c["name"].as_str()?);
            let rules = rules_in(family, table, name);
            let drops = c["policy"] == "drop";
            (rules > 0 || drops).then(|| format!("chain {family} {table} {name} ({rules} rules)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_forwarding_chains_with_rules_count() {
        let json: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [
                {"metainfo": {}},
                {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "accept"}},
                {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "hook": "input", "policy": "accept"}},
                {"chain": {"family": "inet", "table": "fw", "name": "fwd", "hook": "forward", "policy": "drop"}},
                {"chain": {"family": "ip", "table": "natd", "name": "forward", "hook": "forward", "policy": "accept"}},
                {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD"}},
                {"rule": {"family": "ip", "table": "filter", "chain": "INPUT"}},
                {"rule": {"family": "ip", "table": "natd", "chain": "forward"}}
            ]}"#,
        )
        .unwrap();
        assert_eq!(
            super::chains_with_rules(&json, "natd"),
            ["chain ip filter FORWARD (1 rules)", "chain inet fw fwd (0 rules)"]
        );
    }
}
