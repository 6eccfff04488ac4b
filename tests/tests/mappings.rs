//! Masquerade mappings as the programs write them, checked through BPF_PROG_TEST_RUN
//! against the terms of RFC 4787 (UDP), RFC 5382 (TCP) and RFC 5508 (ICMP): mapping
//! behaviour (REQ-1), port assignment (REQ-3, REQ-3a, REQ-4), filtering (section 5,
//! REQ-8) and hairpinning (REQ-9, REQ-9a). Frames built with etherparse, every output
//! parsed again with its checksums recomputed (`natlab::frames`). Each test runs in a
//! fresh network namespace with its own pin directory; natd's masquerade range there is
//! 61000-61009.
use natlab::bpf::prelude::*;

use nat_common::{PROTO_UDP, counter, names::program::{EDGE_EGRESS6, EDGE_INGRESS6}, net};
use natlab::{
    bpf::{Bpf, CLIENT, HOST, HOST6, SANDBOX, SANDBOX_VETH},
    frames::{SYN, ack, icmp_echo, inspect, seen, segment, syn_ack, tcp, udp},
    frames6::{GATEWAY6, NET6, SANDBOX6, inspect6, seen6, udp6, v6},
};

const OTHER_SANDBOX: [u8; 4] = [172, 20, 0, 3];
const THIRD_SANDBOX: [u8; 4] = [172, 20, 0, 4];
const GATEWAY: [u8; 4] = [172, 20, 0, 1];
/// A second server, on another address (RFC 5780's "alternate address").
const REMOTE_2: [u8; 4] = [203, 0, 113, 10];
const REMOTE6: [u8; 16] = v6([0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 9]);
const CLIENT6: [u8; 16] = v6([0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 7]);

/// natd's object, network 2 (172.20.0.0/24) masqueraded with `flags` on top of
/// `ICC | MASQ`.
fn load(flags: u32) -> Bpf {
    natlab::require_root();
    let mut bpf = Bpf::load(1024).expect("natd's eBPF object loads in a private namespace");
    bpf.network(2, [172, 20, 0, 0], 24, GATEWAY, net::ICC | net::MASQ | flags);
    bpf
}

/// RFC 4787 REQ-1 (and RFC 5382 REQ-1): the same internal address and port leave with
/// the same external address and port whatever the destination, for UDP, TCP and ICMP
/// echo; REQ-3 / Linux: the port is the sandbox's own when it is free.
#[test]
fn mappings_are_endpoint_independent_and_keep_the_sandboxs_port() {
    let mut bpf = load(0);
    let to_first = inspect(&bpf.run(EGRESS, &udp(SANDBOX, 5000, REMOTE, 3478)).1);
    let to_alternate_port = inspect(&bpf.run(EGRESS, &udp(SANDBOX, 5000, REMOTE, 3479)).1);
    let to_alternate_address = inspect(&bpf.run(EGRESS, &udp(SANDBOX, 5000, REMOTE_2, 3478)).1);
    for (out, dst, dport) in [
        (to_first, REMOTE, 3478),
        (to_alternate_port, REMOTE, 3479),
        (to_alternate_address, REMOTE_2, 3478),
    ] {
        assert_eq!(out, seen(HOST, 5000, dst, dport), "one mapping, port preserved");
    }
    assert_eq!(bpf.counter(counter::SNAT_MAPPING_NEW), 1);
    assert_eq!(bpf.counter(counter::SNAT_MAPPING_REUSED), 2);
    assert_eq!(bpf.counter(counter::SNAT_PORT_PRESERVED), 1);
    // TCP: a mapping of its own protocol, the same behaviour.
    let a = inspect(&bpf.run(EGRESS, &tcp(SANDBOX, 40000, REMOTE, 443, true)).1);
    let b = inspect(&bpf.run(EGRESS, &tcp(SANDBOX, 40000, REMOTE_2, 80, true)).1);
    assert_eq!((a.sport, b.sport), (40000, 40000));
    // ICMP echo (RFC 5508 section 3.1): the identifier is the port.
    let a = inspect(&bpf.run(EGRESS, &icmp_echo(SANDBOX, REMOTE, 0x4242, true)).1);
    let b = inspect(&bpf.run(EGRESS, &icmp_echo(SANDBOX, REMOTE_2, 0x4242, true)).1);
    assert_eq!((a.sport, b.sport), (0x4242, 0x4242));
}

