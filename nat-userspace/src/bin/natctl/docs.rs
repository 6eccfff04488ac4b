//! Shell completions and man pages, generated from the clap definitions so that they never
//! drift from the flags natctl and natd really accept.
use std::{path::Path, process::ExitCode};

use clap::CommandFactory as _;
use natd::config::DaemonArgs;

use crate::Cli;

pub fn completion(shell: clap_complete::Shell) -> ExitCode {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "natctl", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// natctl.1, natctl-<sub>.1 for every subcommand (nested ones as natctl-network-create.1),
/// and natd.8 (a daemon: section 8).
pub fn manpages(dir: &Path) -> ExitCode {
    match write_manpages(dir) {
        Ok(count) => {
            println!("wrote {count} man pages to {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("natctl: writing man pages to {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn write_manpages(dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut count = 0;
    let natd = DaemonArgs::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(natd).section("8").render(&mut page)?;
    std::fs::write(dir.join("natd.8"), page)?;
    count += 1;
    let mut natctl = Cli::command();
    natctl.build();
    count += write_tree(dir, &natctl, "natctl")?;
    Ok(count)
}

fn write_tree(dir: &Path, command: &clap::Command, name: &str) -> std::io::Result<usize> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone().name(name.to_string()))
        .section("1")
        .render(&mut page)?;
    std::fs::write(dir.join(format!("{name}.1")), page)?;
    let mut count = 1;
    for sub in command
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        count += write_tree(dir, sub, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(count)
}
