//! The hostbridge driver (pipework): two "hosts", each a namespace running its own natd
//! with a parent NIC that is a veth into a shared "LAN" namespace (a bridge and the LAN's
//! router at 203.0.113.1). Sandboxes get LAN addresses and reach each other directly.
use natlab::{Lab, sh};

const LAN_GW: &str = "203.0.113.1";

struct Lan {
    a: Lab,
    b: Lab,
    lan: String,
}

fn lan() -> Lan {
    let mut a = Lab::new().unwrap();
    let b = Lab::new().unwrap();
    let lan = a.add_netns("lan").unwrap();
    let run = |ns: &str, args: &[&str]| {
        let out = sh("ip", &[&["-n", ns][..], args].concat());
        assert!(
            out.status.success(),
            "ip -n {ns} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&lan, &["link", "add", "lanbr", "type", "bridge"]);
    run(&lan, &["addr", "add", &format!("{LAN_GW}/24"), "dev", "lanbr"]);
    run(&lan, &["link", "set", "lanbr", "up"]);
    for (lab, port, addr) in [(&a, "pa", "203.0.113.10/24"), (&b, "pb", "203.0.113.20/24")] {
        let out = sh(
            "ip",
            &[
                "link",
                "add",
                "eth1",
                "netns",
                &lab.host_ns,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                &lan,
            ],
        );
        assert!(out.status.success());
        run(&lan, &["link", "set", port, "master", "lanbr"]);
        run(&lan, &["link", "set", port, "up"]);
        run(&lab.host_ns, &["addr", "add", addr, "dev", "eth1"]);
        run(&lab.host_ns, &["link", "set", "eth1", "up"]);
        run(
            &lab.host_ns,
            &[
                "route",
                "add",
                "203.0.113.128/25",
                "via",
                LAN_GW,
                "dev",
                "eth1",
                "metric",
                "50",
            ],
        );
    }
    let mut lan = Lan { a, b, lan };
    lan.a.start_natd(&[]).unwrap();
    lan.b.start_natd(&[]).unwrap();
    lan
}

fn create(lab: &Lab) {
    lab.ok(&[
        "network",
        "create",
        "-d",
        "hostbridge",
        "--opt",
        "parent=eth1",
        "--opt",
        "bridge-name=br0",
        "--subnet",
        "203.0.113.0/24",
        "--gateway",
        LAN_GW,
        "--ip-range",
        "203.0.113.128/26",
        "lan",
    ]);
}

#[test]
fn sandboxes_on_the_lan_reach_each_other_directly() {
    let env = lan();
    let (a, b) = (&env.a, &env.b);
    for lab in [a, b] {
        create(lab);
        // The host keeps its LAN address, now on the bridge, with its routes.
        let addrs = lab.host_ok(&["ip", "-o", "-4", "addr", "show", "dev", "br0"]);
        assert!(addrs.contains("203.0.113."), "{addrs}");
        assert!(
            lab.host_ok(&["ip", "-o", "link", "show", "eth1"])
                .contains("master br0")
        );
        assert!(
            lab.host_ok(&["ip", "route"])
                .contains("203.0.113.128/25 via 203.0.113.1 dev br0"),
            "routes moved"
        );
        assert!(
            lab.host(&["ping", "-c1", "-W2", LAN_GW]).status.success(),
            "the host's own address still works"
        );
    }
    a.ok(&["run", "--name", "a1", "--network", "lan", "--ip", "203.0.113.130"]);
    b.ok(&["run", "--name", "b1", "--network", "lan"]);
    let b1 = b.sandbox_ip("b1");
    assert!(b1.starts_with("203.0.113.1"), "from the ip-range: {b1}");
    assert!(
        a.exec_ok("a1", &["ip", "route", "show", "default"])
            .contains(&format!("via {LAN_GW}"))
    );
    assert!(
        a.exec("a1", &["ping", "-c1", "-W2", &b1]).status.success(),
        "host A's sandbox reaches host B's"
    );
    assert!(
        b.exec("b1", &["ping", "-c1", "-W2", "203.0.113.130"])
            .status
            .success()
    );
    assert!(
        a.exec("a1", &["ping", "-c1", "-W2", LAN_GW]).status.success(),
        "and the LAN gateway"
    );
    // No NAT: the LAN sees the sandbox's own address.
    assert!(
        sh(
            "ip",
            &["netns", "exec", &env.lan, "ping", "-c1", "-W2", "203.0.113.130"]
        )
        .status
        .success()
    );

    // Duplicate address detection on the wire: host B cannot take host A's sandbox address.
    let err = b.fails(&["run", "--name", "b2", "--network", "lan", "--ip", "203.0.113.130"]);
    assert!(
        err.contains("Address already in use: 203.0.113.130 answers ARP"),
        "{err}"
    );
    let err = b.fails(&["run", "--name", "b3", "--network", "lan", "--ip", "203.0.113.20"]);
    assert!(
        err.contains("Address already in use"),
        "the host's own address: {err}"
    );
    // Published ports make no sense here.
    let err = a.fails(&["run", "--name", "a9", "--network", "lan", "-p", "80"]);
    assert!(
        err.contains("port publishing is not supported on hostbridge network lan"),
        "{err}"
    );

    // pipework's form: a sandbox without network, then an address with prefix and gateway.
    a.ok(&["run", "--name", "a2", "--network", "none"]);
    a.ok(&[
        "network",
        "connect",
        "lan",
        "a2",
        "--ip",
        "203.0.113.150/24@203.0.113.1",
    ]);
    assert!(
        a.exec_ok("a2", &["ip", "-o", "-4", "addr"])
            .contains("203.0.113.150/24")
    );
    assert!(a.exec("a2", &["ping", "-c1", "-W2", &b1]).status.success());
}

#[test]
fn network_rm_gives_the_nic_back() {
    let env = lan();
    let a = &env.a;
    create(a);
    a.ok(&["run", "--name", "a1", "--network", "lan"]);
    assert!(
        a.fails(&["network", "rm", "lan"])
            .contains("has active endpoints")
    );
    a.ok(&["rm", "a1"]);
    a.ok(&["network", "rm", "lan"]);
    let eth1 = a.host_ok(&["ip", "-o", "addr", "show", "dev", "eth1"]);
    assert!(
        eth1.contains("203.0.113.10/24"),
        "address back on the NIC: {eth1}"
    );
    assert!(
        !a.host_ok(&["ip", "-o", "link", "show", "eth1"])
            .contains("master"),
        "no longer enslaved"
    );
    assert!(
        !a.host(&["ip", "link", "show", "br0"]).status.success(),
        "the bridge natd made is gone"
    );
    assert!(
        a.host_ok(&["ip", "route"])
            .contains("203.0.113.128/25 via 203.0.113.1 dev eth1"),
        "routes back"
    );
    assert!(a.host(&["ping", "-c1", "-W2", LAN_GW]).status.success());
    // Without parent: an existing bridge is used as it is.
    a.host_ok(&["ip", "link", "add", "lanbr9", "type", "bridge"]);
    a.ok(&[
        "network",
        "create",
        "-d",
        "hostbridge",
        "--opt",
        "bridge-name=lanbr9",
        "--subnet",
        "192.0.2.0/24",
        "--gateway",
        "192.0.2.1",
        "asis",
    ]);
    a.ok(&["network", "rm", "asis"]);
    assert!(
        a.host(&["ip", "link", "show", "lanbr9"]).status.success(),
        "an adopted bridge stays"
    );
    let err = a.fails(&[
        "network",
        "create",
        "-d",
        "hostbridge",
        "--subnet",
        "192.0.2.0/24",
        "--gateway",
        "192.0.2.1",
        "bad",
    ]);
    assert!(err.contains("needs --opt parent=IFACE"), "{err}");
}
