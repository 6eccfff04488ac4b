//! `cargo xtask bench`: natd against what users would otherwise run, in one run on this
//! machine. Modes `baseline` (routed, no NAT), `redirect` (routed by redirect-only eBPF
//! programs: the cost of a bypass without NAT), `iptables` (Docker's rules, applied with
//! the iptables command), `nftables` (natd's fallback) and `ebpf` (natd's default) are
//! measured interleaved (A B C D E, A B C D E, ...), each in its own throwaway topology of
//! network namespaces. Program cost is measured warm (BPF_PROG_TEST_RUN, many runs) and in
//! situ (kernel run-time stats of the attached programs during the traffic runs). Writes
//! report.md, results.json and PNG plots.
mod agree;
mod beds;
mod control;
mod flood;
mod insitu;
mod ipv6;
mod overlay;
mod plots;
mod profile;
mod programs;
mod quality;
mod report;
mod scale;
mod stats;
mod targets;
mod traffic;
mod wrk;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Result;
use natlab::sh;

/// Every mode of the traffic runs (`iptables`: Docker's rules with the measured mapping
/// last; `iptables-random`: at a random place among the others, from N = 100).
pub const MODES: [&str; 6] = ["baseline", "redirect", "iptables", "iptables-random", "nftables", "ebpf"];

/// One measured value.
#[derive(Clone, Debug)]
pub struct Sample {
    pub scenario: &'static str,
    pub mode: String,
    pub mappings: u32,
    pub metric: &'static str,
    pub value: f64,
    /// Extra key (iperf3 streams, program path) so distinct series stay apart.
    pub detail: Option<String>,
    /// The repetition it was measured in (modes are paired by it); None: by order.
    pub rep: Option<usize>,
}

impl Sample {
    pub fn new(scenario: &'static str, mode: &str, mappings: u32, metric: &'static str, value: f64) -> Self {
        Self {
            scenario,
            mode: mode.to_string(),
            mappings,
            metric,
            value,
            detail: None,
            rep: None,
        }
    }

    pub fn rep(mut self, rep: usize) -> Self {
        self.rep = Some(rep);
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// A measurement that did not count: what ran and why it was thrown out.
#[derive(Clone, Debug)]
pub struct Invalid {
    pub what: String,
    pub why: String,
}

/// Everything a run produced.
#[derive(Default)]
pub struct Results {
    pub samples: Vec<Sample>,
    pub invalid: Vec<Invalid>,
    /// Facts the report states (e.g. the flood's rate), in order.
    pub notes: Vec<String>,
    /// CPU time over the run (`quality`).
    pub machine: quality::Machine,
    /// Where the warm paths' time goes (`profile`).
    pub profiles: Vec<profile::Profile>,
    /// The commit measured (`report::measured_commit`, read at the start).
    pub measured: String,
}

pub struct Plan {
    pub quick: bool,
    pub reps: usize,
    pub secs: f64,
    pub scale: Vec<u32>,
    pub streams: Vec<u32>,
    pub program_sizes: Vec<u32>,
    /// Established flows in the connection table for the filled-table program rows.
    pub ct_flows: Vec<u32>,
    /// BPF_PROG_TEST_RUN repetitions per warm measurement.
    pub warm_repeat: u32,
    pub control_sizes: Vec<u32>,
    pub control_samples: usize,
    /// Flows in the connection table for the "sync does not walk it" check.
    pub control_flows: u32,
    pub flood_secs: f64,
    pub flood_pps: u32,
    pub rss: (u32, u32),
    /// The `scale` part: sandboxes, published mappings, tracked flows (connection entries).
    pub host_scale: (u32, u32, u32),
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                reps: 5,
                secs: 1.0,
                scale: vec![1, 1000],
                streams: vec![1],
                program_sizes: vec![10, 65000],
                ct_flows: vec![1, 100_000],
                warm_repeat: 100_000,
                control_sizes: vec![1000],
                control_samples: 30,
                control_flows: 20_000,
                flood_secs: 2.0,
                flood_pps: 50_000,
                rss: (1000, 10),
                host_scale: (200, 20_000, 50_000),
            }
        } else {
            // Ten repetitions of thirty beds must fit a quiet machine's ~80 minutes (20 s a
            // bed visit at 2 s per run: 100 minutes of traffic alone): the spread that
            // decides a verdict is between repetitions, not within a run, so 1 s per run;
            // several iperf3 streams share the one traffic CPU with the client and server,
            // so only the single stream (the target's) is measured.
            Self {
                quick,
                reps: 10,
                secs: 1.0,
                scale: vec![1, 100, 1000, 10000, 65000],
                streams: vec![1],
                program_sizes: vec![10, 1000, 65000],
                ct_flows: vec![1, 50_000, 100_000, 125_000],
                warm_repeat: 200_000,
                control_sizes: vec![10000],
                control_samples: 100,
                control_flows: 100_000,
                flood_secs: 4.0,
                flood_pps: 100_000,
                rss: (10000, 100),
                host_scale: (1000, 100_000, 250_000),
            }
        }
    }
}

fn main() {
    natlab::live::clean_up_on_signal();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let stamp = sh("date", &["+%Y%m%d-%H%M%S"]);
            PathBuf::from(format!(
                "target/bench/{}",
                String::from_utf8_lossy(&stamp.stdout).trim()
            ))
        });
    // `--only traffic,ipv6,overlay,programs,profile,flood,control,scale`: a subset of the parts (the report then
    // states only what ran).
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').map(str::to_string).collect());
    if let Err(e) = run(quick, &out, only.as_deref()) {
        eprintln!("natd-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(quick: bool, out: &Path, only: Option<&[String]>) -> Result<()> {
    natlab::require_root();
    std::fs::create_dir_all(out)?;
    let plan = Plan::new(quick);
    let wanted = |part: &str| only.is_none_or(|o| o.iter().any(|p| p == part));
    let started = Instant::now();
    let mut results = Results::default();
    results.machine.start = quality::cpu_ticks();
    results.measured = report::measured_commit();
    if wanted("traffic") {
        eprintln!("== published port and masquerade with {:?} mappings present", plan.scale);
        traffic::run(&plan, &mut results)?;
    }
    if wanted("ipv6") {
        eprintln!("== IPv6: published port and masquerade (NAT66)");
        ipv6::run(&plan, &mut results)?;
    }
    if wanted("overlay") {
        eprintln!("== overlay across two hosts (natd vs. hand-built VXLAN)");
        overlay::run(&plan, &mut results)?;
    }
    if wanted("programs") {
        eprintln!("== program cost, warm (BPF_PROG_TEST_RUN x {})", plan.warm_repeat);
        programs::warm(&plan, &mut results)?;
    }
    if wanted("profile") {
        eprintln!("== where the warm paths' time goes (perf)");
        profile::run(&plan, out, &mut results)?;
    }
    if wanted("flood") {
        eprintln!("== spoofed SYN flood against a published port");
        flood::run(&plan, &mut results)?;
    }
    if wanted("control") {
        eprintln!("== control plane");
        for &n in &plan.control_sizes {
            control::run(&plan, n, &mut results)?;
        }
        control::memory(plan.rss.0, plan.rss.1, &mut results)?;
    }
    if wanted("scale") {
        eprintln!("== control plane at host scale {:?}", plan.host_scale);
        scale::run(&plan, &mut results)?;
    }
    results.machine.end = quality::cpu_ticks();
    report::write(&plan, out, &results, started.elapsed())?;
    eprintln!("report: {}", out.join("report.md").display());
    Ok(())
}
