//! `run`, `ps`, `inspect`, `rm`, `port`, `publish`, `unpublish`, `exec`.
use std::{
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::Path,
    process::ExitCode,
};

use natd::{
    api::{PortsRequest, RunRequest, SandboxView, paths},
    client::Client,
    portspec::ExposeSpec,
    sys::netns::EnterPlan,
};

use crate::{
    CliError, RunArgs,
    output::{mode_text, ports_text, print_json, print_table},
};

pub async fn run(client: &Client, args: &RunArgs, json: bool) -> Result<(), CliError> {
    let request = RunRequest {
        name: args.name.clone(),
        network: args.network.clone(),
        ip: args.ip.clone(),
        ip6: args.ip6.clone(),
        dns: args.dns.clone(),
        mtu: args.mtu,
        publish: args.publish.clone(),
        publish_all: args.publish_all,
        expose: args.expose.clone(),
        netns: args.netns.clone(),
        replace_default_route: args.replace_default_route,
        command: args.command.clone(),
        ..Default::default()
    };
    let view: SandboxView = client.post(paths::SANDBOXES, &request).await?;
    if json {
        print_json(&view);
    } else {
        println!("{}", view.sandbox.name);
    }
    Ok(())
}

pub async fn ps(client: &Client, json: bool) -> Result<(), CliError> {
    let list: Vec<SandboxView> = client.get(paths::SANDBOXES).await?;
    if json {
        print_json(&list);
        return Ok(());
    }
    let rows = list
        .iter()
        .map(|v| {
            let addresses: Vec<String> = v
                .sandbox
                .endpoints
                .iter()
                .flat_map(|e| std::iter::once(e.ipv4.to_string()).chain(e.ipv6.map(|ip| ip.to_string())))
                .collect();
            vec![
                v.sandbox.name.clone(),
                mode_text(v),
                v.status.clone(),
                addresses.join(","),
                ports_text(v),
                v.sandbox.command.join(" "),
            ]
        })
        .collect();
    print_table(&["NAME", "NETWORK", "STATUS", "IP", "PORTS", "COMMAND"], rows);
    Ok(())
}

pub async fn inspect(client: &Client, name: &str) -> Result<(), CliError> {
    let view: SandboxView = client.get(&paths::with_name(paths::SANDBOX, name)).await?;
    print_json(&view);
    Ok(())
}

/// Every name is tried; each failure is printed as it happens (as `docker rm` does).
pub async fn rm(client: &Client, names: &[String]) -> Result<(), CliError> {
    let mut failed = false;
    for name in names {
        match client.delete(&paths::with_name(paths::SANDBOX, name)).await {
            Ok(body) => {
                for w in body
                    .get("warnings")
                    .and_then(|w| w.as_array())
                    .into_iter()
                    .flatten()
                {
                    eprintln!("warning: {name}: {}", w.as_str().unwrap_or_default());
                }
                println!("{name}");
            }
            Err(e) => {
                CliError::from(e).print();
                failed = true;
            }
        }
    }
    if failed { Err(CliError::Reported) } else { Ok(()) }
}

pub async fn port(client: &Client, name: &str, port: Option<&str>, json: bool) -> Result<(), CliError> {
    // The filter is checked before natd is asked anything.
    let filter = port
        .map(|p| {
            p.parse::<ExposeSpec>()
                .map_err(|e| CliError::Usage(e.to_string()))
        })
        .transpose()?;
    let view: SandboxView = client.get(&paths::with_name(paths::SANDBOX, name)).await?;
    let mappings: Vec<_> = view
        .sandbox
        .ports
        .iter()
        .filter(|m| filter.is_none_or(|f| f.ports.first == m.container_port && f.proto == m.proto))
        .collect();
    if json {
        print_json(&mappings);
    } else if let (Some(f), true) = (filter, mappings.is_empty()) {
        // Docker's own wording for this local error.
        return Err(CliError::Usage(format!(
            "No public port '{}/{}' published for {name}",
            f.ports.first, f.proto
        )));
    } else {
        for m in mappings {
            let host = m.host_display();
            let note = if view.inactive_ports.contains(&host) {
                "  (inactive: the address is not on this host now)"
            } else {
                ""
            };
            println!("{}/{} -> {host}{note}", m.container_port, m.proto);
        }
    }
    Ok(())
}

/// `publish` (add) or `unpublish` ports of a running sandbox; prints its mappings after.
pub async fn publish(
    client: &Client,
    name: &str,
    ports: &[String],
    add: bool,
    json: bool,
) -> Result<(), CliError> {
    let path = paths::with_name(paths::SANDBOX_PORTS, name);
    let body = PortsRequest {
        ports: ports.to_vec(),
    };
    let view: SandboxView = if add {
        client.post(&path, &body).await?
    } else {
        client.delete_with(&path, &body).await?
    };
    if json {
        print_json(&view.sandbox.ports);
    } else {
        for m in &view.sandbox.ports {
            println!("{}/{} -> {}", m.container_port, m.proto, m.host_display());
        }
    }
    Ok(())
}

/// `exec` forks from a single-threaded process: it runs before any runtime exists, with a
/// runtime of its own for the one request.
pub fn exec(socket: &Path, name: &str, command: &[String]) -> ExitCode {
    let view = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(e.to_string()))
        .and_then(|runtime| {
            runtime
                .block_on(Client::new(socket).get::<SandboxView>(&paths::with_name(paths::SANDBOX, name)))
                .map_err(CliError::from)
        });
    let view = match view {
        Ok(v) => v,
        Err(e) => {
            e.print();
            return ExitCode::FAILURE;
        }
    };
    let plan = match EnterPlan::new(Path::new(&view.enter_netns), view.enter_etc.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("natctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut child = std::process::Command::new(&command[0]);
    child.args(&command[1..]);
    // SAFETY: enter() only makes syscalls on data prepared before fork.
    unsafe {
        child.pre_exec(move || plan.enter());
    }
    match child.status() {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitCode::from(code as u8),
            (None, Some(signal)) => ExitCode::from(128 + signal as u8),
            _ => ExitCode::FAILURE,
        },
        Err(e) => {
            eprintln!("natctl: exec {}: {e}", command[0]);
            // Docker's exit code for a command that cannot be found/started.
            ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            })
        }
    }
}
