//! End-to-end tests of the foundation: natd started inside a fresh "host" namespace with
//! its own socket/state/bpffs/prefix, driven with natctl, checked with real tools.
use std::{process::Command, time::Duration};

use natlab::{Lab, sh, wait_until};
use nix::sys::signal::Signal;

fn ping(lab: &Lab, from: &str, to: &str) -> bool {
    lab.exec(from, &["ping", "-c1", "-W2", to]).status.success()
}

fn links_in(lab: &Lab, sandbox: &str) -> Vec<String> {
    lab.exec_ok(sandbox, &["ip", "-o", "link"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

#[test]
fn network_modes_and_connectivity() {
    let lab = Lab::started(&[]);
    lab.ok(&["run", "--name", "alpha", "--", "sleep", "1000"]);
    lab.ok(&["run", "--name", "beta"]);
    lab.ok(&["run", "--name", "nonet", "--network", "none"]);
    lab.ok(&["run", "--name", "hostnet", "--network", "host"]);
    lab.ok(&["run", "--name", "joiner", "--network", "container:alpha"]);

    let alpha_ip = lab.sandbox_ip("alpha");
    let beta_ip = lab.sandbox_ip("beta");
    assert!(alpha_ip.starts_with("172.18.") && beta_ip.starts_with("172.18.") && alpha_ip != beta_ip);

    // bridge mode: eth0 with the address, default route via the gateway, lo up.
    let addrs = lab.exec_ok("alpha", &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("{alpha_ip}/16")), "{addrs}");
    let routes = lab.exec_ok("alpha", &["ip", "route", "show", "default"]);
    assert!(routes.contains("via 172.18.0.1 dev eth0"), "{routes}");
    assert!(
        lab.exec_ok("alpha", &["ip", "-o", "link", "show", "lo"])
            .contains("UP")
    );
    assert!(ping(&lab, "alpha", &beta_ip), "alpha cannot ping beta");
    assert!(ping(&lab, "beta", &alpha_ip), "beta cannot ping alpha");
    assert!(ping(&lab, "alpha", "172.18.0.1"), "alpha cannot ping its gateway");

    // none: only lo.
    assert_eq!(links_in(&lab, "nonet"), ["lo"]);
    // host: natd's own namespace, so the uplink is visible.
    assert!(links_in(&lab, "hostnet").contains(&"up0".to_string()));
    // container:alpha: the very same interfaces and address as alpha.
    let joined = lab.exec_ok("joiner", &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(joined.contains(&format!("{alpha_ip}/16")), "{joined}");

    let ps = lab.json(&["ps"]);
    let status = |name: &str| {
        ps.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status("alpha").as_deref(), Some("running"));
    assert_eq!(status("beta").as_deref(), Some("created"));
    let table = lab.ok(&["ps"]);
    assert!(
        table.contains("container:alpha") && table.contains("host") && table.contains("none"),
        "{table}"
    );

    // exec passes the exit code through.
    assert_eq!(lab.exec("alpha", &["sh", "-c", "exit 7"]).status.code(), Some(7));
    assert_eq!(lab.exec("alpha", &["/nonexistent/cmd"]).status.code(), Some(127));

    // A sandbox shared by another cannot go first.
    let err = lab.fails(&["rm", "alpha"]);
    assert!(err.contains("share its network namespace"), "{err}");
    lab.ok(&["rm", "joiner", "alpha"]);
}

#[test]
fn mtu_dns_and_daemon_settings() {
    let lab = Lab::started(&[
        "--bip",
        "10.123.0.1/16",
        "--fixed-cidr",
        "10.123.5.0/24",
        "--default-gateway",
        "10.123.0.254",
        "--fixed-cidr-v6",
        "2001:db8:77::/64",
        "--mtu",
        "1400",
        "--dns",
        "192.0.2.53",
        "--dns",
        "192.0.2.54",
    ]);
    // The bridge carries --bip and --mtu.
    let bridge = lab.host_ok(&["ip", "-o", "addr", "show", "dev", &lab.bridge]);
    assert!(
        bridge.contains("10.123.0.1/16") && bridge.contains("2001:db8:77::1/64"),
        "{bridge}"
    );
    assert!(
        lab.host_ok(&["ip", "-o", "link", "show", &lab.bridge])
            .contains("mtu 1400")
    );

    lab.ok(&["run", "--name", "one"]);
    let ip = lab.sandbox_ip("one");
    assert!(
        ip.starts_with("10.123.5."),
        "address {ip} should come from --fixed-cidr"
    );
    assert!(
        lab.exec_ok("one", &["ip", "-o", "link", "show", "eth0"])
            .contains("mtu 1400")
    );
    assert!(
        lab.exec_ok("one", &["ip", "route", "show", "default"])
            .contains("via 10.123.0.254")
    );
    let resolv = lab.exec_ok("one", &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("nameserver 192.0.2.53") && resolv.contains("nameserver 192.0.2.54"),
        "{resolv}"
    );
    let v6 = lab.exec_ok(
        "one",
        &["ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global"],
    );
    assert!(v6.contains("2001:db8:77::"), "{v6}");
    assert!(
        lab.exec("one", &["ping", "-6", "-c1", "-W2", "2001:db8:77::1"])
            .status
            .success(),
        "IPv6 gateway unreachable"
    );

    // Per-sandbox settings win.
    lab.ok(&["run", "--name", "two", "--mtu", "1300", "--dns", "192.0.2.99"]);
    assert!(
        lab.exec_ok("two", &["ip", "-o", "link", "show", "eth0"])
            .contains("mtu 1300")
    );
    assert!(
        lab.exec_ok("two", &["cat", "/etc/resolv.conf"])
            .contains("192.0.2.99")
    );
    // The host's own resolv.conf is untouched.
    assert!(
        !std::fs::read_to_string("/etc/resolv.conf")
            .unwrap_or_default()
            .contains("192.0.2.99")
    );
}

#[test]
fn config_file_is_read() {
    let mut lab = Lab::new().unwrap();
    let path = lab.dir.join("daemon.json");
    std::fs::write(
        &path,
        r#"{"bip": "10.124.0.1/24", "mtu": "1450", "dns": ["192.0.2.7"]}"#,
    )
    .unwrap();
    lab.start_natd(&["--config", path.to_str().unwrap()]).unwrap();
    lab.ok(&["run", "--name", "cfg"]);
    assert!(lab.sandbox_ip("cfg").starts_with("10.124.0."));
    assert!(
        lab.exec_ok("cfg", &["ip", "-o", "link", "show", "eth0"])
            .contains("mtu 1450")
    );
    assert!(
        lab.exec_ok("cfg", &["cat", "/etc/resolv.conf"])
            .contains("192.0.2.7")
    );
}

#[test]
fn user_networks_connect_and_disconnect() {
    let lab = Lab::started(&[]);
    lab.ok(&[
        "network",
        "create",
        "--subnet",
        "10.88.0.0/24",
        "--gateway",
        "10.88.0.254",
        "--ip-range",
        "10.88.0.128/25",
        "front",
    ]);
    lab.ok(&["network", "create", "back"]);
    let nets = lab.json(&["network", "ls"]);
    let back = nets
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "back")
        .unwrap()
        .clone();
    assert!(
        back["subnet"].as_str().unwrap().ends_with("/24"),
        "auto subnet is a /24: {back}"
    );

    lab.ok(&[
        "run",
        "--name",
        "web",
        "--network",
        "front",
        "--ip",
        "10.88.0.200",
    ]);
    lab.ok(&["run", "--name", "app", "--network", "front"]);
    assert_eq!(lab.sandbox_ip("web"), "10.88.0.200");
    assert!(
        lab.sandbox_ip("app").starts_with("10.88.0.1"),
        "from --ip-range: {}",
        lab.sandbox_ip("app")
    );
    assert!(
        lab.exec_ok("web", &["ip", "route", "show", "default"])
            .contains("via 10.88.0.254")
    );
    assert!(ping(&lab, "app", "10.88.0.200"));

    lab.ok(&["run", "--name", "db", "--network", "back"]);
    let db_ip = lab.sandbox_ip("db");
    // Give app a second interface on "back".
    lab.ok(&["network", "connect", "back", "app"]);
    assert!(links_in(&lab, "app").contains(&"eth1".to_string()));
    assert!(ping(&lab, "app", &db_ip), "app reaches db over eth1");
    let inspect = lab.json(&["network", "inspect", "back"]);
    assert_eq!(inspect["sandboxes"].as_array().unwrap().len(), 2);

    let err = lab.fails(&["network", "rm", "back"]);
    assert!(err.contains("has active endpoints"), "{err}");
    lab.ok(&["network", "disconnect", "back", "app"]);
    assert!(!links_in(&lab, "app").contains(&"eth1".to_string()));
    let err = lab.fails(&["network", "disconnect", "back", "app"]);
    assert!(err.contains("is not connected to network back"), "{err}");
    lab.ok(&["rm", "db"]);
    let bridge = back["bridge"].as_str().unwrap().to_string();
    lab.ok(&["network", "rm", "back"]);
    assert!(
        !lab.host(&["ip", "link", "show", &bridge]).status.success(),
        "bridge {bridge} removed"
    );
}

#[test]
fn restart_keeps_state_and_traffic_survives_downtime() {
    let mut lab = Lab::started(&[]);
    lab.ok(&["network", "create", "--subnet", "10.89.0.0/24", "keep"]);
    lab.ok(&[
        "run",
        "--name",
        "s1",
        "--network",
        "keep",
        "-p",
        "8081:80",
        "--",
        "sleep",
        "1000",
    ]);
    lab.ok(&["run", "--name", "s2", "--network", "keep"]);
    let before_ps = lab.json(&["ps"]);
    let before_nets = lab.json(&["network", "ls"]);
    let s2 = lab.sandbox_ip("s2");
    let s1_netns = lab.json(&["inspect", "s1"])["netns"]
        .as_str()
        .unwrap()
        .to_string();

    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        lab.stop_natd(signal);
        // natctl exec needs natd; the namespace itself does not.
        let out = sh(
            "nsenter",
            &[&format!("--net={s1_netns}"), "ping", "-c1", "-W2", &s2],
        );
        assert!(
            out.status.success(),
            "sandboxes keep working while natd is down ({signal})"
        );
        lab.restart_natd().unwrap();
        assert_eq!(lab.json(&["ps"]), before_ps, "sandboxes after {signal}");
        assert_eq!(
            lab.json(&["network", "ls"]),
            before_nets,
            "networks after {signal}"
        );
        assert!(ping(&lab, "s1", &s2));
    }
    // Allocation continues without reusing a taken address or port.
    lab.ok(&["run", "--name", "s3", "--network", "keep"]);
    let s3 = lab.sandbox_ip("s3");
    assert!(s3 != s2 && s3 != lab.sandbox_ip("s1"));
    let err = lab.fails(&["run", "--name", "s4", "-p", "8081:80"]);
    assert!(
        err.contains("Bind for 0.0.0.0:8081 failed: port is already allocated"),
        "{err}"
    );
}

#[test]
fn reconcile_repairs_and_removes_only_what_natd_owns() {
    let mut lab = Lab::started(&[]);
    lab.ok(&["run", "--name", "r1"]);
    lab.ok(&["run", "--name", "r2"]);
    let r2 = lab.sandbox_ip("r2");
    let veth = lab.json(&["inspect", "r1"])["endpoints"][0]["host_ifname"]
        .as_str()
        .unwrap()
        .to_string();
    lab.stop_natd(Signal::SIGTERM);
    // Behind natd's back: delete r1's veth, add a stray interface and namespace with natd's
    // prefix, and a foreign interface and namespace that natd must leave alone.
    lab.host_ok(&["ip", "link", "del", &veth]);
    let stray = format!("{}vdead", lab.prefix); // hex: a name natd could have generated
    lab.host_ok(&[
        "ip",
        "link",
        "add",
        &stray,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{}pdeaf", lab.prefix),
    ]);
    lab.host_ok(&["ip", "link", "add", "foreign0", "type", "bridge"]);
    let stray_ns = format!("{}-sbx-ghost", lab.prefix);
    sh("ip", &["netns", "add", &stray_ns]);
    let mut lab = lab;
    let foreign_ns = lab.add_netns("foreign").unwrap();
    assert!(!ping(&lab, "r1", &r2));

    lab.restart_natd().unwrap();
    assert!(ping(&lab, "r1", &r2), "r1's veth was recreated");
    assert_eq!(
        lab.sandbox_ip("r1"),
        lab.json(&["inspect", "r1"])["endpoints"][0]["ipv4"]
            .as_str()
            .unwrap()
    );
    assert!(
        !lab.host(&["ip", "link", "show", &stray]).status.success(),
        "stray {stray} removed"
    );
    assert!(
        lab.host(&["ip", "link", "show", "foreign0"]).status.success(),
        "foreign interface kept"
    );
    let namespaces = String::from_utf8_lossy(&sh("ip", &["netns", "list"]).stdout).to_string();
    assert!(!namespaces.contains(&stray_ns), "stray namespace removed");
    assert!(namespaces.contains(&foreign_ns), "foreign namespace kept");
    let info = lab.json(&["info"]);
    let report = info["last_reconcile"].to_string();
    assert!(
        report.contains(&format!("recreated {veth}")) && report.contains(&stray),
        "{report}"
    );
}

#[test]
fn commands_run_detached_and_rm_stops_them() {
    let lab = Lab::started(&[]);
    let page = lab.dir.join("www");
    std::fs::create_dir_all(&page).unwrap();
    std::fs::write(page.join("index.html"), "hello natd\n").unwrap();
    lab.ok(&[
        "run",
        "--name",
        "www",
        "--",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        page.to_str().unwrap(),
    ]);
    lab.ok(&["run", "--name", "client"]);
    let ip = lab.sandbox_ip("www");
    let url = format!("http://{ip}/index.html");
    assert!(
        wait_until(Duration::from_secs(5), || lab
            .exec("client", &["curl", "-sf", "--max-time", "2", &url])
            .stdout
            == b"hello natd\n"),
        "the server in www answers the client"
    );
    let view = lab.json(&["inspect", "www"]);
    let pid = view["pid"].as_i64().unwrap() as i32;
    let netns = view["netns"].as_str().unwrap().to_string();
    assert_eq!(view["status"], "running");
    assert!(
        std::fs::read_to_string(view["log"].as_str().unwrap()).is_ok(),
        "log file exists"
    );
    lab.ok(&["rm", "www"]);
    assert!(
        wait_until(Duration::from_secs(3), || !std::path::Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()),
        "process stopped"
    );
    assert!(!std::path::Path::new(&netns).exists(), "namespace removed");
    assert!(lab.fails(&["inspect", "www"]).contains("No such container: www"));
    // The address is free again.
    lab.ok(&["run", "--name", "again", "--ip", &ip]);
}

#[test]
fn adopted_namespace_and_bridge_are_left_in_place() {
    let mut lab = Lab::new().unwrap();
    let bridge = lab.bridge.clone();
    lab.host_ok(&["ip", "link", "add", &bridge, "type", "bridge"]);
    lab.start_natd(&[]).unwrap();
    let ns = lab.add_netns("mine").unwrap();
    lab.ok(&["run", "--name", "adopt", "--netns", &format!("/run/netns/{ns}")]);
    let out = lab.in_ns(&ns, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("172.18."),
        "wired into the given namespace"
    );
    let err = lab.fails(&["run", "--name", "adopt2", "--netns", &format!("/run/netns/{ns}")]);
    assert!(err.contains("already used by sandbox adopt"), "{err}");
    lab.ok(&["rm", "adopt"]);
    assert!(
        sh("ip", &["netns", "list"])
            .stdout
            .windows(ns.len())
            .any(|w| w == ns.as_bytes()),
        "adopted namespace kept"
    );
    lab.stop_natd(Signal::SIGTERM);
    assert!(lab.cleanup_natd().status.success());
    assert!(
        lab.host(&["ip", "link", "show", &bridge]).status.success(),
        "adopted bridge survives cleanup"
    );
}

#[test]
fn cleanup_removes_everything_natd_owns() {
    let mut lab = Lab::started(&[]);
    lab.ok(&["network", "create", "gone"]);
    lab.ok(&["run", "--name", "c1", "--network", "gone", "--", "sleep", "1000"]);
    lab.ok(&["run", "--name", "c2", "--dns", "192.0.2.1"]);
    let netns = lab.json(&["inspect", "c1"])["netns"]
        .as_str()
        .unwrap()
        .to_string();
    lab.stop_natd(Signal::SIGTERM);
    let out = lab.cleanup_natd();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let links = lab.host_ok(&["ip", "-o", "link"]);
    assert!(
        !links.contains(&lab.prefix),
        "no interface with the prefix left:\n{links}"
    );
    assert!(!std::path::Path::new(&netns).exists());
    assert!(!std::path::Path::new(&format!("/etc/netns/{}-sbx-c2", lab.prefix)).exists());
    assert!(!lab.bpffs.exists(), "pins removed");
    assert!(!lab.state_dir.join("natd.redb").exists());
    assert!(
        lab.host(&["ip", "link", "show", "up0"]).status.success(),
        "the uplink is not natd's"
    );
}

#[test]
fn corrupt_state_gives_a_clear_error() {
    let mut lab = Lab::new().unwrap();
    std::fs::create_dir_all(&lab.state_dir).unwrap();
    std::fs::write(lab.state_dir.join("natd.redb"), vec![0x5a; 8192]).unwrap();
    let err = lab.start_natd(&[]).unwrap_err().to_string();
    assert!(err.contains("corrupt") && err.contains("natd --cleanup"), "{err}");
    assert!(
        err.contains("exit status: 78"),
        "EX_CONFIG so systemd does not loop: {err}"
    );
}

#[test]
fn concurrent_requests_get_distinct_addresses() {
    let lab = Lab::started(&[]);
    let names: Vec<String> = (0..8).map(|i| format!("par{i}")).collect();
    std::thread::scope(|scope| {
        for name in &names {
            let lab = &lab;
            scope.spawn(move || lab.ok(&["run", "--name", name]));
        }
    });
    let mut ips: Vec<String> = names.iter().map(|n| lab.sandbox_ip(n)).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), names.len(), "every sandbox has its own address");
}

