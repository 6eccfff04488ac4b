//! Every path a Docker user relies on, end to end: published ports from the host itself
//! (127.0.0.1 included) and from sandboxes (hairpin), loopback-only ports that stay
//! loopback-only (on both dataplanes), isolation between and inside networks, ICMP errors
//! through the NAT, and what `natctl stats`, `natctl ct ls` and `natctl info` show.
use std::{
    net::{TcpStream, UdpSocket},
    time::Duration,
};

use etherparse::PacketBuilder;
use nat_common::names::{map, program};
use natlab::{
    EXT_IP, HOST_UPLINK_IP, Lab, in_netns,
    raw::{ifindex_in, mac_of, mac_of_path, send_raw},
    sh, wait_listening, wait_until,
};

fn from_sandbox(lab: &Lab, sandbox: &str, addr: &str, port: u16) -> Option<String> {
    lab.tcp_line_from(sandbox, addr, port)
}

fn from_host(lab: &Lab, addr: &str, port: u16) -> Option<String> {
    natlab::tcp_line(&["ip", "netns", "exec", &lab.host_ns], addr, port)
}

fn from_ext(lab: &Lab, addr: &str, port: u16) -> Option<String> {
    natlab::tcp_line(&["ip", "netns", "exec", &lab.ext_ns], addr, port)
}

#[test]
fn published_ports_from_the_host_and_from_sandboxes_ebpf() {
    published_ports_from_the_host_and_from_sandboxes("ebpf");
}

#[test]
fn published_ports_from_the_host_and_from_sandboxes_nftables() {
    published_ports_from_the_host_and_from_sandboxes("nftables");
}

fn published_ports_from_the_host_and_from_sandboxes(dataplane: &str) {
    let ebpf = dataplane == "ebpf";
    let lab = Lab::started(&["--dataplane", dataplane]);
    lab.ok(&["network", "create", "--subnet", "10.31.0.0/24", "front"]);
    lab.ok(&["network", "create", "--subnet", "10.32.0.0/24", "back"]);
    lab.run_script(
        "web",
        &["--network", "front", "-p", "8080:80", "-p", "127.0.0.1:8081:81"],
        &format!("{} & {} & wait", natlab::whoami(80), natlab::whoami(81)),
    );
    lab.ok(&["run", "--name", "peer", "--network", "front"]);
    lab.run_script("dns", &["-p", "5300:53/udp"], &natlab::udp_reply(53, "hi"));
    lab.ok(&["run", "--name", "other", "--network", "back"]);
    let ns = lab.netns_of("web");
    assert!(wait_listening(&ns, "tcp", 80) && wait_listening(&ns, "tcp", 81));
    assert!(wait_listening(&lab.netns_of("dns"), "udp", 53));
    let web_ip = lab.sandbox_ip("web");

    // The host itself: through its uplink address and through 127.0.0.1 (socket hooks for
    // eBPF; output-chain DNAT with route_localnet on the bridge for nftables).
    assert!(
        from_host(&lab, HOST_UPLINK_IP, 8080).is_some(),
        "host -> uplink address"
    );
    assert!(
        from_host(&lab, "127.0.0.1", 8080).is_some(),
        "host -> 127.0.0.1 (published on 0.0.0.0)"
    );
    assert!(
        from_host(&lab, "127.0.0.1", 8081).is_some(),
        "host -> 127.0.0.1 (published on 127.0.0.1)"
    );
    if ebpf {
        assert!(lab.counter("sock_rewrites") >= 3);
    }
    // The application sees the address it used, not the sandbox behind it: TCP's peer name
    // (getpeername hook) and the source of UDP replies (recvmsg hook).
    let (tcp_peer, udp_from) = in_netns(&lab.host_path(), || {
        let stream = TcpStream::connect(("127.0.0.1", 8080)).expect("connect from the host");
        let socket = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        socket.send_to(b"q", ("127.0.0.1", 5300)).unwrap();
        let mut buf = [0u8; 64];
        let from = socket.recv_from(&mut buf).ok().map(|(_, addr)| addr.to_string());
        (stream.peer_addr().unwrap().to_string(), from)
    });
    assert_eq!(tcp_peer, "127.0.0.1:8080");
    assert_eq!(udp_from.as_deref(), Some("127.0.0.1:5300"));

    // From a sandbox on the same network, on another network, and from web itself.
    assert_eq!(
        from_sandbox(&lab, "peer", HOST_UPLINK_IP, 8080).as_deref(),
        Some(lab.sandbox_ip("peer").as_str())
    );
    assert_eq!(
        from_sandbox(&lab, "other", HOST_UPLINK_IP, 8080).as_deref(),
        Some(lab.sandbox_ip("other").as_str()),
        "across networks through a host address"
    );
    let hairpin =
        from_sandbox(&lab, "web", HOST_UPLINK_IP, 8080).expect("hairpin: web reaches its own published port");
    assert_eq!(
        hairpin, "10.31.0.1",
        "hairpin traffic comes from the network's gateway"
    );
    // A loopback-only port is not reachable from sandboxes through the host.
    assert_eq!(from_sandbox(&lab, "peer", HOST_UPLINK_IP, 8081), None);
    // Nor from the LAN through the uplink address.
    assert_eq!(from_ext(&lab, HOST_UPLINK_IP, 8081), None);
    // The socket hooks act only in natd's namespace: 127.0.0.1:8080 in ext is ext's own.
    assert_eq!(from_ext(&lab, "127.0.0.1", 8080), None);
    // Direct to the sandbox address from another network: isolated.
    assert_eq!(from_sandbox(&lab, "other", &web_ip, 80), None);
    assert!(lab.counter("drop_cross_network") > 0);
}