/// REQ-3a and REQ-4: a port that is taken gives way to one of the same class (below or
/// above 1024) and the same parity. Under the default filtering a port serves each
/// destination once, as Linux's MASQUERADE shares it.
#[test]
fn a_taken_port_gives_way_to_one_of_its_class_and_parity() {
    let mut bpf = load(0);
    bpf.run(EGRESS, &udp(SANDBOX, 5000, REMOTE, 3478));
    // Another sandbox, same port, same destination: another port, from natd's range,
    // even like 5000.
    let other = inspect(&bpf.run(EGRESS, &udp(OTHER_SANDBOX, 5000, REMOTE, 3478)).1);
    assert!((61000..=61009).contains(&other.sport), "{other:?}");
    assert_eq!(other.sport % 2, 0, "parity kept: {other:?}");
    // To another destination 5000 is free: shared, as Linux does.
    let shared = inspect(&bpf.run(EGRESS, &udp([172, 20, 0, 4], 5000, REMOTE_2, 3478)).1);
    assert_eq!(shared.sport, 5000);
    // A privileged port stays privileged, and odd.
    bpf.run(EGRESS, &udp(SANDBOX, 123, REMOTE, 123));
    let ntp = inspect(&bpf.run(EGRESS, &udp(OTHER_SANDBOX, 123, REMOTE, 123)).1);
    assert!(ntp.sport < 1024 && ntp.sport != 123 && ntp.sport % 2 == 1, "{ntp:?}");
}

/// `--masquerade-ports random` (RFC 6056): the port is random, the mapping still
/// endpoint-independent.
#[test]
fn random_ports_are_still_endpoint_independent() {
    let mut bpf = load(net::PORTS_RANDOM);
    let a = inspect(&bpf.run(EGRESS, &udp(SANDBOX, 5000, REMOTE, 3478)).1);
    let b = inspect(&bpf.run(EGRESS, &udp(SANDBOX, 5000, REMOTE_2, 3479)).1);
    assert!((61000..=61009).contains(&a.sport), "{a:?}");
    assert_eq!(a.sport, b.sport);
    assert_eq!(bpf.counter(counter::SNAT_PORT_PRESERVED), 0);
}

/// Endpoint-independent filtering holds each external port for one sandbox (inbound
/// packets to it must lead somewhere): when natd's range is used up, the next mapping is
/// refused and counted, never sent out untranslated.
#[test]
fn an_exhausted_pool_is_counted() {
    let mut bpf = load(net::PORTS_RANDOM | net::FILTER_ENDPOINT);
    for port in 0..10u16 {
        let (ret, out) = bpf.run(EGRESS, &udp(SANDBOX, 7000 + port, REMOTE, 3478 + port));
        assert_eq!(ret, PASS);
        assert!((61000..=61009).contains(&inspect(&out).sport));
    }
    let (ret, _) = bpf.run(EGRESS, &udp(SANDBOX, 7999, REMOTE_2, 1));
    assert_eq!(ret, TC_ACT_SHOT, "no port left for a new mapping");
    assert_eq!(bpf.counter(counter::DROP_NO_PORT), 1);
    // An existing mapping still reaches new destinations.
    let (ret, out) = bpf.run(EGRESS, &udp(SANDBOX, 7000, REMOTE_2, 2));
    assert_eq!(ret, PASS);
    assert!((61000..=61009).contains(&inspect(&out).sport));
}

