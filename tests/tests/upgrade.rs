//! Restarts that change what is pinned, with connections held through them: a larger
//! connection table, a program running on maps that are not natd's (what an older natd
//! leaves on a link whose maps were replaced), a layout newer than this natd (a
//! downgrade). natd must keep every flow, move every link (TC and cgroup) to its own
//! programs on the pinned maps, and refuse what it cannot read with nothing changed.
use std::{
    collections::BTreeMap,
    net::{TcpStream, UdpSocket},
    os::fd::AsFd as _,
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::MapInfo;
use nat_common::names::{map, program};
use natlab::{EXT_IP, HOST_UPLINK_IP, Lab, echo_line, in_netns, wait_listening};

const TIMEOUT: Duration = Duration::from_secs(3);

/// The ids of the maps pinned under the lab's `maps` directory, by name.
fn pinned_maps(lab: &Lab) -> BTreeMap<String, u32> {
    std::fs::read_dir(lab.bpffs.join("maps"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let info = MapInfo::from_pin(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().to_string(), info.id()))
        })
        .collect()
}

/// Every pinned link: (pin name, the ids of the maps its program uses).
fn links(lab: &Lab) -> Vec<(String, Vec<u32>)> {
    programs_on_links(lab).into_iter().map(|l| (l.name, l.maps)).collect()
}

/// A pinned link and the program it runs.
struct OnLink {
    name: String,
    id: u32,
    /// The kernel's tag of the program's instructions.
    tag: u64,
    maps: Vec<u32>,
}

