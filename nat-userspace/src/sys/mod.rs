//! Kernel plumbing with no natd policy in it: each module wraps one kind of kernel
//! interface, and is the only place natd uses that interface.
pub mod arp;
pub mod bpf_link;
pub mod bpf_map;
pub mod memory;
pub mod netfilter;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod process;
pub mod sockets;
pub mod sysctl;
pub mod vxlan;
