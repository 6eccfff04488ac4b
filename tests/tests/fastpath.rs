//! The fast path through BPF_PROG_TEST_RUN: flows that bypass the host are rewritten with
//! direct writes (MACs, TTL, addresses, ports, every checksum recomputed independently)
//! and redirected (verdict TC_ACT_REDIRECT); the packets the kernel must see (TTL about
//! to expire, larger than the MTU, IP options) fall back to its path, translated. New
//! outbound flows use the kernel's route lookup, so those tests build a small topology
//! (`Bpf::route_via_uplink`) in the test's own namespace.
use etherparse::{IpNumber, Ipv4Header, Ipv4Options, PacketBuilder};
use nat_common::{FASTPATH_MARK, counter};
use natlab::bpf::prelude::*;
use natlab::{
    bpf::{BRIDGE_MAC, Bpf, CLIENT, GATEWAY_MAC, HOST, SANDBOX, SANDBOX_MAC, UPLINK_MAC, UPLINK_ROUTED_MAC},
    frames::{DST_MAC, SRC_MAC, SYN, ack, inspect, link, seen, segment, segment_ttl, syn_ack, udp},
};

fn load() -> Bpf {
    natlab::require_root();
    let mut bpf = Bpf::load(1024).expect("natd's eBPF object loads in a private namespace");
    bpf.fast_path(true);
    bpf
}

/// A published port's flow through its handshake, on the fast path: returns the bpf
/// state with the flow established.
fn established_dnat_flow() -> Bpf {
    let mut bpf = load();
    bpf.publish(None, 8080, 6, SANDBOX, 80, 11);
    let (ret, out) = bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1000, SYN));
    assert_eq!(ret, TC_ACT_REDIRECT, "the SYN is redirected into the sandbox");
    assert_eq!(inspect(&out), seen(CLIENT, 40000, SANDBOX, 80));
    assert_eq!(
        link(&out),
        (63, SANDBOX_MAC, BRIDGE_MAC),
        "TTL, sandbox MAC, gateway MAC"
    );
    assert_eq!(bpf.counter(counter::FAST_TO_SANDBOX), 1);
    assert!(
        bpf.ct()
            .iter()
            .all(|(_, e, _)| e.flags & nat_common::ct::FAST != 0)
    );

    bpf.as_sandbox_veth(2, SANDBOX);
    let (ret, out, mark) = bpf.run_marked(
        SANDBOX_PROG,
        &segment(SANDBOX, 80, CLIENT, 40000, 5000, syn_ack(1001)),
        0,
    );
    assert_eq!(ret, TC_ACT_REDIRECT, "the SYN-ACK is redirected to the uplink");
    assert_eq!(mark, FASTPATH_MARK, "marked for the uplink's egress program");
    assert_eq!(inspect(&out), seen(HOST, 8080, CLIENT, 40000));
    assert_eq!(
        link(&out),
        (63, SRC_MAC, UPLINK_MAC),
        "back to the MAC the client's SYN came from, from the uplink's"
    );
    assert_eq!(bpf.counter(counter::FAST_TO_EDGE), 1);

    bpf.as_edge();
    let (ret, _) = bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1001, ack(5001)));
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(bpf.counter(counter::CT_PROMOTED), 1);
    bpf
}

#[test]
fn a_published_port_flow_bypasses_the_host_both_ways() {
    let mut bpf = established_dnat_flow();
    let (ret, out) = bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1001, ack(5001)));
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(inspect(&out), seen(CLIENT, 40000, SANDBOX, 80));
    assert_eq!(bpf.counter(counter::FAST_TO_SANDBOX), 3);
    assert_eq!(bpf.counter(counter::DNAT_ESTABLISHED), 2);
}

