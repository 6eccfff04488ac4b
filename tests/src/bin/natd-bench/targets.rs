//! The report's targets: each goal of issue 24 (and the ones before it) as a ratio of
//! paired repetitions or a value, with the interval its verdict is read from.
use crate::{
    Plan, Sample, quality,
    stats::{self, Interval},
};

/// What a target measured: the median and its interval, and the row of the table it was
/// measured on (whose baseline's spread judges it).
#[derive(Clone)]
pub struct Measured {
    pub iv: Option<Interval>,
    pub row: Option<quality::Row>,
}

impl From<Option<Interval>> for Measured {
    fn from(iv: Option<Interval>) -> Self {
        Self { iv, row: None }
    }
}

/// Target rows: (name, what was measured, goal, higher is better).
pub fn targets(plan: &Plan, samples: &[Sample]) -> Vec<(String, Measured, f64, bool)> {
    let row = |s: &str, n: u32, m: &str, d: Option<&str>| Some((s.to_string(), n, m.to_string(), d.map(str::to_string)));
    let get = |s: &str, n: u32, m: &str, d: Option<&str>, mode: &str| {
        let values: Vec<f64> = stats::by_rep(samples, (s, n, m, d, mode)).into_values().collect();
        Measured {
            iv: stats::median_interval(&values),
            row: row(s, n, m, d),
        }
    };
    let ratio = |s: &str, n: u32, m: &str, d: Option<&str>, other: &str| Measured {
        iv: stats::median_interval(&stats::paired_ratios(samples, (s, n, m, d, "ebpf"), (s, n, m, d, other))),
        row: row(s, n, m, d),
    };
    let mut t = Vec::new();
    for &n in &plan.scale {
        for (metric, label) in [("crr_per_s", "CRR"), ("rr_per_s", "RR")] {
            t.push((
                format!("publish {label} ebpf/baseline >= 1.0 (N={n}; stretch 1.10)"),
                ratio("publish", n, metric, None, "baseline"),
                1.0,
                true,
            ));
            // What the NAT itself costs: the same programs' redirect without it.
            t.push((
                format!("publish {label} ebpf/redirect-only >= 0.97 (N={n})"),
                ratio("publish", n, metric, None, "redirect"),
                0.97,
                true,
            ));
        }
    }
    for (metric, label) in [("crr_per_s", "CRR"), ("rr_per_s", "RR")] {
        t.push((
            format!("masquerade {label} ebpf/baseline >= 1.0"),
            ratio("masquerade", 1, metric, None, "baseline"),
            1.0,
            true,
        ));

    }
    let big = if plan.scale.contains(&10000) {
        10000
    } else {
        *plan.scale.last().expect("scale")
    };
    t.push((
        "publish CRR ebpf/iptables >= 1.25 (N=1)".into(),
        ratio("publish", 1, "crr_per_s", None, "iptables"),
        1.25,
        true,
    ));
    t.push((
        "publish CRR ebpf/nftables >= 1.1 (N=1)".into(),
        ratio("publish", 1, "crr_per_s", None, "nftables"),
        1.1,
        true,
    ));
    t.push((
        format!("publish CRR ebpf/iptables >= 10 (N={big})"),
        ratio("publish", big, "crr_per_s", None, "iptables"),
        10.0,
        true,
    ));
    for scenario in ["publish", "masquerade"] {
        t.push((
            format!("{scenario} throughput ebpf/baseline >= 1.0 (1 stream)"),
            ratio(scenario, 1, "gbit_s", Some("1 stream(s)"), "baseline"),
            1.0,
            true,
        ));
    }
    for (metric, label) in [("crr_per_s", "CRR"), ("rr_per_s", "RR")] {
        for scenario in ["publish6", "masquerade6"] {
            t.push((
                format!("IPv6 {scenario} {label} ebpf/baseline >= 1.0"),
                ratio(scenario, 1, metric, None, "baseline"),
                1.0,
                true,
            ));
        }
    }
    for (metric, label) in [("crr_per_s", "CRR"), ("rr_per_s", "RR")] {
        t.push((
            format!("IPv6 publish6 {label} ebpf/redirect-only >= 0.97"),
            ratio("publish6", 1, metric, None, "redirect"),
            0.97,
            true,
        ));
        // IPv6 against IPv4, each as a share of its own routed baseline in the same
        // repetition: the two families run in different phases of the run.
        let share = |scenario: &str| {
            let mode = |m| stats::by_rep(samples, (scenario, 1, metric, None, m));
            stats::ratios_by_rep(&mode("ebpf"), &mode("baseline"))
        };
        let within: Vec<f64> = stats::ratios_by_rep(&share("publish6"), &share("publish")).into_values().collect();
        t.push((
            format!("IPv6 publish {label} within 10 % of IPv4 (ebpf/baseline of IPv6 over that of IPv4) >= 0.90"),
            stats::median_interval(&within).into(),
            0.90,
            true,
        ));
    }
    t.push((
        "IPv6 publish6 CRR ebpf/ip6tables >= 1.25".into(),
        ratio("publish6", 1, "crr_per_s", None, "iptables"),
        1.25,
        true,
    ));
    for (metric, detail, label) in [("rr_per_s", None, "RR"), ("gbit_s", Some("1 stream(s)"), "throughput")] {
        t.push((
            format!("overlay {label} natd/hand-built VXLAN >= 0.90"),
            ratio("overlay", 1, metric, detail, "baseline"),
            0.90,
            true,
        ));
    }
    let small = plan.program_sizes[0];
    let dnat = |n| get("program", n, "ns_per_packet_warm", Some("dnat_forward"), "ebpf");
    t.push((
        format!("DNAT forward warm, hot flow <= 60 ns (N={small}; the stretch goal)"),
        dnat(small),
        60.0,
        false,
    ));
    for &flows in plan.ct_flows.iter().filter(|&&f| f == 100_000) {
        let row = crate::programs::filled_row("dnat_forward", flows);
        t.push((
            format!("DNAT forward warm <= 100 ns, random one of {flows} established flows"),
            get("program", 1, "ns_per_packet_warm", Some(&row), "ebpf"),
            100.0,
            false,
        ));
    }
    // Both measured in the same repetitions of one run (`natlab::warm::paths6`).
    let ipv6_over_ipv4 = stats::paired_ratios(
        samples,
        ("program", 1, "ns_per_packet_warm", Some("dnat_forward (IPv6)"), "ebpf"),
        ("program", 1, "ns_per_packet_warm", Some(natlab::warm::IPV4_BESIDE), "ebpf"),
    );
    t.push((
        "IPv6 DNAT forward warm within 10 % of IPv4's (measured side by side): IPv6 / IPv4 <= 1.10".into(),
        stats::median_interval(&ipv6_over_ipv4).into(),
        1.10,
        false,
    ));
    for (path, goal, what) in [("miss", 40.0, "host-bound miss"), ("dnat_new", 600.0, "dnat_new (table with room)")] {
        t.push((
            format!("{what} warm <= {goal} ns (N={small})"),
            get("program", small, "ns_per_packet_warm", Some(path), "ebpf"),
            goal,
            false,
        ));
    }
    for &n in &plan.program_sizes[1..] {
        let series = |n| ("program", n, "ns_per_packet_warm", Some("dnat_forward"), "ebpf");
        let flat = stats::median_interval(&stats::paired_ratios(samples, series(n), series(small)));
        t.push((
            format!("DNAT forward warm at N={n} within 1.2x of N={small}"),
            flat.into(),
            1.2,
            false,
        ));
    }
    for &n in &plan.control_sizes {
        t.push((
            format!("publish one port via the API, p99 until answered <= 1000 us (N={n})"),
            get("control", n, "add_us_p99", Some("0 flows"), "ebpf"),
            1000.0,
            false,
        ));
        let flows = format!("{} flow entries", plan.control_flows);
        let with_flows = stats::paired_ratios(
            samples,
            ("control", n, "add_us_p50", Some(flows.as_str()), "ebpf"),
            ("control", n, "add_us_p50", Some("0 flows"), "ebpf"),
        );
        t.push((
            format!("publish with {flows} tracked / with none, p50 <= 1.2x (sync does not walk the table)"),
            stats::median_interval(&with_flows).into(),
            1.2,
            false,
        ));
    }
    t.push((
        "legitimate connections succeeding during the SYN flood >= 99 %".into(),
        get("flood", 1, "legit_success_pct", None, "ebpf"),
        99.0,
        true,
    ));
    // Issue 25: the control plane at host scale.
    let (sb_n, _, _) = plan.host_scale;
    for (metric, what) in [("run_ms", "run -p"), ("rm_ms", "rm")] {
        let at = |d| ("scale", sb_n, metric, Some(d), "ebpf");
        t.push((
            format!("{what} via the API, median at {sb_n} sandboxes <= 1.2x the first {n}", n = crate::scale::PAIRED),
            stats::median_interval(&stats::paired_ratios(samples, at("at full size"), at("first sandboxes"))).into(),
            1.2,
            false,
        ));
    }
    t.push((
        "map memory at defaults, IPv4 only <= 64 MiB (at start)".to_string(),
        get("scale", 0, "map_mib", Some(crate::scale::AT_START), "ebpf"),
        64.0,
        false,
    ));
    t.push((
        format!("run -p via the API, median at {sb_n} sandboxes <= 50 ms"),
        get("scale", sb_n, "run_ms", Some("at full size"), "ebpf"),
        50.0,
        false,
    ));
    let full = samples.iter().find(|x| x.scenario == "scale" && x.metric == "publish_ms");
    if let Some(full) = full {
        let (n, d) = (full.mappings, full.detail.clone());
        let d = d.as_deref();
        let values = |m: &str| -> Vec<f64> { stats::by_rep(samples, ("scale", n, m, d, "ebpf")).into_values().collect() };
        let p99 = |m: &str| {
            let mut v = values(m);
            (!v.is_empty()).then(|| crate::control::percentile(&mut v, 0.99))
        };
        let single = |m: &str| values(m).first().copied();
        let median = |m: &str| {
            let mut v = values(m);
            (!v.is_empty()).then(|| crate::control::percentile(&mut v, 0.5))
        };
        let size = d.unwrap_or("");
        for (name, value, goal) in [
            (format!("publish one port via the API, p99 <= 1 ms ({size})"), p99("publish_ms"), 1.0),
            (format!("any API call while housekeeping runs, p99 <= 5 ms ({size})"), p99("read_ms"), 5.0),
            (format!("a 10,000-port range published <= 50 ms ({size})"), single("range_publish_ms"), 50.0),
            (format!("/metrics scrape <= 50 ms ({size})"), p99("scrape_ms"), 50.0),
            (format!("natd RSS <= 64 MiB, median of its samples ({size})"), median("rss_mib"), 64.0),
            (format!("restart until the API answers <= 1000 ms ({size})"), single("restart_ready_ms"), 1000.0),
            (format!("flows lost over the restart = 0 ({size})"), single("restart_flows_lost"), 0.0),
        ] {
            t.push((name, value.map(stats::Interval::point).into(), goal, false));
        }
    }
    let (m, sb) = plan.rss;
    t.push((
        format!("natd RSS <= 64 MiB ({m} mappings, {sb} sandboxes)"),
        get("control", m, "rss_mib", Some(&format!("{sb} sandboxes")), "ebpf"),
        64.0,
        false,
    ));
    t
}

