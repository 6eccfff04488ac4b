//! The bytes natd's TC programs write, checked through BPF_PROG_TEST_RUN: frames built with
//! etherparse, the output parsed again and every checksum recomputed independently
//! (`natlab::frames`). Each test runs on its own thread in a fresh network namespace (test
//! runs use that namespace's loopback device) with its own pin directory. These are the
//! paths through the kernel's normal forwarding (the fast path is off); `fastpath.rs` and
//! `conntrack.rs` cover redirects and flow tracking.
use natlab::bpf::prelude::*;
use std::net::Ipv4Addr;

use etherparse::{IpNumber, Ipv4Header, Ipv4Options, PacketBuilder};
use nat_common::{counter, net};
use natlab::{
    bpf::{Bpf, CLIENT, HOST, SANDBOX},
    frames::{
        Flags, SYN, ack, fix_ip_checksum, icmp_echo, icmp_error, inner_tcp, inner_udp, inspect,
        inspect_error, seen, segment, tcp, udp,
    },
};

const OTHER_SANDBOX: [u8; 4] = [172, 20, 0, 3];
const GATEWAY: [u8; 4] = [172, 20, 0, 1];

fn load(ct_capacity: u32) -> Bpf {
    natlab::require_root();
    Bpf::load(ct_capacity).expect("natd's eBPF object loads in a private namespace")
}

#[test]
fn dnat_forward_reverse_and_established() {
    // On one CPU, the highest this test may use (whose region is furthest from the
    // first: a wrong offset shows), so the mapping's counters must all be in its region.
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let cpu = (0..nix::sched::CpuSet::count()).rev().find(|c| allowed.is_set(*c).unwrap_or(false)).unwrap();
    let mut on_cpu = nix::sched::CpuSet::new();
    on_cpu.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &on_cpu).expect("pin the test to a CPU");
    let mut bpf = load(1024);
    bpf.publish(None, 8080, 6, SANDBOX, 80, 11);
    let mut frames_len = 0u64;
    let (ret, out) = bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1000, SYN));
    frames_len += segment(CLIENT, 40000, HOST, 8080, 1000, SYN).len() as u64;
    assert_eq!(ret, PASS);
    assert_eq!(
        inspect(&out),
        seen(CLIENT, 40000, SANDBOX, 80),
        "DNAT keeps the client's address"
    );
    let flows = bpf.ct();
    assert_eq!(flows.len(), 2, "one entry per direction");
    assert!(
        flows.iter().all(|(_, _, established)| !established),
        "embryonic until the handshake completes"
    );
    assert_eq!(bpf.counter(counter::DNAT_NEW), 1);
    // The SYN-ACK as it leaves the sandbox.
    bpf.as_sandbox_veth(2, SANDBOX);
    let syn_ack = Flags {
        syn: true,
        ack: Some(1001),
        ..Flags::default()
    };
    let (ret, out) = bpf.run(SANDBOX_PROG, &segment(SANDBOX, 80, CLIENT, 40000, 5000, syn_ack));
    frames_len += segment(SANDBOX, 80, CLIENT, 40000, 5000, syn_ack).len() as u64;
    assert_eq!(ret, PASS);
    assert_eq!(
        inspect(&out),
        seen(HOST, 8080, CLIENT, 40000),
        "the reply leaves from the published address"
    );
    assert_eq!(bpf.counter(counter::DNAT_REPLY), 1);
    // The client's ACK of the SYN-ACK completes the handshake.
    bpf.as_edge();
    let (_, out) = bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1001, ack(5001)));
    frames_len += segment(CLIENT, 40000, HOST, 8080, 1001, ack(5001)).len() as u64;
    assert_eq!(inspect(&out), seen(CLIENT, 40000, SANDBOX, 80));
    assert_eq!(bpf.counter(counter::DNAT_ESTABLISHED), 1);
    assert_eq!(bpf.counter(counter::CT_PROMOTED), 1);
    let flows = bpf.ct();
    assert!(
        flows.len() == 2 && flows.iter().all(|(_, _, established)| *established),
        "the flow moved to the established table: {flows:?}"
    );
    // A reply that reaches the uplink's egress untranslated is translated there too.
    let (_, out) = bpf.run(EGRESS, &segment(SANDBOX, 80, CLIENT, 40000, 5001, ack(1010)));
    frames_len += segment(SANDBOX, 80, CLIENT, 40000, 5001, ack(1010)).len() as u64;
    assert_eq!(inspect(&out), seen(HOST, 8080, CLIENT, 40000));
    // Every packet of the mapping's flow counted, each with its length, in the region of
    // the CPU it ran on and nowhere else.
    let by_cpu = bpf.mapping_stats(11);
    for (i, counted) in by_cpu.iter().enumerate() {
        let expected = if i == cpu { (4, frames_len) } else { (0, 0) };
        assert_eq!(*counted, expected, "CPU {i}'s region: {by_cpu:?}");
    }
}

