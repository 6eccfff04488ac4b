//! The rollback stack of a mutating request. Every kernel change is recorded the moment it
//! is made, together with how to undo it; when the request fails part-way (a later step,
//! the store commit), the recorded changes are undone newest first, so a refused or failed
//! request leaves no interface, namespace, address, NIC move or process behind.
//!
//! Tests make each step fail in turn through the fail point `rollback-record` (builds with
//! the `failpoints` feature), which fires right after a change is recorded.
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use tracing::warn;

use super::{drivers::hostbridge, error::Result};
use crate::{
    model::ParentState,
    sys::{netlink::Netlink, netns, process},
};

/// How to undo one kernel change.
#[derive(Debug)]
pub enum Undo {
    /// An interface natd created in its namespace (a veth's host end takes its peer along).
    DeleteLink(String),
    /// An address natd added to an interface it did not create.
    DeleteAddress { link: String, address: IpNetwork },
    /// A network namespace natd created; processes inside are killed first.
    DeleteNetns(PathBuf),
    /// /etc/netns/<name> that natd wrote.
    RemoveEtc(String),
    /// A NIC natd moved into a bridge, with what it had before.
    RestoreParent { bridge: String, state: ParentState },
    /// A process natd started.
    StopProcess { pid: i32, started: Option<u64> },
    /// Default routes of a namespace natd adopted, removed to put its own in their place
    /// (`--replace-default-route`).
    RestoreRoutes {
        netns: PathBuf,
        routes: Vec<rtnetlink::packet_route::route::RouteMessage>,
    },
}

pub struct Rollback {
    op: &'static str,
    steps: Vec<Undo>,
}

impl Rollback {
    pub fn new(op: &'static str) -> Self {
        Self {
            op,
            steps: Vec::new(),
        }
    }

    /// Records a change that has just been made.
    pub fn record(&mut self, undo: Undo) -> Result<()> {
        self.steps.push(undo);
        fail::fail_point!("rollback-record", |_| Err(super::error::internal(format!(
            "injected failure after step {} of {} (fail point rollback-record)",
            self.steps.len(),
            self.op
        ))));
        Ok(())
    }

    /// Keeps the recorded changes when `result` is a success and undoes them when it is
    /// an error, which is returned as it was.
    pub async fn settle<T>(self, nl: &Netlink, result: Result<T>) -> Result<T> {
        if result.is_err() {
            let op = self.op;
            for error in self.unwind(nl).await {
                warn!(op, %error, "rollback");
            }
        }
        result
    }

    /// Undoes every recorded change, newest first. Keeps going on errors and returns them.
    pub async fn unwind(mut self, nl: &Netlink) -> Vec<String> {
        let mut errors = Vec::new();
        while let Some(step) = self.steps.pop() {
            if let Err(e) = undo(nl, step).await {
                errors.push(e);
            }
        }
        errors
    }
}

async fn undo(nl: &Netlink, step: Undo) -> Result<(), String> {
    match step {
        Undo::DeleteLink(name) => match nl.link(&name).await {
            Ok(Some(link)) => nl.delete_link(link.index).await.map_err(|e| e.to_string()),
            Ok(None) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
        Undo::DeleteAddress { link, address } => match nl.link(&link).await {
            Ok(Some(l)) => nl.del_address(l.index, address).await.map_err(|e| e.to_string()),
            Ok(None) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
        Undo::DeleteNetns(path) => {
            process::kill_all(&netns::pids_in(&path));
            netns::delete_named(&path).map_err(|e| e.to_string())
        }
        Undo::RemoveEtc(name) => {
            netns::remove_etc(&name).map_err(|e| format!("remove /etc/netns/{name}: {e}"))
        }
        Undo::RestoreParent { bridge, state } => {
            let errors = hostbridge::restore_parent(nl, &bridge, &state).await;
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        }
        Undo::RestoreRoutes { netns, routes } => {
            let inner = Netlink::connect_in(&netns).map_err(|e| e.to_string())?;
            let mut errors = Vec::new();
            for route in routes {
                if let Err(e) = inner.restore_route(route).await {
                    errors.push(e.to_string());
                }
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(format!("{}: {}", netns.display(), errors.join("; ")))
            }
        }
        Undo::StopProcess { pid, started } => tokio::task::spawn_blocking(move || {
            process::stop(pid, started, std::time::Duration::from_secs(5))
        })
        .await
        .map_err(|e| e.to_string()),
    }
}