/// Every pinned link, by name.
fn programs_on_links(lab: &Lab) -> Vec<OnLink> {
    let programs: BTreeMap<u32, (u64, Vec<u32>)> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), (p.tag(), p.map_ids().ok().flatten().unwrap_or_default())))
        .collect();
    let mut out: Vec<OnLink> = std::fs::read_dir(lab.bpffs.join("links"))
        .unwrap()
        .flatten()
        .map(|e| {
            let link = natd::sys::bpf_link::open(&e.path()).expect("open pinned link");
            let id = natd::sys::bpf_link::program_id(link.as_fd()).expect("link info");
            let (tag, maps) = programs.get(&id).cloned().unwrap_or_default();
            OnLink {
                name: e.file_name().to_string_lossy().to_string(),
                id,
                tag,
                maps,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The layout version a pinned `NATD_LAYOUT` records.
fn pinned_layout(pin: &std::path::Path) -> u32 {
    let data = aya::maps::MapData::from_pin(pin).expect("the layout record");
    aya::maps::Array::<_, u32>::try_from(aya::maps::Map::from_map_data(data).expect("a map"))
        .expect("an array")
        .get(&0, 0)
        .expect("its value")
}

/// A connection through an echo server, opened from `ns`.
fn connect(ns: &str, addr: &str, port: u16) -> TcpStream {
    let stream = in_netns(ns, || TcpStream::connect_timeout(&format!("{addr}:{port}").parse().unwrap(), TIMEOUT))
        .expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// `natd --check-upgrade` with the lab's settings and `extra`: (exit code, output).
fn check_upgrade(lab: &Lab, extra: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(natlab::natd_bin())
        .args(lab.base_args())
        .args(["--dataplane", "ebpf", "--check-upgrade"])
        .args(extra)
        .output()
        .expect("natd --check-upgrade");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// A UDP socket in `ns` talking to `addr:port` only.
fn udp_to(ns: &str, addr: &str, port: u16) -> UdpSocket {
    let socket = in_netns(ns, || UdpSocket::bind("0.0.0.0:0")).expect("bind");
    socket.connect(format!("{addr}:{port}")).expect("connect");
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    socket
}

/// One datagram through an echo: whether it came back.
fn udp_echo(socket: &UdpSocket, text: &str) -> bool {
    let mut buf = [0u8; 64];
    socket.send(text.as_bytes()).is_ok() && socket.recv(&mut buf).is_ok_and(|n| &buf[..n] == text.as_bytes())
}

/// New connections (a pair, in and out) every 100 ms from a thread, each held, until
/// `stop`: flows started while natd restarts.
struct Opener {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(&'static str, TcpStream)>>,
}

impl Opener {
    fn start(lab: &Lab) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, ext, cli) = (stop.clone(), lab.ext_path(), lab.netns_of("cli"));
        let thread = std::thread::spawn(move || {
            let mut opened = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                opened.push(("inbound, opened during the restart", connect(&ext, HOST_UPLINK_IP, 8081)));
                opened.push(("outbound, opened during the restart", connect(&cli, EXT_IP, 9000)));
                std::thread::sleep(Duration::from_millis(100));
            }
            opened
        });
        Self { stop, thread }
    }

    fn stop(self) -> Vec<(&'static str, TcpStream)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("opener")
    }
}

/// The held connections and UDP flows that no longer echo.
fn broken(held: &mut [(&'static str, TcpStream)], datagrams: &[(&'static str, UdpSocket)]) -> Vec<&'static str> {
    let mut broken: Vec<&'static str> = held
        .iter_mut()
        .filter_map(|(what, stream)| (!echo_line(stream, "after")).then_some(*what))
        .collect();
    broken.extend(datagrams.iter().filter(|(_, s)| !udp_echo(s, "after")).map(|(w, _)| *w));
    broken
}

/// A published port's server (an echo on 81, published 8081, and a UDP echo on 53,
/// published 5353), a client sandbox and echo servers outside (TCP 9000, UDP 9001); a
/// connection each way, held, and a UDP flow each way.
fn held_connections(lab: &Lab) -> (Vec<natlab::Background>, Vec<(&'static str, TcpStream)>, Vec<(&'static str, UdpSocket)>) {
    lab.run_script(
        "srv",
        &["-p", "8081:81", "-p", "5353:53/udp"],
        "socat TCP-LISTEN:81,fork,reuseaddr EXEC:cat & socat UDP-LISTEN:53,fork,reuseaddr PIPE & wait",
    );
    lab.ok(&["run", "--name", "cli"]);
    let outside = vec![
        lab.spawn_in(&lab.ext_ns, &["socat", "TCP-LISTEN:9000,fork,reuseaddr", "EXEC:cat"]),
        lab.spawn_in(&lab.ext_ns, &["socat", "UDP-LISTEN:9001,fork,reuseaddr", "PIPE"]),
    ];
    assert!(wait_listening(&lab.netns_of("srv"), "tcp", 81) && wait_listening(&lab.netns_of("srv"), "udp", 53));
    assert!(wait_listening(&lab.ext_path(), "tcp", 9000) && wait_listening(&lab.ext_path(), "udp", 9001));
    let datagrams = vec![
        ("UDP inbound (published port)", udp_to(&lab.ext_path(), HOST_UPLINK_IP, 5353)),
        ("UDP outbound (masqueraded)", udp_to(&lab.netns_of("cli"), EXT_IP, 9001)),
    ];
    for (what, socket) in &datagrams {
        assert!(udp_echo(socket, "before"), "{what}: works before the restart");
    }
    let mut held = vec![
        ("inbound (published port)", connect(&lab.ext_path(), HOST_UPLINK_IP, 8081)),
        ("outbound (masqueraded)", connect(&lab.netns_of("cli"), EXT_IP, 9000)),
    ];
    for (what, stream) in &mut held {
        assert!(echo_line(stream, "before"), "{what}: works before the restart");
    }
    (outside, held, datagrams)
}

/// Docker-style `--conntrack-max` (nf_conntrack_max) changed across a restart: the new
/// size takes effect, every tracked flow is carried into the new table (also flows the
/// old programs start between the snapshot and the switch), and every link's program now
/// uses the pinned tables, so the flows natd lists and expires are the ones the packets
/// use. Control: the same check before the restart sees the old table on every link.
#[test]
fn a_larger_connection_table_takes_effect_on_restart_with_every_flow_kept() {
    let mut lab = Lab::started(&["--dataplane", "ebpf", "--conntrack-max", "4096"]);
    let (_outside, mut held, datagrams) = held_connections(&lab);
    let udp_before = lab.udp_flows();
    assert!(udp_before.len() >= 2, "both UDP flows tracked: {udp_before:?}");
    let before = pinned_maps(&lab);
    // The IPv4 programs use NATD_CT4, the IPv6 ones NATD_CT6 (dormant here: no IPv6
    // network, so it keeps its few entries and is not replaced).
    let uses = |links: &[(String, Vec<u32>)], tables: &[u32]| {
        links.iter().filter(|(_, used)| used.iter().any(|id| tables.contains(id))).count()
    };
    let tc_links = links(&lab).iter().filter(|(name, _)| !name.starts_with("cgroup-")).count();
    assert!(tc_links >= 8, "edge and sandbox links: {tc_links}");
    let tables = |maps: &BTreeMap<String, u32>| [maps[map::CT4], maps[map::CT6]];
    assert_eq!(uses(&links(&lab), &tables(&before)), tc_links, "control: every TC link on the pinned tables");

    // What a start would do, said first, changing nothing.
    let (code, plan) = check_upgrade(&lab, &["--conntrack-max", "8192"]);
    assert_eq!(code, 0, "{plan}");
    assert!(plan.contains("NATD_CT4: replaced (4096 entries -> 8192)") && plan.contains("a start would go ahead"), "{plan}");
    assert!(plan.contains("NATD_PORTS4: adopted as it is"), "{plan}");
    assert_eq!(pinned_maps(&lab), before, "--check-upgrade changed nothing");

    // New connections all through the restart, each held: flows the old programs start
    // after the snapshot of their table, up to the switch, must come over too.
    let opener = Opener::start(&lab);
    let started = Instant::now();
    lab.start_natd(&["--dataplane", "ebpf", "--conntrack-max", "8192"]).expect("restart");
    let restart = started.elapsed();
    let during = opener.stop();
    let opened_during = during.len();
    held.extend(during);
    let after = pinned_maps(&lab);
    assert_eq!(MapInfo::from_pin(lab.bpffs.join("maps").join(map::CT4)).unwrap().max_entries(), 8192);
    assert_ne!(after[map::CT4], before[map::CT4], "a new table");
    assert_eq!(after[map::PORTS4], before[map::PORTS4], "the others kept");
    let now = links(&lab);
    assert_eq!(uses(&now, &tables(&after)), tc_links, "every TC link uses the pinned tables: {now:?}");
    assert_eq!(uses(&now, &[before[map::CT4]]), 0, "none the old NATD_CT4");
    assert_eq!(after[map::CT6], before[map::CT6], "the dormant NATD_CT6 kept");

    let broken = broken(&mut held, &datagrams);
    let udp_after = lab.udp_flows();
    assert!(
        udp_before.is_subset(&udp_after),
        "the UDP flows are carried with their translation (NAT port) unchanged: {udp_before:?} -> {udp_after:?}"
    );
    let listed = lab.json(&["ct", "ls"]).as_array().map(Vec::len).unwrap_or(0);
    println!(
        "UPGRADE conntrack-max 4096->8192: restart {} ms, TCP connections held {} ({opened_during} opened during the \
         restart) and UDP flows {}, broken {}, flows listed after {listed}",
        restart.as_millis(),
        held.len(),
        datagrams.len(),
        broken.len()
    );
    assert!(broken.is_empty(), "broken by the restart: {broken:?}\n{}", lab.natd_log());
    // Both held flows, and a new one made after the restart, are the ones natd lists.
    let mut fresh = connect(&lab.ext_path(), HOST_UPLINK_IP, 8081);
    assert!(echo_line(&mut fresh, "new"));
    let flows = lab.json(&["ct", "ls"]);
    let to_8081 = flows.as_array().unwrap().iter().filter(|f| f.to_string().contains("8081")).count();
    assert!(to_8081 >= 2, "the held and the new published-port flows are listed: {flows}");

    // A table smaller than the flows it holds would drop established flows: refused, by
    // --check-upgrade and by the start, with nothing changed; the flows go on.
    // The size asked for is one entry short of what the established table holds now.
    let established = {
        let data = aya::maps::MapData::from_pin(lab.bpffs.join("maps").join(map::CT4)).unwrap();
        let table = aya::maps::HashMap::<_, nat_common::Ct4Key, nat_common::Ct4Entry>::try_from(
            aya::maps::Map::from_map_data(data).unwrap(),
        )
        .unwrap();
        table.keys().filter_map(Result::ok).count()
    };
    assert!(established >= 4, "{established} established entries");
    let short = (established - 1).to_string();
    let pinned = pinned_maps(&lab);
    let (code, plan) = check_upgrade(&lab, &["--conntrack-max", &short]);
    assert!(code == 78 && plan.contains(&format!("more than --conntrack-max {short}")), "{code}: {plan}");
    let err = lab.start_natd(&["--dataplane", "ebpf", "--conntrack-max", &short]).expect_err("refused");
    assert!(err.to_string().contains("Nothing was changed"), "{err}");
    assert_eq!(pinned_maps(&lab), pinned, "nothing pinned changed");
    lab.start_natd(&["--dataplane", "ebpf", "--conntrack-max", "8192"]).expect("back");
    for (what, stream) in &mut held {
        assert!(echo_line(stream, "still"), "{what}: still works");
    }
}

/// The one object directory under the lab's `programs` directory.
fn programs_dir(lab: &Lab) -> std::path::PathBuf {
    let objects: Vec<_> = std::fs::read_dir(lab.bpffs.join("programs")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(objects.len(), 1, "one object's programs pinned: {objects:?}");
    objects[0].clone()
}

/// The ids of the TC programs pinned for the next start, by name.
fn pinned_programs(lab: &Lab) -> BTreeMap<String, u32> {
    let dir = programs_dir(lab);
    program::TC
        .iter()
        .filter_map(|name| {
            let pinned = aya::programs::SchedClassifier::from_pin(dir.join(name)).ok()?;
            Some((name.to_string(), pinned.info().ok()?.id()))
        })
        .collect()
}

/// A restart of the same natd on the same maps takes the programs the last start pinned
/// instead of verifying its own again (seconds at host scale): every link keeps the very
/// program it ran (same id), the held flows go on, and a new flow is tracked in the
/// pinned table. Control: with the pinned programs filed under another object (what an
/// upgrade finds), the start verifies and pins its own again, and removes the others.
#[test]
fn a_restart_with_the_same_object_adopts_the_pinned_programs() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    let (_outside, mut held, datagrams) = held_connections(&lab);
    let on_links = |lab: &Lab| -> BTreeMap<String, u32> { programs_on_links(lab).into_iter().map(|l| (l.name, l.id)).collect() };
    let links_before = on_links(&lab);
    let pinned_before = pinned_programs(&lab);
    assert_eq!(pinned_before.len(), program::TC.len(), "every TC program pinned: {pinned_before:?}");

    let programs = |lab: &Lab| lab.json(&["info"])["dataplane_detail"]["programs"].as_str().unwrap_or_default().to_string();
    assert_eq!(programs(&lab), "loaded and verified at start", "control: the first start verifies");
    lab.restart_natd().expect("restart");
    assert_eq!(programs(&lab), natd::dataplane::ebpf::ADOPTED, "{}", lab.natd_log());
    assert_eq!(pinned_programs(&lab), pinned_before, "the pinned programs themselves, none loaded anew");
    assert_eq!(on_links(&lab), links_before, "every link runs the program it ran");
    // The filter stays on without marking every port in use again: these programs kept them.
    let filter = &lab.json(&["info"])["dataplane_detail"]["port_filter"];
    assert_eq!(filter["on"], true, "{filter}");
    assert!(broken(&mut held, &datagrams).is_empty(), "held flows go on\n{}", lab.natd_log());
    let mut fresh = connect(&lab.ext_path(), HOST_UPLINK_IP, 8081);
    assert!(echo_line(&mut fresh, "new"));
    let flows = lab.json(&["ct", "ls"]);
    let to_8081 = flows.as_array().unwrap().iter().filter(|f| f.to_string().contains("8081")).count();
    assert!(to_8081 >= 2, "the held and the new published-port flows are listed: {flows}");
    // Attached with the adopted programs: a sandbox made after the restart is published.
    lab.run_script("late", &["-p", "8090:80"], &natlab::whoami(80));
    assert!(wait_listening(&lab.netns_of("late"), "tcp", 80));
    let mut line = String::new();
    std::io::Read::read_to_string(&mut connect(&lab.ext_path(), HOST_UPLINK_IP, 8090), &mut line).unwrap();
    assert_eq!(line.trim(), EXT_IP, "the new sandbox's published port answers");
    assert_eq!(pinned_programs(&lab), pinned_before, "still the adopted programs");

    // Pinned under another object's name: what an upgraded natd finds.
    std::fs::rename(programs_dir(&lab), lab.bpffs.join("programs").join("0".repeat(64))).unwrap();
    lab.restart_natd().expect("restart");
    assert_eq!(programs(&lab), "loaded and verified at start");
    let reloaded = pinned_programs(&lab);
    assert_eq!(reloaded.len(), program::TC.len());
    assert!(
        reloaded.iter().all(|(name, id)| pinned_before[name] != *id),
        "loaded and pinned anew: {pinned_before:?} -> {reloaded:?}"
    );
    assert!(broken(&mut held, &datagrams).is_empty(), "held flows go on");
}

/// An older natd's program left on a cgroup link, running on maps that are not natd's
/// (here: a copy of the object loaded with maps of its own): before this natd switched
/// cgroup links too, the host's connections to 127.0.0.1:<published port> went through
/// that frozen copy forever. After a restart the link runs natd's program on the pinned
/// maps, and the host reaches the published port on loopback again.
#[test]
fn a_cgroup_link_on_foreign_maps_is_switched_to_the_pinned_ones() {
    use aya::programs::CgroupSockAddr;
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.run_script("web", &["-p", "8080:80"], &natlab::whoami(80));
    assert!(wait_listening(&lab.netns_of("web"), "tcp", 80));
    let host_net = format!("--net={}", lab.host_path());
    let host_loopback = || natlab::tcp_line(&["nsenter", &host_net], "127.0.0.1", 8080);
    assert!(host_loopback().is_some(), "control: the host reaches its published port on loopback");
    let pin = lab.bpffs.join("links").join(format!("cgroup-{}", program::CONNECT4));
    assert!(pin.exists(), "natd's connect4 hook is pinned");
    lab.stop_natd(nix::sys::signal::Signal::SIGTERM);

    let scratch = std::path::PathBuf::from(format!("{}-scratch", lab.bpffs.display()));
    std::fs::create_dir_all(&scratch).unwrap();
    {
        let mut other = aya::EbpfLoader::new().default_map_pin_directory(&scratch).load(natd::EBPF_OBJECT).unwrap();
        let prog: &mut CgroupSockAddr = other.program_mut(program::CONNECT4).unwrap().try_into().unwrap();
        prog.load().unwrap();
        natd::sys::bpf_link::update_pinned(&pin, prog.fd().unwrap()).expect("put the stand-in on the link");
    }
    for entry in std::fs::read_dir(&scratch).unwrap().flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    let _ = std::fs::remove_dir(&scratch);
    let pinned: Vec<u32> = pinned_maps(&lab).into_values().collect();
    let on_pinned = |lab: &Lab| {
        links(lab)
            .into_iter()
            .find(|(name, _)| name == &format!("cgroup-{}", program::CONNECT4))
            .is_some_and(|(_, maps)| !maps.is_empty() && maps.iter().all(|m| pinned.contains(m)))
    };
    assert!(!on_pinned(&lab), "the stand-in runs on maps of its own");
    assert!(host_loopback().is_none(), "and does not know the published port");

    lab.restart_natd().unwrap();
    assert!(on_pinned(&lab), "natd's program on the pinned maps: {:?}", links(&lab));
    let report = lab.json(&["info"])["last_reconcile"].to_string();
    assert!(report.contains("program replaced atomically"), "{report}");
    assert!(host_loopback().is_some(), "the host reaches its published port on loopback again");
}

/// A layout newer than this natd's (a downgrade) is refused with the reason, by the start
/// and by `--check-upgrade`, and nothing pinned changes; with the layout back, natd starts.
#[test]
fn a_newer_layout_is_refused_with_nothing_changed() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.run_script("web", &["-p", "8080:80"], &natlab::whoami(80));
    assert!(wait_listening(&lab.netns_of("web"), "tcp", 80));
    lab.stop_natd(nix::sys::signal::Signal::SIGTERM);
    let set_layout = |lab: &Lab, version: u32| {
        let data = aya::maps::MapData::from_pin(lab.bpffs.join("maps").join(map::LAYOUT)).expect("pinned layout");
        let mut array = aya::maps::Array::<_, u32>::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
        assert_eq!(array.get(&0, 0).unwrap(), nat_common::LAYOUT_VERSION, "natd recorded its layout");
        array.set(0, version, 0).unwrap();
    };
    let newer = nat_common::LAYOUT_VERSION + 1;
    set_layout(&lab, newer);
    let pins = |lab: &Lab| (pinned_maps(lab), links(lab));
    let before = pins(&lab);

    let (code, plan) = check_upgrade(&lab, &[]);
    assert_eq!(code, 78, "{plan}");
    assert!(plan.contains("a start would refuse") && plan.contains(&format!("layout version {newer}")), "{plan}");
    let err = lab.restart_natd().expect_err("a start over a newer layout fails");
    assert!(err.to_string().contains("newer than this natd's") && err.to_string().contains("Nothing was changed"), "{err}");
    assert_eq!(pins(&lab), before, "nothing pinned changed");
    assert!(Path::new(&lab.bpffs.join("maps").join(map::CT4)).exists());

    // The newer natd's pins back as they were: this one's layout again.
    let data = aya::maps::MapData::from_pin(lab.bpffs.join("maps").join(map::LAYOUT)).unwrap();
    let mut array = aya::maps::Array::<_, u32>::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
    array.set(0, nat_common::LAYOUT_VERSION, 0).unwrap();
    lab.restart_natd().expect("starts over its own layout");
    assert_eq!(
        natlab::tcp_line(&["ip", "netns", "exec", &lab.ext_ns], HOST_UPLINK_IP, 8080).as_deref(),
        Some(EXT_IP)
    );
}

/// During an upgrade the old natctl meets the new natd (and the reverse): natd says which
/// API version it speaks on every answer, and takes the request shapes of earlier versions
/// (API 1.0's `subnet` was one string). The reverse direction, natctl naming an older natd
/// instead of printing serde's message, is tested in `natd::client` against that natd's
/// recorded answer.
#[test]
fn natd_says_its_api_version_and_takes_earlier_request_shapes() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    assert_eq!(lab.json(&["info"])["api_version"], natd::api::API_VERSION);
    let curl = |args: &[&str]| {
        let mut full = vec!["-si", "--unix-socket", lab.socket.to_str().unwrap()];
        full.extend_from_slice(args);
        String::from_utf8_lossy(&natlab::sh("curl", &full).stdout).to_string()
    };
    let header = format!("{}: {}", natd::api::API_VERSION_HEADER, natd::api::API_VERSION);
    let answer = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"name":"old","subnet":"10.99.0.0/24","gateway":null}"#,
        "http://natd/v1/networks",
    ]);
    assert!(answer.starts_with("HTTP/1.1 20"), "a 1.0 request is taken: {answer}");
    assert!(answer.to_lowercase().contains(&header), "{answer}");
    assert_eq!(lab.json(&["network", "inspect", "old"])["subnet"], "10.99.0.0/24");
    // Refusals and unknown paths say it too.
    let unknown = curl(&["http://natd/v1/nothing-here"]);
    assert!(unknown.starts_with("HTTP/1.1 404") && unknown.to_lowercase().contains(&header), "{unknown}");
}

