//! natd-cni driven directly, as a container runtime drives it: every verb in every CNI
//! version it accepts, the spec's errors, GC and STATUS, DEL while natd is down, and the
//! result compared with Debian's reference plugins (bridge + host-local + portmap).
use std::{path::Path, time::Duration};

use natlab::{
    EXT_IP, HOST_UPLINK_IP, Lab,
    cni::{REFERENCE_PLUGINS, Reply, attachment, call, natd_conf, plugin_bin},
    sh, tcp_line, wait_listening, wait_until,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// natlab::whoami(80) without a shell in between, so that dropping it ends the server.
const WHOAMI: &[&str] = &[
    "socat",
    "TCP-LISTEN:80,fork,reuseaddr",
    "SYSTEM:echo $SOCAT_PEERADDR",
];

fn mappings(host: u16) -> Value {
    json!([{ "hostPort": host, "containerPort": 80, "protocol": "tcp" }])
}

/// A namespace as a runtime makes one for a container: (name, path).
fn container_ns(lab: &mut Lab, suffix: &str) -> (String, String) {
    let ns = lab.add_netns(suffix).unwrap();
    let path = format!("/run/netns/{ns}");
    (ns, path)
}

fn ok(reply: Reply, what: &str) -> Value {
    assert!(reply.ok, "{what} failed: {} {}", reply.json, reply.stderr);
    reply.json
}

fn sandbox_names(lab: &Lab) -> Vec<String> {
    lab.json(&["ps"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn every_verb_in_every_version() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    let plugin = plugin_bin();
    let version = call(&lab, &plugin, "VERSION", &[], &json!({"cniVersion": "1.1.0"}));
    assert_eq!(
        ok(version, "VERSION")["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let mut gateway_macs = std::collections::BTreeSet::new();
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .into_iter()
        .enumerate()
    {
        let (ns, netns) = container_ns(&mut lab, &format!("ctr{i}"));
        let id = format!("container-{i}");
        let port = 8080 + i as u16;
        let conf = natd_conf(&lab, version, mappings(port));
        let vars = attachment(&id, &netns, "eth0");
        let result = ok(call(&lab, &plugin, "ADD", &vars, &conf), "ADD");

        // The result, in the version asked for.
        assert_eq!(result["cniVersion"], version);
        let bridge_mac = result["interfaces"][0]["mac"].as_str();
        assert!(
            bridge_mac.is_some_and(|m| m.len() == 17),
            "the bridge's MAC is in the result: {result}"
        );
        gateway_macs.insert(bridge_mac.unwrap_or_default().to_string());
        let inner = &result["interfaces"][2];
        assert_eq!(inner["name"], "eth0");
        assert_eq!(inner["sandbox"], netns.as_str());
        let address = result["ips"][0]["address"].as_str().unwrap();
        assert!(
            address.starts_with("172.18.") && address.ends_with("/16"),
            "{result}"
        );
        assert_eq!(result["ips"][0]["interface"], 2);
        assert_eq!(result["ips"][0]["gateway"], "172.18.0.1");
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            version < "1.0.0",
            "{result}"
        );
        assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");
        // The interface really is there, with that MAC and address.
        let shown = sh("ip", &["-n", &ns, "-j", "addr", "show", "eth0"]);
        let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
        assert_eq!(shown[0]["address"], inner["mac"], "{shown}");
        let ip = address.split('/').next().unwrap();
        assert!(
            shown[0]["addr_info"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["local"] == ip)
        );

        // The published port answers, and the server sees the client's own address.
        let _server = lab.spawn_in(&ns, WHOAMI);
        assert!(wait_listening(&netns, "tcp", 80));
        assert_eq!(
            tcp_line(&["ip", "netns", "exec", &lab.ext_ns], HOST_UPLINK_IP, port).as_deref(),
            Some(EXT_IP),
            "version {version}: port {port} answers"
        );

        // CHECK exists from 0.4.0 on.
        let mut check_conf = conf.clone();
        check_conf["prevResult"] = result.clone();
        let check = call(&lab, &plugin, "CHECK", &vars, &check_conf);
        if version >= "0.4.0" {
            assert!(check.ok, "CHECK {version}: {}", check.json);
        } else {
            assert_eq!(
                check.code(),
                Some(1),
                "CHECK is refused before 0.4.0: {}",
                check.json
            );
        }

        // DEL, twice: both succeed, and the attachment and its interface are gone.
        let mut del_conf = conf.clone();
        del_conf["prevResult"] = result;
        for round in 1..=2 {
            let del = call(&lab, &plugin, "DEL", &vars, &del_conf);
            assert!(del.ok, "DEL #{round} ({version}): {}", del.json);
        }
        assert!(sandbox_names(&lab).is_empty(), "natd forgot the attachment");
        assert!(!sh("ip", &["-n", &ns, "link", "show", "eth0"]).status.success());
        assert!(tcp_line(&["ip", "netns", "exec", &lab.ext_ns], HOST_UPLINK_IP, port).is_none());
        // CHECK after DEL: the container is unknown.
        if version >= "0.4.0" {
            assert_eq!(call(&lab, &plugin, "CHECK", &vars, &check_conf).code(), Some(3));
        }
    }
    // The gateway's MAC stays put as containers come and go (neighbour caches stay valid).
    assert_eq!(gateway_macs.len(), 1, "{gateway_macs:?}");
}

#[test]
fn bad_requests_get_the_specs_errors() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    let plugin = plugin_bin();
    let (ns, netns) = container_ns(&mut lab, "ctr");
    let vars = attachment("c1", &netns, "eth0");
    let conf = natd_conf(&lab, "1.0.0", mappings(8080));

    let zero = call(
        &lab,
        &plugin,
        "ADD",
        &vars,
        &natd_conf(&lab, "1.0.0", mappings(0)),
    );
    assert_eq!(zero.code(), Some(7), "host port 0: {}", zero.json);
    assert!(
        zero.json["details"]
            .as_str()
            .unwrap()
            .contains("invalid host port 0")
    );
    let old = call(&lab, &plugin, "ADD", &vars, &natd_conf(&lab, "0.2.0", json!([])));
    assert_eq!(old.code(), Some(1), "{}", old.json);
    let no_netns = call(
        &lab,
        &plugin,
        "ADD",
        &[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
        &conf,
    );
    assert_eq!(no_netns.code(), Some(4), "{}", no_netns.json);
    assert!(no_netns.json["msg"].as_str().unwrap().contains("CNI_NETNS"));
    assert_eq!(call(&lab, &plugin, "FROB", &vars, &conf).code(), Some(4));
    let garbage = call(&lab, &plugin, "ADD", &vars, &json!("not a config"));
    assert_eq!(garbage.code(), Some(6), "{}", garbage.json);
    let mut unknown_network = conf.clone();
    unknown_network["network"] = json!("nosuchnet");
    let missing = call(&lab, &plugin, "ADD", &vars, &unknown_network);
    assert_eq!(missing.code(), Some(7), "{}", missing.json);
    assert!(
        missing.json["msg"].as_str().unwrap().contains("nosuchnet"),
        "{}",
        missing.json
    );
    // Nothing of the refused requests was left behind.
    assert!(sandbox_names(&lab).is_empty());

    // A second ADD of the same attachment is refused and leaves the first one working.
    ok(call(&lab, &plugin, "ADD", &vars, &conf), "ADD");
    let again = call(&lab, &plugin, "ADD", &vars, &conf);
    assert_eq!(again.code(), Some(100), "{}", again.json);
    assert!(
        again.json["msg"].as_str().unwrap().contains("already in use"),
        "{}",
        again.json
    );
    let _server = lab.spawn_in(&ns, WHOAMI);
    assert!(wait_listening(&netns, "tcp", 80));
    assert_eq!(
        tcp_line(&["ip", "netns", "exec", &lab.ext_ns], HOST_UPLINK_IP, 8080).as_deref(),
        Some(EXT_IP)
    );
    // Another container asking for the same host port is refused by natd's port book.
    let (_, netns2) = container_ns(&mut lab, "ctr2");
    let clash = call(&lab, &plugin, "ADD", &attachment("c2", &netns2, "eth0"), &conf);
    assert_eq!(clash.code(), Some(100), "{}", clash.json);
    assert_eq!(sandbox_names(&lab).len(), 1);
}

#[test]
fn gc_removes_what_the_runtime_no_longer_lists_and_status_tells_readiness() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    let plugin = plugin_bin();
    let conf = natd_conf(&lab, "1.1.0", json!([]));
    let mut names = Vec::new();
    for id in ["keep", "stale"] {
        let (_, netns) = container_ns(&mut lab, id);
        ok(
            call(&lab, &plugin, "ADD", &attachment(id, &netns, "eth0"), &conf),
            "ADD",
        );
        names.push(natd::cni::sandbox_name(id, "eth0"));
    }
    // A sandbox natctl made is not the plugin's to collect.
    lab.ok(&["run", "--name", "manual"]);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": "keep", "ifname": "eth0" }]);
    let reply = call(&lab, &plugin, "GC", &[], &gc);
    assert!(reply.ok && reply.json.is_null(), "GC: {}", reply.json);
    let mut left = sandbox_names(&lab);
    left.sort();
    let mut expected = vec![names[0].clone(), "manual".to_string()];
    expected.sort();
    assert_eq!(left, expected);
    // GC and STATUS are 1.1.0 verbs.
    assert_eq!(
        call(&lab, &plugin, "GC", &[], &natd_conf(&lab, "1.0.0", json!([]))).code(),
        Some(1)
    );

    assert!(call(&lab, &plugin, "STATUS", &[], &conf).ok);
    let mut elsewhere = conf.clone();
    elsewhere["network"] = json!("nosuchnet");
    assert_eq!(call(&lab, &plugin, "STATUS", &[], &elsewhere).code(), Some(50));
    lab.stop_natd(Signal::SIGTERM);
    let down = call(&lab, &plugin, "STATUS", &[], &conf);
    assert_eq!(down.code(), Some(50), "{}", down.json);
    assert!(down.json["msg"].as_str().unwrap().contains("not available"));
}

/// DEL must succeed with natd down; natd removes the attachment when it starts again and
/// finds the runtime's namespace gone.
#[test]
fn del_while_natd_is_down_is_finished_by_the_next_start() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    let plugin = plugin_bin();
    let (ns, netns) = container_ns(&mut lab, "ctr");
    let vars = attachment("c1", &netns, "eth0");
    let conf = natd_conf(&lab, "1.0.0", mappings(8080));
    let result = ok(call(&lab, &plugin, "ADD", &vars, &conf), "ADD");
    let host_veth = result["interfaces"][1]["name"].as_str().unwrap().to_string();

    lab.stop_natd(Signal::SIGTERM);
    let del = call(&lab, &plugin, "DEL", &vars, &conf);
    assert!(del.ok, "DEL with natd down: {}", del.json);
    assert!(del.stderr.contains("next start"), "{}", del.stderr);
    // The runtime then deletes the container's namespace (its veth end goes with it).
    assert!(sh("ip", &["netns", "del", &ns]).status.success());
    lab.restart_natd().unwrap();
    assert!(
        sandbox_names(&lab).is_empty(),
        "the attachment is removed at start"
    );
    let info = lab.json(&["info"]);
    assert!(
        info["last_reconcile"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap_or_default().contains("removed CNI attachment")),
        "{info}"
    );
    assert!(!lab.host(&["ip", "link", "show", &host_veth]).status.success());
    // Its port is free again for the next container.
    let (_, netns2) = container_ns(&mut lab, "ctr2");
    ok(
        call(&lab, &plugin, "ADD", &attachment("c2", &netns2, "eth0"), &conf),
        "ADD of the next container",
    );
}

/// The same conflist shape with Debian's reference plugins: the result natd-cni gives must
/// have the reference's structure, field by field; differences are printed.
#[test]
fn results_have_the_shape_of_the_reference_plugins() {
    let bridge = Path::new(REFERENCE_PLUGINS).join("bridge");
    assert!(
        bridge.exists(),
        "Debian's containernetworking-plugins are missing ({}): `cargo xtask test` installs them",
        bridge.display()
    );
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    let ns_ref = lab.add_netns("ref").unwrap();
    let ns_natd = lab.add_netns("natd").unwrap();
    for version in ["0.4.0", "1.0.0"] {
        let reference_conf = json!({
            "cniVersion": version,
            "name": "natdnet",
            "type": "bridge",
            "bridge": format!("{}ref", lab.prefix),
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "host-local",
                "dataDir": lab.dir.join("ipam"),
                "routes": [{ "dst": "0.0.0.0/0" }],
                "ranges": [[{ "subnet": "10.99.0.0/24", "gateway": "10.99.0.1" }]],
            },
        });
        let netns_ref = format!("/run/netns/{ns_ref}");
        let vars_ref = attachment("ref", &netns_ref, "eth0");
        let reference = ok(
            call(&lab, &bridge, "ADD", &vars_ref, &reference_conf),
            "reference ADD",
        );
        let netns_natd = format!("/run/netns/{ns_natd}");
        let vars_natd = attachment("natd", &netns_natd, "eth0");
        let conf = natd_conf(&lab, version, json!([]));
        let ours = ok(
            call(&lab, &plugin_bin(), "ADD", &vars_natd, &conf),
            "natd-cni ADD",
        );

        let differences = compare(&reference, &ours);
        println!("version {version}: reference {reference}\nnatd-cni {ours}\ndifferences: {differences:#?}");
        assert!(differences.is_empty(), "version {version}: {differences:#?}");

        ok(
            call(&lab, &bridge, "DEL", &vars_ref, &reference_conf),
            "reference DEL",
        );
        ok(
            call(&lab, &plugin_bin(), "DEL", &vars_natd, &conf),
            "natd-cni DEL",
        );
    }
    let _ = lab.host(&["ip", "link", "del", &format!("{}ref", lab.prefix)]);
}

/// Structural differences: keys present in one and not the other, array lengths, which
/// interfaces carry `sandbox`, what `ips[].interface` points at. Values that must differ
/// (addresses, names, MACs) are not compared; known and intended differences are listed.
fn compare(reference: &Value, ours: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        k.sort();
        k
    };
    if keys(reference) != keys(ours) {
        out.push(format!(
            "top-level keys {:?} vs {:?}",
            keys(reference),
            keys(ours)
        ));
    }
    assert_eq!(reference["cniVersion"], ours["cniVersion"]);
    for list in ["interfaces", "ips"] {
        let (a, b) = (
            reference[list].as_array().unwrap(),
            ours[list].as_array().unwrap(),
        );
        if a.len() != b.len() {
            out.push(format!("{list}: {} entries vs {}", a.len(), b.len()));
            continue;
        }
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            // natd-cni adds the container interface's MTU (1.0.0 and later).
            let mut ours_keys = keys(y);
            ours_keys.retain(|k| k != "mtu");
            if keys(x) != ours_keys {
                out.push(format!("{list}[{i}] keys {:?} vs {:?}", keys(x), keys(y)));
            }
        }
    }
    let sandboxed = |v: &Value| -> Vec<bool> {
        v["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.get("sandbox").is_some())
            .collect()
    };
    if sandboxed(reference) != sandboxed(ours) {
        out.push(format!(
            "sandbox flags {:?} vs {:?}",
            sandboxed(reference),
            sandboxed(ours)
        ));
    }
    if reference["ips"][0]["interface"] != ours["ips"][0]["interface"] {
        out.push("ips[0].interface points elsewhere".into());
    }
    let default_route = |v: &Value| {
        v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "0.0.0.0/0")
    };
    if default_route(reference) != default_route(ours) {
        out.push("default route".into());
    }
    out
}

