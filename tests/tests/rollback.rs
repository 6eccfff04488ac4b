//! The rollback stack, step by step: every kernel change a request makes is made to fail
//! in turn (natd's fail point `rollback-record`, test builds only), and each time the
//! request must be refused with nothing left behind: no interface, namespace,
//! /etc/netns entry, address, NIC move, process, published port or record.
use natlab::{Lab, sh};

/// Everything a refused request could leave behind, as seen from outside natd.
#[derive(Debug, PartialEq, Eq)]
struct World {
    links: Vec<String>,
    addresses: String,
    routes: String,
    namespaces: Vec<String>,
    etc_netns: Vec<String>,
    processes: usize,
    reserved_ports: String,
    ports_in_kernel: u64,
    sandboxes: serde_json::Value,
    networks: serde_json::Value,
}

/// A command line no other process on the machine has.
const MARKER: &str = "8675309";

fn world(lab: &Lab) -> World {
    let lines = |text: String| -> Vec<String> {
        let mut v: Vec<String> = text.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    let names = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with(&format!("{}-sbx-", lab.prefix)))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let stats = lab.json(&["stats"]);
    World {
        links: lines(lab.host_ok(&["ip", "-o", "link"]))
            .into_iter()
            // Counters and link state flags change on their own; names and masters must not.
            .map(|l| {
                let master = l
                    .split(" master ")
                    .nth(1)
                    .and_then(|m| m.split_whitespace().next());
                l.split_whitespace()
                    .take(2)
                    .chain(master)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect(),
        addresses: lab
            .host_ok(&["ip", "-o", "addr"])
            .lines()
            .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n"),
        // "linkdown" mirrors a bridge's carrier, which the kernel recomputes asynchronously
        // (linkwatch) when its last port goes: kernel timing, not natd's state.
        routes: lab.host_ok(&["ip", "route"]).replace(" linkdown", ""),
        namespaces: names("/run/netns"),
        etc_netns: names("/etc/netns"),
        processes: String::from_utf8_lossy(&sh("pgrep", &["-f", MARKER]).stdout)
            .lines()
            .count(),
        reserved_ports: lab.host_ok(&["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"]),
        ports_in_kernel: stats["maps"][nat_common::names::map::PORTS4][0]
            .as_u64()
            .unwrap_or(0),
        sandboxes: lab.json(&["ps"]),
        networks: lab.json(&["network", "ls"]),
    }
}

/// Makes step 1, 2, ... of `request` fail until it succeeds; after every failure the
/// world must look as before. Returns how many steps the request has.
fn fail_each_step(lab: &Lab, what: &str, request: &[&str], undo: &[&str]) -> usize {
    let before = world(lab);
    for step in 1..=20 {
        lab.failpoint("rollback-record", &format!("{}*off->return", step - 1));
        let out = lab.natctl(request);
        lab.failpoint("rollback-record", "off");
        if out.status.success() {
            assert_ne!(world(lab), before, "{what} changed something when it succeeded");
            lab.ok(undo);
            assert_eq!(world(lab), before, "{what}: undone by {undo:?}");
            return step - 1;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("injected failure after step {step} of")),
            "{what}, step {step}: {err}"
        );
        assert_eq!(
            world(lab),
            before,
            "{what}: a failure at step {step} left something behind"
        );
    }
    panic!("{what} still fails after 20 steps")
}

#[test]
fn a_failure_at_each_step_of_a_request_leaves_nothing_behind() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    // A spare NIC on the LAN for the hostbridge driver.
    let ext = lab.ext_ns.clone();
    lab.host_ok(&[
        "ip", "link", "add", "nic1", "type", "veth", "peer", "name", "nic1x", "netns", &ext,
    ]);
    lab.host_ok(&["ip", "addr", "add", "192.0.2.10/24", "dev", "nic1"]);
    lab.host_ok(&["ip", "link", "set", "nic1", "up"]);
    lab.host_ok(&[
        "ip",
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        "192.0.2.1",
        "dev",
        "nic1",
    ]);
    lab.ok(&["network", "create", "--subnet", "10.70.0.0/24", "side"]);
    lab.ok(&["run", "--name", "holder"]);

    let sleeper = format!("sleep {MARKER}");
    let run = [
        "run",
        "--name",
        "rb",
        "-p",
        "8080:80",
        "-p",
        "53/udp",
        "--dns",
        "192.0.2.53",
        "--",
        "sh",
        "-c",
        &sleeper,
    ];
    let steps = fail_each_step(&lab, "run -p", &run, &["rm", "rb"]);
    // Namespace, veth, resolv.conf, process.
    assert_eq!(steps, 4, "run has four kernel changes");

    let steps = fail_each_step(
        &lab,
        "network create",
        &["network", "create", "--subnet", "10.71.0.0/24", "rbnet"],
        &["network", "rm", "rbnet"],
    );
    assert_eq!(steps, 1, "network create makes the bridge");

    let steps = fail_each_step(
        &lab,
        "network create -d hostbridge",
        &[
            "network",
            "create",
            "-d",
            "hostbridge",
            "--subnet",
            "192.0.2.0/24",
            "--gateway",
            "192.0.2.1",
            "-o",
            "parent=nic1",
            "lan",
        ],
        &["network", "rm", "lan"],
    );
    assert_eq!(steps, 2, "the bridge, then the NIC moved into it");

    let steps = fail_each_step(
        &lab,
        "network connect",
        &["network", "connect", "side", "holder"],
        &["network", "disconnect", "side", "holder"],
    );
    assert_eq!(steps, 1, "connect makes one veth");

    // A failure of the store itself, after every kernel change was made.
    let before = world(&lab);
    lab.failpoint("before-commit", "return");
    let err = lab.fails(&run);
    lab.failpoint("before-commit", "off");
    assert!(err.contains("before the store commit"), "{err}");
    assert_eq!(world(&lab), before, "a failed commit undoes the kernel changes");
    lab.stop_natd(nix::sys::signal::Signal::SIGTERM);
}

