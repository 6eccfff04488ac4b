//! Overlay test beds: natd hosts on one LAN (`crate::lan`) and a real etcd (Debian's
//! etcd-server) listening on that LAN. Everything lives in the labs' namespaces and goes
//! with them.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{EXT_IP, Lab, sh, wait_until};

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

/// Certificates made for one test with openssl: a CA, the store's certificate (for
/// EXT_IP), a client certificate (CN `natd`), and a second CA with a client certificate of
/// its own (what a stranger would hold).
pub struct Certs {
    pub ca: PathBuf,
    pub server: (PathBuf, PathBuf),
    pub client: (PathBuf, PathBuf),
    pub other_ca: PathBuf,
    pub stranger: (PathBuf, PathBuf),
}

fn openssl(args: &[&str]) {
    let out = sh("openssl", args);
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Certs {
    pub fn make(dir: &std::path::Path) -> Self {
        let path = |name: &str| dir.join(name);
        let s = |p: &PathBuf| p.to_str().unwrap().to_string();
        let ca = |name: &str| {
            let (key, cert) = (path(&format!("{name}.key")), path(&format!("{name}.pem")));
            openssl(&[
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", &s(&key), "-out", &s(&cert), "-days", "2", "-subj", &format!("/CN={name}"),
            ]);
            (key, cert)
        };
        let leaf = |name: &str, cn: &str, (ca_key, ca_cert): &(PathBuf, PathBuf), ext: &str| {
            let (key, csr, cert, extfile) = (
                path(&format!("{name}.key")),
                path(&format!("{name}.csr")),
                path(&format!("{name}.pem")),
                path(&format!("{name}.ext")),
            );
            std::fs::write(&extfile, ext).unwrap();
            openssl(&[
                "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", &s(&key), "-out", &s(&csr), "-subj", &format!("/CN={cn}"),
            ]);
            openssl(&[
                "x509", "-req", "-in", &s(&csr), "-CA", &s(ca_cert), "-CAkey", &s(ca_key), "-CAcreateserial",
                "-out", &s(&cert), "-days", "2", "-extfile", &s(&extfile),
            ]);
            (cert, key)
        };
        let main = ca("ca");
        let other = ca("other-ca");
        Self {
            server: leaf("server", "etcd", &main, &format!("subjectAltName=IP:{EXT_IP}\nextendedKeyUsage=serverAuth,clientAuth\n")),
            client: leaf("client", "natd", &main, "extendedKeyUsage=clientAuth\n"),
            stranger: leaf("stranger", "natd", &other, "extendedKeyUsage=clientAuth\n"),
            ca: main.1,
            other_ca: other.1,
        }
    }
}

/// A single-member etcd in a namespace, its data in a directory of the test's.
pub struct Etcd {
    netns: String,
    dir: PathBuf,
    child: Option<Child>,
    /// Served with TLS and client certificates from these.
    tls: Option<(PathBuf, (PathBuf, PathBuf), (PathBuf, PathBuf))>,
    /// `USER:PASSWORD` for etcdctl once authentication is on.
    user: Option<String>,
}

impl Etcd {
    pub fn start(netns: &str, dir: PathBuf) -> Self {
        let mut etcd = Self {
            netns: netns.to_string(),
            dir,
            child: None,
            tls: None,
            user: None,
        };
        etcd.restart();
        etcd
    }

    /// etcd with TLS that also requires a client certificate signed by the CA.
    pub fn start_tls(netns: &str, dir: PathBuf, certs: &Certs) -> Self {
        let mut etcd = Self {
            netns: netns.to_string(),
            dir,
            child: None,
            tls: Some((certs.ca.clone(), certs.server.clone(), certs.client.clone())),
            user: None,
        };
        etcd.restart();
        etcd
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn url(port: u16) -> String {
        format!("http://{EXT_IP}:{port}")
    }

    fn client_url(&self) -> String {
        format!("{}://{EXT_IP}:{ETCD_PORT}", self.scheme())
    }

    /// The client certificate arguments curl and etcdctl share.
    fn tls_args(&self, ca: &str, cert: &str, key: &str) -> Vec<String> {
        match &self.tls {
            Some((ca_path, _, (cert_path, key_path))) => vec![
                ca.to_string(),
                ca_path.display().to_string(),
                cert.to_string(),
                cert_path.display().to_string(),
                key.to_string(),
                key_path.display().to_string(),
            ],
            None => Vec::new(),
        }
    }

    /// Starts etcd (again, on the same data) and waits until it answers /health.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        let log = std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log");
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("etcd")
            .args(["--name", "n1", "--data-dir"])
            .arg(self.dir.join("etcd-data"))
            .args(["--listen-client-urls", &self.client_url()])
            .args(["--advertise-client-urls", &self.client_url()])
            .args(["--listen-peer-urls", &Self::url(2380)])
            .args(["--initial-advertise-peer-urls", &Self::url(2380)])
            .args(["--initial-cluster", &format!("n1={}", Self::url(2380))])
            .args(["--initial-cluster-state", "new", "--logger=zap"]);
        if let Some((ca, (cert, key), _)) = &self.tls {
            command
                .arg("--trusted-ca-file")
                .arg(ca)
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--client-cert-auth");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start etcd (apt-get install etcd-server; `cargo xtask setup` does)");
        self.child = Some(child);
        let healthy = wait_until(Duration::from_secs(20), || {
            let mut args = vec![format!("--net=/run/netns/{}", self.netns), "curl".into(), "-sf".into()];
            args.extend(self.tls_args("--cacert", "--cert", "--key"));
            args.push(format!("{}/health", self.client_url()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = sh("nsenter", &args);
            String::from_utf8_lossy(&out.stdout).contains("true")
        });
        assert!(healthy, "etcd did not become healthy:\n{}", self.log());
    }

    /// etcd's authentication on: a `root` user (for the test's etcdctl), a `natd` user
    /// with read-write access to `/natd/` only and a `reader` user (same password) with
    /// read access only. With client certificates, a request without
    /// a token is made as the certificate's CN (`natd`).
    pub fn enable_auth(&mut self, natd_password: &str) {
        for args in [
            vec!["user", "add", "root", "--new-user-password", "root-pw"],
            vec!["user", "grant-role", "root", "root"],
            vec!["role", "add", "natd"],
            vec!["role", "grant-permission", "natd", "--prefix=true", "readwrite", "/natd/"],
            vec!["user", "add", "natd", "--new-user-password", natd_password],
            vec!["user", "grant-role", "natd", "natd"],
            // A user that may read natd's keys but not write them.
            vec!["role", "add", "reader"],
            vec!["role", "grant-permission", "reader", "--prefix=true", "read", "/natd/"],
            vec!["user", "add", "reader", "--new-user-password", natd_password],
            vec!["user", "grant-role", "reader", "reader"],
            vec!["auth", "enable"],
        ] {
            self.etcdctl(&args);
        }
        self.user = Some("root:root-pw".into());
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
        let mut full = vec![format!("--net=/run/netns/{}", self.netns), "etcdctl".into(), "--endpoints".into(), self.client_url()];
        full.extend(self.tls_args("--cacert", "--cert", "--key"));
        if let Some(user) = &self.user {
            full.push(format!("--user={user}"));
        }
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

    /// `etcdctl get KEY`: its value.
    pub fn get(&self, key: &str) -> Option<String> {
        self.etcdctl(&["get", "--print-value-only", key]).lines().next().map(str::to_string)
    }

    /// `etcdctl del KEY`.
    pub fn del(&self, key: &str) {
        self.etcdctl(&["del", key]);
    }

    /// `etcdctl get --prefix KEY` inside the namespace: the keys found.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.etcdctl(&["get", "--prefix", "--keys-only", prefix])
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

/// The VXLAN device natd made for `network` on the lab's host.
pub fn vxlan_of(lab: &Lab, network: &str) -> String {
    let bridge = lab.json(&["network", "inspect", network])["bridge"]
        .as_str()
        .unwrap()
        .to_string();
    let links = lab.host_ok(&["ip", "-o", "link", "show", "master", &bridge, "type", "vxlan"]);
    links
        .split(':')
        .nth(1)
        .map(|s| s.trim().split('@').next().unwrap().to_string())
        .unwrap_or_default()
}

/// The VXLAN device's own forwarding entries (MAC -> remote host), not the bridge's
/// learned ones.
pub fn fdb(lab: &Lab, device: &str) -> String {
    lab.host_ok(&["bridge", "fdb", "show", "dev", device])
        .lines()
        .filter(|l| l.contains(" dst "))
        .collect::<Vec<_>>()
        .join("\n")
}
