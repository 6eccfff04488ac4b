//! report.md, results.json and the plots: every series as median [p25–p75] over its runs,
//! ratios against each other mode, every target stated as met or missed, the runs thrown
//! out and why.
use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use anyhow::Result;
use natlab::sh;

use crate::{
    MODES, Plan, Results,
    control::percentile,
    plots::plots,
    quality,
    stats,
};

/// (scenario, mappings, metric, detail, mode).
pub type Key = (String, u32, String, Option<String>, String);
/// (scenario, mappings, metric, detail).
type Row = (String, u32, String, Option<String>);

pub struct Agg {
    pub median: f64,
    pub p25: f64,
    pub p75: f64,
    pub runs: usize,
}


const METHOD: &str = "- method: every mode has its own topology of network namespaces (external client, host with natd, \
sandbox server); client, server and their softirq work pinned to CPU 1; offloads on; the client's port range widened \
and TIME_WAIT reuse on; the traffic run builds every bed (every mode at every N) first and keeps them all alive, each \
bed runs one discarded warm-up, and each repetition visits every bed once in a new (seeded, shuffled) order, N and modes \
mixed (the IPv6 runs shuffle their modes the same way; the overlay runs keep their fixed order); every bed's natd runs on CPU 0, away from the \
traffic, and its CPU time during each run is reported (`natd_cpu_pct`, per cent of a CPU); the load generator's \
server is one epoll loop (no thread per connection). CRR: new TCP connection, 1-byte request/response, close; RR: 1-byte transactions on a \
kept-alive connection (p50/p99 latency from it); the same two measured again by a second, independent load generator, \
Debian's wrk (one connection; `Connection: close` for CRR) against Debian's nginx in the same sandbox (rows with detail \
`wrk`, compared in *Two load generators*); throughput: iperf3. `baseline` routes to the sandbox without NAT or \
netfilter rules; `redirect` routes the same way through natd's redirect-only programs (`bpf_redirect_peer` into the \
sandbox, `bpf_redirect` out of it, no NAT, no tracking); `iptables` applies Docker's rules (nat DOCKER chain from \
PREROUTING/OUTPUT, MASQUERADE, filter DOCKER and isolation chains) with the measured mappings last in the chain, \
`iptables-random` the same rules with them at a random place (from N = 100; the place is in *Notes*). N is the \
number of published ports on the host, the measured sandbox's own three (load generator, iperf3, nginx) among them: \
at N = 1 there are just those three. A run \
counts only if the load generator saw no error and natd counted no drop (see *Invalid runs*).\n\
- program cost, warm: BPF_PROG_TEST_RUN with `repeat` runs through a wrapper that restores the frame and tail-calls \
the program, minus the wrapper tail-calling an empty program; every run's verdict and the counter its path moves are \
checked. `dnat_new` and `snat_new` start each measurement on empty tables (`snat_new` 10,000 runs, each making a \
mapping, counted). The rows `random of F flows` run the established published-port paths on a flow drawn at random \
per run from F flows made and established by the programs beforehand (the table emptied and refilled for each F, the \
F in a new order each repetition; the drawing's cost is subtracted with the wrapper's). In situ: the kernel's run-time statistics (BPF_ENABLE_STATS, on only during the ebpf and redirect runs) of \
the attached programs, run time over run count per attachment point during each CRR/RR run; the RR rows are the \
steady-state paths, `(crr mix)` rows include flow setup. Statistics add two clock reads per program run to those \
modes' traffic runs.\n\
- control: one more port published on a running sandbox through natd's API (`natctl publish`), timed from the request \
until a connection through the new port is answered, with the connection table empty and filled with synthetic \
flows; nftables: one element added to a map of N (libnftables); iptables: one rule appended to Docker's chain of N \
(the iptables command).\n\
- scale: one natd (eBPF, housekeeping at its default 5 s) given sandboxes one `run -p 80` at a time through the API \
(`run_ms`; `rm_ms` for 20 of them), timed for the first 20 and for the last 20 at the full count; then published \
mappings (every TCP port left free, then UDP) and synthetic established flows written into the connection table; with \
those present: one port published at a time, 60 ms apart (`publish_ms`), `inspect` every 10 ms for 15 s, three \
housekeeping ticks (`read_ms`: what any call waits behind), a 10,000-port UDP range in one request, five `/metrics` \
scrapes from the LAN, natd's RSS and its maps' kernel memory, and a restart (SIGTERM, start) until `natctl info` \
answers (polled every 50 ms) with the flows counted before and after.\n";

