//! The netns topology harness shared by the end-to-end tests, the demo and the benchmark.
//!
//! A `Lab` is a throwaway world: an "external" namespace that plays the LAN and a "host"
//! namespace where natd runs (started with `nsenter --net`, so its bpffs pins live in the
//! machine's bpffs). Everything gets a name unique to this process and test, and `Drop`
//! removes it all, also when the test fails. Nothing touches the machine's own namespace.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub mod bpf;
pub mod cni;
pub mod edges;
pub mod frames;
pub mod frames6;
pub mod lan;
pub mod live;
pub mod overlay;
pub mod raw;
pub mod reflector;
pub mod soak;
pub mod warm;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub const HOST_UPLINK_IP: &str = "198.51.100.1";
pub const EXT_IP: &str = "198.51.100.2";
/// The same link over IPv6 (documentation prefix; it never leaves the lab).
pub const HOST_UPLINK_IP6: &str = "2001:db8:198::1";
pub const EXT_IP6: &str = "2001:db8:198::2";

fn bin(var: &str, name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(var) {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    root.join("target/debug").join(name)
}

pub fn natd_bin() -> PathBuf {
    bin("NATD_BIN", "natd")
}

pub fn natctl_bin() -> PathBuf {
    bin("NATCTL_BIN", "natctl")
}

/// The load generator, built next to natctl.
pub fn loadgen_bin() -> String {
    natctl_bin().with_file_name("natd-loadgen").display().to_string()
}

/// Runs a command and returns its output; never panics.
pub fn sh(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// The stdout of a command that had to succeed; panics with `what`, its status and both
/// outputs (and `context`, e.g. natd's log) when it did not.
pub fn stdout_or_panic(what: &str, out: Output, context: &str) -> String {
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}{context}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs a command that must succeed; returns stdout.
pub fn must(program: &str, args: &[&str]) -> String {
    stdout_or_panic(&format!("{program} {args:?}"), sh(program, args), "")
}

/// A UDP server (a shell command line for a sandbox) answering every datagram with
/// `reply`, a shell word such as `$SOCAT_PEERADDR`. The command reads the datagram before
/// it answers: socat's SYSTEM: writes the datagram to the command's stdin, and a command
/// that exits without reading it (a bare `echo`) makes socat fail with EPIPE and drop the
/// answer. That race, not natd, was the "first datagram gets no answer" of earlier runs.
pub fn udp_reply(port: u16, reply: &str) -> String {
    format!("socat UDP-RECVFROM:{port},fork SYSTEM:'head -c1 >/dev/null; echo {reply}'")
}

/// A TCP server (a shell command line for a sandbox) that answers every connection with
/// the peer's address as it sees it: what tests use to check that a client's own
/// address arrives.
pub fn whoami(port: u16) -> String {
    format!("socat TCP-LISTEN:{port},fork,reuseaddr,backlog=256 SYSTEM:'echo $SOCAT_PEERADDR'")
}

/// `whoami` listening on both families (an IPv6 socket that takes IPv4 too).
pub fn whoami6(port: u16) -> String {
    format!("socat TCP6-LISTEN:{port},ipv6only=0,fork,reuseaddr,backlog=256 SYSTEM:'echo $SOCAT_PEERADDR'")
}

/// The peer address a `whoami` answered (`[2001:0db8:...]`, `[::ffff:198.51.100.2]`, an
/// IPv4 address), as one `IpAddr` (IPv4-mapped ones as IPv4): None if it is not one.
pub fn peer_ip(line: &str) -> Option<std::net::IpAddr> {
    let ip: std::net::IpAddr = line.trim().trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    Some(match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    })
}

/// One line through an echo server on `stream`: whether it came back unchanged.
pub fn echo_line(stream: &mut std::net::TcpStream, text: &str) -> bool {
    use std::io::{BufRead as _, BufReader, Write as _};
    if stream.write_all(format!("{text}\n").as_bytes()).is_err() {
        return false;
    }
    let Ok(clone) = stream.try_clone() else {
        return false;
    };
    let mut line = String::new();
    BufReader::new(clone).read_line(&mut line).is_ok() && line.trim() == text
}

pub fn require_root() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!(
            "the end-to-end tests need root (network namespaces, netlink, BPF): run `cargo xtask test` as root"
        );
    }
}

