//! The host-bound miss filter (`nat_common::port_marks`) in the bytes the programs write
//! (BPF_PROG_TEST_RUN): a TCP or UDP packet from outside to a port no flow, mapping or
//! published port uses skips natd's lookups and goes to the host as it came; every port
//! natd may receive on is marked by whoever adds it (the programs for flows and mappings,
//! natd's map writer for published ports) before a packet can need it; natd's tick
//! clears the marks of ports nothing uses, never one made while it walked the tables.
use natlab::bpf::prelude::*;

use aya::maps::HashMap;
use nat_common::{Port4Key, Port4Target, Snat4Key, Snat4Owner, SnatMapping, names::map};
use natlab::{
    bpf::{Bpf, CLIENT, HOST, SANDBOX},
    frames::{Flags, SYN, ack, inspect, seen, segment, tcp, udp},
};

const TCP: u8 = 6;
const UDP: u8 = 17;

fn load() -> Bpf {
    natlab::require_root();
    Bpf::load(1024).expect("natd's eBPF object loads in a private namespace")
}

/// Empties a hash map of the object (a table the test wants to find nothing in).
fn clear<K: aya::Pod, V: aya::Pod>(bpf: &mut Bpf, name: &str) -> usize {
    let mut table: HashMap<_, K, V> = HashMap::try_from(bpf.ebpf.map_mut(name).expect(name)).expect(name);
    let keys: Vec<K> = table.keys().filter_map(Result::ok).collect();
    keys.iter().filter(|k| table.remove(k).is_ok()).count()
}

/// Mechanism, with its control: a published port written behind natd's back (no mark)
/// is not even looked up while the filter is on: the SYN reaches the host untranslated.
/// With the filter off, or for a port published through natd's writer (marked), the
/// same lookup finds the port and the SYN is translated to the sandbox.
#[test]
fn packets_to_unmarked_ports_skip_the_lookups() {
    let mut bpf = load();
    bpf.publish(None, 8080, TCP, SANDBOX, 80, 11);
    assert_ne!(bpf.port_mark(TCP, 8080), 0, "natd's writer marks what it publishes");
    let (ret, out) = bpf.run(INGRESS, &segment(CLIENT, 40000, HOST, 8080, 1000, SYN));
    assert_eq!((ret, inspect(&out)), (PASS, seen(CLIENT, 40000, SANDBOX, 80)), "control: a marked port");

    let unmarked = {
        let mut ports: HashMap<_, Port4Key, Port4Target> =
            HashMap::try_from(bpf.ebpf.map_mut(map::PORTS4).expect("ports")).expect("ports");
        let (key, target) = ports.iter().next().expect("the published port").expect("entry");
        let key = Port4Key { port: 8090u16.to_be(), ..key };
        ports.insert(key, target, 0).expect("a port written behind natd's back");
        key
    };
    assert_eq!(bpf.port_mark(TCP, 8090), 0);
    let syn = segment(CLIENT, 40001, HOST, u16::from_be(unmarked.port), 1000, SYN);
    let (ret, out) = bpf.run(INGRESS, &syn);
    assert_eq!((ret, inspect(&out)), (PASS, seen(CLIENT, 40001, HOST, 8090)), "not looked up: the host's");
    assert_eq!(out, syn, "the frame untouched");

    bpf.port_filter(false);
    let (_, out) = bpf.run(INGRESS, &syn);
    assert_eq!(inspect(&out), seen(CLIENT, 40001, SANDBOX, 80), "control: the filter off, the lookup finds it");
}

/// The invariant the filter rests on: every port a packet from outside may be natd's on
/// is marked as soon as it is, by whoever made it so, and nothing else is. Masqueraded
/// flows (their NAT port, TCP and UDP apart), a published port; the host's own ports
/// stay unmarked, and packets to them pass as they came.
#[test]
fn every_port_natd_may_receive_on_is_marked_by_whoever_adds_it() {
    let mut bpf = load();
    assert_eq!(bpf.port_mark(UDP, 61000), 0, "nothing marked at first");
    let (_, out) = bpf.run(EGRESS, &udp(SANDBOX, 5353, REMOTE, 53));
    let udp_port = inspect(&out).sport;
    assert_ne!(bpf.port_mark(UDP, udp_port), 0, "the programs mark a mapping's NAT port (UDP {udp_port})");
    let (_, out) = bpf.run(EGRESS, &tcp(SANDBOX, 5555, REMOTE, 443, true));
    let tcp_port = inspect(&out).sport;
    assert_ne!(bpf.port_mark(TCP, tcp_port), 0, "and a TCP one (TCP {tcp_port})");
    if tcp_port != udp_port {
        assert_eq!(bpf.port_mark(TCP, udp_port), 0, "per protocol: the UDP port is not TCP's");
    }
    // The replies, filter on, come back translated: their ports are marked.
    let (_, out) = bpf.run(INGRESS, &udp(REMOTE, 53, HOST, udp_port));
    assert_eq!(inspect(&out), seen(REMOTE, 53, SANDBOX, 5353));
    let (_, out) = bpf.run(INGRESS, &tcp(REMOTE, 443, HOST, tcp_port, false));
    assert_eq!(inspect(&out), seen(REMOTE, 443, SANDBOX, 5555));
    // The host's own service: unmarked, its packets pass untouched.
    assert_eq!(bpf.port_mark(TCP, 22), 0, "the host's ssh is nothing of natd's");
    let ssh = segment(CLIENT, 40000, HOST, 22, 1000, SYN);
    let (ret, out) = bpf.run(INGRESS, &ssh);
    assert_eq!((ret, out), (PASS, ssh));
}

