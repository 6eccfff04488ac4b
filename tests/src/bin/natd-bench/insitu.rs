//! In-situ program cost: the kernel's run-time statistics of the programs attached in a
//! bed (run count and total run time of each), read before and after a traffic run. The
//! statistics are on only while `StatsOn` lives: BPF_ENABLE_STATS hands out a file
//! descriptor and switching back happens when it is closed, never through the global
//! sysctl.
use std::os::fd::OwnedFd;

use anyhow::{Context as _, Result};
use aya::programs::{SchedClassifier, TcAttachType};


pub struct StatsOn(#[allow(dead_code)] OwnedFd);

impl StatsOn {
    pub fn new() -> Result<Self> {
        Ok(Self(
            aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?,
        ))
    }
}

/// Where the bed's programs are attached, and the name each attachment point is reported
/// under.
fn attach_points(sandbox_veth: &str) -> [(&'static str, String, TcAttachType); 3] {
    [
        ("uplink_ingress", "up0".to_string(), TcAttachType::Ingress),
        ("uplink_egress", "up0".to_string(), TcAttachType::Egress),
        ("sandbox", sandbox_veth.to_string(), TcAttachType::Ingress),
    ]
}

/// One program attached at a point: its label, kernel id, total run time in ns, run count.
pub type ProgramRun = (String, u32, u64, u64);

/// Every natd program attached at each attachment point of the bed (TCX), by kernel
/// program id: the IPv4 program under the point's label and, right after it in TCX order,
/// the IPv6 one (`<label>6`), which every packet the first hands on also runs (a bed with
/// one program per point, the redirect-only one, has only `<label>`). Their
/// 15-character kernel names can coincide (`natd_sandbox_in`); the ids cannot.
pub fn snapshot(lab: &natlab::Lab, sandbox_veth: &str) -> Result<Vec<ProgramRun>> {
    let points = attach_points(sandbox_veth);
    natlab::in_netns(&lab.host_path(), move || {
        let mut out = Vec::new();
        for (label, dev, kind) in points {
            let (_, programs) =
                SchedClassifier::query_tcx(&dev, kind).with_context(|| format!("query {dev}"))?;
            let natd = programs.iter().filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("natd_")));
            for (i, p) in natd.take(2).enumerate() {
                let label = if i == 0 { label.to_string() } else { format!("{label}6") };
                out.push((label, p.id(), p.run_time().as_nanos() as u64, p.run_count()));
            }
        }
        Ok(out)
    })
}

/// Mean ns per run of each program between two snapshots (matched by program id);
/// programs that did not run are left out.
pub fn cost(before: &[ProgramRun], after: &[ProgramRun]) -> Vec<(String, f64, u64)> {
    after
        .iter()
        .filter_map(|(label, id, time, count)| {
            let (_, _, t0, c0) = before.iter().find(|(_, i, _, _)| i == id)?;
            let runs = count.checked_sub(*c0)?;
            (runs > 0).then(|| (label.clone(), time.saturating_sub(*t0) as f64 / runs as f64, runs))
        })
        .collect()
}

/// The row name of a program's in-situ cost: the path `scenario`'s packets take at
/// `point` (`<point>6`: the second natd program there). natd attaches the IPv4 program,
/// then the IPv6 one: the program of the other family than the traffic's only hands the
/// packets on, and its row says so. `redirect` beds attach one program of the traffic's
/// family.
pub fn path_name(scenario: &str, metric: &str, point: &str, mode: &str) -> String {
    let ipv6_traffic = scenario.ends_with('6');
    let scenario = scenario.trim_end_matches('6');
    let (point, second) = match point.strip_suffix('6') {
        Some(p) => (p, true),
        None => (point, false),
    };
    let path = match (scenario, point) {
        ("publish", "uplink_ingress") => "dnat_forward",
        ("publish", "sandbox") => "dnat_reply",
        ("masquerade", "uplink_ingress") => "snat_reply",
        ("masquerade", "sandbox") => "snat_established",
        ("publish", "uplink_egress") => "dnat_reply, uplink egress",
        ("masquerade", "uplink_egress") => "snat_established, uplink egress",
        (_, other) => other,
    };
    let mut name = if ipv6_traffic { format!("{path} (IPv6)") } else { path.to_string() };
    if mode == "ebpf" && second != ipv6_traffic {
        name.push_str(if ipv6_traffic {
            ", IPv4 program passing it on"
        } else {
            ", IPv6 program passing it on"
        });
    }
    if metric == "crr_per_s" {
        name.push_str(" (crr mix)");
    }
    name
}
