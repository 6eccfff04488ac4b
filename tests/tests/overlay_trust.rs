//! Overlay networks on a LAN natd does not fully control (issue 26): VXLAN is accepted
//! only from the cluster's live hosts and only for the sandboxes each of them claims
//! (RFC 7348 section 7 leaves this to the operator: "VTEPs ... should only accept VXLAN
//! packets from trusted sources"), and nothing written to the cluster store reaches the
//! kernel before it is validated.
use std::time::Duration;

use natlab::{
    EXT_IP, HOST_UPLINK_IP, Lab,
    lan::shared_lan,
    overlay::{Etcd, fdb, member_args, vxlan_of},
    wait_listening, wait_until,
};

const TTL: u64 = 3;
const CONVERGE: Duration = Duration::from_secs(10);
const VNI: &str = "4242";
const METRICS: &str = "127.0.0.1:9323";

fn mac_of(lab: &Lab, sandbox: &str) -> String {
    lab.json(&["inspect", sandbox])["endpoints"][0]["mac"].as_str().unwrap().to_string()
}

/// ICMP echo requests the sandbox's own stack received (`/proc/net/snmp`, its netns).
fn echos_received(lab: &Lab, sandbox: &str) -> u64 {
    let snmp = lab.exec_ok(sandbox, &["cat", "/proc/net/snmp"]);
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let at = names.split_whitespace().position(|n| n == "InEchos").unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// natd's overlay MAC of an address (Docker's 02:42 followed by the address).
fn overlay_mac(ip: &str) -> String {
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let [a, b, c, d] = ip.octets();
    format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

fn underlay_drops(lab: &Lab) -> (u64, u64) {
    let info = lab.json(&["info"]);
    let drops = &info["cluster"]["underlay_drops"];
    (
        drops["non_member"].as_u64().unwrap_or_else(|| panic!("no underlay filter: {info}")),
        drops["spoofed"].as_u64().unwrap(),
    )
}

/// A VTEP on the LAN that is not a natd host: the LAN's own namespace builds a VXLAN
/// device with the overlay's VNI aimed at host A, an address in the overlay's subnet and
/// a static neighbour entry for the target sandbox (so no ARP is needed), then pings it.
/// What counts is whether the sandbox's stack received the echo requests, not whether a
/// reply came back (without an FDB entry on A no reply could). The same probe after the
/// intruder is entered in the store as a member is answered: the control.
#[test]
fn vxlan_from_outside_the_cluster_reaches_no_sandbox() {
    let mut hosts = shared_lan(2);
    let lan = hosts[0].ext_ns.clone();
    let etcd = Etcd::start(&lan, hosts[0].dir.clone());
    let mut args = member_args(TTL);
    args.extend(["--dataplane".to_string(), "ebpf".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for host in &mut hosts {
        host.start_natd(&args).expect("start natd");
    }
    let (a, b) = (&hosts[0], &hosts[1]);
    a.ok(&["network", "create", "-d", "overlay", "--subnet", "10.70.0.0/24", "--opt", &format!("vni={VNI}"), "ov1"]);
    assert!(wait_until(CONVERGE, || b.ok(&["network", "ls"]).contains("ov1")));
    a.run_script("a1", &["--network", "ov1"], &natlab::whoami(80));
    b.run_script("b1", &["--network", "ov1"], &natlab::whoami(80));
    assert!(wait_listening(&a.netns_of("a1"), "tcp", 80));
    let (a1, b1) = (a.sandbox_ip("a1"), b.sandbox_ip("b1"));
    assert!(
        wait_until(CONVERGE, || b.tcp_line_from("b1", &a1, 80).as_deref() == Some(b1.as_str())),
        "the members reach each other through the filter\n{}",
        a.natd_log()
    );

    let intruder_ip = "10.70.0.200";
    let intruder_mac = &overlay_mac(intruder_ip);
    for command in [
        vec!["ip", "link", "add", "vxatk", "address", intruder_mac, "type", "vxlan", "id", VNI, "local", EXT_IP, "dstport", "4789", "nolearning"],
        // IPv6 off on the device: its router solicitations would be frames of their own.
        vec!["sysctl", "-qw", "net.ipv6.conf.vxatk.disable_ipv6=1"],
        vec!["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxatk", "dst", HOST_UPLINK_IP],
        vec!["ip", "addr", "add", "10.70.0.200/24", "dev", "vxatk"],
        vec!["ip", "link", "set", "vxatk", "up"],
    ] {
        a.in_ns_ok(&lan, &command);
    }
    let a1_mac = mac_of(a, "a1");
    a.in_ns_ok(&lan, &["ip", "neigh", "replace", &a1, "lladdr", &a1_mac, "dev", "vxatk", "nud", "permanent"]);
    let ping = |source: &str| {
        a.in_ns(&lan, &["ping", "-c", "5", "-i", "0.2", "-W", "1", "-I", source, &a1])
            .status
            .success()
    };

    // Not a member: nothing reaches a1, and the filter counts every request.
    let (echos, (non_member, _)) = (echos_received(a, "a1"), underlay_drops(a));
    // No reply could come back either way (A has no FDB entry for the intruder): what
    // counts is what a1's stack received.
    let _ = ping(intruder_ip);
    assert_eq!(echos_received(a, "a1"), echos, "a non-member's frames reached the sandbox");
    let counted = underlay_drops(a).0 - non_member;
    assert!(counted >= 5, "non-member drops counted: {counted}");

    // Control: the same probe from a member that claims the address it sends from.
    etcd.put(
        "/natd/v1/hosts/intruder01",
        &format!(r#"{{"id":"intruder01","name":"lan","addr":"{EXT_IP}"}}"#),
    );
    etcd.put(
        &format!("/natd/v1/ips/ov1/{intruder_ip}"),
        &format!(r#"{{"host":"intruder01","sandbox":"probe","mac":"{intruder_mac}"}}"#),
    );
    let vx = vxlan_of(a, "ov1");
    assert!(wait_until(CONVERGE, || fdb(a, &vx).contains(intruder_mac)), "{}", fdb(a, &vx));
    // The FDB and the filter are written in one pass under natd's lock: a request waits it out.
    a.ok(&["info"]);
    assert!(ping(intruder_ip), "a member's probe is answered\n{}", a.natd_log());
    assert!(echos_received(a, "a1") >= echos + 5);

    // A member speaking for another host's sandbox (b1's address, from its own MAC and
    // underlay address): dropped and counted as spoofed.
    a.in_ns_ok(&lan, &["ip", "addr", "add", &format!("{b1}/32"), "dev", "vxatk"]);
    let (echos, (_, spoofed)) = (echos_received(a, "a1"), underlay_drops(a));
    let _ = ping(&b1);
    assert_eq!(echos_received(a, "a1"), echos, "a member spoke for another host's sandbox");
    assert!(underlay_drops(a).1 - spoofed >= 5, "spoofed drops counted");
    // b1 itself still gets through.
    assert_eq!(b.tcp_line_from("b1", &a1, 80).as_deref(), Some(b1.as_str()));

    // The filter's table removed behind natd's back: the housekeeping tick puts it back.
    let table = format!("{}_underlay", a.prefix);
    a.host_ok(&["nft", "delete", "table", "ip", &table]);
    assert!(
        wait_until(CONVERGE, || a.host_ok(&["nft", "list", "tables"]).contains(&table)),
        "the underlay filter comes back\n{}",
        a.natd_log()
    );
    assert!(a.host_ok(&["nft", "list", "set", "ip", &table, "speakers"]).contains("0xa4600c8"));
    assert!(a.natd_log().contains("removed behind natd's back; put back"));

    // Its host record gone, the intruder is no member any more.
    etcd.del("/natd/v1/hosts/intruder01");
    assert!(wait_until(CONVERGE, || !fdb(a, &vx).contains(intruder_mac)));
    let (echos, (non_member, _)) = (echos_received(a, "a1"), underlay_drops(a));
    a.ok(&["info"]);
    let _ = ping(intruder_ip);
    assert_eq!(echos_received(a, "a1"), echos);
    assert!(underlay_drops(a).0 - non_member >= 5);
    assert!(a.ok(&["info"]).contains("underlay drops:"));
}

/// The kernel state of A that store records could reach: the overlays' FDB and
/// neighbour entries, routes, links and the underlay filter's sets.
fn kernel_snapshot(lab: &Lab, vxlans: &[&str]) -> String {
    let mut out = String::new();
    for vx in vxlans {
        out += &lab.host_ok(&["bridge", "fdb", "show", "dev", vx]);
        out += &lab.host_ok(&["ip", "neigh", "show", "dev", vx]);
    }
    out += &lab.host_ok(&["ip", "-4", "route", "show", "table", "all"]);
    let links = lab.host_ok(&["ip", "-o", "link", "show"]);
    for line in links.lines() {
        out += line.split(':').nth(1).unwrap_or_default();
        out += "\n";
    }
    let table = format!("{}_underlay", lab.prefix);
    for set in ["members", "speakers", "vnis"] {
        out += &lab.host_ok(&["nft", "list", "set", "ip", &table, set]);
    }
    out
}

fn rejected(lab: &Lab) -> Vec<String> {
    lab.json(&["info"])["cluster"]["rejected_records"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l.as_str()).map(|l| l.split(": ").next().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn scrape(lab: &Lab) -> String {
    lab.host_ok(&["curl", "-sf", "--max-time", "3", &format!("http://{METRICS}/metrics")])
}

/// Records anyone with write access to the store could forge. Each is refused with its
/// key in `natctl info`, the log (once) and the metrics, and A's kernel is exactly as
/// before; a valid record written the same way (the control) does reach the kernel. Also:
/// records of natd 0.x (unversioned keys) are carried over, and a zero-MAC FDB entry an
/// older natd could have been made to write is removed.
#[test]
fn forged_store_records_change_nothing_in_the_kernel() {
    let mut hosts = shared_lan(1);
    let lan = hosts[0].ext_ns.clone();
    let mut etcd = Etcd::start(&lan, hosts[0].dir.clone());
    // natd 0.x's layout, before this natd first starts.
    etcd.put(
        "/natd/networks/legacy",
        r#"{"name":"legacy","subnet":"10.72.0.0/24","gateway":"10.72.0.1","vni":6000,"internal":false,"created":0,"created_by":"oldhost"}"#,
    );
    etcd.put("/natd/subnets/10.72.0.0_24", "legacy");
    etcd.put("/natd/vnis/6000", "legacy");
    etcd.put("/natd/ips/legacy/10.72.0.5", r#"{"host":"peer01","sandbox":"old1","mac":"02:42:0a:48:00:05"}"#);
    // A live peer (its natd is not needed: its record and claims are what A reads).
    etcd.put("/natd/v1/hosts/peer01", r#"{"id":"peer01","name":"peer","addr":"198.51.100.50"}"#);
    let mut args = member_args(TTL);
    args.extend(["--dataplane", "nftables", "--metrics-addr", METRICS].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    hosts[0].start_natd(&args).expect("start natd");
    let a = &hosts[0];

    assert!(
        wait_until(CONVERGE, || a.ok(&["network", "ls"]).contains("legacy")),
        "natd 0.x's network is carried over\n{}",
        a.natd_log()
    );
    assert!(etcd.keys("/natd/v1/networks/legacy").len() == 1 && etcd.keys("/natd/v1/migrated-from-unversioned").len() == 1);
    let vx_legacy = vxlan_of(a, "legacy");
    assert!(wait_until(CONVERGE, || fdb(a, &vx_legacy).contains("02:42:0a:48:00:05 dst 198.51.100.50")));

    a.ok(&["network", "create", "--subnet", "10.71.0.0/24", "plain"]);
    a.ok(&["network", "create", "-d", "overlay", "--subnet", "10.70.0.0/24", "ov1"]);
    a.ok(&["run", "--name", "a1", "--network", "ov1"]);
    let vx = vxlan_of(a, "ov1");
    // Control: a valid claim written by hand reaches A's FDB and neighbour table.
    let control_mac = overlay_mac("10.70.0.90");
    etcd.put("/natd/v1/ips/ov1/10.70.0.90", &format!(r#"{{"host":"peer01","sandbox":"ctl","mac":"{control_mac}"}}"#));
    assert!(wait_until(CONVERGE, || fdb(a, &vx).contains(&format!("{control_mac} dst 198.51.100.50"))));
    a.ok(&["info"]);
    assert!(a.host_ok(&["ip", "neigh", "show", "dev", &vx]).contains(&format!("10.70.0.90 lladdr {control_mac}")));
    let a1 = a.sandbox_ip("a1");
    let before = kernel_snapshot(a, &[&vx, &vx_legacy]);

    let claim = |mac: &str| format!(r#"{{"host":"peer01","sandbox":"forged","mac":"{mac}"}}"#);
    let a1_key = format!("/natd/v1/ips/ov1/{a1}");
    let forged = [
        ("/natd/v1/ips/ov1/10.99.0.5", claim(&overlay_mac("10.99.0.5")), "outside subnet"),
        ("/natd/v1/ips/ov1/10.70.0.1", claim(&overlay_mac("10.70.0.1")), "gateway"),
        ("/natd/v1/ips/ov1/10.70.0.77", claim("00:00:00:00:00:00"), "default destination"),
        ("/natd/v1/ips/ov1/10.70.0.78", claim("01:00:5e:00:00:01"), "multicast"),
        // The control's MAC, or a local sandbox's, for another address.
        ("/natd/v1/ips/ov1/10.70.0.91", claim(&control_mac), "not the MAC of address"),
        (a1_key.as_str(), claim(&overlay_mac(&a1)), "is sandbox a1's on this host"),
        ("/natd/v1/ips/ov1/10.70.0.92", "not json".to_string(), "cannot read"),
        ("/natd/v1/hosts/evil01", r#"{"id":"evil01","name":"evil","addr":"127.0.0.1"}"#.to_string(), "loopback"),
        ("/natd/v1/hosts/evil02", format!(r#"{{"id":"evil02","name":"evil","addr":"{HOST_UPLINK_IP}"}}"#), "address of this host"),
        (
            "/natd/v1/networks/evil-net",
            r#"{"name":"evil-net","subnet":"10.71.0.0/24","gateway":"10.71.0.1","vni":7777,"internal":false,"created":0,"created_by":"peer01"}"#.to_string(),
            "overlaps network plain",
        ),
    ];
    for (key, value, _) in &forged {
        etcd.put(key, value);
    }
    let mut expected: Vec<String> = forged.iter().map(|(k, _, _)| k.to_string()).collect();
    expected.sort();
    assert!(
        wait_until(CONVERGE, || rejected(a) == expected),
        "every forged record is reported: {:?}\n{}",
        rejected(a),
        a.natd_log()
    );
    let info = a.ok(&["info"]);
    for (key, _, why) in &forged {
        assert!(info.lines().any(|l| l.contains(key) && l.contains(why)), "{key}: {why}\n{info}");
    }
    assert_eq!(kernel_snapshot(a, &[&vx, &vx_legacy]), before, "a forged record reached the kernel");
    assert!(!a.ok(&["network", "ls"]).contains("evil-net"));
    let metrics = scrape(a);
    for (kind, count) in [("ips", 7), ("hosts", 2), ("networks", 1)] {
        let line = format!("natd_cluster_records_rejected{{kind=\"{kind}\"}} {count}");
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    assert!(metrics.contains("natd_overlay_underlay_drops_total{reason=\"non_member\"} 0"), "{metrics}");

    // A zero-MAC entry as an older natd could have been made to write (it never removed
    // one): the next pass over the FDB removes it.
    a.host_ok(&["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", &vx, "dst", "198.51.100.77"]);
    assert!(fdb(a, &vx).contains("00:00:00:00:00:00 dst 198.51.100.77"));
    etcd.del("/natd/v1/ips/ov1/10.70.0.77");
    assert!(
        wait_until(CONVERGE, || !fdb(a, &vx).contains("00:00:00:00:00:00")),
        "{}",
        fdb(a, &vx)
    );
    assert!(!rejected(a).contains(&"/natd/v1/ips/ov1/10.70.0.77".to_string()));
    assert!(fdb(a, &vx).contains(&format!("{control_mac} dst 198.51.100.50")), "the control stays");
    // This host's own registration rewritten with another address (its sandboxes' traffic
    // would go there): written back within a renewal period.
    let id = a.json(&["info"])["cluster"]["host_id"].as_str().unwrap().to_string();
    let key = format!("/natd/v1/hosts/{id}");
    let mine = etcd.get(&key).unwrap();
    assert!(mine.contains(HOST_UPLINK_IP), "{mine}");
    etcd.put(&key, &mine.replace(HOST_UPLINK_IP, "198.51.100.66"));
    assert!(
        wait_until(Duration::from_secs(TTL + 2), || etcd.get(&key).as_deref() == Some(mine.as_str())),
        "A writes its registration back: {:?}",
        etcd.get(&key)
    );
    assert!(a.natd_log().contains("changed or removed by another writer"));
    // Renewals worked all along (a renewal that never completes would still keep the lease).
    assert!(!a.natd_log().contains("lease renewal failed"), "{}", a.natd_log());
    // Each refusal was logged once, through several passes.
    let log = a.natd_log();
    for (key, _, _) in &forged {
        let lines = log.lines().filter(|l| l.contains("record not applied") && l.contains(key)).count();
        assert_eq!(lines, 1, "{key} logged {lines} times\n{log}");
    }

    // A start with the store down and the filter gone (a reboot): the overlays come back
    // closed to the underlay (their VNIs, no member) until the store is read.
    let table = format!("{}_underlay", hosts[0].prefix);
    hosts[0].stop_natd(nix::sys::signal::Signal::SIGTERM);
    hosts[0].host_ok(&["nft", "delete", "table", "ip", &table]);
    etcd.stop();
    hosts[0].restart_natd().expect("natd starts with its store down");
    let a = &hosts[0];
    let set = |name: &str| a.host_ok(&["nft", "list", "set", "ip", &table, name]);
    assert!(set("vnis").contains("elements"), "{}", set("vnis"));
    assert!(!set("members").contains("elements") && !set("speakers").contains("elements"), "{}", set("members"));
}

/// A directory of the test's own, removed when it is dropped.
struct CertDir(std::path::PathBuf);

impl CertDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("natd-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// natd arguments of a member using `opts` as `--cluster-store-opt`s.
fn tls_member(opts: &[String]) -> Vec<String> {
    let mut args = member_args(TTL);
    for opt in opts {
        args.extend(["--cluster-store-opt".to_string(), opt.clone()]);
    }
    args
}

fn start_error(lab: &mut Lab, args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match lab.start_natd(&args) {
        Ok(()) => panic!("natd started with {args:?}"),
        Err(e) => format!("{e:#}"),
    }
}

/// etcd with TLS and client certificates (`--client-cert-auth`), then with user
/// authentication as well: natd connects with the right files, and with a wrong one
/// refuses to start, naming the option, before it changes anything on the host.
#[test]
fn a_store_with_tls_client_certificates_and_passwords() {
    // Declared first, dropped last: each lab's `natd --cleanup` reads these files too.
    let files = CertDir::new();
    let mut hosts = shared_lan(2);
    let lan = hosts[0].ext_ns.clone();
    let certs = natlab::overlay::Certs::make(&files.0);
    let mut etcd = Etcd::start_tls(&lan, hosts[0].dir.clone(), &certs);
    let path = |p: &std::path::Path| p.display().to_string();
    let ca = format!("kv.cacertfile={}", path(&certs.ca));
    let cert = format!("kv.certfile={}", path(&certs.client.0));
    let key = format!("kv.keyfile={}", path(&certs.client.1));

    let right = tls_member(&[ca.clone(), cert.clone(), key.clone()]);
    hosts[0].start_natd(&right.iter().map(String::as_str).collect::<Vec<_>>()).expect("natd with the right files");
    let a = &hosts[0];
    assert!(
        wait_until(CONVERGE, || a.json(&["info"])["cluster"]["hosts"].as_array().map(Vec::len) == Some(1)),
        "A registers through TLS: {}\n{}",
        a.json(&["info"]),
        a.natd_log()
    );
    assert!(a.ok(&["info"]).contains("etcd+tls://"));
    a.ok(&["network", "create", "-d", "overlay", "--subnet", "10.70.0.0/24", "ov1"]);
    assert_eq!(etcd.keys("/natd/v1/networks/").len(), 1);

    let b = &mut hosts[1];
    let cases = [
        (vec![format!("kv.cacertfile={}", path(&certs.other_ca)), cert.clone(), key.clone()], "kv.cacertfile"),
        (vec![ca.clone()], "kv.certfile"),
        (
            vec![ca.clone(), format!("kv.certfile={}", path(&certs.stranger.0)), format!("kv.keyfile={}", path(&certs.stranger.1))],
            "kv.certfile",
        ),
        (vec!["kv.cacertfile=/nonexistent/ca.pem".to_string()], "kv.cacertfile=/nonexistent/ca.pem"),
        (vec![ca.clone(), cert.clone()], "kv.certfile and kv.keyfile go together"),
        (vec![format!("kv.cacertfile={}", path(&certs.client.1))], "not a PEM certificate"),
    ];
    for (opts, named) in &cases {
        let error = start_error(b, &tls_member(opts));
        assert!(error.contains(named), "{opts:?} should name {named}:\n{error}");
        // Refused before the dataplane or anything else was set up.
        let links = b.host_ok(&["ip", "-o", "link", "show"]);
        assert!(!links.contains(&b.prefix), "{opts:?} left links:\n{links}");
        assert_eq!(b.host_ok(&["nft", "list", "tables"]), "", "{opts:?} left tables");
    }

    // Passwords on top: the user natd names must exist with that password.
    etcd.enable_auth("natd-pw");
    let wrong = files.0.join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let right_password = files.0.join("password");
    std::fs::write(&right_password, "natd-pw\n").unwrap();
    let as_user = |user: &str, file: &std::path::Path| {
        tls_member(&[ca.clone(), cert.clone(), key.clone(), format!("kv.username={user}"), format!("kv.passwordfile={}", path(file))])
    };
    let with_password = |file: &std::path::Path| as_user("natd", file);
    let error = start_error(b, &with_password(&wrong));
    assert!(error.contains("kv.username/kv.passwordfile"), "{error}");
    let error = start_error(b, &as_user("reader", &right_password));
    assert!(error.contains("kv.username") && error.contains("may not read and write"), "{error}");
    b.start_natd(&with_password(&right_password).iter().map(String::as_str).collect::<Vec<_>>())
        .expect("natd with the right password");
    let (a, b) = (&hosts[0], &hosts[1]);
    assert!(
        wait_until(CONVERGE, || b.ok(&["network", "ls"]).contains("ov1")),
        "B reads the store as user natd\n{}",
        b.natd_log()
    );
    // Both hosts keep working: A (as its certificate's CN) and B (with its token).
    a.run_script("a1", &["--network", "ov1"], &natlab::whoami(80));
    b.ok(&["run", "--name", "b1", "--network", "ov1"]);
    assert!(wait_listening(&a.netns_of("a1"), "tcp", 80));
    let (a1, b1) = (a.sandbox_ip("a1"), b.sandbox_ip("b1"));
    assert!(
        wait_until(CONVERGE, || b.tcp_line_from("b1", &a1, 80).as_deref() == Some(b1.as_str())),
        "overlay traffic across hosts with an authenticated TLS store\nA: {}\nB: {}",
        a.natd_log(),
        b.natd_log()
    );
}