/// Every refused request names the problem and leaves the state as it was.
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let lab = Lab::started(&["--bip", "10.125.0.1/29"]);
    lab.ok(&["network", "create", "--subnet", "10.90.0.0/24", "taken"]);
    lab.ok(&[
        "run",
        "--name",
        "holder",
        "--network",
        "taken",
        "--ip",
        "10.90.0.10",
        "-p",
        "80:80",
    ]);
    lab.ok(&["run", "--name", "shared", "--network", "none"]);
    // Fill the /29 of the default network (gateway .1; .2-.6 usable).
    for i in 0..5 {
        lab.ok(&["run", "--name", &format!("fill{i}")]);
    }
    let ps = lab.json(&["ps"]);
    let nets = lab.json(&["network", "ls"]);
    let links = lab.host_ok(&["ip", "-o", "link"]).lines().count();

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["network", "create", "--subnet", "10.90.0.128/25", "x1"],
            "Pool overlaps with other one on this address space",
        ),
        (
            vec!["network", "create", "--subnet", "198.51.100.0/24", "x2"],
            "overlaps with route 198.51.100.0/24 on the host",
        ),
        (
            vec![
                "network",
                "create",
                "--subnet",
                "10.91.0.0/24",
                "--gateway",
                "10.92.0.1",
                "x3",
            ],
            "invalid gateway 10.92.0.1: parent subnet 10.91.0.0/24 doesn't contain this address",
        ),
        (
            vec!["network", "create", "--subnet", "10.91.0.0/33", "x4"],
            "invalid CIDR address: 10.91.0.0/33",
        ),
        (
            vec!["network", "create", "--subnet", "10.91.0.1/24", "x5"],
            "has host bits set",
        ),
        (
            vec!["network", "create", "taken"],
            "network with name taken already exists",
        ),
        (
            vec!["network", "create", "bridge"],
            "network with name bridge already exists",
        ),
        (
            vec![
                "network",
                "create",
                "--ip-range",
                "10.99.0.0/24",
                "--subnet",
                "10.91.0.0/24",
                "x6",
            ],
            "no matching subnet for range 10.99.0.0/24",
        ),
        (
            vec!["network", "create", "-d", "macvlan", "x7"],
            "plugin \"macvlan\" not found",
        ),
        (
            vec!["network", "create", "-d", "overlay", "x8"],
            "overlay networks need a cluster store",
        ),
        (vec!["network", "rm", "taken"], "has active endpoints"),
        (
            vec!["network", "rm", "bridge"],
            "bridge is a pre-defined network and cannot be removed",
        ),
        (vec!["network", "rm", "nosuch"], "network nosuch not found"),
        (
            vec!["run", "--name", "holder"],
            "The container name \"holder\" is already in use",
        ),
        (
            vec!["run", "--name", "b1", "--network", "taken", "--ip", "10.90.0.10"],
            "Address already in use: 10.90.0.10",
        ),
        (
            vec!["run", "--name", "b2", "--network", "taken", "--ip", "10.77.0.10"],
            "It does not belong to any of this network's subnets",
        ),
        (
            vec!["run", "--name", "b3"],
            "no available IPv4 addresses on this network's address pools",
        ),
        (
            vec!["run", "--name", "b4", "--network", "taken", "-p", "abc"],
            "Invalid containerPort: abc",
        ),
        (
            vec!["run", "--name", "b5", "--network", "taken", "-p", "x:80"],
            "Invalid hostPort: x",
        ),
        (
            vec!["run", "--name", "b6", "--network", "taken", "-p", "80/icmp"],
            "Invalid proto: icmp",
        ),
        (
            vec![
                "run",
                "--name",
                "b7",
                "--network",
                "taken",
                "-p",
                "300.1.1.1:80:80",
            ],
            "Invalid ip address: 300.1.1.1",
        ),
        (
            vec![
                "run",
                "--name",
                "b8",
                "--network",
                "taken",
                "-p",
                "8000-8005:80-90",
            ],
            "Invalid ranges specified for container and host Ports: 80-90 and 8000-8005",
        ),
        (
            vec!["run", "--name", "b9", "--network", "taken", "-p", "80:81"],
            "Bind for 0.0.0.0:80 failed: port is already allocated",
        ),
        (
            vec![
                "run",
                "--name",
                "ba",
                "--network",
                "taken",
                "-p",
                "127.0.0.1:80:81",
            ],
            "Bind for 127.0.0.1:80 failed: port is already allocated",
        ),
        (
            vec!["run", "--name", "bb", "--network", "container:nosuch"],
            "No such container: nosuch",
        ),
        (
            vec!["run", "--name", "bc", "--network", "nosuchnet"],
            "network nosuchnet not found",
        ),
        (
            vec!["run", "--name", "bd", "--network", "host", "-p", "80"],
            "conflicting options: port publishing and the host network mode",
        ),
        (
            vec!["run", "--name", "be", "--network", "container:shared", "-p", "80"],
            "conflicting options: port publishing and the container type network mode",
        ),
        (
            vec!["run", "--name", "bf", "--network", "taken", "--mtu", "10"],
            "MTU 10 is out of range",
        ),
        (
            vec!["run", "--name", "bg", "--network", "taken", "--dns", "not-an-ip"],
            "invalid DNS server address: not-an-ip",
        ),
        (
            vec![
                "run",
                "--name",
                "bh",
                "--network",
                "taken",
                "--netns",
                "/etc/hostname",
            ],
            "/etc/hostname is not a network namespace",
        ),
        (vec!["run", "--name", "b/i"], "Invalid container name (b/i)"),
        (
            vec![
                "run",
                "--name",
                "bj",
                "--network",
                "taken",
                "--",
                "/no/such/program",
            ],
            "cannot start",
        ),
        (vec!["rm", "nosuch"], "No such container: nosuch"),
        (vec!["inspect", "nosuch"], "No such container: nosuch"),
        (
            vec!["network", "connect", "taken", "nosuch"],
            "No such container: nosuch",
        ),
        (
            vec!["network", "connect", "taken", "holder"],
            "endpoint with name holder already exists in network taken",
        ),
        (
            vec!["network", "connect", "nosuchnet", "holder"],
            "network nosuchnet not found",
        ),
    ];
    for (args, needle) in &cases {
        let err = lab.fails(args);
        assert!(
            err.contains(needle),
            "natctl {args:?}: expected {needle:?} in {err:?}"
        );
        assert!(
            err.starts_with("Error response from daemon: "),
            "Docker-style prefix: {err}"
        );
    }
    assert_eq!(lab.json(&["ps"]), ps, "sandboxes unchanged");
    assert_eq!(lab.json(&["network", "ls"]), nets, "networks unchanged");
    assert_eq!(
        lab.host_ok(&["ip", "-o", "link"]).lines().count(),
        links,
        "no interface left behind"
    );
    let stray: Vec<String> = String::from_utf8_lossy(&sh("ip", &["netns", "list"]).stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("{}-sbx-b", lab.prefix)))
        .map(String::from)
        .collect();
    assert!(stray.is_empty(), "no namespace left behind: {stray:?}");

    // natd's own flags are checked before anything starts.
    let out = sh(
        natlab::natd_bin().to_str().unwrap(),
        &["--bip", "10.0.0.0/8", "--socket", "/nonexistent/x"],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bridge address"));
}

