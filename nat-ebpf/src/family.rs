//! What differs between IPv4 and IPv6 for translation, behind one trait implemented by the
//! address types themselves (`u32` and `Addr6`, both as loaded from the packet): the maps
//! of the family, header offsets, the ICMP flavour, and the few address classes the
//! policy needs. Connection tracking, NAT and forwarding are written once over `Family`.
use aya_ebpf::{
    bindings::bpf_fib_lookup,
    maps::{HashMap, LruHashMap, lpm_trie::Key},
    programs::TcContext,
};
use nat_common::{
    Addr6, CtEntry, CtKey, EndpointInfo, IfaceConfig, NetInfo4, NetInfo6, PROTO_ICMP, PROTO_ICMPV6, PortKey,
    PortTarget, Punch, PunchKey, SnatKey, SnatMapping, SnatOwner, SnatPeerKey, SourceQuota, csum,
};

use crate::{
    conntrack::Scratch,
    lookup,
    maps::{
        NATD_CT4, NATD_CT4_NEW, NATD_CT6, NATD_CT6_NEW, NATD_ENDPOINTS4, NATD_ENDPOINTS6, NATD_LOCAL4,
        NATD_LOCAL6, NATD_NETS4, NATD_NETS6, NATD_PACKETS4, NATD_PACKETS6, NATD_PORTS4, NATD_PORTS6, NATD_PUNCH4,
        NATD_PUNCH6, NATD_SNAT4_SHARED, NATD_SNAT6_SHARED,
        NATD_QUOTA4, NATD_QUOTA6, NATD_SCRATCH, NATD_SCRATCH6, NATD_SNAT4, NATD_SNAT4_PEERS, NATD_SNAT4_PORTS,
        NATD_SNAT6, NATD_SNAT6_PEERS, NATD_SNAT6_PORTS,
    },
    parse::{self, Malformed, Packet, Position},
};

/// A network as one family sees it.
#[derive(Clone, Copy)]
pub struct Net<A> {
    pub network_id: u32,
    /// `net::*` for this family's traffic.
    pub flags: u32,
    pub gateway: A,
    pub bridge_ifindex: u32,
}

impl From<NetInfo4> for Net<u32> {
    #[inline(always)]
    fn from(info: NetInfo4) -> Self {
        Self {
            network_id: info.network_id,
            flags: info.flags,
            gateway: info.gateway,
            bridge_ifindex: info.bridge_ifindex,
        }
    }
}

impl From<NetInfo6> for Net<Addr6> {
    #[inline(always)]
    fn from(info: NetInfo6) -> Self {
        Self {
            network_id: info.network_id,
            flags: info.flags,
            gateway: info.gateway,
            bridge_ifindex: info.bridge_ifindex,
        }
    }
}

