//! The edge model in the bytes the programs write (BPF_PROG_TEST_RUN, frames built with
//! etherparse or by hand, checksums recomputed independently): direct access counted by
//! reason and opened only for trusted edges, an edge without a link layer (TUN), link
//! spoofing from sandboxes (ARP, RFC 826; neighbour discovery, RFC 4861), RSTs judged as
//! RFC 5961 has a receiver judge them, broadcasts of an icc=false network, and the
//! per-source quotas that keep one client from filling the connection tables.
use natlab::bpf::prelude::*;

use nat_common::{counter, ct, names::program, net};
use natlab::{
    bpf::{Bpf, CLIENT, HOST, SANDBOX},
    frames::{Flags, PAYLOAD, SRC_MAC, SYN, ack, inspect, seen, segment, udp},
    frames6::{ALL_NODES, GATEWAY6, LINK_LOCAL_A, LINK_LOCAL_B, NET6, OTHER_SANDBOX6, SANDBOX6, nd6},
};

const OTHER_SANDBOX: [u8; 4] = [172, 20, 0, 3];
const GATEWAY: [u8; 4] = [172, 20, 0, 1];
const UNSPECIFIED: [u8; 16] = [0; 16];

fn load() -> Bpf {
    natlab::require_root();
    Bpf::load(1024).expect("natd's eBPF object loads in a private namespace")
}

/// An ARP request (RFC 826, Ethernet/IPv4) from `src_mac`, claiming `sha`/`spa`.
fn arp(src_mac: [u8; 6], sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f
}

#[test]
fn a_sandbox_speaks_ipv4_ipv6_and_arp_only() {
    let mut bpf = load();
    bpf.as_sandbox_veth(2, SANDBOX);
    // A VLAN-tagged IPv4 frame: the IP header behind the tag would pass every check.
    let mut tagged = udp(SANDBOX, 5353, OTHER_SANDBOX, 53);
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
    assert_eq!(bpf.run(SANDBOX_PROG, &tagged).0, TC_ACT_SHOT);
    assert_eq!(bpf.counter(counter::DROP_ETHERTYPE), 1);
    assert_eq!(bpf.run(SANDBOX_PROG, &udp(SANDBOX, 5353, OTHER_SANDBOX, 53)).0, PASS, "control: untagged");
}

#[test]
fn arp_from_a_sandbox_speaks_for_its_own_address_only() {
    let mut bpf = load();
    bpf.as_sandbox_veth(2, SANDBOX);
    let ok = [
        ("who-has the gateway, from its own address", arp(SRC_MAC, SRC_MAC, SANDBOX, GATEWAY)),
        ("an address probe (RFC 5227, from 0.0.0.0)", arp(SRC_MAC, SRC_MAC, [0; 4], SANDBOX)),
    ];
    for (what, frame) in ok {
        assert_eq!(bpf.run(SANDBOX_PROG, &frame).0, PASS, "{what}");
    }
    let spoofed = [
        ("claims another sandbox's address", arp(SRC_MAC, SRC_MAC, OTHER_SANDBOX, GATEWAY)),
        ("claims the gateway's address", arp(SRC_MAC, SRC_MAC, GATEWAY, OTHER_SANDBOX)),
        ("a sender MAC that is not the frame's", arp(SRC_MAC, [2, 9, 9, 9, 9, 9], SANDBOX, GATEWAY)),
    ];
    for (what, frame) in &spoofed {
        assert_eq!(bpf.run(SANDBOX_PROG, frame).0, TC_ACT_SHOT, "{what}");
    }
    assert_eq!(bpf.counter(counter::DROP_LINK_SPOOF), spoofed.len() as u64);
}