/// The attack CVE-2020-8558 describes, from a sandbox: a frame to the gateway's MAC aimed
/// at 127.0.0.1 must not reach the host's loopback services (nor a loopback-only port).
fn sandbox_cannot_reach_the_hosts_loopback(lab: &Lab) {
    lab.ok(&["run", "--name", "attacker"]);
    let _service = lab.spawn_in(
        &lab.host_ns,
        &[
            "socat",
            "TCP-LISTEN:7070,bind=127.0.0.1,fork,reuseaddr",
            "SYSTEM:echo secret",
        ],
    );
    assert!(wait_listening(&lab.host_path(), "tcp", 7070));
    let ns = lab.netns_of("attacker");
    let sandbox_mac = mac_of_path(&ns, "eth0");
    let gateway_mac = mac_of(&lab.host_ns, &lab.bridge);
    let before = lab.counter("drop_loopback_spoof");
    let ifindex = ifindex_in(&ns, "eth0");
    for port in [7070u16, 8081] {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(sandbox_mac, gateway_mac)
            .ipv4(
                lab.sandbox_ip("attacker")
                    .parse::<std::net::Ipv4Addr>()
                    .unwrap()
                    .octets(),
                [127, 0, 0, 1],
                64,
            )
            .tcp(40000, port, 1, 64240)
            .syn()
            .write(&mut frame, &[])
            .unwrap();
        in_netns(&ns, || send_raw(ifindex, &frame));
    }
    assert!(
        wait_until(Duration::from_secs(2), || lab.counter("drop_loopback_spoof")
            >= before + 2),
        "dropped before routing"
    );
}

/// A neighbour that sends crafted frames to the host's MAC aimed at 127.0.0.1, or routes a
/// sandbox subnet via the host, gets nothing.
#[test]
fn loopback_ports_and_sandbox_addresses_are_not_exposed_to_neighbours_ebpf() {
    loopback_ports_and_sandbox_addresses_are_not_exposed_to_neighbours("ebpf");
}

#[test]
fn loopback_ports_and_sandbox_addresses_are_not_exposed_to_neighbours_nftables() {
    loopback_ports_and_sandbox_addresses_are_not_exposed_to_neighbours("nftables");
}

