//! The bytes natd's IPv6 TC programs write (NAT66), checked through BPF_PROG_TEST_RUN:
//! frames built with etherparse, the output walked again and every checksum (TCP, UDP,
//! ICMPv6, each over the IPv6 pseudo-header; inside ICMPv6 errors the quoted packet's too)
//! recomputed independently (`natlab::frames6`). The IPv6 counterpart of `packets.rs`:
//! each test runs on its own thread in a fresh network namespace with its own pin
//! directory, on the kernel's normal forwarding path (fast path off) unless it says
//! otherwise.
use natlab::bpf::prelude::*;

use nat_common::{FASTPATH_MARK, counter, ct, names::program, net};
use natlab::{
    bpf::{BRIDGE_MAC, Bpf, HOST, HOST6, SANDBOX, SANDBOX_MAC, SANDBOX_VETH},
    frames::{self, syn_ack},
    frames6::{
        ALL_NODES, Ext, GATEWAY6, LINK_LOCAL_A, LINK_LOCAL_B, NET6, OTHER_SANDBOX6, SANDBOX6, SYN, ack,
        dest_unreachable, echo6, inner_echo6, inner_tcp6, inner_udp6, inspect_error6, inspect6, ip6, nd6,
        packet_too_big, seen6, segment6, solicited_node, tcp6, time_exceeded, udp6, v6, with_ext,
    },
};

const INGRESS6: &str = program::EDGE_INGRESS6;
const EGRESS6: &str = program::EDGE_EGRESS6;
const SANDBOX_PROG6: &str = program::SANDBOX_INGRESS6;
/// TC_ACT_UNSPEC as the test run reports it: the next program of the TCX hook decides
/// (the IPv4 program handing IPv6 on; natd's `PASS` is the same verdict).
const TCX_NEXT: u32 = PASS;

const CLIENT6: [u8; 16] = v6([0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 7]);
const REMOTE6: [u8; 16] = v6([0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 9]);
/// A router on the uplink's link (sends Packet Too Big, Time Exceeded).
const ROUTER6: [u8; 16] = v6([0x2001, 0xdb8, 0x198, 0, 0, 0, 0, 2]);
/// Another address of the host, for ports bound to one address.
const BOUND6: [u8; 16] = v6([0x2001, 0xdb8, 0x198, 0, 0, 0, 0, 0x77]);
const LOOPBACK6: [u8; 16] = v6([0, 0, 0, 0, 0, 0, 0, 1]);
/// Every IPv6 packet-test frame's MACs (`frames::SRC_MAC`, `DST_MAC`).
const ETH_HLEN: usize = 14;
const L4: usize = 54;

/// natd's object with the test uplink's IPv6 address local and network 2 dual-stack
/// (fd00:20::/64, masqueraded), the test sandbox's IPv6 endpoint installed.
fn load(ct_capacity: u32) -> Bpf {
    natlab::require_root();
    let mut bpf = Bpf::load(ct_capacity).expect("natd's eBPF object loads in a private namespace");
    bpf.fast_path(false);
    bpf.local6(HOST6);
    bpf.network6(2, NET6, 64, GATEWAY6, true);
    bpf.endpoint6(SANDBOX6, SANDBOX_VETH, 2);
    bpf
}

/// The test device as the dual-stack test sandbox's veth.
fn as_sandbox(bpf: &mut Bpf) {
    bpf.as_sandbox_veth6(2, SANDBOX, SANDBOX6);
}

/// `out` is `input` with only addresses, ports / echo id and the L4 checksum rewritten:
/// same length, same Ethernet header, same IPv6 version, class, flow label, payload length,
/// next header and hop limit (the slow path leaves the hop limit to the kernel), same
/// extension headers, same L4 bytes apart from ports and checksum, same payload.
#[track_caller]
fn only_tuple_rewritten(input: &[u8], out: &[u8]) {
    assert_eq!(out.len(), input.len(), "length");
    assert_eq!(
        out[..ETH_HLEN + 8],
        input[..ETH_HLEN + 8],
        "Ethernet and IPv6 fixed fields"
    );
    let ip = ip6(input);
    assert_eq!(out[L4..ip.l4], input[L4..ip.l4], "extension headers");
    let (keep_from, csum_at) = match ip.proto {
        6 => (ip.l4 + 4, ip.l4 + 16),
        17 => (ip.l4 + 4, ip.l4 + 6),
        // ICMPv6: type, code kept; id at 4-5, sequence and data after.
        _ => (ip.l4 + 6, ip.l4 + 2),
    };
    if ip.proto == 58 {
        assert_eq!(
            out[ip.l4..ip.l4 + 2],
            input[ip.l4..ip.l4 + 2],
            "ICMPv6 type and code"
        );
    }
    for i in keep_from..out.len() {
        if i == csum_at || i == csum_at + 1 {
            continue;
        }
        assert_eq!(out[i], input[i], "byte {i} beyond the tuple changed");
    }
}

