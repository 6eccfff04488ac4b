//! NAT behaviour discovery in the style of RFC 5780 (sections 4.3-4.5), run from a sandbox
//! against a server in the external namespace with two addresses and two ports each (the
//! suite's own client and server, UDP; nothing leaves the lab), for each dataplane, address
//! family and network option, and checked against the expected table exactly:
//! - mapping (RFC 4787 section 4.1): the external address and port seen by (A1,P1),
//!   (A2,P1) and (A2,P2) from one socket; equal everywhere is endpoint-independent (REQ-1);
//! - filtering (section 5): a fresh socket asks (A1,P1) to answer from (A2,P2), then from
//!   (A1,P2); an answer from the other address is endpoint-independent filtering, from the
//!   other port only address-dependent, from neither address-and-port-dependent (REQ-8);
//! - port preservation (section 4.2.1): the external port is the socket's own;
//! - hairpinning (REQ-9, REQ-9a): a second socket of another sandbox sends to the first
//!   one's external address and port; whether it arrives, and from which address and
//!   port (REQ-9a: the sender's external ones).
//! Every "nothing came" is set beside an answer the same socket did get.
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::Arc,
    time::Duration,
};

use natlab::{
    EXT_IP, EXT_IP6, HOST_UPLINK_IP, HOST_UPLINK_IP6, Lab, Served, in_netns,
    reflector::{TcpReflector, tcp_seen},
};

const EXT_IP_2: &str = "198.51.100.3";
const EXT_IP6_2: &str = "2001:db8:198::3";
const PORTS: [u16; 2] = [3478, 3479];
/// How long a probe waits for an answer that may not come.
const WAIT: Duration = Duration::from_millis(400);

/// The server: four sockets, (address, port) for both addresses and ports. A request
/// "probe N" is answered from socket N with the source address and port it came from.
struct Server(#[allow(dead_code)] Served);

impl Server {
    fn start(lab: &Lab, addrs: [&str; 2]) -> (Self, [SocketAddr; 4]) {
        let endpoints: [SocketAddr; 4] = [
            SocketAddr::new(addrs[0].parse().unwrap(), PORTS[0]),
            SocketAddr::new(addrs[0].parse().unwrap(), PORTS[1]),
            SocketAddr::new(addrs[1].parse().unwrap(), PORTS[0]),
            SocketAddr::new(addrs[1].parse().unwrap(), PORTS[1]),
        ];
        let sockets: Vec<UdpSocket> = in_netns(&lab.ext_path(), || {
            endpoints.iter().map(|e| UdpSocket::bind(e).expect("server socket")).collect()
        });
        let sockets = Arc::new(sockets);
        let mut served = Served::default();
        for i in 0..4 {
            let sockets = sockets.clone();
            served.spawn(move |s| {
                let socket = &sockets[i];
                socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                let mut buf = [0u8; 256];
                while s.serving() {
                    let Ok((len, from)) = socket.recv_from(&mut buf) else { continue };
                    let text = String::from_utf8_lossy(&buf[..len]).to_string();
                    let Some(n) = text.strip_prefix("probe ").and_then(|n| n.trim().parse::<usize>().ok()) else {
                        continue;
                    };
                    let _ = sockets[n.min(3)].send_to(from.to_string().as_bytes(), from);
                }
            });
        }
        (Self(served), endpoints)
    }
}

/// Sends "probe `answer_from`" to `to` and returns the address the server saw, if an
/// answer comes (from anywhere: the filtering test asks for answers from elsewhere).
fn probe(socket: &UdpSocket, to: SocketAddr, answer_from: usize) -> Option<SocketAddr> {
    socket.send_to(format!("probe {answer_from}").as_bytes(), to).ok()?;
    let mut buf = [0u8; 256];
    let (len, _) = socket.recv_from(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..len]).parse().ok()
}

#[derive(Debug, PartialEq, Eq)]
struct Behaviour {
    mapping: &'static str,
    filtering: &'static str,
    port_preserved: bool,
    /// Whether a hairpinned datagram arrived, and whether it came from the sender's
    /// external address and port.
    hairpin: Option<bool>,
}

