//! `run --netns PATH` adopts someone else's namespace: never the host's (natd's own, the
//! initial one, whatever path names them), never by replacing a default route the
//! namespace has, and never again once the path names another namespace.
use std::path::Path;

use natlab::{Lab, sh};

/// The host namespace's routes and links, to compare before and after.
fn host_shape(lab: &Lab) -> String {
    [
        &["ip", "route"][..],
        &["ip", "-6", "route"],
        &["ip", "-o", "link", "show"],
    ]
    .iter()
    .map(|cmd| String::from_utf8_lossy(&lab.host(cmd).stdout).to_string())
    .collect::<Vec<_>>()
    .join("\n")
}

#[test]
fn the_hosts_namespace_is_never_adopted() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    let natd_pid = lab.natd.as_ref().expect("natd").child.id();
    let before = host_shape(&lab);
    for path in [format!("/proc/{natd_pid}/ns/net"), format!("/run/netns/{}", lab.host_ns)] {
        let err = lab.fails(&["run", "--name", "oops", "--netns", &path, "--", "sleep", "60"]);
        assert!(err.contains("natd's own network namespace"), "{path}: {err}");
        assert!(lab.fails(&["inspect", "oops"]).contains("No such container"));
    }
    assert_eq!(host_shape(&lab), before, "the host's routes and links are unchanged");
    // The initial namespace is recognised by its fixed inode number. It is never handed to
    // natd here (a natd that failed to refuse it would change this machine's own network):
    // the check natd makes is made directly, on this test's namespace (the initial one)
    // and on the lab's.
    assert!(natd::sys::netns::is_initial(Path::new("/proc/self/ns/net")), "cargo test runs in the initial namespace");
    assert!(!natd::sys::netns::is_initial(Path::new(&format!("/run/netns/{}", lab.host_ns))));
}

#[test]
fn an_adopted_namespace_keeps_its_default_route_unless_asked() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    let ns = lab.add_netns("adopt").expect("namespace");
    let path = format!("/run/netns/{ns}");
    // The namespace's owner routes it already (a VPN client, another runtime's network),
    // at the metric DHCP clients use: natd's metric-0 route would outrank it silently.
    for cmd in [
        &["link", "add", "own0", "type", "veth", "peer", "name", "own1"][..],
        &["addr", "add", "10.254.0.1/24", "dev", "own0"],
        &["link", "set", "own0", "up"],
        &["route", "add", "default", "via", "10.254.0.2", "metric", "100"],
    ] {
        let mut args = vec!["-n", ns.as_str()];
        args.extend_from_slice(cmd);
        natlab::must("ip", &args);
    }
    let routes = || String::from_utf8_lossy(&sh("ip", &["-n", &ns, "route"]).stdout).to_string();
    let before = routes();
    let err = lab.fails(&["run", "--name", "a1", "--netns", &path, "--", "sleep", "60"]);
    assert!(err.contains("already has a default route"), "{err}");
    assert_eq!(routes(), before, "its routing is untouched");
    assert!(!routes().contains("eth0") && lab.fails(&["inspect", "a1"]).contains("No such container"));
    let links = String::from_utf8_lossy(&sh("ip", &["-n", &ns, "-o", "link"]).stdout).to_string();
    assert!(!links.contains("eth0"), "the refused request left no interface: {links}");

    // Asked to replace it, by a request that fails after the route was replaced (its
    // command cannot start): the rollback puts the owner's route back as it was.
    let err = lab.fails(&["run", "--name", "a1", "--netns", &path, "--replace-default-route", "--", "/nonexistent/natd-test"]);
    assert!(lab.fails(&["inspect", "a1"]).contains("No such container"), "{err}");
    assert_eq!(routes(), before, "the owner's route restored: {err}\n{}", lab.natd_log());

    // Asked to, natd replaces it.
    lab.ok(&["run", "--name", "a1", "--netns", &path, "--replace-default-route", "--", "sleep", "60"]);
    let gateway = lab.json(&["network", "inspect", "bridge"])["gateway"].as_str().unwrap().to_string();
    let defaults: Vec<String> = routes().lines().filter(|l| l.starts_with("default")).map(str::to_string).collect();
    assert!(
        defaults.len() == 1 && defaults[0].starts_with(&format!("default via {gateway} dev eth0")),
        "natd's default route, and only it: {}",
        routes()
    );
}

#[test]
fn a_recycled_namespace_path_is_not_rewired() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    let ns = lab.add_netns("recycle").expect("namespace");
    let path = format!("/run/netns/{ns}");
    // No process in it: once deleted the namespace is freed, and its nsfs inode number is
    // free for the next one (the identity natd records must survive that: a cookie).
    lab.ok(&["run", "--name", "r1", "--netns", &path]);
    let links = || String::from_utf8_lossy(&sh("ip", &["-n", &ns, "-o", "link"]).stdout).to_string();
    assert!(links().contains("eth0"), "wired: {}", links());
    // The namespace goes, and someone makes another under the same name.
    natlab::must("ip", &["netns", "del", &ns]);
    natlab::must("ip", &["netns", "add", &ns]);
    let report = lab.reconcile();
    assert!(report.contains("now names another network namespace"), "{report}");
    assert!(!links().contains("eth0"), "the new namespace is not wired: {}", links());
    // Control: a sandbox whose adopted namespace is intact is left as it is.
    let intact = lab.add_netns("intact").expect("namespace");
    lab.ok(&["run", "--name", "r2", "--netns", &format!("/run/netns/{intact}")]);
    assert!(!lab.reconcile().contains("r2"));
}
