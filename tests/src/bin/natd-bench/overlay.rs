//! Cross-host overlay: sandbox to sandbox on two hosts of one LAN, natd's overlay (etcd,
//! VXLAN devices and entries programmed by natd, natd's eBPF dataplane on both hosts)
//! against the same overlay built by hand with iproute2 (bridge, `ip link add type
//! vxlan ... nolearning proxy`, `bridge fdb append`, `ip neigh add`) and no NAT
//! programs. Reported as scenario `overlay`: modes `ebpf` and `nftables` are natd with that
//! dataplane, mode `baseline` the hand-built one. Interleaved like the other traffic runs.
use anyhow::{Context as _, Result, bail};
use natlab::{
    Background, Lab,
    lan::{host_ip, shared_lan},
    overlay::{Etcd, member_args},
    sh, wait_listening, wait_until,
};

use crate::{Invalid, Plan, Results, Sample, traffic};

const SUBNET: &str = "10.80.0.0/24";
const MTU: &str = "1450";

struct OverlayBed {
    mode: &'static str,
    _hosts: Vec<Lab>,
    _etcd: Option<Etcd>,
    _servers: Option<Background>,
    client_ns: String,
    server_ip: String,
}

fn server_script() -> String {
    let dir = natlab::natctl_bin()
        .parent()
        .expect("bin dir")
        .display()
        .to_string();
    format!(
        "PATH={dir}:$PATH; taskset -c 1 natd-loadgen serve 80 & taskset -c 1 iperf3 -s -p 5201 >/dev/null & wait"
    )
}

