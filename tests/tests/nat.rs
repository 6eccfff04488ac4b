//! End-to-end NAT through the eBPF dataplane: real clients in an "external" namespace,
//! servers in sandboxes, natd in the "host" namespace. Every flow is also checked to pass
//! without a single netfilter rule or kernel conntrack entry in the host namespace.
use std::{
    io::Read as _,
    net::{TcpStream, UdpSocket},
    time::Duration,
};

use nat_common::names::program;
use natlab::{EXT_IP, HOST_UPLINK_IP, Lab, in_netns, sh, wait_listening, wait_until};
use nix::sys::signal::Signal;

/// Connects from the external namespace and returns the line the server sent.
fn ext_tcp(lab: &Lab, addr: &str, port: u16) -> Option<String> {
    let out = lab.ext(&[
        "socat",
        "-t3",
        "-T3",
        "-",
        &format!("TCP:{addr}:{port},connect-timeout=3"),
    ]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn ext_udp(lab: &Lab, addr: &str, port: u16) -> Option<String> {
    natlab::udp_exchange(&lab.ext_path(), addr, port, b"hi\n", Duration::from_secs(3))
}

/// natd's promise: no netfilter rule and no kernel conntrack entry takes part.
fn assert_no_kernel_nat(lab: &Lab) {
    let rules = lab.host_ok(&["nft", "list", "ruleset"]);
    assert!(
        rules.trim().is_empty(),
        "no nftables/iptables rule in the host namespace:\n{rules}"
    );
    let ct = lab.host(&["conntrack", "-L"]);
    let listed = String::from_utf8_lossy(&ct.stdout).to_string();
    assert!(listed.trim().is_empty(), "no kernel conntrack entry:\n{listed}");
}

#[test]
fn published_ports_in_every_form() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.host_ok(&["ip", "addr", "add", "198.51.100.3/24", "dev", "up0"]);
    let script = "socat TCP-LISTEN:80,fork,reuseaddr SYSTEM:'echo $SOCAT_PEERADDR' & \
                  socat TCP-LISTEN:81,fork,reuseaddr SYSTEM:'echo eighty-one' & \
                  for p in 90 91 92 93 94; do socat TCP-LISTEN:$p,fork,reuseaddr SYSTEM:\"echo port-$p\" & done; \
                  socat UDP-RECVFROM:53,fork SYSTEM:'head -c1 >/dev/null; echo $SOCAT_PEERADDR' & wait";
    let publish = [
        "-p",
        "8080:80",
        "-p",
        "80",
        "-p",
        "198.51.100.1:8181:81",
        "-p",
        "198.51.100.1::81",
        "-p",
        "8090-8092:90-92",
        "-p",
        "8100-8110:93",
        "-p",
        "5353:53/udp",
        "-P",
        "--expose",
        "94",
    ];
    lab.run_script("srv", &publish, script);
    let ns = lab.netns_of("srv");
    for port in [80, 81, 90, 91, 92, 93, 94] {
        assert!(wait_listening(&ns, "tcp", port), "server on {port}");
    }
    assert!(wait_listening(&ns, "udp", 53));

    // HPORT:CPORT, from every host address, the client's own address seen by the server.
    assert_eq!(ext_tcp(&lab, HOST_UPLINK_IP, 8080).as_deref(), Some(EXT_IP));
    assert_eq!(ext_tcp(&lab, "198.51.100.3", 8080).as_deref(), Some(EXT_IP));
    // Bound to one address: only there.
    assert_eq!(ext_tcp(&lab, HOST_UPLINK_IP, 8181).as_deref(), Some("eighty-one"));
    assert_eq!(
        ext_tcp(&lab, "198.51.100.3", 8181),
        None,
        "not published on this address"
    );
    // Ranges.
    for (host, container) in [(8090, 90), (8091, 91), (8092, 92)] {
        assert_eq!(
            ext_tcp(&lab, HOST_UPLINK_IP, host).as_deref(),
            Some(format!("port-{container}").as_str())
        );
    }
    // UDP: the reply to the very first datagram comes back through the translation.
    assert_eq!(
        ext_udp(&lab, HOST_UPLINK_IP, 5353).as_deref(),
        Some(EXT_IP),
        "the UDP reply comes back through the translation"
    );

    // Random host ports (-p 80, IP::81, 8100-8110:93, -P): natctl port tells where.
    let ports = lab.json(&["port", "srv"]);
    let host_port = |container: u64, bound: bool| -> u16 {
        ports
            .as_array()
            .unwrap()
            .iter()
            .find(|m| {
                m["container_port"] == container && m["host_ip"].is_null() != bound && m["host_port"] != 8181
            })
            .map(|m| m["host_port"].as_u64().unwrap() as u16)
            .unwrap_or_else(|| panic!("mapping for {container}: {ports}"))
    };
    let (lo, hi) = {
        let text = lab.host_ok(&["cat", "/proc/sys/net/ipv4/ip_local_port_range"]);
        let v: Vec<u16> = text.split_whitespace().map(|p| p.parse().unwrap()).collect();
        (v[0], v[1])
    };
    let random = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["container_port"] == 80 && m["host_port"] != 8080)
        .unwrap()["host_port"]
        .as_u64()
        .unwrap() as u16;
    assert!(
        (lo..=hi).contains(&random),
        "random port {random} from ip_local_port_range {lo}-{hi}"
    );
    assert_eq!(ext_tcp(&lab, HOST_UPLINK_IP, random).as_deref(), Some(EXT_IP));
    let bound_random = host_port(81, true);
    assert_ne!(bound_random, 8181);
    assert_eq!(
        ext_tcp(&lab, HOST_UPLINK_IP, bound_random).as_deref(),
        Some("eighty-one")
    );
    let in_range = host_port(93, false);
    assert!((8100..=8110).contains(&in_range));
    assert_eq!(
        ext_tcp(&lab, HOST_UPLINK_IP, in_range).as_deref(),
        Some("port-93")
    );
    let exposed = host_port(94, false);
    assert_eq!(ext_tcp(&lab, HOST_UPLINK_IP, exposed).as_deref(), Some("port-94"));
    let text = lab.ok(&["port", "srv", "53/udp"]);
    assert_eq!(text.trim(), "53/udp -> 0.0.0.0:5353");

    // A port nobody published is the host's business: refused by the host's stack.
    assert_eq!(ext_tcp(&lab, HOST_UPLINK_IP, 9999), None);
    assert_no_kernel_nat(&lab);
    let counters = &lab.json(&["info"])["dataplane_detail"]["counters"];
    assert!(counters["dnat_new"].as_u64().unwrap() >= 10, "{counters}");
}