fn loopback_ports_and_sandbox_addresses_are_not_exposed_to_neighbours(dataplane: &str) {
    let lab = Lab::started(&["--dataplane", dataplane]);
    lab.run_script("web", &["-p", "127.0.0.1:8081:80"], &natlab::whoami(80));
    assert!(wait_listening(&lab.netns_of("web"), "tcp", 80));
    let web_ip = lab.sandbox_ip("web");
    let host_mac = mac_of(&lab.host_ns, "up0");
    let ext_mac = mac_of(&lab.ext_ns, "lan0");
    let before = lab.counter("drop_loopback_spoof");
    // A SYN to 127.0.0.1:8081 in a frame addressed to the host's uplink MAC.
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(ext_mac, host_mac)
        .ipv4([198, 51, 100, 2], [127, 0, 0, 1], 64)
        .tcp(40000, 8081, 1, 64240)
        .syn()
        .write(&mut frame, &[])
        .unwrap();
    let ifindex = ifindex_in(&lab.ext_path(), "lan0");
    for _ in 0..3 {
        in_netns(&lab.ext_path(), || send_raw(ifindex, &frame));
    }
    assert!(
        wait_until(Duration::from_secs(2), || lab.counter("drop_loopback_spoof")
            >= before + 3),
        "dropped at the uplink"
    );
    assert_eq!(lab.counter("dnat_new"), 0, "never translated");
    // Nor from a sandbox through its gateway.
    sandbox_cannot_reach_the_hosts_loopback(&lab);

    // Route the default network via the host and try the sandbox address directly.
    lab.ext_ok(&["ip", "route", "add", "172.18.0.0/16", "via", HOST_UPLINK_IP]);
    assert_eq!(
        from_ext(&lab, &web_ip, 80),
        None,
        "no direct access to a sandbox address"
    );
    assert!(
        !lab.ext(&["ping", "-c1", "-W1", &web_ip]).status.success(),
        "not even ping"
    );
    assert!(lab.counter("drop_direct_access") >= 2);
    // The host's own bridge address stays reachable, as with Docker.
    assert!(lab.ext(&["ping", "-c1", "-W2", "172.18.0.1"]).status.success());
}

#[test]
fn isolation_between_and_inside_networks() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.ok(&["network", "create", "--subnet", "10.41.0.0/24", "red"]);
    lab.ok(&["network", "create", "--subnet", "10.42.0.0/24", "blue"]);
    lab.ok(&[
        "network",
        "create",
        "--subnet",
        "10.43.0.0/24",
        "--icc=false",
        "quiet",
    ]);
    for (name, net) in [
        ("r1", "red"),
        ("r2", "red"),
        ("b1", "blue"),
        ("q1", "quiet"),
        ("q2", "quiet"),
    ] {
        lab.ok(&["run", "--name", name, "--network", net]);
    }
    let ping = |from: &str, to: &str| {
        lab.exec(from, &["ping", "-c1", "-W1", &lab.sandbox_ip(to)])
            .status
            .success()
    };
    assert!(ping("r1", "r2"), "same network talks");
    assert!(!ping("r1", "b1") && !ping("b1", "r1"), "networks are isolated");
    assert!(!ping("q1", "q2"), "icc=false blocks sandbox to sandbox");
    assert!(
        lab.exec("q1", &["ping", "-c1", "-W1", "10.43.0.1"])
            .status
            .success(),
        "but not the gateway"
    );
    let stats = lab.json(&["stats"]);
    assert!(stats["counters"]["drop_cross_network"].as_u64().unwrap() > 0);
    assert!(stats["counters"]["drop_icc"].as_u64().unwrap() > 0);
    // Published ports still connect them through a host address.
    lab.run_script(
        "srv",
        &["--network", "blue", "-p", "9090:90"],
        &natlab::whoami(90),
    );
    assert!(wait_listening(&lab.netns_of("srv"), "tcp", 90));
    assert!(from_sandbox(&lab, "q1", HOST_UPLINK_IP, 9090).is_some());
    assert!(from_sandbox(&lab, "r1", HOST_UPLINK_IP, 9090).is_some());
}