pub fn aggregate(samples: &[crate::Sample]) -> BTreeMap<Key, Agg> {
    let mut groups: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    for s in samples {
        let key = (
            s.scenario.to_string(),
            s.mappings,
            s.metric.to_string(),
            s.detail.clone(),
            s.mode.clone(),
        );
        groups.entry(key).or_default().push(s.value);
    }
    groups
        .into_iter()
        .map(|(k, mut v)| {
            let runs = v.len();
            v.sort_by(f64::total_cmp);
            let agg = Agg {
                // The same median as the targets' (the mean of the middle two of an even count).
                median: stats::median(&v),
                p25: percentile(&mut v, 0.25),
                p75: percentile(&mut v, 0.75),
                runs,
            };
            (k, agg)
        })
        .collect()
}

fn results_json(
    agg: &BTreeMap<Key, Agg>,
    targets: &[(String, crate::targets::Measured, f64, bool)],
    disturbed: &[quality::Disturbance],
    comparisons: &[crate::agree::Comparison],
) -> Result<String> {
    let rows: Vec<serde_json::Value> = agg
        .iter()
        .map(|((scenario, n, metric, detail, mode), a)| {
            let mut o = serde_json::json!({
                "scenario": scenario, "mode": mode, "mappings": n, "metric": metric,
                "median": a.median, "p25": a.p25, "p75": a.p75, "runs": a.runs,
            });
            if let Some(d) = detail {
                o["detail"] = serde_json::Value::String(d.clone());
            }
            o
        })
        .collect();
    let targets: Vec<serde_json::Value> = targets
        .iter()
        .map(|(name, measured, goal, higher)| {
            let iv = measured.iv;
            serde_json::json!({
                "target": name, "goal": goal, "higher_is_better": higher,
                "median": iv.map(|i| i.median), "lo": iv.map(|i| i.lo), "hi": iv.map(|i| i.hi),
                "values": iv.map_or(0, |i| i.n),
                "verdict": iv.map(|i| stats::verdict(&i, *goal, *higher).name()),
                "interval": iv.is_some_and(|i| i.has_interval()),
                "unreliable": quality::judged(disturbed, measured.row.as_ref()),
            })
        })
        .collect();
    let disturbed: Vec<&str> = disturbed.iter().map(|d| d.what.as_str()).collect();
    Ok(serde_json::to_string_pretty(&serde_json::json!({
        "series": rows, "targets": targets, "disturbed": disturbed,
        "load_generators": comparisons.iter().map(crate::agree::Comparison::json).collect::<Vec<_>>(),
    }))?)
}

fn header(md: &mut String, plan: &Plan, elapsed: Duration, measured: &str) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .unwrap_or_default();
    let kernel = String::from_utf8_lossy(&sh("uname", &["-r"]).stdout)
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let _ = writeln!(
        md,
        "# natd benchmark{}\n",
        if plan.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(md, "- machine: {cpu}, {cpus} CPUs; kernel {kernel}");
    let _ = writeln!(md, "- measured: {measured}");
    let _ = writeln!(
        md,
        "- run took {:.0} s; {} repetitions per point, modes interleaved and rotated ({}), {:.0} s per measurement; warm program \
         runs: {} repetitions of {} runs",
        elapsed.as_secs_f64(),
        plan.reps,
        MODES.join(", "),
        plan.secs,
        plan.reps.max(5),
        plan.warm_repeat
    );
    md.push_str(METHOD);
}

/// The commit the run measured, and whether the tree had changes on top of it (then the
/// figures describe no commit). Read when the run starts.
pub fn measured_commit() -> String {
    let git = |args: &[&str]| String::from_utf8_lossy(&sh("git", args).stdout).trim().to_string();
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    if commit.is_empty() {
        return "unknown (not run from a git checkout)".into();
    }
    // New files count too (a module not yet added is part of what was built); ignored
    // ones (the build, benchmark output under target/) do not.
    let changes = git(&["status", "--porcelain"]);
    if changes.is_empty() {
        format!("commit {commit}")
    } else {
        format!("commit {commit} with uncommitted changes ({} files)", changes.lines().count())
    }
}