#[test]
fn masquerade_with_many_sandboxes_and_one_source_port() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    let _server = lab.spawn_in(
        &lab.ext_ns,
        &[
            "socat",
            "TCP-LISTEN:9000,fork,reuseaddr,backlog=256",
            // Held open a while, so the flows are alive together: a finished flow's tuple
            // may be taken over by the next (the port is preserved when free).
            "SYSTEM:echo $SOCAT_PEERADDR $SOCAT_PEERPORT; sleep 2",
        ],
    );
    assert!(wait_listening(&lab.ext_path(), "tcp", 9000));
    let names: Vec<String> = (0..4).map(|i| format!("out{i}")).collect();
    for name in &names {
        lab.ok(&["run", "--name", name]);
    }
    // Every sandbox connects from source port 5555 to the same remote ip:port, at once.
    let seen: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| {
                let lab = &lab;
                scope.spawn(move || {
                    lab.exec_ok(
                        name,
                        &[
                            "socat",
                            "-t3",
                            "-T3",
                            "-",
                            &format!("TCP:{EXT_IP}:9000,sourceport=5555,connect-timeout=3"),
                        ],
                    )
                    .trim()
                    .to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ports = Vec::new();
    for line in &seen {
        let (addr, port) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("server answered {line:?}"));
        assert_eq!(addr, HOST_UPLINK_IP, "masqueraded to the uplink address");
        ports.push(port.to_string());
    }
    assert!(ports.iter().any(|p| p == "5555"), "one flow kept its port: {seen:?}");
    ports.sort();
    ports.dedup();
    assert_eq!(
        ports.len(),
        names.len(),
        "each flow got its own NAT port: {seen:?}"
    );

    // Many parallel connections from one sandbox.
    let ok = lab.exec_ok(
        "out0",
        &["sh", "-c", &format!("for i in $(seq 40); do (socat -t5 -T5 - TCP:{EXT_IP}:9000,connect-timeout=5 | grep -q {HOST_UPLINK_IP} && echo ok) & done; wait")],
    );
    assert_eq!(
        ok.lines().filter(|l| *l == "ok").count(),
        40,
        "all 40 parallel flows answered"
    );

    // ICMP echo out of two sandboxes at once (echo ids translated).
    std::thread::scope(|scope| {
        for name in ["out1", "out2"] {
            let lab = &lab;
            scope.spawn(move || {
                assert!(
                    lab.exec(name, &["ping", "-c3", "-i0.2", "-W2", EXT_IP])
                        .status
                        .success(),
                    "{name} pings out"
                )
            });
        }
    });
    assert_no_kernel_nat(&lab);
}

#[test]
fn ip_masq_false_and_internal_networks_stay_inside() {
    let lab = Lab::started(&["--dataplane", "ebpf", "--ip-masq", "false"]);
    let _server = lab.spawn_in(
        &lab.ext_ns,
        &[
            "socat",
            "TCP-LISTEN:9000,fork,reuseaddr",
            "SYSTEM:echo $SOCAT_PEERADDR",
        ],
    );
    assert!(wait_listening(&lab.ext_path(), "tcp", 9000));
    lab.ok(&["network", "create", "masq"]);
    lab.ok(&["network", "create", "--internal", "inside"]);
    lab.ok(&["run", "--name", "plain"]);
    lab.ok(&["run", "--name", "masqd", "--network", "masq"]);
    lab.ok(&["run", "--name", "intern", "--network", "inside"]);
    let connect = |name: &str| {
        lab.exec(
            name,
            &[
                "socat",
                "-t2",
                "-T2",
                "-",
                &format!("TCP:{EXT_IP}:9000,connect-timeout=2"),
            ],
        )
    };
    assert!(
        !connect("plain").status.success(),
        "--ip-masq false: the default network is not masqueraded"
    );
    assert!(!connect("intern").status.success(), "--internal: no way out");
    assert!(
        lab.exec_ok("intern", &["ip", "route"])
            .lines()
            .all(|l| !l.starts_with("default")),
        "no default route"
    );
    let out = connect("masqd");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        HOST_UPLINK_IP,
        "a user network still masquerades"
    );
}

