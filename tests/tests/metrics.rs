//! Prometheus metrics (`--metrics-addr`), scraped as Prometheus would, inside the lab's
//! host namespace: the numbers move as the traffic sent says. Also natctl's completions
//! and man pages.
use std::{process::Command, time::Duration};

use natlab::{EXT_IP, HOST_UPLINK_IP, Lab, natctl_bin, natd_bin, sh, tcp_line, wait_listening, wait_until};

const METRICS: &str = "127.0.0.1:9323";

fn scrape(lab: &Lab) -> String {
    lab.host_ok(&[
        "curl",
        "-sf",
        "--max-time",
        "3",
        &format!("http://{METRICS}/metrics"),
    ])
}

/// The value of the sample whose name and labels start with `prefix` (0 when absent).
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn metrics_follow_the_traffic() {
    let lab = Lab::started(&["--dataplane", "ebpf", "--metrics-addr", METRICS]);
    lab.run_script("web", &["-p", "8080:80"], &natlab::whoami(80));
    assert!(wait_listening(&lab.netns_of("web"), "tcp", 80));
    let before = scrape(&lab);
    assert!(before.ends_with("# EOF\n"), "OpenMetrics text:\n{before}");
    let port = "natd_published_port_packets_total{sandbox=\"web\",mapping=\"0.0.0.0:8080->";
    assert_eq!(sample(&before, port), 0.0, "{before}");
    let dnat_before = sample(&before, "natd_translations_total{kind=\"dnat_new\"}");

    for _ in 0..3 {
        assert_eq!(
            tcp_line(&["ip", "netns", "exec", &lab.ext_ns], HOST_UPLINK_IP, 8080).as_deref(),
            Some(EXT_IP)
        );
    }
    // Three connections from outside: three new translated flows, each at least a SYN, an
    // ACK and a FIN through the published port.
    let after = scrape(&lab);
    assert_eq!(
        sample(&after, "natd_translations_total{kind=\"dnat_new\"}") - dnat_before,
        3.0,
        "{after}"
    );
    assert!(sample(&after, port) >= 9.0, "{after}");
    let bytes = "natd_published_port_bytes_total{sandbox=\"web\"";
    assert!(sample(&after, bytes) >= 9.0 * 40.0, "{after}");
    // The tables' fill as the last expiry pass (every 5 s) left them.
    assert!(
        wait_until(Duration::from_secs(8), || sample(&scrape(&lab), "natd_conntrack_entries") >= 1.0),
        "{after}"
    );
    assert!(sample(&after, "natd_conntrack_capacity") >= 262_144.0, "{after}");
    // The masquerade tables too are counted by the expiry pass, not read per scrape: a
    // flow out of the sandbox makes a mapping, which shows once a pass has run, as many
    // as `natctl stats` (which reads the table) finds.
    assert!(lab.exec("web", &["ping", "-c1", "-W2", EXT_IP]).status.success(), "ping out");
    let snat = "natd_map_entries{map=\"NATD_SNAT4\"}";
    assert!(
        wait_until(Duration::from_secs(8), || sample(&scrape(&lab), snat) >= 1.0),
        "{}",
        scrape(&lab)
    );
    let read = lab.json(&["stats"])["maps"]["NATD_SNAT4"][0].as_u64();
    assert_eq!(Some(sample(&scrape(&lab), snat) as u64), read, "the pass's count is the table's");
    // Each map's kernel memory, as the kernel charges it: the established table's buckets
    // at least (16 bytes per entry of capacity, allocated up front).
    assert!(sample(&after, "natd_map_memory_bytes{map=\"NATD_CT4\"}") >= 16.0 * 262_144.0, "{after}");
    assert_eq!(sample(&after, "natd_objects{kind=\"sandbox\"}"), 1.0);
    assert_eq!(sample(&after, "natd_dataplane_info{dataplane=\"ebpf\"}"), 1.0);
    // natd's own API: the run request, counted by route pattern and status, and timed.
    assert_eq!(
        sample(
            &after,
            "natd_api_requests_total{route=\"/v1/sandboxes\",method=\"POST\",status=\"201\"}"
        ),
        1.0,
        "{after}"
    );
    assert!(
        after.contains("natd_api_request_duration_seconds_bucket{"),
        "{after}"
    );

    // Pings straight at the sandbox's address are dropped, and counted as such.
    let web_ip = lab.sandbox_ip("web");
    lab.ext_ok(&["ip", "route", "add", "172.18.0.0/16", "via", HOST_UPLINK_IP]);
    let drops_before = sample(&after, "natd_drops_total{reason=\"direct_access\"}");
    assert!(!lab.ext(&["ping", "-c2", "-W1", &web_ip]).status.success());
    assert!(
        wait_until(Duration::from_secs(2), || sample(
            &scrape(&lab),
            "natd_drops_total{reason=\"direct_access\"}"
        ) - drops_before
            >= 2.0),
        "two dropped pings counted"
    );
}

