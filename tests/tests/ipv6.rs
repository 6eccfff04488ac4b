//! End-to-end tests of the user-facing half of IPv6 (Docker 27 semantics): networks with
//! `--ipv6` (an address from the host's ULA pool or the user's subnet), `--ip6`, the daemon's
//! `--ipv6`, and published ports on both families as `natctl` shows them. natd runs in the
//! lab's own namespace; what is checked is what a user sees (natctl, `ip`, ping). The IPv6
//! datapath (NAT, published ports reachable over IPv6) is tested with the datapath itself.
use std::net::Ipv6Addr;

use ipnetwork::Ipv6Network;
use natlab::Lab;
use serde_json::Value;

fn ping6(lab: &Lab, from: &str, to: &str) -> bool {
    lab.exec(from, &["ping", "-6", "-c1", "-W2", to]).status.success()
}

/// The sandbox's global IPv6 address on eth0, as `ip` shows it (`ADDR/PREFIX`).
fn global_v6(lab: &Lab, sandbox: &str) -> String {
    let out = lab.exec_ok(
        sandbox,
        &["ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global"],
    );
    out.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .unwrap_or_else(|| panic!("no global IPv6 address on eth0 of {sandbox}: {out}"))
        .to_string()
}

fn addr_only(cidr: &str) -> &str {
    cidr.split('/').next().unwrap()
}

/// `natctl network ls` must not list `name`.
fn absent(lab: &Lab, name: &str) {
    let ls = lab.ok(&["network", "ls"]);
    assert!(
        !ls.lines().any(|l| l.split_whitespace().next() == Some(name)),
        "{name} was created:\n{ls}"
    );
}

