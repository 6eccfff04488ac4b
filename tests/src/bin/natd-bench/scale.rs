//! The control plane at host scale: what one request costs with many sandboxes, mappings
//! and flows present, with housekeeping at its default interval (5 s) all along.
//! - `run -p` and `rm` through the API at the first sandboxes and at `sandboxes`;
//! - with `mappings` published and `flows` tracked: publishing one port (p99), a read
//!   request sampled across several housekeeping ticks (p99 and max), a 10,000-port range
//!   published in one request, a `/metrics` scrape;
//! - natd's resident memory and its maps' kernel memory at that size;
//! - a restart (SIGTERM, start) until the API answers, and the tracked flows after it.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use natd::{
    api::{PortsRequest, RunRequest, SandboxView, paths},
    client::Client,
};
use natlab::Lab;

use crate::{Plan, Results, Sample, control};

const METRICS_PORT: u16 = 9323;
/// Served on every address of the lab's host and scraped from its LAN: with every TCP
/// port published, the host itself has no ephemeral port left to connect from.
const METRICS: &str = "0.0.0.0:9323";
/// Samples of the small-size and full-size rows (paired by their order).
pub const PAIRED: usize = 20;
/// Samples of natd's RSS at full size (the target is judged on their median).
const RSS_SAMPLES: usize = 5;
/// Where the 10,000-port range goes (UDP): kept free of the fillers.
const RANGE: (u16, u16) = (55_000, 64_999);

struct Api {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl Api {
    fn new(lab: &Lab) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Self {
            runtime,
            client: Client::new(&lab.socket),
        })
    }

    /// `natctl run --name NAME -p 80` (a random host port); ms.
    fn run(&self, name: &str, publish: Vec<String>) -> Result<f64> {
        let body = RunRequest {
            name: name.to_string(),
            publish,
            ..Default::default()
        };
        let t0 = Instant::now();
        let _: SandboxView = self
            .runtime
            .block_on(self.client.post(paths::SANDBOXES, &body))
            .with_context(|| format!("run {name}"))?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }

    fn rm(&self, name: &str) -> Result<f64> {
        let t0 = Instant::now();
        self.runtime
            .block_on(self.client.delete(&paths::with_name(paths::SANDBOX, name)))
            .with_context(|| format!("rm {name}"))?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }

    fn publish(&self, name: &str, ports: Vec<String>) -> Result<f64> {
        let t0 = Instant::now();
        let _: SandboxView = self
            .runtime
            .block_on(self.client.post(&paths::with_name(paths::SANDBOX_PORTS, name), &PortsRequest { ports }))
            .with_context(|| format!("publish on {name}"))?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }

    fn inspect(&self, name: &str) -> Result<f64> {
        let t0 = Instant::now();
        let _: SandboxView = self
            .runtime
            .block_on(self.client.get(&paths::with_name(paths::SANDBOX, name)))
            .with_context(|| format!("inspect {name}"))?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }

    fn used_host_ports(&self, names: &[String]) -> Result<std::collections::HashSet<(u16, bool)>> {
        let mut used = std::collections::HashSet::new();
        for name in names {
            let view: SandboxView = self
                .runtime
                .block_on(self.client.get(&paths::with_name(paths::SANDBOX, name)))?;
            for p in &view.sandbox.ports {
                used.insert((p.host_port, p.proto == natd::portspec::Proto::Udp));
            }
        }
        Ok(used)
    }
}

/// `-p A-B:A-B[/udp]` for consecutive runs of `ports`.
fn range_args(ports: &[u16], udp: bool) -> Vec<String> {
    crate::beds::ranges(ports)
        .into_iter()
        .flat_map(|(a, b)| ["-p".to_string(), format!("{a}-{b}:{a}-{b}{}", if udp { "/udp" } else { "" })])
        .collect()
}

/// The detail of the rows measured right after the first start (defaults, the default
/// IPv4 network, nothing running).
pub const AT_START: &str = "at start: defaults, one IPv4 network";