/// RFC 4787 section 5: with the default (address- and port-dependent) filtering only the
/// address and port a mapping sent to get in; endpoint-independent filtering admits
/// anyone to the mapping's port, and nothing more: not other ports, not the sandbox's
/// own address, and a port published later is the published port's.
#[test]
fn filtering_admits_what_its_kind_says_and_nothing_past_it() {
    // Default: only the reply.
    let mut bpf = load(0);
    bpf.run(EGRESS, &udp(SANDBOX, 5000, REMOTE, 3478));
    let (_, out) = bpf.run(INGRESS, &udp(REMOTE, 3478, HOST, 5000));
    assert_eq!(inspect(&out), seen(REMOTE, 3478, SANDBOX, 5000), "the reply is let in");
    let probe = udp(REMOTE, 3479, HOST, 5000);
    assert_eq!(bpf.run(INGRESS, &probe), (PASS, probe.clone()), "another port of the address is not (left to the host)");
    assert_eq!(bpf.counter(counter::INBOUND_FILTER_ADMITTED), 0);

    // Endpoint-independent.
    let mut bpf = load(net::FILTER_ENDPOINT);
    bpf.run(EGRESS, &udp(SANDBOX, 5000, REMOTE, 3478));
    let (_, out) = bpf.run(INGRESS, &udp(CLIENT, 9999, HOST, 5000));
    assert_eq!(inspect(&out), seen(CLIENT, 9999, SANDBOX, 5000), "anyone reaches the mapping");
    // The sandbox's answer leaves from the mapping.
    bpf.as_sandbox_veth(2, SANDBOX);
    let (_, out) = bpf.run(SANDBOX_PROG, &udp(SANDBOX, 5000, CLIENT, 9999));
    assert_eq!(inspect(&out), seen(HOST, 5000, CLIENT, 9999));
    bpf.as_edge();
    assert_eq!(bpf.counter(counter::INBOUND_FILTER_ADMITTED), 1);
    // Not another port of the host (left to the host: untouched).
    let probe = udp(CLIENT, 9999, HOST, 5001);
    assert_eq!(bpf.run(INGRESS, &probe), (PASS, probe.clone()));
    // Not the sandbox's own address (the direct-access drop stands).
    assert_eq!(bpf.run(INGRESS, &udp(CLIENT, 9999, SANDBOX, 5000)).0, TC_ACT_SHOT);
    // TCP: a mapping of UDP admits no TCP.
    let probe = tcp(CLIENT, 9999, HOST, 5000, true);
    assert_eq!(bpf.run(INGRESS, &probe), (PASS, probe.clone()));
    // A port published after the mapping was made is the published port's.
    bpf.publish(None, 5000, PROTO_UDP, OTHER_SANDBOX, 53, 7);
    let (_, out) = bpf.run(INGRESS, &udp([203, 0, 113, 50], 1, HOST, 5000));
    assert_eq!(inspect(&out), seen([203, 0, 113, 50], 1, OTHER_SANDBOX, 53));
}

/// Address-dependent filtering: any port of an address the mapping sent to, no other
/// address.
#[test]
fn address_dependent_filtering_admits_the_addresses_sent_to() {
    let mut bpf = load(net::FILTER_ADDRESS);
    bpf.run(EGRESS, &udp(SANDBOX, 5000, REMOTE, 3478));
    let (_, out) = bpf.run(INGRESS, &udp(REMOTE, 3479, HOST, 5000));
    assert_eq!(inspect(&out), seen(REMOTE, 3479, SANDBOX, 5000), "another port of the address");
    let probe = udp(REMOTE_2, 3478, HOST, 5000);
    assert_eq!(bpf.run(INGRESS, &probe), (PASS, probe.clone()), "another address is not admitted");
    assert_eq!(bpf.counter(counter::INBOUND_FILTER_ADMITTED), 1);
}

