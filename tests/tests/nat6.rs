//! End-to-end IPv6 NAT through the eBPF dataplane (NAT66): published ports reached over
//! IPv6 from the external namespace with the client's own address seen by the server,
//! `-p` on both families with one host port, masquerade of sandbox traffic to the uplink's
//! IPv6 address, ICMPv6 echo through the NAT, PMTU discovery through it (Packet Too Big
//! translated), isolation, and no netfilter rule or kernel conntrack entry taking part.
use std::{net::IpAddr, time::Duration};

use natlab::{EXT_IP, EXT_IP6, HOST_UPLINK_IP, HOST_UPLINK_IP6, Lab, echo_line as echo, wait_listening, whoami6};

fn ext_tcp(lab: &Lab, addr: &str, port: u16) -> Option<String> {
    let out = lab.ext(&["socat", "-t3", "-T3", "-", &format!("TCP:{addr}:{port},connect-timeout=3")]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The address a whoami answered with.
fn peer(line: &str) -> IpAddr {
    natlab::peer_ip(line).unwrap_or_else(|| panic!("not an address: {line}"))
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

fn assert_no_kernel_nat(lab: &Lab) {
    let rules = lab.host_ok(&["nft", "list", "ruleset"]);
    assert!(rules.trim().is_empty(), "no netfilter rule in the host namespace:\n{rules}");
    let ct = lab.host(&["conntrack", "-L", "-f", "ipv6"]);
    let listed = String::from_utf8_lossy(&ct.stdout).to_string();
    assert!(listed.trim().is_empty(), "no kernel conntrack entry:\n{listed}");
}

#[test]
fn published_ports_and_masquerade_over_ipv6_ebpf() {
    published_ports_and_masquerade_over_ipv6("ebpf");
}

#[test]
fn published_ports_and_masquerade_over_ipv6_nftables() {
    published_ports_and_masquerade_over_ipv6("nftables");
}

fn published_ports_and_masquerade_over_ipv6(dataplane: &str) {
    let ebpf = dataplane == "ebpf";
    let lab = Lab::started(&["--dataplane", dataplane]);
    lab.ok(&["network", "create", "--ipv6", "n6"]);
    lab.run_script("web", &["--network", "n6", "-p", "8080:80"], &whoami6(80));
    let port = lab.ok(&["port", "web"]);
    assert!(port.contains("0.0.0.0:8080") && port.contains("[::]:8080"), "{port}");

    // Over IPv6 the server sees the client's own IPv6 address; over IPv4 its IPv4 one: one
    // host port, both families.
    // Answered at once: the new network's bridge does not hold its first IPv6 packets back
    // (no duplicate address detection on it).
    let line = ext_tcp(&lab, &format!("[{HOST_UPLINK_IP6}]"), 8080).expect("an answer over IPv6");
    assert_eq!(peer(&line), ip(EXT_IP6), "the server sees the client's own address");
    let line = ext_tcp(&lab, HOST_UPLINK_IP, 8080).expect("an answer over IPv4");
    assert_eq!(peer(&line), ip(EXT_IP));
    if ebpf {
        assert!(lab.counter("dnat_new") >= 2, "both flows were translated by natd's programs");
    } else {
        let ruleset = lab.host_ok(&["nft", "list", "table", "ip6", &lab.prefix]);
        assert!(ruleset.contains("ports_any"), "natd's ip6 table:\n{ruleset}");
    }

    // The host's own connections to [::1] and to its own IPv6 address reach the sandbox
    // (socket hooks: nothing leaves with ::1), and the application sees the address it
    // used as its peer.
    let host_line = |addr: &str, port: u16| {
        natlab::tcp_line(&["ip", "netns", "exec", &lab.host_ns], &format!("[{addr}]"), port)
    };
    assert!(host_line(HOST_UPLINK_IP6, 8080).is_some(), "the uplink's IPv6 address from the host");
    if ebpf {
        assert!(host_line("::1", 8080).is_some(), "[::1]:8080 from the host");
        // A dual-stack socket reaching the IPv4 mapping through a v4-mapped address.
        assert!(host_line("::ffff:127.0.0.1", 8080).is_some(), "[::ffff:127.0.0.1]:8080 from the host");
        // -p [::1]:8082:80 is the host's alone: reachable there, not through any other
        // address.
        lab.run_script("local", &["--network", "n6", "-p", "[::1]:8082:80"], &whoami6(80));
        assert!(wait_listening(&lab.netns_of("local"), "tcp", 80));
        assert!(host_line("::1", 8082).is_some(), "[::1]:8082 from the host");
        assert!(ext_tcp(&lab, &format!("[{HOST_UPLINK_IP6}]"), 8082).is_none(), "8082 is bound to ::1 only");
    } else {
        let refusal = lab.fails(&["run", "--name", "local", "--network", "n6", "-p", "[::1]:8082:80"]);
        assert!(refusal.contains("need the eBPF dataplane"), "{refusal}");
        let ps = lab.ok(&["ps"]);
        assert!(!ps.contains("local"), "refused run left nothing: {ps}");
    }

    // The sandbox's own IPv6 address is not reachable from outside (nat mode).
    let sandbox6 = lab.json(&["inspect", "web"])["endpoints"][0]["ipv6"]
        .as_str()
        .expect("web has an IPv6 address")
        .to_string();
    lab.ext_ok(&["ip", "-6", "route", "replace", &format!("{sandbox6}/128"), "via", HOST_UPLINK_IP6]);
    let before = lab.counter("drop_direct_access");
    assert!(ext_tcp(&lab, &format!("[{sandbox6}]"), 80).is_none(), "direct access to {sandbox6} must fail");
    assert!(lab.counter("drop_direct_access") > before, "dropped by natd's policy");

    // Masquerade: a sandbox's connection arrives from the uplink's IPv6 address.
    let _server = lab.spawn_in(
        &lab.ext_ns,
        &["socat", "TCP6-LISTEN:9000,fork,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR"],
    );
    assert!(wait_listening(&lab.ext_path(), "tcp", 9000));
    lab.ok(&["run", "--name", "client", "--network", "n6"]);
    let seen = lab
        .tcp_line_from("client", &format!("[{EXT_IP6}]"), 9000)
        .expect("the sandbox reaches the outside over IPv6");
    assert_eq!(peer(&seen), ip(HOST_UPLINK_IP6), "masqueraded to the uplink's address");
    let ping = lab.exec("client", &["ping", "-6", "-c1", "-W2", EXT_IP6]);
    assert!(ping.status.success(), "ping -6 through the NAT: {}", String::from_utf8_lossy(&ping.stdout));
    if ebpf {
        assert!(lab.counter("snat_new") >= 1);
        // ICMPv6 echo is tracked by natd itself.
        let flows = lab.ok(&["ct", "ls"]);
        assert!(flows.contains("icmpv6"), "{flows}");
        assert_no_kernel_nat(&lab);
    }
    // -p [ADDR]:PORT:80 binds that IPv6 address only.
    lab.host_ok(&["ip", "addr", "add", "2001:db8:198::3/64", "dev", "up0", "nodad"]);
    lab.run_script("bound", &["--network", "n6", "-p", "[2001:db8:198::3]:8083:80"], &whoami6(80));
    assert!(wait_listening(&lab.netns_of("bound"), "tcp", 80));
    let port = lab.ok(&["port", "bound"]);
    assert!(port.contains("[2001:db8:198::3]:8083") && !port.contains("0.0.0.0"), "{port}");
    let line = ext_tcp(&lab, "[2001:db8:198::3]", 8083).expect("the bound address answers");
    assert_eq!(peer(&line), ip(EXT_IP6));
    assert!(ext_tcp(&lab, &format!("[{HOST_UPLINK_IP6}]"), 8083).is_none(), "another IPv6 address does not");
    assert!(ext_tcp(&lab, HOST_UPLINK_IP, 8083).is_none(), "nor IPv4");
    // The same on a running sandbox (`publish`, whose sync otherwise writes only the new
    // port): an address added a moment ago answers at once, not after natd's next tick.
    lab.host_ok(&["ip", "addr", "add", "2001:db8:198::4/64", "dev", "up0", "nodad"]);
    lab.ok(&["publish", "bound", "[2001:db8:198::4]:8084:80"]);
    let line = ext_tcp(&lab, "[2001:db8:198::4]", 8084).expect("the address just added answers");
    assert_eq!(peer(&line), ip(EXT_IP6));
}

#[test]
fn isolation_hairpin_and_path_mtu_over_ipv6() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    // A far server behind a router (the external namespace) whose next link has MTU 1280.
    let far = lab.add_netns("far").expect("far namespace");
    let (e, f) = (lab.ext_ns.clone(), far.clone());
    for args in [
        vec!["link", "add", "ext1", "netns", &e, "mtu", "1280", "type", "veth", "peer", "name", "far0", "netns", &f, "mtu", "1280"],
        vec!["-n", &e, "addr", "add", "2001:db8:199::1/64", "dev", "ext1", "nodad"],
        vec!["-n", &f, "addr", "add", "2001:db8:199::2/64", "dev", "far0", "nodad"],
        vec!["-n", &e, "link", "set", "ext1", "up"],
        vec!["-n", &f, "link", "set", "far0", "up"],
        vec!["-n", &f, "link", "set", "lo", "up"],
        vec!["-n", &f, "-6", "route", "add", "default", "via", "2001:db8:199::1"],
        vec!["-n", &e, "-6", "route", "add", "2001:db8:198::/48", "via", HOST_UPLINK_IP6],
    ] {
        let out = natlab::sh("ip", &args);
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    lab.in_ns(&e, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);

    lab.ok(&["network", "create", "--ipv6", "n6a"]);
    lab.ok(&["network", "create", "--ipv6", "--icc=false", "n6b"]);
    lab.run_script("web", &["--network", "n6a", "-p", "8080:80"], &whoami6(80));
    lab.ok(&["run", "--name", "a2", "--network", "n6a"]);
    lab.ok(&["run", "--name", "b1", "--network", "n6b"]);
    lab.ok(&["run", "--name", "b2", "--network", "n6b"]);
    let v6 = |name: &str| {
        lab.json(&["inspect", name])["endpoints"][0]["ipv6"]
            .as_str()
            .expect("an IPv6 address")
            .to_string()
    };
    let ping = |from: &str, to: &str| lab.exec(from, &["ping", "-6", "-c1", "-W2", to]).status.success();

    // Same network: reachable; another network: dropped by natd; icc=false: dropped.
    assert!(ping("a2", &v6("web")), "same network");
    let before = lab.counter("drop_cross_network");
    assert!(!ping("a2", &v6("b1")), "n6a must not reach n6b");
    assert!(lab.counter("drop_cross_network") > before);
    let before = lab.counter("drop_icc");
    assert!(!ping("b1", &v6("b2")), "icc=false within n6b");
    assert!(lab.counter("drop_icc") > before);

    // --internal: no way out over IPv6 either.
    lab.ok(&["network", "create", "--ipv6", "--internal", "i6"]);
    lab.ok(&["run", "--name", "inside", "--network", "i6"]);
    assert!(!ping("inside", EXT_IP6), "no route out of an internal network");
    // Even with a route added inside (root in its namespace can), natd drops it.
    let gateway = lab.json(&["network", "inspect", "i6"])["gateway_v6"].as_str().unwrap().to_string();
    lab.exec_ok("inside", &["ip", "-6", "route", "add", "default", "via", &gateway]);
    let before = lab.counter("drop_internal");
    assert!(!ping("inside", EXT_IP6), "an internal network reaches nothing outside");
    assert!(lab.counter("drop_internal") > before, "dropped by natd's policy");

    // Hairpin: a sandbox reaches a published port through the host's IPv6 address.
    assert!(wait_listening(&lab.netns_of("web"), "tcp", 80));
    assert!(
        lab.tcp_line_from("a2", &format!("[{HOST_UPLINK_IP6}]"), 8080).is_some(),
        "hairpin over IPv6"
    );

    // Path MTU discovery through the NAT: the router's Packet Too Big, addressed to the
    // uplink's address, is translated back to the sandbox, which then knows the path MTU.
    let out = lab.exec("a2", &["ping", "-6", "-M", "do", "-s", "1400", "-c", "2", "-i", "0.3", "-W", "2", "2001:db8:199::2"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("mtu=1280") || text.contains("mtu = 1280"), "the sandbox learnt the path MTU:\n{text}");
    assert!(lab.counter("icmp_error_translated") >= 1, "translated by natd");
    let small = lab.exec("a2", &["ping", "-6", "-M", "do", "-s", "1200", "-c1", "-W2", "2001:db8:199::2"]);
    assert!(small.status.success(), "packets within the path MTU pass");
    assert_no_kernel_nat(&lab);
}

#[test]
fn routed_gateway_mode_ebpf() {
    routed_gateway_mode("ebpf");
}

#[test]
fn routed_gateway_mode_nftables() {
    routed_gateway_mode("nftables");
}

/// `gateway_mode_ipv6=routed`: no NAT for IPv6, the sandbox reachable at its own address on
/// its published container ports only, its outbound flows leaving with its own address;
/// IPv4 of the same network stays NATed.
fn routed_gateway_mode(dataplane: &str) {
    let lab = Lab::started(&["--dataplane", dataplane]);
    lab.ok(&[
        "network",
        "create",
        "--ipv6",
        "-o",
        "com.docker.network.bridge.gateway_mode_ipv6=routed",
        "r6",
    ]);
    let subnet = lab.json(&["network", "inspect", "r6"])["subnet_v6"]
        .as_str()
        .expect("an IPv6 subnet")
        .to_string();
    let script = format!("{} & {}", whoami6(80), whoami6(81));
    lab.run_script("web", &["--network", "r6", "-p", "8080:80"], &script);
    let web6 = lab.json(&["inspect", "web"])["endpoints"][0]["ipv6"]
        .as_str()
        .expect("web has an IPv6 address")
        .to_string();
    // The LAN routes the network's subnet to the host, as a routed network expects.
    let route = lab.ext(&["ip", "-6", "route", "add", &subnet, "via", HOST_UPLINK_IP6]);
    assert!(route.status.success());

    let line = ext_tcp(&lab, &format!("[{web6}]"), 80).expect("the published container port is open on the sandbox's own address");
    assert_eq!(peer(&line), ip(EXT_IP6), "no NAT: the client's own address");
    assert!(ext_tcp(&lab, &format!("[{web6}]"), 81).is_none(), "an unpublished port stays closed");
    assert!(
        ext_tcp(&lab, &format!("[{HOST_UPLINK_IP6}]"), 8080).is_none(),
        "no host port on IPv6 in routed mode"
    );
    // IPv4 of the same network is still NATed.
    let line = ext_tcp(&lab, HOST_UPLINK_IP, 8080).expect("IPv4 published port");
    assert_eq!(peer(&line), ip(EXT_IP));

    // Outbound: the sandbox's own address, and the replies come back in.
    let _server = lab.spawn_in(
        &lab.ext_ns,
        &["socat", "TCP6-LISTEN:9000,fork,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR"],
    );
    assert!(wait_listening(&lab.ext_path(), "tcp", 9000));
    let seen = lab
        .tcp_line_from("web", &format!("[{EXT_IP6}]"), 9000)
        .expect("the sandbox reaches the outside over IPv6");
    assert_eq!(peer(&seen), ip(&web6), "routed: not masqueraded");
    let ping = lab.exec("web", &["ping", "-6", "-c1", "-W2", EXT_IP6]);
    assert!(ping.status.success(), "ping out of a routed network");
}

/// IPv6 flows in both directions outlive natd: killed, they keep flowing (and new ones
/// start) on the pinned maps and programs; restarted, natd adopts them.
#[test]
fn ipv6_flows_survive_natd_stop_and_restart() {
    use std::net::TcpStream;
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.ok(&["network", "create", "--ipv6", "n6"]);
    lab.run_script(
        "echo",
        &["--network", "n6", "-p", "8080:80"],
        "socat TCP6-LISTEN:80,ipv6only=0,fork,reuseaddr EXEC:cat",
    );
    let ns = lab.netns_of("echo");
    assert!(wait_listening(&ns, "tcp", 80));
    let _remote = lab.spawn_in(&lab.ext_ns, &["socat", "TCP6-LISTEN:9000,fork,reuseaddr", "EXEC:cat"]);
    assert!(wait_listening(&lab.ext_path(), "tcp", 9000));
    let uplink6: std::net::Ipv6Addr = HOST_UPLINK_IP6.parse().unwrap();
    let ext6: std::net::Ipv6Addr = EXT_IP6.parse().unwrap();
    let connect = |path: &str, addr: std::net::Ipv6Addr, port: u16| {
        natlab::in_netns(path, || {
            TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connect [{addr}]:{port}: {e}"))
        })
    };
    let mut inbound = connect(&lab.ext_path(), uplink6, 8080);
    let mut outbound = connect(&ns, ext6, 9000);
    for stream in [&mut inbound, &mut outbound] {
        stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    }
    assert!(echo(&mut inbound, "before") && echo(&mut outbound, "before"));
    lab.stop_natd(nix::sys::signal::Signal::SIGKILL);
    assert!(echo(&mut inbound, "while-down"), "inbound IPv6 flow while natd is down");
    assert!(echo(&mut outbound, "while-down"), "outbound IPv6 flow while natd is down");
    lab.restart_natd().unwrap();
    assert!(echo(&mut inbound, "after") && echo(&mut outbound, "after"));
    let flows = lab.ok(&["ct", "ls"]);
    assert!(flows.contains(HOST_UPLINK_IP6) || flows.contains(EXT_IP6), "natd lists the IPv6 flows:\n{flows}");
    assert_no_kernel_nat(&lab);
}
