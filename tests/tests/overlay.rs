//! Overlay networks across hosts: three natd hosts on one LAN, a real etcd on it. A
//! network created on one host exists on all; sandboxes on different hosts share its
//! subnet with unique addresses and reach each other by address through VXLAN (their
//! packets cross the LAN only inside it: encapsulated, not encrypted); isolation between overlays and from
//! bridge networks; masquerade and published ports per host; a host that joins late sees
//! everything; the store restarting loses nothing; a dead host's sandboxes leave the
//! others' forwarding tables within the TTL.
use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use natlab::{
    EXT_IP, HOST_UPLINK_IP, Lab,
    lan::{host_ip, shared_lan},
    overlay::{Etcd, fdb, member_args, vxlan_of},
    sh, wait_listening, wait_until,
};

const TTL: u64 = 3;
/// `--cluster-claim-grace`: how long a vanished host keeps its address claims.
const GRACE: u64 = 6;
/// How long a change in the store may take to reach the other hosts' kernels.
const CONVERGE: Duration = Duration::from_secs(10);

fn from_sandbox(lab: &Lab, name: &str, addr: &str, port: u16) -> Option<String> {
    lab.tcp_line_from(name, addr, port)
}

fn networks(lab: &Lab) -> Vec<String> {
    lab.json(&["network", "ls"])
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn mac_of(lab: &Lab, sandbox: &str) -> String {
    lab.json(&["inspect", sandbox])["endpoints"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string()
}

fn server(lab: &Lab, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["--network", "ov1"];
    args.extend_from_slice(extra);
    lab.run_script(name, &args, &natlab::whoami(80));
    assert!(wait_listening(&lab.netns_of(name), "tcp", 80));
    lab.sandbox_ip(name)
}

#[test]
fn overlay_needs_a_cluster_store() {
    let lab = Lab::started(&[]);
    let err = lab.fails(&["network", "create", "-d", "overlay", "ov"]);
    assert!(err.contains("overlay networks need a cluster store"), "{err}");
    // A bad store URL is a configuration error naming the key, before anything is touched.
    let out = sh(
        "nsenter",
        &[
            &format!("--net={}", lab.host_path()),
            natlab::natd_bin().to_str().unwrap(),
            "--socket",
            "/nonexistent/natd.sock",
            "--cluster-store",
            "consul://10.0.0.1:8500",
            "--cluster-advertise",
            "up0",
        ],
    );
    assert_eq!(out.status.code(), Some(78));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("cluster-store") && text.contains("unsupported store"),
        "{text}"
    );
}

#[test]
fn overlay_across_hosts_ebpf() {
    overlay_across_hosts("ebpf");
}

#[test]
fn overlay_across_hosts_nftables() {
    overlay_across_hosts("nftables");
}

fn overlay_across_hosts(dataplane: &str) {
    let mut hosts = shared_lan(3);
    let lan = hosts[0].ext_ns.clone();
    let mut etcd = Etcd::start(&lan, hosts[0].dir.clone());
    let mut args = member_args(TTL);
    args.extend(["--dataplane".to_string(), dataplane.to_string()]);
    args.extend(["--cluster-claim-grace".to_string(), GRACE.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for host in &mut hosts[..2] {
        host.start_natd(&args).expect("start natd");
    }
    let (a, b) = (&hosts[0], &hosts[1]);

    // One create, seen by every host; names and subnets are cluster-wide.
    a.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.70.0.0/24",
        "ov1",
    ]);
    assert!(
        wait_until(CONVERGE, || networks(b).contains(&"ov1".to_string())),
        "host B sees ov1"
    );
    let err = b.fails(&["network", "create", "-d", "overlay", "ov1"]);
    assert!(err.contains("already exists"), "{err}");
    let err = b.fails(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.70.0.128/25",
        "ov9",
    ]);
    assert!(err.contains("overlaps"), "{err}");
    let info = a.json(&["info"]);
    assert_eq!(info["cluster"]["reachable"], true, "{info}");
    assert_eq!(info["cluster"]["hosts"].as_array().map(Vec::len), Some(2), "{info}");
    assert!(a.ok(&["info"]).contains("cluster store:  etcd://"));
    let inspect = b.json(&["network", "inspect", "ov1"]);
    assert_eq!(inspect["driver"], "overlay");
    assert_eq!(inspect["mtu"], 1450, "underlay MTU 1500 minus 50 bytes of VXLAN");

    let a1 = server(a, "a1", &["-p", "8080:80"]);
    let b1 = server(b, "b1", &[]);
    assert_ne!(a1, b1);
    // Across hosts by address, both ways, with the sandboxes' own addresses (no NAT).
    assert!(
        wait_until(CONVERGE, || from_sandbox(b, "b1", &a1, 80).as_deref()
            == Some(b1.as_str())),
        "b1 reaches a1 across hosts\n{}",
        a.natd_log()
    );
    assert_eq!(from_sandbox(a, "a1", &b1, 80).as_deref(), Some(a1.as_str()));
    let inspect = a.json(&["network", "inspect", "ov1"]).to_string();
    assert!(
        inspect.contains(&b1) && inspect.contains("\"host\""),
        "inspect lists the other host's sandbox: {inspect}"
    );

    // MTU: the largest ping that fits the overlay passes unfragmented, one byte more does not.
    let ping = |size: &str| {
        b.exec("b1", &["ping", "-c1", "-W2", "-M", "do", "-s", size, &a1])
            .status
            .success()
    };
    assert!(ping("1422"), "1422 bytes of ICMP payload + 28 = 1450");
    assert!(!ping("1423"));

    // On the LAN (host B's port) the sandboxes' packets travel inside VXLAN between the hosts'
    // addresses: no sandbox address in an outer header. Encapsulated, not encrypted: the inner
    // frames are readable on the LAN (counted below).
    let pcap = hosts[0].dir.join("lan.pcap");
    {
        let _capture = a.spawn_in(
            &lan,
            &[
                "timeout",
                "10",
                "tcpdump",
                "-i",
                "lan1",
                "-nn",
                "--immediate-mode",
                "-U",
                "-w",
                pcap.to_str().unwrap(),
                "udp port 4789 or net 10.70.0.0/24",
            ],
        );
        // tcpdump creates the file once it captures.
        assert!(wait_until(Duration::from_secs(5), || pcap.exists()));
        // Both ends must resolve each other again: answered by the local VXLAN device's ARP
        // proxy, so no ARP crosses the underlay.
        b.exec_ok("b1", &["ip", "neigh", "flush", "all"]);
        a.exec_ok("a1", &["ip", "neigh", "flush", "all"]);
        for _ in 0..3 {
            assert!(b.exec("b1", &["ping", "-c1", "-W2", &a1]).status.success());
        }
        assert_eq!(from_sandbox(b, "b1", &a1, 80).as_deref(), Some(b1.as_str()));
    }
    let count = |filter: &str| {
        let out = sh("tcpdump", &["-nn", "-r", pcap.to_str().unwrap(), filter]);
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let vxlan = count(&format!(
        "udp port 4789 and host {} and host {}",
        HOST_UPLINK_IP,
        host_ip(1)
    ));
    assert!(
        vxlan >= 6,
        "VXLAN packets between the hosts: {vxlan}\n{}",
        String::from_utf8_lossy(&sh("tcpdump", &["-nn", "-r", pcap.to_str().unwrap()]).stderr)
    );
    assert_eq!(
        count("net 10.70.0.0/24"),
        0,
        "no sandbox address in an outer header on the LAN"
    );
    // Ethertype of the frame inside VXLAN: after UDP (8 bytes), VXLAN (8) and two MACs (12).
    let inner_arp = count("udp port 4789 and udp[28:2] = 0x0806");
    let inner_ip = count("udp port 4789 and udp[28:2] = 0x0800");
    assert!(inner_ip >= 6, "the capture decodes inner frames: {inner_ip}");
    assert_eq!(inner_arp, 0, "no ARP crosses the hosts");

    // Each host masquerades its own sandboxes and publishes their ports.
    let _outside = a.spawn_in(
        &lan,
        &[
            "socat",
            "TCP-LISTEN:9000,fork,reuseaddr",
            "SYSTEM:echo $SOCAT_PEERADDR",
        ],
    );
    assert!(wait_listening(&a.ext_path(), "tcp", 9000));
    assert_eq!(
        from_sandbox(a, "a1", EXT_IP, 9000).as_deref(),
        Some(HOST_UPLINK_IP)
    );
    assert_eq!(from_sandbox(b, "b1", EXT_IP, 9000), Some(host_ip(1)));
    let from_lan = |addr: &str, port: u16| natlab::tcp_line(&["ip", "netns", "exec", &lan], addr, port);
    assert_eq!(from_lan(HOST_UPLINK_IP, 8080).as_deref(), Some(EXT_IP));
    assert_eq!(
        from_lan(&a1, 80),
        None,
        "sandbox addresses are not reachable from the LAN"
    );

    // Isolation: another overlay (subnet from the pool), and a bridge network.
    b.ok(&["network", "create", "-d", "overlay", "--opt", "vni=5000", "ov2"]);
    let err = a.fails(&["network", "create", "-d", "overlay", "--opt", "vni=5000", "ov3"]);
    assert!(err.contains("VNI 5000"), "{err}");
    b.run_script("b2", &["--network", "ov2"], &natlab::whoami(80));
    assert!(wait_listening(&b.netns_of("b2"), "tcp", 80));
    let b2 = b.sandbox_ip("b2");
    assert!(b2.starts_with("10."), "{b2}");
    assert!(wait_until(CONVERGE, || networks(a).contains(&"ov2".to_string())));
    a.ok(&["run", "--name", "a2", "--network", "ov2"]);
    assert!(
        wait_until(CONVERGE, || from_sandbox(a, "a2", &b2, 80).is_some()),
        "same overlay across hosts: A's FDB {}\nB's FDB {}\nA: {}\nB: {}",
        fdb(a, &vxlan_of(a, "ov2")),
        fdb(b, &vxlan_of(b, "ov2")),
        a.natd_log(),
        b.natd_log()
    );
    assert_eq!(from_sandbox(a, "a1", &b2, 80), None, "ov1 does not reach ov2");
    assert_eq!(from_sandbox(a, "a2", &a1, 80), None, "ov2 does not reach ov1");
    a.ok(&["network", "create", "--subnet", "10.71.0.0/24", "plain"]);
    a.ok(&["run", "--name", "p1", "--network", "plain"]);
    assert_eq!(
        from_sandbox(a, "p1", &a1, 80),
        None,
        "a bridge network does not reach an overlay"
    );
    assert_eq!(from_sandbox(a, "p1", &b1, 80), None);
    // `network connect` takes a cluster-wide address too, and `disconnect` gives it back.
    a.ok(&["network", "connect", "ov1", "p1"]);
    let p1_overlay = a.json(&["inspect", "p1"])["endpoints"][1]["ipv4"].as_str().unwrap().to_string();
    assert!(
        wait_until(CONVERGE, || from_sandbox(a, "p1", &b1, 80).as_deref() == Some(p1_overlay.as_str())),
        "a connected sandbox reaches the other host through its overlay interface"
    );
    assert!(etcd.keys("/natd/v1/ips/ov1/").iter().any(|k| k.ends_with(&format!("/{p1_overlay}"))));
    a.ok(&["network", "disconnect", "ov1", "p1"]);
    assert!(!etcd.keys("/natd/v1/ips/ov1/").iter().any(|k| k.ends_with(&format!("/{p1_overlay}"))));
    assert_eq!(from_sandbox(a, "p1", &b1, 80), None);

    // A third host joins later and sees everything; allocation stays unique under
    // concurrent runs on two hosts.
    hosts[2].start_natd(&args).expect("start natd C");
    let (a, c) = (&hosts[0], &hosts[2]);
    assert!(wait_until(CONVERGE, || {
        let n = networks(c);
        n.contains(&"ov1".to_string()) && n.contains(&"ov2".to_string())
    }));
    let c1 = server(c, "c1", &[]);
    assert!(wait_until(CONVERGE, || from_sandbox(c, "c1", &a1, 80).as_deref()
        == Some(c1.as_str())));
    assert_eq!(from_sandbox(c, "c1", &b1, 80).as_deref(), Some(c1.as_str()));
    std::thread::scope(|s| {
        for (host, tag) in [(a, "a"), (c, "c")] {
            for i in 0..4 {
                s.spawn(move || host.ok(&["run", "--name", &format!("{tag}x{i}"), "--network", "ov1"]));
            }
        }
    });
    let mut seen = HashSet::new();
    for (host, tag) in [(a, "a"), (c, "c")] {
        for i in 0..4 {
            let ip = host.sandbox_ip(&format!("{tag}x{i}"));
            assert!(seen.insert(ip.clone()), "address {ip} handed out twice");
        }
    }
    assert!(
        ![a1.clone(), b1.clone(), c1.clone()]
            .iter()
            .any(|ip| seen.contains(ip))
    );
    // More addresses held elsewhere than a host would probe one by one: allocation skips
    // what the cluster has claimed instead of finding out address by address.
    for i in 0..10 {
        c.ok(&["run", "--name", &format!("cy{i}"), "--network", "ov1"]);
    }
    a.ok(&["run", "--name", "after", "--network", "ov1"]);
    let after = a.sandbox_ip("after");
    for i in 0..10 {
        assert_ne!(c.sandbox_ip(&format!("cy{i}")), after);
    }

    // In use on another host: refused.
    a.ok(&["rm", "a2"]);
    let err = a.fails(&["network", "rm", "ov2"]);
    assert!(err.contains("active endpoints") && err.contains("b2"), "{err}");

    // The store goes away: running sandboxes keep talking; overlay requests fail clearly;
    // when it is back natd carries on with nothing lost.
    etcd.stop();
    assert!(
        wait_until(CONVERGE, || a.json(&["info"])["cluster"]["reachable"] == false),
        "natctl info shows the store unreachable"
    );
    assert_eq!(from_sandbox(c, "c1", &a1, 80).as_deref(), Some(c1.as_str()));
    let err = a.fails(&["run", "--name", "late", "--network", "ov1"]);
    assert!(err.contains("cluster store unreachable"), "{err}");
    a.ok(&["run", "--name", "bridged", "--network", "plain"]);
    // natd starts while the store is down, and its sandboxes keep their overlay.
    hosts[2].restart_natd().expect("natd C starts without its store");
    let (a, c) = (&hosts[0], &hosts[2]);
    assert_eq!(from_sandbox(c, "c1", &a1, 80).as_deref(), Some(c1.as_str()));
    assert!(c.natd_log().contains("cannot register in the cluster store yet"));
    etcd.restart();
    assert!(
        wait_until(CONVERGE, || a.json(&["info"])["cluster"]["hosts"].as_array().map(Vec::len) == Some(3)),
        "C, started while the store was down, registers once it is back: {}",
        a.json(&["info"])["cluster"]
    );
    a.ok(&["run", "--name", "late", "--network", "ov1"]);
    let late = a.sandbox_ip("late");
    assert!(!seen.contains(&late) && late != b1 && late != c1);
    assert!(
        etcd.keys("/natd/v1/ips/ov1/").iter().any(|k| k.ends_with(&b1)),
        "claims survived the restart"
    );

    // natd restarts on A: its peers keep their entries, it re-syncs and is reachable again.
    hosts[0].restart_natd().expect("restart natd A");
    let (a, b, c) = (&hosts[0], &hosts[1], &hosts[2]);
    assert_eq!(from_sandbox(c, "c1", &a1, 80).as_deref(), Some(c1.as_str()));
    assert_eq!(from_sandbox(a, "a1", &b1, 80).as_deref(), Some(a1.as_str()));
    for (network, vni) in [("ov1", "4096"), ("ov2", "5000")] {
        let details = a.host_ok(&["ip", "-d", "link", "show", &vxlan_of(a, network)]);
        assert!(
            details.contains(&format!("vxlan id {vni} ")) && details.contains("nolearning") && details.contains("proxy"),
            "{details}"
        );
    }

    // The VXLAN device deleted behind natd's back: a reconcile brings it back with the
    // other hosts' sandboxes in it at once (not at the next change in the cluster).
    a.host_ok(&["ip", "link", "del", &vxlan_of(a, "ov1")]);
    assert_eq!(from_sandbox(c, "c1", &a1, 80), None);
    let out = sh(
        "curl",
        &["-sf", "--unix-socket", a.socket.to_str().unwrap(), "-X", "POST", "http://natd/v1/reconcile"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(from_sandbox(c, "c1", &a1, 80).as_deref(), Some(c1.as_str()));

    // Host B dies: its sandboxes leave A's and C's forwarding tables within the TTL.
    let vx_a = vxlan_of(a, "ov1");
    let b1_mac = mac_of(b, "b1");
    assert!(fdb(a, &vx_a).contains(&b1_mac), "{}", fdb(a, &vx_a));
    // The host is gone: natd killed, its NIC off the LAN (its namespace stays, so the lab
    // can still remove its sandboxes afterwards).
    hosts[1].stop_natd(nix::sys::signal::Signal::SIGKILL);
    let out = sh("ip", &["-n", &hosts[1].host_ns, "link", "del", "up0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, c) = (&hosts[0], &hosts[2]);
    let vx_c = vxlan_of(c, "ov1");
    assert!(
        wait_until(Duration::from_secs(TTL + 5), || !fdb(a, &vx_a).contains(&b1_mac)
            && !fdb(c, &vx_c).contains(&b1_mac)),
        "B's sandbox is gone from A's and C's FDB:\n{}",
        fdb(a, &vx_a)
    );
    let neigh = a.host_ok(&["ip", "neigh", "show", "dev", &vx_a]);
    assert!(!neigh.contains(&b1), "{neigh}");
    // The others stay: A and C kept renewing their leases through B's departure.
    assert_eq!(
        from_sandbox(c, "c1", &a1, 80).as_deref(),
        Some(c1.as_str()),
        "the others are unaffected\nA fdb {}\nC fdb {}\nA log {}\nC log {}",
        fdb(a, &vx_a),
        fdb(c, &vx_c),
        a.natd_log(),
        c.natd_log()
    );
    for host in [a, c] {
        assert!(!host.natd_log().contains("registered again in the cluster store"), "a live host lost its lease:\n{}", host.natd_log());
    }

    // B never comes back. Its claims outlive its lease (claims are not leased: a partition
    // must not hand a running sandbox's address to another host), and go back to the
    // cluster once it has been unregistered longer than the claim grace: released by a live
    // host, said in its log. A's and C's claims stay (checked below).
    let b1_claimed = || etcd.keys("/natd/v1/ips/ov1/").iter().any(|k| k.ends_with(&format!("/{b1}")));
    assert!(b1_claimed(), "B's claim outlives its lease");
    let vanished = Instant::now();
    assert!(
        wait_until(Duration::from_secs(GRACE + 3 * TTL + 6), || !b1_claimed()),
        "B's claim is released after the grace: {:?}",
        etcd.keys("/natd/")
    );
    println!(
        "CLAIMS of a vanished host released {} ms after its sandboxes left the others' tables (grace {GRACE} s)",
        vanished.elapsed().as_millis()
    );
    // Said once the release is complete (the claims go first, then the host's `gone`
    // record, then the log line): a moment after the claims are seen gone.
    let said = |lab: &Lab| lab.natd_log().contains("address claims of host");
    assert!(
        wait_until(Duration::from_secs(TTL + 5), || said(a) || said(c)),
        "a live host says so:\n{}\n{}",
        a.natd_log(),
        c.natd_log()
    );
    assert!(etcd.keys("/natd/v1/gone/").is_empty(), "{:?}", etcd.keys("/natd/v1/gone/"));

    // With its only remote user dead, ov2 can go, everywhere.
    a.ok(&["network", "rm", "ov2"]);
    assert!(wait_until(CONVERGE, || !networks(c).contains(&"ov2".to_string())));
    assert!(etcd.keys("/natd/v1/networks/ov2").is_empty() && etcd.keys("/natd/v1/ips/ov2/").is_empty());

    // `natd --cleanup` on C gives its addresses and its registration back at once.
    let claimed = |ip: &str| {
        etcd.keys("/natd/v1/ips/ov1/")
            .iter()
            .any(|k| k.ends_with(&format!("/{ip}")))
    };
    assert!(claimed(&c1));
    hosts[2].stop_natd(nix::sys::signal::Signal::SIGTERM);
    let out = hosts[2].cleanup_natd();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!claimed(&c1) && claimed(&a1));
    assert_eq!(
        etcd.keys("/natd/v1/hosts/").len(),
        1,
        "only A is registered: {:?}",
        etcd.keys("/natd/v1/hosts/")
    );
}
