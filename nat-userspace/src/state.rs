//! natd's persistent truth: networks and sandboxes in a redb database (copy-on-write,
//! crash-safe commits). Every mutating API call is one write transaction.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use crate::model::{Network, Sandbox};

const NETWORKS: TableDefinition<&str, &str> = TableDefinition::new("networks");
const SANDBOXES: TableDefinition<&str, &str> = TableDefinition::new("sandboxes");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";
pub const DB_FILE: &str = "natd.redb";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state database {path} is corrupt or unreadable ({reason}).\n\
         natd will not start on it. To recover: stop natd, move the file aside \
         (mv {path} {path}.bad), run `natd --cleanup` with the same flags to remove what natd \
         owns, then start natd again and recreate networks and sandboxes"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("state database {path} is in use by another natd (one state dir per natd)")]
    InUse { path: PathBuf },
    #[error(
        "cannot open the state database {path}: {reason}. Its directory must be writable (and \
         have free space); natd changed nothing"
    )]
    Open { path: PathBuf, reason: String },
    #[error("cannot create state directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("state database error: {0}")]
    Db(String),
    #[error(
        "cannot write the state database {path}: {reason}. Nothing was changed; free space on its \
         file system or make its directory writable, then retry"
    )]
    Write { path: PathBuf, reason: String },
}

fn db_err(e: impl std::fmt::Display) -> StateError {
    StateError::Db(e.to_string())
}

/// Everything natd knows, loaded at start and kept in memory; the database is written
/// through on every change.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub networks: BTreeMap<String, Network>,
    pub sandboxes: BTreeMap<String, Sandbox>,
    pub next_id: u64,
}

impl Snapshot {
    /// Applies committed changes to the in-memory copy.
    pub fn apply(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::PutNetwork(n) => {
                    self.networks.insert(n.name.clone(), n);
                }
                Change::DeleteNetwork(name) => {
                    self.networks.remove(&name);
                }
                Change::PutSandbox(s) => {
                    self.sandboxes.insert(s.name.clone(), s);
                }
                Change::DeleteSandbox(name) => {
                    self.sandboxes.remove(&name);
                }
                Change::NextId(id) => self.next_id = self.next_id.max(id),
            }
        }
    }
}

pub enum Change {
    PutNetwork(Network),
    DeleteNetwork(String),
    PutSandbox(Sandbox),
    DeleteSandbox(String),
    NextId(u64),
}

/// The store's page cache (see `open_db`).
const STORE_CACHE: usize = 4 << 20;

pub struct Store {
    /// None after a failed write until it is reopened: redb refuses every transaction after
    /// an I/O error (disk full, read-only file system) until the database is opened again.
    db: Option<Database>,
    path: PathBuf,
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<(Self, Snapshot), StateError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StateError::Dir {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(DB_FILE);
        let db = open_db(&path, false)?;
        let store = Self { db: Some(db), path };
        let snapshot = store.load()?;
        Ok((store, snapshot))
    }

    fn corrupt(&self, reason: impl std::fmt::Display) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    fn load(&self) -> Result<Snapshot, StateError> {
        // Make sure the tables exist so that a fresh database reads as empty.
        let db = self.db.as_ref().ok_or_else(|| db_err("not open"))?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(NETWORKS).map_err(|e| self.corrupt(e))?;
            txn.open_table(SANDBOXES).map_err(|e| self.corrupt(e))?;
            txn.open_table(META).map_err(|e| self.corrupt(e))?;
        }
        txn.commit().map_err(db_err)?;

        let read = db.begin_read().map_err(db_err)?;
        let mut snapshot = Snapshot::default();
        let networks = read.open_table(NETWORKS).map_err(|e| self.corrupt(e))?;
        for entry in networks.iter().map_err(|e| self.corrupt(e))? {
            let (key, value) = entry.map_err(|e| self.corrupt(e))?;
            let network: Network = serde_json::from_str(value.value())
                .map_err(|e| self.corrupt(format!("network {}: {e}", key.value())))?;
            snapshot.networks.insert(key.value().to_string(), network);
        }
        let sandboxes = read.open_table(SANDBOXES).map_err(|e| self.corrupt(e))?;
        for entry in sandboxes.iter().map_err(|e| self.corrupt(e))? {
            let (key, value) = entry.map_err(|e| self.corrupt(e))?;
            let sandbox: Sandbox = serde_json::from_str(value.value())
                .map_err(|e| self.corrupt(format!("sandbox {}: {e}", key.value())))?;
            snapshot.sandboxes.insert(key.value().to_string(), sandbox);
        }
        let meta = read.open_table(META).map_err(|e| self.corrupt(e))?;
        snapshot.next_id = meta
            .get(NEXT_ID)
            .map_err(|e| self.corrupt(e))?
            .map(|v| v.value())
            .unwrap_or(1);
        Ok(snapshot)
    }

    /// Applies all changes in one durable transaction: all or nothing (redb writes copies
    /// of pages and switches to them only when the commit is durable).
    pub fn commit(&mut self, changes: &[Change]) -> Result<(), StateError> {
        if self.db.is_none() {
            // The same checks as at start: a file that went away or was emptied meanwhile is
            // lost state, never a fresh database to write deltas into.
            self.db = Some(open_db(&self.path, true)?);
        }
        let result = self.write(changes).map_err(|e| match e {
            StateError::Db(reason) => self.write_err(reason),
            other => other,
        });
        if result.is_err() {
            // Closed now, reopened by the next commit: a full disk that is freed again must
            // not leave natd unable to write until it restarts.
            self.db = None;
        }
        result
    }

    fn write_err(&self, reason: impl std::fmt::Display) -> StateError {
        StateError::Write {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    fn write(&self, changes: &[Change]) -> Result<(), StateError> {
        let db = self.db.as_ref().ok_or_else(|| db_err("not open"))?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut networks = txn.open_table(NETWORKS).map_err(db_err)?;
            let mut sandboxes = txn.open_table(SANDBOXES).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            for change in changes {
                match change {
                    Change::PutNetwork(n) => {
                        let json = serde_json::to_string(n).map_err(db_err)?;
                        networks.insert(n.name.as_str(), json.as_str()).map_err(db_err)?;
                    }
                    Change::DeleteNetwork(name) => {
                        networks.remove(name.as_str()).map_err(db_err)?;
                    }
                    Change::PutSandbox(s) => {
                        let json = serde_json::to_string(s).map_err(db_err)?;
                        sandboxes.insert(s.name.as_str(), json.as_str()).map_err(db_err)?;
                    }
                    Change::DeleteSandbox(name) => {
                        sandboxes.remove(name.as_str()).map_err(db_err)?;
                    }
                    Change::NextId(id) => {
                        meta.insert(NEXT_ID, *id).map_err(db_err)?;
                    }
                }
            }
        }
        txn.commit().map_err(db_err)
    }
}