/// A supervisor that takes SIGTERM with sigwait blocks it, and signal masks survive exec:
/// natd started by one must still stop on SIGTERM (before this test, it never did).
/// Control: a process started the same way does have SIGTERM blocked.
#[test]
fn natd_stops_on_sigterm_even_when_started_with_it_blocked() {
    let mut lab = Lab::new().expect("lab");
    lab.natd_stop_signals_blocked = true;
    lab.start_natd(&[]).expect("start natd");
    let mut control = Command::new("sleep");
    control.arg("30");
    natlab::block_stop_signals(&mut control);
    let mut control = control.spawn().expect("spawn sleep");
    let blocked = std::fs::read_to_string(format!("/proc/{}/status", control.id())).unwrap_or_default();
    let _ = control.kill();
    let _ = control.wait();
    let mask = blocked
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .expect("SigBlk");
    assert_ne!(mask & (1 << (15 - 1)), 0, "the control has SIGTERM (15) blocked: {mask:x}");
    let natd = lab.natd.as_mut().expect("natd running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(natd.child.id() as i32), Signal::SIGTERM).expect("signal natd");
    let stopped = wait_until(Duration::from_secs(10), || natd.child.try_wait().ok().flatten().is_some());
    if stopped {
        lab.natd = None;
    }
    assert!(stopped, "natd did not stop on SIGTERM:\n{}", lab.natd_log());
    assert!(lab.natd_log().contains("shutting down"), "{}", lab.natd_log());
}