#[test]
fn dnat_honours_bound_address_and_protocol() {
    let mut bpf = load(1024);
    bpf.publish(Some([198, 51, 100, 77]), 5353, 17, SANDBOX, 53, 12);
    // While 198.51.100.77 is not the host's, the mapping translates nothing: traffic
    // passing through to that address is not the host's to take.
    let transit = udp(CLIENT, 5000, [198, 51, 100, 77], 5353);
    let (ret, out) = bpf.run(INGRESS, &transit);
    assert_eq!((ret, out.as_slice()), (PASS, transit.as_slice()));
    bpf.local([198, 51, 100, 77]);
    // Not for this address (even though it is the host's): untouched.
    let frame = udp(CLIENT, 5000, HOST, 5353);
    let (ret, out) = bpf.run(INGRESS, &frame);
    assert_eq!((ret, out.as_slice()), (PASS, frame.as_slice()));
    // The bound address, now the host's: translated, UDP checksum recomputed.
    let (_, out) = bpf.run(INGRESS, &udp(CLIENT, 5000, [198, 51, 100, 77], 5353));
    assert_eq!(inspect(&out), seen(CLIENT, 5000, SANDBOX, 53));
    // TCP on the same port is another mapping: untouched.
    let frame = tcp(CLIENT, 5000, [198, 51, 100, 77], 5353, true);
    assert_eq!(bpf.run(INGRESS, &frame).1, frame);
}

#[test]
fn snat_new_and_established_flows_and_replies() {
    let mut bpf = load(1024);
    let (ret, out) = bpf.run(EGRESS, &tcp(SANDBOX, 5555, REMOTE, 443, true));
    assert_eq!(ret, PASS);
    let first = inspect(&out);
    assert_eq!(
        (first.src, first.dst, first.dport),
        (HOST.into(), REMOTE.into(), 443)
    );
    assert_eq!(
        first.sport, 5555,
        "the sandbox's port, preserved (RFC 4787 REQ-3, as Linux's MASQUERADE)"
    );
    let nat_port = first.sport;
    let (_, out) = bpf.run(EGRESS, &tcp(SANDBOX, 5555, REMOTE, 443, false));
    assert_eq!(
        inspect(&out),
        seen(HOST, nat_port, REMOTE, 443),
        "established flow keeps its port"
    );
    let (_, out) = bpf.run(INGRESS, &tcp(REMOTE, 443, HOST, nat_port, false));
    assert_eq!(
        inspect(&out),
        seen(REMOTE, 443, SANDBOX, 5555),
        "reply goes back to the sandbox"
    );
    assert_eq!(
        (
            bpf.counter(counter::SNAT_NEW),
            bpf.counter(counter::SNAT_ESTABLISHED),
            bpf.counter(counter::SNAT_REPLY)
        ),
        (1, 1, 1)
    );

    // Another sandbox, same source port, same remote: a different NAT port.
    let (_, out) = bpf.run(EGRESS, &tcp(OTHER_SANDBOX, 5555, REMOTE, 443, true));
    let second = inspect(&out);
    assert_ne!(second.sport, nat_port);
    // Traffic of the host itself (not from a sandbox subnet) is not touched.
    let frame = tcp(HOST, 40001, REMOTE, 443, true);
    assert_eq!(bpf.run(EGRESS, &frame).1, frame);
}

