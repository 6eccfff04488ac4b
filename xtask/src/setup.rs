//! `cargo xtask setup`: idempotent, quiet when everything is present.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::run as run_cmd;

/// Debian packages natd's build, tests, demo and benchmark use.
const PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "nftables",
    "iptables",
    "libnftnl-dev",
    "libmnl-dev",
    "libnftables-dev",
    "pkg-config",
    "iperf3",
    "wrk",
    "tcpdump",
    "iputils-ping",
    "netcat-openbsd",
    "socat",
    "curl",
    "ethtool",
    // Static: it is also the whole root filesystem of the podman test's container.
    "busybox-static",
    "conntrack",
    "util-linux",
    "fonts-dejavu-core",
    // The benchmark's profiles of the warm paths.
    "linux-perf",
    // request_cost.rs counts natd's system calls per request.
    "strace",
    // etcd-client's build compiles etcd's gRPC definitions (protoc and the well-known types).
    "protobuf-compiler",
    "libprotobuf-dev",
    // overlay_trust.rs makes the etcd TLS certificates of its test.
    "openssl",
    // natd-cni's tests: podman with its CNI backend, and the reference plugins.
    "podman",
    "runc",
    "conmon",
    "containernetworking-plugins",
    // Overlay networks' tests: the cluster store.
    "etcd-server",
    "etcd-client",
    "llvm-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
];

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("rustup is needed")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    if !out.status.success() {
        run_cmd(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    let ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker against LLVM 22 (about a minute)");
    run_cmd(
        crate::cargo()
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}

fn bpffs() -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.starts_with("bpf "))
        })
        .unwrap_or(false);
    if mounted {
        return Ok(());
    }
    eprintln!("setup: mounting bpffs at /sys/fs/bpf");
    std::fs::create_dir_all(root).ok();
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

pub fn run() -> Result<()> {
    if !nix_is_root() {
        bail!("run as root: natd's set-up installs packages and its tests create network namespaces");
    }
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    bpffs()
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Where the benchmark's nginx binary is unpacked (`bench_nginx`).
pub const BENCH_NGINX: &str = "target/bench-tools/usr/sbin/nginx";

/// The benchmark's HTTP server for wrk: Debian's nginx binary unpacked from its package
/// into `target/bench-tools`, not installed. Installing the package would start its
/// service on port 80 of the machine's own network namespace; the benchmark starts its
/// own instances inside its namespaces with their own configuration.
pub fn bench_nginx(root: &Path) -> Result<std::path::PathBuf> {
    let binary = root.join(BENCH_NGINX);
    if binary.exists() {
        return Ok(binary);
    }
    let tools = root.join("target/bench-tools");
    std::fs::create_dir_all(&tools)?;
    eprintln!("setup: unpacking Debian's nginx into {}", tools.display());
    run_cmd(Command::new("apt-get").args(["download", "nginx"]).current_dir(&tools))?;
    let package = std::fs::read_dir(&tools)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("nginx_")))
        .context("apt-get download left no nginx package")?;
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&package).arg(&tools))?;
    if !binary.exists() {
        bail!("{} holds no {BENCH_NGINX}", package.display());
    }
    Ok(binary)
}
