//! The two loops that keep a natd in its cluster: the lease (renewed every third of its
//! TTL, re-registered when the store lost it) and the view (list, then watch from the
//! listed revision; a full list again every `RESYNC` and after any watch error, so a
//! missed event cannot leave a stale entry). Each change of the view is handed to the
//! daemon, which brings its overlay networks, FDB and neighbour entries in line.
use std::{sync::Arc, time::Duration};

use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{Cluster, ROOT, Renewal, store::StoreError};
use crate::daemon::Daemon;

/// A full list at least this often, even with a healthy watch.
const RESYNC: Duration = Duration::from_secs(30);
/// Wait before trying an unreachable store again.
const RETRY: Duration = Duration::from_secs(1);

/// Logs a store problem once, and its end once, rather than on every retry.
struct Health {
    what: &'static str,
    failing: bool,
}

impl Health {
    fn ok(&mut self) {
        if std::mem::take(&mut self.failing) {
            info!("cluster store reachable again ({})", self.what);
        }
    }

    fn failed(&mut self, error: impl std::fmt::Display) {
        if !self.failing {
            warn!("cluster store: {} failed: {error}; retrying", self.what);
            self.failing = true;
        }
    }
}

pub fn spawn(cluster: Arc<Cluster>, daemon: Arc<Mutex<Daemon>>) {
    let lease_cluster = Arc::clone(&cluster);
    tokio::spawn(async move { keep_lease(lease_cluster).await });
    let collector = Arc::clone(&cluster);
    tokio::spawn(async move { collect_vanished(collector).await });
    tokio::spawn(async move { follow(cluster, daemon).await });
}

async fn keep_lease(cluster: Arc<Cluster>) {
    let period = Duration::from_millis(cluster.ttl * 1000 / 3).max(Duration::from_millis(300));
    let mut health = Health {
        what: "lease renewal",
        failing: false,
    };
    loop {
        // An attempt gets one period at most: one that hangs (a lost connection) must not
        // use up the lease the next attempts could still save.
        let attempt = tokio::time::timeout(period, cluster.keepalive()).await;
        match attempt.unwrap_or_else(|_| Err(StoreError::Unavailable(format!("no answer within {period:?}")))) {
            Ok(renewal) => {
                health.ok();
                match renewal {
                    Renewal::Renewed => {}
                    Renewal::Registered => {
                        info!(host = %cluster.host_id, addr = %cluster.advertise, "registered in the cluster store")
                    }
                    Renewal::Restored => warn!(
                        host = %cluster.host_id, addr = %cluster.advertise,
                        "this host's registration in the cluster store had been changed or removed by another writer (another natd with this host's id? each host needs its own <state-dir>/host-id); written again"
                    ),
                    Renewal::Reregistered => warn!(
                        host = %cluster.host_id, addr = %cluster.advertise,
                        "registered again in the cluster store: the lease had expired, so other hosts dropped this one meanwhile"
                    ),
                }
            }
            Err(e) => health.failed(e),
        }
        tokio::time::sleep(period).await;
    }
}

/// Hosts that died for good: their addresses go back to the cluster after the grace. Its
/// own task, so a slow store never delays the lease renewal.
async fn collect_vanished(cluster: Arc<Cluster>) {
    let period = Duration::from_secs(cluster.ttl).max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(period).await;
        match tokio::time::timeout(period, cluster.collect_vanished()).await {
            Ok(Ok(done)) => {
                for line in done {
                    info!("{line}");
                }
            }
            Ok(Err(e)) => warn!("releasing the claims of vanished hosts: {e}"),
            Err(_) => warn!("releasing the claims of vanished hosts: no answer within {period:?}"),
        }
    }
}

async fn follow(cluster: Arc<Cluster>, daemon: Arc<Mutex<Daemon>>) {
    let mut health = Health {
        what: "list and watch",
        failing: false,
    };
    loop {
        let revision = match cluster.refresh().await {
            Ok(r) => r,
            Err(e) => {
                health.failed(e);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        apply(&daemon).await;
        let mut watch = match cluster.store.watch(ROOT, revision + 1).await {
            Ok(w) => w,
            Err(e) => {
                health.failed(e);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        health.ok();
        let deadline = tokio::time::Instant::now() + RESYNC;
        loop {
            match tokio::time::timeout_at(deadline, watch.next()).await {
                Err(_) => break, // time for the periodic full list
                Ok(Ok((revision, events))) => {
                    cluster.apply(revision, &events);
                    apply(&daemon).await;
                }
                Ok(Err(e)) => {
                    cluster.mark_unreachable();
                    health.failed(e);
                    tokio::time::sleep(RETRY).await;
                    break;
                }
            }
        }
    }
}

async fn apply(daemon: &Mutex<Daemon>) {
    if let Err(e) = daemon.lock().await.overlay_apply().await {
        warn!("overlay networks: {e}");
    }
}