#[test]
fn dnat6_forward_reverse_and_established() {
    let mut bpf = load(1024);
    bpf.publish6(None, 8080, 6, SANDBOX6, 80, 11);
    let syn = segment6(CLIENT6, 40000, HOST6, 8080, 1000, SYN);
    let (ret, out) = bpf.run(INGRESS6, &syn);
    assert_eq!(ret, PASS);
    assert_eq!(
        inspect6(&out),
        seen6(CLIENT6, 40000, SANDBOX6, 80),
        "DNAT keeps the client's address"
    );
    only_tuple_rewritten(&syn, &out);
    let flows = bpf.ct6();
    assert_eq!(flows.len(), 2, "one entry per direction");
    assert!(
        flows.iter().all(|(_, _, established)| !established),
        "embryonic until the handshake completes"
    );
    assert!(bpf.ct().is_empty(), "nothing in the IPv4 tables");
    assert_eq!(bpf.counter(counter::DNAT_NEW), 1);
    // The SYN-ACK as it leaves the sandbox.
    as_sandbox(&mut bpf);
    let frame = segment6(SANDBOX6, 80, CLIENT6, 40000, 5000, syn_ack(1001));
    let (ret, out) = bpf.run(SANDBOX_PROG6, &frame);
    assert_eq!(ret, PASS);
    assert_eq!(
        inspect6(&out),
        seen6(HOST6, 8080, CLIENT6, 40000),
        "the reply leaves from the published address"
    );
    only_tuple_rewritten(&frame, &out);
    assert_eq!(bpf.counter(counter::DNAT_REPLY), 1);
    // The client's ACK of the SYN-ACK completes the handshake.
    bpf.as_edge();
    let frame = segment6(CLIENT6, 40000, HOST6, 8080, 1001, ack(5001));
    let (ret, out) = bpf.run(INGRESS6, &frame);
    assert_eq!(ret, PASS);
    assert_eq!(inspect6(&out), seen6(CLIENT6, 40000, SANDBOX6, 80));
    only_tuple_rewritten(&frame, &out);
    assert_eq!(bpf.counter(counter::DNAT_ESTABLISHED), 1);
    assert_eq!(bpf.counter(counter::CT_PROMOTED), 1);
    let flows = bpf.ct6();
    assert!(
        flows.len() == 2 && flows.iter().all(|(_, _, established)| *established),
        "the flow moved to the established table: {flows:?}"
    );
    // A reply that reaches the uplink's egress untranslated is translated there too.
    let frame = segment6(SANDBOX6, 80, CLIENT6, 40000, 5001, ack(1030));
    let (ret, out) = bpf.run(EGRESS6, &frame);
    assert_eq!(ret, PASS);
    assert_eq!(inspect6(&out), seen6(HOST6, 8080, CLIENT6, 40000));
    only_tuple_rewritten(&frame, &out);
    assert_eq!(bpf.counter(counter::IPV4), 0, "no packet was counted as IPv4");
    assert!(bpf.counter(counter::IPV6) >= 4);
}

#[test]
fn dnat6_udp_reply_and_bound_address() {
    let mut bpf = load(1024);
    bpf.publish6(None, 5353, 17, SANDBOX6, 53, 12);
    let frame = udp6(CLIENT6, 5000, HOST6, 5353);
    let (ret, out) = bpf.run(INGRESS6, &frame);
    assert_eq!(ret, PASS);
    assert_eq!(inspect6(&out), seen6(CLIENT6, 5000, SANDBOX6, 53));
    only_tuple_rewritten(&frame, &out);
    as_sandbox(&mut bpf);
    let frame = udp6(SANDBOX6, 53, CLIENT6, 5000);
    let (ret, out) = bpf.run(SANDBOX_PROG6, &frame);
    assert_eq!(ret, PASS);
    assert_eq!(inspect6(&out), seen6(HOST6, 5353, CLIENT6, 5000));
    only_tuple_rewritten(&frame, &out);
    assert_eq!(
        (bpf.counter(counter::DNAT_NEW), bpf.counter(counter::DNAT_REPLY)),
        (1, 1)
    );
    // TCP on the same port is another mapping: untouched.
    bpf.as_edge();
    let frame = tcp6(CLIENT6, 5000, HOST6, 5353, true);
    assert_eq!(bpf.run(INGRESS6, &frame), (PASS, frame.clone()));
    // A port bound to one address: not for the host's other addresses.
    bpf.local6(BOUND6);
    bpf.publish6(Some(BOUND6), 7000, 17, SANDBOX6, 70, 13);
    let frame = udp6(CLIENT6, 5001, HOST6, 7000);
    assert_eq!(bpf.run(INGRESS6, &frame), (PASS, frame.clone()));
    let frame = udp6(CLIENT6, 5001, BOUND6, 7000);
    let (_, out) = bpf.run(INGRESS6, &frame);
    assert_eq!(inspect6(&out), seen6(CLIENT6, 5001, SANDBOX6, 70));
    only_tuple_rewritten(&frame, &out);
}

#[test]
fn snat6_tcp_and_udp_flows_and_their_replies() {
    let mut bpf = load(1024);
    let frame = tcp6(SANDBOX6, 5555, REMOTE6, 443, true);
    let (ret, out) = bpf.run(EGRESS6, &frame);
    assert_eq!(ret, PASS);
    let first = inspect6(&out);
    assert_eq!(
        (first.src, first.dst, first.dport),
        (HOST6.into(), REMOTE6.into(), 443),
        "masqueraded to the uplink's IPv6 address"
    );
    assert_eq!(first.sport, 5555, "the sandbox's port, preserved (RFC 4787 REQ-3, as Linux)");
    only_tuple_rewritten(&frame, &out);
    let nat_port = first.sport;
    assert_eq!(bpf.counter(counter::SNAT_NEW), 1);
    // The remote's SYN-ACK comes back to the sandbox.
    let frame = segment6(REMOTE6, 443, HOST6, nat_port, 9000, syn_ack(1001));
    let (ret, out) = bpf.run(INGRESS6, &frame);
    assert_eq!(ret, PASS);
    assert_eq!(inspect6(&out), seen6(REMOTE6, 443, SANDBOX6, 5555));
    only_tuple_rewritten(&frame, &out);
    assert_eq!(bpf.counter(counter::SNAT_REPLY), 1);
    // The sandbox's ACK and data keep the NAT port.
    let frame = segment6(SANDBOX6, 5555, REMOTE6, 443, 1001, ack(9001));
    let (_, out) = bpf.run(EGRESS6, &frame);
    assert_eq!(inspect6(&out), seen6(HOST6, nat_port, REMOTE6, 443));
    only_tuple_rewritten(&frame, &out);
    assert_eq!(bpf.counter(counter::SNAT_ESTABLISHED), 1);

    // UDP.
    let frame = udp6(SANDBOX6, 5353, REMOTE6, 53);
    let (ret, out) = bpf.run(EGRESS6, &frame);
    assert_eq!(ret, PASS);
    let udp_out = inspect6(&out);
    assert_eq!(
        (udp_out.src, udp_out.dst, udp_out.dport),
        (HOST6.into(), REMOTE6.into(), 53)
    );
    assert_eq!(udp_out.sport, 5353, "preserved");
    only_tuple_rewritten(&frame, &out);
    let frame = udp6(REMOTE6, 53, HOST6, udp_out.sport);
    let (ret, out) = bpf.run(INGRESS6, &frame);
    assert_eq!(ret, PASS);
    assert_eq!(inspect6(&out), seen6(REMOTE6, 53, SANDBOX6, 5353));
    only_tuple_rewritten(&frame, &out);
    assert_eq!(bpf.ct6().len(), 4, "two flows, two entries each");
    // A datagram to a NAT port no flow uses is not the sandbox's.
    let unused = (61000..=61009u16)
        .find(|p| *p != nat_port && *p != udp_out.sport)
        .expect("ten ports, two taken");
    let frame = udp6(REMOTE6, 53, HOST6, unused);
    assert_eq!(bpf.run(INGRESS6, &frame), (PASS, frame.clone()));
}