#[test]
fn the_log_file_records_every_call() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    let conf = natd_conf(&lab, "1.1.0", json!([]));
    assert!(call(&lab, &plugin_bin(), "STATUS", &[], &conf).ok);
    let _ = call(&lab, &plugin_bin(), "ADD", &[], &conf);
    let log = lab.dir.join("cni.log");
    assert!(wait_until(Duration::from_secs(2), || log.exists()));
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("STATUS") && text.contains(": ok"), "{text}");
    assert!(text.contains("ADD") && text.contains("error 4"), "{text}");
}

/// `podman network connect`: the same container gets eth1 on another network. It shares
/// the namespace with eth0, keeps eth0's default route, and each interface goes on its own DEL.
#[test]
fn a_container_joins_a_second_network_as_eth1() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.ok(&["network", "create", "--subnet", "10.77.0.0/24", "second"]);
    let plugin = plugin_bin();
    let (ns, netns) = container_ns(&mut lab, "ctr");
    let first = natd_conf(&lab, "1.0.0", json!([]));
    let mut second = natd_conf(&lab, "1.0.0", json!([]));
    second["name"] = json!("secondnet");
    second["network"] = json!("second");
    ok(
        call(&lab, &plugin, "ADD", &attachment("c1", &netns, "eth0"), &first),
        "ADD eth0",
    );
    let eth1 = ok(
        call(&lab, &plugin, "ADD", &attachment("c1", &netns, "eth1"), &second),
        "ADD eth1",
    );
    assert!(
        eth1["ips"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("10.77.0."),
        "{eth1}"
    );
    assert_eq!(eth1["routes"], json!([]), "eth1 brings no default route: {eth1}");
    let routes =
        String::from_utf8_lossy(&sh("ip", &["-n", &ns, "route", "show", "default"]).stdout).to_string();
    assert_eq!(routes.lines().count(), 1, "{routes}");
    assert!(routes.contains("via 172.18.0.1 dev eth0"), "{routes}");
    // Another container cannot take the namespace.
    let other = call(&lab, &plugin, "ADD", &attachment("c2", &netns, "eth2"), &first);
    assert_eq!(other.code(), Some(100), "{}", other.json);
    assert!(
        other.json["msg"].as_str().unwrap().contains("already used"),
        "{}",
        other.json
    );

    ok(
        call(&lab, &plugin, "DEL", &attachment("c1", &netns, "eth1"), &second),
        "DEL eth1",
    );
    assert!(!sh("ip", &["-n", &ns, "link", "show", "eth1"]).status.success());
    assert!(
        sh("ip", &["-n", &ns, "link", "show", "eth0"]).status.success(),
        "eth0 stays"
    );
    ok(
        call(&lab, &plugin, "DEL", &attachment("c1", &netns, "eth0"), &first),
        "DEL eth0",
    );
    assert!(sandbox_names(&lab).is_empty());
}