/// RFC 4787 REQ-9 and REQ-9a (RFC 5382 REQ-8): a sandbox reaches another sandbox's
/// mapping through the host's external address, and the owner sees the sender's
/// external address and port; the owner's answer goes back the same way. Under the
/// default filtering an unsolicited hairpinned packet is filtered like any other.
#[test]
fn hairpinning_shows_the_senders_external_address() {
    let mut bpf = load(net::FILTER_ENDPOINT);
    bpf.endpoint(OTHER_SANDBOX, SANDBOX_VETH, 2);
    // The owner's mapping: 172.20.0.2:5000 is HOST:5000.
    bpf.run(EGRESS, &udp(SANDBOX, 5000, REMOTE, 3478));
    // The peer's mapping: 172.20.0.3:6000 is HOST:6000.
    bpf.run(EGRESS, &udp(OTHER_SANDBOX, 6000, REMOTE, 3478));
    bpf.as_sandbox_veth(2, OTHER_SANDBOX);
    let (ret, out) = bpf.run(SANDBOX_PROG, &udp(OTHER_SANDBOX, 6000, HOST, 5000));
    assert_eq!(ret, PASS);
    assert_eq!(inspect(&out), seen(HOST, 6000, SANDBOX, 5000), "REQ-9a: external source address and port");
    bpf.as_sandbox_veth(2, SANDBOX);
    let (_, out) = bpf.run(SANDBOX_PROG, &udp(SANDBOX, 5000, HOST, 6000));
    assert_eq!(inspect(&out), seen(HOST, 5000, OTHER_SANDBOX, 6000));
    assert_eq!(bpf.counter(counter::HAIRPIN_MAPPING_NEW), 1);

    // Default filtering: the same probe is not let through to the owner (left to the
    // host, which has no socket there), the control above being let through.
    let mut bpf = load(0);
    bpf.endpoint(OTHER_SANDBOX, SANDBOX_VETH, 2);
    bpf.run(EGRESS, &udp(SANDBOX, 5000, REMOTE, 3478));
    bpf.as_sandbox_veth(2, OTHER_SANDBOX);
    let probe = udp(OTHER_SANDBOX, 6000, HOST, 5000);
    assert_eq!(bpf.run(SANDBOX_PROG, &probe), (PASS, probe.clone()), "filtered: left to the host untranslated");
    assert_eq!(bpf.counter(counter::HAIRPIN_MAPPING_NEW), 0);
}

/// Two sandboxes of one host meeting through each other's mappings under the default
/// filtering (address and port dependent, ports shared per destination), as ICE does
/// through an outside NAT: the first hairpinned packet is refused (left to the host,
/// untranslated) but recorded as its sender's punch; the other side's packet to the
/// punching mapping is its answer and passes, translated both ways (REQ-9a), and the flow
/// carries both directions from then on. A packet from a mapping the punch was not sent
/// to (another port of the same sandbox) is still refused, and so is one from a third
/// sandbox whose mapping shares the punched-to port: only the first mapping on a port
/// speaks for it, answering or punching.
#[test]
fn hairpin_punches_let_default_filtered_mappings_meet() {
    let mut bpf = load(0);
    bpf.endpoint(OTHER_SANDBOX, SANDBOX_VETH, 2);
    // Their mappings, learnt from a server outside: HOST:5000, HOST:6000 and HOST:6002.
    bpf.run(EGRESS, &udp(SANDBOX, 5000, REMOTE, 3478));
    bpf.run(EGRESS, &udp(OTHER_SANDBOX, 6000, REMOTE, 3478));
    bpf.run(EGRESS, &udp(OTHER_SANDBOX, 6002, REMOTE, 3478));
    bpf.as_sandbox_veth(2, SANDBOX);
    let punch = udp(SANDBOX, 5000, HOST, 6000);
    assert_eq!(bpf.run(SANDBOX_PROG, &punch), (PASS, punch.clone()), "refused: left to the host");
    assert_eq!(bpf.punches(), [((5000, 6000), (SANDBOX, 5000))], "recorded as her punch");
    bpf.as_sandbox_veth(2, OTHER_SANDBOX);
    let elsewhere = udp(OTHER_SANDBOX, 6002, HOST, 5000);
    assert_eq!(bpf.run(SANDBOX_PROG, &elsewhere), (PASS, elsewhere.clone()), "not the mapping punched to");
    // A third sandbox whose mapping shares the punched-to port (ports are shared per
    // destination under this filtering) cannot take the answer's place.
    bpf.endpoint(THIRD_SANDBOX, SANDBOX_VETH, 2);
    assert_eq!(inspect(&bpf.run(EGRESS, &udp(THIRD_SANDBOX, 6000, REMOTE_2, 3478)).1).sport, 6000, "shares 6000");
    bpf.as_sandbox_veth(2, THIRD_SANDBOX);
    let usurper = udp(THIRD_SANDBOX, 6000, HOST, 5000);
    assert_eq!(bpf.run(SANDBOX_PROG, &usurper), (PASS, usurper.clone()), "not the first mapping on 6000");
    bpf.as_sandbox_veth(2, SANDBOX);
    assert_eq!(bpf.run(SANDBOX_PROG, &punch), (PASS, punch.clone()), "nor does its packet punch for 6000");
    assert_eq!(bpf.counter(counter::HAIRPIN_MAPPING_NEW), 0);
    bpf.as_sandbox_veth(2, OTHER_SANDBOX);
    let (ret, out) = bpf.run(SANDBOX_PROG, &udp(OTHER_SANDBOX, 6000, HOST, 5000));
    assert_eq!(ret, PASS);
    assert_eq!(inspect(&out), seen(HOST, 6000, SANDBOX, 5000), "the answer to the punch passes");
    assert_eq!(bpf.counter(counter::HAIRPIN_MAPPING_NEW), 1);
    let mut left = bpf.punches();
    left.sort();
    assert_eq!(
        left,
        [((6002, 5000), (OTHER_SANDBOX, 6002))],
        "the answered punch is spent"
    );
    bpf.as_sandbox_veth(2, SANDBOX);
    let (_, out) = bpf.run(SANDBOX_PROG, &punch);
    assert_eq!(inspect(&out), seen(HOST, 5000, OTHER_SANDBOX, 6000), "and the punching side's packets too");
}