fn bind_in(ns: &str, v6: bool, port: u16) -> UdpSocket {
    in_netns(ns, || {
        let socket = if v6 {
            UdpSocket::bind(("::", port))
        } else {
            UdpSocket::bind(("0.0.0.0", port))
        }
        .expect("client socket");
        socket.set_read_timeout(Some(WAIT)).unwrap();
        socket
    })
}

/// Discovers the behaviour natd gives sandbox `client` (sending from port `base`), with
/// sandbox `peer` of the same network as the hairpinning sender.
fn discover(lab: &Lab, server: &[SocketAddr; 4], client: &str, peer: &str, v6: bool, base: u16) -> Behaviour {
    let ns = lab.netns_of(client);
    // Mapping (RFC 5780 4.3).
    let a = bind_in(&ns, v6, base);
    let m1 = probe(&a, server[0], 0).expect("(A1,P1) answers: the control of every test below");
    let m2 = probe(&a, server[2], 2).expect("(A2,P1) answers");
    let m3 = probe(&a, server[3], 3).expect("(A2,P2) answers");
    let mapping = if m1 == m2 && m2 == m3 {
        "endpoint-independent"
    } else if m2 == m3 {
        "address-dependent"
    } else {
        "address-and-port-dependent"
    };
    // Filtering (RFC 5780 4.4), from a socket that has sent to (A1,P1) only.
    let f = bind_in(&ns, v6, base + 2);
    let filtering = if probe(&f, server[0], 3).is_some() {
        "endpoint-independent"
    } else if probe(&f, server[0], 1).is_some() {
        "address-dependent"
    } else {
        assert!(probe(&f, server[0], 0).is_some(), "the control: (A1,P1) answers this socket itself");
        "address-and-port-dependent"
    };
    // Hairpinning (RFC 5780 4.5): the peer's datagram to `a`'s external address and port.
    let h = bind_in(&lab.netns_of(peer), v6, base + 4);
    let peer_mapping = probe(&h, server[0], 0).expect("the peer's own control");
    h.send_to(b"hairpin", m1).expect("send");
    let mut buf = [0u8; 64];
    let hairpin = a.recv_from(&mut buf).ok().map(|(_, from)| from == peer_mapping);
    // The socket that heard nothing still hears its server (so silence meant filtering).
    assert_eq!(probe(&a, server[0], 0), Some(m1), "the client's mapping still answers");
    Behaviour {
        mapping,
        filtering,
        port_preserved: m1.port() == base,
        hairpin,
    }
}

fn expected(mapping: &'static str, filtering: &'static str, port_preserved: bool, hairpin: Option<bool>) -> Behaviour {
    Behaviour {
        mapping,
        filtering,
        port_preserved,
        hairpin,
    }
}

/// The external namespace gets its second address, for both families.
fn second_server_address(lab: &Lab) {
    lab.ext_ok(&["ip", "addr", "add", &format!("{EXT_IP_2}/24"), "dev", "lan0"]);
    lab.ext_ok(&["ip", "addr", "add", &format!("{EXT_IP6_2}/64"), "dev", "lan0", "nodad"]);
}

fn network(lab: &Lab, name: &str, options: &[&str]) {
    let mut args = vec!["network", "create", "--ipv6"];
    for o in options {
        args.extend_from_slice(&["-o", o]);
    }
    args.push(name);
    lab.ok(&args);
    lab.ok(&["run", "--name", &format!("{name}-c"), "--network", name]);
    lab.ok(&["run", "--name", &format!("{name}-p"), "--network", name]);
}