/// IPv6 per-source quotas: a client from outside counts by its /64 (one host has a whole
/// /64 to send from), a sandbox by its address (the sandboxes of a network share its /64:
/// counted by /64, one sandbox would use up the others' share).
#[test]
fn ipv6_quotas_count_clients_by_their_64_and_sandboxes_by_their_address() {
    let mut bpf = load(1024);
    bpf.desired.quota_embryonic = 2;
    bpf.publish6(None, 8080, 6, SANDBOX6, 80, 4);
    bpf.sync();
    let neighbour6 = v6([0xfd00, 0x20, 0, 0, 0, 0, 0, 3]);
    for sandbox in [SANDBOX6, neighbour6] {
        for sport in [5001, 5002] {
            assert_eq!(bpf.run(EGRESS6, &tcp6(sandbox, sport, REMOTE6, 443, true)).0, PASS, "pending {sport}");
        }
    }
    assert_eq!(bpf.run(EGRESS6, &tcp6(SANDBOX6, 5003, REMOTE6, 443, true)).0, TC_ACT_SHOT, "a third of one sandbox");
    assert_eq!(bpf.counter(counter::DROP_SOURCE_QUOTA), 1);
    let same_64 = v6([0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 8]);
    for (client, sport) in [(CLIENT6, 40001), (same_64, 40002)] {
        assert_eq!(bpf.run(INGRESS6, &tcp6(client, sport, HOST6, 8080, true)).0, PASS, "client {sport}");
    }
    assert_eq!(
        bpf.run(INGRESS6, &tcp6(same_64, 40003, HOST6, 8080, true)).0,
        TC_ACT_SHOT,
        "a third from the clients' /64"
    );
    assert_eq!(bpf.counter(counter::DROP_SOURCE_QUOTA), 2);
}

#[test]
fn icmp6_echo_id_translated_both_ways() {
    let mut bpf = load(1024);
    let frame = echo6(SANDBOX6, REMOTE6, 0x4242, true);
    let (ret, out) = bpf.run(EGRESS6, &frame);
    assert_eq!(ret, PASS);
    let request = inspect6(&out);
    assert_eq!((request.src, request.dst), (HOST6.into(), REMOTE6.into()));
    only_tuple_rewritten(&frame, &out);
    let nat_id = request.sport;
    let frame = echo6(REMOTE6, HOST6, nat_id, false);
    let (ret, out) = bpf.run(INGRESS6, &frame);
    assert_eq!(ret, PASS);
    assert_eq!(
        inspect6(&out),
        seen6(REMOTE6, 0x4242, SANDBOX6, 0x4242),
        "the reply goes back to the sandbox with its own id, checksum right"
    );
    only_tuple_rewritten(&frame, &out);
    // A ping of the host itself is the host's: untouched.
    let frame = echo6(REMOTE6, HOST6, 0x0101, true);
    assert_eq!(bpf.run(INGRESS6, &frame), (PASS, frame.clone()));
}

#[test]
fn icmp6_packet_too_big_for_a_masqueraded_flow() {
    let mut bpf = load(1024);
    let (_, out) = bpf.run(EGRESS6, &udp6(SANDBOX6, 33434, REMOTE6, 33435));
    let nat_port = inspect6(&out).sport;
    let frame = packet_too_big(ROUTER6, HOST6, 1280, &inner_udp6(HOST6, nat_port, REMOTE6, 33435));
    let (ret, out) = bpf.run(INGRESS6, &frame);
    assert_eq!(ret, PASS);
    assert_eq!(out.len(), frame.len());
    let error = inspect_error6(&out);
    assert_eq!(
        (error.outer.src, error.outer.dst),
        (ROUTER6.into(), SANDBOX6.into()),
        "delivered to the sandbox"
    );
    assert_eq!(error.quoted, seen6(SANDBOX6, 33434, REMOTE6, 33435));
    assert!(error.quoted_whole, "the quoted datagram's checksum was checked");
    assert_eq!((error.icmp_type, error.code), (2, 0));
    assert_eq!(error.rest, 1280u32.to_be_bytes(), "the MTU is untouched");
    assert_eq!(bpf.counter(counter::ICMP_ERROR_TRANSLATED), 1);

    // A TCP flow, quoted whole and quoted cut short.
    let (_, out) = bpf.run(EGRESS6, &tcp6(SANDBOX6, 5555, REMOTE6, 443, true));
    let nat_port = inspect6(&out).sport;
    let quoted = inner_tcp6(HOST6, nat_port, REMOTE6, 443);
    let (ret, out) = bpf.run(INGRESS6, &packet_too_big(ROUTER6, HOST6, 1400, &quoted));
    assert_eq!(ret, PASS);
    let error = inspect_error6(&out);
    assert_eq!(error.outer.dst, std::net::Ipv6Addr::from(SANDBOX6));
    assert_eq!(error.quoted, seen6(SANDBOX6, 5555, REMOTE6, 443));
    assert!(error.quoted_whole);
    assert_eq!(error.rest, 1400u32.to_be_bytes());
    let (ret, out) = bpf.run(
        INGRESS6,
        &packet_too_big(ROUTER6, HOST6, 1400, &quoted[..40 + 24]),
    );
    assert_eq!(ret, PASS);
    let error = inspect_error6(&out);
    assert_eq!(error.quoted, seen6(SANDBOX6, 5555, REMOTE6, 443));
    assert!(!error.quoted_whole);
    assert_eq!(bpf.counter(counter::ICMP_ERROR_TRANSLATED), 3);
}

