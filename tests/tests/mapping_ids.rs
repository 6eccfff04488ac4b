//! Published mappings' ids and generation slots (issue 25): ids are sequential, kept
//! with the record and the same after a restart; a slot belongs to what the kernel sees of
//! a mapping, so mappings whose old hashed ids collide stay apart, records from before ids
//! keep their flows and counters, and an open container port outlives the mapping whose
//! id it had.
use std::{net::TcpStream, time::Duration};

use natlab::{HOST_UPLINK_IP, Lab, in_netns, wait_listening};
use nix::sys::signal::Signal;

/// The 32-bit id natd gave a mapping up to 452dbc4 (FNV-1a over the mapping's fields and
/// its sandbox's id), written here independently of natd: two mappings with the same one
/// shared a generation slot and counters.
fn hashed_mapping_id(host_port: u16, target: std::net::Ipv4Addr, target_port: u16, sandbox_id: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let tcp = [6u8];
    let fields: [&[u8]; 6] = [
        &[0; 4],
        &host_port.to_be_bytes(),
        &tcp,
        &target.octets(),
        &target_port.to_be_bytes(),
        &sandbox_id.to_be_bytes(),
    ];
    for b in fields.concat() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.max(1)
}

/// Two published ports whose hashed ids collide (a birthday search over host and
/// container ports: at 100,000 mappings a collision is more likely than not). Each
/// mapping owns its generation slot and its counters: withdrawing one ends its own flows
/// and no other's (issue 25: sequential mapping ids, persisted with the mapping).
#[test]
fn mappings_whose_old_hashed_ids_collide_stay_apart() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.ok(&["run", "--name", "pair", "--", "sleep", "infinity"]);
    let sandbox = lab.json(&["inspect", "pair"]);
    let sandbox_id = sandbox["id"].as_u64().expect("sandbox id") as u32;
    let target: std::net::Ipv4Addr = lab.sandbox_ip("pair").parse().unwrap();
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (20_000u16..30_000)
        .flat_map(|host| (1_000u16..1_100).map(move |ctr| (host, ctr)))
        .find_map(|(host, ctr)| {
            let id = hashed_mapping_id(host, target, ctr, sandbox_id);
            let earlier = seen.insert(id, (host, ctr))?;
            (earlier.0 != host && earlier.1 != ctr).then_some((earlier, (host, ctr)))
        })
        .expect("a collision among 1,000,000 ids");
    assert_eq!(
        hashed_mapping_id(a.0, target, a.1, sandbox_id),
        hashed_mapping_id(b.0, target, b.1, sandbox_id)
    );
    let ns = lab.netns_of("pair");
    let _servers: Vec<_> = [a.1, b.1]
        .iter()
        .map(|port| lab.spawn_in(ns.rsplit('/').next().unwrap(), &["socat", &format!("TCP-LISTEN:{port},fork,reuseaddr"), "EXEC:cat"]))
        .collect();
    assert!(wait_listening(&ns, "tcp", a.1) && wait_listening(&ns, "tcp", b.1));
    for (host, ctr) in [a, b] {
        lab.ok(&["publish", "pair", &format!("{host}:{ctr}")]);
    }
    let ids = |lab: &Lab| -> Vec<u64> {
        let mut ids: Vec<u64> = lab.json(&["inspect", "pair"])["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|m| m["id"].as_u64().expect("a mapping id"))
            .collect();
        ids.sort();
        ids
    };
    let before = ids(&lab);
    assert_eq!(before.len(), 2);
    assert_ne!(before[0], before[1], "each mapping its own id: {before:?}");

    let connect = |port: u16| {
        let stream = in_netns(&lab.ext_path(), || TcpStream::connect((HOST_UPLINK_IP, port)).expect("connect"));
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        stream
    };
    let (mut to_a, mut to_b) = (connect(a.0), connect(b.0));
    assert!(natlab::echo_line(&mut to_a, "a"), "the first mapping answers");
    for line in 0..10 {
        assert!(natlab::echo_line(&mut to_b, &format!("b{line}")), "the second mapping answers");
    }
    // Counted apart: the second mapping carried many more packets than the first.
    let stats = lab.json(&["stats"]);
    let packets = |host: u16| -> u64 {
        let all = stats["mappings"].as_array().expect("mappings");
        let mapping = all.iter().find(|m| m["mapping"].as_str().is_some_and(|s| s.contains(&format!(":{host}->"))));
        mapping.and_then(|m| m["packets"].as_u64()).unwrap_or_else(|| panic!("no counter for {host}: {stats}"))
    };
    assert!(packets(b.0) > packets(a.0), "each mapping its own counter: {stats}");

    lab.ok(&["unpublish", "pair", &a.0.to_string()]);
    assert!(!natlab::echo_line(&mut to_a, "a again"), "the withdrawn mapping's flow ends");
    assert!(natlab::echo_line(&mut to_b, "b again"), "the other mapping's flow lives on");

    // The ids are the records': the same after a restart.
    let kept = ids(&lab);
    lab.restart_natd().unwrap();
    assert_eq!(ids(&lab), kept, "mapping ids survive a restart");
    assert!(natlab::echo_line(&mut to_b, "b after restart"), "and so does the flow");

    // Records of a natd from before persisted ids (none stored): the start gives them ids,
    // and the mapping keeps its slot in the kernel (found by its fields, not its id), so
    // its flow and its counter carry on.
    let counted = |lab: &Lab| -> u64 {
        let stats = lab.json(&["stats"]);
        stats["mappings"][0]["packets"].as_u64().unwrap_or_else(|| panic!("one counter: {stats}"))
    };
    let packets_before = counted(&lab);
    lab.stop_natd(Signal::SIGTERM);
    {
        let (mut store, state) = natd::state::Store::open(&lab.state_dir).expect("open natd's store");
        let mut record = state.sandboxes["pair"].clone();
        record.ports.iter_mut().for_each(|m| m.id = 0);
        store.commit(&[natd::state::Change::PutSandbox(record)]).expect("write an id-less record");
    }
    lab.restart_natd().unwrap();
    let renumbered = ids(&lab);
    assert!(renumbered[0] > kept[0], "a new id from the counter: {renumbered:?} (was {kept:?})");
    lab.restart_natd().unwrap();
    assert_eq!(ids(&lab), renumbered, "and kept");
    assert!(natlab::echo_line(&mut to_b, "b after the ids changed"), "the flow lives on");
    assert!(counted(&lab) > packets_before, "its counter carries on from {packets_before}");
}

