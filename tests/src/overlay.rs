//! Overlay test beds: natd hosts whose only NIC is on one LAN (lab 0's external
//! namespace, bridged) and a real etcd (Debian's etcd-server) listening on that LAN.
//! Everything lives in the labs' namespaces and goes with them.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{EXT_IP, HOST_UPLINK_IP, Lab, sh, wait_until};

pub const ETCD_PORT: u16 = 2379;

/// LAN address of host `i` (host 0 keeps the lab's uplink address).
pub fn host_ip(i: usize) -> String {
    if i == 0 {
        HOST_UPLINK_IP.to_string()
    } else {
        format!("198.51.100.{}", 2 + i)
    }
}

pub fn store_url() -> String {
    format!("etcd://{EXT_IP}:{ETCD_PORT}")
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

/// natd arguments of a cluster member advertising its `up0`.
pub fn member_args(ttl: u64) -> Vec<String> {
    [
        "--cluster-store".to_string(),
        store_url(),
        "--cluster-advertise".into(),
        "up0".into(),
        "--cluster-ttl".into(),
        ttl.to_string(),
    ]
    .into()
}

/// A single-member etcd in a namespace, its data in a directory of the test's.
pub struct Etcd {
    netns: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    pub fn start(netns: &str, dir: PathBuf) -> Self {
        let mut etcd = Self {
            netns: netns.to_string(),
            dir,
            child: None,
        };
        etcd.restart();
        etcd
    }

    fn url(port: u16) -> String {
        format!("http://{EXT_IP}:{port}")
    }

    /// Starts etcd (again, on the same data) and waits until it answers /health.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        let log = std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("etcd")
            .args(["--name", "n1", "--data-dir"])
            .arg(self.dir.join("etcd-data"))
            .args(["--listen-client-urls", &Self::url(ETCD_PORT)])
            .args(["--advertise-client-urls", &Self::url(ETCD_PORT)])
            .args(["--listen-peer-urls", &Self::url(2380)])
            .args(["--initial-advertise-peer-urls", &Self::url(2380)])
            .args(["--initial-cluster", &format!("n1={}", Self::url(2380))])
            .args(["--initial-cluster-state", "new", "--logger=zap"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start etcd (apt-get install etcd-server; `cargo xtask setup` does)");
        self.child = Some(child);
        let healthy = wait_until(Duration::from_secs(20), || {
            let out = sh(
                "nsenter",
                &[
                    &format!("--net=/run/netns/{}", self.netns),
                    "curl",
                    "-sf",
                    &format!("{}/health", Self::url(ETCD_PORT)),
                ],
            );
            String::from_utf8_lossy(&out.stdout).contains("true")
        });
        assert!(healthy, "etcd did not become healthy:\n{}", self.log());
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// SIGTERM and wait (etcd shuts down cleanly in well under a second).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    /// `etcdctl get --prefix KEY` inside the namespace: the keys found.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = sh(
            "nsenter",
            &[
                &format!("--net=/run/netns/{}", self.netns),
                "etcdctl",
                "--endpoints",
                &Self::url(ETCD_PORT),
                "get",
                "--prefix",
                "--keys-only",
                prefix,
            ],
        );
        assert!(out.status.success(), "etcdctl get: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