/// A real upgrade from natd's datapath before layout versions: its eBPF object (2ebc2d1,
/// `tests/fixtures`, whose unrecorded layout is read as 1), run by this agent (a test
/// build loads it through `NATD_EBPF_OBJECT`), with TCP connections and UDP flows held both
/// ways and new connections opened all through the upgrade; then this natd over its pins.
/// Every connection goes on, the UDP flows keep their NAT ports, every TC and cgroup link
/// runs this natd's programs (new ids) on the pinned maps (the same maps, adopted; layout
/// 2 adds `NATD_PORT_MARKS`), the layout version is recorded, and the host-bound miss
/// filter is on with the ports of every flow marked (those programs marked none).
#[test]
fn an_upgrade_from_the_layout_before_versions_keeps_every_flow() {
    upgrade_keeps_every_flow("2ebc2d1", None);
}

/// The same from layout 1 as recorded (the last commit before layout 2, ad9fb4e): its
/// programs do not mark ports either, so every flow they made must be marked by the
/// upgrade (layout 1's converter) before the filter goes on.
#[test]
fn an_upgrade_from_layout_1_keeps_every_flow() {
    upgrade_keeps_every_flow("ad9fb4e", Some(1));
}

/// The same from layout 2 (the last commit before layout 3, 1e26666), whose hash tables
/// were preallocated: they are replaced by tables allocated by use, the flows and the
/// masquerade mappings (a sandbox's external port, RFC 4787 REQ-1) carried into them,
/// the configuration rewritten before any link switches.
#[test]
fn an_upgrade_from_layout_2_keeps_every_flow() {
    upgrade_keeps_every_flow("1e26666", Some(2));
}

