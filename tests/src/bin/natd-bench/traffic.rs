//! The traffic runs: CRR and RR with the load generator and with wrk (`crate::wrk`),
//! throughput with iperf3, through
//! a published port (client outside, server in the sandbox) and out of the sandbox
//! (masquerade; routed without NAT in the baseline modes). A run counts only if the load
//! generator saw no error and natd counted no drop; otherwise it is recorded as invalid.
use anyhow::{Context as _, Result};
use natlab::{EXT_IP, sh, wait_listening};

use crate::{
    Invalid, Plan, Results, Sample,
    beds::{self, Bed},
    insitu,
};

/// One load generator run, pinned to CPU 1: its JSON report.
pub(crate) fn loadgen(ns: &str, kind: &str, target: &str, secs: f64) -> serde_json::Value {
    let out = sh(
        "nsenter",
        &[
            &format!("--net={ns}"),
            "taskset",
            "-c",
            "1",
            &natlab::loadgen_bin(),
            kind,
            target,
            &secs.to_string(),
        ],
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Gbit/s received, or why the run failed.
pub(crate) fn iperf(ns: &str, host: &str, port: u16, streams: u32, secs: f64) -> Result<f64, String> {
    let (port, streams, secs) = (port.to_string(), streams.to_string(), secs.max(1.0).to_string());
    let out = sh(
        "nsenter",
        &[
            &format!("--net={ns}"),
            "taskset",
            "-c",
            "1",
            "iperf3",
            "-c",
            host,
            "-p",
            &port,
            "-P",
            &streams,
            "-t",
            &secs,
            "-J",
        ],
    );
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("iperf3 output: {e}"))?;
    if let Some(error) = json["error"].as_str() {
        return Err(format!("iperf3: {error}"));
    }
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| "iperf3 reported no throughput".into())
}

/// Sum of natd's drop counters (0 where natd has no dataplane).
pub(crate) fn natd_drops(lab: &natlab::Lab) -> u64 {
    let stats = lab.json(&["stats"]);
    stats["counters"]
        .as_object()
        .map(|c| {
            c.iter()
                .filter(|(name, _)| name.starts_with("drop_"))
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0)
}

pub(crate) struct Run<'a> {
    pub bed: &'a Bed,
    pub mappings: u32,
    pub rep: usize,
    pub results: &'a mut Results,
}

