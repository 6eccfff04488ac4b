//! natd: Docker-style bridge networking for network namespaces, with the NAT done by eBPF.
pub mod api;
pub mod client;
pub mod cluster;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod ipam;
pub mod ipam6;
pub mod metrics;
pub mod model;
pub mod portspec;
pub mod server;
pub mod state;
pub mod sys;

/// The kernel programs, built by build.rs from the nat-ebpf crate.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nat-ebpf"));

/// The object natd loads: its own, or in test builds (`failpoints`) the one
/// `NATD_EBPF_OBJECT` names, so a test can play an earlier natd's datapath (the fixture of
/// the previous layout) with this natd's agent.
pub fn ebpf_object() -> std::borrow::Cow<'static, [u8]> {
    #[cfg(feature = "failpoints")]
    if let Some(path) = std::env::var_os("NATD_EBPF_OBJECT") {
        return std::fs::read(&path)
            .unwrap_or_else(|e| panic!("NATD_EBPF_OBJECT {}: {e}", std::path::Path::new(&path).display()))
            .into();
    }
    EBPF_OBJECT.into()
}

/// The layout version of `ebpf_object()`'s maps (what a start records): this natd's, or
/// in a test build the one `NATD_EBPF_OBJECT_LAYOUT` gives the earlier natd's object it
/// plays (that natd recorded its own).
pub fn ebpf_object_layout() -> u32 {
    #[cfg(feature = "failpoints")]
    if let Some(version) = std::env::var("NATD_EBPF_OBJECT_LAYOUT").ok().and_then(|v| v.parse().ok()) {
        return version;
    }
    nat_common::LAYOUT_VERSION
}

/// FNV-1a over `bytes`: a hash that stays the same across builds and restarts (std's does
/// not promise that), for names and MACs derived from other names.
pub fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
