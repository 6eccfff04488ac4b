//! The nftables fallback dataplane. Its rules (natd's own table, atomic nftnl batches) are
//! the subject of their own issue; until then selecting it is a clear error, never a
//! silent no-op.
use super::{Dataplane, DataplaneError, Desired, Flow, GcReport, Stats, SyncReport};
use crate::config::DaemonConfig;

pub struct NftablesDataplane;

impl NftablesDataplane {
    pub fn open(_config: &DaemonConfig) -> Result<Self, DataplaneError> {
        Err(DataplaneError::Nftables(
            "not available in this version of natd (use --dataplane ebpf)".into(),
        ))
    }
}

impl Dataplane for NftablesDataplane {
    fn kind(&self) -> &'static str {
        "nftables"
    }
    fn sync(&mut self, _desired: &Desired) -> Result<SyncReport, DataplaneError> {
        Ok(SyncReport::default())
    }
    fn gc(&mut self) -> Result<GcReport, DataplaneError> {
        Ok(GcReport::default())
    }
    fn info(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn stats(&self) -> Stats {
        Stats::default()
    }
    fn flows(&self) -> Vec<Flow> {
        Vec::new()
    }
    fn cleanup(&mut self) -> Vec<String> {
        Vec::new()
    }
}
