//! Reliability matrix, rows 4 to 6, on the programs themselves (BPF_PROG_TEST_RUN) and end
//! to end: tables and port pools running full, hostile traffic, and malformed or mutated
//! frames through every program.

use std::time::Duration;

use etherparse::Ipv4Header;
use nat_common::{counter, names::program, net};
use natd::dataplane::ebpf::conntrack::{Timeouts, expire};
use natlab::bpf::prelude::*;
use natlab::{
    EXT_IP, HOST_UPLINK_IP, Lab,
    bpf::{Bpf, CLIENT, HOST, HOST6, SANDBOX},
    frames::{
        Flags, SYN, ack, checksums_ok, icmp_echo, icmp_error, inner_tcp, inner_udp, repair, segment, tcp, udp,
    },
    raw::{host_tcp_in_segs, ifindex_in, mac_of, send_raw, tcp_syn},
    frames6::{SANDBOX6, checksums_ok6, echo6, tcp6, udp6},
    soak::{Row, rng, size},
};

fn load(ct_capacity: u32) -> Bpf {
    natlab::require_root();
    Bpf::load(ct_capacity).expect("natd's eBPF object loads in a private namespace")
}

/// One random mutation of a valid frame: cut it, flip header bytes, or rewrite the
/// fields parsers trip over (IHL, total length, fragment bits, protocol, TCP offset).
fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    let mut frame = seed.to_vec();
    for _ in 0..rng.usize(1..4) {
        match rng.u8(0..8) {
            0 => frame.truncate(rng.usize(34..frame.len().max(35))),
            1 => {
                let at = rng.usize(14..frame.len().min(70));
                frame[at] = rng.u8(..);
            }
            2 => frame[14] = 0x40 | rng.u8(0..16),
            3 => frame[16..18].copy_from_slice(&rng.u16(..).to_be_bytes()),
            4 => frame[20..22].copy_from_slice(&[[0x20, 0], [0, 1], [0x20, 5], [0x40, 0]][rng.usize(0..4)]),
            5 => frame[23] = [1, 6, 17, 47, 50, 132, rng.u8(..)][rng.usize(0..7)],
            6 => {
                if frame.len() > 46 {
                    frame[46] = rng.u8(..) & 0xf0;
                }
            }
            _ => frame.extend((0..rng.usize(0..64)).map(|_| rng.u8(..))),
        }
    }
    frame
}

/// Whether the frame's IPv4 source is in natd's sandbox network of these tests
/// (172.20.0.0/24, `Bpf::load`); other sources are not natd's to translate.
fn from_sandbox_network(frame: &[u8]) -> bool {
    frame.len() >= 30 && frame[12..14] == [0x08, 0x00] && frame[26..29] == [172, 20, 0]
}

/// One IPv6 mutation: cut, flip header bytes, rewrite the payload length, next header
/// (extension headers, fragments, unknown protocols) or hop limit, add a tail.
fn mutate6(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    let mut frame = seed.to_vec();
    for _ in 0..rng.usize(1..4) {
        match rng.u8(0..7) {
            0 => frame.truncate(rng.usize(54..frame.len().max(55))),
            1 => {
                let at = rng.usize(14..frame.len().min(100));
                frame[at] = rng.u8(..);
            }
            2 => frame[18..20].copy_from_slice(&rng.u16(..).to_be_bytes()),
            3 => frame[20] = [0, 6, 17, 43, 44, 58, 59, 60, rng.u8(..)][rng.usize(0..9)],
            4 => frame[21] = [0, 1, 2, rng.u8(..)][rng.usize(0..4)],
            5 => {
                if frame.len() > 66 {
                    frame[66] = rng.u8(..) & 0xf0;
                }
            }
            _ => frame.extend((0..rng.usize(0..64)).map(|_| rng.u8(..))),
        }
    }
    frame
}

