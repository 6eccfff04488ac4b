//! In-situ program cost: the kernel's run-time statistics of the programs attached in a
//! bed (run count and total run time of each), read before and after a traffic run. The
//! statistics are on only while `StatsOn` lives: BPF_ENABLE_STATS hands out a file
//! descriptor and switching back happens when it is closed, never through the global
//! sysctl.
use std::os::fd::OwnedFd;

use anyhow::{Context as _, Result};
use aya::programs::{SchedClassifier, TcAttachType};

use crate::beds::Bed;

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
fn attach_points(bed: &Bed) -> [(&'static str, String, TcAttachType); 3] {
    [
        ("uplink_ingress", "up0".to_string(), TcAttachType::Ingress),
        ("uplink_egress", "up0".to_string(), TcAttachType::Egress),
        ("sandbox", bed.sandbox_veth.clone(), TcAttachType::Ingress),
    ]
}

/// (attachment point, total run time in ns, run count) of the first natd program on each
/// attachment point of the bed (TCX).
pub fn snapshot(bed: &Bed) -> Result<Vec<(&'static str, u64, u64)>> {
    let points = attach_points(bed);
    natlab::in_netns(&bed.lab.host_path(), move || {
        let mut out = Vec::new();
        for (label, dev, kind) in points {
            let (_, programs) =
                SchedClassifier::query_tcx(&dev, kind).with_context(|| format!("query {dev}"))?;
            if let Some(p) = programs
                .iter()
                .find(|p| p.name_as_str().is_some_and(|n| n.starts_with("natd_")))
            {
                out.push((label, p.run_time().as_nanos() as u64, p.run_count()));
            }
        }
        Ok(out)
    })
}

/// Mean ns per run of each attachment point's program between two snapshots; points
/// whose program did not run are left out.
pub fn cost(
    before: &[(&'static str, u64, u64)],
    after: &[(&'static str, u64, u64)],
) -> Vec<(&'static str, f64, u64)> {
    after
        .iter()
        .filter_map(|(label, time, count)| {
            let (_, t0, c0) = before.iter().find(|(l, _, _)| l == label)?;
            let runs = count.checked_sub(*c0)?;
            (runs > 0).then(|| (*label, time.saturating_sub(*t0) as f64 / runs as f64, runs))
        })
        .collect()
}
