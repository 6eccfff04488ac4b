//! Types shared by natd's kernel programs and its agent.
//!
//! Only `#[repr(C)]` integers and byte arrays with explicit padding live here, so the
//! layout is the same on both sides of the map. Sizes are asserted at compile time.
#![no_std]

/// Per-CPU counters kept by the TC programs, indexed by these ids.
pub mod counter {
    pub const PACKETS_SEEN: u32 = 0;
    pub const BYTES_SEEN: u32 = 1;
    pub const IPV4: u32 = 2;
    pub const IPV6: u32 = 3;
    pub const TCP: u32 = 4;
    pub const UDP: u32 = 5;
    pub const ICMP: u32 = 6;
    pub const OTHER_L3: u32 = 7;
    /// Frames too short for the headers they announce; they pass untouched.
    pub const MALFORMED: u32 = 8;
    pub const COUNT: u32 = 16;

    /// Names in id order, for `natctl info` and the benchmark report.
    pub const NAMES: [&str; 9] = [
        "packets_seen",
        "bytes_seen",
        "ipv4",
        "ipv6",
        "tcp",
        "udp",
        "icmp",
        "other_l3",
        "malformed",
    ];
}

/// Where a program is attached; the agent writes it into `IFACE_ROLE` so one program can
/// serve every interface and still count per role.
pub mod role {
    pub const UPLINK: u32 = 1;
    pub const SANDBOX_VETH: u32 = 2;
}

/// Per-interface counters, keyed by ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceStats {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<IfaceStats>() == 16);

/// Value of `IFACE_ROLE`: what natd attached to this ifindex and why.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceConfig {
    pub role: u32,
    /// Network id (index into natd's networks) for veths, 0 for uplinks.
    pub network_id: u32,
}

const _: () = assert!(core::mem::size_of::<IfaceConfig>() == 8);

pub const MAX_IFACES: u32 = 4096;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain integer structs without padding holes.
    unsafe impl aya::Pod for super::IfaceStats {}
    // SAFETY: plain integer structs without padding holes.
    unsafe impl aya::Pod for super::IfaceConfig {}
}