#[test]
fn neighbour_discovery_from_a_sandbox_is_about_its_own_addresses() {
    let mut bpf = load();
    bpf.network6(2, NET6, 64, GATEWAY6, true);
    bpf.as_sandbox_veth6(2, SANDBOX, SANDBOX6);
    let ok = [
        ("an advertisement of its own address", nd6(SANDBOX6, ALL_NODES, 136, &SANDBOX6)),
        ("an advertisement of its link-local address", nd6(LINK_LOCAL_B, ALL_NODES, 136, &LINK_LOCAL_B)),
        ("resolving another sandbox", nd6(SANDBOX6, OTHER_SANDBOX6, 135, &OTHER_SANDBOX6)),
        ("DAD for its own address", nd6(UNSPECIFIED, ALL_NODES, 135, &SANDBOX6)),
    ];
    for (what, frame) in ok {
        assert_eq!(bpf.run(program::SANDBOX_INGRESS6, &frame).0, PASS, "{what}");
    }
    let spoofed = [
        ("an advertisement of another sandbox's address", nd6(SANDBOX6, ALL_NODES, 136, &OTHER_SANDBOX6)),
        ("an advertisement of the gateway's address", nd6(LINK_LOCAL_B, ALL_NODES, 136, &GATEWAY6)),
        ("an advertisement of the gateway's link-local address", nd6(LINK_LOCAL_B, ALL_NODES, 136, &LINK_LOCAL_A)),
        ("an advertisement of another link-local address", nd6(SANDBOX6, ALL_NODES, 136, &LINK_LOCAL_A)),
        ("DAD for another sandbox's address", nd6(UNSPECIFIED, ALL_NODES, 135, &OTHER_SANDBOX6)),
        ("DAD for the gateway's link-local address", nd6(UNSPECIFIED, ALL_NODES, 135, &LINK_LOCAL_A)),
    ];
    for (what, frame) in &spoofed {
        assert_eq!(bpf.run(program::SANDBOX_INGRESS6, frame).0, TC_ACT_SHOT, "{what}");
    }
    assert_eq!(bpf.counter(counter::DROP_LINK_SPOOF), spoofed.len() as u64);
    // fe80::1 is the gateway's (the host's): no sandbox sends from it.
    let from_gateway = nd6(LINK_LOCAL_A, ALL_NODES, 136, &LINK_LOCAL_A);
    assert_eq!(bpf.run(program::SANDBOX_INGRESS6, &from_gateway).0, TC_ACT_SHOT);
    assert_eq!(bpf.counter(counter::DROP_SPOOFED_SOURCE), 1);
}

fn rst(ack_of: Option<u32>) -> Flags {
    Flags {
        rst: true,
        ack: ack_of,
        ..Flags::default()
    }
}

/// The flow entry of `key_src` (the client's direction) and its peer: whether an RST was
/// recorded on either.
fn reset_recorded(bpf: &Bpf) -> bool {
    bpf.ct().iter().any(|(_, e, _)| e.tcp & ct::TCP_RST != 0)
}

/// A flow from `CLIENT:40000` to the published port 8080 (the sandbox's port 80) through
/// its handshake: client ISN 1000, sandbox ISN 5000; the client's ACK carries `PAYLOAD`.
/// The test device is the edge afterwards.
fn handshake(bpf: &mut Bpf) {
    bpf.publish(None, 8080, 6, SANDBOX, 80, 11);
    bpf.as_edge();
    bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1000, SYN));
    complete_handshake(bpf, 40000);
    assert!(bpf.ct().iter().all(|(_, _, established)| *established), "established");
}

/// The sandbox answers a client's SYN (ISN 1000) on port 8080 -> 80 and the client acknowledges.
fn complete_handshake(bpf: &mut Bpf, client_port: u16) {
    bpf.as_sandbox_veth(2, SANDBOX);
    let syn_ack = Flags {
        syn: true,
        ack: Some(1001),
        ..Flags::default()
    };
    bpf.run(SANDBOX_PROG, &segment(SANDBOX, 80, CLIENT, client_port, 5000, syn_ack));
    bpf.as_edge();
    bpf.run(INGRESS, &segment(CLIENT, client_port, HOST, 8080, 1001, ack(5001)));
}

/// RFC 5961 3.2: a receiver resets only for an RST whose sequence number is exactly the
/// next it expects; one anywhere else in (or out of) the window is challenged or dropped.
/// natd's table changes only for such an RST, so a blind attacker cannot end a flow by
/// guessing, while the endpoint, which judges again, gets every RST.
#[test]
fn an_rst_changes_a_flow_only_with_the_sequence_number_its_receiver_expects() {
    let mut bpf = load();
    handshake(&mut bpf);
    // The client's ACK carried data (`PAYLOAD`), the sandbox acknowledges it: it expects
    // `next` from the client.
    let next = 1001 + PAYLOAD.len() as u32;
    bpf.as_sandbox_veth(2, SANDBOX);
    bpf.run(SANDBOX_PROG, &segment(SANDBOX, 80, CLIENT, 40000, 5001, ack(next)));
    bpf.as_edge();

    let before = bpf.counter(counter::TCP_RST_IGNORED);
    for (what, seq) in [("a blind guess", 0x7777_0000), ("in the window, not exact", next + 100), ("old", 1001)] {
        let (ret, out) = bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, seq, rst(None)));
        assert_eq!(ret, PASS, "{what}: passed on, the endpoint judges it too");
        assert_eq!(inspect(&out), seen(CLIENT, 40000, SANDBOX, 80), "{what}: translated like the flow");
        assert!(!reset_recorded(&bpf), "{what}: the flow is unchanged");
    }
    assert_eq!(bpf.counter(counter::TCP_RST_IGNORED), before + 3);
    // The RST the sandbox expects ends the flow in natd's table too.
    bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, next, rst(None)));
    assert!(reset_recorded(&bpf), "recorded");
    assert_eq!(bpf.counter(counter::TCP_RST_IGNORED), before + 3);
}

