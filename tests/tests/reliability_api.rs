//! Reliability matrix, rows 3 and 7: many API clients at once, and hostile API input.
//! Short form here; `cargo xtask soak` runs the full sizes (natlab::soak).
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use natd::{
    api::{ConnectRequest, NetworkCreate, RunRequest, paths},
    client::{Client, ClientError},
};
use natlab::{
    Lab, sh,
    soak::{report, rng, size},
};
use serde_json::{Value, json};

/// What one client did that succeeded, and what went wrong that must not.
#[derive(Default)]
struct ClientLog {
    sandboxes: BTreeSet<String>,
    network: Option<String>,
    unexpected: Vec<String>,
    conflicts: usize,
    operations: usize,
}

async fn client_run(socket: &Path, c: usize, ops: usize, seed: u64) -> ClientLog {
    let client = Client::new(socket);
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(c as u64));
    let mut log = ClientLog::default();
    // Which of this client's sandboxes are on its own network (run on it or connected),
    // which were run on it (it is then their only network) and which publish ports.
    let mut on_network: BTreeSet<String> = BTreeSet::new();
    let mut run_on_network: BTreeSet<String> = BTreeSet::new();
    let mut publishes: BTreeSet<String> = BTreeSet::new();
    for k in 0..ops {
        log.operations += 1;
        let choice = rng.u8(0..10);
        match choice {
            0..=3 => {
                let name = format!("c{c}-{k}");
                let (publish, fixed) = match rng.u8(0..3) {
                    0 => (vec![], false),
                    1 => (vec!["80".to_string()], false),
                    // A small shared pool: clients collide on purpose.
                    _ => (vec![format!("{}:80", 20000 + rng.u16(0..24))], true),
                };
                let network = log.network.clone().filter(|_| rng.bool());
                let request = RunRequest {
                    name: name.clone(),
                    network: network.clone(),
                    publish,
                    ..Default::default()
                };
                match client.post::<_, Value>(paths::SANDBOXES, &request).await {
                    Ok(_) => {
                        log.sandboxes.insert(name.clone());
                        if !request.publish.is_empty() {
                            publishes.insert(name.clone());
                        }
                        if network.is_some() {
                            on_network.insert(name.clone());
                            run_on_network.insert(name);
                        }
                    }
                    Err(ClientError::Api { status: 409, message })
                        if fixed && message.contains("already allocated") =>
                    {
                        log.conflicts += 1
                    }
                    Err(e) => log.unexpected.push(format!("run {name}: {e}")),
                }
            }
            4..=5 => {
                let Some(name) = pick(&mut rng, &log.sandboxes) else {
                    continue;
                };
                match client.delete(&paths::with_name(paths::SANDBOX, &name)).await {
                    Ok(_) => {
                        log.sandboxes.remove(&name);
                        on_network.remove(&name);
                        run_on_network.remove(&name);
                        publishes.remove(&name);
                    }
                    Err(e) => log.unexpected.push(format!("rm {name}: {e}")),
                }
            }
            6 => {
                if log.network.is_some() {
                    continue;
                }
                let name = format!("c{c}net");
                let request = NetworkCreate {
                    name: name.clone(),
                    subnet: vec![format!("10.{}.0.0/24", 100 + c)],
                    ..Default::default()
                };
                match client.post::<_, Value>(paths::NETWORKS, &request).await {
                    Ok(_) => log.network = Some(name),
                    Err(e) => log.unexpected.push(format!("network create {name}: {e}")),
                }
            }
            7 => {
                let Some(name) = log.network.clone() else { continue };
                let result = client.delete(&paths::with_name(paths::NETWORK, &name)).await;
                match (result, on_network.is_empty()) {
                    (Ok(_), true) => log.network = None,
                    (Err(ClientError::Api { status, .. }), false) if (400..500).contains(&status) => {}
                    (other, empty) => log
                        .unexpected
                        .push(format!("network rm {name} (in use: {}): {other:?}", !empty)),
                }
            }
            8 => {
                let Some(network) = log.network.clone() else {
                    continue;
                };
                let candidates: BTreeSet<String> = log.sandboxes.difference(&on_network).cloned().collect();
                let Some(sandbox) = pick(&mut rng, &candidates) else {
                    continue;
                };
                let request = ConnectRequest {
                    sandbox: sandbox.clone(),
                    ip: None,
                    ip6: None,
                };
                match client
                    .post::<_, Value>(&paths::with_name(paths::NETWORK_CONNECT, &network), &request)
                    .await
                {
                    Ok(_) => {
                        on_network.insert(sandbox);
                    }
                    Err(e) => log.unexpected.push(format!("connect {sandbox}: {e}")),
                }
            }
            _ => {
                let Some(network) = log.network.clone() else {
                    continue;
                };
                let Some(sandbox) = pick(&mut rng, &on_network) else {
                    continue;
                };
                let request = ConnectRequest {
                    sandbox: sandbox.clone(),
                    ip: None,
                    ip6: None,
                };
                // natd refuses to take a sandbox's last network while it publishes ports.
                let refused = run_on_network.contains(&sandbox) && publishes.contains(&sandbox);
                match (
                    client
                        .post::<_, Value>(&paths::with_name(paths::NETWORK_DISCONNECT, &network), &request)
                        .await,
                    refused,
                ) {
                    (Ok(_), false) => {
                        on_network.remove(&sandbox);
                        run_on_network.remove(&sandbox);
                    }
                    (
                        Err(ClientError::Api {
                            status: 400..=499,
                            message,
                        }),
                        true,
                    ) if message.contains("last network") => log.conflicts += 1,
                    (other, _) => log.unexpected.push(format!(
                        "disconnect {sandbox} (refusal expected: {refused}): {other:?}"
                    )),
                }
            }
        }
    }
    log
}