pub fn run(plan: &Plan, results: &mut Results) -> Result<()> {
    let (sandboxes, mappings, flows) = plan.host_scale;
    let mut lab = Lab::new()?;
    lab.start_natd(&["--dataplane", "ebpf", "--metrics-addr", METRICS])?;
    let api = Api::new(&lab)?;
    let s = &mut results.samples;
    let row = |metric: &'static str, n: u32, value: f64, detail: &str, rep: usize| {
        Sample::new("scale", "ebpf", n, metric, value).detail(detail).rep(rep)
    };
    let (_, map_mib) = control::natd_memory(&lab);
    s.push(row("map_mib", 0, map_mib, AT_START, 0));
    results.notes.push(format!("scale: map memory at start, by map (KiB): {}", map_breakdown(&lab)));
    let publish_one = || vec!["80".to_string()];
    // The first sandboxes, and `rm` at that size (the removed ones come back).
    let mut names: Vec<String> = (0..sandboxes).map(|i| format!("s{i}")).collect();
    for (i, name) in names.iter().take(2 * PAIRED).enumerate() {
        let ms = api.run(name, publish_one())?;
        if i < PAIRED {
            s.push(row("run_ms", sandboxes, ms, "first sandboxes", i));
        }
    }
    for (i, name) in names[PAIRED..2 * PAIRED].iter().enumerate() {
        s.push(row("rm_ms", sandboxes, api.rm(name)?, "first sandboxes", i));
    }
    for name in &names[PAIRED..2 * PAIRED] {
        api.run(name, publish_one())?;
    }
    let last = names.len() - PAIRED;
    let t0 = Instant::now();
    for name in &names[2 * PAIRED..last] {
        api.run(name, publish_one())?;
    }
    eprintln!("   {} sandboxes in {:.0} s", last, t0.elapsed().as_secs_f64());
    for (i, name) in names[last..].iter().enumerate() {
        s.push(row("run_ms", sandboxes, api.run(name, publish_one())?, "at full size", i));
    }
    for (i, name) in names[last..].iter().enumerate() {
        s.push(row("rm_ms", sandboxes, api.rm(name)?, "at full size", i));
    }
    for name in &names[last..] {
        api.run(name, publish_one())?;
    }
    // Fillers: every TCP port the sandboxes left free, then UDP ports up to `mappings`
    // (the 10,000-port range and the published ones measured below kept free).
    let used = api.used_host_ports(&names)?;
    let tcp: Vec<u16> = (1..=65535u16)
        .filter(|p| !used.contains(&(*p, false)) && *p != METRICS_PORT)
        .take((mappings - sandboxes) as usize)
        .collect();
    let udp_wanted = (mappings as usize).saturating_sub(tcp.len() + sandboxes as usize);
    let udp: Vec<u16> = (1..RANGE.0 - 1000)
        .filter(|p| !used.contains(&(*p, true)))
        .take(udp_wanted)
        .collect();
    let mut args = vec!["run".to_string(), "--name".into(), "filler".into()];
    args.extend(range_args(&tcp, false));
    args.extend(range_args(&udp, true));
    let t0 = Instant::now();
    lab.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let present = (tcp.len() + udp.len()) as u32 + sandboxes;
    eprintln!("   {present} mappings published in {:.1} s", t0.elapsed().as_secs_f64());
    control::fill_conntrack(&lab, flows)?;
    names.push("filler".into());
    let size = format!("{sandboxes} sandboxes, {present} mappings, {flows} flow entries");
    // Publishing one port at a time (UDP, above the fillers), paced so the samples span
    // several housekeeping ticks.
    let publishes = plan.control_samples;
    for i in 0..publishes {
        let port = RANGE.0 - 1000 + i as u16;
        s.push(row("publish_ms", present, api.publish("s0", vec![format!("{port}:80/udp")])?, &size, i));
        std::thread::sleep(Duration::from_millis(60));
    }
    // A read request every 10 ms for three ticks: what any API call waits behind.
    let started = Instant::now();
    let (mut reads, mut slowest) = (0, 0.0f64);
    while started.elapsed() < Duration::from_secs(15) {
        let ms = api.inspect("s1")?;
        slowest = slowest.max(ms);
        s.push(row("read_ms", present, ms, &size, reads));
        reads += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    // The worst wait: a tick holding the lock shows here first.
    s.push(row("read_max_ms", present, slowest, &size, 0));
    // `run -p` and `rm` again with the mappings and flows present (UDP: the fillers may hold
    // every free TCP port).
    for i in 0..PAIRED {
        let name = format!("late{i}");
        let ms = api.run(&name, vec!["80/udp".to_string()])?;
        s.push(row("run_ms", sandboxes, ms, "with mappings and flows", i));
    }
    for i in 0..PAIRED {
        s.push(row("rm_ms", sandboxes, api.rm(&format!("late{i}"))?, "with mappings and flows", i));
    }
    let range = format!("{}-{}:{}-{}/udp", RANGE.0, RANGE.1, RANGE.0, RANGE.1);
    s.push(row("range_publish_ms", present, api.publish("s1", vec![range])?, &size, 0));
    for i in 0..5 {
        let (ms, bytes, series) = scrape(&lab)?;
        s.push(row("scrape_ms", present, ms, &size, i));
        if i == 0 {
            s.push(row("scrape_kib", present, bytes as f64 / 1024.0, &size, 0));
            s.push(row("scrape_series", present, series as f64, &size, 0));
        }
    }
    // Five samples a second apart, across a housekeeping tick (whose batched reads hold
    // memory for a moment): the target is judged on their median, not on one moment.
    let (rss_mib, map_mib) = control::natd_memory(&lab);
    s.push(row("rss_mib", present, rss_mib, &size, 0));
    for i in 1..RSS_SAMPLES {
        std::thread::sleep(Duration::from_secs(1));
        s.push(row("rss_mib", present, control::natd_memory(&lab).0, &size, i));
    }
    s.push(row("map_mib", present, map_mib, &size, 0));
    results.notes.push(format!("scale: map memory at full size, by map (KiB): {}", map_breakdown(&lab)));
    // Restart: SIGTERM, start, until the API answers; the flows are still there.
    let before = control::tracked(&lab)?;
    if before < u64::from(flows / 2 * 2) {
        bail!("only {before} of the {flows} synthetic flow entries are tracked before the restart: the figures at full size are not");
    }
    lab.stop_natd(nix::sys::signal::Signal::SIGTERM);
    let t0 = Instant::now();
    lab.restart_natd()?;
    let ready = t0.elapsed().as_secs_f64() * 1e3;
    let after = control::tracked(&lab)?;
    s.push(row("restart_ready_ms", present, ready, &size, 0));
    s.push(row("restart_flows_lost", present, before.saturating_sub(after) as f64, &size, 0));
    results.notes.push(format!(
        "scale: {sandboxes} sandboxes (each `run -p 80` through the API), then {present} published mappings and \
         {flows} connection-table entries of synthetic established flows (two per flow, one each way); housekeeping at its default 5 s interval \
         throughout; read_ms: `inspect` every 10 ms for 15 s; restart_ready_ms polls `natctl info` every 50 ms"
    ));
    Ok(())
}