/// The same from layout 3 (the last commit before layout 4, 32fdbf0), whose per-mapping
/// counters were a per-CPU array: replaced by one mmapable array of per-CPU regions, each
/// CPU's counters of each published mapping carried into its region.
#[test]
fn an_upgrade_from_layout_3_keeps_every_flow() {
    upgrade_keeps_every_flow("32fdbf0", Some(3));
}

/// Whether natd replaces a pinned map of an earlier layout: a hash table preallocated
/// (layout 3 allocates them by use, `BPF_F_NO_PREALLOC`).
fn preallocated_hash(info: &MapInfo) -> bool {
    const BPF_F_NO_PREALLOC: u32 = 1;
    info.map_type().is_ok_and(|t| t == aya::maps::MapType::Hash) && info.map_flags() & BPF_F_NO_PREALLOC == 0
}

/// Whether a pinned map is one this layout replaces: a preallocated hash table, or the
/// per-CPU array of per-mapping counters (layout 4 has one mmapable array of per-CPU
/// regions).
fn replaced_by_this_layout(name: &str, info: &MapInfo) -> bool {
    preallocated_hash(info)
        || (name == map::MAPPING_STATS && info.map_type().is_ok_and(|t| t == aya::maps::MapType::PerCpuArray))
}

/// Packets counted for published mappings, summed over every slot and CPU, read from the
/// pinned `NATD_MAPPING_STATS` whichever its layout (a per-CPU array before layout 4).
fn mapping_packets(lab: &Lab) -> u64 {
    let path = lab.bpffs.join("maps").join(map::MAPPING_STATS);
    let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_pin(&path).expect("pinned")).unwrap();
    match map {
        aya::maps::Map::PerCpuArray(data) => {
            let array = aya::maps::PerCpuArray::<_, nat_common::MappingStats>::try_from(aya::maps::Map::PerCpuArray(data)).unwrap();
            (0..array.len()).filter_map(|i| array.get(&i, 0).ok()).map(|v| v.iter().map(|s| s.packets).sum::<u64>()).sum()
        }
        aya::maps::Map::Array(data) => {
            let array = aya::maps::Array::<_, nat_common::MappingStats>::try_from(aya::maps::Map::Array(data)).unwrap();
            array.iter().filter_map(Result::ok).map(|s| s.packets).sum()
        }
        other => panic!("{} is neither array: {other:?}", map::MAPPING_STATS),
    }
}