/// What the host's stack could hand a program: the payload length matching the frame,
/// and for TCP, UDP and ICMPv6 right after the fixed header a correct checksum (so a
/// rewritten frame's checksums can be judged). False when the frame is not that.
fn repair6(frame: &mut [u8]) -> bool {
    if frame.len() < 54 || frame[12..14] != [0x86, 0xdd] || frame[14] >> 4 != 6 {
        return false;
    }
    let payload = frame.len() - 54;
    frame[18..20].copy_from_slice(&(payload as u16).to_be_bytes());
    let at = match frame[20] {
        6 if payload >= 20 => 54 + 16,
        17 if payload >= 8 => 54 + 6,
        58 if payload >= 4 => 54 + 2,
        _ => return false,
    };
    frame[at..at + 2].copy_from_slice(&[0, 0]);
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    };
    add(&frame[22..54]);
    add(&(payload as u32).to_be_bytes());
    add(&[0, 0, 0, frame[20]]);
    add(&frame[54..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut check = !(sum as u16);
    if frame[20] == 17 && check == 0 {
        check = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&check.to_be_bytes());
    true
}

/// Whether an IPv6 frame's source is in the tests' dual-stack sandbox network (fd00:20::/64).
fn from_sandbox_network6(frame: &[u8]) -> bool {
    frame.len() >= 54 && frame[12..14] == [0x86, 0xdd] && frame[22..30] == natlab::frames6::NET6[..8]
}

/// Row 6: every TC program, both families, with the fast path off and on.
#[test]
fn mutated_frames_never_leak_a_sandbox_address_or_a_wrong_checksum() {
    let mut bpf = load(4096);
    bpf.publish(None, 8080, 6, SANDBOX, 80, 5);
    bpf.publish(None, 5353, 17, SANDBOX, 53, 6);
    bpf.local6(HOST6);
    bpf.network6(2, natlab::frames6::NET6, 64, natlab::frames6::GATEWAY6, true);
    bpf.endpoint6(SANDBOX6, natlab::bpf::SANDBOX_VETH, 2);
    bpf.publish6(None, 8080, 6, SANDBOX6, 80, 7);
    bpf.publish6(None, 5353, 17, SANDBOX6, 53, 8);
    let unreachable = etherparse::Icmpv4Type::DestinationUnreachable(
        etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
    );
    let syn_ack = Flags {
        syn: true,
        ack: Some(1001),
        ..Flags::default()
    };
    const CLIENT6: [u8; 16] = natlab::frames6::v6([0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 7]);
    const REMOTE6: [u8; 16] = natlab::frames6::v6([0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 9]);
    let edge_seeds = [
        (INGRESS, segment(CLIENT, 40000, HOST, 8080, 1000, SYN)),
        (INGRESS, udp(CLIENT, 40001, HOST, 5353)),
        (INGRESS, icmp_echo(CLIENT, HOST, 7, true)),
        (
            INGRESS,
            icmp_error(
                REMOTE,
                HOST,
                unreachable.clone(),
                &inner_udp(HOST, 61000, REMOTE, 53),
            ),
        ),
        (EGRESS, tcp(SANDBOX, 5555, REMOTE, 443, true)),
        (EGRESS, udp(SANDBOX, 5556, REMOTE, 53)),
        (EGRESS, icmp_echo(SANDBOX, REMOTE, 9, true)),
        (
            EGRESS,
            icmp_error(HOST, CLIENT, unreachable, &inner_tcp(CLIENT, 40000, SANDBOX, 80)),
        ),
        (program::EDGE_INGRESS6, tcp6(CLIENT6, 40000, HOST6, 8080, true)),
        (program::EDGE_INGRESS6, udp6(CLIENT6, 40001, HOST6, 5353)),
        (program::EDGE_INGRESS6, echo6(CLIENT6, HOST6, 7, true)),
        (program::EDGE_EGRESS6, tcp6(SANDBOX6, 5555, REMOTE6, 443, true)),
        (program::EDGE_EGRESS6, udp6(SANDBOX6, 5556, REMOTE6, 53)),
        (program::EDGE_EGRESS6, echo6(SANDBOX6, REMOTE6, 9, true)),
    ];
    let sandbox_seeds = [
        (SANDBOX_PROG, segment(SANDBOX, 80, CLIENT, 40000, 5000, syn_ack)),
        (SANDBOX_PROG, tcp(SANDBOX, 5557, REMOTE, 80, true)),
        (SANDBOX_PROG, udp(SANDBOX, 53, CLIENT, 40001)),
        (program::SANDBOX_INGRESS6, tcp6(SANDBOX6, 5557, REMOTE6, 80, true)),
        (program::SANDBOX_INGRESS6, udp6(SANDBOX6, 53, CLIENT6, 40001)),
    ];
    let mut rng = rng("malformed frames");
    let cases = size(4000, 200_000);
    let mut row = Row::new("6 malformed packets", "");
    let mut violations = Vec::new();
    let mut checked_checksums = 0;
    let mut redirected = 0;
    'fuzz: for fast_path in [false, true] {
        if fast_path {
            // The fast path's own decisions: redirects, with routes and neighbours to find.
            bpf.fast_path(true);
            bpf.route_via_uplink(true);
        }
        for (role, seeds) in [("edge", &edge_seeds[..]), ("sandbox veth", &sandbox_seeds[..])] {
            if role == "edge" {
                bpf.as_edge();
            } else {
                bpf.as_sandbox_veth6(2, SANDBOX, SANDBOX6);
            }
            for _ in 0..cases / 4 {
                row.done();
                let (prog, seed) = &seeds[rng.usize(0..seeds.len())];
                let ipv6 = seed[12..14] == [0x86, 0xdd];
                let (frame, well_formed) = if ipv6 {
                    let mut frame = mutate6(&mut rng, seed);
                    let well_formed = repair6(&mut frame);
                    (frame, well_formed)
                } else {
                    let mut frame = mutate(&mut rng, seed);
                    // What the host's forwarding could hand the program: a valid IPv4 header.
                    let well_formed = repair(&mut frame);
                    (frame, well_formed)
                };
                let (ret, out) = bpf.run(prog, &frame);
                if ret == TC_ACT_REDIRECT {
                    redirected += 1;
                }
                if ret != PASS && ret != TC_ACT_SHOT && !(fast_path && ret == TC_ACT_REDIRECT) {
                    violations.push(format!("{prog}: verdict {ret} for {frame:02x?}"));
                }
                let leaves_edge = *prog == EGRESS || *prog == program::EDGE_EGRESS6;
                let leaked = if ipv6 {
                    from_sandbox_network6(&out)
                } else {
                    Ipv4Header::from_slice(&frame[14..]).is_ok() && from_sandbox_network(&out)
                };
                if leaves_edge && ret != TC_ACT_SHOT && leaked {
                    violations.push(format!("{prog}: a sandbox address left the edge untranslated: {out:02x?}"));
                }
                if ret != TC_ACT_SHOT && well_formed && out != frame {
                    checked_checksums += 1;
                    let checked = if ipv6 { checksums_ok6(&out) } else { checksums_ok(&out) };
                    if let Err(what) = checked {
                        violations.push(format!(
                            "{prog} rewrote a frame and left the {what} wrong: in {frame:02x?} out {out:02x?}"
                        ));
                    }
                }
                if violations.len() > 5 {
                    break 'fuzz;
                }
            }
        }
    }
    for _ in &violations {
        row.failed();
    }
    row.checked(format!(
        "{} seeds (IPv4 and IPv6) mutated (cuts, header bytes, IHL, lengths, fragments, next headers, protocols, TCP \
         offset, tails) through the edge ingress and egress and sandbox programs of both families, fast path off and on \
         ({redirected} redirected); {checked_checksums} rewritten frames had every checksum recomputed",
        edge_seeds.len() + sandbox_seeds.len()
    ));
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(
        checked_checksums > cases / 20,
        "mutations still reach the translation paths ({checked_checksums})"
    );
    assert!(redirected >= cases / 400, "mutations still reach the fast path ({redirected})");
}

