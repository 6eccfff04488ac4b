//! Whether a run measured natd or the machine: CPU time per CPU over the run (busy and
//! stolen by the hypervisor, from /proc/stat) and the spread of the baseline series (no NAT
//! in them: their spread is the machine's and the method's). Stolen CPU makes every verdict
//! unreliable; a baseline series that spreads too far makes the verdicts measured on its
//! row unreliable. Both are stated at the top of the report and on the verdicts they touch,
//! never read as a finding.
use std::fmt::Write as _;

use crate::{
    Sample,
    stats::{self, SPREAD_LIMIT},
};

/// Stolen CPU time (share of a CPU's time over the run) above which a run is disturbed.
const STEAL_LIMIT: f64 = 0.05;

/// One CPU's counters from /proc/stat (USER_HZ ticks): (busy, idle, steal).
type CpuTicks = (u64, u64, u64);

/// /proc/stat at the start and the end of the run.
#[derive(Default)]
pub struct Machine {
    pub start: Vec<CpuTicks>,
    pub end: Vec<CpuTicks>,
}

/// Every CPU's (busy, idle, steal) ticks now.
pub fn cpu_ticks() -> Vec<CpuTicks> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            // user nice system idle iowait irq softirq steal
            (at(0) + at(1) + at(2) + at(5) + at(6), at(3) + at(4), at(7))
        })
        .collect()
}

impl Machine {
    /// Per CPU over the run: (busy share, stolen share).
    fn shares(&self) -> Vec<(f64, f64)> {
        self.start
            .iter()
            .zip(&self.end)
            .map(|(a, b)| {
                let (busy, idle, steal) = (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1), b.2.saturating_sub(a.2));
                let total = (busy + idle + steal).max(1) as f64;
                (busy as f64 / total, steal as f64 / total)
            })
            .collect()
    }
}

/// A row of the report's table: (scenario, mappings, metric, detail).
pub type Row = (String, u32, String, Option<String>);

/// Something that makes verdicts unreliable: every one (`row` None) or those of a row.
pub struct Disturbance {
    pub row: Option<Row>,
    pub what: String,
}

/// Why a verdict on `row` is unreliable, if it is.
pub fn judged<'a>(disturbed: &'a [Disturbance], row: Option<&Row>) -> Option<&'a str> {
    disturbed
        .iter()
        .find(|d| d.row.is_none() || d.row.as_ref() == row)
        .map(|d| if d.row.is_none() { "disturbed machine" } else { "baseline spread" })
}

/// What disturbed the run (empty: nothing did).
pub fn disturbances(samples: &[Sample], machine: &Machine) -> Vec<Disturbance> {
    let mut out = Vec::new();
    for (cpu, (_, steal)) in machine.shares().iter().enumerate() {
        if *steal > STEAL_LIMIT {
            out.push(Disturbance {
                row: None,
                what: format!(
                    "CPU {cpu}: {:.1} % of its time stolen by the hypervisor (limit {:.0} %)",
                    steal * 100.0,
                    STEAL_LIMIT * 100.0
                ),
            });
        }
    }
    let mut series: Vec<(&str, u32, &str, Option<&str>)> = samples
        .iter()
        .filter(|s| s.mode == "baseline" && matches!(s.metric, "crr_per_s" | "rr_per_s" | "gbit_s"))
        .map(|s| (s.scenario, s.mappings, s.metric, s.detail.as_deref()))
        .collect();
    series.sort();
    series.dedup();
    for (scenario, n, metric, detail) in series {
        let values: Vec<f64> = stats::by_rep(samples, (scenario, n, metric, detail, "baseline")).into_values().collect();
        if let Some(spread) = stats::relative_spread(&values).filter(|s| *s > SPREAD_LIMIT) {
            out.push(Disturbance {
                row: Some((scenario.to_string(), n, metric.to_string(), detail.map(str::to_string))),
                what: format!(
                    "baseline {scenario} {metric}{} N={n}: interquartile range {:.0} % of the median (limit {:.0} %)",
                    detail.map(|d| format!(" {d}")).unwrap_or_default(),
                    spread * 100.0,
                    SPREAD_LIMIT * 100.0
                ),
            });
        }
    }
    out
}

/// The report's "Run quality" section.
pub fn section(md: &mut String, disturbed: &[Disturbance], machine: &Machine) {
    let _ = writeln!(md, "\n## Run quality\n");
    let cpus: Vec<String> = machine
        .shares()
        .iter()
        .enumerate()
        .map(|(cpu, (busy, steal))| format!("CPU {cpu} {:.0} % busy, {:.1} % stolen", busy * 100.0, steal * 100.0))
        .collect();
    let _ = writeln!(md, "- over the run: {}", cpus.join("; "));
    if disturbed.is_empty() {
        let _ = writeln!(
            md,
            "- undisturbed: no CPU lost more than {:.0} % to the hypervisor, no baseline series spread more than {:.0} %",
            STEAL_LIMIT * 100.0,
            SPREAD_LIMIT * 100.0
        );
    } else {
        let whole = disturbed.iter().any(|d| d.row.is_none());
        let _ = writeln!(
            md,
            "- **{}**: the figures concerned describe the machine as much as natd; the verdicts on them are marked \
             unreliable and are no finding.",
            if whole { "UNRELIABLE RUN" } else { "UNRELIABLE ROWS" }
        );
        for d in disturbed {
            let _ = writeln!(md, "  - {}", d.what);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline(scenario: &'static str, rep: usize, value: f64) -> Sample {
        Sample::new(scenario, "baseline", 1, "crr_per_s", value).rep(rep)
    }

    #[test]
    fn a_spread_baseline_makes_its_rows_verdicts_unreliable_and_stolen_cpu_every_one() {
        let mut samples: Vec<Sample> = (0..5).map(|r| baseline("publish", r, 100.0 + r as f64)).collect();
        samples.extend([70.0, 90.0, 100.0, 110.0, 130.0].iter().enumerate().map(|(r, v)| baseline("masquerade", r, *v)));
        let quiet = Machine {
            start: vec![(0, 0, 0)],
            end: vec![(50, 950, 0)],
        };
        let disturbed = disturbances(&samples, &quiet);
        let row = |s: &str| Some((s.to_string(), 1, "crr_per_s".to_string(), None));
        assert_eq!(disturbed.len(), 1, "only the masquerade baseline spreads");
        assert_eq!(judged(&disturbed, row("masquerade").as_ref()), Some("baseline spread"));
        assert_eq!(judged(&disturbed, row("publish").as_ref()), None);
        let stolen = Machine {
            start: vec![(0, 0, 0)],
            end: vec![(50, 850, 100)],
        };
        let disturbed = disturbances(&samples, &stolen);
        assert_eq!(judged(&disturbed, row("publish").as_ref()), Some("disturbed machine"));
    }
}
