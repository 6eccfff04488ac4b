//! A spoofed-SYN flood against a published port while a legitimate client keeps opening
//! connections to it. Sources are random addresses of 198.18.0.0/15 (the benchmarking
//! range): the flood, and the sandbox's answers to it, stay inside the bed's namespaces
//! (the external namespace does not forward them anywhere). Only natd's eBPF dataplane is
//! flooded: the kernel's conntrack table (iptables, nftables) is shared by every
//! namespace of the machine, and filling it would disturb the machine itself.
use anyhow::{Context as _, Result};
use natlab::HOST_UPLINK_IP;

use crate::{Plan, Results, Sample, beds};

fn counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats["counters"][name].as_u64().unwrap_or(0)
}

pub fn run(plan: &Plan, results: &mut Results) -> Result<()> {
    let bed = beds::bed("ebpf", 1).context("ebpf topology for the flood")?;
    let ext = bed.lab.ext_path();
    let target = format!("{HOST_UPLINK_IP}:8080");
    let secs = plan.flood_secs.to_string();
    let crr = |secs: &str| {
        std::process::Command::new("nsenter")
            .args([
                &format!("--net={ext}"),
                &natlab::loadgen_bin(),
                "crr",
                &target,
                secs,
            ])
            .output()
    };
    // A first run warms up what a fresh topology still resolves (neighbours, caches).
    crr("1")?;
    let clean = crr(&secs)?;
    let clean: serde_json::Value = serde_json::from_slice(&clean.stdout).context("clean CRR report")?;
    let before = bed.lab.json(&["stats"]);
    let flood = std::process::Command::new("nsenter")
        .args([
            &format!("--net={ext}"),
            &natlab::loadgen_bin(),
            "flood",
            HOST_UPLINK_IP,
            "8080",
            &secs,
            &plan.flood_pps.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("start the flood")?;
    let legit = crr(&secs)?;
    let flood = flood.wait_with_output()?;
    let after = bed.lab.json(&["stats"]);
    let legit: serde_json::Value = serde_json::from_slice(&legit.stdout).context("legitimate CRR report")?;
    let sent: serde_json::Value = serde_json::from_slice(&flood.stdout).context("flood report")?;
    let (ops, errors) = (
        legit["ops"].as_u64().unwrap_or(0),
        legit["errors"].as_u64().unwrap_or(0),
    );
    let success = if ops + errors > 0 {
        ops as f64 / (ops + errors) as f64 * 100.0
    } else {
        0.0
    };
    let pps = sent["sent"].as_f64().unwrap_or(0.0) / plan.flood_secs;
    let s = &mut results.samples;
    s.push(Sample::new("flood", "ebpf", 1, "legit_success_pct", success));
    s.push(Sample::new(
        "flood",
        "ebpf",
        1,
        "legit_crr_per_s",
        legit["per_s"].as_f64().unwrap_or(0.0),
    ));
    s.push(Sample::new(
        "flood",
        "ebpf",
        1,
        "clean_crr_per_s",
        clean["per_s"].as_f64().unwrap_or(0.0),
    ));
    s.push(Sample::new("flood", "ebpf", 1, "flood_pps", pps));
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    results.notes.push(format!(
        "SYN flood: {pps:.0} spoofed SYN/s for {:.0} s ({} sent) against a published port; meanwhile the \
         legitimate client opened {ops} connections with {errors} failures ({success:.2} % success), \
         {:.0} connections/s against {:.0} without the flood. natd counted {} new DNAT flows, {} refused for a \
         full table, {} promoted to established.",
        plan.flood_secs,
        sent["sent"],
        legit["per_s"].as_f64().unwrap_or(0.0),
        clean["per_s"].as_f64().unwrap_or(0.0),
        delta("dnat_new"),
        delta("drop_ct_full"),
        delta("ct_promoted"),
    ));
    Ok(())
}