/// Row 4: a full connection table and an exhausted masquerade port pool. Established flows
/// keep working, new ones are refused and counted exactly, service comes back.
#[test]
fn full_tables_refuse_new_flows_exactly_and_recover() {
    let mut row = Row::new(
        "4 tables full",
        "masquerade pool of 4 ports: 4 flows translated, every further new flow dropped as drop_no_port and counted \
         exactly, existing flows unharmed, service back after expiry (the full connection table: `4 conntrack full`)",
    );
    let mut bpf = load(64);
    bpf.snat_ports(61000, 61003);
    // Random ports: every new mapping takes one of the pool's (preserved ports would
    // not use it up).
    bpf.network(2, [172, 20, 0, 0], 24, [172, 20, 0, 1], net::ICC | net::MASQ | net::PORTS_RANDOM);
    // Four masqueraded flows take the four NAT ports; the fifth is refused by name.
    bpf.as_edge();
    let mut nat_ports = Vec::new();
    for sport in 0..4u16 {
        let (ret, out) = bpf.run(EGRESS, &tcp(SANDBOX, 5000 + sport, REMOTE, 443, true));
        assert_eq!(ret, PASS);
        row.done();
        nat_ports.push(u16::from_be_bytes([out[34], out[35]]));
    }
    let first_flow_port = nat_ports[0];
    nat_ports.sort();
    assert_eq!(nat_ports, [61000, 61001, 61002, 61003]);
    let refused = size(10, 1000);
    for n in 0..refused {
        let (ret, _) = bpf.run(EGRESS, &tcp(SANDBOX, 6000 + n as u16, REMOTE, 443, true));
        assert_eq!(ret, TC_ACT_SHOT);
        row.done();
    }
    assert_eq!(
        bpf.counter(counter::DROP_NO_PORT),
        refused as u64,
        "every refusal counted once"
    );
    // The flows that have a port keep working meanwhile.
    let (ret, out) = bpf.run(EGRESS, &tcp(SANDBOX, 5000, REMOTE, 443, false));
    assert_eq!(
        (ret, u16::from_be_bytes([out[34], out[35]])),
        (PASS, first_flow_port),
        "an existing flow keeps its NAT port"
    );
    row.done();
    // Their entries expire (aged here by hand, as the sweep ages them): ports come back.
    let idle_ticks = nat_common::clock::ticks(10_000_000_000_000);
    bpf.edit_ct(|_, entry| entry.last_seen = entry.last_seen.saturating_sub(idle_ticks));
    let swept = expire(&mut bpf.ebpf, &Timeouts::default(), &mut Default::default()).expect("expire");
    assert_eq!(swept.expired, 8, "both entries of the four idle flows");
    let (ret, _) = bpf.run(EGRESS, &tcp(SANDBOX, 7000, REMOTE, 443, true));
    assert_eq!(ret, PASS, "service is back");
    row.done();
}