pub trait Family: Copy + PartialEq + Default + 'static {
    /// 4 or 6, for counters.
    const VERSION: u8;
    /// The ICMP protocol number of the family and its echo types.
    const ICMP: u8;
    const ECHO_REQUEST: u8;
    const ECHO_REPLY: u8;
    /// Fixed IP header length; addresses' offsets in it; the TTL / hop limit offset.
    const IP_HLEN: usize;
    const SRC_AT: usize;
    const DST_AT: usize;
    const TTL_AT: usize;

    fn ct() -> &'static HashMap<CtKey<Self>, CtEntry<Self>>;
    fn ct_new() -> &'static LruHashMap<CtKey<Self>, CtEntry<Self>>;
    fn scratch_ptr() -> Option<*mut Scratch<Self>>;
    fn ports() -> &'static HashMap<PortKey<Self>, PortTarget<Self>>;
    fn endpoints() -> &'static HashMap<Self, EndpointInfo>;
    fn local() -> &'static HashMap<Self, u32>;
    fn quota() -> &'static LruHashMap<Self, SourceQuota>;
    fn snat() -> &'static HashMap<SnatKey<Self>, SnatMapping>;
    fn snat_ports() -> &'static HashMap<PortKey<Self>, SnatOwner<Self>>;
    fn snat_peers() -> &'static LruHashMap<SnatPeerKey<Self>, u32>;
    fn punches() -> &'static LruHashMap<PunchKey<Self>, Punch<Self>>;
    fn snat_shared() -> &'static LruHashMap<PortKey<Self>, SnatOwner<Self>>;
    /// natd's network whose subnet holds `addr`.
    fn network_of(addr: Self) -> Option<Net<Self>>;
    /// The network a sandbox veth belongs to, as this family sees it.
    fn own_network(cfg: &IfaceConfig) -> Option<Net<Self>>;
    fn is_loopback(self) -> bool;
    /// A destination every host on the link receives (IPv4's limited broadcast and
    /// multicast; IPv6 multicast is link traffic, judged in `ndp`).
    fn is_broadcast(self) -> bool;
    fn is_zero(self) -> bool {
        self == Self::default()
    }
    /// What a per-source quota counts the originator of a flow of entry kind `kind` under:
    /// the address (IPv4), `nat_common::quota_key6` (IPv6).
    fn quota_key(self, kind: u8) -> Self;
    /// Edges: the address masquerade uses; sandbox veths: the sandbox's own address.
    fn of_iface(cfg: &IfaceConfig) -> Self;
    /// The checksum difference of replacing one address (by reference: IPv6 addresses
    /// are not copied onto the stack for it).
    fn csum_diff1(old: &Self, new: &Self) -> u32;
    /// The family and addresses of a route lookup.
    fn fib_fill(params: &mut bpf_fib_lookup, src: Self, dst: Self);
    /// ICMP error types natd translates (they quote the packet they are about).
    fn is_icmp_error(icmp_type: u8) -> bool;
    /// The IP header at `l3` (its own or one quoted inside an ICMP error), into `out`.
    fn parse_into(
        ctx: &TcContext,
        l3: usize,
        position: Position,
        out: &mut Packet<Self>,
    ) -> Result<(), Malformed>;
    /// This CPU's packet slot `index` (`NATD_PACKETS4/6`).
    fn packet_slot(index: u32) -> Option<&'static mut Packet<Self>>;
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

impl Family for u32 {
    const VERSION: u8 = 4;
    const ICMP: u8 = PROTO_ICMP;
    const ECHO_REQUEST: u8 = 8;
    const ECHO_REPLY: u8 = 0;
    const IP_HLEN: usize = 20;
    const SRC_AT: usize = 12;
    const DST_AT: usize = 16;
    const TTL_AT: usize = 8;

