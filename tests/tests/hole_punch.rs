//! Peer-to-peer UDP between sandboxes on two natd hosts, each behind its own natd, set up
//! the way WebRTC/ICE and Tailscale-style clients do it: each peer registers with a
//! rendezvous server on the LAN (the lab's external namespace), learns the other's
//! external address and port from it (what a STUN server reflects), and both send to
//! each other ("hole punching", RFC 5128 section 3.3). It works when mappings are
//! endpoint-independent (RFC 4787 REQ-1): the address the server saw is the one the peer
//! reaches. With endpoint-independent filtering one side's datagrams get through before
//! the other has sent anything; with the default filtering only once both have.
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use natlab::{
    EXT_IP, Lab, Served, in_netns,
    lan::shared_lan,
    reflector::{TcpReflector, tcp_seen, tcp_socket},
};

const RENDEZVOUS_PORT: u16 = 3478;
/// The TCP reflector's port (TCP's counterpart of a STUN binding request).
const REFLECTOR_PORT: u16 = 3479;

/// The rendezvous server: "register NAME" records the sender's address (and answers it,
/// as STUN does), "lookup NAME" answers with the address NAME registered from.
struct Rendezvous(#[allow(dead_code)] Served);

impl Rendezvous {
    fn start(lan_ns_path: &str) -> Self {
        let socket = in_netns(lan_ns_path, || UdpSocket::bind((EXT_IP, RENDEZVOUS_PORT)).expect("rendezvous"));
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut seen: HashMap<String, SocketAddr> = HashMap::new();
        let mut served = Served::default();
        served.spawn(move |s| {
            let mut buf = [0u8; 256];
            while s.serving() {
                let Ok((len, from)) = socket.recv_from(&mut buf) else { continue };
                let text = String::from_utf8_lossy(&buf[..len]).to_string();
                let answer = if let Some(name) = text.strip_prefix("register ") {
                    seen.insert(name.to_string(), from);
                    Some(from)
                } else if let Some(name) = text.strip_prefix("lookup ") {
                    seen.get(name).copied()
                } else {
                    None
                };
                if let Some(addr) = answer {
                    let _ = socket.send_to(addr.to_string().as_bytes(), from);
                }
            }
        });
        Self(served)
    }
}

fn ask(socket: &UdpSocket, text: &str) -> SocketAddr {
    let server = SocketAddr::new(EXT_IP.parse().unwrap(), RENDEZVOUS_PORT);
    for _ in 0..5 {
        socket.send_to(text.as_bytes(), server).expect("send");
        let mut buf = [0u8; 128];
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            return String::from_utf8_lossy(&buf[..len]).parse().expect("an address");
        }
    }
    panic!("the rendezvous server answers {text:?}");
}

/// Whether `socket` receives a datagram from `from` within the socket's timeout.
fn hears(socket: &UdpSocket, from: SocketAddr) -> bool {
    let mut buf = [0u8; 128];
    while let Ok((_, sender)) = socket.recv_from(&mut buf) {
        if sender == from {
            return true;
        }
    }
    false
}

struct Peer {
    socket: UdpSocket,
    external: SocketAddr,
}

fn peer(lab: &Lab, name: &str, options: &[&str], port: u16) -> Peer {
    let mut args = vec!["network", "create"];
    for o in options {
        args.extend_from_slice(&["-o", o]);
    }
    args.push("p2p");
    lab.ok(&args);
    lab.ok(&["run", "--name", name, "--network", "p2p"]);
    let socket = in_netns(&lab.netns_of(name), || UdpSocket::bind(("0.0.0.0", port)).expect("peer socket"));
    socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let external = ask(&socket, &format!("register {name}"));
    Peer { socket, external }
}

/// Two hosts on one LAN, natd (eBPF) on each, a sandbox on each whose network has the
/// given options; the peers registered with the rendezvous server.
fn two_peers(options_a: &[&str], options_b: &[&str]) -> (Vec<Lab>, Rendezvous, Peer, Peer) {
    let mut hosts = shared_lan(2);
    for lab in &mut hosts {
        lab.start_natd(&["--dataplane", "ebpf"]).expect("start natd");
    }
    let rendezvous = Rendezvous::start(&hosts[0].ext_path());
    let a = peer(&hosts[0], "alice", options_a, 50000);
    let b = peer(&hosts[1], "bob", options_b, 50001);
    // What each learns of the other is what the server saw.
    assert_eq!(ask(&a.socket, "lookup bob"), b.external);
    assert_eq!(ask(&b.socket, "lookup alice"), a.external);
    (hosts, rendezvous, a, b)
}

