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

/// Flooded runs; each has a clean run before it and one more clean run ends the series, so
/// the clean reference brackets the flooded ones in time.
const FLOODED_RUNS: usize = 2;

pub fn run(plan: &Plan, results: &mut Results) -> Result<()> {
    let bed = beds::bed("ebpf", 1).context("ebpf topology for the flood")?;
    let ext = bed.lab.ext_path();
    let target = format!("{HOST_UPLINK_IP}:8080");
    let secs = plan.flood_secs.to_string();
    // The legitimate client on the traffic CPU (as in the traffic runs), the flood on the
    // other one: clean and flooded runs differ by the flood only.
    let crr = |secs: &str| -> Result<serde_json::Value> {
        let out = std::process::Command::new("nsenter")
            .args([&format!("--net={ext}"), "taskset", "-c", "1", &natlab::loadgen_bin(), "crr", &target, secs])
            .output()?;
        serde_json::from_slice(&out.stdout).context("CRR report")
    };
    // A first run warms up what a fresh topology still resolves (neighbours, caches).
    crr("1")?;
    let mut clean = Vec::new();
    let (mut ops, mut errors, mut sent, mut legit_rates) = (0u64, 0u64, 0.0, Vec::new());
    let before = bed.lab.json(&["stats"]);
    for rep in 0..FLOODED_RUNS {
        clean.push(crr(&secs)?);
        let flood = std::process::Command::new("nsenter")
            .args([
                &format!("--net={ext}"),
                "taskset",
                "-c",
                "0",
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
        // The flood ends by itself; wait for it before any error of the client's run.
        let legit = crr(&secs);
        let flood = flood.wait_with_output()?;
        let legit = legit?;
        let report: serde_json::Value = serde_json::from_slice(&flood.stdout).context("flood report")?;
        sent += report["sent"].as_f64().unwrap_or(0.0);
        ops += legit["ops"].as_u64().unwrap_or(0);
        errors += legit["errors"].as_u64().unwrap_or(0);
        let rate = legit["per_s"].as_f64().unwrap_or(0.0);
        legit_rates.push(rate);
        results.samples.push(Sample::new("flood", "ebpf", 1, "legit_crr_per_s", rate).rep(rep));
    }
    clean.push(crr(&secs)?);
    let after = bed.lab.json(&["stats"]);
    let success = if ops + errors > 0 {
        ops as f64 / (ops + errors) as f64 * 100.0
    } else {
        0.0
    };
    let pps = sent / plan.flood_secs / FLOODED_RUNS as f64;
    let clean_rates: Vec<f64> = clean.iter().map(|c| c["per_s"].as_f64().unwrap_or(0.0)).collect();
    let s = &mut results.samples;
    s.push(Sample::new("flood", "ebpf", 1, "legit_success_pct", success));
    for (rep, rate) in clean_rates.iter().enumerate() {
        s.push(Sample::new("flood", "ebpf", 1, "clean_crr_per_s", *rate).rep(rep));
    }
    s.push(Sample::new("flood", "ebpf", 1, "flood_pps", pps));
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    let range = |v: &[f64]| {
        let (lo, hi) = v.iter().fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        format!("{lo:.0}–{hi:.0}")
    };
    results.notes.push(format!(
        "SYN flood: {pps:.0} spoofed SYN/s ({sent:.0} sent in {FLOODED_RUNS} runs of {:.0} s) against a published \
         port; meanwhile the legitimate client opened {ops} connections with {errors} failures ({success:.2} % \
         success), {} connections/s against {} in the {} clean runs around them. Over the series natd counted {} new DNAT flows, {} \
         refused for a full table, {} promoted to established.",
        plan.flood_secs,
        range(&legit_rates),
        range(&clean_rates),
        clean_rates.len(),
        delta("dnat_new"),
        delta("drop_ct_full"),
        delta("ct_promoted"),
    ));
    Ok(())
}
