//! The pipework recipe on a host with one NIC: a hostbridge network whose parent is natd's
//! own uplink. The bridge takes the NIC's addresses, routes and the uplink's role; the host
//! keeps working, bridge networks keep their published ports and masquerade (running flows
//! too, on the eBPF dataplane), sandboxes get LAN addresses reachable from the LAN and from
//! a second natd host's sandboxes, and `network rm` gives everything back. Both dataplanes,
//! with a natd restart in between.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    time::Duration,
};

use natlab::{EXT_IP, HOST_UPLINK_IP, Lab, in_netns, wait_listening};


/// Host A's external namespace becomes the LAN and host B's only NIC is moved onto it
/// (`natlab::lan`). Both natd run with `--uplink up0`, their only NIC.
fn one_nic_lan(dataplane: &str) -> (Lab, Lab) {
    let mut hosts = natlab::lan::shared_lan(2);
    for lab in &mut hosts {
        lab.start_natd(&["--dataplane", dataplane]).expect("start natd");
    }
    let b = hosts.pop().expect("host B");
    let a = hosts.pop().expect("host A");
    (a, b)
}

fn hostbridge(lab: &Lab, range: &str) {
    lab.ok(&[
        "network",
        "create",
        "-d",
        "hostbridge",
        "--opt",
        "parent=up0",
        "--subnet",
        "198.51.100.0/24",
        "--gateway",
        EXT_IP,
        "--ip-range",
        range,
        "lan",
    ]);
}

fn uplinks(lab: &Lab) -> String {
    lab.json(&["info"])["uplinks"].to_string()
}

/// A connection kept open from `ns_path`, to an echo server at `addr`.
fn open(ns_path: &str, addr: &str) -> TcpStream {
    let addr = addr.to_string();
    let stream = in_netns(ns_path, move || {
        TcpStream::connect(addr.as_str()).expect("connect")
    });
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    stream
}

fn echoes(stream: &mut TcpStream, line: &str) -> bool {
    if stream.write_all(format!("{line}\n").as_bytes()).is_err() {
        return false;
    }
    let mut got = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut got)
        .is_ok()
        && got.trim() == line
}

/// The line a server at `addr:port` sends to a client in sandbox `name` of `lab`.
fn from_sandbox(lab: &Lab, name: &str, addr: &str, port: u16) -> Option<String> {
    lab.tcp_line_from(name, addr, port)
}

