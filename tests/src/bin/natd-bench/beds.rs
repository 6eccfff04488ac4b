//! One throwaway topology per mode: an external client namespace, a host namespace (natd
//! started there with the mode's dataplane), a sandbox "srv" running the load generator's
//! server and iperf3, and `N` published ports in total.
use std::fmt::Write as _;

use anyhow::{Context as _, Result, bail};
use aya::{
    EbpfLoader,
    maps::Array,
    programs::{SchedClassifier, TcAttachType},
};
use nat_common::{
    BenchRoute,
    names::{map, program},
};
use natd::dataplane::{Desired, EndpointRule, ebpf::maps::MapWriter};
use natlab::{HOST_UPLINK_IP, Lab, bpf::PinDir, in_netns, sh, wait_listening};

/// The sandbox network's subnet (natd's default network), routed via the host in the
/// modes without NAT.
pub const SANDBOX_SUBNET: &str = "172.18.0.0/16";

pub struct Bed {
    pub mode: &'static str,
    pub lab: Lab,
    /// Where clients of the published port connect: address, CRR/RR port, iperf3 port.
    pub target: (String, u16, u16),
    /// Where wrk's clients connect (nginx in the sandbox).
    pub wrk_target: String,
    /// Published ports in all (the measured ones and the fillers).
    pub mappings: u32,
    /// Mode `iptables-random`: after how many of how many filler rules the measured
    /// mappings' rules are.
    pub rule_position: Option<(usize, usize)>,
    pub sandbox_ns: String,
    /// The host end of the sandbox's veth.
    pub sandbox_veth: String,
    /// The redirect-only programs of the `redirect` mode, detached on drop.
    pub _redirect: Option<RedirectPrograms>,
}

/// The host ports the sandbox "srv" publishes and what they reach in it: the load
/// generator's server, iperf3, nginx (`wrk`).
pub const MEASURED: [(u16, u16); 3] = [(8080, 80), (5201, 5201), (crate::wrk::PUBLISHED, crate::wrk::PORT)];

/// The client and server namespace `ns` (a path) ready for many short connections: the
/// port range widened, TIME_WAIT ports reused.
pub fn many_connections(ns: &str) {
    for (k, v) in [("net.ipv4.ip_local_port_range", "1024 65000"), ("net.ipv4.tcp_tw_reuse", "1")] {
        sh("nsenter", &[&format!("--net={ns}"), "sysctl", "-qw", &format!("{k}={v}")]);
    }
}

/// `arg` as one word of a `sh -c` script.
fn shell_quoted(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', "'\\''"))
}

/// Where the measured rules sit among Docker's `filler` rules in mode `iptables-random`:
/// drawn once per number of mappings (seeded, so a run can be repeated), stated in the
/// report's notes.
fn random_rule_position(fillers: usize) -> usize {
    fastrand::Rng::with_seed(0x6970_7461_626c ^ fillers as u64).usize(0..=fillers)
}

fn natd_dataplane(mode: &str) -> &'static str {
    match mode {
        "ebpf" => "ebpf",
        "nftables" => "nftables",
        _ => "none",
    }
}

/// Host ports for `count` filler mappings, avoiding the measured ones.
pub fn filler_ports(count: u32) -> Vec<u16> {
    (1..=65535u16)
        .filter(|p| !MEASURED.iter().any(|(host, _)| host == p))
        .take(count as usize)
        .collect()
}

/// Consecutive ports as ranges (one `-p A-B:A-B` each).
pub fn ranges(ports: &[u16]) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match out.last_mut() {
            Some(last) if last.1 + 1 == p => last.1 = p,
            _ => out.push((p, p)),
        }
    }
    out
}

/// `-p` arguments publishing `ports` one to one.
pub fn publish_args(ports: &[u16]) -> Vec<String> {
    ranges(ports)
        .into_iter()
        .flat_map(|(a, b)| ["-p".to_string(), format!("{a}-{b}:{a}-{b}")])
        .collect()
}

