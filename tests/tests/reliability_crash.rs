//! Reliability matrix, row 2: natd killed (SIGKILL) in the middle of changes, at random
//! moments and at chosen ones (after a kernel change, before the store commit). After the
//! restart and its reconcile nothing may leak and every stored sandbox must be wired.
use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::Duration,
};

use natlab::{
    Lab, natctl_bin, sh,
    soak::{report, rng, size},
};
use nix::sys::signal::Signal;
use serde_json::Value;

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

/// A random request on the current state.
fn random_request(rng: &mut fastrand::Rng, lab: &Lab, k: usize) -> Vec<String> {
    let sandboxes = names(&lab.json(&["ps"]));
    let networks: Vec<String> = names(&lab.json(&["network", "ls"]))
        .into_iter()
        .filter(|n| n != "bridge")
        .collect();
    let pick = |rng: &mut fastrand::Rng, v: &[String]| v.get(rng.usize(0..v.len().max(1))).cloned();
    let words: Vec<String> = match rng.u8(0..8) {
        0..=2 => {
            let mut run = vec!["run".to_string(), "--name".into(), format!("s{k}")];
            if rng.bool() {
                run.extend([
                    "-p".into(),
                    "80".into(),
                    "-p".into(),
                    format!("{}:81/udp", 30000 + k % 2000),
                ]);
            }
            if let Some(net) = pick(rng, &networks).filter(|_| rng.bool()) {
                run.extend(["--network".into(), net]);
            }
            run
        }
        3 => match pick(rng, &sandboxes) {
            Some(s) => vec!["rm".into(), s],
            None => vec!["ps".into()],
        },
        4 => vec![
            "network".into(),
            "create".into(),
            "--subnet".into(),
            format!("10.{}.{}.0/24", 80 + (k / 256) % 100, k % 256),
            format!("n{k}"),
        ],
        5 => match pick(rng, &networks) {
            Some(n) => vec!["network".into(), "rm".into(), n],
            None => vec!["ps".into()],
        },
        6 => match (pick(rng, &networks), pick(rng, &sandboxes)) {
            (Some(n), Some(s)) => vec!["network".into(), "connect".into(), n, s],
            _ => vec!["ps".into()],
        },
        _ => match (pick(rng, &networks), pick(rng, &sandboxes)) {
            (Some(n), Some(s)) => vec!["network".into(), "disconnect".into(), n, s],
            _ => vec!["ps".into()],
        },
    };
    words
}