#[test]
fn icmp6_time_exceeded_for_a_masqueraded_ping_and_unknown_flows_untouched() {
    let mut bpf = load(1024);
    let (_, out) = bpf.run(EGRESS6, &echo6(SANDBOX6, REMOTE6, 0x4242, true));
    let nat_id = inspect6(&out).sport;
    let frame = time_exceeded(ROUTER6, HOST6, &inner_echo6(HOST6, REMOTE6, nat_id));
    let (ret, out) = bpf.run(INGRESS6, &frame);
    assert_eq!(ret, PASS);
    let error = inspect_error6(&out);
    assert_eq!(
        (error.outer.src, error.outer.dst),
        (ROUTER6.into(), SANDBOX6.into())
    );
    assert_eq!(
        error.quoted,
        seen6(SANDBOX6, 0x4242, REMOTE6, 0x4242),
        "the quoted echo id is the sandbox's again"
    );
    assert!(
        error.quoted_whole,
        "the quoted echo's ICMPv6 checksum was checked"
    );
    // An error about a flow natd does not know passes untouched.
    let stranger = time_exceeded(ROUTER6, HOST6, &inner_udp6(HOST6, 999, REMOTE6, 53));
    assert_eq!(bpf.run(INGRESS6, &stranger), (PASS, stranger.clone()));
    assert_eq!(bpf.counter(counter::ICMP_ERROR_TRANSLATED), 1);
}

#[test]
fn icmp6_destination_unreachable_from_a_sandbox_about_a_published_port_flow() {
    let mut bpf = load(1024);
    bpf.publish6(None, 5353, 17, SANDBOX6, 53, 6);
    bpf.run(INGRESS6, &udp6(CLIENT6, 5000, HOST6, 5353));
    as_sandbox(&mut bpf);
    let frame = dest_unreachable(SANDBOX6, CLIENT6, 4, &inner_udp6(CLIENT6, 5000, SANDBOX6, 53));
    let (ret, out) = bpf.run(SANDBOX_PROG6, &frame);
    assert_eq!(ret, PASS);
    assert_eq!(out.len(), frame.len());
    let error = inspect_error6(&out);
    assert_eq!(
        (error.outer.src, error.outer.dst),
        (HOST6.into(), CLIENT6.into()),
        "the error comes from the published address"
    );
    assert_eq!(
        error.quoted,
        seen6(CLIENT6, 5000, HOST6, 5353),
        "the client recognises its own datagram"
    );
    assert!(error.quoted_whole);
    assert_eq!((error.icmp_type, error.code, error.rest), (1, 4, [0; 4]));
    assert_eq!(bpf.counter(counter::ICMP_ERROR_TRANSLATED), 1);
}

/// Link traffic is never translated, and never a way around the policy: the host's own
/// passes at the uplink untouched; a sandbox may resolve and be resolved on its own link
/// from its own addresses, never advertise itself as a router or redirect, never send
/// neighbour discovery off its link, and with icc off reach nothing on the link but its
/// gateway (fe80::1).
#[test]
fn link_traffic_passes_untouched_within_the_policy() {
    let mut bpf = load(1024);
    bpf.publish6(None, 8080, 6, SANDBOX6, 80, 5);
    let all_nodes = ALL_NODES;
    let all_routers = v6([0xff02, 0, 0, 0, 0, 0, 0, 2]);
    let mdns = v6([0xff02, 0, 0, 0, 0, 0, 0, 0xfb]);
    let gateway_ll = v6([0xfe80, 0, 0, 0, 0, 0, 0, 1]);
    let pass = |bpf: &mut Bpf, program: &str, what: &str, frame: Vec<u8>| {
        assert_eq!(bpf.run(program, &frame), (PASS, frame.clone()), "{what} passes untouched");
    };
    let drop = |bpf: &mut Bpf, program: &str, what: &str, frame: Vec<u8>, reason: u32| {
        let before = bpf.counter(reason);
        assert_eq!(bpf.run(program, &frame).0, TC_ACT_SHOT, "{what} is dropped");
        assert_eq!(bpf.counter(reason), before + 1, "{what}: counted as {reason}");
    };

    // From outside, for the host: resolution of its address, unreachability detection,
    // the LAN's router advertisement, link-local and multicast traffic.
    pass(&mut bpf, INGRESS6, "NS for the host", nd6(LINK_LOCAL_A, solicited_node(HOST6), 135, &HOST6));
    pass(&mut bpf, INGRESS6, "unicast NS", nd6(ROUTER6, HOST6, 135, &HOST6));
    pass(&mut bpf, INGRESS6, "NA to the host", nd6(ROUTER6, HOST6, 136, &ROUTER6));
    pass(&mut bpf, INGRESS6, "the LAN's RA", nd6(LINK_LOCAL_A, all_nodes, 134, &[0; 8]));
    pass(&mut bpf, INGRESS6, "link-local TCP", tcp6(LINK_LOCAL_A, 40000, LINK_LOCAL_B, 8080, true));
    pass(&mut bpf, INGRESS6, "multicast", udp6(CLIENT6, 5353, mdns, 5353));
    // ... but neighbour discovery aimed at a sandbox is direct access like anything else.
    drop(&mut bpf, INGRESS6, "NS to a sandbox", nd6(ROUTER6, SANDBOX6, 135, &SANDBOX6), counter::DROP_DIRECT_ACCESS);

    // Leaving by the uplink: the host's own link traffic passes; a sandbox's neighbour
    // discovery forwarded there is untranslated sandbox traffic.
    pass(&mut bpf, EGRESS6, "the host's NS", nd6(LINK_LOCAL_A, solicited_node(ROUTER6), 135, &ROUTER6));
    pass(&mut bpf, EGRESS6, "the host's NA", nd6(HOST6, ROUTER6, 136, &HOST6));
    drop(&mut bpf, EGRESS6, "a sandbox's NA", nd6(SANDBOX6, ROUTER6, 136, &SANDBOX6), counter::DROP_UNTRANSLATED);

    as_sandbox(&mut bpf);
    pass(&mut bpf, SANDBOX_PROG6, "NS for the gateway", nd6(SANDBOX6, solicited_node(GATEWAY6), 135, &GATEWAY6));
    pass(&mut bpf, SANDBOX_PROG6, "duplicate address detection", nd6(v6([0; 8]), solicited_node(SANDBOX6), 135, &SANDBOX6));
    pass(&mut bpf, SANDBOX_PROG6, "NA to the gateway", nd6(SANDBOX6, GATEWAY6, 136, &SANDBOX6));
    pass(&mut bpf, SANDBOX_PROG6, "router solicitation", nd6(LINK_LOCAL_B, all_routers, 133, &[]));
    pass(&mut bpf, SANDBOX_PROG6, "multicast (icc on)", udp6(SANDBOX6, 5353, mdns, 5353));
    pass(&mut bpf, SANDBOX_PROG6, "link-local TCP (icc on)", tcp6(LINK_LOCAL_B, 80, LINK_LOCAL_A, 40000, false));
    drop(&mut bpf, SANDBOX_PROG6, "RA from a sandbox", nd6(LINK_LOCAL_B, all_nodes, 134, &[0; 8]), counter::DROP_ROGUE_ND);
    drop(&mut bpf, SANDBOX_PROG6, "redirect from a sandbox", nd6(LINK_LOCAL_B, LINK_LOCAL_A, 137, &[0; 32]), counter::DROP_ROGUE_ND);
    drop(&mut bpf, SANDBOX_PROG6, "NA off the link", nd6(SANDBOX6, REMOTE6, 136, &SANDBOX6), counter::DROP_ROGUE_ND);
    drop(&mut bpf, SANDBOX_PROG6, "NS from another's address", nd6(OTHER_SANDBOX6, solicited_node(GATEWAY6), 135, &GATEWAY6), counter::DROP_SPOOFED_SOURCE);
    drop(&mut bpf, SANDBOX_PROG6, "link-local source to the world", tcp6(LINK_LOCAL_B, 40000, CLIENT6, 443, true), counter::DROP_SPOOFED_SOURCE);

    // icc off: nothing on the link but the gateway.
    bpf.network(2, [172, 20, 0, 0], 16, [172, 20, 0, 1], net::MASQ);
    bpf.network6(2, NET6, 64, GATEWAY6, true);
    pass(&mut bpf, SANDBOX_PROG6, "NS for the gateway (icc off)", nd6(SANDBOX6, solicited_node(GATEWAY6), 135, &GATEWAY6));
    pass(&mut bpf, SANDBOX_PROG6, "the gateway's link-local", tcp6(LINK_LOCAL_B, 40000, gateway_ll, 22, true));
    // (LINK_LOCAL_A is fe80::1, the gateway's: another sandbox is fe80::3 here.)
    let other_ll = v6([0xfe80, 0, 0, 0, 0, 0, 0, 3]);
    drop(&mut bpf, SANDBOX_PROG6, "link-local TCP (icc off)", tcp6(LINK_LOCAL_B, 80, other_ll, 40000, false), counter::DROP_ICC);
    drop(&mut bpf, SANDBOX_PROG6, "multicast (icc off)", udp6(SANDBOX6, 5353, mdns, 5353), counter::DROP_ICC);
    assert_eq!(bpf.counter(counter::DNAT_NEW), 0);
    assert!(bpf.ct6().is_empty(), "no flow was created");
}

