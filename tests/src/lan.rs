//! Several natd hosts whose only NIC is on one LAN: lab 0's external namespace becomes the
//! LAN (a bridge with the router's address EXT_IP) and every other lab's `up0` is moved onto
//! it. Used by the single-NIC, overlay and benchmark beds.
use crate::{EXT_IP, HOST_UPLINK_IP, Lab, sh};

/// LAN address of host `i` (host 0 keeps the lab's uplink address).
pub fn host_ip(i: usize) -> String {
    if i == 0 {
        HOST_UPLINK_IP.to_string()
    } else {
        format!("198.51.100.{}", 2 + i)
    }
}

fn ip(args: &[&str]) {
    let out = sh("ip", args);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `n` labs on one LAN: lab 0's external namespace becomes the LAN (a bridge `lan` with
/// the router's address EXT_IP) and every other lab's `up0` is plugged into it.
pub fn shared_lan(n: usize) -> Vec<Lab> {
    let labs: Vec<Lab> = (0..n).map(|_| Lab::new().expect("lab")).collect();
    let lan = labs[0].ext_ns.clone();
    // A MAC of its own: left to the kernel, the bridge takes its lowest port's and changes
    // it when that port goes (a host leaving), and every host's neighbour entry for the
    // store's address (on this bridge) goes stale for seconds.
    ip(&["-n", &lan, "link", "add", "lan", "address", "02:00:5e:00:00:01", "type", "bridge"]);
    ip(&["-n", &lan, "addr", "del", &format!("{EXT_IP}/24"), "dev", "lan0"]);
    ip(&["-n", &lan, "link", "set", "lan0", "master", "lan"]);
    ip(&["-n", &lan, "addr", "add", &format!("{EXT_IP}/24"), "dev", "lan"]);
    ip(&["-n", &lan, "link", "set", "lan", "up"]);
    for (i, lab) in labs.iter().enumerate().skip(1) {
        let port = format!("lan{i}");
        ip(&["-n", &lab.host_ns, "link", "del", "up0"]);
        ip(&[
            "link",
            "add",
            "up0",
            "netns",
            &lab.host_ns,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &lan,
        ]);
        ip(&["-n", &lan, "link", "set", &port, "master", "lan"]);
        ip(&["-n", &lan, "link", "set", &port, "up"]);
        ip(&[
            "-n",
            &lab.host_ns,
            "addr",
            "add",
            &format!("{}/24", host_ip(i)),
            "dev",
            "up0",
        ]);
        ip(&["-n", &lab.host_ns, "link", "set", "up0", "up"]);
        ip(&["-n", &lab.host_ns, "route", "add", "default", "via", EXT_IP]);
    }
    labs
}

