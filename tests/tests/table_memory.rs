//! natd's kernel memory follows what the host uses (issue 25, "memory sized by use"):
//! hash tables allocate an entry when it is inserted, so their memory grows with the
//! flows they hold; the IPv6 tables stay dormant (a few entries each) until the first
//! IPv6 network, which grows them to full size live, every IPv4 flow and masquerade
//! mapping carried on; a restart makes them dormant again once nothing IPv6 is left (and
//! keeps them full while they hold IPv6 flows or natd has an IPv6 network).
use std::{
    collections::BTreeMap,
    net::{TcpStream, UdpSocket},
    time::Duration,
};

use aya::maps::MapInfo;
use nat_common::names::map;
use natlab::{EXT_IP, EXT_IP6, HOST_UPLINK_IP, HOST_UPLINK_IP6, Lab, echo_line, in_netns, wait_listening, whoami6};
use natd::dataplane::ebpf::sizes::{IPV6_DORMANT_ENTRIES, IPV6_TABLES};

const TIMEOUT: Duration = Duration::from_secs(3);

/// (map id, capacity) of every map pinned under the lab's `maps` directory, by name.
fn pinned(lab: &Lab) -> BTreeMap<String, (u32, u32)> {
    std::fs::read_dir(lab.bpffs.join("maps"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let info = MapInfo::from_pin(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().to_string(), (info.id(), info.max_entries())))
        })
        .collect()
}

/// The kernel memory `natctl stats` reports for each of natd's maps, bytes.
fn memory(lab: &Lab) -> BTreeMap<String, u64> {
    serde_json::from_value(lab.json(&["stats"])["map_memory"].clone()).expect("map_memory in natctl stats")
}

fn connect(ns: &str, addr: &str, port: u16) -> TcpStream {
    let stream = in_netns(ns, || TcpStream::connect_timeout(&format!("{addr}:{port}").parse().unwrap(), TIMEOUT))
        .expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

fn udp_echo(socket: &UdpSocket, text: &str) -> bool {
    let mut buf = [0u8; 64];
    socket.send(text.as_bytes()).is_ok() && socket.recv(&mut buf).is_ok_and(|n| &buf[..n] == text.as_bytes())
}

/// Creates the IPv6 network `n6` with a sandbox `web6` publishing 8086 and checks that a
/// client outside reaches it over IPv6, seen with its own address (`how`: for the message).
fn first_ipv6_sandbox_answers(lab: &Lab, how: &str) {
    lab.ok(&["network", "create", "--ipv6", "n6"]);
    lab.run_script("web6", &["--network", "n6", "-p", "8086:80"], &whoami6(80));
    let out = lab.ext(&["socat", "-t3", "-T3", "-", &format!("TCP:[{HOST_UPLINK_IP6}]:8086,connect-timeout=3")]);
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        natlab::peer_ip(&line).map(|ip| ip.to_string()),
        Some(EXT_IP6.to_string()),
        "the IPv6 published port answers {how}: {line:?}\n{}",
        lab.natd_log()
    );
}