#[test]
fn icmp_errors_come_back_through_the_nat() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    // A router behind ext: "far" at 203.0.113.2, so a TTL can expire on the way.
    let far = lab.add_netns("far").unwrap();
    sh(
        "ip",
        &[
            "link",
            "add",
            "tofar",
            "netns",
            &lab.ext_ns,
            "type",
            "veth",
            "peer",
            "name",
            "fromext",
            "netns",
            &far,
        ],
    );
    lab.ext_ok(&["ip", "addr", "add", "203.0.113.1/24", "dev", "tofar"]);
    lab.ext_ok(&["ip", "link", "set", "tofar", "up"]);
    lab.ext(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    lab.in_ns_ok(&far, &["ip", "addr", "add", "203.0.113.2/24", "dev", "fromext"]);
    lab.in_ns_ok(&far, &["ip", "link", "set", "fromext", "up"]);
    lab.in_ns_ok(&far, &["ip", "route", "add", "default", "via", "203.0.113.1"]);
    lab.ok(&["run", "--name", "tracer"]);
    assert!(
        lab.exec("tracer", &["ping", "-c1", "-W2", "203.0.113.2"])
            .status
            .success(),
        "far is reachable"
    );
    // TTL 2: the host forwards (TTL 1), ext's router drops it and answers with time
    // exceeded to the uplink address; natd hands it to the sandbox.
    let out = lab.exec("tracer", &["ping", "-c1", "-W2", "-t", "2", "203.0.113.2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Time to live exceeded") && text.contains(EXT_IP),
        "traceroute through the NAT: {text}"
    );

    // Port unreachable for a published UDP port nobody listens on: the client's connected
    // socket sees the refusal.
    lab.ok(&["run", "--name", "silent", "-p", "5353:53/udp"]);
    let socket = in_netns(&lab.ext_path(), || UdpSocket::bind((EXT_IP, 0)).unwrap());
    socket.connect((HOST_UPLINK_IP, 5353)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    socket.send(b"anyone?").unwrap();
    let mut buf = [0u8; 16];
    let err = socket.recv(&mut buf).expect_err("no answer expected");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "the ICMP error reached the client's socket"
    );

    // Fragmentation needed: the sandbox network's bridge has a smaller MTU than the path
    // the client uses, and the sandbox advertises a large MSS; PMTU discovery must work.
    lab.ok(&[
        "network",
        "create",
        "--subnet",
        "10.51.0.0/24",
        "--mtu",
        "1280",
        "small",
    ]);
    lab.run_script(
        "sink",
        &["--network", "small", "-p", "8088:80"],
        "socat TCP-LISTEN:80,reuseaddr,fork SYSTEM:'wc -c'",
    );
    lab.exec_ok("sink", &["ip", "link", "set", "eth0", "mtu", "1500"]);
    assert!(wait_listening(&lab.netns_of("sink"), "tcp", 80));
    let out = sh(
        "sh",
        &[
            "-c",
            &format!(
                "head -c 200000 /dev/zero | ip netns exec {} socat -t5 -T8 - TCP:{HOST_UPLINK_IP}:8088,connect-timeout=3",
                lab.ext_ns
            ),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200000",
        "a 200 kB upload through a smaller MTU completes"
    );
    assert!(
        lab.counter("icmp_error_translated") >= 3,
        "time exceeded, port unreachable and fragmentation needed were translated"
    );
}

#[test]
fn stats_conntrack_and_info_show_what_happens() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.run_script("web", &["-p", "8080:80"], &natlab::whoami(80));
    assert!(wait_listening(&lab.netns_of("web"), "tcp", 80));
    // Keep one connection open so it shows in the table.
    let stream = in_netns(&lab.ext_path(), || {
        TcpStream::connect((HOST_UPLINK_IP, 8080)).unwrap()
    });
    for _ in 0..3 {
        assert!(from_ext(&lab, HOST_UPLINK_IP, 8080).is_some());
    }
    let stats = lab.json(&["stats"]);
    let mapping = &stats["mappings"][0];
    assert_eq!(mapping["sandbox"], "web");
    assert!(mapping["mapping"].as_str().unwrap().starts_with("0.0.0.0:8080->"));
    assert!(
        mapping["packets"].as_u64().unwrap() >= 12,
        "per-mapping packets: {mapping}"
    );
    assert!(mapping["bytes"].as_u64().unwrap() > 0);
    assert!(
        stats["maps"][map::CT4][0].as_u64().unwrap() >= 2,
        "map fill level"
    );
    let table = lab.ok(&["stats"]);
    assert!(
        table.contains("DROP REASON") && table.contains("cross_network") && table.contains("0.0.0.0:8080->"),
        "{table}"
    );

    let flows = lab.json(&["ct", "ls"]);
    let dnat = flows
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "dnat" && f["original"][2] == HOST_UPLINK_IP)
        .unwrap_or_else(|| panic!("a dnat flow: {flows}"));
    assert_eq!(dnat["original"][3], 8080);
    assert_eq!(dnat["translated"][2], lab.sandbox_ip("web").as_str());
    assert_eq!(dnat["translated"][3], 80);
    assert!(lab.ok(&["ct", "ls"]).contains(&format!("{EXT_IP}:")));

    let info = lab.json(&["info"]);
    let links = info["dataplane_detail"]["links"].to_string();
    assert!(
        links.contains(&format!("up0-ingress-{}", program::EDGE_INGRESS))
            && links.contains(&format!("up0-egress-{}", program::EDGE_EGRESS)),
        "{links}"
    );
    assert!(
        links.contains("ingress-natd_sandbox_ingress") && links.contains("cgroup-natd_connect4"),
        "{links}"
    );
    drop(stream);
}
