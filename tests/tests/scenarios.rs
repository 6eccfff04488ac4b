//! One scenario table, run against every dataplane: `ebpf` (natd's default), `nftables`
//! (natd's fallback) and `docker`, a reference mode where natd only does the plumbing
//! (`--dataplane none`) and this harness applies Docker's documented iptables rules from the
//! seed (PREROUTING -> DOCKER chain DNAT, POSTROUTING MASQUERADE). Every scenario states
//! what each mode must do, so the suite shows where natd matches Docker and where it
//! deliberately differs (isolation, hairpin, host access, no exposure of sandbox addresses).
use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use natlab::{
    EXT_IP, EXT_IP6, HOST_UPLINK_IP, HOST_UPLINK_IP6, Lab,
    edges::{NIC2_HOST_IP, NIC2_HOST_IP6, NIC2_PEER_IP, NIC2_PEER_IP6, SecondNic},
    in_netns, wait_listening, wait_until, whoami6,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ebpf,
    Nftables,
    Docker,
}

struct World {
    lab: Lab,
    mode: Mode,
    /// Every host in the suite has a second NIC (`eth1`, a neighbour on 203.0.113.0/24).
    nic: SecondNic,
}

impl World {
    fn new(mode: Mode) -> Self {
        let mut lab = Lab::new().expect("topology");
        let nic = SecondNic::add(&mut lab);
        let dataplane = match mode {
            Mode::Ebpf => "ebpf",
            Mode::Nftables => "nftables",
            Mode::Docker => "none",
        };
        lab.start_natd(&["--dataplane", dataplane]).expect("start natd");
        if mode == Mode::Docker {
            // The seed: nat PREROUTING for local destinations jumps to DOCKER; Docker 27
            // writes the same for IPv6 with ip6tables.
            for tool in ["iptables", "ip6tables"] {
                xt(&lab, tool, &["-t", "nat", "-N", "DOCKER"]);
                xt(
                    &lab,
                    tool,
                    &[
                        "-t",
                        "nat",
                        "-A",
                        "PREROUTING",
                        "-m",
                        "addrtype",
                        "--dst-type",
                        "LOCAL",
                        "-j",
                        "DOCKER",
                    ],
                );
            }
        }
        let world = Self { lab, mode, nic };
        world.network_rules("bridge");
        world
    }

    /// Docker mode: `-s SUBNET ! -o BRIDGE -j MASQUERADE` for every network.
    fn network_rules(&self, network: &str) {
        if self.mode != Mode::Docker {
            return;
        }
        let view = self.lab.json(&["network", "inspect", network]);
        let bridge = view["bridge"].as_str().unwrap();
        for (tool, key) in [("iptables", "subnet"), ("ip6tables", "subnet_v6")] {
            let Some(subnet) = view[key].as_str() else {
                continue;
            };
            xt(
                &self.lab,
                tool,
                &[
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-s",
                    subnet,
                    "!",
                    "-o",
                    bridge,
                    "-j",
                    "MASQUERADE",
                ],
            );
        }
    }

    fn network(&self, args: &[&str]) {
        let mut full = vec!["network", "create"];
        full.extend_from_slice(args);
        self.lab.ok(&full);
        self.network_rules(args.last().unwrap());
    }