#[test]
fn the_first_ipv6_network_grows_the_dormant_ipv6_tables_with_every_flow_kept() {
    // Closed TCP flows expire within seconds here (the last step waits for the IPv6 ones).
    let mut lab = Lab::started(&["--dataplane", "ebpf", "--conntrack-timeout", "tcp-closing=2", "--gc-interval", "1"]);
    let start = pinned(&lab);
    for name in IPV6_TABLES {
        assert_eq!(start[name].1, IPV6_DORMANT_ENTRIES, "{name} dormant: no IPv6 network yet");
    }
    assert_eq!(start[map::CT4].1, nat_common::DEFAULT_CT_ENTRIES, "the IPv4 connection table at its default size");
    let detail = &lab.json(&["info"])["dataplane_detail"];
    assert_eq!(detail["ipv6_tables"], "dormant (no IPv6 network yet)", "{detail}");
    let empty = memory(&lab);

    // Flows both ways over IPv4, held: a published port's and a masqueraded sandbox's,
    // TCP and UDP.
    lab.run_script("srv", &["-p", "8081:81"], "socat TCP-LISTEN:81,fork,reuseaddr EXEC:cat");
    lab.ok(&["run", "--name", "cli"]);
    let _outside = [
        lab.spawn_in(&lab.ext_ns, &["socat", "TCP-LISTEN:9000,fork,reuseaddr", "EXEC:cat"]),
        lab.spawn_in(&lab.ext_ns, &["socat", "UDP-LISTEN:9001,fork,reuseaddr", "PIPE"]),
    ];
    assert!(wait_listening(&lab.netns_of("srv"), "tcp", 81));
    assert!(wait_listening(&lab.ext_path(), "tcp", 9000) && wait_listening(&lab.ext_path(), "udp", 9001));
    let mut held = vec![
        ("inbound (published port)", connect(&lab.ext_path(), HOST_UPLINK_IP, 8081)),
        ("outbound (masqueraded)", connect(&lab.netns_of("cli"), EXT_IP, 9000)),
    ];
    let datagrams = in_netns(&lab.netns_of("cli"), || UdpSocket::bind("0.0.0.0:0")).expect("bind");
    datagrams.connect(format!("{EXT_IP}:9001")).unwrap();
    datagrams.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert!(udp_echo(&datagrams, "before"), "UDP masqueraded: works before");
    for (what, stream) in &mut held {
        assert!(echo_line(stream, "before"), "{what}: works before");
    }
    // Allocated by use: the established table's memory grew by the flows it now holds
    // (the fill the expiry pass counted: read exactly, as `natctl stats` does).
    let used = memory(&lab);
    let (flows, _) = lab.json(&["stats"])["maps"][map::CT4]
        .as_array()
        .map(|a| (a[0].as_u64().unwrap(), a[1].as_u64().unwrap()))
        .expect("NATD_CT4 in natctl stats");
    assert!(flows >= 4, "the held flows are established (two entries each): {flows}");
    assert!(
        used[map::CT4] > empty[map::CT4],
        "NATD_CT4's memory follows its entries: {} bytes empty, {} with {flows}",
        empty[map::CT4],
        used[map::CT4]
    );
    let udp_before = lab.udp_flows();
    assert!(!udp_before.is_empty(), "the masqueraded UDP flow is listed");

    // The first IPv6 network: its sandbox answers over IPv6 (the control: the grown tables
    // are the ones its programs use), with the client's own address seen.
    first_ipv6_sandbox_answers(&lab, "through the grown tables");

    let grown = pinned(&lab);
    for name in IPV6_TABLES {
        assert!(grown[name].1 > IPV6_DORMANT_ENTRIES, "{name} grown: {:?}", grown[name]);
        assert_ne!(grown[name].0, start[name].0, "{name} is a new map");
    }
    assert_eq!(grown[map::CT6].1, grown[map::CT4].1, "CT6 sized as CT4 (--conntrack-max)");
    for (name, (id, _)) in &start {
        if !IPV6_TABLES.contains(&name.as_str()) {
            assert_eq!(grown[name].0, *id, "{name} kept as it was (not an IPv6 table)");
        }
    }
    let detail = &lab.json(&["info"])["dataplane_detail"];
    assert_eq!(detail["ipv6_tables"], "full", "{detail}");
    // The host-bound miss filter is on after the reload (its marks kept).
    assert_eq!(detail["port_filter"]["on"], true, "{detail}");
    let broken: Vec<&str> = held
        .iter_mut()
        .filter_map(|(what, stream)| (!echo_line(stream, "after")).then_some(*what))
        .collect();
    assert!(broken.is_empty(), "broken by the growth: {broken:?}\n{}", lab.natd_log());
    assert!(udp_echo(&datagrams, "after"), "UDP masqueraded: carries on");
    let udp_after = lab.udp_flows();
    assert!(udp_before.is_subset(&udp_after), "the UDP flow keeps its NAT port: {udp_before:?} -> {udp_after:?}");
    let full = memory(&lab);
    let ipv6_bytes = |m: &BTreeMap<String, u64>| IPV6_TABLES.iter().map(|n| m[*n]).sum::<u64>();
    println!(
        "TABLE MEMORY: all maps {:.1} MiB with no IPv6 network ({:.1} MiB of it IPv6 tables), {:.1} MiB after the \
         first ({:.1} MiB IPv6)",
        empty.values().sum::<u64>() as f64 / 1048576.0,
        ipv6_bytes(&empty) as f64 / 1048576.0,
        full.values().sum::<u64>() as f64 / 1048576.0,
        ipv6_bytes(&full) as f64 / 1048576.0,
    );
    assert!(ipv6_bytes(&full) > ipv6_bytes(&empty), "the IPv6 tables took their memory");

    // The IPv6 network gone and its flows expired, a restart makes the IPv6 tables dormant
    // again: the memory back, the IPv4 flows carried on.
    lab.ok(&["rm", "web6"]);
    lab.ok(&["network", "rm", "n6"]);
    let ipv6_flows = |lab: &Lab| {
        let maps = &lab.json(&["stats"])["maps"];
        [map::CT6, map::CT6_NEW].iter().map(|n| maps[*n][0].as_u64().unwrap_or(0)).sum::<u64>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ipv6_flows(&lab) > 0 {
        assert!(std::time::Instant::now() < deadline, "the closed IPv6 flows expire (tcp-closing=2)");
        std::thread::sleep(Duration::from_millis(500));
    }
    lab.restart_natd().expect("restart");
    let shrunk = pinned(&lab);
    for name in IPV6_TABLES {
        assert_eq!(shrunk[name].1, IPV6_DORMANT_ENTRIES, "{name} dormant again: nothing IPv6 left");
    }
    assert_eq!(lab.json(&["info"])["dataplane_detail"]["ipv6_tables"], "dormant (no IPv6 network yet)");
    let back = memory(&lab);
    assert!(
        ipv6_bytes(&back) < ipv6_bytes(&full) / 10,
        "the IPv6 tables' memory back: {} -> {} bytes",
        ipv6_bytes(&full),
        ipv6_bytes(&back)
    );
    for (what, stream) in &mut held {
        assert!(echo_line(stream, "after the restarts"), "{what}: after the restarts");
    }
    assert!(udp_echo(&datagrams, "after the restarts"), "UDP masqueraded: after the restarts");
}

/// A growth that fails (here injected: fail point `grow-ipv6-tables`; in life the verifier
/// or the memory for the tables) does not fail the IPv6 network: it is created, its
/// sandbox answers over IPv6 on the dormant tables, `natctl info` says why they are
/// dormant, and the IPv4 flows are untouched. Control: the same sandbox's answer is what
/// the grown tables give in the test above.
#[test]
fn an_ipv6_network_works_on_the_dormant_tables_when_they_cannot_grow() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.run_script("srv", &["-p", "8081:81"], "socat TCP-LISTEN:81,fork,reuseaddr EXEC:cat");
    assert!(wait_listening(&lab.netns_of("srv"), "tcp", 81));
    let mut held = connect(&lab.ext_path(), HOST_UPLINK_IP, 8081);
    assert!(echo_line(&mut held, "before"), "the published port answers before");
    lab.failpoint("grow-ipv6-tables", "return");
    first_ipv6_sandbox_answers(&lab, "on the dormant tables");
    let tables = pinned(&lab);
    for name in IPV6_TABLES {
        assert_eq!(tables[name].1, IPV6_DORMANT_ENTRIES, "{name} still dormant");
    }
    let state = lab.json(&["info"])["dataplane_detail"]["ipv6_tables"].as_str().unwrap_or_default().to_string();
    assert!(
        state.starts_with("dormant: growth failed") && state.contains("grow-ipv6-tables"),
        "natctl info says why: {state}"
    );
    assert!(lab.natd_log().contains("the IPv6 tables could not grow"), "logged");
    assert!(echo_line(&mut held, "after"), "the IPv4 connection carries on");
}

