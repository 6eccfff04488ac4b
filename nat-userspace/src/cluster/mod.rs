//! Overlay networks' shared state: which hosts are alive, which overlay networks exist,
//! and which address each sandbox on them has, kept in a cluster store (etcd).
//!
//! Keys (JSON values), under `/natd/v1/` (the schema's version: a later layout gets its
//! own prefix and a migration, as `migrate_unversioned` does for natd 0.x's `/natd/`):
//! - `hosts/<host id>`: a live host and its underlay address, under the host's lease, so a
//!   host that stops renewing disappears within the lease's TTL;
//! - `networks/<name>`, `subnets/<cidr>`, `vnis/<vni>`: an overlay network, created in one
//!   transaction that also claims its subnet and VNI (two hosts cannot create either twice);
//! - `ips/<network>/<address>`: an address claim (host, sandbox, MAC). Claims are not
//!   leased: a partition longer than the TTL must not hand a running sandbox's address to
//!   another host; the owner's liveness comes from its host key instead;
//! - `gone/<host id>`: a host that holds claims has no registration, written by the first
//!   live host to notice; once a live host has seen the same record for the claim grace
//!   (on its own monotonic clock), it releases the host's claims (transactions of 64 keys,
//!   each deleted only if unchanged, on condition that the host is still unregistered and
//!   the record unchanged). A host that registers again removes its record (and a live
//!   host removes the record of a registered host).
pub mod agent;
pub mod etcd;
mod migrate;
mod records;
pub mod store;
pub mod validate;
mod vanished;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use ipnetwork::Ipv4Network;

pub use records::{
    Claim, ClusterView, GoneRecord, HostRecord, OverlayRecord, ROOT, UNVERSIONED_ROOT, claim_key, host_key,
    network_key,
};
pub(crate) use records::migrated_key;
use records::{claims_prefix, decode, gone_key, subnet_key, vni_key};
use store::{ClusterStore, Cond, Event, Op, StoreError};

/// Why an overlay network could not be created in the store.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("network with name {0} already exists")]
    NameTaken(String),
    #[error("subnet {0} is already used by overlay network {1}")]
    SubnetTaken(Ipv4Network, String),
    #[error("VNI {0} is already used by overlay network {1}")]
    VniTaken(u32, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a lease renewal did.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// First registration (the store was unreachable when natd started).
    Registered,
    /// The store had dropped the lease (it expired): the host's key was gone meanwhile.
    Reregistered,
    /// The lease was alive but the host's key said something else (another writer changed
    /// or removed it): written again.
    Restored,
}

/// What claiming an address found.
#[derive(Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    Claimed,
    /// Someone else has it.
    Taken(Claim),
}

/// natd's membership of one cluster.
pub struct Cluster {
    pub host_id: String,
    pub host_name: String,
    pub advertise: Ipv4Addr,
    /// Seconds a dead host's entries may outlive it.
    pub ttl: u64,
    /// Seconds a host must have been unregistered before its claims are released.
    pub claim_grace: u64,
    pub store: Arc<dyn ClusterStore>,
    view: Mutex<ClusterView>,
    lease: Mutex<Option<i64>>,
    /// `gone/<host>` records as first seen by this host: (value, when).
    gone_seen: Mutex<BTreeMap<String, (Vec<u8>, std::time::Instant)>>,
    /// The last list of the whole tree succeeded: background work that would otherwise wait
    /// for a store that is down (inside requests, under the daemon's lock) is skipped, and
    /// the agent catches up when the store answers again.
    reachable: std::sync::atomic::AtomicBool,
    /// Records not applied, as last reported: each is logged when it first appears.
    rejected: Mutex<BTreeMap<String, String>>,
    /// The unversioned records were looked at (and copied if there were any).
    migrated: std::sync::atomic::AtomicBool,
}