/// natd's tick: once the flows and the mapping are gone, the mark of their port goes with
/// the sweep, but only a mark made before the tick's walk of the tables began (a flow made
/// during the walk may be missing from it: its fresh mark stays). Published ports and
/// ports of flows that remain keep theirs.
#[test]
fn the_tick_clears_only_marks_nothing_uses_made_before_its_walk() {
    let mut bpf = load();
    bpf.publish(None, 8080, TCP, SANDBOX, 80, 11);
    let (_, out) = bpf.run(EGRESS, &udp(SANDBOX, 5353, REMOTE, 53));
    let gone_port = inspect(&out).sport;
    let marked_at = bpf.port_mark(UDP, gone_port);
    assert_ne!(marked_at, 0);
    // The flow and its mapping end.
    assert!(bpf.clear_embryonic() + bpf.clear_established() > 0);
    assert_eq!(clear::<Snat4Key, SnatMapping>(&mut bpf, map::SNAT4), 1, "the flow's mapping");
    clear::<Port4Key, Snat4Owner>(&mut bpf, map::SNAT4_PORTS);
    clear::<Port4Key, Snat4Owner>(&mut bpf, map::SNAT4_SHARED);
    // Another sandbox's flow stays (its own port).
    let (_, out) = bpf.run(EGRESS, &udp([172, 20, 0, 3], 6000, REMOTE, 53));
    let kept_port = inspect(&out).sport;
    assert_ne!(kept_port, gone_port);

    assert_eq!(bpf.expire_and_sweep(marked_at), 0, "a mark made when the walk began stays");
    assert_eq!(bpf.port_mark(UDP, gone_port), marked_at);
    assert_eq!(bpf.expire_and_sweep(marked_at + 1), 1, "one made before it goes");
    assert_eq!(bpf.port_mark(UDP, gone_port), 0);
    assert_eq!(bpf.expire_and_sweep(u32::MAX), 0, "nothing else is unused");
    assert_ne!(bpf.port_mark(UDP, kept_port), 0, "a remaining flow's port");
    assert_ne!(bpf.port_mark(TCP, 8080), 0, "a published port");
    // Unpublished, its port goes at the next tick.
    bpf.unpublish(None, 8080, TCP);
    assert_eq!(bpf.expire_and_sweep(u32::MAX), 1);
    assert_eq!(bpf.port_mark(TCP, 8080), 0);
}

/// A flow whose handshake completes moves from the embryonic table to the established one:
/// natd's tick walks the established table first, so a move between the two walks hides
/// the flow from both. The move marks its port afresh, so that tick's sweep (which clears
/// only marks older than its walk) keeps it. Shown on a masqueraded flow whose mark is made
/// old by hand before its handshake completes; control: the SYN-ACK alone (no move)
/// leaves the old mark as it is.
#[test]
fn a_flow_moved_to_the_established_table_is_marked_afresh() {
    let mut bpf = load();
    let (_, out) = bpf.run(EGRESS, &segment(SANDBOX, 5555, REMOTE, 443, 1000, SYN));
    let nat_port = inspect(&out).sport;
    bpf.set_port_mark(TCP, nat_port, 1);
    let syn_ack = Flags {
        syn: true,
        ack: Some(1001),
        ..Flags::default()
    };
    let (_, out) = bpf.run(INGRESS, &segment(REMOTE, 443, HOST, nat_port, 7000, syn_ack));
    assert_eq!(inspect(&out), seen(REMOTE, 443, SANDBOX, 5555));
    assert_eq!(bpf.port_mark(TCP, nat_port), 1, "control: no move, the old mark stays");
    bpf.run(EGRESS, &segment(SANDBOX, 5555, REMOTE, 443, 1001, ack(7001)));
    assert!(bpf.ct().iter().all(|(_, _, established)| *established), "the flow moved");
    assert!(bpf.port_mark(TCP, nat_port) > 1, "the move marked the port afresh");
}