fn single_nic_host(dataplane: &str) {
    let (mut a, b) = one_nic_lan(dataplane);
    let ext_ns = a.ext_ns.clone();
    let from_lan = |addr: &str, port: u16| natlab::tcp_line(&["ip", "netns", "exec", &ext_ns], addr, port);

    a.ok(&["network", "create", "--subnet", "10.41.0.0/24", "front"]);
    a.run_script(
        "web",
        &["--network", "front", "-p", "8080:80", "-p", "8081:81"],
        &format!(
            "{} & socat TCP-LISTEN:81,fork,reuseaddr PIPE & wait",
            natlab::whoami(80)
        ),
    );
    a.ok(&["run", "--name", "cli", "--network", "front"]);
    let _servers = [
        a.spawn_in(
            &a.ext_ns,
            &[
                "socat",
                "TCP-LISTEN:9000,fork,reuseaddr",
                "SYSTEM:echo $SOCAT_PEERADDR",
            ],
        ),
        a.spawn_in(&a.ext_ns, &["socat", "TCP-LISTEN:9001,fork,reuseaddr", "PIPE"]),
    ];
    assert!(wait_listening(&a.netns_of("web"), "tcp", 81));
    assert!(wait_listening(&a.ext_path(), "tcp", 9001));
    let published = || from_lan(HOST_UPLINK_IP, 8080);
    let masqueraded = |a: &Lab| from_sandbox(a, "cli", EXT_IP, 9000);
    assert_eq!(published().as_deref(), Some(EXT_IP));
    assert_eq!(masqueraded(&a).as_deref(), Some(HOST_UPLINK_IP));
    // Flows running while the uplink's role moves: into a published port, and out.
    let mut inbound = open(&a.ext_path(), &format!("{HOST_UPLINK_IP}:8081"));
    let mut outbound = open(&a.netns_of("cli"), &format!("{EXT_IP}:9001"));
    assert!(echoes(&mut inbound, "before") && echoes(&mut outbound, "before"));

    hostbridge(&a, "198.51.100.64/28");
    hostbridge(&b, "198.51.100.80/28");
    let bridge = a.json(&["network", "inspect", "lan"])["bridge"]
        .as_str()
        .unwrap()
        .to_string();
    let addrs = a.host_ok(&["ip", "-o", "-4", "addr", "show", "dev", &bridge]);
    assert!(
        addrs.contains(&format!("{HOST_UPLINK_IP}/24")),
        "the host's address moved to the bridge: {addrs}"
    );
    assert!(
        a.host_ok(&["ip", "route", "show", "default"])
            .contains(&format!("dev {bridge}"))
    );
    assert!(
        a.host(&["ping", "-c1", "-W2", EXT_IP]).status.success(),
        "the host keeps its connectivity"
    );
    assert!(
        uplinks(&a).contains(&format!("up0 via {bridge}")),
        "{}",
        uplinks(&a)
    );
    if dataplane == "ebpf" {
        let links = a.json(&["info"])["dataplane_detail"]["links"].to_string();
        assert!(
            links.contains(&format!("-{bridge}-ingress")) && !links.contains("-up0-"),
            "{links}"
        );
        assert!(
            echoes(&mut inbound, "moved") && echoes(&mut outbound, "moved"),
            "running flows survive the move"
        );
    }
    // Established flows of the nftables dataplane are the kernel's: masqueraded ones end when
    // the uplink's address leaves the NIC (see docs/architecture.md).

    a.run_script("lanbox", &["--network", "lan"], &natlab::whoami(80));
    b.run_script("lanbox2", &["--network", "lan"], &natlab::whoami(80));
    let (box_a, box_b) = (a.sandbox_ip("lanbox"), b.sandbox_ip("lanbox2"));
    assert!(wait_listening(&a.netns_of("lanbox"), "tcp", 80));
    assert!(wait_listening(&b.netns_of("lanbox2"), "tcp", 80));
    assert_eq!(
        from_lan(&box_a, 80).as_deref(),
        Some(EXT_IP),
        "the LAN reaches a LAN address, no NAT"
    );
    assert_eq!(
        from_sandbox(&b, "lanbox2", &box_a, 80).as_deref(),
        Some(box_b.as_str()),
        "host B's sandbox reaches host A's"
    );
    assert_eq!(
        from_sandbox(&a, "lanbox", &box_b, 80).as_deref(),
        Some(box_a.as_str())
    );
    assert_eq!(
        published().as_deref(),
        Some(EXT_IP),
        "published ports keep working on the host's LAN address"
    );
    assert_eq!(masqueraded(&a).as_deref(), Some(HOST_UPLINK_IP), "and masquerade");

    a.stop_natd(nix::sys::signal::Signal::SIGTERM);
    a.restart_natd().expect("natd adopts the bridge");
    assert!(
        uplinks(&a).contains(&format!("up0 via {bridge}")),
        "{}",
        uplinks(&a)
    );
    assert_eq!(published().as_deref(), Some(EXT_IP));
    assert_eq!(masqueraded(&a).as_deref(), Some(HOST_UPLINK_IP));
    assert_eq!(
        from_sandbox(&b, "lanbox2", &box_a, 80).as_deref(),
        Some(box_b.as_str())
    );

    a.ok(&["rm", "lanbox"]);
    a.ok(&["network", "rm", "lan"]);
    let up0 = a.host_ok(&["ip", "-o", "-4", "addr", "show", "dev", "up0"]);
    assert!(
        up0.contains(&format!("{HOST_UPLINK_IP}/24")),
        "the address is back on the NIC: {up0}"
    );
    assert!(a.host_ok(&["ip", "route", "show", "default"]).contains("dev up0"));
    assert_eq!(uplinks(&a), "[\"up0\"]");
    assert_eq!(published().as_deref(), Some(EXT_IP));
    assert_eq!(masqueraded(&a).as_deref(), Some(HOST_UPLINK_IP));
    if dataplane == "ebpf" {
        assert!(
            echoes(&mut inbound, "back") && echoes(&mut outbound, "back"),
            "and survive the way back"
        );
    }
}

#[test]
fn hostbridge_over_the_only_nic_ebpf() {
    single_nic_host("ebpf");
}

#[test]
fn hostbridge_over_the_only_nic_nftables() {
    single_nic_host("nftables");
}