/// Every leak and every half-wired sandbox, as lines; empty when the world is consistent.
fn inconsistencies(lab: &Lab, dataplane: &str) -> (Vec<String>, usize) {
    let mut found = Vec::new();
    let sandboxes = lab.json(&["ps"]);
    let networks = lab.json(&["network", "ls"]);
    let mut expected_links = BTreeSet::new();
    for n in networks.as_array().unwrap() {
        expected_links.insert(n["bridge"].as_str().unwrap().to_string());
    }
    let mut expected_ns = BTreeSet::new();
    let mut expected_etc = BTreeSet::new();
    let mut endpoints = 0;
    let mut port_rules = 0;
    for s in sandboxes.as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        if s["netns_owned"] == true {
            let path = s["netns"].as_str().unwrap();
            expected_ns.insert(path.trim_start_matches("/run/netns/").to_string());
            if let Some(etc) = s["etc_name"].as_str() {
                expected_etc.insert(etc.to_string());
            }
        }
        port_rules += s["ports"].as_array().unwrap().len();
        for e in s["endpoints"].as_array().unwrap() {
            endpoints += 1;
            expected_links.insert(e["host_ifname"].as_str().unwrap().to_string());
            // Wired inside: the interface with its address.
            let ns = s["netns"]
                .as_str()
                .unwrap()
                .trim_start_matches("/run/netns/")
                .to_string();
            let inside = sh(
                "ip",
                &[
                    "-n",
                    &ns,
                    "-o",
                    "-4",
                    "addr",
                    "show",
                    e["ifname"].as_str().unwrap(),
                ],
            );
            let ip = e["ipv4"].as_str().unwrap();
            if !String::from_utf8_lossy(&inside.stdout).contains(&format!("inet {ip}/")) {
                found.push(format!("{name}: {} has no {ip} inside", e["ifname"]));
            }
        }
    }
    let links: BTreeSet<String> = lab
        .host_ok(&["ip", "-o", "link"])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|n| n.trim_end_matches(':').split('@').next().unwrap().to_string())
        .filter(|n| n.starts_with(&lab.prefix))
        .collect();
    for extra in links.difference(&expected_links) {
        found.push(format!("leaked interface {extra}"));
    }
    for missing in expected_links.difference(&links) {
        found.push(format!("missing interface {missing}"));
    }
    let listed = |dir: &str| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with(&format!("{}-sbx-", lab.prefix)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaces = listed("/run/netns");
    if namespaces != expected_ns {
        found.push(format!("namespaces {namespaces:?}, records {expected_ns:?}"));
    }
    // An entry exists only when there is something to put there (resolv.conf with DNS
    // servers): every entry must be a record's, not every record has one.
    let etc = listed("/etc/netns");
    if !etc.is_subset(&expected_etc) {
        found.push(format!("/etc/netns {etc:?}, records {expected_etc:?}"));
    }
    // Pinned program links (`<ifindex>-<ifname>-<direction>-<program>`) belong to
    // interfaces that exist, under that name and that index (a name reused by a new
    // interface has another index).
    let indexes: std::collections::BTreeMap<String, String> = lab
        .host_ok(&["ip", "-o", "link"])
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let index = words.next()?.trim_end_matches(':').to_string();
            let name = words.next()?.trim_end_matches(':').split('@').next()?.to_string();
            Some((name, index))
        })
        .collect();
    let mut pinned_tc = 0;
    for pin in std::fs::read_dir(lab.bpffs.join("links"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let file = pin.file_name().to_string_lossy().to_string();
        if file.starts_with("cgroup-") {
            continue;
        }
        pinned_tc += 1;
        let parsed = file.split_once('-').and_then(|(index, rest)| {
            let at = rest.rfind("-ingress-").or_else(|| rest.rfind("-egress-"))?;
            Some((index.to_string(), rest[..at].to_string()))
        });
        match parsed {
            Some((index, iface)) if indexes.get(&iface) == Some(&index) => {}
            Some((_, iface)) => found.push(format!("pinned link {file} of a missing interface ({iface})")),
            None => found.push(format!("pinned link {file} with a name natd does not make")),
        }
    }
    if dataplane == "ebpf" && pinned_tc == 0 {
        found.push("no pinned link at all (the uplink always has its programs)".into());
    }
    let in_kernel = if dataplane == "ebpf" {
        // The entries themselves: (host address, host port, protocol) of every recorded
        // mapping, and nothing else, in the pinned table the programs read.
        let recorded: BTreeSet<(String, u16, String)> = sandboxes
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["ports"].as_array().unwrap().clone())
            .map(|p| {
                (
                    p["host_ip"].as_str().unwrap_or("0.0.0.0").to_string(),
                    p["host_port"].as_u64().unwrap() as u16,
                    p["proto"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let data = aya::maps::MapData::from_pin(lab.bpffs.join("maps").join(nat_common::names::map::PORTS4))
            .expect("pinned port table");
        let table = aya::maps::HashMap::<_, nat_common::Port4Key, nat_common::Port4Target>::try_from(
            aya::maps::Map::from_map_data(data).unwrap(),
        )
        .unwrap();
        let pinned: BTreeSet<(String, u16, String)> = table
            .keys()
            .filter_map(Result::ok)
            .map(|k| {
                (
                    std::net::Ipv4Addr::from(k.addr.to_ne_bytes()).to_string(),
                    u16::from_be(k.port),
                    if k.proto == 6 { "tcp" } else { "udp" }.to_string(),
                )
            })
            .collect();
        if pinned != recorded {
            found.push(format!(
                "port table entries {:?} not recorded, recorded mappings {:?} not in the table",
                pinned.difference(&recorded).collect::<Vec<_>>(),
                recorded.difference(&pinned).collect::<Vec<_>>()
            ));
        }
        pinned.len()
    } else {
        // natd's nftables table is named after its prefix; one element per mapping.
        let table: Value =
            serde_json::from_str(&lab.host_ok(&["nft", "-j", "list", "table", "ip", &lab.prefix]))
                .unwrap_or(Value::Null);
        table["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("map"))
            .filter(|m| m["name"] == "ports_any" || m["name"] == "ports_ip")
            .map(|m| m["elem"].as_array().map_or(0, Vec::len))
            .sum()
    };
    if in_kernel != port_rules {
        found.push(format!(
            "{in_kernel} published-port entries in the kernel, {port_rules} recorded"
        ));
    }
    let checked = links.len() + namespaces.len() + etc.len() + endpoints + port_rules;
    (found, checked)
}

fn crash_during_changes(dataplane: &str, iterations: usize) {
    let mut lab = Lab::started(&["--dataplane", dataplane]);
    let mut rng = rng(&format!("crash during changes ({dataplane})"));
    let mut checked = 0;
    let mut failures = Vec::new();
    for k in 0..iterations {
        let request = random_request(&mut rng, &lab, k);
        // Where natd dies: at a random moment, right after its n-th kernel change (before
        // the next one and before the commit), or just before the store commit.
        let stop = rng.u8(0..3);
        match stop {
            1 => lab.failpoint("rollback-record", &format!("{}*off->sleep(60000)", rng.u8(0..4))),
            2 => lab.failpoint("before-commit", "sleep(60000)"),
            _ => {}
        }
        let mut child = Command::new(natctl_bin())
            .arg("--socket")
            .arg(&lab.socket)
            .args(&request)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(if stop == 0 {
            rng.u64(0..40)
        } else {
            150
        }));
        lab.stop_natd(Signal::SIGKILL);
        let _ = child.kill();
        let _ = child.wait();
        if let Err(e) = lab.restart_natd() {
            failures.push(format!(
                "iteration {k} ({request:?}): natd does not start again: {e}"
            ));
            break;
        }
        let (found, n) = inconsistencies(&lab, dataplane);
        checked += n;
        if !found.is_empty() {
            failures.push(format!("iteration {k} ({request:?}, stop {stop}): {found:#?}"));
            break;
        }
    }
    report(
        &format!("2 crash during changes ({dataplane})"),
        iterations,
        failures.len(),
        &format!(
            "{checked} objects checked after the restarts: interfaces, namespaces, /etc/netns entries, \
             pinned links, published-port map entries or nft elements, addresses inside sandboxes"
        ),
    );
    assert!(
        failures.is_empty(),
        "{failures:#?}\nnatd log:\n{}",
        lab.natd_log()
    );
}

#[test]
fn natd_killed_during_changes_leaves_nothing_half_done_ebpf() {
    crash_during_changes("ebpf", size(15, 1000));
}

#[test]
fn natd_killed_during_changes_leaves_nothing_half_done_nftables() {
    crash_during_changes("nftables", size(8, 200));
}