#[test]
fn snat_skips_published_ports_and_runs_out_cleanly() {
    let mut bpf = load(1024);
    // Random ports (RFC 6056): every new mapping takes one of the range.
    bpf.network(2, [172, 20, 0, 0], 24, GATEWAY, net::ICC | net::MASQ | net::PORTS_RANDOM);
    // 61000..=61009 is the NAT range; publish all but one of them.
    for port in 61000..=61008 {
        bpf.publish(None, port, 6, SANDBOX, 80, u32::from(port));
    }
    let (_, out) = bpf.run(EGRESS, &tcp(SANDBOX, 1000, REMOTE, 80, true));
    assert_eq!(
        inspect(&out).sport,
        61009,
        "the only NAT port that is not a published port"
    );
    // The range is now exhausted for this remote ip:port: the new flow is dropped, not leaked.
    let (ret, _) = bpf.run(EGRESS, &tcp(OTHER_SANDBOX, 1000, REMOTE, 80, true));
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(bpf.counter(counter::DROP_NO_PORT), 1);
    // A different remote port has the whole (unpublished) range again.
    let (ret, _) = bpf.run(EGRESS, &tcp(OTHER_SANDBOX, 1000, REMOTE, 81, true));
    assert_eq!(ret, PASS);
}

#[test]
fn udp_zero_checksum_stays_zero() {
    let mut bpf = load(1024);
    let mut frame = udp(SANDBOX, 6000, REMOTE, 53);
    // UDP checksum field: Ethernet 14 + IPv4 20 + 6.
    frame[40] = 0;
    frame[41] = 0;
    let (_, out) = bpf.run(EGRESS, &frame);
    assert_eq!(
        &out[40..42],
        &[0, 0],
        "a zero UDP checksum means none and stays none"
    );
    let s = inspect(&out);
    assert_eq!((s.src, s.dport), (HOST.into(), 53));
    // With a checksum: recomputed (checked in inspect).
    let (_, out) = bpf.run(EGRESS, &udp(SANDBOX, 6001, REMOTE, 53));
    assert_eq!(inspect(&out).src, Ipv4Addr::from(HOST));
}

#[test]
fn icmp_echo_id_is_translated_both_ways() {
    let mut bpf = load(1024);
    let (ret, out) = bpf.run(EGRESS, &icmp_echo(SANDBOX, REMOTE, 0x1234, true));
    assert_eq!(ret, PASS);
    let out_seen = inspect(&out);
    assert_eq!((out_seen.src, out_seen.dst), (HOST.into(), REMOTE.into()));
    let nat_id = out_seen.sport;
    assert_eq!(nat_id, 0x1234, "the echo identifier, preserved");
    let (_, back) = bpf.run(INGRESS, &icmp_echo(REMOTE, HOST, nat_id, false));
    let back = inspect(&back);
    assert_eq!(
        (back.src, back.dst, back.sport),
        (REMOTE.into(), SANDBOX.into(), 0x1234)
    );
    // An echo reply from a sandbox opens no flow, and does not leave with its private
    // address either.
    let frame = icmp_echo(SANDBOX, REMOTE, 0x99, false);
    assert_eq!(bpf.run(EGRESS, &frame).0, TC_ACT_SHOT);
    assert_eq!(bpf.counter(counter::DROP_UNTRANSLATED), 1);
}

#[test]
fn ip_options_move_the_l4_header() {
    let mut bpf = load(1024);
    bpf.publish(None, 8080, 6, SANDBOX, 80, 5);
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT, HOST).unwrap();
    // Record Route, 8 bytes: type 7, length 7, pointer 4, one empty slot, then EOL.
    ip.options = Ipv4Options::try_from(&[7u8, 7, 4, 0, 0, 0, 0, 0][..]).unwrap();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(40000, 8080, 1, 1000)
        .syn()
        .write(&mut frame, b"opts")
        .unwrap();
    assert_eq!(frame[14] & 0x0f, 7, "IHL 7 with options");
    let (_, out) = bpf.run(INGRESS, &frame);
    assert_eq!(inspect(&out), seen(CLIENT, 40000, SANDBOX, 80));
    assert_eq!(&out[34..42], &frame[34..42], "options untouched");
}