/// The masquerade mappings pinned: (sandbox address, external address, port, protocol) ->
/// external port (None: a datapath from before mappings, 2ebc2d1).
fn masquerade_mappings(lab: &Lab) -> Option<BTreeMap<(u32, u32, u16, u8), u16>> {
    let data = aya::maps::MapData::from_pin(lab.bpffs.join("maps").join(map::SNAT4)).ok()?;
    let table: aya::maps::HashMap<_, nat_common::Snat4Key, nat_common::SnatMapping> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("a hash map");
    Some(
        table
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| ((k.internal, k.external, k.port, k.proto), v.port))
            .collect(),
    )
}

/// Runs the eBPF object of `commit` (`tests/fixtures`), whose pinned layout record is
/// `recorded`, holds flows through an upgrade to this natd and checks them (see above).
fn upgrade_keeps_every_flow(commit: &str, recorded: Option<u32>) {
    let fixture = format!("{}/fixtures/nat-ebpf-{commit}.o", env!("CARGO_MANIFEST_DIR"));
    let mut lab = Lab::new().expect("topology");
    lab.natd_env = vec![("NATD_EBPF_OBJECT".into(), fixture)];
    if let Some(version) = recorded {
        lab.natd_env.push(("NATD_EBPF_OBJECT_LAYOUT".into(), version.to_string()));
    }
    lab.start_natd(&["--dataplane", "ebpf"]).expect("the previous datapath starts");
    let layout_pin = lab.bpffs.join("maps").join(map::LAYOUT);
    assert_eq!(
        layout_pin.exists().then(|| pinned_layout(&layout_pin)),
        recorded,
        "natd runs the previous layout (only a test build, `--features failpoints` as `cargo xtask test` \
         builds it, honours NATD_EBPF_OBJECT)"
    );
    let (_outside, mut held, datagrams) = held_connections(&lab);
    let udp_before = lab.udp_flows();
    let maps_before = pinned_maps(&lab);
    // Replaced: the preallocated hash tables, the per-CPU counters. (The IPv6 tables are
    // dormant already: this agent, playing the previous datapath, sized them;
    // `table_memory.rs` makes full ones dormant.)
    let replaced: Vec<String> = maps_before
        .keys()
        .filter(|name| {
            MapInfo::from_pin(lab.bpffs.join("maps").join(name)).is_ok_and(|i| replaced_by_this_layout(name, &i))
        })
        .cloned()
        .collect();
    assert!(
        replaced.contains(&map::MAPPING_STATS.to_string())
            && (recorded.is_some_and(|v| v >= 3) || replaced.contains(&map::CT4.to_string())),
        "the previous layout's per-CPU counters (and before layout 3, preallocated tables): {replaced:?}"
    );
    let mappings_before = masquerade_mappings(&lab);
    assert!(mappings_before.as_ref().is_none_or(|m| !m.is_empty()), "the masqueraded flows made mappings");
    let links_before = programs_on_links(&lab);
    let counted_before = mapping_packets(&lab);
    assert!(counted_before > 0, "the published port's traffic counted by the previous datapath");
    let newest_before = aya::programs::loaded_programs().filter_map(Result::ok).map(|p| p.id()).max().unwrap_or(0);
    assert!(links_before.iter().any(|l| l.name.starts_with("cgroup-")), "cgroup links too");

    let opener = Opener::start(&lab);
    lab.natd_env.clear();
    let started = Instant::now();
    lab.restart_natd().expect("this natd starts over the previous one's pins");
    let switch = started.elapsed();
    held.extend(opener.stop());

    assert_eq!(pinned_layout(&layout_pin), nat_common::LAYOUT_VERSION, "the layout version recorded\n{}", lab.natd_log());
    let maps_after = pinned_maps(&lab);
    for (name, id) in &maps_before {
        if replaced.contains(name) {
            assert!(maps_after.get(name).is_some_and(|new| new != id), "{name} replaced");
            let info = MapInfo::from_pin(lab.bpffs.join("maps").join(name)).unwrap();
            assert!(!replaced_by_this_layout(name, &info), "{name} has this layout's definition");
        } else {
            assert_eq!(maps_after.get(name), Some(id), "{name} adopted as it was (same definition)");
        }
    }
    // The counters carried into the new array's regions (layout 4's converter); what the
    // previous programs counted between the read and the switch may be missing, what the
    // new ones count since adds up.
    let counted_after = mapping_packets(&lab);
    assert!(
        counted_after + 64 >= counted_before && counted_after > 0,
        "per-mapping counters carried over: {counted_before} packets before, {counted_after} after"
    );
    let mappings_after = masquerade_mappings(&lab).expect("NATD_SNAT4 pinned");
    for (key, port) in mappings_before.iter().flatten() {
        assert_eq!(mappings_after.get(key), Some(port), "masquerade mapping {key:?} carried with its port");
    }
    let pinned: Vec<u32> = maps_after.values().copied().collect();
    let links_after = programs_on_links(&lab);
    assert_eq!(
        links_after.iter().map(|l| &l.name).collect::<Vec<_>>(),
        links_before.iter().map(|l| &l.name).collect::<Vec<_>>(),
        "the same links"
    );
    // This natd's programs (loaded after the previous natd's), by kernel name (15 bytes,
    // which two pairs of programs share: a set of tags each).
    let mut ours: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for p in aya::programs::loaded_programs().filter_map(Result::ok).filter(|p| p.id() > newest_before) {
        if let Some(name) = p.name_as_str() {
            ours.entry(name.to_string()).or_default().push(p.tag());
        }
    }
    // Every link runs a program with this natd's instructions: switched where they changed
    // since the fixture (every TC program), adopted where they did not (the socket hooks);
    // on the pinned maps either way.
    let mut tc_switched = 0;
    for (old, new) in links_before.iter().zip(&links_after) {
        let program = new.name.rsplit(['-']).next().unwrap_or_default();
        let kernel_name: String = program.chars().take(15).collect();
        assert!(
            ours.get(&kernel_name).is_some_and(|tags| tags.contains(&new.tag)),
            "{}: runs this natd's {program}",
            new.name
        );
        if old.id != new.id && !new.name.starts_with("cgroup-") {
            tc_switched += 1;
        }
        assert!(new.maps.iter().any(|m| pinned.contains(m)), "{}: on the pinned maps ({:?})", new.name, new.maps);
        let foreign = new.maps.iter().filter(|m| !pinned.contains(m)).count();
        // Per-CPU working memory is never pinned: at most those.
        assert!(foreign <= 4, "{}: its program uses the pinned maps ({:?})", new.name, new.maps);
    }
    let tc_links = links_after.iter().filter(|l| !l.name.starts_with("cgroup-")).count();
    assert_eq!(tc_switched, tc_links, "every TC link switched (their programs changed since {commit})");
    let switched = links_before.iter().zip(&links_after).filter(|(o, n)| o.id != n.id).count();
    let broken = broken(&mut held, &datagrams);
    let udp_after = lab.udp_flows();
    println!(
        "UPGRADE from {commit}'s datapath: switch {} ms, TCP connections held {} ({} opened during the upgrade) and UDP \
         flows {}, broken {}, links switched {switched} of {}",
        switch.as_millis(),
        held.len(),
        held.len() - 2,
        datagrams.len(),
        broken.len(),
        links_after.len()
    );
    assert!(broken.is_empty(), "broken by the upgrade: {broken:?}\n{}", lab.natd_log());
    assert!(udp_before.is_subset(&udp_after), "UDP flows keep their NAT ports: {udp_before:?} -> {udp_after:?}");
    // Layout 1's converter: the previous programs marked nothing, so the ports of every
    // flow and published port were marked before the host-bound miss filter went on; the
    // held flows above answering through it is the proof that none was missed.
    let filter = &lab.json(&["info"])["dataplane_detail"]["port_filter"];
    assert_eq!(filter["on"], true, "the filter on after the upgrade: {filter}");
    assert!(filter["ports_marked"].as_u64().unwrap_or(0) >= 4, "published and NAT ports marked: {filter}");
    let flows = lab.json(&["ct", "ls"]);
    assert!(flows.as_array().unwrap().len() >= held.len(), "the flows are listed: {flows}");
}