/// Row 4, the connection table: full of established flows, it keeps every one of them;
/// a flow that completes its handshake then cannot move there, stays embryonic and keeps
/// working (counted `ct_promote_full`), nothing established is evicted. Sized like the
/// other rows: 64 entries in CI, 4 096 in the soak run.
#[test]
fn a_full_connection_table_keeps_its_flows_and_new_ones_work() {
    let mut row = Row::new("4 conntrack full", "");
    let capacity = size(64, 4096);
    let mut bpf = load(capacity as u32);
    bpf.publish(None, 8080, 6, SANDBOX, 80, 5);
    for n in 0..capacity / 2 {
        assert_eq!(bpf.handshake(CLIENT, 20000 + n as u16), PASS);
        row.done();
    }
    let established = |bpf: &Bpf| bpf.ct().iter().filter(|(_, _, e)| *e).count();
    assert_eq!(established(&bpf), capacity, "two entries per flow fill the table");
    let extra = size(10, 1000);
    for n in 0..extra {
        let port = 60000 - n as u16;
        assert_eq!(bpf.handshake(CLIENT, port), PASS, "flow {port} completes its handshake");
        let (ret, out) = bpf.run(INGRESS, &segment(CLIENT, port, HOST, 8080, 1001, ack(7001)));
        assert_eq!((ret, out[30..34].to_vec()), (PASS, SANDBOX.to_vec()), "and keeps working, embryonic");
        row.done();
    }
    assert_eq!(established(&bpf), capacity, "no established flow was evicted");
    assert!(bpf.counter(counter::CT_PROMOTE_FULL) >= extra as u64);
    let (ret, out) = bpf.run(INGRESS, &segment(CLIENT, 20005, HOST, 8080, 1001, ack(7001)));
    assert_eq!((ret, out[30..34].to_vec()), (PASS, SANDBOX.to_vec()), "an established flow keeps working");
    row.done();
    row.checked(format!(
        "{} established flows fill a {capacity}-entry table; {extra} more complete their handshake, stay embryonic \
         and keep working (ct_promote_full {}); none established evicted",
        capacity / 2,
        bpf.counter(counter::CT_PROMOTE_FULL)
    ));
}