#[test]
fn truncated_and_malformed_frames_never_leave_untranslated() {
    let mut bpf = load(1024);
    bpf.publish(None, 8080, 6, SANDBOX, 80, 5);
    let full = tcp(CLIENT, 40000, HOST, 8080, true);
    // BPF_PROG_TEST_RUN itself refuses IPv4 frames shorter than Ethernet + 20 bytes (EINVAL),
    // as the stack never hands such an skb to TC; every longer cut reaches the program.
    for len in 34..full.len() {
        let (ret, out) = bpf.run(INGRESS, &full[..len]);
        assert_eq!(ret, PASS, "len {len}");
        assert_eq!(
            out,
            &full[..len],
            "a truncated frame (len {len}) is never rewritten"
        );
    }
    // From a masqueraded network, what cannot be parsed cannot be translated: dropped.
    let sandbox_frame = tcp(SANDBOX, 40000, REMOTE, 80, true);
    for len in 34..sandbox_frame.len() {
        assert_eq!(bpf.run(EGRESS, &sandbox_frame[..len]).0, TC_ACT_SHOT, "len {len}");
    }
    let mut zero_length = sandbox_frame.clone();
    zero_length[16..18].copy_from_slice(&0u16.to_be_bytes());
    assert_eq!(
        bpf.run(EGRESS, &fix_ip_checksum(zero_length)).0,
        TC_ACT_SHOT,
        "total length 0 without GSO: not a packet natd can translate"
    );
    assert_eq!(
        bpf.counter(counter::DROP_UNTRANSLATED),
        (sandbox_frame.len() - 34) as u64 + 1
    );
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    let mut bad_version = full.clone();
    bad_version[14] = 0x65;
    let mut short_total = full.clone();
    short_total[16..18].copy_from_slice(&10u16.to_be_bytes());
    for frame in [bad_ihl, bad_version, short_total] {
        let (ret, out) = bpf.run(INGRESS, &frame);
        assert_eq!((ret, out), (PASS, frame.clone()));
    }
    assert!(bpf.counter(counter::MALFORMED) > 0);
    assert_eq!(bpf.counter(counter::DNAT_NEW), 0, "nothing was translated");
    assert!(bpf.ct().is_empty(), "no flow was created");
}