/// Packets `natctl stats` counts for the published mapping whose description starts with
/// `prefix` (e.g. "0.0.0.0:8080->").
fn mapping_packets(lab: &Lab, prefix: &str) -> u64 {
    let stats = lab.json(&["stats"]);
    stats["mappings"]
        .as_array()
        .expect("mappings in natctl stats")
        .iter()
        .find(|m| m["mapping"].as_str().is_some_and(|d| d.starts_with(prefix)))
        .and_then(|m| m["packets"].as_u64())
        .unwrap_or_else(|| panic!("no mapping {prefix} in {stats}"))
}

/// `--max-published-ports` sizes the published-port tables and the per-mapping counters
/// (a region of 16 bytes per mapping for each possible CPU), so a host that publishes few
/// ports does not pay 2 MiB per CPU for them. A request for more mappings than it allows is
/// refused naming the option, with nothing changed, where one that fits passes; a restart
/// with a larger size carries every counter into the new regions; a start with a size
/// below the mappings natd has is refused before anything is loaded, every pin kept.
#[test]
fn max_published_ports_sizes_the_counters_and_is_enforced() {
    let cpus = natd::dataplane::ebpf::mapping_stats::cpu_regions().unwrap();
    let mut lab = Lab::started(&["--dataplane", "ebpf", "--max-published-ports", "1024"]);
    let maps = pinned(&lab);
    assert_eq!(maps[map::MAPPING_STATS].1, 1024 * cpus, "a region of 1024 counters per possible CPU");
    assert_eq!(maps[map::PORTS4].1, 1024);
    let counters = &lab.json(&["info"])["dataplane_detail"]["maps"]["mapping_counters"];
    assert_eq!(counters["mappings"], 1024, "{counters}");
    assert_eq!(counters["bytes_per_cpu"], 1024 * 16, "{counters}");

    lab.run_script("web", &["-p", "8080:80"], &natlab::whoami(80));
    assert!(wait_listening(&lab.netns_of("web"), "tcp", 80));
    let outside = |lab: &Lab| natlab::tcp_line(&["ip", "netns", "exec", &lab.ext_ns], HOST_UPLINK_IP, 8080);
    for _ in 0..3 {
        assert_eq!(outside(&lab).as_deref(), Some(EXT_IP), "the published port answers");
    }
    // Three connections: at least a SYN, an ACK and a FIN each went in.
    let counted = mapping_packets(&lab, "0.0.0.0:8080->");
    assert!(counted >= 9, "the mapping's packets counted in this CPU's region: {counted}");

    // 1,100 more mappings do not fit beside the one held; 1,000 do (the control).
    let err = lab.fails(&["run", "--name", "many", "-p", "20000-21099:20000-21099/udp"]);
    assert!(err.contains("--max-published-ports") && err.contains("1024"), "{err}");
    assert!(lab.fails(&["inspect", "many"]).contains("many"), "the refused sandbox is not kept");
    lab.ok(&["run", "--name", "fits", "-p", "20000-20999:20000-20999/udp"]);
    assert_eq!(outside(&lab).as_deref(), Some(EXT_IP), "published ports still answer");
    // Settled: the last connection's closing packets counted before the figure is taken.
    let mut counted = mapping_packets(&lab, "0.0.0.0:8080->");
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(200));
        let now = mapping_packets(&lab, "0.0.0.0:8080->");
        if now == counted {
            break;
        }
        counted = now;
    }

    // Larger: a new array, every counter carried into its region.
    lab.start_natd(&["--dataplane", "ebpf", "--max-published-ports", "2048"]).expect("a restart with a larger size");
    let maps = pinned(&lab);
    assert_eq!(maps[map::MAPPING_STATS].1, 2048 * cpus);
    assert_eq!(maps[map::PORTS4].1, 2048);
    assert_eq!(mapping_packets(&lab, "0.0.0.0:8080->"), counted, "the counters carried over");
    assert_eq!(outside(&lab).as_deref(), Some(EXT_IP));
    assert!(mapping_packets(&lab, "0.0.0.0:8080->") > counted, "and counting on in the new regions");
    lab.ok(&["run", "--name", "more", "-p", "30000-30499:30000-30499/udp"]);

    // 1,501 mappings: a start allowing 1,024 would drop some. Refused, nothing changed.
    lab.stop_natd(nix::sys::signal::Signal::SIGTERM);
    let before = pinned(&lab);
    let err = lab
        .start_natd(&["--dataplane", "ebpf", "--max-published-ports", "1024"])
        .expect_err("a start below the mappings held is refused");
    assert!(
        err.to_string().contains("1501 published mappings") && err.to_string().contains("Nothing was changed"),
        "{err}"
    );
    assert_eq!(pinned(&lab), before, "every pin as it was");
    lab.start_natd(&["--dataplane", "ebpf", "--max-published-ports", "2048"]).expect("the same size starts");
    assert_eq!(outside(&lab).as_deref(), Some(EXT_IP));

    // 501 mappings left would fit in 1,024, but "more"'s sit in slots above 1,000 (taken
    // after "fits"'s): moved to other slots, their flows would outlive them. Refused too.
    lab.ok(&["rm", "fits"]);
    lab.stop_natd(nix::sys::signal::Signal::SIGTERM);
    let before = pinned(&lab);
    let err = lab
        .start_natd(&["--dataplane", "ebpf", "--max-published-ports", "1024"])
        .expect_err("a start below the slots held is refused");
    assert!(err.to_string().contains("holds slot") && err.to_string().contains("Nothing was changed"), "{err}");
    assert_eq!(pinned(&lab), before, "every pin as it was");
    lab.start_natd(&["--dataplane", "ebpf", "--max-published-ports", "2048"]).expect("the same size starts");
    assert_eq!(outside(&lab).as_deref(), Some(EXT_IP));
}