fn pick(rng: &mut fastrand::Rng, set: &BTreeSet<String>) -> Option<String> {
    (!set.is_empty())
        .then(|| set.iter().nth(rng.usize(0..set.len())).cloned())
        .flatten()
}

#[test]
fn concurrent_clients_get_no_address_or_port_twice() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    let clients = size(16, 64);
    let ops = size(12, 100);
    let seed = rng("concurrency").u64(..);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let socket = lab.socket.clone();
    let logs: Vec<ClientLog> = runtime.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let socket = socket.clone();
                tokio::spawn(async move { client_run(&socket, c, ops, seed).await })
            })
            .collect();
        let mut logs = Vec::new();
        for task in tasks {
            logs.push(task.await.expect("client task"));
        }
        logs
    });
    let unexpected: Vec<&String> = logs.iter().flat_map(|l| &l.unexpected).collect();
    let operations: usize = logs.iter().map(|l| l.operations).sum();
    let conflicts: usize = logs.iter().map(|l| l.conflicts).sum();

    // The state is the sum of what succeeded.
    let sandboxes = lab.json(&["ps"]);
    let stored: BTreeSet<String> = sandboxes
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = logs.iter().flat_map(|l| l.sandboxes.iter().cloned()).collect();
    let networks: BTreeSet<String> = lab
        .json(&["network", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    let mut expected_networks: BTreeSet<String> = logs.iter().filter_map(|l| l.network.clone()).collect();
    expected_networks.insert("bridge".into());

    // No address and no host port handed out twice.
    let mut addresses: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut ports: BTreeMap<(String, u64, String), String> = BTreeMap::new();
    let mut duplicates = Vec::new();
    let mut endpoints = 0;
    for s in sandboxes.as_array().unwrap() {
        let name = s["name"].as_str().unwrap().to_string();
        for e in s["endpoints"].as_array().unwrap() {
            endpoints += 1;
            let key = (e["network"].to_string(), e["ipv4"].to_string());
            if let Some(other) = addresses.insert(key.clone(), name.clone()) {
                duplicates.push(format!("address {key:?}: {other} and {name}"));
            }
        }
        for p in s["ports"].as_array().unwrap() {
            let key = (
                p["host_ip"].to_string(),
                p["host_port"].as_u64().unwrap(),
                p["proto"].to_string(),
            );
            if let Some(other) = ports.insert(key.clone(), name.clone()) {
                duplicates.push(format!("host port {key:?}: {other} and {name}"));
            }
        }
    }
    // Every stored endpoint is wired: one generated veth per endpoint in natd's namespace.
    let veths = lab
        .host_ok(&["ip", "-o", "link"])
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|n| n.starts_with(&format!("{}v", lab.prefix)))
        })
        .count();
    report(
        "3 concurrency",
        operations,
        unexpected.len()
            + duplicates.len()
            + usize::from(stored != expected)
            + usize::from(networks != expected_networks),
        &format!(
            "{clients} clients x {ops} operations; {conflicts} expected port conflicts; {} sandboxes, \
             {endpoints} endpoints, {} host ports checked for duplicates",
            stored.len(),
            ports.len()
        ),
    );
    assert!(
        unexpected.is_empty(),
        "requests that failed unexpectedly: {unexpected:#?}"
    );
    assert!(duplicates.is_empty(), "{duplicates:#?}");
    assert_eq!(
        stored, expected,
        "sandboxes natd has vs. runs minus removals that succeeded"
    );
    assert_eq!(networks, expected_networks);
    assert_eq!(veths, endpoints, "one veth per stored endpoint");
}