/// A sandbox whose network has no IPv6 has nothing to route IPv6 with: beyond its link,
/// all of it is dropped.
#[test]
fn ipv6_from_a_network_without_ipv6_is_dropped() {
    let mut bpf = load(1024);
    bpf.network(3, [172, 21, 0, 0], 16, [172, 21, 0, 1], net::MASQ | net::ICC);
    bpf.as_sandbox_veth(3, [172, 21, 0, 2]);
    let before = bpf.counter(counter::DROP_NO_IPV6);
    for frame in [
        tcp6(v6([0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 2]), 40000, CLIENT6, 443, true),
        tcp6(SANDBOX6, 40000, CLIENT6, 443, true),
        udp6(OTHER_SANDBOX6, 53, SANDBOX6, 53),
    ] {
        assert_eq!(bpf.run(SANDBOX_PROG6, &frame).0, TC_ACT_SHOT);
    }
    assert_eq!(bpf.counter(counter::DROP_NO_IPV6), before + 3);
    // Its own link still works (neighbour discovery between link-local addresses).
    let ns = nd6(LINK_LOCAL_B, solicited_node(LINK_LOCAL_A), 135, &LINK_LOCAL_A);
    assert_eq!(bpf.run(SANDBOX_PROG6, &ns), (PASS, ns.clone()));
    assert!(bpf.ct6().is_empty());
}