#[test]
fn fragments_never_leak_a_sandbox_address() {
    let mut bpf = load(1024);
    let mut later = tcp(SANDBOX, 5555, REMOTE, 443, false);
    // Fragment offset 185 (x8 bytes), no more fragments: a later fragment.
    later[20..22].copy_from_slice(&185u16.to_be_bytes());
    let (ret, _) = bpf.run(EGRESS, &fix_ip_checksum(later));
    assert_eq!(
        ret, TC_ACT_SHOT,
        "a later fragment of a sandbox cannot be translated and must not leave"
    );
    assert_eq!(bpf.counter(counter::DROP_FRAGMENT), 1);
    let mut first = tcp(SANDBOX, 5555, REMOTE, 443, true);
    first[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
    let (ret, out) = bpf.run(EGRESS, &fix_ip_checksum(first));
    assert_eq!(ret, PASS);
    assert_eq!(
        Ipv4Addr::from([out[26], out[27], out[28], out[29]]),
        Ipv4Addr::from(HOST),
        "first fragment translated"
    );
}

#[test]
fn removed_mapping_invalidates_its_flows() {
    let mut bpf = load(1024);
    bpf.publish(None, 5353, 17, SANDBOX, 53, 21);
    let frame = udp(CLIENT, 7000, HOST, 5353);
    assert_eq!(inspect(&bpf.run(INGRESS, &frame).1).dst, Ipv4Addr::from(SANDBOX));
    bpf.unpublish(None, 5353, 17);
    let (ret, out) = bpf.run(INGRESS, &frame);
    assert_eq!(
        (ret, out),
        (PASS, frame.clone()),
        "the established UDP flow is gone with its mapping"
    );
    assert_eq!(bpf.counter(counter::STALE_MAPPING), 1);
    assert!(bpf.ct().is_empty(), "both entries removed");
    // Re-published to another sandbox: new flows go there.
    bpf.publish(None, 5353, 17, OTHER_SANDBOX, 53, 22);
    assert_eq!(
        inspect(&bpf.run(INGRESS, &frame).1).dst,
        Ipv4Addr::from(OTHER_SANDBOX)
    );
}

#[test]
fn full_established_table_keeps_its_flows_and_new_ones_stay_embryonic() {
    let mut bpf = load(64);
    bpf.publish(None, 8080, 6, SANDBOX, 80, 5);
    // 32 completed flows fill the 64 entries of the established table.
    for port in 0..32u16 {
        assert_eq!(bpf.handshake(CLIENT, 20000 + port), PASS);
    }
    let established = |bpf: &Bpf| bpf.ct().iter().filter(|(_, _, e)| *e).count();
    assert_eq!(established(&bpf), 64);
    // One more: its handshake completes, it cannot move, it keeps working where it is.
    assert_eq!(bpf.handshake(CLIENT, 30000), PASS);
    assert!(bpf.counter(counter::CT_PROMOTE_FULL) >= 1);
    assert_eq!(established(&bpf), 64, "no established flow was evicted");
    let (ret, out) = bpf.run(INGRESS, &segment(CLIENT, 30000, HOST, 8080, 1001, ack(7001)));
    assert_eq!((ret, inspect(&out).dst), (PASS, Ipv4Addr::from(SANDBOX)));
    let (ret, out) = bpf.run(INGRESS, &segment(CLIENT, 20005, HOST, 8080, 1001, ack(7001)));
    assert_eq!(ret, PASS);
    assert_eq!(
        inspect(&out).dst,
        Ipv4Addr::from(SANDBOX),
        "established flows keep working"
    );
}

#[test]
fn icmp_fragmentation_needed_for_a_published_port_flow() {
    let mut bpf = load(1024);
    bpf.publish(None, 8080, 6, SANDBOX, 80, 5);
    bpf.run(INGRESS, &tcp(CLIENT, 40000, HOST, 8080, true));
    // The host cannot forward the client's big segment into the bridge and says so to the
    // client, quoting the segment as it was after DNAT.
    let kind = etherparse::Icmpv4Type::DestinationUnreachable(
        etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
    );
    let frame = icmp_error(HOST, CLIENT, kind, &inner_tcp(CLIENT, 40000, SANDBOX, 80));
    let (ret, out) = bpf.run(EGRESS, &frame);
    assert_eq!(ret, PASS);
    let (outer, quoted) = inspect_error(&out);
    assert_eq!((outer.src, outer.dst), (HOST.into(), CLIENT.into()));
    assert_eq!(
        quoted,
        seen(CLIENT, 40000, HOST, 8080),
        "the client recognises its own segment"
    );
    assert_eq!(bpf.counter(counter::ICMP_ERROR_TRANSLATED), 1);
}

#[test]
fn icmp_port_unreachable_from_a_sandbox() {
    let mut bpf = load(1024);
    bpf.publish(None, 5353, 17, SANDBOX, 53, 6);
    bpf.run(INGRESS, &udp(CLIENT, 5000, HOST, 5353));
    bpf.as_sandbox_veth(2, SANDBOX);
    let kind =
        etherparse::Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port);
    let frame = icmp_error(SANDBOX, CLIENT, kind, &inner_udp(CLIENT, 5000, SANDBOX, 53));
    let (ret, out) = bpf.run(SANDBOX_PROG, &frame);
    assert_eq!(ret, PASS);
    let (outer, quoted) = inspect_error(&out);
    assert_eq!(
        (outer.src, outer.dst),
        (HOST.into(), CLIENT.into()),
        "the error comes from the published address"
    );
    assert_eq!(quoted, seen(CLIENT, 5000, HOST, 5353));
}

#[test]
fn icmp_time_exceeded_for_a_masqueraded_flow() {
    let mut bpf = load(1024);
    let (_, out) = bpf.run(EGRESS, &udp(SANDBOX, 33434, REMOTE, 33435));
    let nat_port = inspect(&out).sport;
    let router = [198, 51, 100, 2];
    let kind =
        etherparse::Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit);
    let frame = icmp_error(router, HOST, kind, &inner_udp(HOST, nat_port, REMOTE, 33435));
    let (ret, out) = bpf.run(INGRESS, &frame);
    assert_eq!(ret, PASS);
    let (outer, quoted) = inspect_error(&out);
    assert_eq!(
        (outer.src, outer.dst),
        (router.into(), SANDBOX.into()),
        "delivered to the sandbox"
    );
    assert_eq!(quoted, seen(SANDBOX, 33434, REMOTE, 33435));

    // The same for a ping with a low TTL: the quoted echo id goes back to the sandbox's.
    let (_, out) = bpf.run(EGRESS, &icmp_echo(SANDBOX, REMOTE, 0x4242, true));
    let nat_id = inspect(&out).sport;
    let mut quoted_echo = Vec::new();
    PacketBuilder::ipv4(HOST, REMOTE, 1)
        .icmpv4_echo_request(nat_id, 1)
        .write(&mut quoted_echo, b"ping")
        .unwrap();
    let kind =
        etherparse::Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit);
    let (_, out) = bpf.run(INGRESS, &icmp_error(router, HOST, kind.clone(), &quoted_echo));
    let (outer, quoted) = inspect_error(&out);
    assert_eq!(outer.dst, Ipv4Addr::from(SANDBOX));
    assert_eq!((quoted.src, quoted.sport), (SANDBOX.into(), 0x4242));
    // An error about a flow natd does not know passes untouched.
    let stranger = icmp_error(router, HOST, kind, &inner_udp(HOST, 999, REMOTE, 53));
    assert_eq!(bpf.run(INGRESS, &stranger).1, stranger);
}