/// Endpoint-independent mapping and filtering on both sides: the first datagram of
/// either peer gets through, no punching needed.
#[test]
fn full_cone_peers_reach_each_other_at_once() {
    let eif = ["natd.nat.filtering=endpoint-independent"];
    let (hosts, _rendezvous, a, b) = two_peers(&eif, &eif);
    assert_eq!(a.external.port(), 50000, "the sandbox's port, preserved");
    a.socket.send_to(b"hello bob", b.external).unwrap();
    assert!(hears(&b.socket, a.external), "bob hears alice's first datagram, from her external address");
    b.socket.send_to(b"hello alice", a.external).unwrap();
    assert!(hears(&a.socket, b.external));
    assert!(hosts[1].counter("inbound_filter_admitted") >= 1);
}

/// The default filtering (address and port, as Linux and Docker): alice's first datagram
/// is filtered by bob's natd, bob's (his punch) gets through to alice because she sent to
/// him, and from then on both directions work.
#[test]
fn default_filtering_peers_connect_when_both_punch() {
    let (_hosts, _rendezvous, a, b) = two_peers(&[], &[]);
    a.socket.send_to(b"punch", b.external).unwrap();
    assert!(!hears(&b.socket, a.external), "filtered: bob has not sent to alice yet");
    b.socket.send_to(b"punch", a.external).unwrap();
    assert!(hears(&a.socket, b.external), "bob's punch reaches alice: she sent to him first");
    a.socket.send_to(b"hello bob", b.external).unwrap();
    assert!(hears(&b.socket, a.external), "and now alice reaches bob");
}

/// Random external ports (RFC 6056) are still endpoint-independent: what the server saw
/// is what the peer reaches, so punching works as with preserved ports.
#[test]
fn random_port_peers_connect_when_both_punch() {
    let random = ["natd.nat.masquerade-ports=random"];
    let (_hosts, _rendezvous, a, b) = two_peers(&random, &random);
    assert_ne!(a.external.port(), 50000, "a random port");
    a.socket.send_to(b"punch", b.external).unwrap();
    b.socket.send_to(b"punch", a.external).unwrap();
    assert!(hears(&a.socket, b.external));
    a.socket.send_to(b"hello bob", b.external).unwrap();
    assert!(hears(&b.socket, a.external));
}

/// Two sandboxes of one host, in two isolated networks under the default filtering,
/// meet through each other's mappings as two peers behind one outside NAT that hairpins
/// (RFC 4787 REQ-9, section 5): alice's first datagram to bob's external address is
/// refused (bob has sent nothing to her) but is her punch; bob's datagram to her external
/// address is its answer and reaches her from his external address (REQ-9a); then alice's
/// reach bob. Bob's port is random, so what passes is his mapping, not a kept port.
#[test]
fn sandboxes_of_one_host_meet_through_their_mappings_when_both_punch() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    let _rendezvous = Rendezvous::start(&lab.ext_path());
    let register = |name: &str, network: &str, options: &[&str], port: u16| {
        let mut args = vec!["network", "create"];
        for o in options {
            args.extend_from_slice(&["-o", o]);
        }
        args.push(network);
        lab.ok(&args);
        lab.ok(&["run", "--name", name, "--network", network]);
        let socket = in_netns(&lab.netns_of(name), || UdpSocket::bind(("0.0.0.0", port)).expect("peer socket"));
        socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let external = ask(&socket, &format!("register {name}"));
        Peer { socket, external }
    };
    let a = register("alice", "left", &[], 50000);
    let b = register("bob", "right", &["natd.nat.masquerade-ports=random"], 50001);
    assert_eq!(a.external.ip(), b.external.ip(), "one host, one external address");
    assert_ne!(b.external.port(), 50001, "a random port");
    a.socket.send_to(b"punch", b.external).unwrap();
    assert!(!hears(&b.socket, a.external), "refused: bob has not sent to alice yet");
    let punches = || lab.json(&["stats"])["maps"]["NATD_PUNCH4"][0].as_u64();
    assert_eq!(punches(), Some(1), "but recorded as her punch");
    b.socket.send_to(b"answer", a.external).unwrap();
    assert!(hears(&a.socket, b.external), "bob's answer reaches alice, from his external address");
    a.socket.send_to(b"hello bob", b.external).unwrap();
    assert!(hears(&b.socket, a.external), "the control: the probe that was refused now passes");
    assert_eq!(lab.counter("hairpin_mapping_new"), 1);
    assert_eq!(punches(), Some(0), "the answered punch is spent");
}