impl Run<'_> {
    /// One CRR or RR run, checked, with the programs' in-situ cost for the modes that
    /// attach programs.
    pub fn loadgen(
        &mut self,
        scenario: &'static str,
        ns: &str,
        kind: &str,
        target: &str,
        secs: f64,
    ) -> Result<()> {
        let bed = self.bed;
        let programs = matches!(bed.mode, "ebpf" | "redirect");
        let stats = if programs {
            Some(insitu::StatsOn::new()?)
        } else {
            None
        };
        let before = if programs {
            insitu::snapshot(&bed.lab, &bed.sandbox_veth)?
        } else {
            Vec::new()
        };
        let drops = natd_drops(&bed.lab);
        let cpu_before = beds::natd_cpu_s(&bed.lab);
        let v = loadgen(ns, kind, target, secs);
        let cpu_after = beds::natd_cpu_s(&bed.lab);
        let after = if programs {
            insitu::snapshot(&bed.lab, &bed.sandbox_veth)?
        } else {
            Vec::new()
        };
        drop(stats);
        let dropped = natd_drops(&bed.lab) - drops;
        let errors = v["errors"].as_u64().unwrap_or(u64::MAX);
        let ops = v["ops"].as_u64().unwrap_or(0);
        let what = format!(
            "{scenario} {kind} {} N={} rep {}",
            bed.mode,
            self.mappings,
            self.rep + 1
        );
        if errors > 0 || dropped > 0 || ops == 0 {
            let why = if v.is_null() {
                "no report from the load generator".into()
            } else {
                format!("{errors} client errors, {dropped} packets dropped by natd, {ops} operations")
            };
            self.results.invalid.push(Invalid { what, why });
            return Ok(());
        }
        let (rate, n) = (
            if kind == "crr" { "crr_per_s" } else { "rr_per_s" },
            self.mappings,
        );
        let s = &mut self.results.samples;
        let rep = self.rep;
        s.push(Sample::new(scenario, bed.mode, n, rate, v["per_s"].as_f64().unwrap_or(0.0)).rep(rep));
        if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
            // natd's own work during the run (housekeeping, its API), per cent of a CPU.
            s.push(Sample::new(scenario, bed.mode, n, "natd_cpu_pct", (b - a) / secs * 100.0).detail(kind).rep(rep));
        }
        if kind == "rr" {
            s.push(Sample::new(scenario, bed.mode, n, "p50_us", v["p50_us"].as_f64().unwrap_or(0.0)).rep(rep));
            s.push(Sample::new(scenario, bed.mode, n, "p99_us", v["p99_us"].as_f64().unwrap_or(0.0)).rep(rep));
        }
        for (point, ns_per_run, _) in insitu::cost(&before, &after) {
            s.push(
                Sample::new("program", bed.mode, n, "ns_per_packet_in_situ", ns_per_run)
                    .detail(insitu::path_name(scenario, rate, &point, bed.mode))
                    .rep(rep),
            );
        }
        Ok(())
    }

    /// One wrk run (`crate::wrk`), checked as the load generator's are; its samples carry
    /// the detail `wrk`.
    fn wrk(&mut self, scenario: &'static str, ns: &str, kind: &str, target: &str, secs: f64) {
        let bed = self.bed;
        let drops = natd_drops(&bed.lab);
        let result = crate::wrk::run(ns, kind, target, secs);
        let dropped = natd_drops(&bed.lab) - drops;
        let what = format!("{scenario} wrk {kind} {} N={} rep {}", bed.mode, self.mappings, self.rep + 1);
        let report = match result {
            Ok(r) if r.errors == 0 && dropped == 0 && r.per_s > 0.0 => r,
            Ok(r) => {
                let why = format!("{} wrk errors, {dropped} packets dropped by natd, {:.0}/s", r.errors, r.per_s);
                self.results.invalid.push(Invalid { what, why });
                return;
            }
            Err(why) => {
                self.results.invalid.push(Invalid { what, why });
                return;
            }
        };
        let (n, rep, detail) = (self.mappings, self.rep, crate::wrk::DETAIL);
        let rate = if kind == "crr" { "crr_per_s" } else { "rr_per_s" };
        let s = &mut self.results.samples;
        s.push(Sample::new(scenario, bed.mode, n, rate, report.per_s).detail(detail).rep(rep));
        if kind == "rr" {
            s.push(Sample::new(scenario, bed.mode, n, "p50_us", report.p50_us).detail(detail).rep(rep));
            s.push(Sample::new(scenario, bed.mode, n, "p99_us", report.p99_us).detail(detail).rep(rep));
        }
    }

    fn iperf(&mut self, scenario: &'static str, ns: &str, host: &str, port: u16, streams: u32, secs: f64) {
        let bed = self.bed;
        let drops = natd_drops(&bed.lab);
        let result = iperf(ns, host, port, streams, secs);
        let dropped = natd_drops(&bed.lab) - drops;
        let what = format!("{scenario} iperf3 x{streams} {} rep {}", bed.mode, self.rep + 1);
        match result {
            Ok(g) if dropped == 0 => self.results.samples.push(
                Sample::new(scenario, bed.mode, self.mappings, "gbit_s", g)
                    .detail(format!("{streams} stream(s)"))
                    .rep(self.rep),
            ),
            Ok(_) => self.results.invalid.push(Invalid {
                what,
                why: format!("{dropped} packets dropped by natd"),
            }),
            Err(why) => self.results.invalid.push(Invalid { what, why }),
        }
    }
}

/// Seconds of the discarded warm-up run of each bed.
pub(crate) const WARM_UP_SECS: f64 = 0.5;

/// `items` in repetition `rep`'s order: a shuffle seeded by the repetition (reproducible),
/// so no mode keeps the same predecessor or place from one repetition to the next.
pub(crate) fn rotated<T>(items: &[T], rep: usize) -> impl Iterator<Item = &T> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    fastrand::Rng::with_seed(0x6265_6473 ^ rep as u64).shuffle(&mut order);
    order.into_iter().map(move |i| &items[i])
}

