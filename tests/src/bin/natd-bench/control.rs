//! The control plane: publishing one more port through natd's API with `N` present,
//! timed until the first connection through it is answered, with an empty connection
//! table and with a full one (natd's sync must not walk it); the same addition with
//! libnftables and with the iptables command; natd's memory.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, Map, MapData};
use nat_common::{Ct4Entry, Ct4Key, names::map};
use natd::{
    api::{PortsRequest, SandboxView, paths},
    client::Client,
};
use natlab::{HOST_UPLINK_IP, Lab, sh, wait_listening};

use crate::{
    Plan, Results, Sample,
    beds::{docker_rules, filler_ports, publish_args},
};

pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    if values.is_empty() {
        return 0.0;
    }
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// One answered exchange with the load generator's server, within `deadline`.
fn answered(addr: SocketAddr, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut byte = [1u8];
            if s.write_all(&byte).is_ok() && s.read_exact(&mut byte).is_ok() {
                return true;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

/// A thread that lives in the external namespace and answers "was this address
/// answered?" (entering the namespace per sample would be timed too).
struct Prober {
    ask: std::sync::mpsc::Sender<(SocketAddr, Instant)>,
    answer: std::sync::mpsc::Receiver<bool>,
}

impl Prober {
    fn new(ns_path: String) -> Self {
        let (ask, questions) = std::sync::mpsc::channel::<(SocketAddr, Instant)>();
        let (answers, answer) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&ns_path).expect("external namespace");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            for (addr, deadline) in questions {
                if answers.send(answered(addr, deadline)).is_err() {
                    break;
                }
            }
        });
        Self { ask, answer }
    }

    fn answered(&self, addr: SocketAddr, deadline: Instant) -> bool {
        self.ask.send((addr, deadline)).is_ok() && self.answer.recv().unwrap_or(false)
    }
}

/// Per sample: (API call µs, API call until the first answered connection µs).
fn publish_latency(lab: &Lab, first_port: u16, samples: usize) -> Result<Vec<(f64, f64)>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Client::new(&lab.socket);
    let prober = Prober::new(lab.ext_path());
    let path = paths::with_name(paths::SANDBOX_PORTS, "srv");
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let port = first_port + i as u16;
        let body = PortsRequest {
            ports: vec![format!("{port}:80")],
        };
        let addr: SocketAddr = format!("{HOST_UPLINK_IP}:{port}").parse()?;
        let t0 = Instant::now();
        let _: SandboxView = runtime
            .block_on(client.post(&path, &body))
            .context("publish through the API")?;
        let api = t0.elapsed();
        if !prober.answered(addr, t0 + Duration::from_secs(3)) {
            bail!("port {port} was published but never answered");
        }
        out.push((api.as_secs_f64() * 1e6, t0.elapsed().as_secs_f64() * 1e6));
    }
    Ok(out)
}