#[test]
fn extension_headers_are_walked_and_later_fragments_never_translated() {
    let mut bpf = load(1024);
    bpf.publish6(None, 8080, 6, SANDBOX6, 80, 5);
    // Hop-by-hop and destination options before TCP: the ports are found after them.
    let frame = with_ext(
        &tcp6(CLIENT6, 40000, HOST6, 8080, true),
        &[Ext::HopByHop, Ext::DestOpts],
    );
    assert_eq!(ip6(&frame).l4, L4 + 16);
    let (ret, out) = bpf.run(INGRESS6, &frame);
    assert_eq!(ret, PASS);
    assert_eq!(inspect6(&out), seen6(CLIENT6, 40000, SANDBOX6, 80));
    only_tuple_rewritten(&frame, &out);
    assert_eq!(bpf.counter(counter::DNAT_NEW), 1);
    // The sandbox's reply with a destination options header.
    as_sandbox(&mut bpf);
    let frame = with_ext(
        &segment6(SANDBOX6, 80, CLIENT6, 40000, 5000, syn_ack(1001)),
        &[Ext::DestOpts],
    );
    let (ret, out) = bpf.run(SANDBOX_PROG6, &frame);
    assert_eq!(ret, PASS);
    assert_eq!(inspect6(&out), seen6(HOST6, 8080, CLIENT6, 40000));
    only_tuple_rewritten(&frame, &out);
    bpf.as_edge();

    // A later fragment (offset 185 x 8 bytes) to the published port: no ports to match,
    // untouched (the kernel reassembles; natd never guesses).
    let later = with_ext(
        &tcp6(CLIENT6, 40000, HOST6, 8080, false),
        &[Ext::Fragment {
            offset: 185,
            more: false,
        }],
    );
    assert_eq!(bpf.run(INGRESS6, &later), (PASS, later.clone()));
    // From a masqueraded sandbox a later fragment cannot be translated: it must not leave.
    let later = with_ext(
        &tcp6(SANDBOX6, 5555, REMOTE6, 443, false),
        &[Ext::Fragment {
            offset: 185,
            more: false,
        }],
    );
    let (ret, _) = bpf.run(EGRESS6, &later);
    assert_eq!(ret, TC_ACT_SHOT, "a later fragment of a sandbox must not leave");
    assert_eq!(bpf.counter(counter::DROP_FRAGMENT), 1);
    // Behind a hop-by-hop header too.
    let later = with_ext(
        &udp6(SANDBOX6, 5555, REMOTE6, 443),
        &[
            Ext::HopByHop,
            Ext::Fragment {
                offset: 1,
                more: true,
            },
        ],
    );
    assert_eq!(bpf.run(EGRESS6, &later).0, TC_ACT_SHOT);
    assert_eq!(bpf.counter(counter::DROP_FRAGMENT), 2);
    // The first fragment carries the ports: translated (it carries the whole segment
    // here, so its checksum can be checked).
    let first = with_ext(
        &tcp6(SANDBOX6, 5555, REMOTE6, 443, true),
        &[Ext::Fragment {
            offset: 0,
            more: true,
        }],
    );
    let (ret, out) = bpf.run(EGRESS6, &first);
    assert_eq!(ret, PASS);
    let seen = inspect6(&out);
    assert_eq!(
        (seen.src, seen.dst, seen.dport),
        (HOST6.into(), REMOTE6.into(), 443)
    );
    only_tuple_rewritten(&first, &out);
    // Masquerade behind hop-by-hop and destination options.
    let frame = with_ext(
        &udp6(SANDBOX6, 6000, REMOTE6, 53),
        &[Ext::HopByHop, Ext::DestOpts],
    );
    let (ret, out) = bpf.run(EGRESS6, &frame);
    assert_eq!(ret, PASS);
    let seen = inspect6(&out);
    assert_eq!(
        (seen.src, seen.dst, seen.dport),
        (HOST6.into(), REMOTE6.into(), 53)
    );
    only_tuple_rewritten(&frame, &out);
}

/// The shortest cut of `frame` BPF_PROG_TEST_RUN hands to a TC program (shorter: EINVAL).
fn shortest_accepted(bpf: &mut Bpf, program: &str, frame: &[u8]) -> usize {
    (1..frame.len())
        .find(|&len| bpf.run_timed(program, &frame[..len]).is_ok())
        .expect("some cut is accepted")
}

#[test]
fn truncated_and_malformed_frames_never_leave_untranslated() {
    let mut bpf = load(1024);
    bpf.publish6(None, 8080, 6, SANDBOX6, 80, 5);
    let full = tcp6(CLIENT6, 40000, HOST6, 8080, true);
    // BPF_PROG_TEST_RUN itself refuses IPv6 frames shorter than Ethernet + 40 bytes
    // (EINVAL), as the stack never hands such an skb to TC; every longer cut reaches the
    // program.
    assert_eq!(shortest_accepted(&mut bpf, INGRESS6, &full), L4);
    for len in L4..full.len() {
        let (ret, out) = bpf.run(INGRESS6, &full[..len]);
        assert_eq!(ret, PASS, "len {len}");
        assert_eq!(
            out,
            &full[..len],
            "a truncated frame (len {len}) is never rewritten"
        );
    }
    // From a masqueraded network, what cannot be parsed cannot be translated: dropped.
    let sandbox_frame = tcp6(SANDBOX6, 40000, REMOTE6, 80, true);
    for len in L4..sandbox_frame.len() {
        assert_eq!(
            bpf.run(EGRESS6, &sandbox_frame[..len]).0,
            TC_ACT_SHOT,
            "len {len}"
        );
    }
    let mut cuts = (sandbox_frame.len() - L4) as u64;
    assert_eq!(bpf.counter(counter::DROP_UNTRANSLATED), cuts);
    // Whole frames whose headers lie.
    let set_payload_len = |frame: &[u8], len: u16| {
        let mut f = frame.to_vec();
        f[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&len.to_be_bytes());
        f
    };
    // Seven destination options headers: one more than natd walks; the chain never ends
    // at TCP as far as natd can tell.
    let long_chain = [Ext::DestOpts; 7];
    let liars = [
        (
            set_payload_len(&full, 500),
            set_payload_len(&sandbox_frame, 500),
            "payload length beyond the frame",
        ),
        (
            set_payload_len(&full, 0),
            set_payload_len(&sandbox_frame, 0),
            "payload length 0 without GSO",
        ),
        (
            with_ext(&full, &long_chain),
            with_ext(&sandbox_frame, &long_chain),
            "extension header chain longer than natd walks",
        ),
    ];
    for (inbound, outbound, what) in liars {
        assert_eq!(
            bpf.run(INGRESS6, &inbound),
            (PASS, inbound.clone()),
            "ingress: {what}"
        );
        assert_eq!(bpf.run(EGRESS6, &outbound).0, TC_ACT_SHOT, "egress: {what}");
        cuts += 1;
        assert_eq!(bpf.counter(counter::DROP_UNTRANSLATED), cuts, "egress: {what}");
    }
    assert!(bpf.counter(counter::MALFORMED) > 0);
    assert_eq!(bpf.counter(counter::DNAT_NEW), 0, "nothing was translated");
    assert_eq!(bpf.counter(counter::SNAT_NEW), 0, "nothing was translated");
    assert!(bpf.ct6().is_empty(), "no flow was created");
}