/// The kernel memory of each map natd pinned, largest first, as `natctl stats` reports it
/// (the kernel's `memlock` of each map).
fn map_breakdown(lab: &Lab) -> String {
    let memory: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(lab.json(&["stats"])["map_memory"].clone()).unwrap_or_default();
    let mut by_size: Vec<(String, u64)> = memory.into_iter().filter(|(_, b)| *b >= 64 * 1024).collect();
    by_size.sort_by(|a, b| b.1.cmp(&a.1));
    by_size
        .iter()
        .map(|(name, bytes)| format!("{name} {}", bytes / 1024))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One `/metrics` scrape from the lab's LAN: ms, bytes, series.
fn scrape(lab: &Lab) -> Result<(f64, usize, usize)> {
    natlab::in_netns(&lab.ext_path(), || -> Result<(f64, usize, usize)> {
        let t0 = Instant::now();
        let mut stream = TcpStream::connect((natlab::HOST_UPLINK_IP, METRICS_PORT))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: natd\r\nConnection: close\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if !body.starts_with("HTTP/1.1 200") {
            bail!("metrics scrape: {}", body.lines().next().unwrap_or(""));
        }
        let series = body.lines().filter(|l| !l.starts_with('#') && l.contains(' ')).count();
        Ok((ms, body.len(), series))
    })
}