/// A TCP punch between two sandboxes (namespaces and ports given), each knowing the
/// other's external address: alice connects first; once `refused` says her SYN was
/// dropped unanswered, bob connects. Both connects must complete (a simultaneous open on
/// alice's side), then data goes both ways and each sees the other's external address.
fn tcp_punch(alice: (&str, u16, SocketAddr), bob: (&str, u16, SocketAddr), refused: impl Fn() -> bool) {
    let ((alice_ns, alice_port, alice_external), (bob_ns, bob_port, bob_external)) = (alice, bob);
    let alice_socket = tcp_socket(alice_ns, false, alice_port);
    let alice = std::thread::spawn(move || {
        alice_socket.connect_timeout(&bob_external.into(), Duration::from_secs(8)).map(|()| TcpStream::from(alice_socket))
    });
    assert!(natlab::wait_until(Duration::from_secs(3), refused), "alice's first SYN goes unanswered");
    let bob_socket = tcp_socket(bob_ns, false, bob_port);
    bob_socket
        .connect_timeout(&alice_external.into(), Duration::from_secs(8))
        .expect("bob connects to alice");
    let mut bob: TcpStream = bob_socket.into();
    let mut alice = alice.join().unwrap().expect("alice connects to bob");
    for s in [&bob, &alice] {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    }
    let mut buf = [0u8; 9];
    alice.write_all(b"hello bob").unwrap();
    bob.read_exact(&mut buf).expect("bob reads");
    assert_eq!(&buf, b"hello bob");
    bob.write_all(b"hi alice!").unwrap();
    alice.read_exact(&mut buf).expect("alice reads");
    assert_eq!(&buf, b"hi alice!");
    assert_eq!(bob.peer_addr().unwrap(), alice_external, "bob sees alice's external address");
    assert_eq!(alice.peer_addr().unwrap(), bob_external);
}

/// TCP hole punching between sandboxes on two natd hosts under the default filtering
/// (RFC 5382; RFC 5128 section 4.2): each learns its external TCP address from a
/// reflector, then both connect to the other's. Alice's SYN reaches bob's natd before bob
/// has sent anything: unsolicited, it is dropped without an answer (REQ-4: the host's RST
/// would have ended her connect). Bob's SYN then meets hers on her mapping: a simultaneous
/// open (REQ-2), which both natds carry through to an established connection, and data
/// goes both ways.
#[test]
fn tcp_peers_connect_by_simultaneous_open() {
    let (hosts, _rendezvous, _a, _b) = two_peers(&[], &[]);
    let reflector = SocketAddr::new(EXT_IP.parse().unwrap(), REFLECTOR_PORT);
    let _reflector = TcpReflector::start(&hosts[0].ext_path(), reflector);
    let (alice_ns, bob_ns) = (hosts[0].netns_of("alice"), hosts[1].netns_of("bob"));
    let alice_external = tcp_seen(&alice_ns, false, 52000, reflector);
    let bob_external = tcp_seen(&bob_ns, false, 52001, reflector);
    assert_eq!(alice_external.port(), 52000, "the sandbox's port, preserved");
    tcp_punch((&alice_ns, 52000, alice_external), (&bob_ns, 52001, bob_external), || {
        hosts[1].counter("drop_unsolicited_syn") >= 1
    });
    for host in &hosts {
        assert_eq!(host.counter("tcp_invalid"), 0, "every segment is plausible to both natds");
    }
}

/// The same between two sandboxes of one host over TCP (default filtering both): alice's
/// hairpinned SYN to bob's external address is refused, recorded as her punch and left
/// unanswered (REQ-4: no RST from the host ends her connect); bob's SYN to hers is its
/// answer, a simultaneous open both sandboxes complete, and data goes both ways between
/// their external addresses (REQ-9a).
#[test]
fn tcp_sandboxes_of_one_host_meet_by_simultaneous_open() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    let reflector = SocketAddr::new(EXT_IP.parse().unwrap(), REFLECTOR_PORT);
    let _reflector = TcpReflector::start(&lab.ext_path(), reflector);
    for (name, network) in [("alice", "left"), ("bob", "right")] {
        lab.ok(&["network", "create", network]);
        lab.ok(&["run", "--name", name, "--network", network]);
    }
    let (alice_ns, bob_ns) = (lab.netns_of("alice"), lab.netns_of("bob"));
    let alice_external = tcp_seen(&alice_ns, false, 53000, reflector);
    let bob_external = tcp_seen(&bob_ns, false, 53001, reflector);
    tcp_punch((&alice_ns, 53000, alice_external), (&bob_ns, 53001, bob_external), || {
        lab.counter("drop_unsolicited_syn") >= 1
    });
}