/// A container that another plugin attached first (its network routes the container, as
/// a runtime with two networks does when natd's is not the first): natd's ADD succeeds as
/// an additional interface, leaves the other plugin's default route as it was and reports
/// no route in its result; with no route in the namespace (the control) it adds its own.
#[test]
fn an_attachment_after_another_plugins_default_route_is_additional() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    let plugin = plugin_bin();
    let conf = natd_conf(&lab, "1.0.0", json!([]));
    let (ns, netns) = container_ns(&mut lab, "other");
    for cmd in [
        &["link", "add", "net1", "type", "veth", "peer", "name", "net1p"][..],
        &["addr", "add", "10.253.0.2/24", "dev", "net1"],
        &["link", "set", "net1", "up"],
        &["route", "add", "default", "via", "10.253.0.1"],
    ] {
        let mut args = vec!["-n", ns.as_str()];
        args.extend_from_slice(cmd);
        natlab::must("ip", &args);
    }
    let routes = |ns: &str| String::from_utf8_lossy(&sh("ip", &["-n", ns, "route", "show", "default"]).stdout).to_string();
    let before = routes(&ns);
    let result = ok(call(&lab, &plugin, "ADD", &attachment("c1", &netns, "eth0"), &conf), "ADD after another plugin");
    assert_eq!(result["routes"], json!([]), "no route of natd's: {result}");
    assert!(result["ips"][0]["address"].as_str().unwrap().starts_with("172.18.0."), "{result}");
    assert_eq!(routes(&ns), before, "the other plugin's default route is untouched");
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result.clone();
    ok(call(&lab, &plugin, "CHECK", &attachment("c1", &netns, "eth0"), &check_conf), "CHECK agrees");

    let (plain_ns, plain) = container_ns(&mut lab, "plain");
    let result = ok(call(&lab, &plugin, "ADD", &attachment("c2", &plain, "eth0"), &conf), "ADD, first plugin");
    assert_ne!(result["routes"], json!([]), "{result}");
    assert!(routes(&plain_ns).contains("via 172.18.0.1 dev eth0"), "{}", routes(&plain_ns));
}

