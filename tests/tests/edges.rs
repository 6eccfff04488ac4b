//! Every interface is an edge, on a host shaped like real ones: the uplink, a second NIC
//! on another LAN and a VPN device (TUN, like wg0 or tailscale0) that appears after natd
//! started. Published ports answer through each with the client's own address (Docker's
//! `0.0.0.0` is every interface); nothing else of a sandbox is reachable through any of
//! them, even for a neighbour that routes the sandbox subnet via the host (the exposure
//! Docker 28 closed on every interface); traffic out of each is masqueraded with that
//! interface's address (Docker masquerades `! -o <bridge>`); a port bound to an address
//! answers only while the host has it.
use std::time::{Duration, Instant};

use natlab::{
    EXT_IP, HOST_UPLINK_IP, Lab,
    edges::{NIC2_HOST_IP, NIC2_PEER_IP, SecondNic, VPN_HOST_IP, VPN_PEER_IP, Vpn},
    must, tcp_line, udp_exchange, udp_reply, wait_listening, wait_until, whoami,
};

/// A sandbox `web` on the default network: TCP 80 and UDP 53 published (8080, 5353), TCP
/// 81 and UDP 54 served but not published.
fn web(lab: &Lab) -> String {
    let script = format!(
        "{} & {} & {} & {} & wait",
        whoami(80),
        whoami(81),
        udp_reply(53, "$SOCAT_PEERADDR"),
        udp_reply(54, "$SOCAT_PEERADDR"),
    );
    lab.run_script("web", &["-p", "8080:80", "-p", "5353:53/udp"], &script);
    let ns = lab.netns_of("web");
    assert!(wait_listening(&ns, "tcp", 80) && wait_listening(&ns, "tcp", 81));
    assert!(wait_listening(&ns, "udp", 53) && wait_listening(&ns, "udp", 54));
    lab.sandbox_ip("web")
}

fn tcp_from(ns: &str, addr: &str, port: u16) -> Option<String> {
    tcp_line(&["ip", "netns", "exec", ns], addr, port)
}

fn udp_from(ns: &str, addr: &str, port: u16) -> Option<String> {
    udp_exchange(&format!("/run/netns/{ns}"), addr, port, b"x", Duration::from_millis(700))
}

/// The pinned link of `program` on `ifname`, if natd attached it.
fn attached(lab: &Lab, ifname: &str, program: &str) -> bool {
    std::fs::read_dir(lab.bpffs.join("links"))
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(&format!("-{ifname}-ingress-{program}")))
        })
        .unwrap_or(false)
}

#[test]
fn every_interface_is_an_edge_ebpf() {
    every_interface_is_an_edge("ebpf");
}

#[test]
fn every_interface_is_an_edge_nftables() {
    every_interface_is_an_edge("nftables");
}

