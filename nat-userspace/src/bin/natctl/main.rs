//! natctl, the operator's CLI for natd (Docker's vocabulary).
mod docs;
mod networks;
mod output;
mod sandboxes;
mod status;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use natd::client::{Client, ClientError};

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
    /// Publish more ports of a running sandbox: [IP:][HOSTPORT:]CONTAINERPORT[/PROTO].
    Publish {
        name: String,
        #[arg(required = true)]
        ports: Vec<String>,
    },
    /// Withdraw published ports of a sandbox: [IP:]HOSTPORT[-HOSTPORT][/PROTO].
    Unpublish {
        name: String,
        #[arg(required = true)]
        ports: Vec<String>,
    },
    /// natd's dataplane, versions and counts.
    Info,
    /// Counters (drops by reason), traffic per published port, map fill levels.
    Stats,
    /// Connection tracking.
    #[command(subcommand)]
    Ct(CtCommand),
    /// Print a shell completion script: `natctl completion bash > /etc/bash_completion.d/natctl`.
    Completion { shell: clap_complete::Shell },
    /// Write man pages of natd and natctl (one per subcommand) into DIR (for packaging).
    #[command(hide = true)]
    Manpages { dir: PathBuf },
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
        /// Subnet in CIDR form; repeat for one IPv4 and one IPv6 subnet.
        #[arg(long)]
        subnet: Vec<String>,
        /// Gateway of the subnet of the same address family (repeatable, as --subnet).
        #[arg(long)]
        gateway: Vec<String>,
        /// Give sandboxes IPv6 addresses too: from the IPv6 --subnet, or from a /64 of this
        /// host's unique-local fdXX:XXXX:XXXX::/48.
        #[arg(long)]
        ipv6: bool,
        #[arg(long = "ip-range")]
        ip_range: Option<String>,
        #[arg(long)]
        internal: bool,
        /// Inter-sandbox communication inside the network (--icc=false to block it).
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        icc: Option<bool>,
        #[arg(long)]
        mtu: Option<u32>,
        /// KEY=VALUE driver option (bridge-name=NAME,
        /// com.docker.network.bridge.gateway_mode_ipv4|ipv6=nat|routed).
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
        /// Static IPv6 address (the network needs a user-configured IPv6 subnet).
        #[arg(long)]
        ip6: Option<String>,
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
    /// Static IPv6 address (the network needs a user-configured IPv6 subnet).
    #[arg(long)]
    ip6: Option<String>,
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
    /// Use this existing network namespace instead of creating one (never natd's own or
    /// the initial one).
    #[arg(long)]
    netns: Option<String>,
    /// With --netns: give the namespace natd's default route even if it has one already
    /// (without it such a namespace is refused).
    #[arg(long = "replace-default-route", requires = "netns")]
    replace_default_route: bool,
    #[arg(last = true)]
    command: Vec<String>,
}

/// Why a natctl command failed: natd refused it (printed the way Docker prints a daemon's
/// answer), natctl could not talk to natd, or natctl itself refused the arguments.
enum CliError {
    Client(ClientError),
    Usage(String),
    /// Already printed (e.g. `rm` of several names).
    Reported,
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Client(e)
    }
}

impl CliError {
    fn print(&self) {
        match self {
            CliError::Client(e @ ClientError::Api { .. }) => eprintln!("Error response from daemon: {e}"),
            CliError::Client(e) => eprintln!("natctl: {e}"),
            CliError::Usage(message) => eprintln!("Error: {message}"),
            CliError::Reported => {}
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Documentation commands need no daemon.
    match &cli.command {
        Command::Completion { shell } => return docs::completion(*shell),
        Command::Manpages { dir } => return docs::manpages(dir),
        _ => {}
    }
    // exec must fork from a single-threaded process: it is handled before any runtime exists.
    if let Command::Exec { name, command } = &cli.command {
        return sandboxes::exec(&cli.socket, name, command);
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
            e.print();
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: &Cli) -> Result<(), CliError> {
    let client = Client::new(&cli.socket);
    let json = cli.format == Format::Json;
    match &cli.command {
        Command::Network(cmd) => networks::network(&client, cmd, json).await,
        Command::Run(args) => sandboxes::run(&client, args, json).await,
        Command::Exec { .. } | Command::Completion { .. } | Command::Manpages { .. } => {
            unreachable!("handled in main")
        }
        Command::Ps => sandboxes::ps(&client, json).await,
        Command::Inspect { name } => sandboxes::inspect(&client, name).await,
        Command::Rm { names } => sandboxes::rm(&client, names).await,
        Command::Port { name, port } => sandboxes::port(&client, name, port.as_deref(), json).await,
        Command::Publish { name, ports } => sandboxes::publish(&client, name, ports, true, json).await,
        Command::Unpublish { name, ports } => sandboxes::publish(&client, name, ports, false, json).await,
        Command::Stats => status::stats(&client, json).await,
        Command::Ct(CtCommand::Ls) => status::conntrack(&client, json).await,
        Command::Info => status::info(&client, json).await,
    }
}
