//! A request costs what it changes (issue 25): the system calls natd makes to serve one
//! `run -p` and its `rm`, and the bytes those calls read (netlink answers, files, the
//! store), stay the same whether it has 10 sandboxes or 200. Counted with strace attached
//! to every thread of natd for those two requests only (housekeeping kept out of the
//! window by a long `--gc-interval`). A count that grew with the sandboxes would be a
//! walk of something their number sizes on the request path: a full sync (its dumps of
//! every link and address; with one forced per request, this test saw 546 -> 578 calls
//! but 82 -> 821 KB read, and failed), an unfiltered dump, a read of every record.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use natlab::Lab;

/// Whether every thread of `pid` is traced by `tracer`.
fn traced_by(pid: u32, tracer: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("status")).is_ok_and(|status| {
            status
                .lines()
                .any(|l| l.strip_prefix("TracerPid:").is_some_and(|v| v.trim() == tracer.to_string()))
        })
    })
}

/// Attaches strace to natd (every thread) and returns once it traces them all.
fn attach(lab: &Lab, summary: &Path) -> Child {
    let pid = lab.natd_pid().expect("natd runs");
    let strace = Command::new("strace")
        .args(["-f", "-C", "-qq", "-o"])
        .arg(summary)
        .args(["-p", &pid.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("strace (installed by `cargo xtask setup`)");
    let started = Instant::now();
    while !traced_by(pid, strace.id()) {
        assert!(started.elapsed() < Duration::from_secs(10), "strace did not attach to every thread of natd");
        std::thread::sleep(Duration::from_millis(20));
    }
    strace
}

/// What strace saw: system calls, bytes returned by the calls that read (directories
/// too), and `bpf()` calls (a whole table read in batches is one per few thousand entries).
struct Counted {
    calls: u64,
    bytes_read: u64,
    bpf_calls: usize,
    summary: String,
}

/// Detaches strace and reads its trace: the calls of its summary's total line, the bytes
/// the reading calls returned.
fn detach(mut strace: Child, trace: &Path) -> Counted {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(strace.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    strace.wait().unwrap();
    let text = std::fs::read_to_string(trace).expect("strace's output");
    // "100.00    0.012345          12      1000        20 total": calls is the fourth field.
    let calls = text
        .lines()
        .find(|l| l.trim_end().ends_with(" total"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or_else(|| panic!("no total in strace's summary:\n{text}"));
    // "[pid 7] recvmsg(5, {...}, 0) = 3456" (or "<... recvmsg resumed> ...) = 3456").
    let reads = [
        "read(",
        "recvmsg(",
        "recvfrom(",
        "pread64(",
        "getdents64(",
        "read resumed",
        "recvmsg resumed",
        "recvfrom resumed",
        "pread64 resumed",
        "getdents64 resumed",
    ];
    let bytes_read = text
        .lines()
        .filter(|l| reads.iter().any(|r| l.contains(r)) && !l.contains("unfinished"))
        .filter_map(|l| l.rsplit_once(") = ")?.1.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    let bpf_calls = text.lines().filter(|l| l.contains("bpf(")).count();
    let summary = text.lines().skip_while(|l| !l.contains("% time")).collect::<Vec<_>>().join("\n");
    Counted { calls, bytes_read, bpf_calls, summary }
}

/// The system calls natd makes for `run --name NAME -p 80` and `rm NAME`.
fn syscalls_of_run_and_rm(lab: &Lab, name: &str) -> Counted {
    let summary = std::env::temp_dir().join(format!("natlab-strace-{}-{name}", std::process::id()));
    let strace = attach(lab, &summary);
    lab.ok(&["run", "--name", name, "-p", "80"]);
    lab.ok(&["rm", name]);
    let counted = detach(strace, &summary);
    let _ = std::fs::remove_file(&summary);
    counted
}

#[test]
fn system_calls_per_request_do_not_grow_with_the_sandboxes() {
    natlab::require_root();
    let lab = Lab::started(&["--dataplane", "ebpf", "--gc-interval", "3600"]);
    let add = |range: std::ops::Range<u32>| {
        for i in range {
            lab.ok(&["run", "--name", &format!("s{i}"), "-p", "80"]);
        }
    };
    add(0..10);
    // Once before counting: the first request of a kind warms caches of its own.
    syscalls_of_run_and_rm(&lab, "warm");
    let at_10 = syscalls_of_run_and_rm(&lab, "probe10");
    add(10..200);
    let at_200 = syscalls_of_run_and_rm(&lab, "probe200");
    println!(
        "SYSCALLS run -p + rm: {} calls ({} bpf) reading {} bytes with 10 sandboxes, {} calls ({} bpf) reading {} bytes \
         with 200",
        at_10.calls, at_10.bpf_calls, at_10.bytes_read, at_200.calls, at_200.bpf_calls, at_200.bytes_read
    );
    // Room for what varies between two requests (a netlink answer split in one more
    // read, a futex more or less, a page of the store): a tenth, 40 calls and 16 KiB.
    // A walk of 190 more sandboxes reads kilobytes each (a link's netlink message alone
    // is about 1.5 KiB, a directory entry of a pin about 60 bytes). The bpf() calls are
    // natd's own, the same for the same request: two more at most.
    assert!(
        at_200.calls <= at_10.calls + at_10.calls / 10 + 40
            && at_200.bytes_read <= at_10.bytes_read + at_10.bytes_read / 10 + 16384
            && at_200.bpf_calls <= at_10.bpf_calls + 2,
        "a request costs more with 200 sandboxes than with 10: {} -> {} system calls ({} -> {} bpf), {} -> {} bytes \
         read\nwith 10:\n{}\nwith 200:\n{}",
        at_10.calls,
        at_200.calls,
        at_10.bpf_calls,
        at_200.bpf_calls,
        at_10.bytes_read,
        at_200.bytes_read,
        at_10.summary,
        at_200.summary
    );
}