/// An abortive close right after data the peer has not acknowledged yet: the RST carries
/// the sender's SND.NXT, past the peer's last acknowledgment, and the peer takes it. So
/// does natd.
#[test]
fn an_rst_after_unacknowledged_data_ends_the_flow() {
    let mut bpf = load();
    handshake(&mut bpf);
    // The sandbox sends two segments of data; the client has acknowledged none.
    let len = PAYLOAD.len() as u32;
    bpf.as_sandbox_veth(2, SANDBOX);
    bpf.run(SANDBOX_PROG, &segment(SANDBOX, 80, CLIENT, 40000, 5001, ack(1001)));
    bpf.run(SANDBOX_PROG, &segment(SANDBOX, 80, CLIENT, 40000, 5001 + len, ack(1001)));
    let (ret, _) = bpf.run(SANDBOX_PROG, &segment(SANDBOX, 80, CLIENT, 40000, 5001 + len, rst(None)));
    assert_eq!(ret, PASS);
    assert!(!reset_recorded(&bpf), "not where the sandbox's data ends");
    bpf.run(SANDBOX_PROG, &segment(SANDBOX, 80, CLIENT, 40000, 5001 + 2 * len, rst(None)));
    assert!(reset_recorded(&bpf), "its SND.NXT: the end of its last segment");
}

/// A sender's recorded end moves only by what a sender on the path can have sent past
/// what natd saw (`SEQ_ADVANCE_MAX`, 8 MiB): a forged segment far ahead and an RST at its
/// end would otherwise be a blind reset in two packets. Both are passed on (the endpoint
/// judges them), the flow stays; the same two packets within reach end it (the control).
#[test]
fn a_segment_far_ahead_does_not_make_an_rst_count() {
    let mut bpf = load();
    handshake(&mut bpf);
    let len = PAYLOAD.len() as u32;
    let next = 1001 + len;
    let far = next.wrapping_add(64 << 20);
    let before = bpf.counter(counter::TCP_RST_IGNORED);
    let (ret, out) = bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, far, ack(5001)));
    assert_eq!((ret, inspect(&out)), (PASS, seen(CLIENT, 40000, SANDBOX, 80)), "the far segment passed on");
    bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, far + len, rst(None)));
    assert!(!reset_recorded(&bpf), "an RST at the forged segment's end");
    assert_eq!(bpf.counter(counter::TCP_RST_IGNORED), before + 1);
    bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, next, ack(5001)));
    bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, next + len, rst(None)));
    assert!(reset_recorded(&bpf), "data within reach moves the end, and its RST counts");
}

/// During the handshake (RFC 793 3.4): an RST from the responder counts only if it
/// acknowledges the SYN.
#[test]
fn an_rst_during_the_handshake_must_acknowledge_the_syn() {
    let mut bpf = load();
    bpf.as_edge();
    let (_, out) = bpf.run(EGRESS, &segment(SANDBOX, 5555, [203, 0, 113, 9], 443, 1000, SYN));
    let nat_port = inspect(&out).sport;
    bpf.run(INGRESS, &segment([203, 0, 113, 9], 443, HOST, nat_port, 0, rst(Some(4242))));
    assert!(!reset_recorded(&bpf), "an RST that does not acknowledge the SYN");
    bpf.run(INGRESS, &segment([203, 0, 113, 9], 443, HOST, nat_port, 0, rst(Some(1001))));
    assert!(reset_recorded(&bpf), "the connection refused");
}