#[test]
fn ebpf_dataplane_behaviour_table() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    second_server_address(&lab);
    let rows: [(&str, &[&str], Behaviour); 4] = [
        (
            "dflt",
            &[],
            // Linux's and Docker's behaviour, now with the mapping kept per source.
            expected("endpoint-independent", "address-and-port-dependent", true, None),
        ),
        (
            "eif",
            &["natd.nat.filtering=endpoint-independent"],
            expected("endpoint-independent", "endpoint-independent", true, Some(true)),
        ),
        (
            "adf",
            &["natd.nat.filtering=address-dependent"],
            // The peer's external address is one the client never sent to.
            expected("endpoint-independent", "address-dependent", true, None),
        ),
        (
            "rnd",
            &["natd.nat.masquerade-ports=random"],
            expected("endpoint-independent", "address-and-port-dependent", false, None),
        ),
    ];
    for (name, options, _) in &rows {
        network(&lab, name, options);
    }
    for (v6, addrs) in [(false, [EXT_IP, EXT_IP_2]), (true, [EXT_IP6, EXT_IP6_2])] {
        let (server, endpoints) = Server::start(&lab, addrs);
        for (i, (name, _, want)) in rows.iter().enumerate() {
            let base = 40000 + 10 * i as u16 + if v6 { 100 } else { 0 };
            let got = discover(&lab, &endpoints, &format!("{name}-c"), &format!("{name}-p"), v6, base);
            println!("ebpf {name} IPv{}: {got:?}", if v6 { 6 } else { 4 });
            assert_eq!(&got, want, "eBPF dataplane, network {name}, IPv{}", if v6 { 6 } else { 4 });
        }
        drop(server);
    }
    // The external address every mapping used is the uplink's.
    let flows = lab.json(&["ct", "ls"]);
    let external: Vec<String> = flows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["mapping"]["external"].as_str().map(str::to_string))
        .collect();
    assert!(!external.is_empty(), "ct ls shows the mappings: {flows:#}");
    for e in &external {
        let ip: IpAddr = e.parse::<SocketAddr>().unwrap().ip();
        assert!(
            ip == HOST_UPLINK_IP.parse::<IpAddr>().unwrap() || ip == HOST_UPLINK_IP6.parse::<IpAddr>().unwrap(),
            "{e}"
        );
    }
}

#[test]
fn nftables_dataplane_behaviour_table() {
    let lab = Lab::started(&["--dataplane", "nftables"]);
    second_server_address(&lab);
    network(&lab, "dflt", &[]);
    // What nftables cannot express is refused, with the reason.
    let err = lab.fails(&["network", "create", "-o", "natd.nat.filtering=endpoint-independent", "eif"]);
    assert!(err.contains("needs the eBPF dataplane"), "{err}");
    let err = lab.fails(&["network", "create", "-o", "natd.nat.masquerade-ports=random", "rnd"]);
    assert!(err.contains("depend on the destination"), "{err}");
    for (v6, addrs) in [(false, [EXT_IP, EXT_IP_2]), (true, [EXT_IP6, EXT_IP6_2])] {
        let (server, endpoints) = Server::start(&lab, addrs);
        let got = discover(&lab, &endpoints, "dflt-c", "dflt-p", v6, 42000 + if v6 { 100 } else { 0 });
        println!("nftables dflt IPv{}: {got:?}", if v6 { 6 } else { 4 });
        // Linux's MASQUERADE: the sandbox's port kept while it is free, so one mapping for
        // every destination; replies only; no hairpinning of a masquerade mapping.
        assert_eq!(
            got,
            expected("endpoint-independent", "address-and-port-dependent", true, None),
            "nftables dataplane, IPv{}",
            if v6 { 6 } else { 4 }
        );
        drop(server);
    }
}

