//! The two load generators side by side: for every comparison of ebpf with another mode
//! that both measured, each one's paired-ratio interval and what it concludes (ebpf
//! faster, slower, or no difference shown at 95 %). The conclusions must agree; where
//! they do not, the report says so next to them.
use std::fmt::Write as _;

use crate::{
    Sample,
    stats::{self, Interval},
};

/// What a ratio interval of ebpf over another mode shows.
fn conclusion(iv: Option<&Interval>) -> &'static str {
    match iv {
        Some(iv) if !iv.has_interval() => "no interval",
        Some(iv) if iv.lo > 1.0 => "ebpf faster",
        Some(iv) if iv.hi < 1.0 => "ebpf slower",
        Some(_) => "no difference shown",
        None => "not measured",
    }
}

pub struct Comparison {
    pub scenario: String,
    pub mappings: u32,
    pub metric: &'static str,
    pub other: &'static str,
    pub loadgen: Option<Interval>,
    pub wrk: Option<Interval>,
}

/// How two conclusions compare.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Agreement {
    Same,
    /// One shows a difference, the other shows none at 95 %: no contradiction.
    Partly,
    /// One shows ebpf faster, the other slower.
    Opposite,
}

impl Agreement {
    fn name(self) -> &'static str {
        match self {
            Agreement::Same => "yes",
            Agreement::Partly => "partly",
            Agreement::Opposite => "**no: opposite**",
        }
    }
}

impl Comparison {
    pub fn agree(&self) -> Option<Agreement> {
        let (a, b) = (conclusion(self.loadgen.as_ref()), conclusion(self.wrk.as_ref()));
        let decided = |c: &str| c != "not measured" && c != "no interval";
        let shown = |c: &str| c == "ebpf faster" || c == "ebpf slower";
        (decided(a) && decided(b)).then(|| {
            if a == b {
                Agreement::Same
            } else if shown(a) && shown(b) {
                Agreement::Opposite
            } else {
                Agreement::Partly
            }
        })
    }

    pub fn json(&self) -> serde_json::Value {
        let iv = |i: &Option<Interval>| i.map(|i| serde_json::json!({"median": i.median, "lo": i.lo, "hi": i.hi, "values": i.n}));
        serde_json::json!({
            "scenario": self.scenario, "mappings": self.mappings, "metric": self.metric,
            "ebpf_over": self.other, "natd_loadgen": iv(&self.loadgen), "wrk": iv(&self.wrk),
            "natd_loadgen_shows": conclusion(self.loadgen.as_ref()), "wrk_shows": conclusion(self.wrk.as_ref()),
            "agree": self.agree().map(Agreement::name),
        })
    }
}

/// Every (scenario, N, metric, other mode) that wrk measured.
pub fn comparisons(samples: &[Sample]) -> Vec<Comparison> {
    let mut points: Vec<(String, u32, &'static str)> = samples
        .iter()
        .filter(|s| s.detail.as_deref() == Some(crate::wrk::DETAIL) && s.mode == "ebpf")
        .filter(|s| matches!(s.metric, "crr_per_s" | "rr_per_s"))
        .map(|s| (s.scenario.to_string(), s.mappings, s.metric))
        .collect();
    points.sort();
    points.dedup();
    let mut out = Vec::new();
    for (scenario, n, metric) in points {
        for other in ["baseline", "redirect", "iptables", "iptables-random", "nftables"] {
            let ratio = |detail: Option<&str>| {
                stats::median_interval(&stats::paired_ratios(
                    samples,
                    (&scenario, n, metric, detail, "ebpf"),
                    (&scenario, n, metric, detail, other),
                ))
            };
            let (loadgen, wrk) = (ratio(None), ratio(Some(crate::wrk::DETAIL)));
            if loadgen.is_none() && wrk.is_none() {
                continue;
            }
            out.push(Comparison {
                scenario: scenario.clone(),
                mappings: n,
                metric,
                other,
                loadgen,
                wrk,
            });
        }
    }
    out
}

pub fn section(md: &mut String, comparisons: &[Comparison]) {
    let _ = writeln!(
        md,
        "\n## Two load generators\n\nebpf over each other mode, measured by natd's load generator and by wrk \
         against nginx (Debian's) on the same beds in the same repetitions: median of per-repetition ratios [95 % \
         interval] and what each shows.\n\n| scenario | N | metric | ebpf over | natd-loadgen | wrk | agree |\n\
         |---|---|---|---|---|---|---|"
    );
    let cell = |iv: &Option<Interval>| match iv {
        Some(i) => format!("{:.2} [{:.2}–{:.2}]: {}", i.median, i.lo, i.hi, conclusion(Some(i))),
        None => "not measured".into(),
    };
    for c in comparisons {
        let agree = c.agree().map_or("–", Agreement::name);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {agree} |",
            c.scenario,
            c.mappings,
            c.metric,
            c.other,
            cell(&c.loadgen),
            cell(&c.wrk)
        );
    }
    let count = |a: Agreement| comparisons.iter().filter(|c| c.agree() == Some(a)).count();
    let _ = writeln!(
        md,
        "\nOf {} comparisons both decided: {} the same conclusion, {} partly (one shows a difference the other \
         does not show at 95 %), {} opposite{}.",
        comparisons.iter().filter(|c| c.agree().is_some()).count(),
        count(Agreement::Same),
        count(Agreement::Partly),
        count(Agreement::Opposite),
        if count(Agreement::Opposite) > 0 {
            ": the two load generators contradict each other there, and neither figure is a finding"
        } else {
            ""
        }
    );
}