#[test]
fn packets_the_kernel_must_answer_take_its_path_translated() {
    let mut bpf = established_dnat_flow();
    // TTL 1: the kernel sends time-exceeded (traceroute through a published port).
    let frame = segment_ttl(CLIENT, 40000, HOST, 8080, 1001, ack(5001), 1);
    let (ret, out) = bpf.run(INGRESS, &frame);
    assert_eq!(ret, PASS);
    assert_eq!(inspect(&out), seen(CLIENT, 40000, SANDBOX, 80));
    assert_eq!(
        link(&out),
        (1, DST_MAC, SRC_MAC),
        "TTL and MACs are the kernel's to change"
    );
    assert_eq!(bpf.counter(counter::SLOW_TTL), 1);

    // Larger than the sandbox's MTU and not GSO: the kernel sends fragmentation-needed.
    let mut big = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(CLIENT, HOST, 64)
        .tcp(40000, 8080, 1001, 64240)
        .ack(5001)
        .write(&mut big, &[0x5a; 1600])
        .unwrap();
    let (ret, out) = bpf.run(INGRESS, &big);
    assert_eq!(ret, PASS);
    assert_eq!(inspect(&out), seen(CLIENT, 40000, SANDBOX, 80));
    assert_eq!(bpf.counter(counter::SLOW_MTU), 1);

    // A GSO packet: judged by its segments, as the kernel's forwarding does.
    let mut gso = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(CLIENT, HOST, 64)
        .tcp(40000, 8080, 1001, 64240)
        .ack(5001)
        .write(&mut gso, &[0x5a; 2920])
        .unwrap();
    let (ret, out, _) = bpf.run_skb(INGRESS, &gso, 0, 1460);
    assert_eq!(
        ret, TC_ACT_REDIRECT,
        "segments of 20 + 20 + 1460 bytes fit an MTU of 1500"
    );
    assert_eq!(inspect(&out), seen(CLIENT, 40000, SANDBOX, 80));
    let (ret, _, _) = bpf.run_skb(INGRESS, &gso, 0, 1461);
    assert_eq!(ret, PASS, "segments of 1501 bytes do not");
    assert_eq!(bpf.counter(counter::SLOW_MTU), 2);

    // IP options: not a header the direct rewrite handles.
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT, HOST).unwrap();
    ip.options = Ipv4Options::try_from(&[7u8, 7, 4, 0, 0, 0, 0, 0][..]).unwrap();
    let mut opts = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(40000, 8080, 1001, 64240)
        .ack(5001)
        .write(&mut opts, b"opts")
        .unwrap();
    let (ret, out) = bpf.run(INGRESS, &opts);
    assert_eq!(ret, PASS);
    assert_eq!(inspect(&out), seen(CLIENT, 40000, SANDBOX, 80));
    assert_eq!(bpf.counter(counter::SLOW_HEADER), 1);
    assert_eq!(
        bpf.counter(counter::FAST_TO_SANDBOX),
        3,
        "the handshake and the GSO packet that fits were redirected"
    );
}

#[test]
fn with_the_fast_path_off_flows_take_the_kernel_path() {
    let mut bpf = load();
    bpf.fast_path(false);
    bpf.publish(None, 8080, 6, SANDBOX, 80, 11);
    let (ret, out) = bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1000, SYN));
    assert_eq!(ret, PASS);
    assert_eq!(inspect(&out), seen(CLIENT, 40000, SANDBOX, 80));
    assert_eq!(link(&out), (64, DST_MAC, SRC_MAC));
    assert!(
        bpf.ct()
            .iter()
            .all(|(_, e, _)| e.flags & nat_common::ct::FAST == 0)
    );
    assert_eq!(bpf.counter(counter::FAST_TO_SANDBOX), 0);
}

#[test]
fn the_uplink_egress_passes_fast_path_packets_and_clears_their_mark() {
    let mut bpf = load();
    // A sandbox's segment of no flow: never leaves untranslated...
    let frame = segment(SANDBOX, 40000, REMOTE, 80, 7, ack(9));
    let (ret, _, _) = bpf.run_marked(EGRESS, &frame, 0);
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(bpf.counter(counter::DROP_TCP_NO_FLOW), 1);
    // ...unless a sandbox program translated and redirected it (its mark says so).
    let translated = segment(HOST, 61000, REMOTE, 80, 7, ack(9));
    let (ret, out, mark) = bpf.run_marked(EGRESS, &translated, FASTPATH_MARK);
    assert_eq!(ret, PASS);
    assert_eq!(out, translated, "untouched");
    assert_eq!(mark, 0, "the mark does not leave the host");
}

