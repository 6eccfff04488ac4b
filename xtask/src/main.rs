//! Orchestration only: set-up, builds, the demo, the test suites. The product lives in
//! nat-userspace; topology helpers for the demo are shared with the tests via nat-tests.
mod setup;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages, nightly rust-src, bpf-linker; mount bpffs.
    Setup,
    /// Build the eBPF object and the release binaries (target/release/natd, natctl).
    Build,
    /// Build, then load and attach the programs in a throwaway namespace and detach them.
    BuildAndLoad,
    /// The main job on an embedded default: a throwaway topology with natd serving a sandbox.
    Demo {
        /// Leave the topology and natd running and print how to explore and tear down.
        #[arg(long)]
        keep: bool,
    },
    /// natd against baseline, iptables and nftables: report.md, results.json, plots.
    Bench {
        /// A reduced grid (about 10 minutes).
        #[arg(long)]
        quick: bool,
        /// Output directory (default target/bench/<timestamp>).
        #[arg(long)]
        out: Option<String>,
        /// Only these parts, comma-separated: traffic, programs, flood, control.
        #[arg(long)]
        only: Option<String>,
    },
    /// The reliability matrix at full size (faults, load, bad input), repeated for at
    /// least MINUTES; figures in target/soak/ (summary.md, figures.jsonl).
    Soak {
        #[arg(long, default_value_t = 0)]
        minutes: u64,
    },
    /// Write shell completions (completions/) and man pages (man/) for packaging.
    Docs {
        /// Output directory.
        #[arg(long, default_value = "target/docs")]
        out: String,
    },
    /// Unit tests, then the root-needing end-to-end suites in network namespaces.
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::run(),
        Task::Build => setup::run().and_then(|()| build()),
        Task::BuildAndLoad => setup::run()
            .and_then(|()| build())
            .and_then(|()| run_demo_binary(&["load-check"])),
        Task::Demo { keep } => setup::run().and_then(|()| build()).and_then(|()| {
            let mut args = vec!["demo"];
            if keep {
                args.push("--keep");
            }
            run_demo_binary(&args)
        }),
        Task::Docs { out } => docs(&out),
        Task::Soak { minutes } => setup::run().and_then(|()| soak(minutes)),
        Task::Test { filter } => setup::run().and_then(|()| test(filter.as_deref())),
        Task::Bench { quick, out, only } => setup::run()
            .and_then(|()| build())
            .and_then(|()| bench(quick, out, only)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn build() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "nat-userspace", "--bins"]))
}

/// The demo and the load check live in nat-tests' `natd-lab` binary, next to the topology
/// harness the tests use.
fn run_demo_binary(args: &[&str]) -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "nat-tests", "--bin", "natd-lab"]))?;
    let root = workspace_root()?;
    run(Command::new(root.join("target/release/natd-lab"))
        .args(args)
        .env("NATD_BIN", root.join("target/release/natd"))
        .env("NATCTL_BIN", root.join("target/release/natctl")))
}