/// Runtimes may remove a container's namespace before they call DEL (natd running): DEL
/// still succeeds and natd forgets the attachment, its veth and its port.
#[test]
fn del_after_the_namespace_is_gone_cleans_up() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    let plugin = plugin_bin();
    let (ns, netns) = container_ns(&mut lab, "ctr");
    let vars = attachment("c1", &netns, "eth0");
    let conf = natd_conf(&lab, "1.0.0", mappings(8080));
    let result = ok(call(&lab, &plugin, "ADD", &vars, &conf), "ADD");
    let host_veth = result["interfaces"][1]["name"].as_str().unwrap().to_string();
    assert!(sh("ip", &["netns", "del", &ns]).status.success());
    ok(
        call(&lab, &plugin, "DEL", &vars, &conf),
        "DEL without the namespace",
    );
    assert!(sandbox_names(&lab).is_empty());
    assert!(!lab.host(&["ip", "link", "show", &host_veth]).status.success());
    let (_, netns2) = container_ns(&mut lab, "ctr2");
    ok(
        call(&lab, &plugin, "ADD", &attachment("c2", &netns2, "eth0"), &conf),
        "the port is free for the next container",
    );
}

/// A pod must not shadow a host service: a hostPort a process of the host listens on
/// (sshd, the kubelet) is refused, with the reason, unless the network's configuration
/// says `"hostPortOverListener": true`.
#[test]
fn a_host_port_a_host_process_listens_on_is_refused_unless_allowed() {
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    let plugin = plugin_bin();
    let _sshd = lab.spawn_in(&lab.host_ns, &["socat", "TCP-LISTEN:2222,reuseaddr,fork", "SYSTEM:echo host"]);
    assert!(wait_listening(&lab.host_path(), "tcp", 2222));
    let (_, netns) = container_ns(&mut lab, "ctr");
    let vars = attachment("c1", &netns, "eth0");
    let refused = call(&lab, &plugin, "ADD", &vars, &natd_conf(&lab, "1.0.0", mappings(2222)));
    assert!(!refused.ok, "refused: {}", refused.json);
    let text = refused.json.to_string();
    assert!(text.contains("2222") && text.contains("already in use"), "{text}");
    assert!(sandbox_names(&lab).is_empty(), "nothing left behind");
    // Control: a free port is published.
    ok(call(&lab, &plugin, "ADD", &vars, &natd_conf(&lab, "1.0.0", mappings(2223))), "ADD on a free port");
    ok(call(&lab, &plugin, "DEL", &vars, &natd_conf(&lab, "1.0.0", mappings(2223))), "DEL");
    // Allowed by the operator.
    let mut conf = natd_conf(&lab, "1.0.0", mappings(2222));
    conf["hostPortOverListener"] = json!(true);
    ok(call(&lab, &plugin, "ADD", &vars, &conf), "ADD over a listener, allowed");
}
