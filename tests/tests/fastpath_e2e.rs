//! The fast path end to end: bulk transfers through a published port and through
//! masquerade arrive byte for byte (checksums of GSO and checksum-offloaded packets
//! rewritten correctly on real veths), their packets bypass the bridge (its receive
//! counter barely moves), and a firewall rule on the forward path in natd's namespace
//! turns the bypass off within a second, for flows already running too.
use std::time::Duration;

use natlab::{EXT_IP, HOST_UPLINK_IP, Lab, sh, wait_listening, wait_until};

const BLOB_BYTES: usize = 16 << 20;

/// Packets the default network's bridge received (what the kernel's path sees).
fn bridge_rx_packets(lab: &Lab) -> u64 {
    let out = lab.host_ok(&["ip", "-s", "-j", "link", "show", "dev", &lab.bridge]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    json[0]["stats64"]["rx"]["packets"].as_u64().expect("rx packets")
}

fn sha256(path: &str) -> String {
    let out = sh("sha256sum", &[path]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A file of random bytes in the lab's directory, and its digest.
fn blob(lab: &Lab) -> (String, String) {
    let path = lab.dir.join("blob");
    let path = path.to_str().expect("utf-8 path").to_string();
    let out = sh(
        "sh",
        &["-c", &format!("head -c {BLOB_BYTES} /dev/urandom > {path}")],
    );
    assert!(out.status.success());
    let digest = sha256(&path);
    (path, digest)
}

/// The digest a server printed for an upload, and the digest of a download, from `prefix`
/// (a command that enters the client's namespace) to `addr` ports `up` and `down`.
fn transfer(prefix: &str, addr: &str, up: u16, down: u16, blob: &str) -> (String, String) {
    let upload = sh(
        "sh",
        &[
            "-c",
            &format!("{prefix} socat -t10 -T20 - TCP:{addr}:{up},connect-timeout=3 < {blob}"),
        ],
    );
    let download = sh(
        "sh",
        &[
            "-c",
            &format!("{prefix} socat -T20 -u TCP:{addr}:{down},connect-timeout=3 - | sha256sum"),
        ],
    );
    let first_word = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    (first_word(&upload), first_word(&download))
}

/// A sandbox "srv" that hashes what it receives on 80 and sends the blob on 81, published
/// on 8080 and 8081; a sandbox "cli" for outbound transfers; the same pair of servers in
/// the external namespace on 9000 and 9001.
fn servers(lab: &Lab, blob: &str) -> [natlab::Background; 2] {
    lab.run_script(
        "srv",
        &["-p", "8080:80", "-p", "8081:81"],
        &format!(
            "socat TCP-LISTEN:80,fork,reuseaddr SYSTEM:sha256sum & \
             socat TCP-LISTEN:81,fork,reuseaddr SYSTEM:'cat {blob}' & wait"
        ),
    );
    lab.ok(&["run", "--name", "cli"]);
    let ext = [
        lab.spawn_in(
            &lab.ext_ns,
            &["socat", "TCP-LISTEN:9000,fork,reuseaddr", "SYSTEM:sha256sum"],
        ),
        lab.spawn_in(
            &lab.ext_ns,
            &[
                "socat",
                "TCP-LISTEN:9001,fork,reuseaddr",
                &format!("SYSTEM:cat {blob}"),
            ],
        ),
    ];
    let srv = lab.netns_of("srv");
    assert!(wait_listening(&srv, "tcp", 80) && wait_listening(&srv, "tcp", 81));
    assert!(wait_listening(&lab.ext_path(), "tcp", 9000) && wait_listening(&lab.ext_path(), "tcp", 9001));
    ext
}

#[test]
fn bulk_transfers_bypass_the_bridge_byte_for_byte() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    assert_eq!(lab.json(&["info"])["fast_path"], "on");
    let (blob, digest) = blob(&lab);
    let _ext = servers(&lab, &blob);
    let bridge_before = bridge_rx_packets(&lab);
    let ext_prefix = format!("ip netns exec {}", lab.ext_ns);
    assert_eq!(
        transfer(&ext_prefix, HOST_UPLINK_IP, 8080, 8081, &blob),
        (digest.clone(), digest.clone()),
        "16 MiB up and down through a published port"
    );
    let cli_prefix = format!("nsenter --net={}", lab.netns_of("cli"));
    assert_eq!(
        transfer(&cli_prefix, EXT_IP, 9000, 9001, &blob),
        (digest.clone(), digest),
        "16 MiB up and down through masquerade"
    );
    let (to_sandbox, to_uplink) = (lab.counter("fast_to_sandbox"), lab.counter("fast_to_edge"));
    assert!(
        to_sandbox > 1000 && to_uplink > 1000,
        "bulk traffic took the fast path both ways: {to_sandbox} into sandboxes, {to_uplink} out"
    );
    let bridge = bridge_rx_packets(&lab) - bridge_before;
    assert!(
        bridge * 20 < to_uplink,
        "the bridge saw {bridge} packets, the fast path carried {to_uplink} out of sandboxes"
    );
}

#[test]
fn a_firewall_on_the_forward_path_sees_every_packet() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    let (blob, digest) = blob(&lab);
    let _ext = servers(&lab, &blob);
    // A long UDP exchange: the flow exists before and after the firewall appears.
    lab.run_script(
        "echo",
        &["-p", "5300:53/udp"],
        "socat UDP-LISTEN:53,fork,reuseaddr PIPE",
    );
    assert!(wait_listening(&lab.netns_of("echo"), "udp", 53));
    let client = std::thread::spawn({
        let ext = lab.ext_ns.clone();
        move || {
            sh(
                "sh",
                &[
                    "-c",
                    &format!(
                        "for i in $(seq 60); do echo ping-$i; sleep 0.1; done | \
                         ip netns exec {ext} socat -t3 -T3 - UDP:{HOST_UPLINK_IP}:5300,sourceport=4444"
                    ),
                ],
            )
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        lab.counter("fast_to_sandbox") > 0,
        "the exchange bypasses the host"
    );
    lab.host_ok(&[
        "nft",
        "add table ip userfw; \
         add chain ip userfw watch { type filter hook forward priority 0; policy accept; }; \
         add rule ip userfw watch counter",
    ]);
    assert!(
        wait_until(Duration::from_secs(3), || lab.json(&["info"])["fast_path"]
            .as_str()
            .is_some_and(|s| s.starts_with("off"))),
        "natd noticed the firewall"
    );
    // The firewall's counter: packets or bytes.
    let counted = |what: &str| {
        let text = lab.host_ok(&["nft", "-j", "list", "chain", "ip", "userfw", "watch"]);
        let json: serde_json::Value = serde_json::from_str(&text).expect("nft -j");
        json["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["rule"]["expr"][0]["counter"][what].as_u64())
            .sum::<u64>()
    };
    let forwarded = || counted("packets");
    assert!(
        wait_until(Duration::from_secs(3), || forwarded() >= 10),
        "the running exchange now crosses the firewall's forward chain"
    );
    let out = client.join().expect("client");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ping-60"),
        "the exchange went on without a loss of its last datagrams"
    );
    // New transfers work and are seen too.
    // In bytes: how many packets carry them depends on how GRO merges segments on the
    // veths, which varies with load (a run beside other tests counted fewer than 1,000).
    let before = counted("bytes");
    let ext_prefix = format!("ip netns exec {}", lab.ext_ns);
    assert_eq!(transfer(&ext_prefix, HOST_UPLINK_IP, 8080, 8081, &blob).1, digest);
    let seen = counted("bytes") - before;
    assert!(
        seen >= 2 * BLOB_BYTES as u64,
        "the upload and the download cross the forward chain: {seen} bytes counted for 2 x {BLOB_BYTES}"
    );
    // The firewall goes: so does the detour.
    lab.host_ok(&["nft", "delete table ip userfw"]);
    assert!(wait_until(
        Duration::from_secs(3),
        || lab.json(&["info"])["fast_path"] == "on"
    ));
}