#[test]
fn auto_ula_network_sandboxes_reach_each_other_and_the_gateway() {
    let lab = Lab::started(&[]);
    lab.ok(&["network", "create", "--ipv6", "v6net"]);
    let view = lab.json(&["network", "inspect", "v6net"]);
    let subnet = view["subnet_v6"].as_str().expect("an IPv6 subnet").to_string();
    let gateway = view["gateway_v6"].as_str().expect("an IPv6 gateway").to_string();
    // fdXX:XXXX:XXXX::/64: the lowest /64 of the host's ULA /48, gateway its first address.
    let net: Ipv6Network = subnet.parse().expect("a subnet");
    let segments = net.network().segments();
    assert!(segments[0] >> 8 == 0xfd && net.prefix() == 64, "{subnet}");
    assert_eq!(segments[3], 0, "the first /64 of the /48: {subnet}");
    assert_eq!(gateway, format!("{}1", subnet.trim_end_matches("/64")));
    assert_eq!(view["enable_ipv6"], true);
    assert_eq!(
        view["options"]["com.docker.network.bridge.gateway_mode_ipv6"],
        "nat"
    );
    let ls = lab.ok(&["network", "ls"]);
    let row = ls.lines().find(|l| l.starts_with("v6net")).expect("v6net listed");
    assert!(row.contains(&subnet) && row.contains(&gateway), "{row}");

    // The bridge has the gateway address; sandboxes have addresses and a default route.
    let bridge = view["bridge"].as_str().unwrap();
    let addrs = lab.host_ok(&["ip", "-o", "-6", "addr", "show", "dev", bridge]);
    assert!(addrs.contains(&format!("{gateway}/64")), "{addrs}");
    lab.ok(&["run", "--name", "aa", "--network", "v6net"]);
    lab.ok(&["run", "--name", "bb", "--network", "v6net"]);
    let (a, b) = (global_v6(&lab, "aa"), global_v6(&lab, "bb"));
    assert!(a.ends_with("/64") && b.ends_with("/64") && a != b, "{a} {b}");
    for address in [&a, &b] {
        let ip: Ipv6Addr = addr_only(address).parse().unwrap();
        assert!(net.contains(ip), "{address} in {subnet}");
    }
    let route = lab.exec_ok("aa", &["ip", "-6", "route", "show", "default"]);
    assert!(route.contains(&format!("via {gateway} dev eth0")), "{route}");
    // The addresses are usable at once (no DAD wait) and inspect shows them.
    assert!(ping6(&lab, "aa", addr_only(&b)), "aa cannot ping b over IPv6");
    assert!(ping6(&lab, "bb", addr_only(&a)), "bb cannot ping a over IPv6");
    assert!(ping6(&lab, "aa", &gateway), "aa cannot ping its IPv6 gateway");
    let inspect = lab.json(&["inspect", "aa"]);
    assert_eq!(inspect["endpoints"][0]["ipv6"], addr_only(&a));
    let ps = lab.ok(&["ps"]);
    assert!(ps.contains(addr_only(&a)), "{ps}");
    let sysctl = lab.host_ok(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"]);
    assert_eq!(sysctl.trim(), "1", "IPv6 forwarding in natd's namespace");
    // The lab's uplink takes router advertisements (accept_ra=1), which forwarding turns
    // off: natd says so instead of changing the uplink.
    assert!(
        lab.natd_log().contains("accept_ra=2"),
        "natd warns about the uplink's router advertisements"
    );

    // A second --ipv6 network takes the next /64 of the same /48.
    lab.ok(&["network", "create", "--ipv6", "v6two"]);
    let second = lab.json(&["network", "inspect", "v6two"])["subnet_v6"]
        .as_str()
        .unwrap()
        .to_string();
    let next = Ipv6Addr::from(u128::from(net.network()) + (1u128 << 64));
    assert_eq!(second, format!("{next}/64"));

    // The subnet survives a restart.
    let mut lab = lab;
    lab.restart_natd().expect("restart natd");
    assert_eq!(
        lab.json(&["network", "inspect", "v6net"])["subnet_v6"],
        subnet.as_str()
    );
    assert!(ping6(&lab, "aa", addr_only(&b)), "after restart");
}

#[test]
fn explicit_subnet_static_address_and_refusals() {
    let lab = Lab::started(&[]);
    lab.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.61.0.0/24",
        "--subnet",
        "2001:db8:61::/64",
        "--gateway",
        "2001:db8:61::fe",
        "-o",
        "com.docker.network.bridge.gateway_mode_ipv6=routed",
        "exp6",
    ]);
    let view = lab.json(&["network", "inspect", "exp6"]);
    assert_eq!(view["subnet"], "10.61.0.0/24");
    assert_eq!(view["subnet_v6"], "2001:db8:61::/64");
    assert_eq!(view["gateway_v6"], "2001:db8:61::fe");
    assert_eq!(view["gateway"], "10.61.0.1");
    assert_eq!(
        view["options"]["com.docker.network.bridge.gateway_mode_ipv6"],
        "routed"
    );
    assert_eq!(
        view["options"]["com.docker.network.bridge.gateway_mode_ipv4"],
        "nat"
    );

    // --ip6: the address inside the sandbox is the one asked for.
    lab.ok(&[
        "run",
        "--name",
        "fixed",
        "--network",
        "exp6",
        "--ip6",
        "2001:db8:61::42",
    ]);
    assert_eq!(global_v6(&lab, "fixed"), "2001:db8:61::42/64");
    assert!(ping6(&lab, "fixed", "2001:db8:61::fe"), "gateway unreachable");
    lab.ok(&["run", "--name", "auto", "--network", "exp6"]);
    assert!(ping6(&lab, "auto", "2001:db8:61::42"));

    // network connect --ip6 on a running sandbox.
    lab.ok(&["run", "--name", "joiner"]);
    lab.ok(&["network", "connect", "--ip6", "2001:db8:61::99", "exp6", "joiner"]);
    let eth1 = lab.exec_ok(
        "joiner",
        &["ip", "-o", "-6", "addr", "show", "dev", "eth1", "scope", "global"],
    );
    assert!(eth1.contains("2001:db8:61::99/64"), "{eth1}");

    // Refusals in Docker's words, nothing created.
    let refusals: [(&[&str], &str); 5] = [
        (
            &["run", "--name", "r1", "--network", "exp6", "--ip6", "10.61.0.9"],
            "invalid IPv6 address: 10.61.0.9",
        ),
        (
            &["run", "--name", "r2", "--network", "exp6", "--ip6", "::"],
            "invalid IPv6 address: ::",
        ),
        (
            &[
                "run",
                "--name",
                "r3",
                "--network",
                "exp6",
                "--ip6",
                "2001:db8:99::1",
            ],
            "no configured subnet or ip-range contain the IP address 2001:db8:99::1",
        ),
        (
            &[
                "run",
                "--name",
                "r4",
                "--network",
                "exp6",
                "--ip6",
                "2001:db8:61::42",
            ],
            "Address already in use",
        ),
        (
            &["run", "--name", "r5", "--ip6", "2001:db8:61::43"],
            "user specified IP address is supported only when connecting to networks with user configured subnets",
        ),
    ];
    for (args, expected) in refusals {
        let err = lab.fails(args);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(
            !lab.natctl(&["inspect", args[2]]).status.success(),
            "{} exists",
            args[2]
        );
    }
    let err = lab.fails(&["network", "connect", "--ip6", "2001:db8:61::42", "exp6", "auto"]);
    assert!(
        err.contains("already exists") || err.contains("Address already in use"),
        "{err}"
    );
}