/// `gateway_mode_ipv4=routed`: `-p 8080:80 -p 8081:80` open container port 80 on the
/// sandbox's address once, under the first mapping's id. Withdrawing that mapping moves
/// the open port to the other's id and nothing else: its flows carry on. Withdrawing the
/// last one closes the port and ends them (the control).
#[test]
fn an_open_container_port_outlives_the_mapping_whose_id_it_had() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.ok(&["network", "create", "-o", "com.docker.network.bridge.gateway_mode_ipv4=routed", "r4"]);
    lab.run_script("web", &["--network", "r4", "-p", "8080:80", "-p", "8081:80"], "socat TCP-LISTEN:80,fork,reuseaddr EXEC:cat");
    assert!(wait_listening(&lab.netns_of("web"), "tcp", 80));
    let subnet = lab.json(&["network", "inspect", "r4"])["subnet"].as_str().expect("subnet").to_string();
    lab.ext_ok(&["ip", "route", "add", &subnet, "via", HOST_UPLINK_IP]);
    let web: std::net::Ipv4Addr = lab.sandbox_ip("web").parse().unwrap();
    let mut stream = in_netns(&lab.ext_path(), || TcpStream::connect((web, 80)).expect("connect to the open port"));
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(natlab::echo_line(&mut stream, "open"));
    lab.ok(&["unpublish", "web", "8080"]);
    assert!(natlab::echo_line(&mut stream, "still open"), "the port is still open: its flow lives on");
    lab.ok(&["unpublish", "web", "8081"]);
    assert!(!natlab::echo_line(&mut stream, "closed"), "control: the port closed, its flow ends");
}