/// One raw HTTP/1.1 exchange on the socket: (status, body), None if natd did not answer.
fn http(socket: &Path, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: natd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    // natd may answer (413) before the whole of a huge body is sent.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

fn random_json(rng: &mut fastrand::Rng, depth: u32) -> Value {
    match rng.u8(0..if depth > 2 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.bool()),
        2 => json!(rng.i64(..)),
        3 => json!(rng.f64() * 1e300),
        4 => json!((0..rng.usize(0..40)).map(|_| rng.char(..)).collect::<String>()),
        5 => json!(
            [
                "8080:80",
                "0.0.0.0:1-65535:80",
                "::1",
                "eth0",
                "999.1.1.1",
                "-1",
                "",
                "a/b"
            ][rng.usize(0..8)]
        ),
        6 => Value::Array(
            (0..rng.usize(0..4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "name", "network", "ip", "publish", "subnet", "mtu", "ports", "sandbox", "x",
            ];
            Value::Object(
                (0..rng.usize(0..4))
                    .map(|_| {
                        (
                            keys[rng.usize(0..keys.len())].to_string(),
                            random_json(rng, depth + 1),
                        )
                    })
                    .collect(),
            )
        }
    }
}

/// A valid body for `path` with one field replaced by something random.
fn mutated(rng: &mut fastrand::Rng, path: &str) -> Vec<u8> {
    let mut body = match path {
        p if p.ends_with("/connect") || p.ends_with("/disconnect") => json!({"sandbox": "keep", "ip": null}),
        p if p.ends_with("/ports") => json!({"ports": ["9090:90"]}),
        p if p.starts_with("/v1/networks") => {
            json!({"name": "mutnet", "subnet": "10.99.0.0/24", "mtu": 1400})
        }
        _ => json!({"name": "mut", "publish": ["9191:91"], "dns": ["192.0.2.53"], "mtu": 1400}),
    };
    match rng.u8(0..4) {
        0 => {
            let keys: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
            body[&keys[rng.usize(0..keys.len())]] = random_json(rng, 0);
            body.to_string().into_bytes()
        }
        1 => {
            let text = body.to_string();
            text.as_bytes()[..rng.usize(0..text.len())].to_vec()
        }
        2 => (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect(),
        _ => random_json(rng, 0).to_string().into_bytes(),
    }
}

/// Names in `now` that `before` did not have.
fn new_names(now: &Value, before: &Value) -> Vec<String> {
    let names = |v: &Value| -> BTreeSet<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["name"].as_str().map(str::to_string))
            .collect()
    };
    names(now).difference(&names(before)).cloned().collect()
}

fn state(lab: &Lab) -> (Value, Value) {
    (lab.json(&["ps"]), lab.json(&["network", "ls"]))
}