/// REQ-9a for published ports, chosen per network (`natd.nat.hairpin-source=external`,
/// `net::HAIRPIN_EXTERNAL`): the target sees the sender's external address and the port
/// of its mapping (random here, so it is the mapping and not a kept port), its answer
/// goes back from the published port; an unpublish ends the flow. Without the flag
/// (Docker's behaviour, the control) the target sees the sender's own address.
#[test]
fn hairpinning_to_a_published_port_can_show_the_external_source() {
    let mut bpf = load(net::HAIRPIN_EXTERNAL | net::PORTS_RANDOM);
    bpf.endpoint(OTHER_SANDBOX, SANDBOX_VETH, 2);
    bpf.publish(None, 8080, PROTO_UDP, SANDBOX, 80, 11);
    let mapping = inspect(&bpf.run(EGRESS, &udp(OTHER_SANDBOX, 6000, REMOTE, 3478)).1).sport;
    assert_ne!(mapping, 6000, "a random port");
    bpf.as_sandbox_veth(2, OTHER_SANDBOX);
    let (ret, out) = bpf.run(SANDBOX_PROG, &udp(OTHER_SANDBOX, 6000, HOST, 8080));
    assert_eq!(ret, PASS);
    assert_eq!(inspect(&out), seen(HOST, mapping, SANDBOX, 80), "REQ-9a: the sender's mapping");
    bpf.as_sandbox_veth(2, SANDBOX);
    let (_, out) = bpf.run(SANDBOX_PROG, &udp(SANDBOX, 80, HOST, mapping));
    assert_eq!(inspect(&out), seen(HOST, 8080, OTHER_SANDBOX, 6000), "the answer, from the published port");
    assert_eq!(bpf.counter(counter::HAIRPIN_NEW), 1);
    assert_eq!(bpf.counter(counter::SNAT_MAPPING_REUSED), 1, "the mapping the remote server saw");
    bpf.unpublish(None, 8080, PROTO_UDP);
    let answer = udp(SANDBOX, 80, HOST, mapping);
    assert_eq!(bpf.run(SANDBOX_PROG, &answer), (PASS, answer.clone()), "no longer translated after the unpublish");

    let mut bpf = load(0);
    bpf.endpoint(OTHER_SANDBOX, SANDBOX_VETH, 2);
    bpf.publish(None, 8080, PROTO_UDP, SANDBOX, 80, 11);
    bpf.as_sandbox_veth(2, OTHER_SANDBOX);
    let (_, out) = bpf.run(SANDBOX_PROG, &udp(OTHER_SANDBOX, 6000, HOST, 8080));
    assert_eq!(inspect(&out), seen(OTHER_SANDBOX, 6000, SANDBOX, 80), "Docker's: the sender's own address");
}