/// The reliability suites (tests/tests/reliability_*.rs) with NATLAB_SOAK=1, one after
/// the other, round after round until `minutes` have passed (one round at least).
fn soak(minutes: u64) -> Result<()> {
    let root = workspace_root()?;
    build_test_binaries()?;
    let out = root.join("target/soak");
    std::fs::create_dir_all(&out)?;
    let figures = out.join("figures.jsonl");
    let _ = std::fs::remove_file(&figures);
    let started = std::time::Instant::now();
    let mut rounds = 0;
    let mut failed = None;
    loop {
        rounds += 1;
        let mut cmd = cargo();
        // Every row runs even when an earlier one fails.
        cmd.args(["test", "--no-fail-fast", "-p", "nat-tests"]);
        for suite in [
            "reliability_restart",
            "reliability_crash",
            "reliability_api",
            "reliability_state",
            "reliability_datapath",
            "reliability_edges",
        ] {
            cmd.args(["--test", suite]);
        }
        cmd.args(["--", "--test-threads=1", "--nocapture"])
            .env("NATLAB_SOAK", "1")
            .env("NATLAB_FIGURES", &figures)
            .env("NATD_BIN", root.join("target/debug/natd"))
            .env("NATCTL_BIN", root.join("target/debug/natctl"));
        // A failing round ends the soak, but the summary of what ran is still written:
        // that is when it matters most.
        if let Err(e) = run(&mut cmd) {
            failed = Some(format!("round {rounds}: {e}"));
            break;
        }
        if started.elapsed().as_secs() >= minutes * 60 {
            break;
        }
    }
    let text = std::fs::read_to_string(&figures).unwrap_or_default();
    let mut summary = format!(
        "# Soak run\n\n{rounds} round(s) in {:.1} minutes.\n\n| row | iterations | failures | checked |\n|---|---|---|---|\n",
        started.elapsed().as_secs_f64() / 60.0
    );
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        summary.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            v["row"].as_str().unwrap_or_default(),
            v["iterations"],
            v["failures"],
            v["checked"].as_str().unwrap_or_default()
        ));
    }
    if let Some(failure) = &failed {
        summary.push_str(&format!("\nFAILED: {failure} (the rows above are what ran until then)\n"));
    }
    std::fs::write(out.join("summary.md"), &summary)?;
    println!("{summary}");
    match failed {
        Some(failure) => bail!("soak failed: {failure}"),
        None => Ok(()),
    }
}

fn build_test_binaries() -> Result<()> {
    run(cargo().args([
        "build",
        "-p",
        "nat-userspace",
        "--bins",
        "--features",
        "failpoints",
    ]))
}

/// Runs natctl's own generators (the clap definitions live with the binaries).
fn docs(out: &str) -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "nat-userspace", "--bin", "natctl"]))?;
    let natctl = workspace_root()?.join("target/release/natctl");
    let out = std::path::Path::new(out);
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, file) in [
        ("bash", "natctl.bash"),
        ("zsh", "_natctl"),
        ("fish", "natctl.fish"),
    ] {
        let output = Command::new(&natctl).args(["completion", shell]).output()?;
        if !output.status.success() {
            bail!(
                "natctl completion {shell}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::fs::write(completions.join(file), output.stdout)?;
    }
    run(Command::new(&natctl).arg("manpages").arg(out.join("man")))?;
    println!(
        "completions in {}, man pages in {}",
        completions.display(),
        out.join("man").display()
    );
    Ok(())
}

fn bench(quick: bool, out: Option<String>, only: Option<String>) -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "nat-tests",
        "--bin",
        "natd-bench",
        "--bin",
        "natd-loadgen",
    ]))?;
    let root = workspace_root()?;
    let nginx = setup::bench_nginx(&root)?;
    let mut cmd = Command::new(root.join("target/release/natd-bench"));
    cmd.current_dir(&root)
        .env("NATD_BENCH_NGINX", nginx)
        .env("NATD_BIN", root.join("target/release/natd"))
        .env("NATCTL_BIN", root.join("target/release/natctl"));
    if quick {
        cmd.arg("--quick");
    }
    if let Some(out) = out {
        cmd.args(["--out", &out]);
    }
    if let Some(only) = only {
        cmd.args(["--only", &only]);
    }
    run(&mut cmd)
}

fn workspace_root() -> Result<std::path::PathBuf> {
    let manifest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest.parent().context("xtask has no parent dir")?.to_owned())
}

fn test(filter: Option<&str>) -> Result<()> {
    let root = workspace_root()?;
    // Unit and property tests of every crate (no root needed).
    run(cargo().args(["test", "--workspace", "--lib", "--bins"]))?;
    // The end-to-end suites drive the real binaries inside namespaces they create; the
    // rollback and crash tests need natd's fail points.
    build_test_binaries()?;
    let mut cmd = cargo();
    cmd.args(["test", "-p", "nat-tests", "--tests", "--"])
        .arg("--test-threads=2")
        .env("NATD_BIN", root.join("target/debug/natd"))
        .env("NATCTL_BIN", root.join("target/debug/natctl"));
    if let Some(f) = filter {
        cmd.arg(f);
    }
    run(&mut cmd)
}
