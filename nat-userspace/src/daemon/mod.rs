//! natd's core. Every mutating request follows one path: validate into a plan (no side
//! effects), apply the plan to the kernel recording each change on a rollback stack,
//! commit the records (store, then the in-memory snapshot), and bring the dataplane in
//! line before answering. A refused or failed request leaves nothing behind.
//!
//! Where things live: `startup` (what happens when natd starts), `networks` and
//! `drivers` (network create/rm, one driver abstraction), `sandboxes` (run/rm),
//! `endpoints` (addresses, veth wiring, connect/disconnect), `overlay` (overlay networks
//! in line with the cluster store), `ports` (host port
//! allocation), `reconcile` (kernel back to the records), `edges` (which interfaces
//! are edges, following the kernel's link changes), `sync` (records to the
//! dataplane), `views` (what the API shows), `cleanup` (`natd --cleanup`).
mod cleanup;
pub mod drivers;
mod edges;
mod endpoints;
pub mod error;
pub mod names;
mod networks;
mod overlay;
pub mod ports;
mod publish;
mod reconcile;
pub mod rollback;
mod sandboxes;
mod startup;
mod sync;
mod tick;
mod views;

use std::{
    collections::HashSet,
    time::{SystemTime, UNIX_EPOCH},
};

pub use cleanup::cleanup;
pub use error::{DaemonError, ErrorClass};
pub use sync::log_gc;
pub use tick::housekeeping_tick;
use error::{Result, not_found};

use crate::{
    config::DaemonConfig,
    dataplane::Dataplane,
    model::{Network, Sandbox},
    state::{Change, Snapshot, Store},
    sys::netlink::Netlink,
};

pub const DEFAULT_NETWORK: &str = "bridge";

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub struct Daemon {
    config: DaemonConfig,
    store: Store,
    state: Snapshot,
    nl: Netlink,
    dataplane: Box<dyn Dataplane>,
    uplinks: Vec<String>,
    /// Range random host ports come from.
    port_range: (u16, u16),
    /// Where the next random host port search starts.
    port_cursor: ports::Cursor,
    /// Every published host port, kept in step with the records by `commit`.
    port_book: ports::PortBook,
    /// Published host ports in ip_local_reserved_ports.
    reserved: ports::Reserved,
    /// Published-port rules by sandbox as the last sync computed them.
    port_rules: sync::PortRules,
    /// Interfaces natd's own changes touched since the last sync (`None`: the next sync
    /// dumps every link and address).
    touched_links: Option<HashSet<String>>,
    /// Range of NAT source ports for masquerade.
    snat_ports: (u16, u16),
    last_reconcile: Vec<String>,
    /// Sandbox ports whose hairpin mode was set (ifindex, mode), to set it once.
    hairpin_set: HashSet<(u32, bool)>,
    /// Bridges whose route_localnet natd set, and to what (nftables dataplane or not).
    localnet_set: HashSet<(String, bool)>,
    /// Edges whose accept_ra natd checked once IPv6 forwarding was on.
    ra_checked: HashSet<String>,
    fast_path: sync::FastPath,
    /// The host's links and addresses as the last sync saw them (shared with the tick's
    /// comparison outside the lock).
    kernel_view: Option<std::sync::Arc<sync::KernelView>>,
    /// Counts the syncs that may have changed `kernel_view` (the tick's comparison holds
    /// only if none ran while it dumped).
    view_epoch: u64,
    /// The last sync failed: the tick syncs again whatever its drift check finds.
    sync_failed: bool,
    /// What the last full sync gave the dataplane (port changes start from it).
    last_desired: Option<crate::dataplane::Desired>,
    /// Membership of a cluster (`--cluster-store`), for overlay networks.
    cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
    /// What the underlay filter was last given (None: to be written, e.g. after a
    /// reconcile or when the table was found missing).
    underlay_applied: std::sync::Mutex<Option<drivers::underlay::Allowed>>,
    /// The host's unique-local /48 (from `<state-dir>/host-id`), for `--ipv6` networks
    /// without an IPv6 subnet.
    ula_pool: ipnetwork::Ipv6Network,
}

impl Daemon {
    fn alloc_id(&mut self) -> (u32, Change) {
        let id = self.state.next_id.max(1);
        self.state.next_id = id + 1;
        (id as u32, Change::NextId(id + 1))
    }

    /// Gives every mapping of `mappings` without an id the next ids of the counter
    /// (`PortMapping::id`); the change that records the counter, if it moved.
    fn number_mappings(&mut self, mappings: &mut [crate::model::PortMapping]) -> Result<Option<Change>> {
        let mut moved = None;
        for m in mappings.iter_mut().filter(|m| m.id == 0) {
            let (id, change) = self.alloc_id();
            if id >= crate::dataplane::OPEN_PORT_ID {
                return Err(error::internal(format!(
                    "mapping ids exhausted ({} handed out): recreate natd's state",
                    crate::dataplane::OPEN_PORT_ID
                )));
            }
            m.id = id;
            moved = Some(change);
        }
        Ok(moved)
    }

    fn sandbox(&self, name: &str) -> Result<&Sandbox> {
        self.state
            .sandboxes
            .get(name)
            .ok_or_else(|| not_found(format!("No such container: {name}")))
    }

    fn network(&self, name: &str) -> Result<&Network> {
        self.state
            .networks
            .get(name)
            .ok_or_else(|| not_found(format!("network {name} not found")))
    }

    /// Makes `changes` durable, then visible in the in-memory snapshot.
    fn commit(&mut self, changes: Vec<Change>) -> Result<()> {
        fail::fail_point!("before-commit", |_| Err(error::internal(
            "injected failure before the store commit (fail point before-commit)"
        )));
        self.store.commit(&changes)?;
        for change in changes {
            self.follow_ports(&change);
            self.state.apply(vec![change]);
        }
        Ok(())
    }

    /// The port book and the port rules' cache before `change` reaches the records.
    fn follow_ports(&mut self, change: &Change) {
        let name = match change {
            Change::PutSandbox(s) => &s.name,
            Change::DeleteSandbox(name) => name,
            Change::PutNetwork(_) | Change::DeleteNetwork(_) => {
                self.touched_links = None;
                return self.port_rules.forget();
            }
            Change::NextId(_) => return,
        };
        self.port_rules.touch(name);
        let new = match change {
            Change::PutSandbox(s) => Some(s),
            _ => None,
        };
        let endpoints = self.state.sandboxes.get(name).into_iter().chain(new).flat_map(|s| s.endpoints.iter());
        let ifnames: Vec<String> = endpoints.map(|e| e.host_ifname.clone()).collect();
        if let Some(touched) = self.touched_links.as_mut() {
            touched.extend(ifnames);
        }
        if let Some(old) = self.state.sandboxes.get(name) {
            for m in &old.ports {
                self.port_book.remove(m);
            }
        }
        if let Change::PutSandbox(new) = change {
            for m in &new.ports {
                self.port_book.add(m);
            }
        }
    }

    /// `commit`, then the dataplane: the change is in the kernel when this returns.
    async fn commit_and_sync(&mut self, changes: Vec<Change>) -> Result<()> {
        self.commit(changes)?;
        self.sync_after_change().await
    }
}