    /// A sandbox running `script`; in Docker mode the harness adds the DNAT rules of its
    /// published ports the way Docker does.
    fn run(&self, name: &str, args: &[&str], script: &str) {
        let mut full = vec!["run", "--name", name];
        full.extend_from_slice(args);
        if !script.is_empty() {
            full.extend_from_slice(&["--", "sh", "-c", script]);
        }
        self.lab.ok(&full);
        if self.mode != Mode::Docker {
            return;
        }
        let view = self.lab.json(&["inspect", name]);
        let ip = view["endpoints"][0]["ipv4"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ip6 = view["endpoints"][0]["ipv6"].as_str().map(str::to_string);
        let network = view["endpoints"][0]["network"]
            .as_str()
            .unwrap_or("bridge")
            .to_string();
        let bridge = self.lab.json(&["network", "inspect", &network])["bridge"]
            .as_str()
            .unwrap()
            .to_string();
        for port in view["ports"].as_array().into_iter().flatten() {
            let proto = port["proto"].as_str().unwrap();
            let (hp, cp) = (port["host_port"].to_string(), port["container_port"].to_string());
            let mut rule = vec!["-t", "nat", "-A", "DOCKER"];
            let bound = port["host_ip"].as_str().map(str::to_string);
            // Docker binds [::] for a port without address on an IPv6 network: the same
            // DNAT with ip6tables to the container's IPv6 address.
            let v6 = bound.as_deref().is_some_and(|b| b.contains(':'));
            if let Some(b) = bound.as_deref().filter(|b| *b != "::") {
                rule.extend_from_slice(&["-d", b]);
            }
            let to = match (&ip6, v6) {
                (Some(ip6), true) => format!("[{ip6}]:{cp}"),
                _ => format!("{ip}:{cp}"),
            };
            rule.extend_from_slice(&[
                "!",
                "-i",
                &bridge,
                "-p",
                proto,
                "-m",
                proto,
                "--dport",
                &hp,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ]);
            xt(&self.lab, if v6 { "ip6tables" } else { "iptables" }, &rule);
        }
    }

    fn wait_server(&self, name: &str, proto: &str, port: u16) {
        let ns = self.lab.json(&["inspect", name])["netns"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            wait_listening(&ns, proto, port),
            "server {name}:{port}/{proto} up"
        );
    }
}

/// `iptables` or `ip6tables` in the lab's host namespace.
fn xt(lab: &Lab, tool: &str, args: &[&str]) {
    let out = lab.host(&[&[tool][..], args].concat());
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl World {
    /// From the neighbour on the second NIC.
    fn via_nic2(&self, addr: &str, port: u16) -> Option<String> {
        natlab::tcp_line(&["ip", "netns", "exec", &self.nic.peer_ns], addr, port)
    }
    fn via_ext(&self, addr: &str, port: u16) -> Option<String> {
        natlab::tcp_line(&["ip", "netns", "exec", &self.lab.ext_ns], addr, port)
    }
    fn via_host(&self, addr: &str, port: u16) -> Option<String> {
        natlab::tcp_line(&["ip", "netns", "exec", &self.lab.host_ns], addr, port)
    }
    fn via_sandbox(&self, sandbox: &str, addr: &str, port: u16) -> Option<String> {
        let ns = self.lab.json(&["inspect", sandbox])["netns"]
            .as_str()
            .unwrap()
            .to_string();
        natlab::tcp_line(&["nsenter", &format!("--net={ns}")], addr, port)
    }
}

/// Runs one scenario in one mode and checks the observed outcome against the table.
fn check(mode: Mode, scenario: &str, expected: &[(Mode, bool)], observe: impl FnOnce(&World) -> bool) {
    let world = World::new(mode);
    let observed = observe(&world);
    let want = expected
        .iter()
        .find(|(m, _)| *m == mode)
        .map(|(_, e)| *e)
        .expect("every mode has an expectation");
    let docker = expected.iter().find(|(m, _)| *m == Mode::Docker).map(|(_, e)| *e);
    let relation = match (mode, docker) {
        (Mode::Docker, _) => "reference",
        (_, Some(d)) if d == observed => "same as Docker",
        _ => "differs from Docker (deliberately)",
    };
    eprintln!("SCENARIO {scenario:<40} {mode:<9?} {observed:<5} {relation}");
    assert_eq!(observed, want, "{scenario} in {mode:?} mode");
}

const ALL: [(Mode, bool); 3] = [(Mode::Ebpf, true), (Mode::Nftables, true), (Mode::Docker, true)];
const NATD_ONLY: [(Mode, bool); 3] = [(Mode::Ebpf, true), (Mode::Nftables, true), (Mode::Docker, false)];

fn published_tcp_port_keeps_client_address(mode: Mode) {
    check(mode, "published TCP port, client address kept", &ALL, |w| {
        w.run("web", &["-p", "8080:80"], &natlab::whoami(80));
        w.wait_server("web", "tcp", 80);
        w.via_ext(HOST_UPLINK_IP, 8080).as_deref() == Some(EXT_IP)
    });
}

fn published_udp_port(mode: Mode) {
    check(mode, "published UDP port", &ALL, |w| {
        w.run(
            "dns",
            &["-p", "5353:53/udp"],
            &natlab::udp_reply(53, "$SOCAT_PEERADDR"),
        );
        w.wait_server("dns", "udp", 53);
        natlab::udp_exchange(
            &w.lab.ext_path(),
            HOST_UPLINK_IP,
            5353,
            b"q\n",
            Duration::from_secs(3),
        )
        .as_deref()
            == Some(EXT_IP)
    });
}

fn random_and_ranged_host_ports(mode: Mode) {
    check(mode, "random and ranged host ports", &ALL, |w| {
        let script = format!("{} & {} & wait", natlab::whoami(80), natlab::whoami(81));
        w.run("web", &["-p", "80", "-p", "9000-9010:81"], &script);
        w.wait_server("web", "tcp", 80);
        w.wait_server("web", "tcp", 81);
        let ports = w.lab.json(&["port", "web"]);
        ports.as_array().unwrap().iter().all(|m| {
            let hp = m["host_port"].as_u64().unwrap() as u16;
            w.via_ext(HOST_UPLINK_IP, hp).as_deref() == Some(EXT_IP)
        })
    });
}

fn port_bound_to_one_address(mode: Mode) {
    check(mode, "port bound to one host address only", &ALL, |w| {
        w.lab
            .host_ok(&["ip", "addr", "add", "198.51.100.3/24", "dev", "up0"]);
        w.run("web", &["-p", "198.51.100.3:8080:80"], &natlab::whoami(80));
        w.wait_server("web", "tcp", 80);
        w.via_ext("198.51.100.3", 8080).is_some() && w.via_ext(HOST_UPLINK_IP, 8080).is_none()
    });
}

fn masquerade_to_uplink_address(mode: Mode) {
    check(mode, "masquerade to the uplink address", &ALL, |w| {
        let _server = w.lab.spawn_in(
            &w.lab.ext_ns,
            &[
                "socat",
                "TCP-LISTEN:9000,fork,reuseaddr",
                "SYSTEM:echo $SOCAT_PEERADDR",
            ],
        );
        assert!(wait_listening(&w.lab.ext_path(), "tcp", 9000));
        w.run("out", &[], "");
        w.via_sandbox("out", EXT_IP, 9000).as_deref() == Some(HOST_UPLINK_IP)
    });
}

fn networks_are_isolated(mode: Mode) {
    check(mode, "networks cannot reach each other", &NATD_ONLY, |w| {
        w.network(&["--subnet", "10.61.0.0/24", "red"]);
        w.network(&["--subnet", "10.62.0.0/24", "blue"]);
        w.run("r1", &["--network", "red"], &natlab::whoami(80));
        w.run("b1", &["--network", "blue"], "");
        w.wait_server("r1", "tcp", 80);
        let r1 = w.lab.sandbox_ip("r1");
        w.via_sandbox("b1", &r1, 80).is_none()
    });
}

fn no_direct_access_from_outside(mode: Mode) {
    check(
        mode,
        "sandbox address not reachable from outside",
        &NATD_ONLY,
        |w| {
            w.run("web", &[], &natlab::whoami(80));
            w.wait_server("web", "tcp", 80);
            let ip = w.lab.sandbox_ip("web");
            w.lab
                .ext(&["ip", "route", "add", "172.18.0.0/16", "via", HOST_UPLINK_IP]);
            w.via_ext(&ip, 80).is_none()
        },
    );
}

fn published_port_on_a_second_nic(mode: Mode) {
    check(mode, "second NIC: published port, client address", &ALL, |w| {
        w.run("web", &["-p", "8080:80"], &natlab::whoami(80));
        w.wait_server("web", "tcp", 80);
        w.via_nic2(NIC2_HOST_IP, 8080).as_deref() == Some(NIC2_PEER_IP)
    });
}

fn ipv6_published_port_and_masquerade_on_a_second_nic(mode: Mode) {
    check(mode, "IPv6 second NIC: port and masquerade", &ALL, |w| {
        w.network(&["--ipv6", "v6net"]);
        w.run("web", &["--network", "v6net", "-p", "8080:80"], &whoami6(80));
        w.wait_server("web", "tcp", 80);
        let _server = w.lab.spawn_in(
            &w.nic.peer_ns,
            &["socat", "TCP6-LISTEN:9000,fork,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR"],
        );
        assert!(wait_listening(&format!("/run/netns/{}", w.nic.peer_ns), "tcp", 9000));
        peer(w.via_nic2(&format!("[{NIC2_HOST_IP6}]"), 8080)) == NIC2_PEER_IP6.parse().ok()
            && peer(w.via_sandbox("web", &format!("[{NIC2_PEER_IP6}]"), 9000)) == NIC2_HOST_IP6.parse().ok()
    });
}

/// Docker 27's rules (the seed's) forward a neighbour's packets to a container address;
/// Docker 28 added a raw-table drop for every interface but the bridge.
fn no_direct_access_via_a_second_nic(mode: Mode) {
    check(mode, "second NIC: sandbox address not reachable", &NATD_ONLY, |w| {
        w.run("web", &["-p", "8080:80"], &natlab::whoami(80));
        w.wait_server("web", "tcp", 80);
        let ip = w.lab.sandbox_ip("web");
        w.lab.in_ns_ok(&w.nic.peer_ns, &["ip", "route", "add", "172.18.0.0/16", "via", NIC2_HOST_IP]);
        w.via_nic2(&ip, 80).is_none()
    });
}

fn masquerade_out_of_a_second_nic(mode: Mode) {
    check(mode, "second NIC: masquerade to its address", &ALL, |w| {
        let _server = w.lab.spawn_in(&w.nic.peer_ns, &["sh", "-c", &natlab::whoami(9000)]);
        assert!(wait_listening(&format!("/run/netns/{}", w.nic.peer_ns), "tcp", 9000));
        w.run("out", &[], "");
        w.via_sandbox("out", NIC2_PEER_IP, 9000).as_deref() == Some(NIC2_HOST_IP)
    });
}

/// Docker 28.2's `trusted_host_interfaces`: the listed interfaces reach published
/// container ports on the container's address, nothing else does (the reference rules
/// are Docker 27's, without the option: everything is reachable there).
fn trusted_interface_reaches_published_container_ports(mode: Mode) {
    check(mode, "second NIC trusted: container port only", &NATD_ONLY, |w| {
        w.network(&[
            "--subnet",
            "10.64.0.0/24",
            "-o",
            "com.docker.network.bridge.trusted_host_interfaces=eth1",
            "trusting",
        ]);
        let script = format!("{} & {} & wait", natlab::whoami(80), natlab::whoami(81));
        w.run("web", &["--network", "trusting", "-p", "8080:80"], &script);
        w.wait_server("web", "tcp", 80);
        w.wait_server("web", "tcp", 81);
        let ip = w.lab.sandbox_ip("web");
        w.lab.in_ns_ok(&w.nic.peer_ns, &["ip", "route", "add", "10.64.0.0/24", "via", NIC2_HOST_IP]);
        w.lab.ext_ok(&["ip", "route", "add", "10.64.0.0/24", "via", HOST_UPLINK_IP]);
        w.via_nic2(&ip, 80).as_deref() == Some(NIC2_PEER_IP)
            && w.via_nic2(&ip, 81).is_none()
            && w.via_ext(&ip, 80).is_none()
    });
}

fn hairpin_from_own_sandbox(mode: Mode) {
    check(
        mode,
        "a sandbox reaches its own published port",
        &NATD_ONLY,
        |w| {
            w.run("web", &["-p", "8080:80"], &natlab::whoami(80));
            w.wait_server("web", "tcp", 80);
            w.via_sandbox("web", HOST_UPLINK_IP, 8080).is_some()
        },
    );
}

fn other_sandbox_via_host_address(mode: Mode) {
    check(
        mode,
        "another sandbox reaches a published port",
        &NATD_ONLY,
        |w| {
            w.run("web", &["-p", "8080:80"], &natlab::whoami(80));
            w.run("client", &[], "");
            w.wait_server("web", "tcp", 80);
            w.via_sandbox("client", HOST_UPLINK_IP, 8080).is_some()
        },
    );
}

fn host_reaches_published_port(mode: Mode) {
    check(mode, "the host reaches a port via its address", &NATD_ONLY, |w| {
        w.run("web", &["-p", "8080:80"], &natlab::whoami(80));
        w.wait_server("web", "tcp", 80);
        w.via_host(HOST_UPLINK_IP, 8080).is_some()
    });
}

fn host_reaches_published_port_on_loopback(mode: Mode) {
    check(mode, "the host reaches a port via 127.0.0.1", &NATD_ONLY, |w| {
        w.run("web", &["-p", "127.0.0.1:8080:80"], &natlab::whoami(80));
        w.wait_server("web", "tcp", 80);
        w.via_host("127.0.0.1", 8080).is_some()
    });
}

fn icc_false_keeps_sandboxes_apart(mode: Mode) {
    check(mode, "icc=false blocks sandbox to sandbox", &NATD_ONLY, |w| {
        w.network(&["--subnet", "10.63.0.0/24", "--icc=false", "quiet"]);
        w.run("q1", &["--network", "quiet"], &natlab::whoami(80));
        w.run("q2", &["--network", "quiet"], "");
        w.wait_server("q1", "tcp", 80);
        let q1 = w.lab.sandbox_ip("q1");
        w.via_sandbox("q2", &q1, 80).is_none()
    });
}

fn no_netfilter_rules_in_the_host(mode: Mode) {
    let expected = [(Mode::Ebpf, true), (Mode::Nftables, false), (Mode::Docker, false)];
    check(mode, "no netfilter rule in the host namespace", &expected, |w| {
        w.run("web", &["-p", "8080:80"], &natlab::whoami(80));
        w.lab.host_ok(&["nft", "list", "ruleset"]).trim().is_empty()
    });
}

fn survives_a_firewall_flush(mode: Mode) {
    check(
        mode,
        "published port works after `nft flush ruleset`",
        &NATD_ONLY,
        |w| {
            w.run("web", &["-p", "8080:80"], &natlab::whoami(80));
            w.wait_server("web", "tcp", 80);
            assert!(w.via_ext(HOST_UPLINK_IP, 8080).is_some());
            w.lab.host_ok(&["nft", "flush", "ruleset"]);
            let flushed = Instant::now();
            let back = wait_until(Duration::from_secs(3), || {
                w.via_ext(HOST_UPLINK_IP, 8080).is_some()
            });
            if back && mode == Mode::Nftables {
                assert!(
                    flushed.elapsed() < Duration::from_secs(2),
                    "re-applied within a second (+ connect time)"
                );
                assert!(w.lab.natd_log().contains("re-applied"));
            }
            back
        },
    );
}

fn removed_mapping_ends_its_udp_flow(mode: Mode) {
    // Docker mode has no notion of removing a mapping in this harness: natd-only.
    check(mode, "a removed mapping ends its UDP flow", &NATD_ONLY, |w| {
        if w.mode == Mode::Docker {
            return false;
        }
        w.run("one", &["-p", "5353:53/udp"], &natlab::udp_reply(53, "one"));
        w.wait_server("one", "udp", 53);
        let socket = in_netns(&w.lab.ext_path(), || UdpSocket::bind((EXT_IP, 41000)).unwrap());
        socket.connect((HOST_UPLINK_IP, 5353)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let ask = || -> Option<String> {
            socket.send(b"q").ok()?;
            let mut buf = [0u8; 32];
            let n = socket.recv(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
        };
        let first = ask().as_deref() == Some("one");
        w.lab.ok(&["rm", "one"]);
        w.run("two", &["-p", "5353:53/udp"], &natlab::udp_reply(53, "two"));
        w.wait_server("two", "udp", 53);
        first && ask().as_deref() == Some("two")
    });
}

fn peer(line: Option<String>) -> Option<std::net::IpAddr> {
    natlab::peer_ip(&line?)
}

fn ipv6_published_port_keeps_client_address(mode: Mode) {
    check(mode, "IPv6: published port, client address kept", &ALL, |w| {
        w.network(&["--ipv6", "v6net"]);
        w.run("web", &["--network", "v6net", "-p", "8080:80"], &whoami6(80));
        w.wait_server("web", "tcp", 80);
        peer(w.via_ext(&format!("[{HOST_UPLINK_IP6}]"), 8080)) == EXT_IP6.parse().ok()
            && peer(w.via_ext(HOST_UPLINK_IP, 8080)) == EXT_IP.parse().ok()
    });
}

fn ipv6_masquerade_to_uplink_address(mode: Mode) {
    check(mode, "IPv6: masquerade to the uplink address", &ALL, |w| {
        let _server = w.lab.spawn_in(
            &w.lab.ext_ns,
            &["socat", "TCP6-LISTEN:9000,fork,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR"],
        );
        assert!(wait_listening(&w.lab.ext_path(), "tcp", 9000));
        w.network(&["--ipv6", "v6net"]);
        w.run("out", &["--network", "v6net"], "");
        peer(w.via_sandbox("out", &format!("[{EXT_IP6}]"), 9000)) == HOST_UPLINK_IP6.parse().ok()
    });
}

fn ipv6_no_direct_access_from_outside(mode: Mode) {
    check(mode, "IPv6: sandbox address not reachable", &NATD_ONLY, |w| {
        w.network(&["--ipv6", "v6net"]);
        w.run("web", &["--network", "v6net"], &whoami6(80));
        w.wait_server("web", "tcp", 80);
        let view = w.lab.json(&["network", "inspect", "v6net"]);
        let subnet = view["subnet_v6"].as_str().unwrap().to_string();
        let ip = w.lab.json(&["inspect", "web"])["endpoints"][0]["ipv6"]
            .as_str()
            .unwrap()
            .to_string();
        let route = w.lab.ext(&["ip", "-6", "route", "add", &subnet, "via", HOST_UPLINK_IP6]);
        assert!(route.status.success(), "the LAN routes the subnet to the host");
        w.via_ext(&format!("[{ip}]"), 80).is_none()
    });
}

fn ipv6_networks_are_isolated(mode: Mode) {
    check(mode, "IPv6: networks cannot reach each other", &NATD_ONLY, |w| {
        w.network(&["--ipv6", "red6"]);
        w.network(&["--ipv6", "blue6"]);
        w.run("r1", &["--network", "red6"], &whoami6(80));
        w.run("b1", &["--network", "blue6"], "");
        w.wait_server("r1", "tcp", 80);
        let r1 = w.lab.json(&["inspect", "r1"])["endpoints"][0]["ipv6"]
            .as_str()
            .unwrap()
            .to_string();
        w.via_sandbox("b1", &format!("[{r1}]"), 80).is_none()
    });
}

macro_rules! suite {
    ($($scenario:ident),* $(,)?) => {
        mod ebpf {
            $(#[test] fn $scenario() { super::$scenario(super::Mode::Ebpf) })*
        }
        mod nftables {
            $(#[test] fn $scenario() { super::$scenario(super::Mode::Nftables) })*
        }
        mod docker {
            $(#[test] fn $scenario() { super::$scenario(super::Mode::Docker) })*
        }
    };
}

suite!(
    published_tcp_port_keeps_client_address,
    published_udp_port,
    random_and_ranged_host_ports,
    port_bound_to_one_address,
    masquerade_to_uplink_address,
    networks_are_isolated,
    no_direct_access_from_outside,
    hairpin_from_own_sandbox,
    other_sandbox_via_host_address,
    host_reaches_published_port,
    host_reaches_published_port_on_loopback,
    icc_false_keeps_sandboxes_apart,
    no_netfilter_rules_in_the_host,
    survives_a_firewall_flush,
    removed_mapping_ends_its_udp_flow,
    ipv6_published_port_keeps_client_address,
    ipv6_masquerade_to_uplink_address,
    ipv6_no_direct_access_from_outside,
    ipv6_networks_are_isolated,
    published_port_on_a_second_nic,
    no_direct_access_via_a_second_nic,
    masquerade_out_of_a_second_nic,
    trusted_interface_reaches_published_container_ports,
    ipv6_published_port_and_masquerade_on_a_second_nic,
);

/// Restarting natd with the other dataplane takes over the sandboxes and leaves nothing of
/// the old one behind.
#[test]
fn switching_dataplanes_leaves_no_leftovers() {
    use nix::sys::signal::Signal;
    let mut lab = Lab::new().unwrap();
    lab.start_natd(&["--dataplane", "ebpf"]).unwrap();
    lab.ok(&[
        "run",
        "--name",
        "web",
        "-p",
        "8080:80",
        "--",
        "sh",
        "-c",
        &natlab::whoami(80),
    ]);
    let ns = lab.json(&["inspect", "web"])["netns"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(wait_listening(&ns, "tcp", 80));
    let reach = |lab: &Lab| {
        natlab::tcp_line(&["ip", "netns", "exec", &lab.ext_ns], HOST_UPLINK_IP, 8080).as_deref()
            == Some(EXT_IP)
    };
    assert!(reach(&lab));
    let table = format!("table ip {}", lab.prefix);

    lab.stop_natd(Signal::SIGTERM);
    lab.start_natd(&["--dataplane", "nftables"]).unwrap();
    assert!(reach(&lab), "nftables took over");
    let links = std::fs::read_dir(lab.bpffs.join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(links, 0, "no pinned eBPF link left");
    assert!(
        !lab.host_ok(&["bpftool", "net", "show"]).contains("natd_"),
        "no program attached"
    );
    assert!(lab.host_ok(&["nft", "list", "ruleset"]).contains(&table));
    let stats = lab.json(&["stats"]);
    assert!(
        stats["mappings"][0]["packets"].as_u64().unwrap_or(0) > 0,
        "per-mapping counters from nft: {stats}"
    );

    lab.stop_natd(Signal::SIGTERM);
    lab.start_natd(&["--dataplane", "ebpf"]).unwrap();
    assert!(reach(&lab), "eBPF took over again");
    assert!(
        !lab.host_ok(&["nft", "list", "ruleset"]).contains(&table),
        "natd's nft table is gone"
    );
}