#[test]
fn hairpin_to_own_and_other_sandboxes() {
    let mut bpf = load(1024);
    bpf.publish(None, 8080, 6, SANDBOX, 80, 9);
    bpf.as_sandbox_veth(2, SANDBOX);
    // The sandbox reaches its own published port: source becomes the gateway.
    let (ret, out) = bpf.run(SANDBOX_PROG, &tcp(SANDBOX, 40000, HOST, 8080, true));
    assert_eq!(ret, PASS);
    assert_eq!(inspect(&out), seen(GATEWAY, 40000, SANDBOX, 80));
    let (_, out) = bpf.run(SANDBOX_PROG, &tcp(SANDBOX, 80, GATEWAY, 40000, false));
    assert_eq!(
        inspect(&out),
        seen(HOST, 8080, SANDBOX, 40000),
        "the reply comes from the published address"
    );
    // Another sandbox: only the destination changes, the server sees the real client.
    bpf.as_sandbox_veth(2, OTHER_SANDBOX);
    let (_, out) = bpf.run(SANDBOX_PROG, &tcp(OTHER_SANDBOX, 41000, HOST, 8080, true));
    assert_eq!(inspect(&out), seen(OTHER_SANDBOX, 41000, SANDBOX, 80));
    bpf.as_sandbox_veth(2, SANDBOX);
    let (_, out) = bpf.run(SANDBOX_PROG, &tcp(SANDBOX, 80, OTHER_SANDBOX, 41000, false));
    assert_eq!(inspect(&out), seen(HOST, 8080, OTHER_SANDBOX, 41000));
    assert_eq!(bpf.counter(counter::HAIRPIN_NEW), 2);
}

