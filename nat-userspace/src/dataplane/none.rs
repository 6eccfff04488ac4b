//! `--dataplane none`: plumbing only (bridges, veths, addresses), no NAT and no isolation;
//! for hosts where something else does the NAT, and for the test suite's reference mode
//! that applies Docker's own iptables rules.
use super::{Dataplane, DataplaneError, Desired, Flow, GcReport, Stats, SyncReport};
use crate::config::DataplaneKind;

pub struct NoDataplane;

impl Dataplane for NoDataplane {
    fn kind(&self) -> DataplaneKind {
        DataplaneKind::None
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
}