/// NAT66 behaves the same: endpoint-independent mapping with the port kept, and
/// endpoint-independent filtering when the network asks for it.
#[test]
fn nat66_mappings_and_filtering() {
    natlab::require_root();
    let mut bpf = Bpf::load(1024).expect("natd's eBPF object loads in a private namespace");
    bpf.network(2, [172, 20, 0, 0], 24, GATEWAY, net::ICC | net::MASQ | net::FILTER_ENDPOINT);
    bpf.local6(HOST6);
    bpf.network6(2, NET6, 64, GATEWAY6, true);
    bpf.endpoint6(SANDBOX6, SANDBOX_VETH, 2);
    let a = inspect6(&bpf.run(EDGE_EGRESS6, &udp6(SANDBOX6, 5000, REMOTE6, 3478)).1);
    let b = inspect6(&bpf.run(EDGE_EGRESS6, &udp6(SANDBOX6, 5000, CLIENT6, 3479)).1);
    assert_eq!(a, seen6(HOST6, 5000, REMOTE6, 3478));
    assert_eq!(b, seen6(HOST6, 5000, CLIENT6, 3479), "one mapping for both destinations");
    let stranger = v6([0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 0x50]);
    let (_, out) = bpf.run(EDGE_INGRESS6, &udp6(stranger, 1, HOST6, 5000));
    assert_eq!(inspect6(&out), seen6(stranger, 1, SANDBOX6, 5000), "endpoint-independent filtering");
    let probe = udp6(stranger, 1, HOST6, 5001);
    assert_eq!(bpf.run(EDGE_INGRESS6, &probe), (PASS, probe.clone()), "no mapping there");
}

/// RFC 5382 (TCP): an endpoint-independent filter admits a SYN to the mapping's port
/// (what TCP hole punching and simultaneous open need), the answer leaves from the
/// mapping, and its admission is counted once; a SYN-less segment starts nothing.
#[test]
fn endpoint_independent_filtering_admits_tcp_syns() {
    let mut bpf = load(net::FILTER_ENDPOINT);
    bpf.run(EGRESS, &tcp(SANDBOX, 40000, REMOTE, 443, true));
    let stray = tcp(CLIENT, 7000, HOST, 40000, false);
    assert_eq!(bpf.run(INGRESS, &stray), (PASS, stray.clone()), "no SYN: no new flow");
    let (ret, out) = bpf.run(INGRESS, &tcp(CLIENT, 7000, HOST, 40000, true));
    assert_eq!(ret, PASS);
    assert_eq!(inspect(&out), seen(CLIENT, 7000, SANDBOX, 40000));
    bpf.as_sandbox_veth(2, SANDBOX);
    let (_, out) = bpf.run(SANDBOX_PROG, &tcp(SANDBOX, 40000, CLIENT, 7000, false));
    assert_eq!(inspect(&out), seen(HOST, 40000, CLIENT, 7000));
    assert_eq!(bpf.counter(counter::INBOUND_FILTER_ADMITTED), 1);
}