/// Row 5, end to end: spoofed and misdirected traffic from the LAN and from a sandbox.
/// Nothing reaches where it must not, every drop is named, a legitimate client is served.
#[test]
fn hostile_traffic_is_dropped_by_name_and_clients_are_still_served() {
    let mut row = Row::new("5 hostile traffic", "");
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.run_script("web", &["-p", "8080:80"], &natlab::whoami(80));
    lab.ok(&["network", "create", "--subnet", "10.66.0.0/24", "other"]);
    lab.ok(&["run", "--name", "evil", "--network", "other"]);
    assert!(natlab::wait_listening(&lab.netns_of("web"), "tcp", 80));
    let web_ip = lab.sandbox_ip("web");
    let evil = lab.netns_of("evil");
    let evil = evil.trim_start_matches("/run/netns/");
    const DROPS: [&str; 4] = [
        "drop_direct_access",
        "drop_loopback_spoof",
        "drop_cross_network",
        "drop_spoofed_source",
    ];
    let drops = || -> Vec<u64> {
        let stats = lab.json(&["stats"]);
        DROPS
            .iter()
            .map(|c| stats["counters"][c].as_u64().unwrap_or(0))
            .collect()
    };
    let before = drops();
    let loadgen = env!("CARGO_BIN_EXE_natd-loadgen");
    let seconds = if natlab::soak::soak() { "10" } else { "0.5" };

    // From the LAN: at the sandbox address, and at the host's 127.0.0.1 through the uplink.
    lab.ext_ok(&["ip", "route", "add", "172.18.0.0/16", "via", HOST_UPLINK_IP]);
    let direct = lab.ext(&["ping", "-c", "5", "-i", "0.05", "-W", "1", &web_ip]);
    assert!(
        !direct.status.success(),
        "the sandbox address is not reachable from the LAN"
    );
    row.done();
    // A neighbour's own stack never puts 127/8 on the wire (it is its own loopback), so the
    // SYN is crafted, to the uplink's MAC (CVE-2020-8558). Had it got through, the host's TCP
    // would have counted it; the same SYN to the host's address is (the control).
    let (ext_mac, uplink_mac) = (mac_of(&lab.ext_ns, "lan0"), mac_of(&lab.host_ns, "up0"));
    let lan0 = ifindex_in(&lab.ext_path(), "lan0");
    let ext_ip: std::net::Ipv4Addr = EXT_IP.parse().unwrap();
    // With route_localnet on the uplink (what CVE-2020-8558 needed) the host's own stack
    // would take such a SYN: only natd's drop keeps it from the host's TCP.
    lab.host_ok(&["sysctl", "-qw", "net.ipv4.conf.up0.route_localnet=1"]);
    let (segs, spoofs) = (host_tcp_in_segs(&lab), drops()[1]);
    let to_loopback = tcp_syn(ext_mac, uplink_mac, ext_ip, std::net::Ipv4Addr::LOCALHOST, 8080);
    natlab::in_netns(&lab.ext_path(), || send_raw(lan0, &to_loopback));
    assert!(
        natlab::wait_until(Duration::from_secs(2), || drops()[1] == spoofs + 1),
        "the SYN to 127.0.0.1 from the LAN dropped as loopback spoofing"
    );
    assert_eq!(host_tcp_in_segs(&lab), segs, "no segment reached the host's TCP");
    row.done();
    let control = tcp_syn(ext_mac, uplink_mac, ext_ip, HOST_UPLINK_IP.parse().unwrap(), 7);
    natlab::in_netns(&lab.ext_path(), || send_raw(lan0, &control));
    assert!(
        natlab::wait_until(Duration::from_secs(2), || host_tcp_in_segs(&lab) > segs),
        "control: the same SYN to the host's address reaches its TCP"
    );
    // A spoofed-SYN flood at the published port from the LAN, while a client connects.
    let flood = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ext_ns,
            loadgen,
            "flood",
            HOST_UPLINK_IP,
            "8080",
            seconds,
            "20000",
        ])
        .spawn()
        .unwrap();
    // From a sandbox on another network: across to web (isolation), and with forged
    // source addresses (anti-spoofing at its veth).
    let cross = natlab::sh(
        "ip",
        &[
            "netns", "exec", evil, "ping", "-c", "3", "-i", "0.05", "-W", "1", &web_ip,
        ],
    );
    assert!(!cross.status.success(), "no way across networks");
    row.done();
    let spoofed = natlab::sh(
        "ip",
        &[
            "netns", "exec", evil, loadgen, "flood", &web_ip, "80", "0.2", "2000",
        ],
    );
    assert!(
        spoofed.status.success(),
        "{}",
        String::from_utf8_lossy(&spoofed.stderr)
    );
    row.done();
    // The legitimate client is served during all of it.
    let served = (0..5)
        .filter(|_| {
            row.done();
            natlab::tcp_line(&["ip", "netns", "exec", &lab.ext_ns], HOST_UPLINK_IP, 8080).as_deref()
                == Some(EXT_IP)
        })
        .count();
    let _ = flood.wait_with_output();
    let after = drops();
    if served != 5 {
        row.failed();
    }
    row.checked(format!(
        "drops by name {DROPS:?}: {before:?} -> {after:?}; a crafted SYN to 127.0.0.1 from the LAN dropped and not seen \
         by the host's TCP (control: the same SYN to its address is); spoofed SYN flood from the LAN for {seconds} s; \
         legitimate client served {served}/5"
    ));
    assert_eq!(served, 5, "the legitimate client is served during the flood");
    assert!(
        after[0] >= before[0] + 5,
        "direct access drops counted: {before:?} -> {after:?}"
    );
    assert!(
        after[1] > before[1],
        "loopback spoofing counted: {before:?} -> {after:?}"
    );
    assert!(
        after[2] >= before[2] + 3,
        "cross-network drops counted: {before:?} -> {after:?}"
    );
    assert!(
        after[3] > before[3] + 100,
        "spoofed sources counted: {before:?} -> {after:?}"
    );
}