#[test]
fn a_new_outbound_flow_bypasses_the_host_by_its_route() {
    let mut bpf = load();
    bpf.route_via_uplink(true);
    let (ret, out, mark) = bpf.run_marked(SANDBOX_PROG, &segment(SANDBOX, 5000, REMOTE, 443, 1000, SYN), 0);
    assert_eq!(
        ret, TC_ACT_REDIRECT,
        "redirected to the uplink by the sandbox program"
    );
    assert_eq!(mark, FASTPATH_MARK);
    let out_seen = inspect(&out);
    assert_eq!(
        out_seen.src,
        std::net::Ipv4Addr::from(HOST),
        "masqueraded to the uplink's address"
    );
    assert_eq!(out_seen.sport, 5000, "the sandbox's port, preserved");
    assert_eq!(
        link(&out),
        (63, GATEWAY_MAC, UPLINK_ROUTED_MAC),
        "to the gateway's MAC from the uplink's"
    );
    assert_eq!(bpf.counter(counter::FAST_TO_EDGE), 1);
    assert_eq!(bpf.counter(counter::SNAT_NEW), 1);

    // The reply goes straight into the sandbox.
    let nat_port = out_seen.sport;
    bpf.as_edge();
    let (ret, out) = bpf.run(
        INGRESS,
        &segment(REMOTE, 443, HOST, nat_port, 9000, syn_ack(1001)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(inspect(&out), seen(REMOTE, 443, SANDBOX, 5000));
    assert_eq!(
        link(&out),
        (63, SRC_MAC, DST_MAC),
        "to the sandbox's MAC from its gateway's"
    );
    assert_eq!(bpf.counter(counter::FAST_TO_SANDBOX), 1);
}

#[test]
fn an_unresolved_next_hop_is_left_to_the_kernels_neighbour_lookup() {
    let mut bpf = load();
    bpf.route_via_uplink(false);
    let frame = udp(SANDBOX, 5000, REMOTE, 53);
    let (ret, out, mark) = bpf.run_marked(SANDBOX_PROG, &frame, 0);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(mark, FASTPATH_MARK);
    assert_eq!(inspect(&out).src, std::net::Ipv4Addr::from(HOST));
    assert_eq!(
        link(&out),
        (63, DST_MAC, SRC_MAC),
        "MACs are bpf_redirect_neigh's to fill in"
    );
    assert_eq!(bpf.counter(counter::FAST_TO_EDGE_NEIGH), 1);
}

#[test]
fn flows_not_routed_to_an_uplink_are_left_to_the_kernel() {
    let mut bpf = load();
    bpf.route_via_uplink(true);
    let frame = segment(SANDBOX, 5000, [10, 99, 0, 7], 443, 1000, SYN);
    // Routed out of an interface natd has no program on (one that appeared an instant
    // ago): it would leave with the sandbox's address, so it does not leave at all.
    let (ret, _, _) = bpf.run_marked(SANDBOX_PROG, &frame, 0);
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(bpf.counter(counter::DROP_UNKNOWN_EDGE), 1);
    // Once it is an edge without a link layer (no fast path there), the kernel routes the
    // flow and the edge's egress program masquerades it.
    let other = nix::net::if_::if_nametoindex("other0").expect("other0");
    bpf.as_edge_l3(other, "other0");
    let (ret, out, mark) = bpf.run_marked(SANDBOX_PROG, &frame, 0);
    assert_eq!((ret, mark), (PASS, 0));
    assert_eq!(out, frame, "untouched: the edge's egress decides");
    assert_eq!(bpf.counter(counter::FIB_NOT_EDGE), 1);
    assert!(bpf.ct().is_empty());
    // TTL 1 never starts a fast flow either: the kernel answers it.
    let frame = segment_ttl(SANDBOX, 5001, REMOTE, 443, 1000, SYN, 1);
    assert_eq!(bpf.run_marked(SANDBOX_PROG, &frame, 0).0, PASS);
    assert!(bpf.ct().is_empty());
}

#[test]
fn switching_the_fast_path_off_moves_flows_that_bypassed_the_host_to_the_kernel_path() {
    let mut bpf = established_dnat_flow();
    // natd switches it off when a firewall appears in its namespace.
    bpf.fast_path(false);
    let (ret, out) = bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1001, ack(5001)));
    assert_eq!(ret, PASS, "the firewall sees the packet");
    assert_eq!(inspect(&out), seen(CLIENT, 40000, SANDBOX, 80));
    assert_eq!(link(&out), (64, DST_MAC, SRC_MAC));
    bpf.fast_path(true);
    assert_eq!(
        bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1001, ack(5001)))
            .0,
        TC_ACT_REDIRECT,
        "and back when it goes"
    );
}

/// The benchmark's warm program rows measure what they are named after: every path's
/// verdict and counters are checked run by run (`natlab::warm`).
#[test]
fn the_benchmarks_warm_paths_take_the_paths_they_are_named_after() {
    natlab::require_root();
    let costs = natlab::warm::paths(&[1, 100], 2000, 2).expect("every warm path behaves as named");
    // Eleven paths (snat_new_mapped among them: new flows reusing one mapping; the miss
    // with the port filter off) at two sizes.
    assert_eq!(costs.len(), 22);
    assert!(costs.iter().all(|(_, c)| c.ns.len() == 2));
}

/// The filled-table rows: the flows are made and established by the programs (the table
/// holds two entries per flow, checked), and every run on a randomly drawn one of them
/// takes the fast path (`natlab::warm::filled` checks each run's verdict and counter).
#[test]
fn the_benchmarks_filled_table_rows_find_a_random_established_flow() {
    natlab::require_root();
    let costs = natlab::warm::filled(&[1, 70_000], 5000, 2).expect("every drawn flow is found established");
    assert_eq!(costs.len(), 4, "dnat_forward and dnat_reply at two fills");
    assert!(costs.iter().all(|(_, c)| c.ns.len() == 2));
    // The draw is random: 5,000 draws among 70,000 flows reach about 4,830 different ones
    // (a fixed or barely varying draw would reach one or a few). The control: one flow
    // to draw from is reached, and only it.
    let reached = natlab::warm::drawn_flows(70_000, 5000).expect("every drawn flow is found established");
    assert!((4000..=5000).contains(&reached), "5000 random draws among 70000 flows reached {reached}");
    assert_eq!(natlab::warm::drawn_flows(1, 5000).expect("one flow"), 1);
}

/// The IPv6 rows and the hand-on rows take the paths they are named after (each run's
/// verdict and counter checked by `natlab::warm::paths6`).
#[test]
fn the_benchmarks_ipv6_rows_take_the_paths_they_are_named_after() {
    natlab::require_root();
    let costs = natlab::warm::paths6(2000, 2).expect("every IPv6 warm path behaves as named");
    assert_eq!(costs.len(), 7);
    assert!(costs.iter().all(|(_, _, c)| c.ns.len() == 2));
}