/// On a device that carries macvlans, a frame for another MAC belongs to one of them (the
/// kernel runs this device's programs first, then hands the frame to the macvlan): its
/// programs judge it, as arriving there. Judged here too, a published port's packet would
/// be translated twice, and dropped the second time as direct access to the sandbox. The
/// control: the same frame on an edge without macvlans is translated.
#[test]
fn a_frame_for_a_macvlan_is_left_to_the_macvlans_programs() {
    let mut bpf = load();
    bpf.publish(None, 8080, 6, SANDBOX, 80, 11);
    let syn = segment(CLIENT, 40000, HOST, 8080, 1000, SYN);
    bpf.as_edge_with_macvlans();
    assert_eq!(bpf.run(INGRESS, &syn), (PASS, syn.clone()), "untouched, to the macvlan");
    assert_eq!(bpf.counter(counter::DNAT_NEW), 0);
    assert!(bpf.ct().is_empty());
    bpf.as_edge();
    let (ret, out) = bpf.run(INGRESS, &syn);
    assert_eq!((ret, inspect(&out)), (PASS, seen(CLIENT, 40000, SANDBOX, 80)), "translated here");
    assert_eq!(bpf.counter(counter::DNAT_NEW), 1);
}

/// Docker 28's raw-table rule drops traffic to a container address that arrives on any
/// interface but the network's bridge; with `trusted_host_interfaces` the listed
/// interfaces may reach published container ports on the container's address.
#[test]
fn direct_access_is_opened_for_trusted_edges_on_published_container_ports_only() {
    let mut bpf = load();
    let open = natd::dataplane::PortRule::open_port(natd::portspec::Proto::Tcp, SANDBOX.into(), 80, (7, 1), true);
    bpf.publish_many([open]);
    let to_container = || segment(CLIENT, 40000, SANDBOX, 80, 1000, SYN);
    // Not trusted: dropped as direct access.
    assert_eq!(bpf.run(INGRESS, &to_container()).0, TC_ACT_SHOT);
    assert_eq!(bpf.counter(counter::DROP_DIRECT_ACCESS), 1);
    // The network trusts the test edge ("lo" in the test's namespace).
    bpf.desired.networks.iter_mut().for_each(|n| n.trusted = vec!["lo".into()]);
    bpf.sync();
    let (ret, out) = bpf.run(INGRESS, &to_container());
    assert_eq!((ret, inspect(&out)), (PASS, seen(CLIENT, 40000, SANDBOX, 80)), "the published container port");
    assert_eq!(bpf.counter(counter::DNAT_NEW), 1, "tracked, so the reply is let out");
    assert_eq!(bpf.run(INGRESS, &segment(CLIENT, 40001, SANDBOX, 81, 1000, SYN)).0, TC_ACT_SHOT);
    assert_eq!(bpf.counter(counter::DROP_DIRECT_UNPUBLISHED), 1, "another port: counted apart");
}

#[test]
fn a_tun_edge_translates_packets_without_a_link_layer() {
    let mut bpf = load();
    let tun = bpf.tun_device("tun9");
    bpf.as_edge_l3(tun, "tun9");
    bpf.publish(None, 8080, 6, SANDBOX, 80, 11);
    // A device without a link layer hands the program the IP packet alone (a test run
    // passes what it is given: the Ethernet header the frame builders add is cut off).
    let ip_only = |frame: Vec<u8>| frame[14..].to_vec();
    let with_link = |ip_only: &[u8]| [&[0u8; 12][..], &[0x08, 0x00], ip_only].concat();
    let (ret, out) =
        bpf.run_on(program::EDGE3_INGRESS, &ip_only(segment(CLIENT, 40000, HOST, 8080, 1000, SYN)), tun);
    assert_eq!(ret, PASS);
    assert_eq!(out[0] >> 4, 4, "the output starts at the IP header");
    assert_eq!(inspect(&with_link(&out)), seen(CLIENT, 40000, SANDBOX, 80), "DNAT, checksums right");
    let (ret, out) = bpf.run_on(program::EDGE3_EGRESS, &ip_only(udp(SANDBOX, 5353, [203, 0, 113, 9], 53)), tun);
    assert_eq!(ret, PASS);
    let seen_out = inspect(&with_link(&out));
    assert_eq!(
        (seen_out.src, seen_out.dst),
        (HOST.into(), [203, 0, 113, 9].into()),
        "masqueraded to the TUN edge's address"
    );
    // Its flows never take the fast path (there is no link layer to redirect with).
    assert!(bpf.ct().iter().all(|(_, e, _)| e.flags & ct::FAST == 0));
}