/// A frame whose IP version contradicts its EtherType is malformed for the program of
/// the EtherType's family; from a masqueraded sandbox it must not leave either. (The
/// IPv4 program hands EtherType 0x86dd to the IPv6 one whatever its version nibble says.)
#[test]
fn version_contradicting_the_ethertype_never_leaves_from_a_sandbox() {
    let mut bpf = load(1024);
    // EtherType IPv6, version 4, source fd00:20::2.
    let mut v6_says_4 = tcp6(SANDBOX6, 40000, REMOTE6, 80, true);
    v6_says_4[ETH_HLEN] = 0x45;
    assert_eq!(
        bpf.run(EGRESS, &v6_says_4).0,
        TCX_NEXT,
        "IPv4 program hands it on"
    );
    let (v6_verdict, _) = bpf.run(EGRESS6, &v6_says_4);
    // EtherType IPv4, version 6, source 172.20.0.2.
    let mut v4_says_6 = frames::tcp(SANDBOX, 40000, [203, 0, 113, 9], 80, true);
    v4_says_6[ETH_HLEN] = 0x65;
    let (v4_verdict, _) = bpf.run(EGRESS, &v4_says_6);
    assert_eq!(
        (v6_verdict, v4_verdict),
        (TC_ACT_SHOT, TC_ACT_SHOT),
        "(EtherType IPv6 + version 4 from fd00:20::2, EtherType IPv4 + version 6 from \
         172.20.0.2): PASS means it left the uplink untranslated"
    );
    assert_eq!(bpf.counter(counter::DROP_UNTRANSLATED), 2);
}