/// natd's CPU: 0, away from the traffic (CPU 1), every thread of it (later threads inherit
/// it from their creators).
pub fn pin_natd(lab: &Lab) {
    if let Some(pid) = lab.natd_pid() {
        let out = natlab::sh("taskset", &["-a", "-p", "-c", "0", &pid.to_string()]);
        if !out.status.success() {
            eprintln!("natd-bench: natd {pid} not pinned: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
}

/// CPU time natd's threads have run so far, in seconds (each thread's
/// `/proc/<pid>/task/<tid>/schedstat`, nanoseconds on the CPU: scheduler ticks of 10 ms
/// would read a 1 s run as 0 or 1 %). Threads that ended are not counted.
pub fn natd_cpu_s(lab: &Lab) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", lab.natd_pid()?)).ok()?;
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Some(ns as f64 / 1e9)
}

pub fn bed(mode: &'static str, mappings: u32) -> Result<Bed> {
    let mut lab = Lab::new()?;
    lab.start_natd(&["--dataplane", natd_dataplane(mode)])?;
    pin_natd(&lab);
    let nginx: Vec<String> = crate::wrk::nginx_command(&lab.dir, crate::wrk::PORT)?
        .iter()
        .map(|arg| shell_quoted(arg))
        .collect();
    let server = format!(
        "taskset -c 1 natd-loadgen serve 80 & taskset -c 1 iperf3 -s -p 5201 >/dev/null & {} & wait",
        nginx.join(" ")
    );
    let loadgen_dir = natlab::natctl_bin()
        .parent()
        .expect("bin dir")
        .display()
        .to_string();
    let script = format!("PATH={loadgen_dir}:$PATH; {server}");
    let mut args: Vec<String> = vec!["run".into(), "--name".into(), "srv".into()];
    for (host, sandbox) in MEASURED {
        args.extend(["-p".into(), format!("{host}:{sandbox}")]);
    }
    args.extend(["--".into(), "sh".into(), "-c".into(), script]);
    lab.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let view = lab.json(&["inspect", "srv"]);
    let sandbox_ns = view["netns"].as_str().context("sandbox netns")?.to_string();
    let endpoint = &view["endpoints"][0];
    let sandbox_ip = endpoint["ipv4"].as_str().context("sandbox address")?.to_string();
    let sandbox_veth = endpoint["host_ifname"].as_str().context("host veth")?.to_string();
    let filler = filler_ports(mappings.saturating_sub(MEASURED.len() as u32));
    let mut rule_position = None;
    match mode {
        "nftables" | "ebpf" if !filler.is_empty() => {
            let mut args = vec!["run".to_string(), "--name".into(), "filler".into()];
            args.extend(publish_args(&filler));
            lab.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        "iptables" => docker_rules(&lab, &lab.bridge.clone(), &sandbox_ip, &filler, filler.len())?,
        "iptables-random" => {
            let position = random_rule_position(filler.len());
            rule_position = Some((position, filler.len()));
            docker_rules(&lab, &lab.bridge.clone(), &sandbox_ip, &filler, position)?
        }
        _ => {}
    }
    for ns in [lab.ext_path(), sandbox_ns.clone()] {
        many_connections(&ns);
    }
    let routed = matches!(mode, "baseline" | "redirect");
    if routed {
        lab.ext(&["ip", "route", "add", SANDBOX_SUBNET, "via", HOST_UPLINK_IP]);
    }
    let redirect = if mode == "redirect" {
        let bridge = lab.bridge.clone();
        Some(attach_redirect(&lab, sandbox_ip.parse()?, &sandbox_veth, endpoint, &bridge)?)
    } else {
        None
    };
    let (target, wrk_target) = if routed {
        ((sandbox_ip.clone(), 80, 5201), format!("{sandbox_ip}:{}", crate::wrk::PORT))
    } else {
        (
            (HOST_UPLINK_IP.to_string(), 8080, 5201),
            format!("{HOST_UPLINK_IP}:{}", crate::wrk::PUBLISHED),
        )
    };
    for (_, port) in MEASURED {
        if !wait_listening(&sandbox_ns, "tcp", port) {
            bail!("the sandbox's server on port {port} did not start in {mode}");
        }
    }
    Ok(Bed {
        mode,
        lab,
        target,
        wrk_target,
        mappings,
        rule_position,
        sandbox_ns,
        sandbox_veth,
        _redirect: redirect,
    })
}

/// Docker's rules for the default bridge (nat DOCKER chain from PREROUTING and OUTPUT,
/// MASQUERADE, filter DOCKER/isolation chains), with the measured mappings after the
/// first `position` filler mappings (last: `filler.len()`).
pub fn docker_rules(lab: &Lab, bridge: &str, sandbox: &str, filler: &[u16], position: usize) -> Result<()> {
    let mut nat = format!(
        "*nat\n:DOCKER - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A POSTROUTING -s 172.18.0.0/16 ! -o {bridge} -j MASQUERADE\n-A DOCKER -i {bridge} -j RETURN\n"
    );
    let mut filter = format!(
        "*filter\n:DOCKER - [0:0]\n:DOCKER-ISOLATION-STAGE-1 - [0:0]\n:DOCKER-ISOLATION-STAGE-2 - [0:0]\n\
         -A FORWARD -j DOCKER-ISOLATION-STAGE-1\n\
         -A FORWARD -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A FORWARD -o {bridge} -j DOCKER\n-A FORWARD -i {bridge} ! -o {bridge} -j ACCEPT\n\
         -A FORWARD -i {bridge} -o {bridge} -j ACCEPT\n\
         -A DOCKER-ISOLATION-STAGE-1 -i {bridge} ! -o {bridge} -j DOCKER-ISOLATION-STAGE-2\n\
         -A DOCKER-ISOLATION-STAGE-1 -j RETURN\n-A DOCKER-ISOLATION-STAGE-2 -o {bridge} -j DROP\n\
         -A DOCKER-ISOLATION-STAGE-2 -j RETURN\n"
    );
    // Docker's two rules of one published port: the DNAT and the filter's ACCEPT.
    let mut mapping = |host_port: u16, target: &str, target_port: u16| {
        let _ = writeln!(
            nat,
            "-A DOCKER ! -i {bridge} -p tcp -m tcp --dport {host_port} -j DNAT --to-destination {target}:{target_port}"
        );
        let _ = writeln!(
            filter,
            "-A DOCKER -d {target}/32 ! -i {bridge} -o {bridge} -p tcp -m tcp --dport {target_port} -j ACCEPT"
        );
    };
    let (before, after) = filler.split_at(position.min(filler.len()));
    for &p in before {
        mapping(p, "172.18.255.254", p);
    }
    for (host_port, sandbox_port) in MEASURED {
        mapping(host_port, sandbox, sandbox_port);
    }
    for &p in after {
        mapping(p, "172.18.255.254", p);
    }
    let path = lab.dir.join("docker.rules");
    std::fs::write(&path, format!("{nat}COMMIT\n{filter}COMMIT\n"))?;
    let out = sh(
        "sh",
        &[
            "-c",
            &format!(
                "ip netns exec {} iptables-restore --noflush < {}",
                lab.host_ns,
                path.display()
            ),
        ],
    );
    if !out.status.success() {
        bail!("iptables-restore: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// natd's redirect-only programs on the uplink's ingress and the sandbox veth's ingress:
/// packets to the sandbox go into it with `bpf_redirect_peer`, packets out of it straight
/// to the uplink, without NAT or tracking. Loaded from natd's object with scratch pins.
pub struct RedirectPrograms {
    _ebpf: aya::Ebpf,
    _pin: PinDir,
}

fn mac_of(lab: &Lab, ns: &str, dev: &str) -> Result<[u8; 6]> {
    let out = lab.in_ns(ns, &["ip", "-j", "link", "show", "dev", dev]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j link")?;
    natd_mac(json[0]["address"].as_str().context("MAC")?)
}

/// The redirect-only programs of `addr`'s family, for the sandbox `addr` behind `veth` on
/// `bridge`.
pub fn attach_redirect(
    lab: &Lab,
    addr: std::net::IpAddr,
    veth: &str,
    endpoint: &serde_json::Value,
    bridge: &str,
) -> Result<RedirectPrograms> {
    let sandbox_mac = natd_mac(endpoint["mac"].as_str().context("sandbox MAC")?)?;
    let bridge_mac = mac_of(lab, &lab.host_ns, bridge)?;
    let uplink_mac = mac_of(lab, &lab.host_ns, "up0")?;
    let ext_mac = mac_of(lab, &lab.ext_ns, "lan0")?;
    let programs = if addr.is_ipv4() {
        [program::BENCH_REDIRECT_INGRESS, program::BENCH_REDIRECT_SANDBOX]
    } else {
        [program::BENCH_REDIRECT_INGRESS6, program::BENCH_REDIRECT_SANDBOX6]
    };
    let veth = veth.to_string();
    in_netns(&lab.host_path(), move || -> Result<RedirectPrograms> {
        let pin = PinDir::create("natd-bench-redirect")?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin.0)
            .load(natd::EBPF_OBJECT)?;
        let index =
            |name: &str| nix::net::if_::if_nametoindex(name).with_context(|| format!("ifindex of {name}"));
        let desired = Desired {
            endpoints: vec![EndpointRule {
                addr,
                host_ifindex: index(&veth)?,
                network_id: 1,
                mac: sandbox_mac,
                gw_mac: bridge_mac,
                mtu: 1500,
            }],
            ..Default::default()
        };
        MapWriter::default().write(&mut ebpf, &desired)?;
        let mut route: Array<_, BenchRoute> =
            Array::try_from(ebpf.map_mut(map::BENCH_ROUTE).context("route map")?)?;
        route.set(
            0,
            BenchRoute {
                ifindex: index("up0")?,
                smac: uplink_mac,
                dmac: ext_mac,
            },
            0,
        )?;
        for (name, dev) in [(programs[0], "up0"), (programs[1], veth.as_str())] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).context("program")?.try_into()?;
            p.load()?;
            p.attach(dev, TcAttachType::Ingress)
                .with_context(|| format!("attach {name} to {dev}"))?;
        }
        Ok(RedirectPrograms {
            _ebpf: ebpf,
            _pin: pin,
        })
    })
}

/// `aa:bb:cc:dd:ee:ff`.
fn natd_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    bytes.try_into().map_err(|_| anyhow::anyhow!("MAC {text}"))
}
