//! Hosts that died for good: a live host notes that a host holding claims is no longer
//! registered (`gone/<id>`), and releases its claims once it has seen that record for the
//! claim grace, on its own monotonic clock.
use std::collections::BTreeMap;

use super::{
    Claim, Cluster, GoneRecord, ROOT,
    records::{decode, gone_key, host_key, unix_now},
    store::{Cond, Kv, Op, StoreError},
};

impl Cluster {
    /// Releases the claims of hosts whose registration has been gone longer than the
    /// claim grace (a host that died and never came back), and notes that a host is gone
    /// for hosts that just vanished. Any live host may run it; the store's conditions make
    /// concurrent runs harmless. The grace is measured on this host's monotonic clock from
    /// when it first saw the record (never by comparing clocks of two hosts), so a host
    /// that restarts waits a whole grace again. Returns what it did, for the log.
    pub async fn collect_vanished(&self) -> Result<Vec<String>, StoreError> {
        let view = self.view();
        if !view.loaded {
            return Ok(Vec::new());
        }
        let owners: std::collections::BTreeSet<&String> = view
            .claims
            .values()
            .flat_map(|claims| claims.values().map(|c| &c.host))
            .filter(|host| **host != self.host_id && !view.hosts.contains_key(*host))
            .collect();
        let prefix = format!("{ROOT}gone/");
        let (_, kvs) = self.store.range(&prefix).await?;
        let gone: BTreeMap<String, Vec<u8>> = kvs
            .iter()
            .filter_map(|kv| Some((kv.key.strip_prefix(&prefix)?.to_string(), kv.value.clone())))
            .collect();
        let mut done = Vec::new();
        for host in owners.iter().filter(|h| !gone.contains_key(**h)) {
            let record = serde_json::to_vec(&GoneRecord { since: unix_now() }).expect("record serializes");
            let when = [Cond::Absent(gone_key(host)), Cond::Absent(host_key(host))];
            let put = Op::Put { key: gone_key(host), value: record, lease: None };
            if self.store.txn(&when, &[put]).await?.is_some() {
                done.push(format!(
                    "host {host} holds address claims and is no longer registered: its claims are released after {} s",
                    self.claim_grace
                ));
            }
        }
        let now = std::time::Instant::now();
        let due: Vec<(String, Vec<u8>)> = {
            let mut seen = self.gone_seen.lock().expect("gone lock");
            seen.retain(|host, (raw, _)| gone.get(host) == Some(raw));
            for (host, raw) in &gone {
                seen.entry(host.clone()).or_insert_with(|| (raw.clone(), now));
            }
            seen.iter()
                .filter(|(_, (_, first))| now.duration_since(*first).as_secs() >= self.claim_grace)
                .map(|(host, (raw, _))| (host.clone(), raw.clone()))
                .collect()
        };
        for (host, raw) in gone.iter().filter(|(host, _)| view.hosts.contains_key(*host)) {
            // Registered again (by a natd that does not remove its record): not gone.
            let when = [Cond::ValueIs(gone_key(host), raw.clone())];
            self.store.txn(&when, &[Op::Delete { key: gone_key(host) }]).await?;
        }
        for (host, raw) in due.iter().filter(|(host, _)| !view.hosts.contains_key(host)) {
            let (_, claims) = self.store.range(&format!("{ROOT}ips/")).await?;
            let theirs: Vec<&Kv> = claims
                .iter()
                .filter(|kv| decode::<Claim>(kv).is_ok_and(|c| c.host == *host))
                .collect();
            // etcd bounds the compares and the operations of one transaction (128 each by
            // default); each claim is deleted only if it is still that host's (another
            // host's collector may have freed it already, and it may be claimed anew).
            let mut released = 0;
            for batch in theirs.chunks(64) {
                let mut when = vec![Cond::Absent(host_key(host)), Cond::ValueIs(gone_key(host), raw.clone())];
                when.extend(batch.iter().map(|kv| Cond::ValueIs(kv.key.clone(), kv.value.clone())));
                let ops: Vec<Op> = batch.iter().map(|kv| Op::Delete { key: kv.key.clone() }).collect();
                if self.store.txn(&when, &ops).await?.is_some() {
                    released += batch.len();
                }
            }
            let when = [Cond::Absent(host_key(host)), Cond::ValueIs(gone_key(host), raw.clone())];
            if self.store.txn(&when, &[Op::Delete { key: gone_key(host) }]).await?.is_some() {
                self.gone_seen.lock().expect("gone lock").remove(host);
                done.push(format!(
                    "released {released} address claims of host {host}, unregistered for at least {} s (claim grace)",
                    self.claim_grace
                ));
            }
        }
        Ok(done)
    }
}