#[test]
fn flows_survive_natd_stop_and_restart() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.run_script(
        "echo",
        &["-p", "8080:80"],
        "socat TCP-LISTEN:80,fork,reuseaddr EXEC:cat",
    );
    let ns = lab.netns_of("echo");
    assert!(wait_listening(&ns, "tcp", 80));
    let _remote = lab.spawn_in(
        &lab.ext_ns,
        &["socat", "TCP-LISTEN:9000,fork,reuseaddr", "EXEC:cat"],
    );
    assert!(wait_listening(&lab.ext_path(), "tcp", 9000));

    let mut inbound = in_netns(&lab.ext_path(), || {
        TcpStream::connect((HOST_UPLINK_IP, 8080)).expect("connect to published port")
    });
    let mut outbound = in_netns(&ns, || {
        TcpStream::connect((EXT_IP, 9000)).expect("connect out of the sandbox")
    });
    for stream in [&mut inbound, &mut outbound] {
        stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    }
    let echo = natlab::echo_line;
    assert!(echo(&mut inbound, "before") && echo(&mut outbound, "before"));

    lab.stop_natd(Signal::SIGKILL);
    assert!(
        echo(&mut inbound, "while-down"),
        "established inbound flow while natd is down"
    );
    assert!(
        echo(&mut outbound, "while-down"),
        "established outbound flow while natd is down"
    );
    let mut fresh = in_netns(&lab.ext_path(), || {
        TcpStream::connect((HOST_UPLINK_IP, 8080)).expect("new flow while natd is down")
    });
    fresh.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert!(echo(&mut fresh, "new-while-down"));

    lab.restart_natd().unwrap();
    let info = lab.json(&["info"]);
    let report = info["last_reconcile"].to_string();
    assert!(
        !report.contains("attached program"),
        "pinned programs are adopted, not re-attached: {report}"
    );
    assert!(echo(&mut inbound, "after") && echo(&mut outbound, "after") && echo(&mut fresh, "after"));
    assert_no_kernel_nat(&lab);

    // natd --cleanup removes programs and maps.
    lab.stop_natd(Signal::SIGTERM);
    assert!(lab.cleanup_natd().status.success());
    let attached = lab.host_ok(&["bpftool", "net", "show"]);
    assert!(
        !attached.contains("natd_"),
        "no program left attached:\n{attached}"
    );
    assert!(!lab.bpffs.exists());
    let mut buf = [0u8; 1];
    let _ = inbound.read(&mut buf);
}