pub struct Natd {
    pub child: Child,
}

pub struct Lab {
    pub id: String,
    pub host_ns: String,
    pub ext_ns: String,
    pub prefix: String,
    pub bridge: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub natd: Option<Natd>,
    pub natd_args: Vec<String>,
    /// Environment of natd's next starts (e.g. `NATD_EBPF_OBJECT` in test builds).
    pub natd_env: Vec<(String, String)>,
    /// natd's next starts inherit SIGTERM and SIGINT blocked, as from a supervisor that
    /// takes them with sigwait (signal masks survive exec).
    pub natd_stop_signals_blocked: bool,
    extra_netns: Vec<String>,
}

impl Lab {
    /// The namespaces and the uplink; natd is not started yet.
    pub fn new() -> Result<Self> {
        require_root();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = (pid.wrapping_mul(64).wrapping_add(n)) & 0xf_ffff;
        let id = format!("{pid}x{n}");
        let prefix = format!("t{tag:05x}");
        let dir = std::env::temp_dir().join(format!("natlab-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let lab = Self {
            host_ns: format!("natlab-{id}-host"),
            ext_ns: format!("natlab-{id}-ext"),
            bridge: format!("{prefix}br"),
            socket: dir.join("natd.sock"),
            state_dir: dir.join("state"),
            bpffs: PathBuf::from(format!("/sys/fs/bpf/natlab-{id}")),
            prefix,
            dir,
            id,
            natd: None,
            natd_args: Vec::new(),
            natd_env: Vec::new(),
            natd_stop_signals_blocked: false,
            extra_netns: Vec::new(),
        };
        live::register(live::LiveLab {
            id: lab.id.clone(),
            namespaces: vec![lab.host_ns.clone(), lab.ext_ns.clone()],
            host_ns: lab.host_ns.clone(),
            prefix: lab.prefix.clone(),
            natd_cleanup: lab.cleanup_command(),
            dir: lab.dir.clone(),
            bpffs: lab.bpffs.clone(),
        });
        lab.build_topology()?;
        Ok(lab)
    }

    fn build_topology(&self) -> Result<()> {
        let (h, e) = (&self.host_ns, &self.ext_ns);
        for ns in [h, e] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link", "add", "up0", "netns", h, "type", "veth", "peer", "name", "lan0", "netns", e,
        ])?;
        ip(&[
            "-n",
            h,
            "addr",
            "add",
            &format!("{HOST_UPLINK_IP}/24"),
            "dev",
            "up0",
        ])?;
        ip(&["-n", e, "addr", "add", &format!("{EXT_IP}/24"), "dev", "lan0"])?;
        // IPv6 without duplicate address detection: usable at once.
        ip(&["-n", h, "addr", "add", &format!("{HOST_UPLINK_IP6}/64"), "dev", "up0", "nodad"])?;
        ip(&["-n", e, "addr", "add", &format!("{EXT_IP6}/64"), "dev", "lan0", "nodad"])?;
        ip(&["-n", h, "link", "set", "up0", "up"])?;
        ip(&["-n", e, "link", "set", "lan0", "up"])?;
        ip(&["-n", h, "route", "add", "default", "via", EXT_IP])?;
        ip(&["-n", h, "-6", "route", "add", "default", "via", EXT_IP6])?;
        Ok(())
    }

    /// Another namespace owned by this lab (deleted on drop).
    pub fn add_netns(&mut self, suffix: &str) -> Result<String> {
        let name = format!("natlab-{}-{suffix}", self.id);
        ip(&["netns", "add", &name])?;
        self.extra_netns.push(name.clone());
        live::update(&self.id, |l| l.namespaces.push(name.clone()));
        Ok(name)
    }

    pub fn base_args(&self) -> Vec<String> {
        [
            "--socket",
            self.socket.to_str().unwrap(),
            "--state-dir",
            self.state_dir.to_str().unwrap(),
            "--bpffs",
            self.bpffs.to_str().unwrap(),
            "--name-prefix",
            &self.prefix,
            "--bridge",
            &self.bridge,
            "--uplink",
            "up0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The topology with natd started in it (arguments as for `start_natd`).
    pub fn started(extra: &[&str]) -> Self {
        let mut lab = Self::new().expect("build the lab's topology");
        lab.start_natd(extra).expect("start natd");
        lab
    }

    /// natd inside the host namespace with this lab's own socket, state, pins and prefix.
    pub fn start_natd(&mut self, extra: &[&str]) -> Result<()> {
        self.natd_args = extra.iter().map(|s| s.to_string()).collect();
        let cleanup = self.cleanup_command();
        live::update(&self.id, |l| l.natd_cleanup = cleanup);
        self.restart_natd()
    }

    /// Starts natd again with the arguments of the last `start_natd`. A natd still running
    /// is stopped (SIGTERM) first: one natd per lab, never an orphan.
    pub fn restart_natd(&mut self) -> Result<()> {
        if let Some(natd) = &mut self.natd
            && natd.child.try_wait().ok().flatten().is_none()
        {
            self.stop_natd(nix::sys::signal::Signal::SIGTERM);
        }
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("natd.log"))?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.host_ns))
            .arg(natd_bin())
            .args(self.base_args())
            .args(&self.natd_args)
            .envs(self.natd_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.natd_stop_signals_blocked {
            block_stop_signals(&mut command);
        }
        let child = command.spawn().context("start natd")?;
        self.natd = Some(Natd { child });
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.natctl(&["info"]).status.success() {
                return Ok(());
            }
            if let Some(natd) = &mut self.natd
                && let Ok(Some(status)) = natd.child.try_wait()
            {
                bail!("natd exited at start ({status}):\n{}", self.natd_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("natd did not become ready:\n{}", self.natd_log())
    }

    pub fn natd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("natd.log")).unwrap_or_default()
    }

    /// Stops natd with `signal` and waits for it.
    pub fn stop_natd(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut natd) = self.natd.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(natd.child.id() as i32), signal);
            let _ = natd.child.wait();
        }
    }

    /// The running natd's process id (nsenter execs it: the child is natd).
    pub fn natd_pid(&self) -> Option<u32> {
        self.natd.as_ref().map(|n| n.child.id())
    }

    pub fn natctl(&self, args: &[&str]) -> Output {
        Command::new(natctl_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run natctl")
    }

    /// natctl that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let log = format!("\n--- natd log ---\n{}", self.natd_log());
        stdout_or_panic(&format!("natctl {args:?}"), self.natctl(args), &log)
    }

    /// natctl that must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.natctl(args);
        assert!(
            !out.status.success(),
            "natctl {args:?} should have failed but printed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["--format", "json"];
        full.extend_from_slice(args);
        serde_json::from_str(&self.ok(&full)).expect("natctl printed JSON")
    }

    /// `natctl exec NAME -- args`, returning the raw output.
    pub fn exec(&self, sandbox: &str, args: &[&str]) -> Output {
        let mut full = vec!["exec", sandbox, "--"];
        full.extend_from_slice(args);
        self.natctl(&full)
    }

    pub fn exec_ok(&self, sandbox: &str, args: &[&str]) -> String {
        stdout_or_panic(
            &format!("exec in {sandbox} {args:?}"),
            self.exec(sandbox, args),
            "",
        )
    }

    /// A command in one of the lab's own namespaces (host, ext, or an added one).
    pub fn in_ns(&self, ns: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", ns];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    pub fn host(&self, args: &[&str]) -> Output {
        self.in_ns(&self.host_ns, args)
    }

    pub fn host_ok(&self, args: &[&str]) -> String {
        stdout_or_panic(&format!("in host {args:?}"), self.host(args), "")
    }

    pub fn ext(&self, args: &[&str]) -> Output {
        self.in_ns(&self.ext_ns, args)
    }

    /// A command in `ns` that must succeed (set-up: a route that failed to go in would
    /// make a "nothing arrives" check pass for the wrong reason).
    pub fn in_ns_ok(&self, ns: &str, args: &[&str]) -> String {
        stdout_or_panic(&format!("in {ns} {args:?}"), self.in_ns(ns, args), "")
    }

    pub fn ext_ok(&self, args: &[&str]) -> String {
        self.in_ns_ok(&self.ext_ns, args)
    }

    /// `natd ... --cleanup` for this lab's instance, as arguments.
    fn cleanup_command(&self) -> Vec<String> {
        let mut args = vec![natd_bin().display().to_string()];
        args.extend(self.base_args());
        args.extend(self.natd_args.iter().cloned());
        args.push("--cleanup".into());
        args
    }

    /// Configures one of natd's fail points (test builds, `--features failpoints`), e.g.
    /// `("rollback-record", "2*off->return")`; "off" removes it.
    pub fn failpoint(&self, name: &str, actions: &str) {
        let body = format!(r#"{{"name":"{name}","actions":"{actions}"}}"#);
        let out = sh(
            "curl",
            &[
                "-sf",
                "--unix-socket",
                self.socket.to_str().unwrap(),
                "-H",
                "content-type: application/json",
                "-d",
                &body,
                "http://natd/v1/debug/failpoints",
            ],
        );
        assert!(
            out.status.success(),
            "configure fail point {name} (is natd built with --features failpoints?)"
        );
    }

    /// `POST /v1/reconcile` (no natctl command): the report, one change per line.
    pub fn reconcile(&self) -> String {
        let out = sh(
            "curl",
            &["-sf", "-X", "POST", "--unix-socket", self.socket.to_str().unwrap(), "http://natd/v1/reconcile"],
        );
        assert!(out.status.success(), "reconcile");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// natd --cleanup for this lab's instance.
    pub fn cleanup_natd(&self) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host_ns))
            .arg(natd_bin())
            .args(self.base_args())
            .args(&self.natd_args)
            .arg("--cleanup")
            .stdin(Stdio::null())
            .output()
            .expect("run natd --cleanup")
    }

    /// The path of a sandbox's network namespace.
    pub fn netns_of(&self, sandbox: &str) -> String {
        self.json(&["inspect", sandbox])["netns"]
            .as_str()
            .unwrap_or_else(|| panic!("sandbox {sandbox} has a namespace of its own"))
            .to_string()
    }

    /// `natctl run --name NAME ARGS... -- sh -c SCRIPT`.
    pub fn run_script(&self, name: &str, args: &[&str], script: &str) {
        let mut full = vec!["run", "--name", name];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--", "sh", "-c", script]);
        self.ok(&full);
    }

    /// The line a server at `addr:port` sends to a client in sandbox `sandbox` (see
    /// `tcp_line`).
    pub fn tcp_line_from(&self, sandbox: &str, addr: &str, port: u16) -> Option<String> {
        let ctl = natctl_bin();
        let socket = self.socket.to_str().expect("socket path").to_string();
        tcp_line(&[ctl.to_str().expect("natctl path"), "--socket", &socket, "exec", sandbox, "--"], addr, port)
    }

    /// The tuples of natd's UDP flows as `natctl ct ls` shows them, original -> translated
    /// (what a flow carried through a restart or a table change must keep: its NAT port).
    pub fn udp_flows(&self) -> std::collections::BTreeSet<String> {
        self.json(&["ct", "ls"])
            .as_array()
            .expect("natctl ct ls prints a list")
            .iter()
            .filter(|f| f["proto"] == "udp")
            .map(|f| format!("{} -> {}", f["original"], f["translated"]))
            .collect()
    }

    /// A dataplane counter as `natctl stats` shows it (0 when it is not there).
    pub fn counter(&self, name: &str) -> u64 {
        self.json(&["stats"])["counters"][name].as_u64().unwrap_or(0)
    }

    /// IPv4 address of `ifname` inside a sandbox.
    pub fn sandbox_ip(&self, sandbox: &str) -> String {
        let view = self.json(&["inspect", sandbox]);
        view["endpoints"][0]["ipv4"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_natd(nix::sys::signal::Signal::SIGKILL);
        let _ = self.cleanup_natd();
        for ns in self.extra_netns.iter().chain([&self.host_ns, &self.ext_ns]) {
            let _ = sh("ip", &["netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.bpffs);
        if std::env::var_os("NATLAB_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        live::forget(&self.id);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = sh("ip", args);
    if !out.status.success() {
        bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Polls `f` until it returns true or `timeout` passes.
/// `command` starts with SIGTERM and SIGINT blocked.
pub fn block_stop_signals(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: between fork and exec only the async-signal-safe sigprocmask runs.
    unsafe {
        command.pre_exec(|| {
            let mut set = nix::sys::signal::SigSet::empty();
            set.add(nix::sys::signal::Signal::SIGTERM);
            set.add(nix::sys::signal::Signal::SIGINT);
            set.thread_block().map_err(std::io::Error::from)
        });
    }
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` on a thread inside the network namespace at `path` (e.g. /run/netns/NAME).
/// Sockets created there stay in that namespace when used from other threads afterwards.
pub fn in_netns<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> T {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("thread in namespace panicked")
    })
}

/// Sends one datagram from the namespace at `ns_path` and returns the first reply, if one
/// arrives within `timeout`. Unlike a socat client it returns as soon as the answer is in.
pub fn udp_exchange(
    ns_path: &str,
    addr: &str,
    port: u16,
    payload: &[u8],
    timeout: Duration,
) -> Option<String> {
    in_netns(ns_path, || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.set_read_timeout(Some(timeout)).ok()?;
        socket.send_to(payload, (addr, port)).ok()?;
        let mut buf = [0u8; 2048];
        let (len, _) = socket.recv_from(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..len]).trim().to_string();
        (!text.is_empty()).then_some(text)
    })
}

impl Lab {
    pub fn ext_path(&self) -> String {
        format!("/run/netns/{}", self.ext_ns)
    }

    pub fn host_path(&self) -> String {
        format!("/run/netns/{}", self.host_ns)
    }

    /// A background process in one of the lab's namespaces, killed (by pid) on drop.
    pub fn spawn_in(&self, ns: &str, args: &[&str]) -> Background {
        use std::os::unix::process::CommandExt as _;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            // Its own process group: dropping it ends the forked children too (a socat
            // server's connection handlers would otherwise outlive the test).
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn background process");
        Background { child }
    }
}

pub struct Background {
    child: Child,
}

impl Drop for Background {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Test servers run by threads of the test: each thread loops on `serving()` (its socket's
/// timeout bounds the wait) and all are stopped and joined when the handle is dropped.
#[derive(Default)]
pub struct Served {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// What a server thread asks whether it should go on.
#[derive(Clone)]
pub struct Serving(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Serving {
    pub fn serving(&self) -> bool {
        !self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Served {
    /// Runs `serve` in a thread of its own until the handle is dropped.
    pub fn spawn(&mut self, serve: impl FnOnce(Serving) + Send + 'static) -> &mut Self {
        let serving = Serving(std::sync::Arc::clone(&self.stop));
        self.threads.push(std::thread::spawn(move || serve(serving)));
        self
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A UDP echo server on `0.0.0.0:port` in the namespace at `ns_path`, run by a thread of
/// the test (a forking socat answers a few hundred flows a second on a loaded machine;
/// this answers as fast as they come). It stops when the handle is dropped.
pub struct UdpEcho(#[allow(dead_code)] Served);

impl UdpEcho {
    pub fn start(ns_path: &str, port: u16) -> Self {
        let socket = in_netns(ns_path, || std::net::UdpSocket::bind(("0.0.0.0", port)).expect("bind the echo server"));
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut served = Served::default();
        served.spawn(move |s| {
            let mut buf = [0u8; 2048];
            while s.serving() {
                if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], peer);
                }
            }
        });
        Self(served)
    }
}

/// Waits until something listens on `port` in the namespace at `path`.
pub fn wait_listening(ns_path: &str, proto: &str, port: u16) -> bool {
    let flag = if proto == "udp" { "-lun" } else { "-ltn" };
    let needle = format!(":{port} ");
    wait_until(Duration::from_secs(5), || {
        let out = sh("nsenter", &[&format!("--net={ns_path}"), "ss", "-H", flag]);
        String::from_utf8_lossy(&out.stdout).contains(&needle)
    })
}

/// A one-line TCP exchange with socat run under `prefix` (e.g. `ip netns exec NS`):
/// the line the server sent, or None when the connection failed or said nothing.
pub fn tcp_line(prefix: &[&str], addr: &str, port: u16) -> Option<String> {
    let target = format!("TCP:{addr}:{port},connect-timeout=2");
    let mut args: Vec<&str> = prefix.to_vec();
    // `-t3`: socat gives the reply only 0.5 s after stdin's EOF by default, less than a forking
    // server may need on a loaded machine.
    args.extend_from_slice(&["socat", "-t3", "-T3", "-", &target]);
    let out = sh(args[0], &args[1..]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}