fn every_interface_is_an_edge(dataplane: &str) {
    let mut lab = Lab::new().expect("topology");
    let nic = SecondNic::add(&mut lab);
    lab.start_natd(&["--dataplane", dataplane]).expect("natd");
    let web_ip = web(&lab);
    let subnet = lab.json(&["network", "inspect", "bridge"])["subnet"]
        .as_str()
        .unwrap()
        .to_string();

    // The VPN comes up after natd started: a layer-3 device natd has never seen.
    let started = Instant::now();
    let vpn = Vpn::start(&mut lab);
    if dataplane == "ebpf" {
        assert!(
            wait_until(Duration::from_secs(5), || attached(&lab, "vpn0", "natd_edge3_in")),
            "natd attaches its layer-3 edge programs to the new VPN device:\n{}",
            lab.natd_log()
        );
        println!("EDGE vpn0 attached {} ms after it appeared", started.elapsed().as_millis());
        assert!(attached(&lab, "eth1", "natd_edge_in"), "and to the second NIC");
    }

    // The neighbours route the sandbox subnet via the host (they could; Docker 28 stopped
    // answering them on every interface).
    lab.ext_ok(&["ip", "route", "add", &subnet, "via", HOST_UPLINK_IP]);
    lab.in_ns_ok(&nic.peer_ns, &["ip", "route", "add", &subnet, "via", NIC2_HOST_IP]);
    lab.in_ns_ok(&vpn.peer_ns, &["ip", "route", "add", &subnet, "dev", "vpn0"]);
    let edges = [
        (lab.ext_ns.clone(), HOST_UPLINK_IP, EXT_IP),
        (nic.peer_ns.clone(), NIC2_HOST_IP, NIC2_PEER_IP),
        (vpn.peer_ns.clone(), VPN_HOST_IP, VPN_PEER_IP),
    ];

    // Published ports answer through every edge, with the client's own address.
    for (ns, host_ip, client_ip) in &edges {
        let answered = |f: &dyn Fn() -> Option<String>| wait_until(Duration::from_secs(3), || f().is_some()) ;
        assert!(answered(&|| tcp_from(ns, host_ip, 8080)), "8080 through {host_ip}:\n{}", lab.natd_log());
        assert_eq!(tcp_from(ns, host_ip, 8080).as_deref(), Some(*client_ip), "TCP via {host_ip}");
        assert_eq!(udp_from(ns, host_ip, 5353).as_deref(), Some(*client_ip), "UDP via {host_ip}");
    }

    // Nothing else: not the unpublished ports, not the published container port on the
    // sandbox's own address, not ping. Exactly one packet each, counted by reason.
    let before = lab.counter("drop_direct_access");
    for (ns, _, _) in &edges[1..] {
        assert_eq!(udp_from(ns, &web_ip, 53), None, "published container port, directly");
        assert_eq!(udp_from(ns, &web_ip, 54), None, "unpublished port");
        assert!(!lab.in_ns(ns, &["ping", "-c1", "-W1", &web_ip]).status.success(), "ping");
    }
    assert!(
        wait_until(Duration::from_secs(2), || lab.counter("drop_direct_access") == before + 6),
        "every probe dropped as direct access: {} -> {}",
        before,
        lab.counter("drop_direct_access")
    );
    let before = lab.counter("drop_direct_access");
    for (ns, _, _) in &edges[1..] {
        assert_eq!(tcp_from(ns, &web_ip, 80), None, "TCP to the container port, directly");
        assert_eq!(tcp_from(ns, &web_ip, 81), None, "TCP to an unpublished port");
    }
    if dataplane == "ebpf" {
        // Each probe's SYN (and any retransmission) is dropped as direct access.
        assert!(lab.counter("drop_direct_access") >= before + 4, "the TCP probes dropped as direct access");
    }

    // Out of every edge with that edge's address, never the sandbox's.
    let _servers: Vec<_> = edges
        .iter()
        .map(|(ns, _, _)| lab.spawn_in(ns, &["sh", "-c", &whoami(9000)]))
        .collect();
    for (ns, host_ip, client_ip) in &edges {
        assert!(wait_listening(&format!("/run/netns/{ns}"), "tcp", 9000));
        assert_eq!(
            lab.tcp_line_from("web", client_ip, 9000).as_deref(),
            Some(*host_ip),
            "masqueraded to {host_ip} on the way to {client_ip}"
        );
    }
    // The VPN goes down: natd detaches from the device that is gone, nothing stays pinned.
    drop(vpn);
    if dataplane == "ebpf" {
        assert!(
            wait_until(Duration::from_secs(5), || !attached(&lab, "vpn0", "natd_edge3_in")),
            "the gone device's links are unpinned"
        );
    }
    assert_eq!(tcp_from(&lab.ext_ns, HOST_UPLINK_IP, 8080).as_deref(), Some(EXT_IP), "the other edges serve on");
}

#[test]
fn a_port_bound_to_an_address_follows_the_address_ebpf() {
    a_port_bound_to_an_address_follows_the_address("ebpf");
}

#[test]
fn a_port_bound_to_an_address_follows_the_address_nftables() {
    a_port_bound_to_an_address_follows_the_address("nftables");
}