#[test]
fn removing_a_mapping_invalidates_its_udp_flow() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.run_script("first", &["-p", "5353:53/udp"], &natlab::udp_reply(53, "first"));
    assert!(wait_listening(&lab.netns_of("first"), "udp", 53));
    let socket = in_netns(&lab.ext_path(), || UdpSocket::bind((EXT_IP, 40000)).unwrap());
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    socket.connect((HOST_UPLINK_IP, 5353)).unwrap();
    let ask = || -> Option<String> {
        socket.send(b"hi\n").ok()?;
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    };
    assert_eq!(ask().as_deref(), Some("first"), "the first mapping answers");
    lab.ok(&["rm", "first"]);
    lab.run_script("second", &["-p", "5353:53/udp"], &natlab::udp_reply(53, "second"));
    assert!(wait_listening(&lab.netns_of("second"), "udp", 53));
    // The very same 5-tuple now reaches the new mapping's sandbox.
    assert_eq!(
        ask().as_deref(),
        Some("second"),
        "the old UDP flow was invalidated"
    );
}

#[test]
fn published_port_taken_by_a_host_process_is_refused() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    let _listener = lab.spawn_in(&lab.host_ns, &["socat", "TCP-LISTEN:7777,reuseaddr", "-"]);
    assert!(wait_listening(&lab.host_path(), "tcp", 7777));
    let err = lab.fails(&["run", "--name", "clash", "-p", "7777:80"]);
    assert!(
        err.contains("Bind for 0.0.0.0:7777 failed: address already in use"),
        "{err}"
    );
    // Published ports inside the host's ephemeral range are reserved, so the host never
    // uses one as the source port of its own connections; the host never picks a port
    // outside the range, which stays unreserved; what someone else reserved stays.
    let range = lab.host_ok(&["cat", "/proc/sys/net/ipv4/ip_local_port_range"]);
    let lo: u16 = range.split_whitespace().next().and_then(|p| p.parse().ok()).expect("ip_local_port_range");
    let (inside, theirs) = (lo + 7, lo + 9);
    lab.host_ok(&["sh", "-c", &format!("echo {theirs} > /proc/sys/net/ipv4/ip_local_reserved_ports")]);
    lab.ok(&["run", "--name", "fine", "-p", "7778:80", "-p", &format!("{inside}:81")]);
    let reserved = || {
        let text = lab.host_ok(&["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"]);
        let ports: Vec<u16> = text
            .trim()
            .split(',')
            .filter(|p| !p.is_empty())
            .flat_map(|p| {
                let (a, b) = p.split_once('-').unwrap_or((p, p));
                a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()
            })
            .collect();
        ports
    };
    assert_eq!(reserved(), vec![inside, theirs], "published {inside} (in range) and 7778 (outside)");
    // Rewritten behind natd's back (`sysctl --system` does this): the next tick, which
    // finds nothing else changed and syncs nothing, puts natd's port back.
    lab.host_ok(&["sh", "-c", &format!("echo {theirs} > /proc/sys/net/ipv4/ip_local_reserved_ports")]);
    assert_eq!(reserved(), vec![theirs], "control: natd's port gone");
    assert!(
        wait_until(Duration::from_secs(8), || reserved() == vec![inside, theirs]),
        "reserved again by a tick: {:?}",
        reserved()
    );
    lab.ok(&["rm", "fine"]);
    assert_eq!(reserved(), vec![theirs], "the removed sandbox's port is released, the other entry kept");
}