impl Cluster {
    pub fn new(
        host_id: String,
        host_name: String,
        advertise: Ipv4Addr,
        ttl: u64,
        claim_grace: u64,
        store: Arc<dyn ClusterStore>,
    ) -> Self {
        Self {
            host_id,
            host_name,
            advertise,
            ttl,
            claim_grace,
            store,
            view: Mutex::default(),
            lease: Mutex::default(),
            gone_seen: Mutex::default(),
            reachable: std::sync::atomic::AtomicBool::new(false),
            rejected: Mutex::default(),
            migrated: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Records natd does not apply now (key -> why); a record that newly appears among
    /// them (or is refused for another reason) is logged once.
    pub fn report_rejected(&self, now: BTreeMap<String, String>) {
        let mut reported = self.rejected.lock().expect("rejected lock");
        for (key, why) in &now {
            if reported.get(key) != Some(why) {
                tracing::warn!(%key, "cluster store record not applied: {why}");
            }
        }
        *reported = now;
    }

    pub fn rejected_records(&self) -> BTreeMap<String, String> {
        self.rejected.lock().expect("rejected lock").clone()
    }

    pub fn view(&self) -> ClusterView {
        self.view.lock().expect("cluster view lock").clone()
    }

    /// Lists the whole tree again: the view is then exactly the store's.
    pub async fn refresh(&self) -> Result<i64, StoreError> {
        let listed = self.store.range(ROOT).await;
        self.reachable.store(listed.is_ok(), std::sync::atomic::Ordering::Relaxed);
        let (mut revision, mut kvs) = listed?;
        if !self.migrated.swap(true, std::sync::atomic::Ordering::Relaxed) {
            // Once per process, with the store answering: a copy that fails is said once
            // and not retried (a later natd's start tries again; the copy is idempotent).
            match self.migrate_unversioned().await {
                Ok(0) => {}
                Ok(copied) => {
                    tracing::info!(copied, "copied natd 0.x's unversioned cluster records (under {UNVERSIONED_ROOT}) to {ROOT}");
                    (revision, kvs) = self.store.range(ROOT).await?;
                }
                Err(e) => tracing::warn!("copying natd 0.x's cluster records to {ROOT}: {e}"),
            }
        }
        let mut view = self.view.lock().expect("cluster view lock");
        // Two listers (the agent, a request's plan): the view never goes back in time.
        if !view.loaded || revision >= view.revision {
            *view = ClusterView::from_kvs(revision, &kvs);
        }
        Ok(revision)
    }

    /// Whether the store answered the last list (see `reachable`).
    pub fn reachable(&self) -> bool {
        self.reachable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A watch or request found the store gone.
    pub fn mark_unreachable(&self) {
        self.reachable.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Applies watched events on top of the view.
    pub fn apply(&self, revision: i64, events: &[Event]) {
        let mut view = self.view.lock().expect("cluster view lock");
        if revision <= view.revision {
            return; // A newer list already has these changes.
        }
        for event in events {
            match event {
                Event::Put(kv) => view.put(kv),
                Event::Delete(key) => view.delete(key),
            }
        }
        view.revision = revision;
    }

    fn host_record(&self) -> Vec<u8> {
        serde_json::to_vec(&HostRecord {
            id: self.host_id.clone(),
            name: self.host_name.clone(),
            addr: self.advertise,
        })
        .expect("host record serializes")
    }

    /// A new lease and the host key under it (after start, or when the lease was lost).
    pub async fn register(&self) -> Result<(), StoreError> {
        let lease = self.store.grant(self.ttl).await?;
        let put = Op::Put {
            key: host_key(&self.host_id),
            value: self.host_record(),
            lease: Some(lease),
        };
        // Back: no longer a host whose claims wait to be released.
        let back = Op::Delete {
            key: gone_key(&self.host_id),
        };
        if let Err(e) = self.store.txn(&[], &[put, back]).await {
            let _ = self.store.revoke(lease).await;
            return Err(e);
        }
        *self.lease.lock().expect("lease lock") = Some(lease);
        Ok(())
    }

    /// Renews the lease, registering (again) when there is none or the store forgot it.
    pub async fn keepalive(&self) -> Result<Renewal, StoreError> {
        let lease = *self.lease.lock().expect("lease lock");
        match lease {
            Some(lease) if self.store.keepalive(lease).await? => {
                // Another writer may have put its own address under this host's id (its
                // sandboxes' traffic would go there) or removed the key.
                let key = host_key(&self.host_id);
                let record = self.host_record();
                // Best effort: the renewal itself succeeded whatever this read finds.
                let Ok((_, kvs)) = self.store.range(&key).await else {
                    return Ok(Renewal::Renewed);
                };
                if kvs.iter().any(|kv| kv.key == key && kv.value == record && kv.lease == lease) {
                    return Ok(Renewal::Renewed);
                }
                let put = Op::Put { key, value: record, lease: Some(lease) };
                match self.store.txn(&[], &[put]).await {
                    Ok(_) => Ok(Renewal::Restored),
                    Err(_) => Ok(Renewal::Renewed),
                }
            }
            Some(_) => {
                self.register().await?;
                Ok(Renewal::Reregistered)
            }
            None => {
                self.register().await?;
                Ok(Renewal::Registered)
            }
        }
    }

    /// Removes this host's registration now rather than when its lease runs out.
    pub async fn deregister(&self) -> Result<(), StoreError> {
        self.store
            .txn(
                &[],
                &[Op::Delete {
                    key: host_key(&self.host_id),
                }],
            )
            .await?;
        Ok(())
    }

    /// Creates the network with its subnet and VNI, if none of the three is taken and no
    /// other subnet was taken after `since` (the revision the caller checked overlaps at:
    /// two hosts creating overlapping subnets at once cannot both succeed).
    pub async fn create_network(&self, record: &OverlayRecord, since: i64) -> Result<(), CreateError> {
        let value = serde_json::to_vec(record).expect("network record serializes");
        let name = record.name.as_bytes().to_vec();
        let keys = [
            network_key(&record.name),
            subnet_key(record.subnet),
            vni_key(record.vni),
        ];
        let mut when: Vec<Cond> = keys.iter().cloned().map(Cond::Absent).collect();
        when.push(Cond::UnchangedSince {
            prefix: format!("{ROOT}subnets/"),
            revision: since,
        });
        let then = vec![
            Op::Put {
                key: keys[0].clone(),
                value,
                lease: None,
            },
            Op::Put {
                key: keys[1].clone(),
                value: name.clone(),
                lease: None,
            },
            Op::Put {
                key: keys[2].clone(),
                value: name,
                lease: None,
            },
        ];
        if self.store.txn(&when, &then).await?.is_some() {
            return Ok(());
        }
        let owner = |key: &str| {
            let key = key.to_string();
            async move {
                let (_, kvs) = self.store.range(&key).await?;
                Ok::<_, StoreError>(kvs.into_iter().find(|kv| kv.key == key).map(|kv| kv.value))
            }
        };
        if owner(&keys[0]).await?.is_some() {
            return Err(CreateError::NameTaken(record.name.clone()));
        }
        if let Some(by) = owner(&keys[1]).await? {
            return Err(CreateError::SubnetTaken(
                record.subnet,
                String::from_utf8_lossy(&by).into(),
            ));
        }
        if let Some(by) = owner(&keys[2]).await? {
            return Err(CreateError::VniTaken(
                record.vni,
                String::from_utf8_lossy(&by).into(),
            ));
        }
        Err(CreateError::Store(StoreError::Refused(
            "the store changed under the request; try again".into(),
        )))
    }

    /// Removes the network and everything under it, if it is still the one `record` says
    /// and (with `since`) no address of it was claimed after that revision.
    pub async fn remove_network(&self, record: &OverlayRecord, since: Option<i64>) -> Result<bool, StoreError> {
        let value = serde_json::to_vec(record).expect("network record serializes");
        let mut when = vec![Cond::ValueIs(network_key(&record.name), value)];
        if let Some(revision) = since {
            when.push(Cond::UnchangedSince {
                prefix: claims_prefix(&record.name),
                revision,
            });
        }
        let then = [
            Op::Delete {
                key: network_key(&record.name),
            },
            Op::Delete {
                key: subnet_key(record.subnet),
            },
            Op::Delete {
                key: vni_key(record.vni),
            },
            Op::DeletePrefix {
                prefix: claims_prefix(&record.name),
            },
        ];
        Ok(self.store.txn(&when, &then).await?.is_some())
    }

    /// The network's record as the store has it now.
    pub async fn network_record(&self, name: &str) -> Result<Option<OverlayRecord>, StoreError> {
        let key = network_key(name);
        let (_, kvs) = self.store.range(&key).await?;
        Ok(kvs.iter().find(|kv| kv.key == key).and_then(|kv| decode(kv).ok()))
    }

    /// The store's current claims of `network` (not the view's: callers decide on them).
    pub async fn claims(&self, network: &str) -> Result<BTreeMap<Ipv4Addr, Claim>, StoreError> {
        let (_, kvs) = self.store.range(&claims_prefix(network)).await?;
        let prefix = claims_prefix(network);
        Ok(kvs
            .iter()
            .filter_map(|kv| Some((kv.key.strip_prefix(&prefix)?.parse().ok()?, decode(kv).ok()?)))
            .collect())
    }

    /// Claims `ip` on `network` for `claim`, unless someone has it already or the network
    /// is no longer in the cluster.
    pub async fn claim(&self, network: &str, ip: Ipv4Addr, claim: &Claim) -> Result<ClaimOutcome, StoreError> {
        let key = claim_key(network, ip);
        let value = serde_json::to_vec(claim).expect("claim serializes");
        // Bounded: a claim released between the two steps is tried again, a few times.
        for _ in 0..3 {
            let put = Op::Put {
                key: key.clone(),
                value: value.clone(),
                lease: None,
            };
            let when = [Cond::Absent(key.clone()), Cond::Present(network_key(network))];
            if self.store.txn(&when, &[put]).await?.is_some() {
                return Ok(ClaimOutcome::Claimed);
            }
            match self.claims(network).await?.remove(&ip) {
                Some(owner) if owner == *claim => return Ok(ClaimOutcome::Claimed),
                Some(owner) if owner.host == self.host_id && owner.sandbox == claim.sandbox => {
                    // Our own claim for this sandbox (a retry): brought up to date, unless it
                    // changed meanwhile (then the next round looks again).
                    let replaced = self.replace_claim(network, ip, &owner, claim).await?;
                    if replaced {
                        return Ok(ClaimOutcome::Claimed);
                    }
                }
                Some(owner) => return Ok(ClaimOutcome::Taken(owner)),
                None if self.network_record(network).await?.is_none() => {
                    return Err(StoreError::Refused(format!(
                        "overlay network {network} no longer exists in the cluster"
                    )));
                }
                None => {}
            }
        }
        Err(StoreError::Refused(format!(
            "the claim of {ip} on {network} keeps changing; try again"
        )))
    }

    /// Replaces this host's claim `old` with `new` (e.g. with the MAC now known).
    pub async fn replace_claim(&self, network: &str, ip: Ipv4Addr, old: &Claim, new: &Claim) -> Result<bool, StoreError> {
        let key = claim_key(network, ip);
        let when = [Cond::ValueIs(key.clone(), serde_json::to_vec(old).expect("claim serializes"))];
        let put = Op::Put {
            key,
            value: serde_json::to_vec(new).expect("claim serializes"),
            lease: None,
        };
        Ok(self.store.txn(&when, &[put]).await?.is_some())
    }

    /// Gives back `ip` if `claim` still holds it.
    pub async fn release(&self, network: &str, ip: Ipv4Addr, claim: &Claim) -> Result<bool, StoreError> {
        let key = claim_key(network, ip);
        let when = [Cond::ValueIs(key.clone(), serde_json::to_vec(claim).expect("claim serializes"))];
        Ok(self.store.txn(&when, &[Op::Delete { key }]).await?.is_some())
    }

}
