//! Types shared by natd's kernel programs and its agent.
//!
//! Only `#[repr(C)]` integers and byte arrays with explicit padding live here, so the
//! layout is the same on both sides of a map. Sizes are asserted at compile time.
//! Conventions: addresses are 16 bytes (IPv4 in the first 4, the rest zero) with a family
//! byte beside them, so IPv6 needs no new types; ports and addresses are kept in network
//! byte order exactly as they sit in the packet.
#![no_std]

pub mod addr;
pub mod counter;
pub mod names;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Where a program is attached; the agent writes it into `NATD_IFACE_CONFIG`.
pub mod role {
    pub const UPLINK: u32 = 1;
    pub const SANDBOX_VETH: u32 = 2;
}

/// Connection tracking entry kinds: which translation an entry performs.
pub mod ct {
    /// Client -> published host address: rewrite the destination to the sandbox.
    pub const DNAT_FORWARD: u8 = 1;
    /// Sandbox -> client reply: rewrite the source back to the published address.
    pub const DNAT_REPLY: u8 = 2;
    /// Sandbox -> outside: rewrite the source to the uplink address and NAT port.
    pub const SNAT_FORWARD: u8 = 3;
    /// Outside -> uplink address reply: rewrite the destination back to the sandbox.
    pub const SNAT_REPLY: u8 = 4;

    pub const REWRITE_SRC: u8 = 1;
    pub const REWRITE_DST: u8 = 2;

    pub const TCP_SYN_SENT: u8 = 1;
    pub const TCP_ESTABLISHED: u8 = 2;
    pub const TCP_CLOSING: u8 = 3;
    pub const TCP_CLOSED: u8 = 4;
    /// UDP and ICMP: one direction seen / both seen.
    pub const DGRAM_NEW: u8 = 5;
    pub const DGRAM_REPLIED: u8 = 6;
}

/// Per-interface counters, keyed by ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceStats {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<IfaceStats>() == 16);

/// Value of `NATD_IFACE_CONFIG`: what natd attached to this ifindex and why.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceConfig {
    pub role: u32,
    /// Network id for sandbox veths, 0 for uplinks.
    pub network_id: u32,
    /// Uplinks: the address masqueraded traffic leaves with.
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<IfaceConfig>() == 32);

/// A connection tuple as seen at the point of lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// TCP/UDP ports; for ICMP echo the id sits in `sport` of requests and `dport` of replies.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 40);

impl CtKey {
    /// The key of the other direction of the flow this key and `entry` belong to: the
    /// translated tuple, reversed.
    #[inline(always)]
    pub fn peer(&self, entry: &CtEntry) -> CtKey {
        CtKey {
            src: entry.dst,
            dst: entry.src,
            sport: entry.dport,
            dport: entry.sport,
            proto: self.proto,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

/// What a packet with the key's tuple becomes: the complete translated tuple, so one
/// lookup rewrites source, destination or both (hairpin), and the reverse direction's key
/// is this tuple reversed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// `ct::REWRITE_SRC | ct::REWRITE_DST`: which side differs from the key.
    pub rewrite: u8,
    pub kind: u8,
    pub state: u8,
    pub _pad: u8,
    /// The published mapping a DNAT entry belongs to (0 for SNAT).
    pub mapping_id: u32,
    pub _pad2: u32,
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 80);

/// A published host address and port. `addr` all zero: every local address (0.0.0.0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<PortKey>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTarget {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 2],
    pub mapping_id: u32,
}
const _: () = assert!(core::mem::size_of::<PortTarget>() == 24);

/// Keys of `NATD_LOCAL_ADDRS`: the host's own addresses (Docker's `--dst-type LOCAL`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);

/// A natd network as the kernel sees it: in `NATD_NETS_V4` (by subnet, LPM) and
/// `NATD_NETWORKS` (by id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetInfo {
    pub network_id: u32,
    /// `net::ICC | net::INTERNAL | net::MASQ`.
    pub flags: u32,
    pub gateway: [u8; 16],
    pub subnet: [u8; 16],
    pub prefix_len: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<NetInfo>() == 48);

pub mod net {
    pub const ICC: u32 = 1;
    pub const INTERNAL: u32 = 2;
    pub const MASQ: u32 = 4;
}

/// Per-mapping traffic, per CPU, keyed by mapping id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingStats {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<MappingStats>() == 16);

/// A socket whose destination a cgroup hook rewrote, and the address it rewrote it to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockKey {
    pub cookie: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<SockKey>() == 32);

/// The address the application asked for, restored for recvmsg/getpeername.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOrig {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SockOrig>() == 24);

/// Single entry of `NATD_CONFIG`. Timeouts live in the agent's GC; the kernel needs the
/// masquerade port range only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatConfig {
    /// Host byte order, inclusive.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<NatConfig>() == 8);

pub const MAX_IFACES: u32 = 4096;
pub const DEFAULT_CT_ENTRIES: u32 = 131_072;
pub const MAX_PORT_MAPPINGS: u32 = 131_072;
pub const MAX_NETWORKS: u32 = 1024;
pub const MAX_SOCK_REWRITES: u32 = 65_536;
pub const MAX_LOCAL_ADDRS: u32 = 1024;
/// NAT source ports for masquerade when natd has configured none (host byte order,
/// inclusive); natd itself picks a range outside the host's ephemeral ports.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (61000, 65535);
/// How many NAT ports a new masqueraded flow tries before it is dropped.
pub const SNAT_PORT_TRIES: u32 = 32;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] integer/byte-array structs without implicit padding
    // (asserted sizes above), valid for any bit pattern.
    unsafe impl aya::Pod for super::IfaceStats {}
    unsafe impl aya::Pod for super::IfaceConfig {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::PortTarget {}
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::NetInfo {}
    unsafe impl aya::Pod for super::MappingStats {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::SockOrig {}
    unsafe impl aya::Pod for super::NatConfig {}
}
