//! Flow tracking through BPF_PROG_TEST_RUN: which TCP segments a flow records, how flows
//! become established, why a SYN flood cannot lock clients out, who may send a flow's
//! packets, and natd's expiry of idle and orphaned flows (its own GC code on the maps the
//! programs wrote).
use nat_common::{clock, counter};
use natd::dataplane::ebpf::conntrack::{Timeouts, expire};
use natlab::bpf::prelude::*;
use natlab::{
    bpf::{Bpf, CLIENT, HOST, SANDBOX},
    frames::{Flags, SYN, ack, inspect, seen, segment, syn_ack, udp},
};

fn load(established: u32, embryonic: u32) -> Bpf {
    natlab::require_root();
    Bpf::load_sized(established, embryonic).expect("natd's eBPF object loads in a private namespace")
}

/// How many entries are (established, embryonic).
fn tables(bpf: &Bpf) -> (usize, usize) {
    let all = bpf.ct();
    let established = all.iter().filter(|(_, _, e)| *e).count();
    (established, all.len() - established)
}

/// A client's handshake with the published port 8080 (sandbox port 80), the sandbox's
/// SYN-ACK carrying sequence number 5000.
fn handshake(bpf: &mut Bpf, client: [u8; 4], port: u16) {
    bpf.as_edge();
    bpf.run(INGRESS, &segment(client, port, HOST, 8080, 1000, SYN));
    bpf.as_sandbox_veth(2, SANDBOX);
    bpf.run(
        SANDBOX_PROG,
        &segment(SANDBOX, 80, client, port, 5000, syn_ack(1001)),
    );
    bpf.as_edge();
    bpf.run(INGRESS, &segment(client, port, HOST, 8080, 1001, ack(5001)));
}

#[test]
fn tcp_tracking_records_only_plausible_segments() {
    let mut bpf = load(1024, 1024);
    bpf.publish(None, 8080, 6, SANDBOX, 80, 11);
    bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1000, SYN));
    // A SYN-ACK from the side that sent the SYN: translated, recorded as invalid.
    let (ret, out) = bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1000, syn_ack(77)));
    assert_eq!(
        (ret, inspect(&out)),
        (PASS, seen(CLIENT, 40000, SANDBOX, 80))
    );
    assert_eq!(bpf.counter(counter::TCP_INVALID), 1);

    bpf.as_sandbox_veth(2, SANDBOX);
    bpf.run(
        SANDBOX_PROG,
        &segment(SANDBOX, 80, CLIENT, 40000, 5000, syn_ack(1001)),
    );
    bpf.as_edge();
    // An ACK that does not acknowledge the SYN-ACK does not complete the handshake.
    bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1001, ack(4242)));
    assert_eq!(bpf.counter(counter::TCP_INVALID), 2);
    assert_eq!(tables(&bpf), (0, 2), "still embryonic");
    // A FIN without ACK is no FIN a real stack sends: the flow is not closing.
    let fin = Flags {
        fin: true,
        ..Flags::default()
    };
    bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1001, fin));
    assert_eq!(bpf.counter(counter::TCP_INVALID), 3);
    assert!(
        bpf.ct()
            .iter()
            .all(|(_, e, _)| e.tcp & nat_common::ct::TCP_FIN == 0)
    );
    // The right ACK promotes the flow.
    bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1001, ack(5001)));
    assert_eq!(bpf.counter(counter::CT_PROMOTED), 1);
    assert_eq!(tables(&bpf), (2, 0));
}

#[test]
fn a_syn_flood_locks_out_neither_established_nor_new_clients() {
    // Embryonic table of 128 entries: 64 flows.
    let mut bpf = load(1024, 128);
    bpf.publish(None, 8080, 6, SANDBOX, 80, 11);
    handshake(&mut bpf, CLIENT, 40000);
    assert_eq!(tables(&bpf), (2, 0));
    bpf.as_edge();
    let flood = 4000u32;
    for i in 0..flood {
        let src = [198, 18, (i >> 8) as u8, i as u8];
        let (ret, out) = bpf.run(
            INGRESS,
            &segment(src, 1024 + (i % 60000) as u16, HOST, 8080, 1, SYN),
        );
        assert_eq!(
            ret, PASS,
            "flood SYN {i} accepted (the LRU evicts older embryos)"
        );
        assert_eq!(inspect(&out).dst, std::net::Ipv4Addr::from(SANDBOX));
    }
    assert_eq!(bpf.counter(counter::DROP_CT_FULL), 0);
    let (established, embryonic) = tables(&bpf);
    assert_eq!(established, 2, "the established flow survived the flood");
    assert!(embryonic <= 128, "embryonic entries: {embryonic}");
    let (ret, out) = bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1001, ack(5001)));
    assert_eq!(
        (ret, inspect(&out)),
        (PASS, seen(CLIENT, 40000, SANDBOX, 80))
    );
    // A new client completes its handshake in the middle of the flood.
    handshake(&mut bpf, [203, 0, 113, 8], 41000);
    assert_eq!(bpf.counter(counter::CT_PROMOTED), 2);
    assert_eq!(tables(&bpf).0, 4);
}