/// RFC 4787 REQ-5: a mapping outlives its flows (`mapping` seconds after its last
/// outbound packet) and then goes, with what its filtering admitted: an inbound datagram
/// reaches the sandbox through it after its flow expired, and no more once it is gone.
#[test]
fn a_mapping_outlives_its_flows_then_expires() {
    let lab = Lab::started(&[
        "--dataplane",
        "ebpf",
        "--gc-interval",
        "1",
        "--conntrack-timeout",
        "udp=1",
        "--conntrack-timeout",
        "udp-replied=1",
        "--conntrack-timeout",
        "mapping=8",
    ]);
    network(&lab, "eif", &["natd.nat.filtering=endpoint-independent"]);
    network(&lab, "dflt", &[]);
    second_server_address(&lab);
    let (_server, endpoints) = Server::start(&lab, [EXT_IP, EXT_IP_2]);
    let socket = bind_in(&lab.netns_of("eif-c"), false, 45000);
    let external = probe(&socket, endpoints[0], 0).expect("the server answers");
    // A mapping of the default filtering, whose port is marked as shared.
    let shared = bind_in(&lab.netns_of("dflt-c"), false, 45002);
    probe(&shared, endpoints[0], 0).expect("the server answers the default network too");
    let fill = |map: &str| lab.json(&["stats"])["maps"][map][0].as_u64().unwrap_or(u64::MAX);
    let mappings = || fill("NATD_SNAT4");
    assert_eq!(mappings(), 2);
    assert_eq!((fill("NATD_SNAT4_PORTS"), fill("NATD_SNAT4_SHARED")), (1, 1), "one port held, one shared");
    let flows = || lab.json(&["ct", "ls"]).as_array().map_or(0, |f| f.len());
    assert!(natlab::wait_until(Duration::from_secs(10), || flows() == 0), "the flow expires");
    assert_eq!(mappings(), 2, "the mappings outlive them");
    let stranger = in_netns(&lab.ext_path(), || UdpSocket::bind((EXT_IP, 0)).unwrap());
    stranger.send_to(b"knock", external).unwrap();
    let mut buf = [0u8; 16];
    let heard = socket.recv_from(&mut buf).ok().map(|(len, _)| buf[..len].to_vec());
    assert_eq!(heard.as_deref(), Some(&b"knock"[..]), "admitted through the mapping");
    // The knock started a flow of its own (inbound ones do not refresh the mapping).
    assert!(natlab::wait_until(Duration::from_secs(20), || mappings() == 0), "the mappings expire");
    assert_eq!((fill("NATD_SNAT4_PORTS"), fill("NATD_SNAT4_SHARED")), (0, 0), "with their ports");
    assert!(natlab::wait_until(Duration::from_secs(10), || flows() == 0));
    stranger.send_to(b"again", external).unwrap();
    assert!(socket.recv_from(&mut buf).is_err(), "nothing admitted without a mapping");
    assert_eq!(probe(&socket, endpoints[0], 0), Some(external), "the control: the socket still works");
}

/// A UDP echo in sandbox `name` (dual-stack, port `port`): answers every datagram with
/// the source address and port it saw.
fn echo_in(lab: &Lab, name: &str, port: u16) -> Served {
    let socket = in_netns(&lab.netns_of(name), || UdpSocket::bind(("::", port)).expect("echo socket"));
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut served = Served::default();
    served.spawn(move |s| {
        let mut buf = [0u8; 64];
        while s.serving() {
            let Ok((_, from)) = socket.recv_from(&mut buf) else { continue };
            let seen = SocketAddr::new(from.ip().to_canonical(), from.port());
            let _ = socket.send_to(seen.to_string().as_bytes(), from);
        }
    });
    served
}

