//! The healer: a thread of its own that puts natd's tables back when something outside
//! natd removes them (`nft flush ruleset`, a firewall reload). It wakes on every change of
//! the ruleset (the kernel's nf_tables notifications) and at least four times a second,
//! and never waits for the daemon's lock: only for the tables' own, held for the length
//! of one nft transaction.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use super::Applied;
use crate::sys::nft::RulesetWatch;

/// The longest the healer sleeps without a notification (the check is one `list tables`).
const POLL: Duration = Duration::from_millis(250);

pub(super) fn spawn(applied: Arc<Mutex<Applied>>) {
    let watch = match RulesetWatch::open() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow nf_tables changes: a removed ruleset is found by polling only");
            None
        }
    };
    let spawned = std::thread::Builder::new()
        .name("nft-healer".into())
        .spawn(move || heal_forever(&applied, watch));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the nftables healer thread");
    }
}

fn heal_forever(applied: &Mutex<Applied>, mut watch: Option<RulesetWatch>) {
    loop {
        match &mut watch {
            Some(w) => {
                w.wait(POLL);
            }
            None => std::thread::sleep(POLL),
        }
        let mut applied = applied.lock().unwrap_or_else(|e| e.into_inner());
        match applied.heal() {
            Ok(true) => tracing::warn!(
                "natd's nftables tables were removed from outside (e.g. a firewall reload); re-applied"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!("re-applying natd's nftables tables: {e}"),
        }
    }
}
