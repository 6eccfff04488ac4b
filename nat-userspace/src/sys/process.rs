//! Sandbox processes: started detached inside the sandbox (own session, output to a log),
//! identified by pid plus start time so a recycled pid is never signalled.
use std::{
    fs::OpenOptions,
    io,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};

use super::netns::EnterPlan;

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// True while the process started at `started` is alive and not a zombie.
pub fn is_running(pid: i32, started: Option<u64>) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            state != Some("Z") && (started.is_none() || start_time(pid) == started)
        }
        Err(_) => false,
    }
}

/// Starts `argv` inside the sandbox, detached from natd (new session), stdout and stderr
/// appended to `log`. A thread reaps it so no zombie is left while natd runs.
pub fn spawn_detached(argv: &[String], plan: EnterPlan, log: &Path) -> io::Result<(i32, Option<u64>)> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .current_dir("/");
    // SAFETY: the closure only makes syscalls (setns, unshare, mount, setsid) on data
    // prepared before fork.
    unsafe {
        command.pre_exec(move || {
            plan.enter()?;
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
    let started = start_time(pid);
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok((pid, started))
}

/// SIGTERM to the process group, SIGKILL after `grace`; then SIGKILL to any other pid left
/// in `others` (processes still inside the sandbox's namespace).
pub fn stop(pid: i32, started: Option<u64>, grace: Duration) {
    if is_running(pid, started) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while is_running(pid, started) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_running(pid, started) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

pub fn kill_all(pids: &[i32]) {
    let me = std::process::id() as i32;
    for &pid in pids.iter().filter(|p| **p != me) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