/// RFC 4787 REQ-9a (RFC 5382 REQ-8): with `-o natd.nat.hairpin-source=external`, a
/// sandbox reaching another network's published port through the host's address is seen
/// by it with its external address and port, the same mapping an outside server reports;
/// without it (Docker's behaviour, the control) with its own address. Both dataplanes,
/// both families; the answer comes back from the address and port the client sent to.
#[test]
fn hairpin_to_a_published_port_shows_the_external_source_when_chosen() {
    for dataplane in ["ebpf", "nftables"] {
        let lab = Lab::started(&["--dataplane", dataplane]);
        second_server_address(&lab);
        lab.ok(&["network", "create", "--ipv6", "svc"]);
        lab.ok(&["run", "--name", "echo", "--network", "svc", "-p", "5000:5000/udp"]);
        let _echo = echo_in(&lab, "echo", 5000);
        network(&lab, "hx", &["natd.nat.hairpin-source=external"]);
        network(&lab, "dflt", &[]);
        let mut rows = vec![("hx-c", 46000, true), ("dflt-c", 46010, false)];
        if dataplane == "ebpf" {
            // Random ports: the source seen is the mapping, not a kept port.
            network(&lab, "hxr", &["natd.nat.hairpin-source=external", "natd.nat.masquerade-ports=random"]);
            rows.push(("hxr-c", 46020, true));
        }
        let inspect = lab.json(&["network", "inspect", "hx"]);
        assert_eq!(inspect["options"]["natd.nat.hairpin-source"], "external", "{inspect:#}");
        for (v6, addrs, uplink) in [
            (false, [EXT_IP, EXT_IP_2], HOST_UPLINK_IP),
            (true, [EXT_IP6, EXT_IP6_2], HOST_UPLINK_IP6),
        ] {
            let (server, endpoints) = Server::start(&lab, addrs);
            let published = SocketAddr::new(uplink.parse().unwrap(), 5000);
            for &(name, port, external_source) in &rows {
                let ns = lab.netns_of(name);
                let socket = bind_in(&ns, v6, port + u16::from(v6));
                let mapping = probe(&socket, endpoints[0], 0).expect("the outside server answers (control)");
                if name == "hxr-c" {
                    assert_ne!(mapping.port(), port + u16::from(v6), "a random port");
                }
                let own = in_netns(&ns, || {
                    let s = UdpSocket::bind((if v6 { "::" } else { "0.0.0.0" }, 0)).unwrap();
                    s.connect(published).unwrap();
                    s.local_addr().unwrap().ip()
                });
                socket.send_to(b"hairpin", published).expect("send");
                let mut buf = [0u8; 64];
                let (len, from) = socket.recv_from(&mut buf).expect("the published port answers");
                assert_eq!(from, published, "{dataplane} {name}: the answer comes from what was sent to");
                let seen: SocketAddr = String::from_utf8_lossy(&buf[..len]).parse().unwrap();
                let want = if external_source {
                    mapping
                } else {
                    SocketAddr::new(own, port + u16::from(v6))
                };
                println!("{dataplane} {name} IPv{}: seen {seen}, mapping {mapping}", if v6 { 6 } else { 4 });
                assert_eq!(seen, want, "{dataplane} {name} IPv{}: the source the target sees", if v6 { 6 } else { 4 });
                // Through the network's gateway address the source stays the sandbox's own:
                // that address is no peer's view of it. (Another socket: from the same one
                // Docker's source would give both flows one tuple at the target.)
                let network = &name[..name.len() - 2];
                let view = lab.json(&["network", "inspect", network]);
                let gateway: IpAddr = view[if v6 { "gateway_v6" } else { "gateway" }].as_str().unwrap().parse().unwrap();
                let via_gateway = SocketAddr::new(gateway, 5000);
                let other_port = port + 5 + u16::from(v6);
                let socket = bind_in(&ns, v6, other_port);
                socket.send_to(b"hairpin", via_gateway).expect("send");
                let (len, from) = socket.recv_from(&mut buf).expect("the published port answers on the gateway");
                assert_eq!(from, via_gateway);
                let seen: SocketAddr = String::from_utf8_lossy(&buf[..len]).parse().unwrap();
                assert_eq!(seen, SocketAddr::new(own, other_port), "{dataplane} {name}: via the gateway");
            }
            drop(server);
        }
    }
}

/// RFC 5382 REQ-1 measured end to end: connections from one sandbox port to (A1,P1) and
/// to (A2,P2) leave with one external address and port, the sandbox's own (kept while
/// free, as Linux's MASQUERADE), on each dataplane and family. The second connection is
/// made after the first closed: the mapping outlives it.
#[test]
fn tcp_mappings_are_endpoint_independent() {
    for dataplane in ["ebpf", "nftables"] {
        let lab = Lab::started(&["--dataplane", dataplane]);
        second_server_address(&lab);
        network(&lab, "dflt", &[]);
        let ns = lab.netns_of("dflt-c");
        for (v6, addrs, uplink) in [
            (false, [EXT_IP, EXT_IP_2], HOST_UPLINK_IP),
            (true, [EXT_IP6, EXT_IP6_2], HOST_UPLINK_IP6),
        ] {
            let servers = [
                SocketAddr::new(addrs[0].parse().unwrap(), PORTS[0]),
                SocketAddr::new(addrs[1].parse().unwrap(), PORTS[1]),
            ];
            let _reflectors: Vec<TcpReflector> = servers.iter().map(|s| TcpReflector::start(&lab.ext_path(), *s)).collect();
            let port = 47000 + u16::from(v6);
            let seen: Vec<SocketAddr> = servers.iter().map(|s| tcp_seen(&ns, v6, port, *s)).collect();
            println!("{dataplane} TCP IPv{}: {seen:?}", if v6 { 6 } else { 4 });
            assert_eq!(seen[0], seen[1], "{dataplane}: one mapping for both destinations");
            assert_eq!(seen[0], SocketAddr::new(uplink.parse().unwrap(), port), "{dataplane}: the uplink's address, the port kept");
        }
    }
}
