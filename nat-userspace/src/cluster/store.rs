//! The cluster store behind one small interface: a key-value store with transactions on
//! "absent" and "has this value", leases, and a watch from a revision. etcd implements
//! it (`etcd.rs`); Consul or ZooKeeper could, natd's overlay logic would not change.
use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cluster store unreachable: {0}")]
    Unavailable(String),
    #[error("cluster store refused the request: {0}")]
    Refused(String),
    /// The store answered, but natd's settings for it are wrong (a certificate, a password):
    /// names the option. At start this stops natd.
    #[error("cluster store settings: {0}")]
    Misconfigured(String),
    #[error("cluster store answered something natd cannot read: {0}")]
    Protocol(String),
    /// The watch asked for history the store has compacted: list again.
    #[error("cluster store compacted its history up to revision {0}")]
    Compacted(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    /// The lease the key lives under (0: none).
    pub lease: i64,
}

/// A condition of a transaction.
#[derive(Clone, Debug)]
pub enum Cond {
    /// The key does not exist.
    Absent(String),
    /// The key exists with exactly this value.
    ValueIs(String, Vec<u8>),
    /// The key exists.
    Present(String),
    /// No key under the prefix changed after `revision` (none created, changed or, through
    /// the parent's own condition, deleted).
    UnchangedSince { prefix: String, revision: i64 },
}

/// A write of a transaction.
#[derive(Clone, Debug)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<i64>,
    },
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    Delete(String),
}

#[async_trait]
pub trait Watch: Send {
    /// The next batch of changes (one store transaction) and the revision it made.
    async fn next(&mut self) -> Result<(i64, Vec<Event>), StoreError>;
}

#[async_trait]
pub trait ClusterStore: Send + Sync {
    /// How the operator named the store (for messages).
    fn describe(&self) -> String;
    /// Every key under `prefix`, and the store's revision they were read at.
    async fn range(&self, prefix: &str) -> Result<(i64, Vec<Kv>), StoreError>;
    /// Applies `then` if every condition of `when` holds; returns the revision it made, or
    /// None when a condition did not hold.
    async fn txn(&self, when: &[Cond], then: &[Op]) -> Result<Option<i64>, StoreError>;
    /// A lease of `ttl` seconds: keys put with it go when it is not kept alive.
    async fn grant(&self, ttl: u64) -> Result<i64, StoreError>;
    /// Renews the lease; false when the store no longer knows it (it expired).
    async fn keepalive(&self, lease: i64) -> Result<bool, StoreError>;
    async fn revoke(&self, lease: i64) -> Result<(), StoreError>;
    /// Changes under `prefix` from `from_revision` on.
    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<Box<dyn Watch>, StoreError>;
}