/// Every mode at every N of `plan.scale`: all the beds built first and alive for the
/// whole run, then `plan.reps` repetitions, each visiting every bed once in its own order
/// (N and modes mixed), so drift of the machine over the run spreads over every N instead
/// of being read as an effect of N.
pub fn run(plan: &Plan, results: &mut Results) -> Result<()> {
    let mut beds = Vec::new();
    for &mappings in &plan.scale {
        for mode in crate::MODES {
            // With no other rule in the chain, a random place is the last place.
            if mode == "iptables-random" && mappings <= beds::MEASURED.len() as u32 {
                continue;
            }
            eprintln!("  building {mode} with {mappings} mappings");
            let bed = beds::bed(mode, mappings)
                .with_context(|| format!("{mode} topology with {mappings} mappings"))?;
            if let Some((position, fillers)) = bed.rule_position {
                results.notes.push(format!(
                    "{mode} N={mappings}: the measured mappings' rules after {position} of the {fillers} other \
                     mappings' rules (`iptables` has them last)"
                ));
            }
            beds.push(bed);
        }
    }
    // The masquerade servers live in each bed's external namespace (measured at N=1).
    let mut servers = Vec::new();
    for b in beds.iter().filter(|b| b.mappings == 1) {
        servers.push(b.lab.spawn_in(
            &b.lab.ext_ns,
            &["taskset", "-c", "1", &natlab::loadgen_bin(), "serve", "9000"],
        ));
        servers.push(b.lab.spawn_in(
            &b.lab.ext_ns,
            &["taskset", "-c", "1", "iperf3", "-s", "-p", "5202"],
        ));
        let nginx = crate::wrk::nginx_command(&b.lab.dir.join("ext"), crate::wrk::EXT_PORT)?;
        servers.push(b.lab.spawn_in(&b.lab.ext_ns, &nginx.iter().map(String::as_str).collect::<Vec<_>>()));
        for port in [9000, 5202, crate::wrk::EXT_PORT] {
            if !wait_listening(&b.lab.ext_path(), "tcp", port) {
                anyhow::bail!("the external server on port {port} did not start in {}", b.mode);
            }
        }
    }
    // One discarded run per bed first: the first connections of a bed pay for neighbour
    // and route cache state the others then find warm.
    for bed in &beds {
        let published = format!("{}:{}", bed.target.0, bed.target.1);
        let _ = loadgen(&bed.lab.ext_path(), "crr", &published, WARM_UP_SECS);
        if bed.mappings == 1 {
            let _ = loadgen(&bed.sandbox_ns, "crr", &format!("{EXT_IP}:9000"), WARM_UP_SECS);
        }
    }
    for rep in 0..plan.reps {
        // A new order each repetition (`rotated`): no bed always inherits the same
        // predecessor's TIME_WAIT and cache state, nor the same phase of the machine.
        for bed in rotated(&beds, rep) {
            let mappings = bed.mappings;
            eprintln!("  rep {} {} N={mappings}", rep + 1, bed.mode);
            let mut run = Run {
                bed,
                mappings,
                rep,
                results,
            };
            let ext = bed.lab.ext_path();
            let published = format!("{}:{}", bed.target.0, bed.target.1);
            let mut targets = vec![("publish", ext.clone(), published, bed.wrk_target.clone())];
            if mappings == 1 {
                targets.push((
                    "masquerade",
                    bed.sandbox_ns.clone(),
                    format!("{EXT_IP}:9000"),
                    format!("{EXT_IP}:{}", crate::wrk::EXT_PORT),
                ));
            }
            for (scenario, ns, target, wrk_target) in &targets {
                run.loadgen(scenario, ns, "crr", target, plan.secs)?;
                run.loadgen(scenario, ns, "rr", target, plan.secs)?;
                run.wrk(scenario, ns, "crr", wrk_target, plan.secs);
                run.wrk(scenario, ns, "rr", wrk_target, plan.secs);
            }
            if mappings == 1 {
                for &streams in &plan.streams {
                    run.iperf("publish", &ext, &bed.target.0, bed.target.2, streams, plan.secs);
                    run.iperf("masquerade", &bed.sandbox_ns, EXT_IP, 5202, streams, plan.secs);
                }
            }
        }
    }
    drop(servers);
    Ok(())
}