/// RFC 5382 REQ-2: TCP simultaneous open through a mapping, as a TCP hole punch makes it:
/// the sandbox's SYN leaves, the peer's own SYN comes back on the mapping (let through,
/// not invalid), the sandbox answers it with a SYN-ACK that acknowledges it, and that
/// completes the handshake (the flow is established). A SYN-ACK acknowledging something
/// else does not (the control).
#[test]
fn tcp_simultaneous_open_through_a_mapping() {
    for (acknowledged, established) in [(9001, true), (4242, false)] {
        let mut bpf = load(0);
        bpf.run(EGRESS, &segment(SANDBOX, 40000, REMOTE, 50001, 5000, SYN));
        let (ret, out) = bpf.run(INGRESS, &segment(REMOTE, 50001, HOST, 40000, 9000, SYN));
        assert_eq!((ret, inspect(&out)), (PASS, seen(REMOTE, 50001, SANDBOX, 40000)), "the peer's SYN");
        assert_eq!(bpf.counter(counter::TCP_INVALID), 0, "a SYN answering a SYN is plausible");
        let (_, out) = bpf.run(EGRESS, &segment(SANDBOX, 40000, REMOTE, 50001, 5000, syn_ack(acknowledged)));
        assert_eq!(inspect(&out), seen(HOST, 40000, REMOTE, 50001));
        let flows = bpf.ct();
        assert_eq!(
            flows.iter().all(|(_, _, e)| *e),
            established,
            "SYN-ACK acknowledging {acknowledged}: {flows:?}"
        );
        // The peer's ACK and data reach the sandbox either way (translated).
        let (ret, out) = bpf.run(INGRESS, &segment(REMOTE, 50001, HOST, 40000, 9001, ack(5001)));
        assert_eq!((ret, inspect(&out)), (PASS, seen(REMOTE, 50001, SANDBOX, 40000)));
    }
}

/// RFC 5382 REQ-4: an unsolicited SYN to a mapping's port (one the default filtering does
/// not admit) is not answered (dropped, counted), so the host's RST cannot end a TCP hole
/// punch whose own SYN is about to leave; the same SYN to a port no mapping uses, or to a
/// port a host service listens on, is left to the host (the controls), and the mapping's
/// own peer gets its answer through.
#[test]
fn an_unsolicited_syn_to_a_mapping_is_not_answered() {
    let mut bpf = load(0);
    bpf.run(EGRESS, &tcp(SANDBOX, 40000, REMOTE, 443, true));
    let (ret, _) = bpf.run(INGRESS, &tcp(REMOTE_2, 50000, HOST, 40000, true));
    assert_eq!(ret, TC_ACT_SHOT, "unsolicited SYN to the mapping");
    assert_eq!(bpf.counter(counter::DROP_UNSOLICITED_SYN), 1);
    let other = tcp(REMOTE_2, 50000, HOST, 40002, true);
    assert_eq!(bpf.run(INGRESS, &other), (PASS, other.clone()), "no mapping there: the host's");
    // A service of the host's that came to listen on the mapping's port after it was made
    // answers its SYNs itself.
    let listener = std::net::TcpListener::bind(("0.0.0.0", 40000)).expect("a host listener");
    let unsolicited = tcp(REMOTE_2, 50001, HOST, 40000, true);
    assert_eq!(bpf.run(INGRESS, &unsolicited), (PASS, unsolicited.clone()), "the host's service");
    drop(listener);
    assert_eq!(bpf.run(INGRESS, &unsolicited).0, TC_ACT_SHOT, "and once it is gone, unanswered again");
    assert_eq!(bpf.counter(counter::DROP_UNSOLICITED_SYN), 2);
    let (ret, out) = bpf.run(INGRESS, &segment(REMOTE, 443, HOST, 40000, 7000, syn_ack(1001)));
    assert_eq!((ret, inspect(&out)), (PASS, seen(REMOTE, 443, SANDBOX, 40000)), "the mapping's own peer");
    assert_eq!(bpf.counter(counter::DROP_UNSOLICITED_SYN), 2);
    // A forged source that is the host's own address is no outside peer: left to the
    // kernel (which drops it as a martian), not judged by any filtering.
    let forged = tcp(HOST, 50000, HOST, 40000, true);
    assert_eq!(bpf.run(INGRESS, &forged), (PASS, forged.clone()));
}
