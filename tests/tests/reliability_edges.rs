//! Reliability rows 9 and 10 (docs/reliability.md), edges under pressure: a client that
//! floods the connection tables from one address, and a firewall reload (`nft flush
//! ruleset`) while a slow request holds natd's lock. Short form in `cargo xtask test`, full
//! size in `cargo xtask soak`.
use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use natlab::{
    EXT_IP, HOST_UPLINK_IP, Lab,
    edges::{NIC2_HOST_IP, NIC2_PEER_IP, SecondNic},
    in_netns,
    raw::{host_tcp_in_segs, ifindex_in, mac_of, mac_of_path, send_raw, tcp_syn},
    UdpEcho, sh,
    soak::{report, size},
    tcp_line, wait_listening, wait_until, whoami,
};

/// One client sends `flows` UDP flows to the published echo port, each a request, the
/// answer, and a second request: every one qualifies for the established table.
fn udp_flood(lab: &Lab, flows: usize) -> usize {
    in_netns(&lab.ext_path(), || {
        let mut answered = 0;
        for _ in 0..flows {
            let socket = UdpSocket::bind((EXT_IP, 0)).expect("bind");
            socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            socket.connect((HOST_UPLINK_IP, 5353)).unwrap();
            let _ = socket.send(b"q");
            let mut buf = [0u8; 64];
            if socket.recv(&mut buf).is_ok() {
                answered += 1;
            }
            let _ = socket.send(b"q");
        }
        answered
    })
}

/// Whether new flows of others made it to the established table (ct ls: established)
/// after one exchange: one from the neighbour on the second NIC to the published TCP
/// port, one out of the sandbox to a server there.
fn new_flows_are_established(lab: &Lab, nic: &SecondNic) -> bool {
    let line = tcp_line(&["ip", "netns", "exec", &nic.peer_ns], NIC2_HOST_IP, 8080);
    assert_eq!(line.as_deref(), Some(NIC2_PEER_IP), "a new client still gets through");
    let _server = lab.spawn_in(&nic.peer_ns, &["sh", "-c", &whoami(9000)]);
    assert!(wait_listening(&format!("/run/netns/{}", nic.peer_ns), "tcp", 9000));
    let line = lab.tcp_line_from("echo", NIC2_PEER_IP, 9000);
    assert_eq!(line.as_deref(), Some(NIC2_HOST_IP), "a new outbound flow still gets through");
    let sandbox = lab.sandbox_ip("echo");
    let flows = lab.json(&["ct", "ls"]);
    let established = |from: &str| {
        flows.as_array().unwrap().iter().any(|f| {
            f["proto"] == "tcp" && f["original"][0] == from && f["established"] == true
        })
    };
    established(NIC2_PEER_IP) && established(&sandbox)
}

/// A flood from one client can take only its share of the tables: new flows of others
/// still become established. The control run without quotas shows what the flood does.
#[test]
fn one_client_cannot_fill_the_connection_tables() {
    let flows = size(400, 4000);
    let mut figures = Vec::new();
    for quota in [true, false] {
        let mut lab = Lab::new().expect("topology");
        let nic = SecondNic::add(&mut lab);
        let share = if quota { "10" } else { "0" };
        lab.start_natd(&[
            "--dataplane",
            "ebpf",
            "--conntrack-max",
            "512",
            "--conntrack-embryonic-max",
            "256",
            "--conntrack-source-share",
            share,
        ])
        .expect("natd");
        lab.run_script("echo", &["-p", "5353:53/udp", "-p", "8080:80"], &whoami(80));
        let ns = lab.netns_of("echo");
        let _echo = UdpEcho::start(&ns, 53);
        assert!(wait_listening(&ns, "tcp", 80));
        let answered = udp_flood(&lab, flows);
        let established = lab.json(&["stats"])["maps"]["NATD_CT4"][0].as_u64().unwrap();
        println!(
            "FLOOD quota={quota} answered={answered} established_entries={established}/512 promote_source_quota={} ct_promote_full={}",
            lab.counter("promote_source_quota"),
            lab.counter("ct_promote_full"),
        );
        figures.push(format!(
            "{} quota: {answered}/{flows} answered, {established}/512 established entries",
            if quota { "with" } else { "without" }
        ));
        if quota {
            assert!(answered >= flows * 97 / 100, "the flood's flows are answered: {answered}");
            assert!(lab.counter("promote_source_quota") > 0, "its promotions were refused beyond its share");
            assert!(established <= 2 * 26, "at most its share (25 flows) of 256: {established} entries");
            assert!(new_flows_are_established(&lab, &nic), "another client's flow is established");
        } else {
            assert_eq!(established, 512, "without a quota one client fills the table");
            assert!(!new_flows_are_established(&lab, &nic), "and new flows stay embryonic");
        }
    }
    report(
        "9 one-client flood",
        flows,
        0,
        &format!(
            "UDP flows from one client, each answered and repeated; another client's and a sandbox's new flows established: {}",
            figures.join("; ")
        ),
    );
}

