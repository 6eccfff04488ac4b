//! The copy of natd 0.x's unversioned records under the versioned root.
use super::{
    Cluster, ROOT, UNVERSIONED_ROOT,
    records::migrated_key,
    store::{Cond, Op, StoreError},
};

impl Cluster {
    /// natd 0.x kept its records under `/natd/` without a version: the first natd with
    /// versioned keys copies its networks, subnets, VNIs and claims under `ROOT`, once for
    /// the cluster (hosts and `gone` records belong to running hosts and come back with
    /// them). The old records stay for the natds not upgraded yet, which do not see the
    /// new ones: upgrade every host, then remove them. Returns how many it copied.
    pub async fn migrate_unversioned(&self) -> Result<usize, StoreError> {
        let marker = migrated_key();
        if self.store.range(&marker).await?.1.iter().any(|kv| kv.key == marker) {
            return Ok(0);
        }
        let mut copies: Vec<(String, Vec<u8>)> = Vec::new();
        for kind in ["networks/", "subnets/", "vnis/", "ips/"] {
            let (_, old) = self.store.range(&format!("{UNVERSIONED_ROOT}{kind}")).await?;
            copies.extend(old.iter().filter_map(|kv| {
                let rest = kv.key.strip_prefix(UNVERSIONED_ROOT)?;
                Some((format!("{ROOT}{rest}"), kv.value.clone()))
            }));
        }
        let mut copied = 0;
        // Each key only if absent (a natd of this version may have written it meanwhile);
        // the bounds of one etcd transaction as in `collect_vanished`.
        for batch in copies.chunks(64) {
            let when: Vec<Cond> = batch.iter().map(|(key, _)| Cond::Absent(key.clone())).collect();
            let then: Vec<Op> = batch
                .iter()
                .map(|(key, value)| Op::Put { key: key.clone(), value: value.clone(), lease: None })
                .collect();
            if self.store.txn(&when, &then).await?.is_some() {
                copied += batch.len();
                continue;
            }
            for (key, value) in batch {
                let put = Op::Put { key: key.clone(), value: value.clone(), lease: None };
                if self.store.txn(&[Cond::Absent(key.clone())], &[put]).await?.is_some() {
                    copied += 1;
                }
            }
        }
        let done = Op::Put { key: marker.clone(), value: b"1".to_vec(), lease: None };
        self.store.txn(&[Cond::Absent(marker)], &[done]).await?;
        Ok(copied)
    }

}
