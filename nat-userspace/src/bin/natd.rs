//! natd, the host agent.
use std::{process::ExitCode, sync::Arc};

use clap::Parser as _;
use natd::{
    config::{DaemonArgs, DaemonConfig, LogFormat},
    daemon::{self, Daemon},
    server,
    state::StateError,
};
use tracing::{error, info};

/// Exit status for a configuration or state problem a restart cannot fix (sysexits
/// EX_CONFIG); the shipped systemd unit lists it in RestartPreventExitStatus.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    // Fail points (test builds with the `failpoints` feature) from $FAILPOINTS.
    let _failpoints = fail::FailScenario::setup();
    let args = DaemonArgs::parse();
    let config = match DaemonConfig::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("natd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_upgrade {
        // The IPv6 tables as a start would size them, judged without natd's state: a start
        // with an IPv6 network in it keeps or grows them full where this may say dormant.
        let checked = natd::dataplane::ebpf::sizes::TableSizes::of(&config, config.ipv6)
            .and_then(|sizes| natd::dataplane::ebpf::loader::check_upgrade(&config.bpffs, sizes));
        return match checked {
            Ok(lines) => {
                for line in lines {
                    println!("{line}");
                }
                println!("a start would go ahead");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("a start would refuse: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    init_tracing(config.log_format);
    natd::sys::memory::limit_malloc_retention();
    // Signal masks survive exec: started by a supervisor that blocks SIGTERM for its own
    // sigwait thread, natd would never see its stop signal (nor SIGINT).
    let stop_signals: nix::sys::signal::SigSet = [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGINT]
        .into_iter()
        .collect();
    if let Err(e) = stop_signals.thread_unblock() {
        tracing::warn!("cannot unblock SIGTERM and SIGINT: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("natd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.cleanup {
        let errors = runtime.block_on(daemon::cleanup(&config));
        for e in &errors {
            error!("cleanup: {e}");
        }
        info!(errors = errors.len(), "cleanup finished");
        return if errors.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    runtime.block_on(serve(config))
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NATD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(config: DaemonConfig) -> ExitCode {
    let socket = config.socket.clone();
    let gc_interval = config.gc_interval;
    let metrics_addr = config.metrics_addr;
    let daemon = match Daemon::start(config).await {
        Ok(d) => d,
        Err(e) => {
            error!("{e:#}");
            let is_state = e.downcast_ref::<StateError>().is_some();
            return if is_state {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            };
        }
    };
    let listener = match server::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            error!("cannot listen on {}: {e}", socket.display());
            return ExitCode::FAILURE;
        }
    };
    let gc_interval = std::time::Duration::from_secs(gc_interval);
    let cluster = daemon.cluster();
    let daemon = Arc::new(tokio::sync::Mutex::new(daemon));
    if let Some(cluster) = cluster {
        natd::cluster::agent::spawn(cluster, Arc::clone(&daemon));
    }
    let housekeeping = Arc::clone(&daemon);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(gc_interval);
        interval.tick().await;
        loop {
            interval.tick().await;
            natd::daemon::housekeeping_tick(&housekeeping).await;
        }
    });
    // Interfaces that appear later (a VPN coming up, a hot-plugged NIC) are edges like the
    // others: attached as they appear, not at the next housekeeping tick.
    match natd::sys::netlink::watch_links() {
        Ok(mut events) => {
            let follower = Arc::clone(&daemon);
            tokio::spawn(async move {
                // What changed between the start's sync and this subscription: one full
                // look, as after an overrun.
                let mut pending = vec![natd::sys::netlink::LinkEvent::Lost];
                loop {
                    if pending.is_empty() {
                        let Some(first) = events.recv().await else { break };
                        // A link comes with a burst of messages (flags, addresses): one sync.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        pending.push(first);
                    }
                    let mut daemon = follower.lock().await;
                    // And what arrived while the lock was busy: followed by this sync.
                    while let Ok(event) = events.try_recv() {
                        pending.push(event);
                    }
                    let batch = std::mem::take(&mut pending);
                    if let Err(e) = daemon.follow_links(&batch).await {
                        tracing::warn!("following interface changes: {e}");
                    }
                }
                tracing::warn!(
                    "stopped following interface changes: new interfaces are protected at the next housekeeping tick"
                );
            });
        }
        Err(e) => tracing::warn!(
            "cannot follow interface changes ({e}): new interfaces are protected at the next housekeeping tick"
        ),
    }
    // A firewall that appears must see forwarded traffic soon: the fast path follows it
    // within a second. (A firewall reload that removes natd's nftables tables is repaired
    // by the dataplane's own healer thread, which never waits for this lock.)
    let checker = Arc::clone(&daemon);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            interval.tick().await;
            let due = checker.lock().await.firewall_check_due();
            if let Some(prefix) = due {
                // Listing the ruleset takes milliseconds: not under the lock requests wait for.
                let found =
                    tokio::task::spawn_blocking(move || natd::sys::netfilter::forwarding_rules(&prefix))
                        .await
                        .unwrap_or(None);
                if let Err(e) = checker.lock().await.follow_firewall(found).await {
                    tracing::warn!("switching the fast path: {e}");
                }
            }
        }
    });
    let api_metrics = Arc::new(natd::metrics::ApiMetrics::default());
    if let Some(addr) = metrics_addr {
        match natd::metrics::serve(addr, Arc::clone(&daemon), Arc::clone(&api_metrics)).await {
            Ok(server) => {
                info!(%addr, "serving metrics on {}", natd::metrics::PATH);
                tokio::spawn(async move {
                    if let Err(e) = server.await {
                        error!("metrics server: {e}");
                    }
                });
            }
            Err(e) => {
                error!("cannot serve metrics on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let app = server::router(daemon, api_metrics);
    info!(socket = %socket.display(), "natd ready");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        info!("shutting down; networks and sandboxes stay in place");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    };
    let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    let _ = std::fs::remove_file(&socket);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("server: {e}");
            ExitCode::FAILURE
        }
    }
}