#[test]
fn isolation6_drops_by_reason() {
    let mut bpf = load(1024);
    bpf.network(3, [10, 3, 0, 0], 24, [10, 3, 0, 1], net::ICC | net::MASQ);
    bpf.network6(
        3,
        v6([0xfd00, 0x30, 0, 0, 0, 0, 0, 0]),
        64,
        v6([0xfd00, 0x30, 0, 0, 0, 0, 0, 1]),
        true,
    );
    // Outside -> a sandbox's IPv6 address, and -> ::1.
    let direct = tcp6(CLIENT6, 1, SANDBOX6, 80, true);
    assert_eq!(bpf.run(INGRESS6, &direct).0, TC_ACT_SHOT);
    assert_eq!(bpf.counter(counter::DROP_DIRECT_ACCESS), 1);
    assert_eq!(
        bpf.run(INGRESS6, &tcp6(CLIENT6, 1, LOOPBACK6, 80, true)).0,
        TC_ACT_SHOT
    );
    assert_eq!(bpf.run(INGRESS6, &udp6(CLIENT6, 1, LOOPBACK6, 53)).0, TC_ACT_SHOT);
    assert_eq!(bpf.counter(counter::DROP_LOOPBACK_SPOOF), 2);
    // Even a published port's number on the sandbox address is not a way in.
    bpf.publish6(None, 80, 6, SANDBOX6, 80, 7);
    assert_eq!(bpf.run(INGRESS6, &direct).0, TC_ACT_SHOT);
    assert_eq!(bpf.counter(counter::DROP_DIRECT_ACCESS), 2);
    // The host's own address: fine.
    assert_eq!(bpf.run(INGRESS6, &tcp6(CLIENT6, 1, HOST6, 22, true)).0, PASS);
    // Network 2 -> network 3: isolated; -> the outside: fine.
    as_sandbox(&mut bpf);
    let cross = tcp6(SANDBOX6, 1, v6([0xfd00, 0x30, 0, 0, 0, 0, 0, 5]), 80, true);
    assert_eq!(bpf.run(SANDBOX_PROG6, &cross).0, TC_ACT_SHOT);
    assert_eq!(bpf.counter(counter::DROP_CROSS_NETWORK), 1);
    assert_eq!(
        bpf.run(SANDBOX_PROG6, &tcp6(SANDBOX6, 1, REMOTE6, 80, true)).0,
        PASS
    );
    // The sandbox's own ::1 never reaches the host's.
    assert_eq!(
        bpf.run(SANDBOX_PROG6, &tcp6(SANDBOX6, 1, LOOPBACK6, 80, true)).0,
        TC_ACT_SHOT
    );
    assert_eq!(bpf.counter(counter::DROP_LOOPBACK_SPOOF), 3);
    // A sandbox claiming another sandbox's or a host address as its source.
    assert_eq!(
        bpf.run(SANDBOX_PROG6, &tcp6(OTHER_SANDBOX6, 1, REMOTE6, 80, true))
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(
        bpf.run(SANDBOX_PROG6, &tcp6(HOST6, 1, REMOTE6, 80, true)).0,
        TC_ACT_SHOT
    );
    assert_eq!(bpf.counter(counter::DROP_SPOOFED_SOURCE), 2);
    // Same network, icc: fine.
    assert_eq!(
        bpf.run(SANDBOX_PROG6, &udp6(SANDBOX6, 1, OTHER_SANDBOX6, 53)).0,
        PASS
    );
}

#[test]
fn each_family_hands_the_other_on_untouched() {
    let mut bpf = load(1024);
    bpf.publish(None, 8080, 6, SANDBOX, 80, 3);
    bpf.publish6(None, 8080, 6, SANDBOX6, 80, 4);
    let ipv4 = [
        frames::tcp([203, 0, 113, 7], 40000, HOST, 8080, true),
        frames::udp(SANDBOX, 5000, [203, 0, 113, 9], 53),
        frames::icmp_echo(SANDBOX, [203, 0, 113, 9], 7, true),
    ];
    let ipv6 = [
        tcp6(CLIENT6, 40000, HOST6, 8080, true),
        udp6(SANDBOX6, 5000, REMOTE6, 53),
        echo6(SANDBOX6, REMOTE6, 7, true),
    ];
    for (v4_prog, v6_prog) in [
        (INGRESS, INGRESS6),
        (EGRESS, EGRESS6),
        (SANDBOX_PROG, SANDBOX_PROG6),
    ] {
        if v4_prog == SANDBOX_PROG {
            as_sandbox(&mut bpf);
        }
        for frame in &ipv4 {
            assert_eq!(
                bpf.run(v6_prog, frame),
                (TCX_NEXT, frame.clone()),
                "{v6_prog} hands IPv4 on"
            );
        }
        for frame in &ipv6 {
            assert_eq!(
                bpf.run(v4_prog, frame),
                (TCX_NEXT, frame.clone()),
                "{v4_prog} hands IPv6 on"
            );
        }
    }
    // Neither family's program created a flow for the other's frames.
    assert!(bpf.ct().is_empty() && bpf.ct6().is_empty());
    assert_eq!(bpf.counter(counter::MALFORMED), 0);
}

#[test]
fn fast_path6_published_port_flow_is_redirected_into_the_sandbox() {
    let mut bpf = load(1024);
    bpf.fast_path(true);
    bpf.publish6(None, 8080, 6, SANDBOX6, 80, 11);
    let frame = segment6(CLIENT6, 40000, HOST6, 8080, 1000, SYN);
    let (ret, out) = bpf.run(INGRESS6, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT, "the SYN is redirected into the sandbox");
    assert_eq!(inspect6(&out), seen6(CLIENT6, 40000, SANDBOX6, 80));
    assert_eq!(
        out[ETH_HLEN + 7],
        63,
        "the hop limit is decremented as a router would"
    );
    assert_eq!(
        (&out[0..6], &out[6..12]),
        (&SANDBOX_MAC[..], &BRIDGE_MAC[..]),
        "to the sandbox's MAC from its gateway's"
    );
    for i in (L4 + 4..frame.len()).filter(|i| !(L4 + 16..L4 + 18).contains(i)) {
        assert_eq!(out[i], frame[i], "byte {i} beyond the ports changed");
    }
    assert_eq!(bpf.counter(counter::FAST_TO_SANDBOX), 1);
    assert!(
        bpf.ct6().iter().all(|(_, e, _)| e.flags & ct::FAST != 0),
        "both directions on the fast path"
    );
    // The SYN-ACK goes back by redirect to the uplink, marked for its egress program,
    // which lets it through as it is.
    as_sandbox(&mut bpf);
    let reply = segment6(SANDBOX6, 80, CLIENT6, 40000, 5000, syn_ack(1001));
    let (ret, out, mark) = bpf.run_marked(SANDBOX_PROG6, &reply, 0);
    assert_eq!(ret, TC_ACT_REDIRECT, "the SYN-ACK is redirected to the uplink");
    assert_eq!(mark, FASTPATH_MARK);
    assert_eq!(inspect6(&out), seen6(HOST6, 8080, CLIENT6, 40000));
    assert_eq!(out[ETH_HLEN + 7], 63);
    assert_eq!(bpf.counter(counter::FAST_TO_EDGE), 1);
    bpf.as_edge();
    let (ret, passed, mark) = bpf.run_marked(EGRESS6, &out, FASTPATH_MARK);
    assert_eq!(
        (ret, mark),
        (PASS, 0),
        "already translated: the mark is cleared"
    );
    assert_eq!(passed, out);
    // A packet whose hop limit would expire takes the kernel's path (which answers with
    // Time Exceeded), translated all the same.
    let mut last_hop = segment6(CLIENT6, 40000, HOST6, 8080, 1001, ack(5001));
    last_hop[ETH_HLEN + 7] = 1;
    let (ret, out) = bpf.run(INGRESS6, &last_hop);
    assert_eq!(ret, PASS);
    assert_eq!(inspect6(&out), seen6(CLIENT6, 40000, SANDBOX6, 80));
    assert_eq!(out[ETH_HLEN + 7], 1, "the kernel decrements it");
    assert_eq!(bpf.counter(counter::SLOW_TTL), 1);
}

/// The checks themselves: a wrong checksum anywhere, outer or quoted, is caught, so the
/// tests above can fail.
#[test]
fn the_independent_checks_catch_wrong_bytes() {
    use natlab::frames6::checksums_ok6;
    let frame = tcp6(CLIENT6, 40000, HOST6, 8080, true);
    assert_eq!(checksums_ok6(&frame), Ok(()));
    for at in [ETH_HLEN + 8, ETH_HLEN + 39, L4, L4 + 3, L4 + 16, frame.len() - 1] {
        let mut wrong = frame.clone();
        wrong[at] ^= 0x10;
        assert!(
            checksums_ok6(&wrong).is_err(),
            "a changed byte {at} goes unnoticed"
        );
    }
    for frame in [udp6(SANDBOX6, 1, REMOTE6, 2), echo6(SANDBOX6, REMOTE6, 9, true)] {
        assert_eq!(checksums_ok6(&frame), Ok(()));
        let mut wrong = frame.clone();
        wrong[ETH_HLEN + 20] ^= 1;
        assert!(checksums_ok6(&wrong).is_err(), "the pseudo-header counts");
    }
    let mut zero = udp6(SANDBOX6, 1, REMOTE6, 2);
    zero[L4 + 6..L4 + 8].copy_from_slice(&[0, 0]);
    assert!(checksums_ok6(&zero).is_err(), "UDP over IPv6 without a checksum");
    // Extension headers: the checksum is found after them.
    let ext = with_ext(&frame, &[Ext::HopByHop, Ext::DestOpts]);
    assert_eq!(checksums_ok6(&ext), Ok(()));
    // Inside an error: the quoted packet's checksum, then the outer one over it.
    let error = packet_too_big(ROUTER6, SANDBOX6, 1280, &inner_udp6(SANDBOX6, 1, REMOTE6, 2));
    assert!(inspect_error6(&error).quoted_whole);
    let icmp = ip6(&error).l4;
    let mut quoted_port = error.clone();
    quoted_port[icmp + 8 + 40 + 1] ^= 1;
    assert!(
        checksums_ok6(&quoted_port).is_err(),
        "outer checksum covers the quote"
    );
    // Quoted port changed with the outer checksum made right: only the quoted checksum
    // can tell.
    let fixed = refill_icmp_checksum(quoted_port, icmp);
    assert_eq!(checksums_ok6(&fixed), Ok(()));
    assert!(
        std::panic::catch_unwind(|| inspect_error6(&fixed)).is_err(),
        "a wrong quoted checksum goes unnoticed"
    );
}

/// The ICMPv6 checksum of `frame` recomputed from scratch (for the checker's own test).
fn refill_icmp_checksum(mut frame: Vec<u8>, icmp: usize) -> Vec<u8> {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&frame[ETH_HLEN + 8..ETH_HLEN + 40]);
    add(&((frame.len() - icmp) as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    frame[icmp + 2..icmp + 4].copy_from_slice(&[0, 0]);
    add(&frame[icmp..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    frame[icmp + 2..icmp + 4].copy_from_slice(&csum.to_be_bytes());
    frame
}