#[test]
fn network_create_refusals_leave_nothing_behind() {
    let lab = Lab::started(&[]);
    lab.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "2001:db8:70::/64",
        "taken",
    ]);
    let cases: [(&[&str], &str); 10] = [
        (
            &["--ipv6", "--subnet", "2001:db8:zz::/64"],
            "'2001:db8:zz::/64' is not a valid IPv6 subnet",
        ),
        (
            &["--ipv6", "--subnet", "ff05::/64"],
            "multicast subnet 'ff05::/64' is not allowed",
        ),
        (
            &["--ipv6", "--subnet", "fe80::/64"],
            "'fe80::/64' clashes with the Link-Local prefix 'fe80::/64'",
        ),
        (
            &["--ipv6", "--subnet", "2001:db8:71::1/64"],
            "invalid subnet 2001:db8:71::1/64: it should be 2001:db8:71::/64",
        ),
        (
            &["--ipv6", "--subnet", "2001:db8:70::/56"],
            "invalid pool request: Pool overlaps with other one on this address space",
        ),
        (
            &[
                "--ipv6",
                "--subnet",
                "2001:db8:72::/64",
                "--gateway",
                "2001:db8:73::1",
            ],
            "invalid gateway 2001:db8:73::1: parent subnet 2001:db8:72::/64 doesn't contain this address",
        ),
        (
            &[
                "--ipv6",
                "--subnet",
                "2001:db8:72::/64",
                "--subnet",
                "2001:db8:74::/64",
            ],
            "bridge driver doesn't support multiple subnets",
        ),
        (&["--subnet", "2001:db8:72::/64"], "an IPv6 subnet needs --ipv6"),
        (
            &["-o", "com.docker.network.bridge.gateway_mode_ipv4=bridged"],
            "unknown gateway mode bridged",
        ),
        (
            &[
                "-d",
                "hostbridge",
                "--ipv6",
                "--subnet",
                "10.80.0.0/24",
                "--gateway",
                "10.80.0.1",
            ],
            "IPv6 is not supported on hostbridge networks yet",
        ),
    ];
    for (i, (args, expected)) in cases.iter().enumerate() {
        let name = format!("bad{i}");
        let mut full = vec!["network", "create"];
        full.extend_from_slice(args);
        full.push(&name);
        let err = lab.fails(&full);
        assert!(err.contains(expected), "{full:?}: {err}");
        absent(&lab, &name);
    }
    let err = lab.fails(&["network", "create", "-d", "overlay", "--ipv6", "ov6"]);
    assert!(
        err.contains("IPv6 is not supported on overlay networks yet"),
        "{err}"
    );
    absent(&lab, "ov6");
    // Only the one network was made (and the default one).
    assert_eq!(lab.json(&["network", "ls"]).as_array().unwrap().len(), 2);
}

