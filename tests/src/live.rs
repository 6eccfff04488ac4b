//! Labs that exist right now, so that a bench or demo stopped by SIGINT/SIGTERM still
//! removes what it built (Drop does not run when a signal ends the process).
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::Mutex,
};

use nix::sys::signal::{SigSet, Signal};

/// What it takes to remove one lab without its `Lab` value.
#[derive(Clone)]
pub struct LiveLab {
    pub id: String,
    pub namespaces: Vec<String>,
    pub host_ns: String,
    /// natd's name prefix: its sandbox namespaces are `<prefix>-sbx-*`.
    pub prefix: String,
    pub natd_cleanup: Vec<String>,
    pub dir: PathBuf,
    pub bpffs: PathBuf,
}

static LIVE: Mutex<Vec<LiveLab>> = Mutex::new(Vec::new());
/// Scratch bpffs pin directories (`bpf::PinDir`).
static PINS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub(crate) fn register_pin(path: PathBuf) {
    PINS.lock().unwrap_or_else(|e| e.into_inner()).push(path);
}

pub(crate) fn forget_pin(path: &std::path::Path) {
    PINS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| p != path);
}

pub(crate) fn register(lab: LiveLab) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(lab);
}

pub(crate) fn update(id: &str, f: impl FnOnce(&mut LiveLab)) {
    if let Some(lab) = LIVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter_mut()
        .find(|l| l.id == id)
    {
        f(lab);
    }
}

pub(crate) fn forget(id: &str) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|l| l.id != id);
}

/// Call first thing in `main` (before any thread starts, so every thread inherits the
/// mask): SIGINT and SIGTERM are then taken by one thread that ends every process inside
/// the live labs' namespaces (all started by this program), runs `natd --cleanup`, deletes
/// the namespaces and exits with 130.
pub fn clean_up_on_signal() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_err() {
        eprintln!("natlab: cannot block SIGINT/SIGTERM: a signal will leave namespaces behind");
        return;
    }
    std::thread::spawn(move || {
        let signal = set.wait().ok();
        eprintln!("natlab: {signal:?}: removing the labs");
        // The other threads keep running meanwhile and may still create something (or
        // unwind into their own clean-up): a second pass catches it.
        for pass in 0..2 {
            if pass == 1 {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            let labs = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for lab in &labs {
                remove(lab);
            }
        }
        for pin in PINS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for entry in std::fs::read_dir(pin).into_iter().flatten().flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
            let _ = std::fs::remove_dir(pin);
        }
        std::process::exit(130);
    });
}

fn quiet(program: &str, args: &[&str]) -> Option<String> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
}

fn remove(lab: &LiveLab) {
    // Processes in the lab's namespaces and its sandboxes' (natd, servers, load
    // generators) are this program's children or theirs.
    let sandboxes: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(&format!("{}-sbx-", lab.prefix)))
        .collect();
    for ns in lab.namespaces.iter().chain(&sandboxes) {
        for pid in quiet("ip", &["netns", "pids", ns])
            .unwrap_or_default()
            .split_whitespace()
        {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    let mut cleanup = vec![format!("--net=/run/netns/{}", lab.host_ns)];
    cleanup.extend(lab.natd_cleanup.iter().cloned());
    let args: Vec<&str> = cleanup.iter().map(String::as_str).collect();
    let _ = quiet("nsenter", &args);
    for ns in lab.namespaces.iter().chain(&sandboxes) {
        let _ = quiet("ip", &["netns", "del", ns]);
    }
    let _ = std::fs::remove_dir_all(&lab.bpffs);
    let _ = std::fs::remove_dir_all(&lab.dir);
}
