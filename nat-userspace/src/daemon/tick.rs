//! The periodic housekeeping tick, with the daemon's lock held only for what is cheap:
//! idle flows expire, and the kernel's maps, links and the host's interfaces are read and
//! compared with what natd wrote and saw, all outside the lock (`DriftCheck`); under it,
//! only what still differs is confirmed, and a sync runs only when something drifted or
//! the last sync left work undone. A dataplane without a drift check (nftables) gets the
//! tick's full sync under the lock (`Daemon::tick`).
use tokio::sync::Mutex;

use super::{Daemon, error::Result, sync::KernelView};

/// One tick. Errors are logged: the next tick tries again.
pub async fn housekeeping_tick(daemon: &Mutex<Daemon>) {
    let (keeper, nl) = {
        let d = daemon.lock().await;
        (d.housekeeping(), d.nl.clone())
    };
    let Some(keeper) = keeper else {
        let mut d = daemon.lock().await;
        if let Err(e) = d.tick().await {
            tracing::warn!("housekeeping: {e}");
        }
        d.heal_underlay_filter();
        return;
    };
    let read_from = std::sync::Arc::clone(&keeper);
    let read = tokio::task::spawn_blocking(move || {
        match keeper.gc() {
            Ok(gc) => super::log_gc(&gc),
            Err(e) => tracing::warn!("conntrack expiry: {e}"),
        }
        // Read after the expiry pass, which changes none of the maps compared.
        let mut check = keeper.drift_check()?;
        check.read();
        Some(check)
    })
    .await;
    let check = match read {
        Ok(check) => check,
        Err(e) => {
            tracing::warn!("housekeeping: {e}");
            None
        }
    };
    // Taken just before the dump: a sync during the expiry pass does not void the verdict.
    let epoch = daemon.lock().await.view_epoch;
    let dumped = KernelView::dump(&nl).await;
    // What natd wrote and saw, taken after the kernel's side was read.
    let (written, view, epoch_now) = {
        let d = daemon.lock().await;
        (d.dataplane.written(), d.kernel_view.clone(), d.view_epoch)
    };
    let check = match (check, written) {
        (Some(mut check), Some(written)) => tokio::task::spawn_blocking(move || {
            check.compare(&written);
            check
        })
        .await
        .ok(),
        _ => None,
    };
    // A sync while the dump ran may have seen more than it: then no verdict this time.
    let view_drifted = match (&dumped, &view) {
        (Ok(dumped), Some(view)) => epoch == epoch_now && !dumped.same_as(view),
        (Err(e), _) => {
            tracing::warn!("housekeeping: {e}");
            false
        }
        (Ok(_), None) => true,
    };
    let mut d = daemon.lock().await;
    // The dataplane reloaded its maps meanwhile (the IPv6 tables grown): what was read is
    // another set of maps than the one written since. The next tick judges.
    if d.housekeeping().is_some_and(|now| !std::sync::Arc::ptr_eq(&now, &read_from)) {
        return;
    }
    if let Err(e) = d.repair_drift(check, view_drifted).await {
        tracing::warn!("housekeeping: {e}");
    }
    d.heal_underlay_filter();
}

impl Daemon {
    /// Under the lock: what the drift check found is confirmed, forgotten and repaired by a
    /// sync; without findings, a sync only if the last one failed or left work undone.
    async fn repair_drift(
        &mut self,
        check: Option<Box<dyn crate::dataplane::DriftCheck>>,
        view_drifted: bool,
    ) -> Result<()> {
        let drifted = match (check, self.dataplane.written()) {
            (Some(check), Some(written)) => check.confirm(&written),
            // No comparison made: the tick's full sync.
            _ => return self.tick().await,
        };
        if !drifted.is_empty() {
            tracing::warn!(changed = ?drifted, "changed behind natd's back: repairing");
        }
        let mut due = self.dataplane.forget_drifted(&drifted);
        if view_drifted {
            tracing::info!("the host's links or addresses changed without an announcement: a full sync");
            self.forget_view();
            due = true;
        }
        if due || self.sync_failed {
            self.sync_dataplane().await?;
        } else if let Err(e) = self.reserved.write() {
            // What a sync does anyway: the reserved ports back if the sysctl was rewritten
            // (`sysctl --system`) or the ephemeral range moved.
            tracing::warn!(error = %e, "cannot reserve published ports in ip_local_reserved_ports");
        }
        Ok(())
    }
}
