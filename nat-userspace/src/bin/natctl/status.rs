//! `info`, `stats`, `ct ls`: what natd and its dataplane see.
use natd::{
    api::{InfoResponse, StatsView, paths},
    client::Client,
    dataplane::Flow,
};

use crate::{
    CliError,
    output::{print_json, print_table},
};

pub async fn stats(client: &Client, json: bool) -> Result<(), CliError> {
    let stats: StatsView = client.get(paths::STATS).await?;
    if json {
        print_json(&stats);
        return Ok(());
    }
    println!("dataplane: {}", stats.dataplane);
    let (drops, others): (Vec<_>, Vec<_>) = stats.counters.iter().partition(|(k, _)| k.starts_with("drop_"));
    print_table(
        &["COUNTER", "VALUE"],
        others
            .iter()
            .map(|(k, v)| vec![k.to_string(), v.to_string()])
            .collect(),
    );
    println!();
    print_table(
        &["DROP REASON", "PACKETS"],
        drops
            .iter()
            .map(|(k, v)| vec![k.trim_start_matches("drop_").to_string(), v.to_string()])
            .collect(),
    );
    println!();
    print_table(
        &["SANDBOX", "MAPPING", "PACKETS", "BYTES"],
        stats
            .mappings
            .iter()
            .map(|m| {
                vec![
                    m.sandbox.clone(),
                    m.mapping.clone(),
                    m.packets.to_string(),
                    m.bytes.to_string(),
                ]
            })
            .collect(),
    );
    println!();
    print_table(
        &["MAP", "ENTRIES", "CAPACITY", "FILL", "MEMORY"],
        stats
            .maps
            .iter()
            .map(|(name, (n, cap))| {
                let fill = if *cap == 0 {
                    0.0
                } else {
                    *n as f64 * 100.0 / f64::from(*cap)
                };
                let memory = stats
                    .map_memory
                    .get(name)
                    .map(|bytes| format!("{:.1} MiB", *bytes as f64 / MIB))
                    .unwrap_or_else(|| "-".into());
                vec![
                    name.clone(),
                    n.to_string(),
                    cap.to_string(),
                    format!("{fill:.1}%"),
                    memory,
                ]
            })
            .collect(),
    );
    if !stats.map_memory.is_empty() {
        let total: u64 = stats.map_memory.values().sum();
        println!(
            "\nkernel memory of natd's {} maps: {:.1} MiB",
            stats.map_memory.len(),
            total as f64 / MIB
        );
    }
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

pub async fn conntrack(client: &Client, json: bool) -> Result<(), CliError> {
    let flows: Vec<Flow> = client.get(paths::CONNTRACK).await?;
    if json {
        print_json(&flows);
        return Ok(());
    }
    let tuple =
        |t: &(std::net::IpAddr, u16, std::net::IpAddr, u16)| format!("{}:{} -> {}:{}", t.0, t.1, t.2, t.3);
    print_table(
        &["PROTO", "KIND", "STATE", "ORIGINAL", "TRANSLATED", "PATH", "IDLE", "EXPIRES", "MAPPING"],
        flows
            .iter()
            .map(|f| {
                vec![
                    f.proto.clone(),
                    f.kind.clone(),
                    f.state.clone(),
                    tuple(&f.original),
                    tuple(&f.translated),
                    if f.fast { "fast" } else { "host" }.to_string(),
                    format!("{}s", f.idle_s),
                    format!("{}s", f.expires_s),
                    f.mapping
                        .as_ref()
                        .map(|m| format!("{} (+{}s after its last flow)", m.external, m.outlives_flows_s))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
    );
    Ok(())
}

pub async fn info(client: &Client, json: bool) -> Result<(), CliError> {
    let info: InfoResponse = client.get(paths::INFO).await?;
    if json {
        print_json(&info);
        return Ok(());
    }
    println!("natd version:   {}", info.version);
    println!("kernel:         {}", info.kernel);
    println!("dataplane:      {}", info.dataplane);
    if !info.fast_path.is_empty() {
        println!("fast path:      {}", info.fast_path);
    }
    println!("networks:       {}", info.networks);
    println!("sandboxes:      {} ({} running)", info.sandboxes, info.running);
    println!("port mappings:  {}", info.port_mappings);
    println!("uplinks:        {}", info.uplinks.join(", "));
    println!("default bridge: {}", info.default_bridge);
    println!("name prefix:    {}", info.name_prefix);
    println!("state dir:      {}", info.state_dir);
    if let Some(cluster) = &info.cluster {
        let state = if cluster.reachable { "reachable" } else { "UNREACHABLE" };
        println!("cluster store:  {} ({state})", cluster.store);
        println!("cluster host:   {} advertising {}", cluster.host_id, cluster.advertise);
        println!("cluster hosts:  {}", cluster.hosts.join(", "));
        println!("overlays:       {}", cluster.overlay_networks);
        if let Some(drops) = &cluster.underlay_drops {
            println!(
                "underlay drops: {} from non-members, {} spoofed by members",
                drops.non_member, drops.spoofed
            );
        }
        if !cluster.rejected_records.is_empty() {
            println!("store records not applied:");
            for line in &cluster.rejected_records {
                println!("  {line}");
            }
        }
    }
    if let Some(links) = info.dataplane_detail.get("links").and_then(|l| l.as_array()) {
        println!(
            "attached:       {}",
            links
                .iter()
                .filter_map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(counters) = info.dataplane_detail.get("counters").and_then(|c| c.as_object()) {
        let text: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("counters:       {}", text.join(" "));
    }
    if !info.last_reconcile.is_empty() {
        println!("last reconcile:");
        for line in &info.last_reconcile {
            println!("  {line}");
        }
    }
    Ok(())
}