fn table(md: &mut String, agg: &BTreeMap<Key, Agg>) {
    let others = ["baseline", "redirect", "iptables", "iptables-random", "nftables"];
    let _ = writeln!(
        md,
        "\n| scenario | N | metric | detail | {} | {} |",
        MODES.join(" | "),
        others.map(|o| format!("ebpf/{o}")).join(" | ")
    );
    let _ = writeln!(md, "|{}", "---|".repeat(4 + MODES.len() + others.len()));
    let mut rows: BTreeMap<Row, BTreeMap<String, &Agg>> = BTreeMap::new();
    for ((scenario, n, metric, detail, mode), a) in agg {
        rows.entry((scenario.clone(), *n, metric.clone(), detail.clone()))
            .or_default()
            .insert(mode.clone(), a);
    }
    for ((scenario, n, metric, detail), modes) in &rows {
        let cell = |m: &str| {
            modes
                .get(m)
                .map(|a| format!("{:.1} [{:.1}–{:.1}] ({})", a.median, a.p25, a.p75, a.runs))
                .unwrap_or_else(|| "–".into())
        };
        let ratio = |m: &str| match (modes.get("ebpf"), modes.get(m)) {
            (Some(e), Some(o)) if o.median > 0.0 => format!("{:.2}", e.median / o.median),
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {scenario} | {n} | {metric} | {} | {} | {} |",
            detail.clone().unwrap_or_default(),
            MODES.map(cell).join(" | "),
            others.map(ratio).join(" | ")
        );
    }
}

pub fn write(plan: &Plan, out: &Path, results: &Results, elapsed: Duration) -> Result<()> {
    let agg = aggregate(&results.samples);
    let targets = crate::targets::targets(plan, &results.samples);
    let disturbed = quality::disturbances(&results.samples, &results.machine);
    let comparisons = crate::agree::comparisons(&results.samples);
    std::fs::write(
        out.join("results.json"),
        results_json(&agg, &targets, &disturbed, &comparisons)?,
    )?;
    let mut md = String::new();
    header(&mut md, plan, elapsed, &results.measured);
    quality::section(&mut md, &disturbed, &results.machine);
    table(&mut md, &agg);
    let _ = writeln!(
        md,
        "\n## Targets\n\nRatios are the median of per-repetition ratios (ebpf and the other mode measured in the \
         same repetition), with a bootstrap 95 % interval over the repetitions; values the median of the runs with its \
         interval. A target is met only if the whole interval clears it, missed only if the whole interval misses \
         it, else inconclusive.\n\n| target | median [95 % interval] (values) | verdict |\n|---|---|---|"
    );
    for (name, measured, goal, higher) in &targets {
        let (text, verdict) = match &measured.iv {
            Some(iv) if iv.has_interval() => (
                format!("{:.2} [{:.2}–{:.2}] ({})", iv.median, iv.lo, iv.hi, iv.n),
                stats::verdict(iv, *goal, *higher).name().to_string(),
            ),
            Some(iv) => (
                format!("{:.2} ({})", iv.median, iv.n),
                format!("{} (no interval from {} value(s))", stats::verdict(iv, *goal, *higher).name(), iv.n),
            ),
            None => ("not measured".into(), "–".into()),
        };
        let verdict = match quality::judged(&disturbed, measured.row.as_ref()) {
            Some(why) if verdict != "–" => format!("{verdict} (unreliable: {why})"),
            _ => verdict,
        };
        let _ = writeln!(md, "| {name} | {text} | {verdict} |");
    }
    crate::agree::section(&mut md, &comparisons);
    crate::profile::section(&mut md, &results.profiles);
    if !results.notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for note in &results.notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    let _ = writeln!(md, "\n## Invalid runs\n");
    if results.invalid.is_empty() {
        let _ = writeln!(md, "None: every run counted.");
    }
    for i in &results.invalid {
        let _ = writeln!(md, "- {}: {}", i.what, i.why);
    }
    let _ = writeln!(
        md,
        "\nWhy targets were missed in an earlier full run (written from that run, not this one): \
         `docs/bench/analysis.md`."
    );
    let _ = writeln!(
        md,
        "\nPlots: `crr_vs_n.png`, `program_ns.png`. Raw aggregates: `results.json`."
    );
    std::fs::write(out.join("report.md"), &md)?;
    plots(out, &agg, plan)?;
    println!("{md}");
    Ok(())
}