fn a_port_bound_to_an_address_follows_the_address(dataplane: &str) {
    const BOUND: &str = "203.0.113.9";
    let mut lab = Lab::new().expect("topology");
    let nic = SecondNic::add(&mut lab);
    lab.host_ok(&["ip", "addr", "add", &format!("{BOUND}/24"), "dev", "eth1"]);
    lab.start_natd(&["--dataplane", dataplane]).expect("natd");

    // Docker refuses to publish on an address the host does not have; so does natd, and
    // the refusal leaves nothing behind.
    let err = lab.fails(&["run", "--name", "typo", "-p", "192.0.2.77:8081:80", "--", "sleep", "60"]);
    assert!(err.contains("cannot assign requested address"), "{err}");
    assert!(lab.fails(&["inspect", "typo"]).contains("No such container"));

    lab.run_script("web", &["-p", &format!("{BOUND}:8082:80")], &whoami(80));
    assert!(wait_listening(&lab.netns_of("web"), "tcp", 80));
    let err = lab.fails(&["publish", "web", "192.0.2.77:8083:80"]);
    assert!(err.contains("cannot assign requested address"), "{err}");
    assert_eq!(lab.json(&["inspect", "web"])["ports"].as_array().unwrap().len(), 1);

    let peer = nic.peer_ns.as_str();
    assert_eq!(tcp_from(peer, BOUND, 8082).as_deref(), Some(NIC2_PEER_IP), "on the bound address");
    assert_eq!(tcp_from(peer, NIC2_HOST_IP, 8082), None, "not on the host's other addresses");

    // The address leaves the host. The neighbour keeps sending to the host's MAC (a
    // stale neighbour entry): nothing answers, and natctl says why.
    let eth1_mac = natlab::raw::mac_of(&lab.host_ns, "eth1");
    let mac = eth1_mac.map(|b| format!("{b:02x}")).join(":");
    lab.in_ns(peer, &["ip", "neigh", "replace", BOUND, "lladdr", &mac, "dev", "lan0", "nud", "permanent"]);
    lab.host_ok(&["ip", "addr", "del", &format!("{BOUND}/24"), "dev", "eth1"]);
    assert!(
        wait_until(Duration::from_secs(3), || lab.ok(&["port", "web"]).contains("inactive")),
        "natctl port marks the mapping: {}",
        lab.ok(&["port", "web"])
    );
    assert_eq!(tcp_from(peer, BOUND, 8082), None, "no host address, no published port");

    // It comes back with the address.
    lab.host_ok(&["ip", "addr", "add", &format!("{BOUND}/24"), "dev", "eth1"]);
    assert!(
        wait_until(Duration::from_secs(3), || !lab.ok(&["port", "web"]).contains("inactive")),
        "active again"
    );
    assert!(
        wait_until(Duration::from_secs(3), || tcp_from(peer, BOUND, 8082).as_deref() == Some(NIC2_PEER_IP)),
        "answers again on the address"
    );
}

#[test]
fn allow_direct_routing_opens_published_container_ports_on_every_edge_ebpf() {
    allow_direct_routing_opens_published_container_ports_on_every_edge("ebpf");
}

#[test]
fn allow_direct_routing_opens_published_container_ports_on_every_edge_nftables() {
    allow_direct_routing_opens_published_container_ports_on_every_edge("nftables");
}

/// Docker 28.2's daemon option `allow-direct-routing`: no interface is filtered from
/// reaching a container's address directly, but in nat mode only its published ports
/// answer there.
fn allow_direct_routing_opens_published_container_ports_on_every_edge(dataplane: &str) {
    let mut lab = Lab::new().expect("topology");
    let nic = SecondNic::add(&mut lab);
    lab.start_natd(&["--dataplane", dataplane, "--allow-direct-routing", "true"]).expect("natd");
    let web_ip = web(&lab);
    let subnet = lab.json(&["network", "inspect", "bridge"])["subnet"].as_str().unwrap().to_string();
    lab.ext_ok(&["ip", "route", "add", &subnet, "via", HOST_UPLINK_IP]);
    lab.in_ns_ok(&nic.peer_ns, &["ip", "route", "add", &subnet, "via", NIC2_HOST_IP]);
    let before = lab.counter("drop_direct_access");
    for (ns, client_ip) in [(lab.ext_ns.as_str(), EXT_IP), (nic.peer_ns.as_str(), NIC2_PEER_IP)] {
        assert_eq!(tcp_from(ns, &web_ip, 80).as_deref(), Some(client_ip), "the published container port");
        assert_eq!(udp_from(ns, &web_ip, 53).as_deref(), Some(client_ip), "the published UDP container port");
        assert_eq!(tcp_from(ns, &web_ip, 81), None, "not an unpublished port");
        assert_eq!(udp_from(ns, &web_ip, 54), None, "not an unpublished UDP port");
    }
    if dataplane == "ebpf" {
        assert_eq!(lab.counter("drop_direct_access"), before, "no edge is filtered");
        assert!(lab.counter("drop_direct_unpublished") >= 4, "unpublished ports dropped, counted apart");
    }
}

/// Devices stacked on a NIC, made after natd started: a macvlan (`mv0`, a second MAC and
/// address on eth1's LAN, as hosts give themselves to reach their macvlan containers)
/// and, where the kernel has 802.1Q, a VLAN (`eth1.7`, a tagged LAN on a trunk port). Each
/// is an edge of its own: published ports answer through it with the client's address,
/// traffic out of it is masqueraded with its address, nothing else of the sandbox is
/// reachable through it. The kernel runs eth1's programs first, on a frame that is the
/// upper device's (for the macvlan's MAC; a VLAN's tag already moved beside the frame):
/// they must leave it to the upper device's programs, or it would be translated twice
/// (and dropped as direct access the second time) or answered out of eth1 untagged.
#[test]
fn devices_stacked_on_a_nic_are_edges_of_their_own() {
    devices_stacked_on_a_nic("true");
}