#[test]
fn hostile_api_input_gets_a_clear_4xx_and_changes_nothing() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.ok(&["run", "--name", "keep", "-p", "8080:80"]);
    let before = state(&lab);
    let mut rng = rng("api input");
    let cases = size(300, 5000);
    let endpoints = [
        ("POST", paths::SANDBOXES.to_string()),
        ("POST", paths::NETWORKS.to_string()),
        ("POST", paths::with_name(paths::NETWORK_CONNECT, "bridge")),
        ("POST", paths::with_name(paths::NETWORK_DISCONNECT, "bridge")),
        ("POST", paths::with_name(paths::SANDBOX_PORTS, "keep")),
        ("DELETE", paths::with_name(paths::SANDBOX_PORTS, "keep")),
    ];
    let mut failures = Vec::new();
    let mut accepted = 0;
    for _ in 0..cases {
        let (method, path) = &endpoints[rng.usize(0..endpoints.len())];
        let body = mutated(&mut rng, path);
        match http(&lab.socket, method, path, &body) {
            None => failures.push(format!(
                "{method} {path}: no answer to {}",
                String::from_utf8_lossy(&body)
            )),
            Some((status, text)) if (400..500).contains(&status) => {
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string));
                if message.is_none_or(|m| m.trim().is_empty()) {
                    failures.push(format!(
                        "{method} {path} -> {status} without a JSON message: {text}"
                    ));
                }
            }
            Some((status, _)) if (200..300).contains(&status) => {
                // A mutation that happens to be valid: undo it.
                accepted += 1;
                let (sandboxes, networks) = state(&lab);
                for name in new_names(&sandboxes, &before.0) {
                    let _ = lab.natctl(&["rm", &name]);
                }
                for name in new_names(&networks, &before.1) {
                    let _ = lab.natctl(&["network", "rm", &name]);
                }
                // Whatever ports a valid-by-chance publish added to `keep`.
                let ports_before = before.0[0]["ports"].as_array().cloned().unwrap_or_default();
                for m in lab.json(&["inspect", "keep"])["ports"].as_array().cloned().unwrap_or_default() {
                    if !ports_before.contains(&m) {
                        let host = m["host_ip"].as_str().map(|ip| format!("{ip}:")).unwrap_or_default();
                        let spec = format!("{host}{}/{}", m["host_port"], m["proto"].as_str().unwrap_or("tcp"));
                        let _ = lab.natctl(&["unpublish", "keep", &spec]);
                    }
                }
                let _ = lab.natctl(&["network", "disconnect", "bridge", "keep"]);
                if lab.json(&["inspect", "keep"])["endpoints"]
                    .as_array()
                    .is_none_or(|e| e.is_empty())
                {
                    let _ = lab.natctl(&["network", "connect", "bridge", "keep"]);
                }
            }
            Some((status, text)) => failures.push(format!(
                "{method} {path} -> {status}: {text}\nbody: {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }
    // Wrong methods, unknown paths, a deeply nested and a huge body.
    // (the nested one may be refused as bad syntax, 400, or as the wrong type, 422)
    let fixed: Vec<(&str, String, Vec<u8>, u16)> = vec![
        ("PUT", paths::SANDBOXES.into(), b"{}".to_vec(), 405),
        ("POST", paths::INFO.into(), b"{}".to_vec(), 405),
        ("GET", "/v1/nothing".into(), vec![], 404),
        ("GET", paths::with_name(paths::SANDBOX, "no-such"), vec![], 404),
        (
            "POST",
            paths::SANDBOXES.into(),
            "[".repeat(100_000).into_bytes(),
            4,
        ),
        ("POST", paths::SANDBOXES.into(), vec![b'x'; 20 << 20], 413),
    ];
    for (method, path, body, want) in &fixed {
        match http(&lab.socket, method, path, body) {
            Some((status, _)) if status == *want || status / 100 == *want => {}
            other => failures.push(format!(
                "{method} {path} ({} bytes): want {want}, got {other:?}",
                body.len()
            )),
        }
    }

    // Slow clients hold connections open mid-request; everyone else is still served.
    let slow: Vec<UnixStream> = (0..size(20, 200))
        .filter_map(|_| {
            let mut s = UnixStream::connect(&lab.socket).ok()?;
            s.write_all(b"POST /v1/sandboxes HTTP/1.1\r\nHost: natd\r\nContent-Length: 100\r\n\r\n{\"na")
                .ok()?;
            Some(s)
        })
        .collect();
    let started = Instant::now();
    let served = lab.natctl(&["ps"]);
    if !served.status.success() || started.elapsed() > Duration::from_secs(2) {
        failures.push(format!(
            "with {} slow clients, ps took {:?}",
            slow.len(),
            started.elapsed()
        ));
    }
    drop(slow);

    // The socket is root's: another user cannot even connect.
    let other_user = sh(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-s",
            "--unix-socket",
            lab.socket.to_str().unwrap(),
            "http://natd/v1/info",
        ],
    );
    if other_user.status.success() {
        failures.push("a non-root user reached the API".into());
    }

    let after = state(&lab);
    report(
        "7 bad API input",
        cases + fixed.len(),
        failures.len() + usize::from(after != before),
        &format!(
            "{cases} random/mutated bodies on 6 endpoints ({accepted} valid by chance, undone), \
             wrong methods, unknown paths, 100k-deep nesting, 20 MiB body, slow clients, non-root peer"
        ),
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(after, before, "state unchanged");
    assert!(lab.natctl(&["info"]).status.success(), "natd still serves");
}
