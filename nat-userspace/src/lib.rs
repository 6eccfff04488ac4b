//! natd: Docker-style bridge networking for network namespaces, with the NAT done by eBPF.
pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod ipam;
pub mod model;
pub mod portspec;
pub mod server;
pub mod state;
pub mod sys;

/// The kernel programs, built by build.rs from the nat-ebpf crate.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nat-ebpf"));