#[test]
fn a_sandbox_cannot_send_packets_of_another_sandboxs_flow() {
    let mut bpf = load(1024, 1024);
    // The sandbox behind the published port sits behind veth 42, not the test device.
    bpf.endpoint(SANDBOX, 42, 2);
    bpf.publish(None, 8080, 6, SANDBOX, 80, 11);
    bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1000, SYN));
    bpf.as_sandbox_veth(2, SANDBOX);
    let (ret, _) = bpf.run(
        SANDBOX_PROG,
        &segment(SANDBOX, 80, CLIENT, 40000, 5000, syn_ack(1001)),
    );
    assert_eq!(
        ret, TC_ACT_SHOT,
        "the reply of a flow comes from its own sandbox's veth only"
    );
    assert_eq!(bpf.counter(counter::DROP_SPOOFED_FLOW), 1);
    assert!(
        bpf.ct()
            .iter()
            .all(|(_, e, _)| e.tcp & nat_common::ct::TCP_SYNACK == 0),
        "and it changes nothing in the flow"
    );
}

#[test]
fn udp_flows_are_established_by_an_exchange() {
    let mut bpf = load(1024, 1024);
    let out = bpf.run(EGRESS, &udp(SANDBOX, 5000, REMOTE, 53)).1;
    let port = inspect(&out).sport;
    bpf.run(EGRESS, &udp(SANDBOX, 5000, REMOTE, 53));
    assert_eq!(tables(&bpf), (0, 2), "no reply yet");
    let (_, out) = bpf.run(INGRESS, &udp(REMOTE, 53, HOST, port));
    assert_eq!(inspect(&out), seen(REMOTE, 53, SANDBOX, 5000));
    assert_eq!(tables(&bpf), (0, 2), "a reply alone does not establish it");
    bpf.run(EGRESS, &udp(SANDBOX, 5000, REMOTE, 53));
    assert_eq!(tables(&bpf), (2, 0), "the originator spoke after the reply");
    assert_eq!(bpf.counter(counter::CT_PROMOTED), 1);
}

#[test]
fn idle_and_orphaned_flows_expire_and_busy_ones_stay() {
    let mut bpf = load(1024, 1024);
    bpf.publish(None, 5353, 17, SANDBOX, 53, 21);
    for sport in [5000, 5001] {
        bpf.run(EGRESS, &udp(SANDBOX, sport, REMOTE, 53));
    }
    bpf.run(INGRESS, &udp(CLIENT, 7000, HOST, 5353));
    assert_eq!(bpf.ct().len(), 6);
    // The flow from port 5000 has been idle for longer than UDP's 30 s.
    let idle_ticks = clock::ticks(120_000_000_000);
    bpf.edit_ct(|k, e| {
        if k.sport == 5000u16.to_be() || e.dport == 5000u16.to_be() {
            e.last_seen = e.last_seen.saturating_sub(idle_ticks);
        }
    });
    let report = expire(&mut bpf.ebpf, &Timeouts::default(), &mut Default::default()).expect("expire");
    assert_eq!(report.expired, 2, "both entries of the idle flow");
    assert_eq!(bpf.ct().len(), 4);
    // The mapping's flow outlives its mapping only until the next GC.
    bpf.unpublish(None, 5353, 17);
    let report = expire(&mut bpf.ebpf, &Timeouts::default(), &mut Default::default()).expect("expire");
    assert_eq!(report.expired, 2, "both entries of the removed mapping's flow");
    let left = bpf.ct();
    assert_eq!(left.len(), 2);
    assert!(
        left.iter()
            .all(|(k, e, _)| k.sport == 5001u16.to_be() || e.dport == 5001u16.to_be())
    );
}