/// Found by the mutation run: an ICMP error whose IP total length ends inside the quoted
/// packet, with link-layer padding after it. natd translated bytes in the padding and
/// carried their change into the ICMP checksum, which does not cover them.
#[test]
fn an_icmp_error_shorter_than_its_frame_is_translated_within_its_length() {
    let mut bpf = load(1024);
    bpf.publish(None, 8080, 6, SANDBOX, 80, 5);
    bpf.run(INGRESS, &tcp(CLIENT, 40000, HOST, 8080, true));
    let kind = etherparse::Icmpv4Type::DestinationUnreachable(
        etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
    );
    let full = icmp_error(HOST, CLIENT, kind, &inner_tcp(CLIENT, 40000, SANDBOX, 80));
    for quoted_l4 in [4usize, 8, 12] {
        // Outer IP (20) + ICMP (8) + quoted IP (20) + `quoted_l4` bytes of TCP; the rest of
        // the frame stays as padding.
        let mut frame = full.clone();
        let tot_len = (20 + 8 + 20 + quoted_l4) as u16;
        frame[16..18].copy_from_slice(&tot_len.to_be_bytes());
        let end = 14 + usize::from(tot_len);
        let icmp = etherparse::Icmpv4Header::from_slice(&frame[34..end]).unwrap().0;
        let csum = icmp.icmp_type.calc_checksum(&frame[42..end]);
        frame[36..38].copy_from_slice(&csum.to_be_bytes());
        let frame = natlab::frames::fix_ip_checksum(frame);
        let (ret, out) = bpf.run(EGRESS, &frame);
        assert_eq!(ret, PASS);
        checksums_ok(&out[..end]).unwrap_or_else(|e| panic!("{quoted_l4} quoted bytes: {e}"));
        assert_eq!(
            out[end..],
            frame[end..],
            "{quoted_l4} quoted bytes: the padding is not written"
        );
        let translated = out[58..62] == HOST && out[64..66] == 8080u16.to_be_bytes();
        assert_eq!(
            translated,
            quoted_l4 >= 8,
            "{quoted_l4} quoted bytes: translated only when the ports are inside"
        );
    }
}