    #[inline(always)]
    fn ct() -> &'static HashMap<CtKey<u32>, CtEntry<u32>> {
        &NATD_CT4
    }
    #[inline(always)]
    fn ct_new() -> &'static LruHashMap<CtKey<u32>, CtEntry<u32>> {
        &NATD_CT4_NEW
    }
    #[inline(always)]
    fn scratch_ptr() -> Option<*mut Scratch<u32>> {
        NATD_SCRATCH.get_ptr_mut(0)
    }
    #[inline(always)]
    fn ports() -> &'static HashMap<PortKey<u32>, PortTarget<u32>> {
        &NATD_PORTS4
    }
    #[inline(always)]
    fn endpoints() -> &'static HashMap<u32, EndpointInfo> {
        &NATD_ENDPOINTS4
    }
    #[inline(always)]
    fn local() -> &'static HashMap<u32, u32> {
        &NATD_LOCAL4
    }
    #[inline(always)]
    fn quota() -> &'static LruHashMap<u32, SourceQuota> {
        &NATD_QUOTA4
    }

    fn snat() -> &'static HashMap<SnatKey<u32>, SnatMapping> {
        &NATD_SNAT4
    }

    fn snat_ports() -> &'static HashMap<PortKey<u32>, SnatOwner<u32>> {
        &NATD_SNAT4_PORTS
    }

    fn snat_peers() -> &'static LruHashMap<SnatPeerKey<u32>, u32> {
        &NATD_SNAT4_PEERS
    }

    fn punches() -> &'static LruHashMap<PunchKey<u32>, Punch<u32>> {
        &NATD_PUNCH4
    }

    fn snat_shared() -> &'static LruHashMap<PortKey<u32>, SnatOwner<u32>> {
        &NATD_SNAT4_SHARED
    }
    #[inline(always)]
    fn network_of(addr: u32) -> Option<Net<u32>> {
        let info = *NATD_NETS4.get(Key::new(32, addr.to_ne_bytes()))?;
        Some(Net::from(info))
    }
    #[inline(always)]
    fn own_network(cfg: &IfaceConfig) -> Option<Net<u32>> {
        let info = lookup::network(cfg.network_id)?;
        Some(Net::from(info))
    }
    #[inline(always)]
    fn is_loopback(self) -> bool {
        self.to_ne_bytes()[0] == 127
    }
    #[inline(always)]
    fn is_broadcast(self) -> bool {
        self == u32::MAX || self.to_ne_bytes()[0] & 0xf0 == 0xe0
    }
    #[inline(always)]
    fn quota_key(self, _kind: u8) -> u32 {
        self
    }
    #[inline(always)]
    fn of_iface(cfg: &IfaceConfig) -> u32 {
        cfg.addr4
    }
    #[inline(always)]
    fn csum_diff1(old: &u32, new: &u32) -> u32 {
        csum::diff1(*old, *new)
    }
    #[inline(always)]
    fn fib_fill(params: &mut bpf_fib_lookup, src: u32, dst: u32) {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = src;
        params.__bindgen_anon_4.ipv4_dst = dst;
    }
    #[inline(always)]
    fn is_icmp_error(icmp_type: u8) -> bool {
        // Destination unreachable (incl. fragmentation needed), time exceeded, parameter
        // problem.
        matches!(icmp_type, 3 | 11 | 12)
    }
    #[inline(always)]
    fn parse_into(
        ctx: &TcContext,
        l3: usize,
        position: Position,
        out: &mut Packet<u32>,
    ) -> Result<(), Malformed> {
        *out = parse::parse_ipv4_at(ctx, l3, position)?;
        Ok(())
    }
    #[inline(always)]
    fn packet_slot(index: u32) -> Option<&'static mut Packet<u32>> {
        // SAFETY: a per-CPU map value; programs on one CPU do not nest, and each slot has
        // one user per program run.
        NATD_PACKETS4.get_ptr_mut(index).map(|p| unsafe { &mut *p })
    }
}

impl Family for Addr6 {
    const VERSION: u8 = 6;
    const ICMP: u8 = PROTO_ICMPV6;
    const ECHO_REQUEST: u8 = 128;
    const ECHO_REPLY: u8 = 129;
    const IP_HLEN: usize = 40;
    const SRC_AT: usize = 8;
    const DST_AT: usize = 24;
    const TTL_AT: usize = 7;