/// `count` entries (`count / 2` established TCP flows, both directions each) written
/// straight into natd's pinned connection table. They belong to no mapping; as complete,
/// established flows they live for the established timeout (an entry without its other
/// direction is expired by natd's next pass, as the remains of a refused insert).
pub fn fill_conntrack(lab: &Lab, count: u32) -> Result<()> {
    let pin = lab.bpffs.join("maps").join(map::CT4);
    let data = MapData::from_pin(&pin).with_context(|| format!("open {}", pin.display()))?;
    let mut table: HashMap<MapData, Ct4Key, Ct4Entry> = HashMap::try_from(Map::HashMap(data))?;
    let now = natd::dataplane::ebpf::conntrack::now_ticks();
    let established = nat_common::ct::TCP_SYN | nat_common::ct::TCP_SYNACK | nat_common::ct::TCP_ESTABLISHED;
    for i in 0..count / 2 {
        let key = Ct4Key {
            src: u32::from_be_bytes([10, 200, (i >> 8) as u8, i as u8]).to_be(),
            dst: u32::from_be_bytes([203, 0, 113, 200]).to_be(),
            sport: ((1024 + i / 65536) as u16).to_be(),
            dport: 443u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let entry = Ct4Entry {
            src: key.src,
            dst: key.dst,
            sport: key.sport,
            dport: key.dport,
            kind: nat_common::ct::SNAT_FORWARD,
            tcp: established,
            gen_slot: u32::MAX,
            last_seen: now,
            ..Default::default()
        };
        let reply = Ct4Entry {
            src: key.dst,
            dst: key.src,
            sport: key.dport,
            dport: key.sport,
            kind: nat_common::ct::SNAT_REPLY,
            ..entry
        };
        table.insert(key, entry, 0)?;
        table.insert(key.peer(&entry), reply, 0)?;
    }
    Ok(())
}

pub fn run(plan: &Plan, mappings: u32, results: &mut Results) -> Result<()> {
    let samples = plan.control_samples;
    let mut lab = Lab::new()?;
    lab.start_natd(&["--dataplane", "ebpf", "--gc-interval", "3600"])?;
    let loadgen_dir = natlab::natctl_bin()
        .parent()
        .expect("bin dir")
        .display()
        .to_string();
    lab.ok(&[
        "run",
        "--name",
        "srv",
        "--",
        "sh",
        "-c",
        &format!("PATH={loadgen_dir}:$PATH; natd-loadgen serve 80"),
    ]);
    let fillers = filler_ports(mappings.saturating_sub(1));
    let mut args = vec!["run".to_string(), "--name".into(), "filler".into()];
    args.extend(publish_args(&fillers));
    let t0 = Instant::now();
    lab.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let load_s = t0.elapsed().as_secs_f64();
    if !wait_listening(&lab.netns_of("srv"), "tcp", 80) {
        bail!("the control bench's server did not start");
    }
    let first = fillers.last().copied().unwrap_or(1).max(20000) + 1;
    let empty = publish_latency(&lab, first, samples)?;
    fill_conntrack(&lab, plan.control_flows)?;
    let full = publish_latency(&lab, first + samples as u16, samples)?;
    let s = &mut results.samples;
    s.push(Sample::new("control", "ebpf", mappings, "load_s", load_s));
    let flows = format!("{} flow entries", plan.control_flows);
    for (rows, detail) in [(&empty, "0 flows"), (&full, flows.as_str())] {
        let api: Vec<f64> = rows.iter().map(|r| r.0).collect();
        let first_answer: Vec<f64> = rows.iter().map(|r| r.1).collect();
        for (metric, q, values) in [
            ("api_us_p50", 0.5, &api),
            ("api_us_p99", 0.99, &api),
            ("add_us_p50", 0.5, &first_answer),
            ("add_us_p99", 0.99, &first_answer),
        ] {
            let value = percentile(&mut values.clone(), q);
            s.push(Sample::new("control", "ebpf", mappings, metric, value).detail(detail));
        }
    }
    drop(lab);
    nft_and_iptables(mappings, samples, results)
}

/// The same addition with the tools natd replaces: an element added to an nftables map
/// with N elements (libnftables, as natd's fallback does), a rule appended to Docker's
/// DOCKER chain with N rules (the iptables command, as Docker does).
fn nft_and_iptables(mappings: u32, samples: usize, results: &mut Results) -> Result<()> {
    let (load_s, mut adds) = std::thread::spawn(move || nft_latency(mappings, samples))
        .join()
        .map_err(|_| anyhow::anyhow!("thread panicked"))??;
    let s = &mut results.samples;
    s.push(Sample::new("control", "nftables", mappings, "load_s", load_s));
    s.push(
        Sample::new(
            "control",
            "nftables",
            mappings,
            "add_us_p50",
            percentile(&mut adds, 0.5),
        )
        .detail("0 flows"),
    );
    s.push(
        Sample::new(
            "control",
            "nftables",
            mappings,
            "add_us_p99",
            percentile(&mut adds, 0.99),
        )
        .detail("0 flows"),
    );
    let lab = Lab::new()?;
    let t0 = Instant::now();
    let filler = filler_ports(mappings);
    docker_rules(&lab, "br0", "172.18.0.2", &filler, filler.len())?;
    s.push(Sample::new(
        "control",
        "iptables",
        mappings,
        "load_s",
        t0.elapsed().as_secs_f64(),
    ));
    let mut adds = Vec::new();
    for i in 0..samples {
        let port = (60000 + i).to_string();
        let t0 = Instant::now();
        let rule = [
            "iptables",
            "-t",
            "nat",
            "-A",
            "DOCKER",
            "!",
            "-i",
            "br0",
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            &port,
            "-j",
            "DNAT",
            "--to-destination",
            "172.18.0.2:80",
        ];
        if lab.host(&rule).status.success() {
            adds.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    s.push(
        Sample::new(
            "control",
            "iptables",
            mappings,
            "add_us_p50",
            percentile(&mut adds, 0.5),
        )
        .detail("0 flows"),
    );
    s.push(
        Sample::new(
            "control",
            "iptables",
            mappings,
            "add_us_p99",
            percentile(&mut adds, 0.99),
        )
        .detail("0 flows"),
    );
    Ok(())
}

fn nft_latency(mappings: u32, samples: usize) -> Result<(f64, Vec<f64>)> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
    let mut nft = natd::sys::nft::Nft::new(false)?;
    nft.run("table ip bench {\n map ports_any { type inet_proto . inet_service : ipv4_addr . inet_service; counter; }\n}\n")?;
    let elements: Vec<String> = filler_ports(mappings)
        .iter()
        .map(|p| format!("tcp . {p} : 172.18.0.2 . 80"))
        .collect();
    let t0 = Instant::now();
    nft.run(&format!(
        "add element ip bench ports_any {{ {} }}",
        elements.join(", ")
    ))?;
    let load = t0.elapsed().as_secs_f64();
    let mut adds = Vec::new();
    for i in 0..samples {
        let t0 = Instant::now();
        nft.run(&format!(
            "add element ip bench ports_any {{ udp . {} : 172.18.0.3 . 80 }}",
            1000 + i
        ))?;
        adds.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Ok((load, adds))
}

/// natd's resident memory with many mappings and sandboxes, and its maps' kernel memory.
pub fn memory(mappings: u32, sandboxes: u32, results: &mut Results) -> Result<()> {
    let mut lab = Lab::new()?;
    lab.start_natd(&["--dataplane", "ebpf", "--gc-interval", "3600"])?;
    for i in 0..sandboxes {
        lab.ok(&["run", "--name", &format!("s{i}")]);
    }
    let mut args = vec!["run".to_string(), "--name".into(), "filler".into()];
    args.extend(publish_args(&filler_ports(mappings)));
    lab.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (rss_mib, map_mib) = natd_memory(&lab);
    let s = &mut results.samples;
    s.push(
        Sample::new("control", "ebpf", mappings, "rss_mib", rss_mib)
            .detail(format!("{sandboxes} sandboxes")),
    );
    s.push(Sample::new("control", "ebpf", mappings, "map_kib", map_mib * 1024.0));
    Ok(())
}

/// natd's resident memory and the kernel memory of the maps pinned under its bpffs
/// directory, MiB.
pub fn natd_memory(lab: &Lab) -> (f64, f64) {
    let pid = lab.natd.as_ref().map(|n| n.child.id()).unwrap_or(0);
    // natd runs under nsenter: its child is the real process.
    let natd_pid = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|c| c.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| pid.to_string());
    let status = std::fs::read_to_string(format!("/proc/{natd_pid}/status")).unwrap_or_default();
    let rss_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    // natd's own maps: the ones pinned under this instance's bpffs directory.
    let maps = sh("bpftool", &["-j", "map", "show"]);
    let pinned: Vec<u64> = std::fs::read_dir(lab.bpffs.join("maps"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let out = sh("bpftool", &["-j", "map", "show", "pinned", e.path().to_str()?]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()?["id"].as_u64()
        })
        .collect();
    let map_kib: f64 = serde_json::from_slice::<serde_json::Value>(&maps.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|m| m["id"].as_u64().is_some_and(|id| pinned.contains(&id)))
        .map(|m| m["bytes_memlock"].as_f64().unwrap_or(0.0) / 1024.0)
        .sum();
    (rss_kib / 1024.0, map_kib / 1024.0)
}

/// Entries in natd's pinned IPv4 connection table.
pub fn tracked(lab: &Lab) -> Result<u64> {
    let pin = lab.bpffs.join("maps").join(map::CT4);
    let data = MapData::from_pin(&pin).with_context(|| format!("open {}", pin.display()))?;
    let table: HashMap<MapData, Ct4Key, Ct4Entry> = HashMap::try_from(Map::HashMap(data))?;
    Ok(table.keys().count() as u64)
}