/// A Linux bridge takes at most 1,023 ports (`BR_MAX_PORTS`, port number 0 reserved); past
/// that the kernel refuses a port with EXFULL ("exchange full", which is all Docker says).
/// Here the bridge is filled by ports natd did not make (1,023 taps), so it is the kernel
/// that refuses (natd's own count, which names the network, refuses earlier: the unit
/// test of `check_bridge_room`): the run is refused naming the limit, and leaves nothing
/// behind. Control: with one of them gone the same run succeeds.
#[test]
fn a_bridge_full_of_other_ports_refuses_the_sandbox_and_leaves_nothing() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    let batch: String = (0..1023)
        .map(|i| format!("tuntap add mode tap name {p}f{i:x}\nlink set {p}f{i:x} master {}\n", lab.bridge, p = lab.prefix))
        .collect();
    let path = lab.dir.join("fill.batch");
    std::fs::write(&path, batch).unwrap();
    lab.host_ok(&["ip", "-batch", path.to_str().unwrap()]);
    // Not `MARKER`: the other test of this file counts those processes meanwhile.
    const OWN_MARKER: &str = "8675311";
    let running = || String::from_utf8_lossy(&sh("pgrep", &["-f", OWN_MARKER]).stdout).lines().count();
    // The other test's processes come and go meanwhile: this one counts its own.
    let world = |lab: &Lab| World { processes: 0, ..world(lab) };
    let before = world(&lab);
    let err = lab.fails(&["run", "--name", "one-too-many", "--", "sleep", OWN_MARKER]);
    assert!(
        err.contains("the bridge has the most ports a Linux bridge can have (1023)"),
        "{err}"
    );
    assert_eq!(world(&lab), before, "the refused run left nothing behind");
    assert_eq!(running(), 0, "and started no process");
    lab.host_ok(&["ip", "link", "del", &format!("{}f0", lab.prefix)]);
    lab.ok(&["run", "--name", "one-too-many", "--", "sleep", OWN_MARKER]);
    assert_eq!(running(), 1, "control: the run went through");
    lab.ok(&["rm", "one-too-many"]);
}