    #[inline(always)]
    fn ct() -> &'static HashMap<CtKey<Addr6>, CtEntry<Addr6>> {
        &NATD_CT6
    }
    #[inline(always)]
    fn ct_new() -> &'static LruHashMap<CtKey<Addr6>, CtEntry<Addr6>> {
        &NATD_CT6_NEW
    }
    #[inline(always)]
    fn scratch_ptr() -> Option<*mut Scratch<Addr6>> {
        NATD_SCRATCH6.get_ptr_mut(0)
    }
    #[inline(always)]
    fn ports() -> &'static HashMap<PortKey<Addr6>, PortTarget<Addr6>> {
        &NATD_PORTS6
    }
    #[inline(always)]
    fn endpoints() -> &'static HashMap<Addr6, EndpointInfo> {
        &NATD_ENDPOINTS6
    }
    #[inline(always)]
    fn local() -> &'static HashMap<Addr6, u32> {
        &NATD_LOCAL6
    }
    #[inline(always)]
    fn quota() -> &'static LruHashMap<Addr6, SourceQuota> {
        &NATD_QUOTA6
    }

    fn snat() -> &'static HashMap<SnatKey<Addr6>, SnatMapping> {
        &NATD_SNAT6
    }

    fn snat_ports() -> &'static HashMap<PortKey<Addr6>, SnatOwner<Addr6>> {
        &NATD_SNAT6_PORTS
    }

    fn snat_peers() -> &'static LruHashMap<SnatPeerKey<Addr6>, u32> {
        &NATD_SNAT6_PEERS
    }

    fn punches() -> &'static LruHashMap<PunchKey<Addr6>, Punch<Addr6>> {
        &NATD_PUNCH6
    }

    fn snat_shared() -> &'static LruHashMap<PortKey<Addr6>, SnatOwner<Addr6>> {
        &NATD_SNAT6_SHARED
    }
    /// A frame of its own: the 16-byte LPM key and its conversion would otherwise sit in
    /// every caller's frame.
    #[inline(never)]
    fn network_of(addr: Addr6) -> Option<Net<Addr6>> {
        let info = *NATD_NETS6.get(Key::new(128, bytes6(addr)))?;
        Some(Net::from(info))
    }
    #[inline(always)]
    fn own_network(cfg: &IfaceConfig) -> Option<Net<Addr6>> {
        let own = words6(cfg.addr6);
        if own.is_zero() {
            return None;
        }
        Self::network_of(own).filter(|n| n.network_id == cfg.network_id)
    }
    #[inline(always)]
    fn is_loopback(self) -> bool {
        self == LOOPBACK6
    }
    #[inline(always)]
    fn is_broadcast(self) -> bool {
        false
    }
    #[inline(always)]
    fn quota_key(self, kind: u8) -> Addr6 {
        nat_common::quota_key6(self, kind)
    }
    #[inline(always)]
    fn of_iface(cfg: &IfaceConfig) -> Addr6 {
        words6(cfg.addr6)
    }
    #[inline(always)]
    fn csum_diff1(old: &Addr6, new: &Addr6) -> u32 {
        csum::add(
            csum::diff2([old[0], old[1]], [new[0], new[1]]),
            csum::diff2([old[2], old[3]], [new[2], new[3]]),
        )
    }
    #[inline(always)]
    fn fib_fill(params: &mut bpf_fib_lookup, src: Addr6, dst: Addr6) {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = src;
        params.__bindgen_anon_4.ipv6_dst = dst;
    }
    #[inline(always)]
    fn is_icmp_error(icmp_type: u8) -> bool {
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        matches!(icmp_type, 1..=4)
    }
    #[inline(always)]
    fn parse_into(
        ctx: &TcContext,
        l3: usize,
        position: Position,
        out: &mut Packet<Addr6>,
    ) -> Result<(), Malformed> {
        parse::parse_ipv6_at(ctx, l3, position, out)
    }
    #[inline(always)]
    fn packet_slot(index: u32) -> Option<&'static mut Packet<Addr6>> {
        // SAFETY: as for IPv4.
        NATD_PACKETS6.get_ptr_mut(index).map(|p| unsafe { &mut *p })
    }
}

/// ::1 as loaded from a packet.
pub const LOOPBACK6: Addr6 = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

#[inline(always)]
pub fn bytes6(addr: Addr6) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let w = addr[i].to_ne_bytes();
        out[i * 4] = w[0];
        out[i * 4 + 1] = w[1];
        out[i * 4 + 2] = w[2];
        out[i * 4 + 3] = w[3];
        i += 1;
    }
    out
}

#[inline(always)]
pub fn words6(b: [u8; 16]) -> Addr6 {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// fe80::/10: link-local sources and destinations never leave the link; natd leaves them
/// to the bridge (NDP, router discovery).
#[inline(always)]
pub fn is_link_local6(addr: Addr6) -> bool {
    let b = addr[0].to_ne_bytes();
    b[0] == 0xfe && b[1] & 0xc0 == 0x80
}

/// ff00::/8.
#[inline(always)]
pub fn is_multicast6(addr: Addr6) -> bool {
    addr[0].to_ne_bytes()[0] == 0xff
}