#[test]
fn parallel_clients_reach_a_published_port() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.run_script("busy", &["-p", "8080:80"], &natlab::whoami(80));
    assert!(wait_listening(&lab.netns_of("busy"), "tcp", 80));
    let out = sh(
        "sh",
        &[
            "-c",
            &format!(
                "for i in $(seq 60); do (ip netns exec {} socat -t5 -T5 - TCP:{HOST_UPLINK_IP}:8080,connect-timeout=5 | grep -qx {EXT_IP} && echo ok) & done; wait",
                lab.ext_ns
            ),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| *l == "ok")
            .count(),
        60
    );
    assert_no_kernel_nat(&lab);
}

#[test]
fn idle_flows_expire() {
    let lab = Lab::started(&[
        "--dataplane",
        "ebpf",
        "--conntrack-timeout",
        "udp=2",
        "--conntrack-timeout",
        "udp-replied=4",
        "--gc-interval",
        "1",
    ]);
    lab.run_script("echo", &["-p", "5353:53/udp"], &natlab::udp_reply(53, "hi"));
    assert!(wait_listening(&lab.netns_of("echo"), "udp", 53));
    assert_eq!(ext_udp(&lab, HOST_UPLINK_IP, 5353).as_deref(), Some("hi"));
    let udp_flows = || {
        lab.json(&["ct", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["proto"] == "udp")
            .count()
    };
    assert!(udp_flows() >= 2, "the flow is tracked (both directions)");
    assert!(
        wait_until(Duration::from_secs(12), || udp_flows() == 0),
        "idle UDP flows are expired by the sweep"
    );
}

/// Changes made to natd's kernel state behind its back are found by the housekeeping
/// tick (which compares outside the daemon's lock) and repaired, and only those: with
/// requests running and nothing changed, no tick reports a change (the control that the
/// comparison matches what natd wrote). Tampered with: a published port's entry deleted
/// from the pinned table, its slot's generation moved, then the uplink's pinned ingress
/// link removed (its program detached);
/// each breaks the published port (seen from the LAN) until the next tick repairs it.
#[test]
fn the_tick_repairs_what_was_changed_behind_natds_back_and_nothing_else() {
    use nat_common::{Port4Key, Port4Target, names::map};
    let lab = Lab::started(&["--dataplane", "ebpf", "--gc-interval", "2"]);
    lab.run_script("web", &["-p", "8080:80"], &natlab::whoami(80));
    assert!(wait_listening(&lab.netns_of("web"), "tcp", 80));
    assert_eq!(ext_tcp(&lab, HOST_UPLINK_IP, 8080).as_deref(), Some(EXT_IP), "control: published");
    // Requests while ticks run: none of their writes may look like drift.
    for i in 0..4 {
        lab.ok(&["run", "--name", &format!("other{i}"), "-p", &format!("{}:80", 9000 + i), "--", "sleep", "60"]);
        lab.ok(&["publish", "web", &format!("{}:80/udp", 7000 + i)]);
    }
    lab.ok(&["rm", "other0"]);
    std::thread::sleep(Duration::from_secs(5));
    let drift = "changed behind natd's back";
    let quiet = lab.natd_log();
    assert!(!quiet.contains(drift), "no change reported:\n{quiet}");
    assert!(!quiet.contains("changed without an announcement"), "no host change seen:\n{quiet}");

    let data = aya::maps::MapData::from_pin(lab.bpffs.join("maps").join(map::PORTS4)).expect("pinned port table");
    let mut ports = aya::maps::HashMap::<_, Port4Key, Port4Target>::try_from(aya::maps::Map::from_map_data(data).unwrap())
        .unwrap();
    let web = ports
        .keys()
        .filter_map(Result::ok)
        .find(|k| u16::from_be(k.port) == 8080 && k.proto == 6)
        .expect("the published port's entry");
    ports.remove(&web).unwrap();
    assert_eq!(ext_tcp(&lab, HOST_UPLINK_IP, 8080), None, "the entry deleted: not translated");
    assert!(
        wait_until(Duration::from_secs(6), || ext_tcp(&lab, HOST_UPLINK_IP, 8080).as_deref() == Some(EXT_IP)),
        "repaired by a tick"
    );
    let log = lab.natd_log();
    let reported: Vec<&str> = log.lines().filter(|l| l.contains(drift)).collect();
    assert!(
        !reported.is_empty() && reported.iter().all(|l| l.contains(&format!("[\"{}\"]", map::PORTS4))),
        "the repair names that table and no other:\n{log}"
    );

    // The mapping's generation moved: its entry (which carries the generation new flows
    // start with, checked against the slot's on every later packet) is written again with
    // the one the kernel holds.
    let slot = ports.get(&web, 0).expect("the entry written back").slot;
    let generations = aya::maps::MapData::from_pin(lab.bpffs.join("maps").join(map::GENERATIONS)).unwrap();
    let mut generations = aya::maps::Array::<_, u32>::try_from(aya::maps::Map::from_map_data(generations).unwrap()).unwrap();
    let moved = generations.get(&slot, 0).unwrap().wrapping_add(7);
    generations.set(slot, moved, 0).unwrap();
    assert_ne!(ports.get(&web, 0).unwrap().generation, moved, "control: the entry has the old one");
    assert!(
        wait_until(Duration::from_secs(6), || ports.get(&web, 0).is_ok_and(|t| t.generation == moved)),
        "the entry written again by a tick:\n{}",
        lab.natd_log()
    );
    assert_eq!(ext_tcp(&lab, HOST_UPLINK_IP, 8080).as_deref(), Some(EXT_IP));
    assert!(lab.natd_log().contains(&format!("[\"{}\"]", map::GENERATIONS)), "{}", lab.natd_log());

    let pin = std::fs::read_dir(lab.bpffs.join("links"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(&format!("-up0-ingress-{}", program::EDGE_INGRESS)))
        .expect("the uplink's pinned ingress link");
    std::fs::remove_file(&pin).unwrap();
    assert_eq!(ext_tcp(&lab, HOST_UPLINK_IP, 8080), None, "its program detached: not translated");
    assert!(
        wait_until(Duration::from_secs(6), || ext_tcp(&lab, HOST_UPLINK_IP, 8080).as_deref() == Some(EXT_IP)),
        "attached again by a tick"
    );
    // Attached first, then pinned: the port may answer a moment before the pin is there.
    assert!(wait_until(Duration::from_secs(2), || pin.exists()), "pinned again:\n{}", lab.natd_log());
    assert_no_kernel_nat(&lab);
}

/// A natd upgrade with different programs: the pinned links are updated in place.
#[test]
fn restart_replaces_an_outdated_program_in_place() {
    use aya::programs::{
        SchedClassifier,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    };
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.run_script("web", &["-p", "8080:80"], &natlab::whoami(80));
    assert!(wait_listening(&lab.netns_of("web"), "tcp", 80));
    assert_eq!(ext_tcp(&lab, HOST_UPLINK_IP, 8080).as_deref(), Some(EXT_IP));
    lab.stop_natd(Signal::SIGTERM);

    // Play an older natd: put another program into the pinned uplink-ingress link.
    let pin = std::fs::read_dir(lab.bpffs.join("links"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.to_string_lossy()
                .ends_with(&format!("up0-ingress-{}", program::EDGE_INGRESS))
        })
        .expect("pinned uplink ingress link");
    let scratch = std::path::PathBuf::from(format!("{}-scratch", lab.bpffs.display()));
    std::fs::create_dir_all(&scratch).unwrap();
    {
        let mut other = aya::EbpfLoader::new()
            .default_map_pin_directory(&scratch)
            .load(natd::EBPF_OBJECT)
            .unwrap();
        let program: &mut SchedClassifier = other
            .program_mut(program::SANDBOX_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        program.load().unwrap();
        let link: FdLink = PinnedLink::from_pin(&pin).unwrap().into();
        let id = program
            .attach_to_link(SchedClassifierLink::try_from(link).unwrap())
            .unwrap();
        drop(program.take_link(id).unwrap());
    }
    for entry in std::fs::read_dir(&scratch).unwrap().flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    let _ = std::fs::remove_dir(&scratch);
    assert_eq!(
        ext_tcp(&lab, HOST_UPLINK_IP, 8080),
        None,
        "the stand-in program does not translate"
    );

    lab.restart_natd().unwrap();
    let report = lab.json(&["info"])["last_reconcile"].to_string();
    assert!(report.contains("program replaced atomically"), "{report}");
    assert_eq!(ext_tcp(&lab, HOST_UPLINK_IP, 8080).as_deref(), Some(EXT_IP));
}

/// The first datagram to a freshly published UDP port is answered, every time, on both
/// dataplanes: one attempt per port, no retry (a lost datagram is a DNS query lost).
#[test]
fn the_first_datagram_to_a_fresh_udp_port_is_answered() {
    for dataplane in ["ebpf", "nftables"] {
        let lab = Lab::started(&["--dataplane", dataplane]);
        let mut unanswered = Vec::new();
        for i in 0..15u16 {
            let (name, port) = (format!("u{i}"), 6000 + i);
            lab.run_script(
                &name,
                &["-p", &format!("{port}:53/udp")],
                &natlab::udp_reply(53, "hi"),
            );
            assert!(wait_listening(&lab.netns_of(&name), "udp", 53));
            if ext_udp(&lab, HOST_UPLINK_IP, port).as_deref() != Some("hi") {
                unanswered.push(port);
            }
            lab.ok(&["rm", &name]);
        }
        assert!(
            unanswered.is_empty(),
            "{dataplane}: first datagrams to {unanswered:?} got no answer"
        );
    }
}

#[test]
fn ports_are_published_and_withdrawn_on_a_running_sandbox() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.run_script("web", &[], &natlab::whoami(80));
    lab.run_script("other", &["-p", "8091:80"], &natlab::whoami(80));
    assert!(wait_listening(&lab.netns_of("web"), "tcp", 80));
    assert_eq!(ext_tcp(&lab, HOST_UPLINK_IP, 8090), None, "nothing published yet");
    let out = lab.ok(&["publish", "web", "8090:80"]);
    assert!(out.contains("80/tcp -> 0.0.0.0:8090"), "{out}");
    assert_eq!(ext_tcp(&lab, HOST_UPLINK_IP, 8090).as_deref(), Some(EXT_IP));
    // Docker's conflict rules and wording; nothing changes on refusal.
    let err = lab.fails(&["publish", "web", "8091:80"]);
    assert!(
        err.contains("Bind for 0.0.0.0:8091 failed: port is already allocated"),
        "{err}"
    );
    let err = lab.fails(&["publish", "web", "8092:80/sctp"]);
    assert!(err.contains("SCTP"), "{err}");
    let err = lab.fails(&["unpublish", "web", "9999"]);
    assert!(err.contains("web does not publish 9999"), "{err}");
    assert_eq!(lab.json(&["port", "web"]).as_array().map(Vec::len), Some(1));
    // Kept across a restart like every other mapping.
    lab.stop_natd(Signal::SIGTERM);
    lab.restart_natd().expect("restart natd");
    assert_eq!(ext_tcp(&lab, HOST_UPLINK_IP, 8090).as_deref(), Some(EXT_IP));
    lab.ok(&["unpublish", "web", "8090/tcp"]);
    assert_eq!(ext_tcp(&lab, HOST_UPLINK_IP, 8090), None, "withdrawn");
    assert_eq!(lab.json(&["port", "web"]).as_array().map(Vec::len), Some(0));
    let err = lab.fails(&["publish", "nosuch", "8093:80"]);
    assert!(err.contains("No such container: nosuch"), "{err}");
}

/// A host whose whole ephemeral range is reserved (every port in it published, say: the
/// range is shared by TCP and UDP) has no port to bind a socket to: natd must still start,
/// needing none (it once bound one to read its namespace's cookie and exited). Control: in
/// that namespace a socket that needs an ephemeral port really gets none.
#[test]
fn natd_starts_with_the_whole_ephemeral_range_reserved() {
    let mut lab = Lab::new().expect("lab");
    let range = lab.host_ok(&["cat", "/proc/sys/net/ipv4/ip_local_port_range"]);
    let bounds: Vec<&str> = range.split_whitespace().collect();
    let reserve = format!("echo {}-{} > /proc/sys/net/ipv4/ip_local_reserved_ports", bounds[0], bounds[1]);
    lab.host_ok(&["sh", "-c", &reserve]);
    let bind_any = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(('127.0.0.1', 0))";
    let control = lab.host(&["python3", "-c", bind_any]);
    assert!(
        !control.status.success() && String::from_utf8_lossy(&control.stderr).contains("Address already in use"),
        "no ephemeral port left: {control:?}"
    );
    lab.start_natd(&["--dataplane", "ebpf"]).expect("natd starts with no ephemeral port");
    lab.ok(&["run", "--name", "alone", "-p", "8080:80"]);
}
