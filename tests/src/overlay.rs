//! Overlay test beds: natd hosts on one LAN (`crate::lan`) and a real etcd (Debian's
//! etcd-server) listening on that LAN. Everything lives in the labs' namespaces and goes
//! with them.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{EXT_IP, sh, wait_until};

pub const ETCD_PORT: u16 = 2379;

pub fn store_url() -> String {
    format!("etcd://{EXT_IP}:{ETCD_PORT}")
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

    fn etcdctl(&self, args: &[&str]) -> String {
        let url = Self::url(ETCD_PORT);
        let mut full = vec![format!("--net=/run/netns/{}", self.netns), "etcdctl".into(), "--endpoints".into(), url];
        full.extend(args.iter().map(|a| a.to_string()));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = sh("nsenter", &full);
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `etcdctl put KEY VALUE`: a record written as anyone with access to the store could.
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", key, value]);
    }

    /// `etcdctl del KEY`.
    pub fn del(&self, key: &str) {
        self.etcdctl(&["del", key]);
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