#[test]
fn with_icc_off_broadcasts_reach_the_host_only() {
    let mut bpf = load();
    bpf.network(3, [10, 3, 0, 0], 24, [10, 3, 0, 1], net::MASQ);
    bpf.as_sandbox_veth(3, [10, 3, 0, 2]);
    const TC_ACT_REDIRECT: u32 = 7;
    for dst in [[255, 255, 255, 255], [224, 0, 0, 251]] {
        let (ret, _) = bpf.run(SANDBOX_PROG, &udp([10, 3, 0, 2], 5353, dst, 5353));
        assert_eq!(ret, TC_ACT_REDIRECT, "{dst:?}: handed to the bridge's own receive path");
    }
    assert_eq!(bpf.counter(counter::DROP_ICC), 2);
    // Control: with icc on, they are the bridge's to flood.
    bpf.as_sandbox_veth(2, SANDBOX);
    assert_eq!(bpf.run(SANDBOX_PROG, &udp(SANDBOX, 5353, [255, 255, 255, 255], 5353)).0, PASS);
}

#[test]
fn one_source_cannot_fill_the_connection_tables() {
    let mut bpf = load();
    bpf.desired.quota_embryonic = 4;
    bpf.desired.quota_promoted = 2;
    bpf.publish(None, 8080, 6, SANDBOX, 80, 11);
    bpf.publish(None, 5353, 17, SANDBOX, 53, 12);
    let syn = |client: [u8; 4], sport| segment(client, sport, HOST, 8080, 1000, SYN);
    for sport in 1..=4 {
        assert_eq!(bpf.run(INGRESS, &syn(CLIENT, sport)).0, PASS, "pending handshake {sport}");
    }
    assert_eq!(bpf.run(INGRESS, &syn(CLIENT, 5)).0, TC_ACT_SHOT, "a fifth pending handshake");
    assert_eq!(bpf.counter(counter::DROP_SOURCE_QUOTA), 1);
    assert_eq!(bpf.run(INGRESS, &syn([203, 0, 113, 8], 5)).0, PASS, "another client is not affected");
    // A completed handshake is not pending any more: room for one more.
    complete_handshake(&mut bpf, 1);
    assert_eq!(bpf.run(INGRESS, &syn(CLIENT, 6)).0, PASS, "after one completed");

    // UDP flows promoted to the established table: two per source (another client: this
    // one has its four pending handshakes).
    const UDP_CLIENT: [u8; 4] = [203, 0, 113, 10];
    for sport in 100..103u16 {
        bpf.as_edge();
        bpf.run(INGRESS, &udp(UDP_CLIENT, sport, HOST, 5353));
        bpf.as_sandbox_veth(2, SANDBOX);
        bpf.run(SANDBOX_PROG, &udp(SANDBOX, 53, UDP_CLIENT, sport));
        bpf.as_edge();
        bpf.run(INGRESS, &udp(UDP_CLIENT, sport, HOST, 5353));
    }
    let promoted_udp = bpf.ct().iter().filter(|(k, _, established)| *established && k.proto == 17).count();
    assert_eq!(promoted_udp, 4, "two flows, two entries each");
    assert_eq!(bpf.counter(counter::PROMOTE_SOURCE_QUOTA), 1, "the third stays embryonic");
}

/// natd's programs hand what they let through to the next program of the hook (TCX_NEXT),
/// so an IPv6 packet a sandbox program redirected to an edge meets the IPv4 egress program
/// first: that one must leave its mark for the IPv6 program, which passes it on untouched
/// (without the mark it would translate and redirect it a second time).
#[test]
fn a_redirected_packet_is_passed_on_by_the_egress_program_of_its_family() {
    let mut bpf = load();
    let frame = natlab::frames6::udp6(SANDBOX6, 5353, GATEWAY6, 53);
    let (ret, out, mark) = bpf.run_marked(EGRESS, &frame, nat_common::FASTPATH_MARK);
    assert_eq!((ret, mark), (PASS, nat_common::FASTPATH_MARK), "the IPv4 program hands it on, marked");
    assert_eq!(out, frame);
    let (ret, out, mark) = bpf.run_marked(program::EDGE_EGRESS6, &frame, nat_common::FASTPATH_MARK);
    assert_eq!((ret, mark), (PASS, 0), "the IPv6 program passes it and clears the mark");
    assert_eq!(out, frame);
    let frame4 = udp(SANDBOX, 5353, [203, 0, 113, 9], 53);
    let (ret, _, mark) = bpf.run_marked(EGRESS, &frame4, nat_common::FASTPATH_MARK);
    assert_eq!((ret, mark), (PASS, 0), "an IPv4 one: the IPv4 program");
}
