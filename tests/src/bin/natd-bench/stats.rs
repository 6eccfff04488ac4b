//! Verdicts a reader can bet on. Two modes are compared by ratios paired per repetition
//! (both measured in the same repetition, one after the other, so drift over the run
//! cancels), summarised by their median with a bootstrap 95 % interval (percentile method,
//! `RESAMPLES` resamples, a fixed seed so a report is reproducible from its samples). A
//! target is met only if the whole interval clears it, missed only if the whole interval
//! misses it, and inconclusive otherwise; fewer than `MIN_PAIRS` values give no interval.
use std::collections::BTreeMap;

use crate::Sample;

const RESAMPLES: usize = 2000;
const SEED: u64 = 0x6e61_7464;
/// Values below which no interval is stated. With 5 the percentile bootstrap's interval of
/// the median is about the values' range, whose coverage is 93.75 % (1 - 2 / 2^5); fewer
/// would state a "95 %" interval that covers far less (75 % at 3).
pub const MIN_PAIRS: usize = 5;
/// A baseline series whose interquartile range exceeds this share of its median marks the
/// run as disturbed (the baseline has no NAT: its spread is the machine's).
pub const SPREAD_LIMIT: f64 = 0.10;

/// The median of some values and, with enough of them, its bootstrap 95 % interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub median: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

impl Interval {
    /// One figure (a single measurement, or a percentile of many) judged as it is.
    pub fn point(value: f64) -> Self {
        Self {
            median: value,
            lo: value,
            hi: value,
            n: 1,
        }
    }

    pub fn has_interval(&self) -> bool {
        self.n >= MIN_PAIRS
    }
}

/// The median of sorted values (the mean of the two middle ones for an even count).
pub fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// The median of `values` with its bootstrap 95 % interval (None without values).
pub fn median_interval(values: &[f64]) -> Option<Interval> {
    if values.is_empty() {
        return None;
    }
    let m = median(&sorted(values));
    if values.len() < MIN_PAIRS {
        return Some(Interval { median: m, lo: m, hi: m, n: values.len() });
    }
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut medians: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let resample: Vec<f64> = (0..values.len()).map(|_| values[rng.usize(..values.len())]).collect();
            median(&sorted(&resample))
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    let at = |q: f64| medians[((RESAMPLES - 1) as f64 * q).round() as usize];
    Some(Interval {
        median: m,
        lo: at(0.025),
        hi: at(0.975),
        n: values.len(),
    })
}

/// A series: (scenario, mappings, metric, detail, mode).
pub type Series<'a> = (&'a str, u32, &'a str, Option<&'a str>, &'a str);

/// The values of a series by repetition (samples without one by their order).
pub fn by_rep(samples: &[Sample], (scenario, n, metric, detail, mode): Series) -> BTreeMap<usize, f64> {
    let mut out = BTreeMap::new();
    let series = samples.iter().filter(|s| {
        s.scenario == scenario && s.mappings == n && s.metric == metric && s.detail.as_deref() == detail && s.mode == mode
    });
    for (i, s) in series.enumerate() {
        // Two values of one series in one repetition are two series under one name.
        let earlier = out.insert(s.rep.unwrap_or(i), s.value);
        assert!(earlier.is_none(), "{scenario} {mode} N={n} {metric} {detail:?}: two values in one repetition");
    }
    out
}

/// `a / b` for every repetition both series have a (non-zero) value in.
pub fn paired_ratios(samples: &[Sample], a: Series, b: Series) -> Vec<f64> {
    ratios_by_rep(&by_rep(samples, a), &by_rep(samples, b)).into_values().collect()
}

/// `a / b` by repetition, where both have a (non-zero) value.
pub fn ratios_by_rep(a: &BTreeMap<usize, f64>, b: &BTreeMap<usize, f64>) -> BTreeMap<usize, f64> {
    a.iter()
        .filter_map(|(rep, x)| b.get(rep).filter(|y| **y > 0.0).map(|y| (*rep, x / y)))
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    Inconclusive,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "missed",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// The verdict on `goal` (`higher`: the value must reach it, else stay at or below it).
/// Without an interval, the single value decides (the report says so).
pub fn verdict(iv: &Interval, goal: f64, higher: bool) -> Verdict {
    let (clears, fails) = if higher {
        (iv.lo >= goal, iv.hi < goal)
    } else {
        (iv.hi <= goal, iv.lo > goal)
    };
    if clears {
        Verdict::Met
    } else if fails {
        Verdict::Missed
    } else {
        Verdict::Inconclusive
    }
}

/// The interquartile range of `values` as a share of their median.
pub fn relative_spread(values: &[f64]) -> Option<f64> {
    if values.len() < MIN_PAIRS {
        return None;
    }
    let v = sorted(values);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let m = median(&v);
    (m > 0.0).then(|| (q(0.75) - q(0.25)) / m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(mode: &str, rep: usize, value: f64) -> Sample {
        Sample::new("publish", mode, 1, "crr_per_s", value).rep(rep)
    }

    #[test]
    fn ratios_pair_by_repetition_and_skip_missing_ones() {
        let samples = vec![
            sample("ebpf", 0, 110.0),
            sample("baseline", 0, 100.0),
            sample("ebpf", 1, 90.0),
            // Repetition 1 of the baseline was thrown out.
            sample("ebpf", 2, 120.0),
            sample("baseline", 2, 100.0),
        ];
        let ratios = paired_ratios(
            &samples,
            ("publish", 1, "crr_per_s", None, "ebpf"),
            ("publish", 1, "crr_per_s", None, "baseline"),
        );
        assert_eq!(ratios, [1.1, 1.2]);
    }

    #[test]
    fn verdicts_follow_the_interval_not_the_median() {
        let tight = median_interval(&[1.05, 1.06, 1.04, 1.05, 1.07, 1.05, 1.06, 1.04, 1.05, 1.06]).unwrap();
        assert!(tight.has_interval());
        assert!(tight.lo > 1.0 && tight.hi < 1.1, "{tight:?}");
        assert_eq!(verdict(&tight, 1.0, true), Verdict::Met);
        assert_eq!(verdict(&tight, 1.1, true), Verdict::Missed);
        // The median clears 1.0, the interval does not: inconclusive, not met.
        let wide = median_interval(&[0.6, 1.4, 1.02, 0.7, 1.3, 1.05, 0.8, 1.2, 1.03, 0.9]).unwrap();
        assert!(wide.median > 1.0 && wide.lo < 1.0, "{wide:?}");
        assert_eq!(verdict(&wide, 1.0, true), Verdict::Inconclusive);
        // Lower is better.
        assert_eq!(verdict(&tight, 1.1, false), Verdict::Met);
        assert_eq!(verdict(&tight, 1.0, false), Verdict::Missed);
        // One value: no interval, the value itself.
        let one = median_interval(&[2.0]).unwrap();
        assert!(!one.has_interval());
        assert_eq!((one.lo, one.hi), (2.0, 2.0));
    }

    #[test]
    fn spread_is_the_interquartile_range_over_the_median() {
        assert_eq!(relative_spread(&[100.0, 100.0, 100.0, 100.0, 100.0]), Some(0.0));
        let s = relative_spread(&[80.0, 90.0, 100.0, 110.0, 120.0]).unwrap();
        assert!((s - 0.2).abs() < 1e-9, "{s}");
        assert_eq!(relative_spread(&[1.0, 2.0]), None);
        assert_eq!(relative_spread(&[1.0, 2.0, 3.0, 4.0]), None, "fewer than MIN_PAIRS");
    }
}
