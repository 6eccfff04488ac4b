//! Reliability matrix, row 8: the state file and its directory going bad. A corrupt or
//! truncated database stops natd with a clear error and the recovery; a read-only or full
//! file system refuses changes cleanly (nothing in the kernel without its record) and natd
//! recovers as soon as the disk does.
use std::{path::Path, process::Command, time::Duration};

use natlab::{Lab, sh, soak::Row, wait_until};
use nix::sys::signal::Signal;

/// What a refused request must not leave behind: interfaces and namespaces natd names.
fn kernel_objects(lab: &Lab) -> (Vec<String>, Vec<String>) {
    let mut links: Vec<String> = lab
        .host_ok(&["ip", "-o", "link"])
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(1)
                .map(|n| n.trim_end_matches(':').to_string())
        })
        .filter(|n| n.starts_with(&lab.prefix))
        .collect();
    links.sort();
    let mut namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(&format!("{}-sbx-", lab.prefix)))
        .collect();
    namespaces.sort();
    (links, namespaces)
}

/// natd started once in the foreground: its exit status and what it printed.
fn start_once(lab: &Lab) -> (Option<i32>, String) {
    let mut args = lab.base_args();
    args.extend(["--dataplane".to_string(), "ebpf".to_string()]);
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.host_ns))
        .arg(natlab::natd_bin())
        .args(&args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// natd started on a broken database: exit status 78 and a message with the path and the
/// recovery, within seconds.
fn refuses_to_start(lab: &Lab, what: &str) -> String {
    let (status, err) = start_once(lab);
    assert_eq!(status, Some(78), "{what}: {err}");
    let db = lab.state_dir.join("natd.redb");
    assert!(
        err.contains(db.to_str().unwrap()),
        "{what}: names the file: {err}"
    );
    assert!(
        err.contains("natd --cleanup"),
        "{what}: says how to recover: {err}"
    );
    err
}

#[test]
fn a_corrupt_or_truncated_database_stops_natd_with_the_recovery() {
    let mut row = Row::new(
        "8 state file",
        "corrupt header, truncated and empty database: exit 78 naming the file and the recovery; the good file restores everything",
    );
    let mut lab = Lab::started(&["--dataplane", "ebpf"]);
    lab.ok(&["run", "--name", "web", "-p", "8080:80"]);
    lab.stop_natd(Signal::SIGTERM);
    let db = lab.state_dir.join("natd.redb");
    let good = std::fs::read(&db).unwrap();

    // Garbage over the header.
    let mut corrupt = good.clone();
    for (i, byte) in corrupt.iter_mut().take(4096).enumerate() {
        *byte = (i * 7 + 13) as u8;
    }
    std::fs::write(&db, &corrupt).unwrap();
    refuses_to_start(&lab, "corrupt header");
    row.done();
    // Cut in half.
    std::fs::write(&db, &good[..good.len() / 2]).unwrap();
    refuses_to_start(&lab, "truncated");
    row.done();
    // Empty (a file system that lost its contents): not a fresh start that would remove
    // every interface natd made as stale.
    std::fs::write(&db, b"").unwrap();
    refuses_to_start(&lab, "empty");
    row.done();

    // The good file back: everything is there again, nothing half-loaded.
    std::fs::write(&db, &good).unwrap();
    lab.restart_natd().unwrap();
    let web = lab.json(&["inspect", "web"]);
    assert_eq!(web["ports"][0]["host_port"], 8080, "{web}");
    row.done();
}

/// A tmpfs mounted over the lab's state directory, unmounted on drop (also on failure).
struct SmallDisk<'a> {
    dir: &'a Path,
}

impl<'a> SmallDisk<'a> {
    fn mount(dir: &'a Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "natlab-state",
                dir.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "mount a tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn remount(&self, mode: &str) {
        let out = sh(
            "mount",
            &["-o", &format!("remount,{mode}"), self.dir.to_str().unwrap()],
        );
        assert!(out.status.success(), "remount {mode}");
    }
}

impl Drop for SmallDisk<'_> {
    fn drop(&mut self) {
        let _ = sh("umount", &["-l", self.dir.to_str().unwrap()]);
    }
}

/// A request refused for the disk's sake: a clear error naming the database, and nothing
/// of it in the kernel.
fn refused_cleanly(lab: &Lab, name: &str, why: &str) {
    let before = kernel_objects(lab);
    let out = lab.natctl(&["run", "--name", name, "-p", "9090:90"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{why}: the run must be refused");
    assert!(
        err.contains("natd.redb") && err.contains("Nothing was changed"),
        "{why}: {err}"
    );
    assert_eq!(kernel_objects(lab), before, "{why}: nothing left in the kernel");
    assert!(
        !lab.natctl(&["inspect", name]).status.success(),
        "{why}: no record"
    );
}

#[test]
fn a_full_or_read_only_disk_refuses_changes_cleanly_and_recovers() {
    let mut row = Row::new(
        "8 state disk",
        "read-only state file system at start: exit 78 naming the database, nothing made; full file system: runs refused naming the database, no interface/namespace/record left; writes resume without restart",
    );
    let mut lab = Lab::new().unwrap();
    let state_dir = lab.state_dir.clone();
    let disk = SmallDisk::mount(&state_dir, "16m");
    // Read-only from the start (a remount under an open database is refused as busy).
    disk.remount("ro");
    let (status, err) = start_once(&lab);
    assert_eq!(status, Some(78), "{err}");
    assert!(
        err.contains("natd.redb") && err.contains("must be writable"),
        "{err}"
    );
    assert_eq!(
        kernel_objects(&lab),
        (vec![], vec![]),
        "natd made nothing before giving up"
    );
    row.done();
    disk.remount("rw");
    lab.start_natd(&["--dataplane", "ebpf"]).unwrap();
    lab.ok(&["run", "--name", "before"]);

    // Full: a filler takes every free byte.
    let filler = state_dir.join("filler");
    let _ = sh(
        "dd",
        &[
            "if=/dev/zero",
            &format!("of={}", filler.display()),
            "bs=1M",
            "count=64",
        ],
    );
    refused_cleanly(&lab, "full", "disk full");
    row.done();
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || lab
            .natctl(&["run", "--name", "after-full", "-p", "9090:90"])
            .status
            .success()),
        "natd writes again once space is back, without a restart:\n{}",
        lab.natd_log()
    );
    row.done();
    // Everything that succeeded is still there after a restart.
    lab.restart_natd().unwrap();
    for name in ["before", "after-full"] {
        assert!(lab.natctl(&["inspect", name]).status.success(), "{name} survived");
    }
    row.done();
    lab.stop_natd(Signal::SIGTERM);
    let _ = lab.cleanup_natd();
    drop(disk);
}
