//! The second, independent load generator: Debian's `wrk` against Debian's `nginx`, run
//! beside natd's own (`natd-loadgen`) on the same beds. CRR: one connection at a time,
//! each request with `Connection: close` (so a new TCP connection per request, as the
//! load generator's CRR); RR: one kept-alive connection. Both pinned to CPU 1, as the
//! load generator and its server are. nginx is the package's binary unpacked by
//! `cargo xtask bench` (never installed as a service), one worker, no logs, a fixed
//! one-byte answer.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use natlab::sh;

/// nginx's port in the sandbox (published as `PUBLISHED`) and in the external namespace.
pub const PORT: u16 = 81;
pub const PUBLISHED: u16 = 8081;
pub const EXT_PORT: u16 = 9001;

/// Detail of the samples wrk measured (natd-loadgen's have none).
pub const DETAIL: &str = "wrk";

fn nginx_bin() -> Result<PathBuf> {
    let bin = PathBuf::from(std::env::var_os("NATD_BENCH_NGINX").context(
        "NATD_BENCH_NGINX is not set: run the benchmark with `cargo xtask bench`, which unpacks nginx",
    )?);
    anyhow::ensure!(bin.exists(), "no nginx at {}", bin.display());
    Ok(bin)
}

/// The command line of an nginx serving on `port`, its configuration and scratch files in
/// `dir` (created).
pub fn nginx_command(dir: &Path, port: u16) -> Result<Vec<String>> {
    let prefix = dir.join(format!("nginx-{port}"));
    std::fs::create_dir_all(&prefix)?;
    let p = prefix.display();
    let conf = format!(
        "worker_processes 1;\npid {p}/nginx.pid;\nerror_log stderr;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  fastcgi_temp_path {p}/fastcgi;\n  \
         proxy_temp_path {p}/proxy;\n  scgi_temp_path {p}/scgi;\n  uwsgi_temp_path {p}/uwsgi;\n  \
         keepalive_requests 1000000000;\n  keepalive_timeout 600s;\n  \
         server {{ listen {port}; location / {{ return 200 \"x\"; }} }}\n}}\n"
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    Ok(vec![
        "taskset".into(),
        "-c".into(),
        "1".into(),
        nginx_bin()?.display().to_string(),
        "-p".into(),
        p.to_string(),
        "-c".into(),
        conf_path.display().to_string(),
        "-g".into(),
        "daemon off;".into(),
    ])
}

/// What one wrk run reported.
#[derive(Debug)]
pub struct Report {
    pub per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Socket errors and non-2xx answers.
    pub errors: u64,
}

/// `kind` "crr" or "rr" against `http://target/` from namespace `ns`.
pub fn run(ns: &str, kind: &str, target: &str, secs: f64) -> Result<Report, String> {
    let duration = format!("{}s", secs.max(1.0).round());
    let url = format!("http://{target}/");
    let mut args = vec![
        format!("--net={ns}"),
        "taskset".into(),
        "-c".into(),
        "1".into(),
        "wrk".into(),
        "-t1".into(),
        "-c1".into(),
        "-d".into(),
        duration,
        "--latency".into(),
    ];
    if kind == "crr" {
        args.extend(["-H".into(), "Connection: close".into()]);
    }
    args.push(url);
    let out = sh("nsenter", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("wrk failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    parse(&text)
}

/// wrk's text report.
fn parse(text: &str) -> Result<Report, String> {
    let after = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label).map(|rest| rest.trim().to_string()))
    };
    let per_s = after("Requests/sec:")
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's report: {text}"))?;
    let percentile = |p: &str| {
        after(p)
            .and_then(|v| duration_us(&v))
            .ok_or_else(|| format!("no {p} latency in wrk's report"))
    };
    let mut errors = 0;
    if let Some(socket) = after("Socket errors:") {
        // "connect 0, read 0, write 0, timeout 0"
        errors += socket
            .split(',')
            .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    if let Some(non_2xx) = after("Non-2xx or 3xx responses:") {
        errors += non_2xx.parse::<u64>().unwrap_or(u64::MAX);
    }
    Ok(Report {
        per_s,
        p50_us: percentile("50%")?,
        p99_us: percentile("99%")?,
        errors,
    })
}

/// "41.00us", "1.20ms", "2.00s" in microseconds.
fn duration_us(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|v| v * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// wrk 4.1's report, as printed for a run with errors.
    #[test]
    fn reads_wrks_report() {
        let text = "Running 2s test @ http://10.0.0.1:8081/\n  1 threads and 1 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency    52.04us  116.11us   4.06ms   99.46%\n    Req/Sec    10.33k   685.08    11.08k    71.43%\n  Latency Distribution\n     50%   41.00us\n     75%   47.00us\n     90%   63.00us\n     99%    1.18ms\n  21567 requests in 2.10s, 2.94MB read\n  Socket errors: connect 0, read 3, write 0, timeout 1\n  Non-2xx or 3xx responses: 2\nRequests/sec:  10271.45\nTransfer/sec:      1.40MB\n";
        let r = parse(text).expect("parsed");
        assert_eq!(r.per_s, 10271.45);
        assert_eq!(r.p50_us, 41.0);
        assert_eq!(r.p99_us, 1180.0);
        assert_eq!(r.errors, 6);
        assert!(parse("unable to connect to 10.0.0.1:8081 Connection refused\n").is_err());
    }
}