#[test]
fn isolation_drops_by_reason() {
    let mut bpf = load(1024);
    bpf.network(3, [10, 3, 0, 0], 24, [10, 3, 0, 1], net::ICC | net::MASQ);
    bpf.network(4, [10, 4, 0, 0], 24, [10, 4, 0, 1], net::MASQ);
    bpf.network(5, [10, 5, 0, 0], 24, [10, 5, 0, 1], net::ICC | net::INTERNAL);
    bpf.local([10, 4, 0, 1]);
    // Outside -> a sandbox address, and -> 127.0.0.1 in a frame to the host.
    assert_eq!(
        bpf.run(INGRESS, &tcp(CLIENT, 1, SANDBOX, 80, true)).0,
        TC_ACT_SHOT
    );
    assert_eq!(
        bpf.run(INGRESS, &tcp(CLIENT, 1, [127, 0, 0, 1], 80, true)).0,
        TC_ACT_SHOT
    );
    assert_eq!(bpf.counter(counter::DROP_DIRECT_ACCESS), 1);
    assert_eq!(bpf.counter(counter::DROP_LOOPBACK_SPOOF), 1);
    // Network 2 -> network 3: isolated; -> the outside: fine.
    bpf.as_sandbox_veth(2, SANDBOX);
    assert_eq!(
        bpf.run(SANDBOX_PROG, &tcp(SANDBOX, 1, [10, 3, 0, 5], 80, true)).0,
        TC_ACT_SHOT
    );
    assert_eq!(bpf.counter(counter::DROP_CROSS_NETWORK), 1);
    assert_eq!(
        bpf.run(SANDBOX_PROG, &tcp(SANDBOX, 1, REMOTE, 80, true)).0,
        PASS
    );
    // A sandbox claiming a host address as its source.
    assert_eq!(
        bpf.run(SANDBOX_PROG, &tcp(HOST, 1, REMOTE, 80, true)).0,
        TC_ACT_SHOT
    );
    assert_eq!(bpf.counter(counter::DROP_SPOOFED_SOURCE), 1);
    // icc=false (network 4): sandbox to sandbox dropped, the gateway still reachable.
    bpf.as_sandbox_veth(4, [10, 4, 0, 2]);
    assert_eq!(
        bpf.run(SANDBOX_PROG, &udp([10, 4, 0, 2], 1, [10, 4, 0, 3], 53)).0,
        TC_ACT_SHOT
    );
    assert_eq!(bpf.counter(counter::DROP_ICC), 1);
    assert_eq!(
        bpf.run(SANDBOX_PROG, &udp([10, 4, 0, 2], 1, [10, 4, 0, 1], 53)).0,
        PASS
    );
    // internal (network 5): nothing leaves the subnet.
    bpf.as_sandbox_veth(5, [10, 5, 0, 2]);
    assert_eq!(
        bpf.run(SANDBOX_PROG, &udp([10, 5, 0, 2], 1, REMOTE, 53)).0,
        TC_ACT_SHOT
    );
    assert_eq!(
        bpf.run(SANDBOX_PROG, &udp([10, 5, 0, 2], 1, [10, 5, 0, 3], 53)).0,
        PASS
    );
    assert_eq!(bpf.counter(counter::DROP_INTERNAL), 1);
}

#[test]
fn closed_tcp_flows_give_their_nat_port_back() {
    let mut bpf = load(1024);
    bpf.network(2, [172, 20, 0, 0], 24, GATEWAY, net::ICC | net::MASQ | net::PORTS_RANDOM);
    // 61000..=61009: ten NAT ports for one remote ip:port.
    let mut nat_ports = Vec::new();
    for sport in 1..=10u16 {
        let (ret, out) = bpf.run(EGRESS, &tcp(SANDBOX, sport, REMOTE, 80, true));
        assert_eq!(ret, PASS);
        nat_ports.push(inspect(&out).sport);
    }
    let next = |bpf: &mut Bpf, sport| bpf.run(EGRESS, &tcp(SANDBOX, sport, REMOTE, 80, true));
    assert_eq!(next(&mut bpf, 11).0, TC_ACT_SHOT, "range exhausted");
    let fin = |ack: u32| Flags {
        fin: true,
        ack: Some(ack),
        ..Flags::default()
    };
    // The remote closes its direction of one flow: the flow is not over yet, its port
    // stays taken (a lone FIN must not let a new flow take over a live NAT tuple).
    let (_, out) = bpf.run(INGRESS, &segment(REMOTE, 80, HOST, nat_ports[3], 5, fin(1)));
    assert_eq!(inspect(&out).dst, Ipv4Addr::from(SANDBOX));
    assert_eq!(next(&mut bpf, 12).0, TC_ACT_SHOT, "half closed: still taken");
    // The sandbox closes its direction too: now the port is free for a new flow.
    bpf.run(EGRESS, &segment(SANDBOX, 4, REMOTE, 80, 9, fin(6)));
    let (ret, out) = next(&mut bpf, 12);
    assert_eq!(ret, PASS, "a new flow takes over the closed flow's port");
    assert_eq!(inspect(&out).sport, nat_ports[3]);
    assert_eq!(bpf.counter(counter::CT_TAKEOVER), 1);
    // A reset ends a flow at once: one that acknowledges the SYN (sequence 1000), as a
    // reset in answer to it does (RFC 793 3.4).
    let rst = Flags {
        rst: true,
        ack: Some(1001),
        ..Flags::default()
    };
    bpf.run(INGRESS, &segment(REMOTE, 80, HOST, nat_ports[6], 5, rst));
    assert_eq!(inspect(&next(&mut bpf, 13).1).sport, nat_ports[6]);
    // Established flows keep their ports.
    assert_eq!(
        inspect(&bpf.run(EGRESS, &tcp(SANDBOX, 1, REMOTE, 80, false)).1).sport,
        nat_ports[0]
    );
}
