//! natctl, the operator's CLI for natd (Docker's vocabulary).
use std::{
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand, ValueEnum};
use natd::{
    api::{
        ConnectRequest, InfoResponse, NetworkCreate, NetworkMode, NetworkView, RunRequest, SandboxView,
        StatsView,
    },
    client::{Client, ClientError},
    dataplane::Flow,
    netns::EnterPlan,
    portspec::ExposeSpec,
};

#[derive(Parser)]
#[command(
    name = "natctl",
    version,
    about = "Control natd: networks and sandboxes, Docker-style"
)]
struct Cli {
    /// natd's API socket.
    #[arg(long, env = "NATD_SOCKET", default_value = natd::config::DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Create a sandbox (a network namespace), wire it and optionally start a command in it.
    Run(RunArgs),
    /// Run a command inside a sandbox in the foreground; its exit code is passed through.
    Exec {
        name: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List sandboxes.
    Ps,
    /// Show a sandbox as JSON.
    Inspect { name: String },
    /// Remove sandboxes: stop their process, remove veths, namespace, address and ports.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show a sandbox's published ports.
    Port { name: String, port: Option<String> },
    /// natd's dataplane, versions and counts.
    Info,
    /// Counters (drops by reason), traffic per published port, map fill levels.
    Stats,
    /// Connection tracking.
    #[command(subcommand)]
    Ct(CtCommand),
}

#[derive(Subcommand)]
enum CtCommand {
    /// Tracked flows with their original and translated tuples.
    #[command(alias = "list")]
    Ls,
}

#[derive(Subcommand)]
enum NetworkCommand {
    Create {
        #[arg(short = 'd', long, default_value = "bridge")]
        driver: String,
        #[arg(long)]
        subnet: Option<String>,
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long = "ip-range")]
        ip_range: Option<String>,
        #[arg(long)]
        internal: bool,
        /// Inter-sandbox communication inside the network (--icc=false to block it).
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        icc: Option<bool>,
        #[arg(long)]
        mtu: Option<u32>,
        /// KEY=VALUE driver option (bridge-name=NAME).
        #[arg(short = 'o', long = "opt")]
        opt: Vec<String>,
        name: String,
    },
    #[command(alias = "list")]
    Ls,
    Inspect {
        name: String,
    },
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    Connect {
        network: String,
        sandbox: String,
        #[arg(long)]
        ip: Option<String>,
    },
    Disconnect {
        network: String,
        sandbox: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long)]
    name: String,
    /// bridge | none | host | container:NAME | NETWORK
    #[arg(long, alias = "net")]
    network: Option<String>,
    #[arg(long)]
    ip: Option<String>,
    #[arg(long)]
    dns: Vec<String>,
    #[arg(long)]
    mtu: Option<u32>,
    /// Publish a port: [IP:][HOSTPORT:]CONTAINERPORT[/PROTO], ranges allowed.
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// Publish every exposed port to a random host port.
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    #[arg(long)]
    expose: Vec<String>,
    /// Use this existing network namespace instead of creating one.
    #[arg(long)]
    netns: Option<String>,
    #[arg(last = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // exec must fork from a single-threaded process: it is handled before any runtime exists.
    if let Command::Exec { name, command } = &cli.command {
        return exec(&cli.socket, name, command);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("natctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match &e {
                ClientError::Api { .. } => eprintln!("Error response from daemon: {e}"),
                other => eprintln!("natctl: {other}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// Left-aligned columns, like docker's tables.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        println!("{}", text.join("   ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn mode_text(view: &SandboxView) -> String {
    match &view.sandbox.mode {
        NetworkMode::Bridge => view
            .sandbox
            .endpoints
            .iter()
            .map(|e| e.network.clone())
            .collect::<Vec<_>>()
            .join(","),
        NetworkMode::None => "none".into(),
        NetworkMode::Host => "host".into(),
        NetworkMode::Container(t) => format!("container:{t}"),
    }
}

fn ports_text(view: &SandboxView) -> String {
    view.sandbox
        .ports
        .iter()
        .map(|m| format!("{}->{}/{}", m.host_display(), m.container_port, m.proto))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn dispatch(cli: &Cli) -> Result<(), ClientError> {
    let client = Client::new(&cli.socket);
    let json = cli.format == Format::Json;
    match &cli.command {
        Command::Network(cmd) => network(&client, cmd, json).await,
        Command::Run(args) => {
            let request = RunRequest {
                name: args.name.clone(),
                network: args.network.clone(),
                ip: args.ip.clone(),
                dns: args.dns.clone(),
                mtu: args.mtu,
                publish: args.publish.clone(),
                publish_all: args.publish_all,
                expose: args.expose.clone(),
                netns: args.netns.clone(),
                command: args.command.clone(),
            };
            let view: SandboxView = client.post("/v1/sandboxes", &request).await?;
            if json {
                print_json(&view);
            } else {
                println!("{}", view.sandbox.name);
            }
            Ok(())
        }
        Command::Exec { .. } => unreachable!("handled in main"),
        Command::Ps => {
            let list: Vec<SandboxView> = client.get("/v1/sandboxes").await?;
            if json {
                print_json(&list);
                return Ok(());
            }
            let rows = list
                .iter()
                .map(|v| {
                    vec![
                        v.sandbox.name.clone(),
                        mode_text(v),
                        v.status.clone(),
                        v.sandbox
                            .endpoints
                            .iter()
                            .map(|e| e.ipv4.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                        ports_text(v),
                        v.sandbox.command.join(" "),
                    ]
                })
                .collect();
            print_table(&["NAME", "NETWORK", "STATUS", "IP", "PORTS", "COMMAND"], rows);
            Ok(())
        }
        Command::Inspect { name } => {
            let view: SandboxView = client.get(&format!("/v1/sandboxes/{name}")).await?;
            print_json(&view);
            Ok(())
        }
        Command::Rm { names } => {
            let mut last_err = None;
            for name in names {
                match client.delete(&format!("/v1/sandboxes/{name}")).await {
                    Ok(body) => {
                        if let Some(warnings) = body.get("warnings").and_then(|w| w.as_array()) {
                            for w in warnings {
                                eprintln!("warning: {name}: {}", w.as_str().unwrap_or_default());
                            }
                        }
                        println!("{name}");
                    }
                    Err(e) => {
                        eprintln!("Error response from daemon: {e}");
                        last_err = Some(e);
                    }
                }
            }
            match last_err {
                Some(ClientError::Api { status, .. }) => Err(ClientError::Api {
                    status,
                    message: "some sandboxes were not removed".into(),
                }),
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        Command::Port { name, port } => {
            let view: SandboxView = client.get(&format!("/v1/sandboxes/{name}")).await?;
            let filter = port
                .as_deref()
                .map(|p| {
                    p.parse::<ExposeSpec>().map_err(|e| ClientError::Api {
                        status: 400,
                        message: e.to_string(),
                    })
                })
                .transpose()?;
            let mappings: Vec<_> = view
                .sandbox
                .ports
                .iter()
                .filter(|m| filter.is_none_or(|f| f.ports.first == m.container_port && f.proto == m.proto))
                .collect();
            if json {
                print_json(&mappings);
            } else if let (Some(p), true) = (port, mappings.is_empty()) {
                return Err(ClientError::Api {
                    status: 404,
                    message: format!("No public port '{p}' published for {name}"),
                });
            } else {
                for m in mappings {
                    println!("{}/{} -> {}", m.container_port, m.proto, m.host_display());
                }
            }
            Ok(())
        }
        Command::Stats => {
            let stats: StatsView = client.get("/v1/stats").await?;
            if json {
                print_json(&stats);
                return Ok(());
            }
            println!("dataplane: {}", stats.dataplane);
            let (drops, others): (Vec<_>, Vec<_>) =
                stats.counters.iter().partition(|(k, _)| k.starts_with("drop_"));
            print_table(
                &["COUNTER", "VALUE"],
                others
                    .iter()
                    .map(|(k, v)| vec![k.to_string(), v.to_string()])
                    .collect(),
            );
            println!();
            print_table(
                &["DROP REASON", "PACKETS"],
                drops
                    .iter()
                    .map(|(k, v)| vec![k.trim_start_matches("drop_").to_string(), v.to_string()])
                    .collect(),
            );
            println!();
            print_table(
                &["SANDBOX", "MAPPING", "PACKETS", "BYTES"],
                stats
                    .mappings
                    .iter()
                    .map(|m| {
                        vec![
                            m.sandbox.clone(),
                            m.mapping.clone(),
                            m.packets.to_string(),
                            m.bytes.to_string(),
                        ]
                    })
                    .collect(),
            );
            println!();
            print_table(
                &["MAP", "ENTRIES", "CAPACITY", "FILL"],
                stats
                    .maps
                    .iter()
                    .map(|(name, (n, cap))| {
                        let fill = if *cap == 0 {
                            0.0
                        } else {
                            *n as f64 * 100.0 / f64::from(*cap)
                        };
                        vec![
                            name.clone(),
                            n.to_string(),
                            cap.to_string(),
                            format!("{fill:.1}%"),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        Command::Ct(CtCommand::Ls) => {
            let flows: Vec<Flow> = client.get("/v1/conntrack").await?;
            if json {
                print_json(&flows);
                return Ok(());
            }
            let tuple = |t: &(std::net::IpAddr, u16, std::net::IpAddr, u16)| {
                format!("{}:{} -> {}:{}", t.0, t.1, t.2, t.3)
            };
            print_table(
                &[
                    "PROTO",
                    "KIND",
                    "STATE",
                    "ORIGINAL",
                    "TRANSLATED",
                    "PACKETS",
                    "BYTES",
                    "IDLE",
                ],
                flows
                    .iter()
                    .map(|f| {
                        vec![
                            f.proto.clone(),
                            f.kind.clone(),
                            f.state.clone(),
                            tuple(&f.original),
                            tuple(&f.translated),
                            f.packets.to_string(),
                            f.bytes.to_string(),
                            format!("{}s", f.idle_s),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        Command::Info => {
            let info: InfoResponse = client.get("/v1/info").await?;
            if json {
                print_json(&info);
                return Ok(());
            }
            println!("natd version:   {}", info.version);
            println!("kernel:         {}", info.kernel);
            println!("dataplane:      {}", info.dataplane);
            println!("networks:       {}", info.networks);
            println!("sandboxes:      {} ({} running)", info.sandboxes, info.running);
            println!("port mappings:  {}", info.port_mappings);
            println!("uplinks:        {}", info.uplinks.join(", "));
            println!("default bridge: {}", info.default_bridge);
            println!("name prefix:    {}", info.name_prefix);
            println!("state dir:      {}", info.state_dir);
            if let Some(links) = info.dataplane_detail.get("links").and_then(|l| l.as_array()) {
                println!(
                    "attached:       {}",
                    links
                        .iter()
                        .filter_map(|l| l.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if let Some(counters) = info.dataplane_detail.get("counters").and_then(|c| c.as_object()) {
                let text: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("counters:       {}", text.join(" "));
            }
            if !info.last_reconcile.is_empty() {
                println!("last reconcile:");
                for line in &info.last_reconcile {
                    println!("  {line}");
                }
            }
            Ok(())
        }
    }
}

async fn network(client: &Client, cmd: &NetworkCommand, json: bool) -> Result<(), ClientError> {
    match cmd {
        NetworkCommand::Create {
            driver,
            subnet,
            gateway,
            ip_range,
            internal,
            icc,
            mtu,
            opt,
            name,
        } => {
            let mut options = Vec::new();
            for o in opt {
                let (k, v) = o.split_once('=').ok_or_else(|| ClientError::Api {
                    status: 400,
                    message: format!("invalid option {o:?}: expected KEY=VALUE"),
                })?;
                options.push((k.to_string(), v.to_string()));
            }
            let request = NetworkCreate {
                name: name.clone(),
                driver: Some(driver.clone()),
                subnet: subnet.clone(),
                gateway: gateway.clone(),
                ip_range: ip_range.clone(),
                internal: *internal,
                icc: *icc,
                mtu: *mtu,
                options,
            };
            let view: NetworkView = client.post("/v1/networks", &request).await?;
            if json {
                print_json(&view);
            } else {
                println!("{}", view.network.name);
            }
        }
        NetworkCommand::Ls => {
            let list: Vec<NetworkView> = client.get("/v1/networks").await?;
            if json {
                print_json(&list);
                return Ok(());
            }
            let rows = list
                .iter()
                .map(|v| {
                    let n = &v.network;
                    let mut flags = Vec::new();
                    if n.internal {
                        flags.push("internal");
                    }
                    if !n.icc {
                        flags.push("icc=false");
                    }
                    vec![
                        n.name.clone(),
                        "bridge".into(),
                        n.subnet.clone(),
                        n.gateway.to_string(),
                        n.bridge.clone(),
                        v.sandboxes.len().to_string(),
                        flags.join(","),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME",
                    "DRIVER",
                    "SUBNET",
                    "GATEWAY",
                    "BRIDGE",
                    "SANDBOXES",
                    "OPTIONS",
                ],
                rows,
            );
        }
        NetworkCommand::Inspect { name } => {
            let view: NetworkView = client.get(&format!("/v1/networks/{name}")).await?;
            print_json(&view);
        }
        NetworkCommand::Rm { names } => {
            for name in names {
                client.delete(&format!("/v1/networks/{name}")).await?;
                println!("{name}");
            }
        }
        NetworkCommand::Connect { network, sandbox, ip } => {
            let body = ConnectRequest {
                sandbox: sandbox.clone(),
                ip: ip.clone(),
            };
            let _: SandboxView = client
                .post(&format!("/v1/networks/{network}/connect"), &body)
                .await?;
        }
        NetworkCommand::Disconnect { network, sandbox } => {
            let body = ConnectRequest {
                sandbox: sandbox.clone(),
                ip: None,
            };
            let _: SandboxView = client
                .post(&format!("/v1/networks/{network}/disconnect"), &body)
                .await?;
        }
    }
    Ok(())
}

fn exec(socket: &Path, name: &str, command: &[String]) -> ExitCode {
    let view = {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("natctl: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(Client::new(socket).get::<SandboxView>(&format!("/v1/sandboxes/{name}"))) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("Error response from daemon: {e}");
                return ExitCode::FAILURE;
            }
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