/// `--masquerade-max` sizes the masquerade tables (mappings, held ports, shared ports,
/// peers; the last two LRUs the kernel allocates whole), so a host with few masqueraded
/// flows does not hold 21 MiB for them. A restart with a larger size carries every mapping
/// (the UDP flow keeps its external port and goes on); the IPv6 ones stay dormant.
#[test]
fn masquerade_max_sizes_the_masquerade_tables() {
    let mut lab = Lab::started(&["--dataplane", "ebpf", "--masquerade-max", "4096"]);
    let tables = [map::SNAT4, map::SNAT4_PORTS, map::SNAT4_SHARED, map::SNAT4_PEERS];
    let maps = pinned(&lab);
    for name in tables {
        assert_eq!(maps[name].1, 4096, "{name} sized by --masquerade-max");
    }
    for name in [map::SNAT6, map::SNAT6_PEERS] {
        assert_eq!(maps[name].1, IPV6_DORMANT_ENTRIES, "{name} dormant: no IPv6 network");
    }
    let small = memory(&lab);

    lab.ok(&["run", "--name", "cli"]);
    let _echo = lab.spawn_in(&lab.ext_ns, &["socat", "UDP-LISTEN:9001,fork,reuseaddr", "PIPE"]);
    assert!(wait_listening(&lab.ext_path(), "udp", 9001));
    let datagrams = in_netns(&lab.netns_of("cli"), || UdpSocket::bind("0.0.0.0:0")).expect("bind");
    datagrams.connect(format!("{EXT_IP}:9001")).unwrap();
    datagrams.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert!(udp_echo(&datagrams, "before"), "UDP masqueraded through the smaller tables");
    let flows_before = lab.udp_flows();
    assert!(!flows_before.is_empty(), "the masqueraded UDP flow is listed");

    lab.start_natd(&["--dataplane", "ebpf", "--masquerade-max", "8192"]).expect("a restart with a larger size");
    let maps = pinned(&lab);
    for name in tables {
        assert_eq!(maps[name].1, 8192, "{name} resized");
    }
    let large = memory(&lab);
    for name in [map::SNAT4_SHARED, map::SNAT4_PEERS] {
        assert!(large[name] > small[name], "{name}, an LRU, takes memory by its size: {} -> {}", small[name], large[name]);
    }
    assert!(udp_echo(&datagrams, "after"), "the UDP flow goes on");
    assert!(
        flows_before.is_subset(&lab.udp_flows()),
        "its mapping carried over, the same external port: {flows_before:?} -> {:?}",
        lab.udp_flows()
    );
}