/// Without the fast path every packet takes the host's path, through the upper device's
/// programs after the NIC's.
#[test]
fn devices_stacked_on_a_nic_are_edges_of_their_own_without_the_fast_path() {
    devices_stacked_on_a_nic("false");
}

fn devices_stacked_on_a_nic(fast_path: &str) {
    let mut lab = Lab::new().expect("topology");
    let nic = SecondNic::add(&mut lab);
    lab.start_natd(&["--dataplane", "ebpf", "--fast-path", fast_path]).expect("natd");
    let web_ip = web(&lab);
    let subnet = lab.json(&["network", "inspect", "bridge"])["subnet"].as_str().unwrap().to_string();
    let peer = nic.peer_ns.as_str();
    let host = lab.host_ns.clone();
    let mut stacked = vec![("mv0", "198.18.7.1", "198.18.7.2")];
    must("ip", &["-n", &host, "link", "add", "link", "eth1", "name", "mv0", "type", "macvlan", "mode", "bridge"]);
    must("ip", &["-n", &host, "addr", "add", "198.18.7.1/24", "dev", "mv0"]);
    must("ip", &["-n", &host, "link", "set", "mv0", "up"]);
    must("ip", &["-n", peer, "addr", "add", "198.18.7.2/24", "dev", "lan0"]);
    // The neighbour sends to the macvlan's MAC (eth1 would answer ARP for any host
    // address, and take the frames as its own).
    let mac = natlab::raw::mac_of(&host, "mv0").map(|b| format!("{b:02x}")).join(":");
    must("ip", &["-n", peer, "neigh", "replace", "198.18.7.1", "lladdr", &mac, "dev", "lan0", "nud", "permanent"]);
    let vlan = natlab::sh("ip", &["-n", &host, "link", "add", "link", "eth1", "name", "eth1.7", "type", "vlan", "id", "7"]);
    if vlan.status.success() {
        must("ip", &["-n", &host, "addr", "add", "198.18.8.1/24", "dev", "eth1.7"]);
        must("ip", &["-n", &host, "link", "set", "eth1.7", "up"]);
        must("ip", &["-n", peer, "link", "add", "link", "lan0", "name", "lan0.7", "type", "vlan", "id", "7"]);
        must("ip", &["-n", peer, "addr", "add", "198.18.8.2/24", "dev", "lan0.7"]);
        must("ip", &["-n", peer, "link", "set", "lan0.7", "up"]);
        stacked.push(("eth1.7", "198.18.8.1", "198.18.8.2"));
    } else {
        eprintln!(
            "NOT TESTED HERE: this kernel cannot make VLAN devices (CONFIG_VLAN_8021Q): the VLAN half of this \
             test did not run ({})",
            String::from_utf8_lossy(&vlan.stderr).trim()
        );
    }
    let _server = lab.spawn_in(peer, &["sh", "-c", &whoami(9000)]);
    assert!(wait_listening(&format!("/run/netns/{peer}"), "tcp", 9000));
    for (device, host_ip, peer_ip) in stacked {
        assert!(
            wait_until(Duration::from_secs(5), || attached(&lab, device, "natd_edge_in")),
            "natd attaches to {device}:\n{}",
            lab.natd_log()
        );
        assert!(
            wait_until(Duration::from_secs(3), || tcp_from(peer, host_ip, 8080).is_some()),
            "8080 through {device}:\n{}",
            lab.natd_log()
        );
        assert_eq!(tcp_from(peer, host_ip, 8080).as_deref(), Some(peer_ip), "TCP via {device}: the client's address");
        assert_eq!(udp_from(peer, host_ip, 5353).as_deref(), Some(peer_ip), "UDP via {device}: the client's address");

        // The same probes at the sandbox's own address: dropped, each counted once.
        must("ip", &["-n", peer, "route", "replace", &subnet, "via", host_ip]);
        let before = lab.counter("drop_direct_access");
        assert_eq!(udp_from(peer, &web_ip, 53), None, "published container port, directly via {device}");
        assert_eq!(udp_from(peer, &web_ip, 54), None, "unpublished port via {device}");
        assert!(
            wait_until(Duration::from_secs(2), || lab.counter("drop_direct_access") == before + 2),
            "both dropped as direct access via {device}: {} -> {}",
            before,
            lab.counter("drop_direct_access")
        );

        assert_eq!(
            lab.tcp_line_from("web", peer_ip, 9000).as_deref(),
            Some(host_ip),
            "masqueraded with {device}'s address"
        );
    }
}
