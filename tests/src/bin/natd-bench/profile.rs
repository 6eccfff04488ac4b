//! Where a warm path's time goes: `perf record` (software clock, every CPU-1 sample,
//! kernel and JITed program symbols) over one long test run of the path on CPU 1, and the
//! symbols that took at least 1 % of the samples, as the report's excerpt. A target the
//! programs miss is read against this, not guessed at.
use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{Plan, Results};

/// CPU the measured thread and the sampling run on (the traffic CPU, quiet in this part).
const CPU: usize = 1;

/// A soak: the test run that soaks a path, calling its argument once it is about to run.
type Soak = Box<dyn FnOnce(Box<dyn FnOnce() + Send>) -> Result<f64> + Send>;

/// The profiled paths: label, and the soak.
fn paths(runs: u32) -> Vec<(&'static str, Soak)> {
    let soak = |path: &'static str| -> Soak { Box::new(move |ready| natlab::warm::soak(path, runs, ready)) };
    vec![
        ("dnat_forward, hot flow", soak("dnat_forward")),
        (
            "dnat_forward, random of 100000 flows",
            Box::new(move |ready| natlab::warm::soak_filled(100_000, runs, ready)),
        ),
        ("snat_established, hot flow", soak("snat_established")),
        ("dnat_forward (IPv6), hot flow", Box::new(move |ready| natlab::warm::soak6(runs, ready))),
        ("dnat_reply, hot flow", soak("dnat_reply")),
        ("miss (host-bound, nothing published there)", soak("miss")),
    ]
}

/// `perf record` sampling CPU `CPU` into `data`.
fn record(data: &Path) -> Result<Recording> {
    let mut record = Command::new("perf");
    record
        .args(["record", "-e", "cpu-clock", "-F", "4999", "-C", &CPU.to_string(), "-q", "-o"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // The benchmark blocks the termination signals in its threads (`natlab::live`
    // takes them on one thread), and a child inherits the mask: unblocked, perf ends
    // its recording on SIGINT.
    // It is started from the measured thread, pinned to `CPU`: perf itself runs on CPU 0,
    // or its own work would be sampled and slow the soak down.
    // SAFETY: only async-signal-safe calls (sigprocmask, sched_setaffinity) between fork
    // and exec.
    unsafe {
        record.pre_exec(|| {
            nix::sys::signal::SigSet::all()
                .thread_unblock()
                .map_err(std::io::Error::from)?;
            let mut elsewhere = nix::sched::CpuSet::new();
            elsewhere.set(0).map_err(std::io::Error::from)?;
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &elsewhere).map_err(std::io::Error::from)
        });
    }
    let perf = record.spawn().context("perf record (package linux-perf)")?;
    // perf needs a moment before it samples.
    std::thread::sleep(Duration::from_millis(300));
    Ok(Recording(Some(perf)))
}

/// A running `perf record`: stopped with SIGINT (perf then writes its data) and waited
/// for, also when the measurement fails or panics.
struct Recording(Option<std::process::Child>);

impl Recording {
    fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let mut perf = self.0.take().context("perf already stopped")?;
        // The one process this part started.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(perf.id() as i32), nix::sys::signal::Signal::SIGINT);
        Ok(perf.wait()?)
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if self.0.is_some() {
            let _ = self.stop();
        }
    }
}

pub fn run(plan: &Plan, out: &Path, results: &mut Results) -> Result<()> {
    let runs = if plan.quick { 5_000_000 } else { 20_000_000 };
    for (label, soak) in paths(runs) {
        let data = out.join(format!("perf-{}.data", label.replace([',', ' ', '(', ')'], "_")));
        let perf = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (slot, path) = (perf.clone(), data.clone());
        let measured = std::thread::spawn(move || -> Result<f64> {
            let mut set = nix::sched::CpuSet::new();
            set.set(CPU)?;
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
            // Sampling starts once the programs are loaded and the flows made: the
            // verifier's work is not the path's.
            soak(Box::new(move || *slot.lock().expect("perf slot") = Some(record(&path))))
        })
        .join();
        // The recording ends (and perf is waited for) whatever became of the soak.
        let recording = perf.lock().map(|mut slot| slot.take()).unwrap_or(None);
        let status = match recording {
            Some(Ok(mut r)) => r.stop()?,
            Some(Err(e)) => return Err(e),
            None => bail!("{label}: the soak never started"),
        };
        let ns = measured.map_err(|_| anyhow::anyhow!("profiled run panicked"))??;
        if !data.exists() {
            bail!("perf record wrote nothing ({status})");
        }
        let report = Command::new("perf")
            .args(["report", "--stdio", "--sort", "sym", "--percent-limit", "1", "-q", "-i"])
            .arg(&data)
            .output()
            .context("perf report")?;
        if report.stdout.is_empty() {
            // Said, not hidden; the recording is kept for a look by hand.
            results.invalid.push(crate::Invalid {
                what: format!("profile {label}"),
                why: format!(
                    "perf report printed nothing ({}; {}); the recording is {}",
                    report.status,
                    String::from_utf8_lossy(&report.stderr).trim(),
                    data.display()
                ),
            });
        }
        let lines: Vec<String> = String::from_utf8_lossy(&report.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .take(15)
            .map(str::to_string)
            .collect();
        results.profiles.push(Profile {
            label: label.to_string(),
            runs,
            ns_per_run: ns,
            top: lines,
        });
    }
    Ok(())
}

/// One profiled path.
pub struct Profile {
    pub label: String,
    pub runs: u32,
    /// Mean ns per run of the soak, wrapper included (the test run's own figure).
    pub ns_per_run: f64,
    /// `perf report` lines: share of samples, symbol.
    pub top: Vec<String>,
}

pub fn section(md: &mut String, profiles: &[Profile]) {
    use std::fmt::Write as _;
    if profiles.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Profiles\n\n`perf record -e cpu-clock -F 4999 -C {CPU}` over one test run of each path (wrapper \
         included; its cost is in the program rows' subtracted baseline), symbols with at least 1 % of the samples. \
         `bpf_prog_*` are the JITed programs themselves; everything else is a kernel function they (or the test run) \
         called."
    );
    for p in profiles {
        let _ = writeln!(md, "\n**{}** ({} runs, {:.1} ns per run):\n\n```", p.label, p.runs, p.ns_per_run);
        for line in &p.top {
            let _ = writeln!(md, "{line}");
        }
        let _ = writeln!(md, "```");
    }
}