fn port_lines(lab: &Lab, sandbox: &str) -> Vec<String> {
    let mut lines: Vec<String> = lab.ok(&["port", sandbox]).lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[test]
fn published_ports_show_both_families() {
    let lab = Lab::started(&["--ipv6"]);
    // The default network got a ULA /64 from --ipv6.
    let bridge = lab.json(&["network", "inspect", "bridge"]);
    let subnet: Ipv6Network = bridge["subnet_v6"]
        .as_str()
        .expect("default network has IPv6")
        .parse()
        .unwrap();
    assert!(
        subnet.network().segments()[0] >> 8 == 0xfd && subnet.prefix() == 64,
        "{subnet}"
    );

    lab.ok(&[
        "run",
        "--name",
        "web",
        "-p",
        "8080:80",
        "-p",
        "[::]:8081:80",
        "-p",
        "0.0.0.0:8082:80",
    ]);
    assert_eq!(
        port_lines(&lab, "web"),
        [
            "80/tcp -> 0.0.0.0:8080",
            "80/tcp -> 0.0.0.0:8082",
            "80/tcp -> [::]:8080",
            "80/tcp -> [::]:8081"
        ]
    );
    let ps = lab.ok(&["ps"]);
    assert!(
        ps.contains("[::]:8080->80/tcp") && ps.contains("0.0.0.0:8080->80/tcp"),
        "{ps}"
    );
    // Random ports: one port, the same in both families.
    lab.ok(&["run", "--name", "rnd", "-p", "80"]);
    let ports = lab.json(&["inspect", "rnd"])["ports"].as_array().unwrap().clone();
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert_eq!(ports[0]["host_port"], ports[1]["host_port"]);
    assert_eq!(ports[0]["host_ip"], Value::Null);
    assert_eq!(ports[1]["host_ip"], "::");
    // Conflicts per family: [::]:8081 is taken, 0.0.0.0:8081 is not.
    let err = lab.fails(&["run", "--name", "clash", "-p", "[::]:8081:80"]);
    assert!(
        err.contains("Bind for [::]:8081 failed: port is already allocated"),
        "{err}"
    );
    assert!(!lab.natctl(&["inspect", "clash"]).status.success());
    lab.ok(&["run", "--name", "v4only", "-p", "0.0.0.0:8081:80"]);
    // Withdrawing the IPv6 binding keeps the IPv4 one.
    lab.ok(&["unpublish", "web", "[::]:8080"]);
    assert_eq!(
        port_lines(&lab, "web"),
        [
            "80/tcp -> 0.0.0.0:8080",
            "80/tcp -> 0.0.0.0:8082",
            "80/tcp -> [::]:8081"
        ]
    );
}

#[test]
fn ipv6_host_addresses_need_an_ipv6_network() {
    let lab = Lab::started(&[]);
    let err = lab.fails(&["run", "--name", "web", "-p", "[::]:8080:80"]);
    assert!(
        err.contains("cannot publish [::]:8080:80/tcp: network bridge has no IPv6 (start natd with --ipv6)"),
        "{err}"
    );
    assert!(!lab.natctl(&["inspect", "web"]).status.success());
    lab.ok(&["network", "create", "plain"]);
    let err = lab.fails(&[
        "run",
        "--name",
        "web",
        "--network",
        "plain",
        "-p",
        "[2001:db8::1]:8080:80",
    ]);
    assert!(
        err.contains("network plain has no IPv6 (create it with --ipv6)"),
        "{err}"
    );
    // Without IPv6 a plain -p stays IPv4 only.
    lab.ok(&["run", "--name", "web", "-p", "8080:80"]);
    assert_eq!(port_lines(&lab, "web"), ["80/tcp -> 0.0.0.0:8080"]);
    let err = lab.fails(&["publish", "web", "[::]:9090:90"]);
    assert!(err.contains("has no IPv6"), "{err}");
    assert_eq!(port_lines(&lab, "web"), ["80/tcp -> 0.0.0.0:8080"]);
}