/// A start whose programs the kernel refuses (a verifier rejection, injected in a test build
/// by the fail point `verify-programs`), asked to change a table size: the programs are
/// verified on maps of their own before any pin is replaced, so the running datapath keeps
/// its tables and every flow, and the next start does the change.
#[test]
fn a_start_refused_by_the_verifier_changes_nothing() {
    let mut lab = Lab::started(&["--dataplane", "ebpf", "--conntrack-max", "4096"]);
    let (_outside, mut held, datagrams) = held_connections(&lab);
    let before = pinned_maps(&lab);
    lab.natd_env = vec![("FAILPOINTS".into(), "verify-programs=return".into())];
    let err = lab
        .start_natd(&["--dataplane", "ebpf", "--conntrack-max", "8192"])
        .expect_err("the start fails (only a test build, `cargo xtask test`, has fail points)");
    assert!(err.to_string().contains("Nothing was changed"), "{err}");
    assert_eq!(pinned_maps(&lab), before, "every pin as it was");
    assert_eq!(MapInfo::from_pin(lab.bpffs.join("maps").join(map::CT4)).unwrap().max_entries(), 4096);
    assert!(!lab.bpffs.join("staging").exists(), "no staging maps left");
    assert!(broken(&mut held, &datagrams).is_empty(), "the running datapath serves on");
    lab.natd_env.clear();
    lab.start_natd(&["--dataplane", "ebpf", "--conntrack-max", "8192"]).expect("the next start");
    assert_eq!(MapInfo::from_pin(lab.bpffs.join("maps").join(map::CT4)).unwrap().max_entries(), 8192);
    assert!(broken(&mut held, &datagrams).is_empty(), "every flow carried");
}