/// Opens natd's database. `existing`: the file must be there (a reopen after a failed
/// write), else it is created.
fn open_db(path: &Path, existing: bool) -> Result<Database, StateError> {
    // redb would start an empty (or missing) file afresh, and reconcile would then remove
    // every interface natd made as stale: an existing but empty file is a lost state.
    match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 => {
            return Err(StateError::Corrupt {
                path: path.to_owned(),
                reason: "the file is empty".into(),
            });
        }
        Err(_) if existing => {
            return Err(StateError::Corrupt {
                path: path.to_owned(),
                reason: "the file is gone".into(),
            });
        }
        _ => {}
    }
    // redb caches pages it reads up to its cache size (1 GiB by default): natd reads its
    // records once at start and then writes, so a small cache keeps the daemon's memory
    // to what it holds.
    Database::builder().set_cache_size(STORE_CACHE).create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StateError::InUse {
            path: path.to_owned(),
        },
        // The file system refused (read-only, full, permissions): not a corrupt file.
        redb::DatabaseError::Storage(redb::StorageError::Io(e))
            if !matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            StateError::Open {
                path: path.to_owned(),
                reason: e.to_string(),
            }
        }
        other => StateError::Corrupt {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Driver;

    fn network(name: &str) -> Network {
        Network {
            id: 7,
            name: name.into(),
            driver: Driver::Bridge,
            bridge: "natdb7".into(),
            bridge_adopted: false,
            subnet: "10.9.0.0/24".parse().unwrap(),
            gateway: "10.9.0.1".parse().unwrap(),
            aux_gateway: None,
            ip_range: None,
            subnet_v6: None,
            gateway_v6: None,
            aux_gateway_v6: None,
            internal: false,
            icc: true,
            ip_masq: true,
            mtu: 1500,
            default: false,
            gateway_mode_v4: Default::default(),
            gateway_mode_v6: Default::default(),
            created: 1,
            parent: None,
            overlay: None,
            trusted_host_interfaces: Vec::new(),
            nat: Default::default(),
        }
    }

    #[test]
    fn a_reopen_after_a_failed_write_never_starts_a_fresh_database() {
        let dir = std::env::temp_dir().join(format!("natd-state-reopen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut store, _) = Store::open(&dir).unwrap();
        store.commit(&[Change::PutNetwork(network("a"))]).unwrap();
        let path = dir.join(DB_FILE);
        for (damage, needle) in [("emptied", "the file is empty"), ("removed", "the file is gone")] {
            // As after a failed write: closed, reopened by the next commit.
            store.db = None;
            if damage == "emptied" {
                std::fs::write(&path, b"").unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
            let err = store.commit(&[Change::PutNetwork(network("b"))]).unwrap_err();
            assert!(matches!(err, StateError::Corrupt { .. }), "{damage}: {err}");
            assert!(err.to_string().contains(needle), "{damage}: {err}");
            assert!(
                !path.exists() || std::fs::metadata(&path).unwrap().len() == 0,
                "{damage}: nothing written"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn survives_reopen_and_detects_corruption() {
        let dir = std::env::temp_dir().join(format!("natd-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let (mut store, snap) = Store::open(&dir).unwrap();
            assert!(snap.networks.is_empty());
            assert_eq!(snap.next_id, 1);
            store
                .commit(&[Change::PutNetwork(network("a")), Change::NextId(8)])
                .unwrap();
        }
        {
            let (mut store, snap) = Store::open(&dir).unwrap();
            assert_eq!(snap.networks["a"], network("a"));
            assert_eq!(snap.next_id, 8);
            store.commit(&[Change::DeleteNetwork("a".into())]).unwrap();
        }
        let (_, snap) = Store::open(&dir).unwrap();
        assert!(snap.networks.is_empty());
        drop(snap);

        std::fs::write(
            dir.join(DB_FILE),
            b"this is not a redb file at all, not even close......",
        )
        .unwrap();
        let err = match Store::open(&dir) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("corrupt file opened"),
        };
        assert!(err.contains("corrupt") && err.contains("natd --cleanup"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