#[test]
fn nftables_reports_the_kernels_conntrack() {
    let lab = Lab::started(&["--dataplane", "nftables", "--metrics-addr", METRICS]);
    lab.run_script("web", &["-p", "8080:80"], &natlab::whoami(80));
    assert!(wait_listening(&lab.netns_of("web"), "tcp", 80));
    assert_eq!(
        tcp_line(&["ip", "netns", "exec", &lab.ext_ns], HOST_UPLINK_IP, 8080).as_deref(),
        Some(EXT_IP)
    );
    let text = scrape(&lab);
    // The flow just made is the kernel's (this namespace's table), and so is the capacity.
    let max: f64 = lab
        .host_ok(&["cat", "/proc/sys/net/netfilter/nf_conntrack_max"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(sample(&text, "natd_conntrack_capacity"), max, "{text}");
    assert!(sample(&text, "natd_conntrack_entries") >= 1.0, "{text}");
    assert_eq!(sample(&text, "natd_map_capacity{map=\"nf_conntrack\"}"), max, "{text}");
    assert_eq!(sample(&text, "natd_dataplane_info{dataplane=\"nftables\"}"), 1.0);
}

#[test]
fn a_bad_metrics_address_stops_natd_with_a_clear_error() {
    let out = sh(
        natd_bin().to_str().unwrap(),
        &["--metrics-addr", "localhost", "--socket", "/nonexistent/x.sock"],
    );
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metrics-addr") && err.contains("ADDRESS:PORT"),
        "{err}"
    );
}

#[test]
fn completions_and_man_pages_come_from_the_flags() {
    for (shell, marker) in [
        ("bash", "_natctl()"),
        ("zsh", "#compdef natctl"),
        ("fish", "complete -c natctl"),
    ] {
        let out = sh(natctl_bin().to_str().unwrap(), &["completion", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell} script:\n{text}");
        assert!(
            text.contains("publish") && text.contains("unpublish"),
            "{shell} knows the subcommands"
        );
    }
    let dir = std::env::temp_dir().join(format!("natd-man-{}", std::process::id()));
    let out = Command::new(natctl_bin())
        .arg("manpages")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    assert!(read("natd.8").contains(".TH natd 8") && read("natd.8").contains("metrics\\-addr"));
    assert!(read("natctl.1").contains(".TH natctl 1"));
    assert!(read("natctl-network-create.1").contains("subnet"));
    assert!(read("natctl-publish.1").contains(".TH natctl-publish 1"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// With more published ports than `--metrics-port-series`, the busiest keep series of
/// their own and the rest are summed into one (mapping="other"): a scrape's size is
/// bounded whatever the host publishes. Control: the same traffic's packets all appear.
#[test]
fn port_series_are_bounded_to_the_busiest() {
    let lab = Lab::started(&["--dataplane", "ebpf", "--metrics-addr", METRICS, "--metrics-port-series", "1"]);
    lab.run_script("web", &["-p", "8080:80", "-p", "8081:81", "-p", "8082:82"], &natlab::whoami(80));
    assert!(wait_listening(&lab.netns_of("web"), "tcp", 80));
    for _ in 0..2 {
        assert_eq!(
            tcp_line(&["ip", "netns", "exec", &lab.ext_ns], HOST_UPLINK_IP, 8080).as_deref(),
            Some(EXT_IP)
        );
    }
    // Nothing listens on 81: the SYN is answered with a reset, one packet each way.
    let _ = tcp_line(&["ip", "netns", "exec", &lab.ext_ns], HOST_UPLINK_IP, 8081);
    let text = scrape(&lab);
    let own: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("natd_published_port_packets_total{sandbox=\"web\""))
        .collect();
    assert_eq!(own.len(), 1, "one port with a series of its own:\n{text}");
    assert!(own[0].contains("0.0.0.0:8080->"), "the busiest one: {own:?}");
    let busiest = sample(&text, "natd_published_port_packets_total{sandbox=\"web\"");
    let other = sample(&text, "natd_published_port_packets_total{sandbox=\"\",mapping=\"other\"}");
    assert!(busiest >= 9.0, "{text}");
    assert!(other >= 1.0, "8081's packets summed with 8082's:\n{text}");
    // `natctl stats` is not bounded: every mapping, each with its own count.
    let stats = lab.json(&["stats"]);
    assert_eq!(stats["mappings"].as_array().map(Vec::len), Some(3), "{stats}");
}
