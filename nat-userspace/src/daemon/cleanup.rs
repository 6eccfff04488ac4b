//! `natd --cleanup`: removes every sandbox, network, pinned object and the state database,
//! also when the state database cannot be read (then by name shape only).
use std::{path::Path, time::Duration};

use super::{drivers, names, reconcile::entries_with_prefix};
use crate::{
    config::DaemonConfig,
    dataplane,
    state::{Snapshot, Store},
    sys::{netlink::Netlink, netns, process},
};

/// Keeps going on errors and returns them.
pub async fn cleanup(config: &DaemonConfig) -> Vec<String> {
    let mut errors = Vec::new();
    let nl = match Netlink::connect() {
        Ok(nl) => nl,
        Err(e) => return vec![e.to_string()],
    };
    let snapshot = match Store::open(&config.state_dir) {
        Ok((_, snapshot)) => snapshot,
        Err(e) => {
            errors.push(format!("{e} (removing by name prefix only)"));
            Snapshot::default()
        }
    };
    for sandbox in snapshot.sandboxes.values() {
        if let Some(pid) = sandbox.pid {
            process::stop(pid, sandbox.pid_start, Duration::from_secs(5));
        }
        let own_netns = sandbox
            .netns
            .as_deref()
            .filter(|_| sandbox.netns_owned)
            .map(Path::new);
        if let Some(path) = own_netns {
            process::kill_all(&netns::pids_in(path));
        }
        for endpoint in &sandbox.endpoints {
            if let Ok(Some(link)) = nl.link(&endpoint.host_ifname).await
                && let Err(e) = nl.delete_link(link.index).await
            {
                errors.push(e.to_string());
            }
        }
        if let Some(path) = own_netns
            && let Err(e) = netns::delete_named(path)
        {
            errors.push(e.to_string());
        }
    }
    errors.extend(super::overlay::leave(config, snapshot.networks.values()).await);
    errors.extend(drivers::underlay::remove(&config.name_prefix));
    for network in snapshot.networks.values() {
        errors.extend(drivers::of(network.driver).teardown(&nl, network).await);
    }
    // Whatever else carries the prefix.
    let prefix = &config.name_prefix;
    if let Ok(links) = nl.links().await {
        for link in links {
            if names::is_generated_ifname(prefix, &link.name)
                && let Err(e) = nl.delete_link(link.index).await
            {
                errors.push(e.to_string());
            }
        }
    }
    let ns_prefix = names::sandbox_ns_prefix(prefix);
    for (_, path) in entries_with_prefix(Path::new(netns::NETNS_RUN_DIR), &ns_prefix) {
        process::kill_all(&netns::pids_in(&path));
        if let Err(e) = netns::delete_named(&path) {
            errors.push(e.to_string());
        }
    }
    for (name, _) in entries_with_prefix(Path::new(netns::NETNS_ETC_DIR), &ns_prefix) {
        if let Err(e) = netns::remove_etc(&name) {
            errors.push(format!("remove /etc/netns/{name}: {e}"));
        }
    }
    errors.extend(dataplane::remove_all(config));
    let db = config.state_dir.join(crate::state::DB_FILE);
    if let Err(e) = std::fs::remove_file(&db)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        errors.push(format!("remove {}: {e}", db.display()));
    }
    errors
}
