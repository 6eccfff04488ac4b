//! Podman (Debian's, CNI backend) running a container on a natd network through natd-cni:
//! `podman run -p 8080:80` serves a request from the external namespace, `podman rm`
//! leaves nothing behind. Every podman call runs in the lab's host namespace with its own
//! storage, configuration and plugin directory; no image is pulled (busybox-static rootfs).
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use natlab::{HOST_UPLINK_IP, Lab, cni::plugin_bin, sh, wait_until};
use serde_json::json;

struct Podman<'a> {
    lab: &'a Lab,
    dir: PathBuf,
}

impl Podman<'_> {
    fn new(lab: &Lab) -> Podman<'_> {
        for tool in ["podman", "runc", "conmon"] {
            assert!(
                sh("sh", &["-c", &format!("command -v {tool}")]).status.success(),
                "{tool} is missing: `cargo xtask test` installs podman, runc and conmon"
            );
        }
        let busybox = Path::new("/bin/busybox");
        let linked = sh("ldd", &[busybox.to_str().unwrap()]);
        assert!(
            !linked.status.success() || String::from_utf8_lossy(&linked.stdout).contains("not a dynamic"),
            "/bin/busybox must be busybox-static (the container's root filesystem has no libraries)"
        );
        let dir = lab.dir.join("podman");
        for sub in [
            "root",
            "runroot",
            "tmp",
            "net.d",
            "plugins",
            "rootfs/bin",
            "rootfs/www",
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::copy(busybox, dir.join("rootfs/bin/busybox")).unwrap();
        for applet in ["sh", "httpd", "sleep", "ip", "cat"] {
            std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin").join(applet)).unwrap();
        }
        std::fs::write(dir.join("rootfs/www/index.html"), "hello from podman\n").unwrap();
        std::os::unix::fs::symlink(plugin_bin(), dir.join("plugins/natd-cni")).unwrap();
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "natdnet",
            "plugins": [{
                "type": "natd-cni",
                "socket": lab.socket,
                "network": "bridge",
                "logFile": dir.join("cni.log"),
                "capabilities": { "portMappings": true },
            }],
        });
        std::fs::write(dir.join("net.d/natd.conflist"), conflist.to_string()).unwrap();
        let conf = format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["{plugins}"]
network_config_dir = "{netd}"
default_network = "natdnet"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{dir}/events.log"
runtime = "runc"
tmp_dir = "{dir}/tmp"
"#,
            plugins = dir.join("plugins").display(),
            netd = dir.join("net.d").display(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("containers.conf"), conf).unwrap();
        Podman { lab, dir }
    }

    /// podman in the lab's host namespace (so that plugin calls, conmon and its cleanup
    /// all run there), with this test's storage and configuration.
    fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.lab.host_path()))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .stdin(Stdio::null())
            .output()
            .expect("run podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed:\n{}{}\nplugin log:\n{}\nnatd log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("cni.log")).unwrap_or_default(),
            self.lab.natd_log()
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Podman<'_> {
    /// Containers are stopped and removed even when the test failed half-way.
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--force", "--all", "--time", "0"]);
    }
}

fn curl_from_ext(lab: &Lab, port: u16) -> Option<String> {
    let out = lab.ext(&[
        "curl",
        "-s",
        "--max-time",
        "3",
        &format!("http://{HOST_UPLINK_IP}:{port}/"),
    ]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn podman_runs_a_published_container_on_a_natd_network() {
    let lab = Lab::started(&["--dataplane", "ebpf"]);
    let podman = Podman::new(&lab);
    let rootfs = podman.dir.join("rootfs");
    let rootfs = rootfs.to_str().unwrap();
    podman.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080:80",
        "--rootfs",
        rootfs,
        "/bin/httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    // natd knows the attachment, with podman's port.
    let sandboxes = lab.json(&["ps"]);
    let attached = sandboxes.as_array().unwrap();
    assert_eq!(attached.len(), 1, "{sandboxes}");
    assert_eq!(attached[0]["cni"]["network"], "natdnet");
    assert_eq!(attached[0]["ports"][0]["host_port"], 8080, "{sandboxes}");
    // podman saw natd's address for the container.
    let inspect: serde_json::Value = serde_json::from_str(&podman.ok(&["inspect", "web"])).unwrap();
    let address = inspect[0]["NetworkSettings"]["Networks"]["natdnet"]["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(address, attached[0]["endpoints"][0]["ipv4"], "{inspect}");

    assert!(
        wait_until(Duration::from_secs(10), || curl_from_ext(&lab, 8080).as_deref()
            == Some("hello from podman")),
        "the container's port 8080 answers from outside"
    );

    podman.ok(&["rm", "--force", "--time", "1", "web"]);
    assert!(
        lab.json(&["ps"]).as_array().unwrap().is_empty(),
        "natd forgot the container"
    );
    assert!(curl_from_ext(&lab, 8080).is_none(), "the port is closed again");
    let links = lab.host_ok(&["ip", "-o", "link"]);
    assert!(
        !links.lines().any(|l| l.contains(&format!("{}v", lab.prefix))),
        "no veth left behind:\n{links}"
    );
    let log = std::fs::read_to_string(podman.dir.join("cni.log")).unwrap_or_default();
    assert!(log.contains("ADD") && log.contains("DEL"), "{log}");
}