fn ip(args: &[&str]) -> Result<()> {
    let out = sh("ip", args);
    if !out.status.success() {
        bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// natd on both hosts with `dataplane` (`ebpf` or `nftables`).
fn natd_bed(dataplane: &'static str) -> Result<OverlayBed> {
    let mut hosts = shared_lan(2);
    let etcd = Etcd::start(&hosts[0].ext_ns, hosts[0].dir.clone());
    let mut args = member_args(20);
    args.extend(["--dataplane".to_string(), dataplane.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for host in &mut hosts {
        host.start_natd(&args)?;
        crate::beds::pin_natd(&host);
    }
    let (a, b) = (&hosts[0], &hosts[1]);
    a.ok(&["network", "create", "-d", "overlay", "--subnet", SUBNET, "ov"]);
    if !wait_until(std::time::Duration::from_secs(10), || {
        b.natctl(&["network", "inspect", "ov"]).status.success()
    }) {
        bail!("host B did not see the overlay network");
    }
    a.ok(&[
        "run",
        "--name",
        "srv",
        "--network",
        "ov",
        "--",
        "sh",
        "-c",
        &server_script(),
    ]);
    b.ok(&["run", "--name", "cli", "--network", "ov"]);
    let server_ip = a.sandbox_ip("srv");
    let client_ns = b.netns_of("cli");
    if !wait_listening(&a.netns_of("srv"), "tcp", 5201) {
        bail!("servers did not start");
    }
    Ok(OverlayBed {
        mode: dataplane,
        _hosts: hosts,
        _etcd: Some(etcd),
        _servers: None,
        client_ns,
        server_ip,
    })
}

/// The same overlay by hand: per host a bridge, a VXLAN device and a sandbox namespace.
fn hand_bed() -> Result<OverlayBed> {
    let mut hosts = shared_lan(2);
    let mut sandboxes = Vec::new();
    for (i, host) in hosts.iter_mut().enumerate() {
        let h = host.host_ns.clone();
        let sbx = host.add_netns("sbx")?;
        let addr = format!("10.80.0.{}/24", 2 + i);
        ip(&["-n", &h, "link", "add", "ovbr", "mtu", MTU, "type", "bridge"])?;
        ip(&[
            "-n",
            &h,
            "link",
            "add",
            "vx",
            "mtu",
            MTU,
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "4789",
            "local",
            &host_ip(i),
            "dev",
            "up0",
            "nolearning",
            "proxy",
        ])?;
        ip(&[
            "-n", &h, "link", "add", "vh", "mtu", MTU, "type", "veth", "peer", "name", "eth0", "netns", &sbx,
        ])?;
        for dev in ["vx", "vh"] {
            ip(&["-n", &h, "link", "set", dev, "master", "ovbr", "up"])?;
        }
        ip(&["-n", &h, "link", "set", "ovbr", "up"])?;
        ip(&["-n", &sbx, "link", "set", "eth0", "mtu", MTU, "up"])?;
        ip(&["-n", &sbx, "link", "set", "lo", "up"])?;
        ip(&["-n", &sbx, "addr", "add", &addr, "dev", "eth0"])?;
        let mac = sh(
            "ip",
            &["netns", "exec", &sbx, "cat", "/sys/class/net/eth0/address"],
        );
        sandboxes.push((sbx, String::from_utf8_lossy(&mac.stdout).trim().to_string()));
    }
    for (i, host) in hosts.iter().enumerate() {
        let j = 1 - i;
        let mac = &sandboxes[j].1;
        let out = sh(
            "ip",
            &[
                "netns",
                "exec",
                &host.host_ns,
                "bridge",
                "fdb",
                "append",
                mac,
                "dev",
                "vx",
                "dst",
                &host_ip(j),
            ],
        );
        if !out.status.success() {
            bail!("bridge fdb append: {}", String::from_utf8_lossy(&out.stderr));
        }
        ip(&[
            "-n",
            &host.host_ns,
            "neigh",
            "add",
            &format!("10.80.0.{}", 2 + j),
            "lladdr",
            mac,
            "dev",
            "vx",
            "nud",
            "permanent",
        ])?;
    }
    let servers = hosts[0].spawn_in(&sandboxes[0].0, &["sh", "-c", &server_script()]);
    let server_ns = format!("/run/netns/{}", sandboxes[0].0);
    if !wait_listening(&server_ns, "tcp", 5201) {
        bail!("servers did not start");
    }
    Ok(OverlayBed {
        mode: "baseline",
        client_ns: format!("/run/netns/{}", sandboxes[1].0),
        _hosts: hosts,
        _etcd: None,
        _servers: Some(servers),
        server_ip: "10.80.0.2".into(),
    })
}

fn measure(bed: &OverlayBed, plan: &Plan, rep: usize, results: &mut Results) {
    let target = format!("{}:80", bed.server_ip);
    let what = |kind: &str| format!("overlay {kind} {} rep {}", bed.mode, rep + 1);
    let v = traffic::loadgen(&bed.client_ns, "rr", &target, plan.secs);
    let (errors, ops) = (
        v["errors"].as_u64().unwrap_or(u64::MAX),
        v["ops"].as_u64().unwrap_or(0),
    );
    if errors > 0 || ops == 0 {
        results.invalid.push(Invalid {
            what: what("rr"),
            why: format!("{errors} client errors, {ops} operations"),
        });
    } else {
        for (metric, key) in [("rr_per_s", "per_s"), ("p50_us", "p50_us"), ("p99_us", "p99_us")] {
            results.samples.push(Sample::new("overlay", bed.mode, 1, metric, v[key].as_f64().unwrap_or(0.0)).rep(rep));
        }
    }
    match traffic::iperf(&bed.client_ns, &bed.server_ip, 5201, 1, plan.secs) {
        Ok(g) => results
            .samples
            .push(Sample::new("overlay", bed.mode, 1, "gbit_s", g).detail("1 stream(s)").rep(rep)),
        Err(why) => results.invalid.push(Invalid {
            what: what("iperf3"),
            why,
        }),
    }
}

fn signal_control(bed: &OverlayBed, signal: nix::sys::signal::Signal) {
    let mut pids: Vec<u32> = bed._hosts.iter().filter_map(|h| h.natd.as_ref().map(|n| n.child.id())).collect();
    pids.extend(bed._etcd.as_ref().and_then(Etcd::pid));
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
    }
}

pub fn run(plan: &Plan, results: &mut Results) -> Result<()> {
    let beds = [
        hand_bed().context("hand-built overlay")?,
        natd_bed("nftables").context("natd overlay, nftables")?,
        natd_bed("ebpf").context("natd overlay, ebpf")?,
    ];
    for rep in 0..plan.reps {
        for bed in &beds {
            eprintln!("  rep {} overlay {}", rep + 1, bed.mode);
            // Diagnostic: the datapath alone, without the control plane's background work.
            let pause = std::env::var_os("NATD_BENCH_PAUSE").is_some();
            if pause {
                signal_control(bed, nix::sys::signal::Signal::SIGSTOP);
            }
            measure(bed, plan, rep, results);
            if pause {
                signal_control(bed, nix::sys::signal::Signal::SIGCONT);
            }
        }
    }
    if std::env::var_os("NATD_BENCH_PAUSE").is_some() {
        results
            .notes
            .push("NATD_BENCH_PAUSE: natd and etcd were stopped (SIGSTOP) during each overlay measurement".into());
    }
    results.notes.push(
        "overlay: sandbox on host B to sandbox on host A across a VXLAN on a shared LAN (veth underlay); \
         `baseline` is the same overlay built by hand with iproute2 (static FDB and neighbour entries, no NAT \
         programs), `ebpf` and `nftables` are natd (etcd-coordinated) with that dataplane on both hosts"
            .into(),
    );
    Ok(())
}
