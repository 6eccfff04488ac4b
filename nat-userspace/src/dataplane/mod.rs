//! The NAT dataplane behind one trait: natd computes the desired attachments (and, as the
//! dataplane issues land, mappings) and each implementation makes the kernel match it.
pub mod ebpf;
pub mod nftables;

use crate::config::{DaemonConfig, DataplaneKind};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("eBPF dataplane: {0}")]
    Ebpf(String),
    #[error("nftables dataplane: {0}")]
    Nftables(String),
    #[error("no dataplane could be started: eBPF: {ebpf}; nftables: {nftables}")]
    NoneAvailable { ebpf: String, nftables: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfaceRole {
    Uplink,
    SandboxVeth { network_id: u32 },
}

/// An interface in natd's namespace the dataplane must serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub index: u32,
    pub name: String,
    pub role: IfaceRole,
}

/// What the kernel should look like, computed from natd's state.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub ifaces: Vec<Iface>,
}

/// What a sync changed, for the reconcile report.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub attached: Vec<String>,
    pub detached: Vec<String>,
    pub adopted: Vec<String>,
}

pub trait Dataplane: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Makes the kernel match `desired`: attach what is missing, detach what is stale.
    fn sync(&mut self, desired: &Desired) -> Result<SyncReport, DataplaneError>;
    /// Counters, attachments and map sizes for `natctl info`.
    fn info(&self) -> serde_json::Value;
    /// Removes everything this dataplane put into the kernel (`natd --cleanup`); keeps going
    /// on errors and returns them all.
    fn cleanup(&mut self) -> Vec<String>;
}

/// The one factory: `auto` prefers eBPF and falls back to nftables.
pub fn create(config: &DaemonConfig) -> Result<Box<dyn Dataplane>, DataplaneError> {
    match config.dataplane {
        DataplaneKind::Ebpf => Ok(Box::new(ebpf::EbpfDataplane::open(config)?)),
        DataplaneKind::Nftables => Ok(Box::new(nftables::NftablesDataplane::open(config)?)),
        DataplaneKind::Auto => match ebpf::EbpfDataplane::open(config) {
            Ok(dp) => Ok(Box::new(dp)),
            Err(ebpf_err) => {
                tracing::warn!(error = %ebpf_err, "eBPF dataplane unavailable, trying nftables");
                match nftables::NftablesDataplane::open(config) {
                    Ok(dp) => Ok(Box::new(dp)),
                    Err(nft_err) => Err(DataplaneError::NoneAvailable {
                        ebpf: ebpf_err.to_string(),
                        nftables: nft_err.to_string(),
                    }),
                }
            }
        },
    }
}