/// `nft flush ruleset` while a request holds natd's lock for seconds: natd's tables are
/// back at once (the healer never waits for that lock), and 300 ms after the flush a
/// neighbour gets nothing from a sandbox address, and neither a neighbour nor a sandbox
/// reaches the host's 127.0.0.1.
#[test]
fn a_firewall_flush_is_repaired_while_a_request_holds_the_daemon() {
    let mut lab = Lab::new().expect("topology");
    lab.start_natd(&["--dataplane", "nftables"]).expect("natd");
    lab.run_script("web", &["-p", "8080:80"], &whoami(80));
    assert!(wait_listening(&lab.netns_of("web"), "tcp", 80));
    lab.ok(&["run", "--name", "attacker"]);
    let web_ip = lab.sandbox_ip("web");
    lab.ext_ok(&["ip", "route", "add", "172.18.0.0/16", "via", HOST_UPLINK_IP]);
    let _service = lab.spawn_in(&lab.host_ns, &["socat", "TCP-LISTEN:7070,bind=127.0.0.1,fork,reuseaddr", "SYSTEM:echo secret"]);
    assert!(wait_listening(&lab.host_path(), "tcp", 7070));
    let from_ext = |addr: &str, port| tcp_line(&["ip", "netns", "exec", &lab.ext_ns], addr, port);
    assert_eq!(from_ext(HOST_UPLINK_IP, 8080).as_deref(), Some(EXT_IP));
    assert_eq!(from_ext(&web_ip, 80), None);

    let rounds = size(1, 20);
    let mut slowest = Duration::ZERO;
    for round in 0..rounds {
        slowest = slowest.max(flush_while_held(&lab, &web_ip, round));
    }
    report(
        "10 firewall reload under a held lock",
        rounds,
        0,
        &format!(
            "nft flush ruleset while a request held natd for 4 s: table back after at most {} ms; 300 ms later a neighbour got nothing from a sandbox address, and neither a neighbour's nor a sandbox's SYN to 127.0.0.1 reached the host's TCP (tcpInSegs unchanged; the control SYN to the host's address counted once)",
            slowest.as_millis()
        ),
    );
}

/// One round: a slow request, a flush, the probes. Returns how long the table was gone.
fn flush_while_held(lab: &Lab, web_ip: &str, round: usize) -> Duration {
    let from_ext = |addr: &str, port| tcp_line(&["ip", "netns", "exec", &lab.ext_ns], addr, port);
    // A request that holds natd's lock for 4 s.
    lab.failpoint("rollback-record", "1*sleep(4000)");
    let socket = lab.socket.clone();
    let slow = std::thread::spawn(move || {
        sh(
            natlab::natctl_bin().to_str().unwrap(),
            &["--socket", socket.to_str().unwrap(), "run", "--name", &format!("slow{round}"), "--", "sleep", "60"],
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let table = format!("table ip {}", lab.prefix);
    lab.host_ok(&["nft", "flush", "ruleset"]);
    let flushed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), || lab.host_ok(&["nft", "list", "tables"]).contains(&table)),
        "natd's table is back:\n{}",
        lab.natd_log()
    );
    let back = flushed.elapsed();
    assert!(!slow.is_finished(), "... while the slow request still holds natd's lock");
    println!("HEAL natd's nftables table back {} ms after the flush, request still running", back.as_millis());
    assert!(back < Duration::from_secs(1), "back within a second: {back:?}");

    std::thread::sleep(Duration::from_millis(300).saturating_sub(flushed.elapsed()));
    assert_eq!(from_ext(web_ip, 80), None, "a neighbour gets nothing from a sandbox address");
    // CVE-2020-8558's frames: a SYN to the host's 127.0.0.1:7070 from a LAN neighbour (to the
    // uplink's MAC) and from a sandbox (through its gateway). Had either got through, the
    // host's TCP would have counted it (tcpInSegs, RFC 4022) and held a half-open connection.
    let syn_to = |src_mac, dst_mac, src: &str, dst| tcp_syn(src_mac, dst_mac, src.parse().unwrap(), dst, 7070);
    let loopback = std::net::Ipv4Addr::LOCALHOST;
    let (ext_mac, uplink_mac) = (mac_of(&lab.ext_ns, "lan0"), mac_of(&lab.host_ns, "up0"));
    let lan0 = ifindex_in(&lab.ext_path(), "lan0");
    let ns = lab.netns_of("attacker");
    let eth0 = ifindex_in(&ns, "eth0");
    let before = host_tcp_in_segs(lab);
    let from_neighbour = syn_to(ext_mac, uplink_mac, EXT_IP, loopback);
    in_netns(&lab.ext_path(), || send_raw(lan0, &from_neighbour));
    let from_sandbox = syn_to(
        mac_of_path(&ns, "eth0"),
        mac_of(&lab.host_ns, &lab.bridge),
        &lab.sandbox_ip("attacker"),
        loopback,
    );
    in_netns(&ns, || send_raw(eth0, &from_sandbox));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(host_tcp_in_segs(lab), before, "no segment reached the host's TCP");
    let half_open = lab.host_ok(&["ss", "-Htn", "state", "syn-recv", "sport", "=", ":7070"]);
    assert!(half_open.trim().is_empty(), "nothing reached the host's loopback: {half_open}");
    // Control: the neighbour's same SYN to the host's own address reaches the host's TCP (and
    // is refused there: the service listens on 127.0.0.1 only).
    let control = syn_to(ext_mac, uplink_mac, EXT_IP, HOST_UPLINK_IP.parse().unwrap());
    in_netns(&lab.ext_path(), || send_raw(lan0, &control));
    assert!(
        wait_until(Duration::from_secs(2), || host_tcp_in_segs(lab) == before + 1),
        "control: the SYN to the host's address is counted once ({} -> {})",
        before,
        host_tcp_in_segs(lab)
    );
    assert_eq!(from_ext(HOST_UPLINK_IP, 8080).as_deref(), Some(EXT_IP), "control: the published port works");
    let out = slow.join().expect("slow request");
    assert!(out.status.success(), "the slow request completes");
    back
}
