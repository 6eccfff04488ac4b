//! Header parsing. The common case (Ethernet, IPv4 without options, not a fragment, the
//! L4 header in the linear part of the skb) is read with direct packet access after one
//! bounds check per header; such a packet is `direct` and may take the fast path, which
//! writes the same fixed offsets back. Everything else is read with bpf_skb_load_bytes
//! (`ctx.load`), which checks lengths at run time, so IP options and quoted headers of
//! ICMP errors need no pointer arithmetic the verifier would have to follow.
//!
//! Edges without a link layer (TUN devices: WireGuard, Tailscale, OpenVPN) hand the
//! programs frames that start with the IP header: their packets are parsed with loads
//! from offset 0 (`l3` 0), are never `direct` and so never take the fast path, and every
//! rewrite goes by `Packet::l3`.
use aya_ebpf::programs::TcContext;
use nat_common::{Addr6, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

use crate::family::Family;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
/// Offsets of a `direct` packet: the IP header right after Ethernet, L4 after the fixed
/// header (20 bytes for IPv4, 40 for IPv6).
pub const IP: usize = ETH_HLEN;
pub const L4: usize = ETH_HLEN + 20;
pub const L4_V6: usize = ETH_HLEN + 40;
/// IPv6 extension headers walked before giving up (the verifier needs a bound; real
/// traffic carries one or two).
const MAX_EXT_HEADERS: usize = 6;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub struct Malformed;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented.
    None,
    /// First fragment: carries the L4 header.
    First,
    /// Later fragment: no L4 header, cannot be matched to a flow by ports.
    Later,
}

/// An IP packet's addresses and ports, all in network byte order as in the packet; `A`
/// is the family's address (`u32`, `Addr6`).
#[derive(Clone, Copy)]
pub struct Packet<A> {
    /// Where the IP header starts: after Ethernet, or at 0 on an edge without a link layer.
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    pub src: A,
    pub dst: A,
    /// TCP/UDP source port; ICMP echo request: the echo id.
    pub sport: u16,
    /// TCP/UDP destination port; ICMP echo reply: the echo id.
    pub dport: u16,
    pub tcp_flags: u8,
    /// TCP header length in bytes (data offset × 4; 0 for other protocols and quoted
    /// packets).
    pub tcp_hlen: u8,
    /// TCP sequence and acknowledgment numbers (network byte order).
    pub seq: u32,
    pub ack: u32,
    /// ICMP type, for ICMP (ICMPv6) packets.
    pub icmp_type: u8,
    /// TTL / hop limit.
    pub ttl: u8,
    /// The IP packet's length, header included (host byte order; 0 on a BIG TCP GSO
    /// packet, whose length does not fit the header's field).
    pub tot_len: u32,
    pub fragment: Fragment,
    /// Fixed offsets (IHL 5), headers in the linear area: the fast path may rewrite it
    /// with direct writes.
    pub direct: bool,
}

pub type Ipv4Packet = Packet<u32>;
pub type Ipv6Packet = Packet<Addr6>;

impl<A: Family> Packet<A> {
    /// TCP, UDP and ICMP echo are translated; everything else passes untouched.
    #[inline(always)]
    pub fn translatable(&self) -> bool {
        match self.proto {
            PROTO_TCP | PROTO_UDP => true,
            p if p == A::ICMP => self.icmp_type == A::ECHO_REQUEST || self.icmp_type == A::ECHO_REPLY,
            _ => false,
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn empty(
        l3: usize,
        l4: usize,
        proto: u8,
        src: A,
        dst: A,
        ttl: u8,
        tot_len: u32,
        fragment: Fragment,
        direct: bool,
    ) -> Self {
        Self {
            l3,
            l4,
            proto,
            src,
            dst,
            sport: 0,
            dport: 0,
            tcp_flags: 0,
            tcp_hlen: 0,
            seq: 0,
            ack: 0,
            icmp_type: 0,
            ttl,
            tot_len,
            fragment,
            direct,
        }
    }
}

/// What `parse` found. IPv6 is only recognised there: `parse6` reads it in the frame of
/// the IPv6 path, so an IPv4 packet's frame never holds room for an IPv6 one (the
/// verifier's 512-byte stack is shared by the whole call chain).
pub enum Parsed {
    Ipv4(Ipv4Packet),
    Ipv6,
    Other,
}

/// A pointer to `T` at `offset`, if the linear part of the packet holds all of it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
fn load<T>(ctx: &TcContext, offset: usize) -> Result<T, Malformed> {
    ctx.load::<T>(offset).map_err(|_| Malformed)
}

/// The frame's EtherType; on an edge without a link layer (`l3` 0) the one the IP
/// version implies (TUN devices carry nothing else).
#[inline(always)]
pub fn ethertype(ctx: &TcContext, l3: usize) -> Result<u16, Malformed> {
    if l3 == ETH_HLEN {
        return Ok(u16::from_be(load::<u16>(ctx, 12)?));
    }
    Ok(match load::<u8>(ctx, 0)? >> 4 {
        4 => ETH_P_IP,
        6 => ETH_P_IPV6,
        _ => 0,
    })
}

/// An Ethernet frame's ethertype read directly from the packet (None: too short to read
/// without a helper).
#[inline(always)]
pub fn ethertype_direct(ctx: &TcContext) -> Option<u16> {
    let eth_proto: *const u16 = ptr_at(ctx, 12)?;
    // SAFETY: bounds-checked against data_end.
    Some(u16::from_be(unsafe { eth_proto.read_unaligned() }))
}

/// A frame whose IP header starts at `l3` (`ETH_HLEN`, or 0 on an edge without a link
/// layer).
#[inline(always)]
pub fn parse(ctx: &TcContext, l3: usize) -> Result<Parsed, Malformed> {
    if l3 == ETH_HLEN
        && let Some(packet) = parse_direct(ctx)
    {
        return Ok(Parsed::Ipv4(packet));
    }
    match ethertype(ctx, l3)? {
        ETH_P_IP => parse_ipv4_at(ctx, l3, Position::Outer).map(Parsed::Ipv4),
        ETH_P_IPV6 => Ok(Parsed::Ipv6),
        _ => Ok(Parsed::Other),
    }
}

/// An IPv6 frame, into `out`; `Ok(false)`: not IPv6. A frame of its own: the stack it
/// needs is free again when the packet is handled.
#[inline(never)]
pub fn parse6(ctx: &TcContext, l3: usize, out: &mut Ipv6Packet) -> Result<bool, Malformed> {
    if l3 == ETH_HLEN && parse_direct6(ctx, out).is_some() {
        return Ok(true);
    }
    if ethertype(ctx, l3)? != ETH_P_IPV6 {
        return Ok(false);
    }
    parse_ipv6_at(ctx, l3, Position::Outer, out)?;
    Ok(true)
}

/// The length the IP header claims is plausible for this skb. An IPv4 BIG TCP GSO packet
/// says 0 (its real length does not fit 16 bits).
#[inline(always)]
fn length_ok(ctx: &TcContext, l3: usize, tot_len: usize, ihl: usize) -> bool {
    if tot_len == 0 {
        // SAFETY: gso_size is always readable in a TC context.
        return unsafe { (*ctx.skb.skb).gso_size } != 0;
    }
    tot_len >= ihl * 4 && (ctx.len() as usize) >= l3 + tot_len
}

/// The common case, read directly; None when the packet is not that case (the loaded
/// path then decides what it is).
#[inline(always)]
fn parse_direct(ctx: &TcContext) -> Option<Ipv4Packet> {
    let eth_proto: *const u16 = ptr_at(ctx, 12)?;
    let ip: *const [u8; 20] = ptr_at(ctx, IP)?;
    // SAFETY: both pointers were bounds-checked against data_end above.
    let (eth_proto, ip) = unsafe { (u16::from_be(eth_proto.read_unaligned()), ip.read_unaligned()) };
    if eth_proto != ETH_P_IP || ip[0] != 0x45 {
        return None;
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3fff != 0 {
        return None;
    }
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]);
    if !length_ok(ctx, IP, usize::from(tot_len), 5) {
        return None;
    }
    let mut packet = Ipv4Packet::empty(
        IP,
        L4,
        ip[9],
        u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
        ip[8],
        u32::from(tot_len),
        Fragment::None,
        true,
    );
    direct_l4(ctx, &mut packet, L4)?;
    Some(packet)
}

/// The L4 fields of a `direct` packet, read directly.
#[inline(always)]
fn direct_l4<A: Family>(ctx: &TcContext, packet: &mut Packet<A>, l4: usize) -> Option<()> {
    match packet.proto {
        PROTO_TCP => {
            let tcp: *const [u8; 14] = ptr_at(ctx, l4)?;
            // SAFETY: bounds-checked above.
            let tcp = unsafe { tcp.read_unaligned() };
            packet.sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
            packet.dport = u16::from_ne_bytes([tcp[2], tcp[3]]);
            packet.seq = u32::from_ne_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            packet.ack = u32::from_ne_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
            packet.tcp_hlen = (tcp[12] >> 4) * 4;
            packet.tcp_flags = tcp[13];
        }
        PROTO_UDP => {
            let ports: *const [u16; 2] = ptr_at(ctx, l4)?;
            // SAFETY: bounds-checked above.
            let ports = unsafe { ports.read_unaligned() };
            packet.sport = ports[0];
            packet.dport = ports[1];
        }
        p if p == A::ICMP => {
            let icmp: *const [u8; 8] = ptr_at(ctx, l4)?;
            // SAFETY: bounds-checked above.
            let icmp = unsafe { icmp.read_unaligned() };
            packet.icmp_type = icmp[0];
            let id = u16::from_ne_bytes([icmp[4], icmp[5]]);
            if packet.icmp_type == A::ECHO_REQUEST {
                packet.sport = id;
            } else if packet.icmp_type == A::ECHO_REPLY {
                packet.dport = id;
            }
        }
        _ => {}
    }
    Some(())
}

/// The common IPv6 case, read directly: no extension headers, TCP/UDP/ICMPv6 right after
/// the fixed header, all of it linear.
#[inline(always)]
fn parse_direct6(ctx: &TcContext, out: &mut Ipv6Packet) -> Option<()> {
    let eth_proto: *const u16 = ptr_at(ctx, 12)?;
    let ip: *const [u32; 10] = ptr_at(ctx, IP)?;
    // SAFETY: both pointers were bounds-checked against data_end above.
    let (eth_proto, ip) = unsafe { (u16::from_be(eth_proto.read_unaligned()), ip.read_unaligned()) };
    let head = ip[0].to_ne_bytes();
    let lengths = ip[1].to_ne_bytes();
    let next = lengths[2];
    if eth_proto != ETH_P_IPV6 || head[0] >> 4 != 6 {
        return None;
    }
    if next != PROTO_TCP && next != PROTO_UDP && next != PROTO_ICMPV6 {
        return None;
    }
    let payload_len = u16::from_be_bytes([lengths[0], lengths[1]]);
    if !length_ok6(ctx, IP, payload_len) {
        return None;
    }
    *out = Ipv6Packet::empty(
        IP,
        L4_V6,
        next,
        [ip[2], ip[3], ip[4], ip[5]],
        [ip[6], ip[7], ip[8], ip[9]],
        lengths[3],
        if payload_len == 0 {
            0
        } else {
            u32::from(payload_len) + 40
        },
        Fragment::None,
        true,
    );
    direct_l4(ctx, out, L4_V6)
}

/// The IPv6 payload length is plausible for this skb (0: a BIG TCP GSO packet).
#[inline(always)]
fn length_ok6(ctx: &TcContext, l3: usize, payload_len: u16) -> bool {
    if payload_len == 0 {
        // SAFETY: gso_size is always readable in a TC context.
        return unsafe { (*ctx.skb.skb).gso_size } != 0;
    }
    (ctx.len() as usize) >= l3 + 40 + usize::from(payload_len)
}

/// Whether an IPv4 header is the packet's own or one quoted inside an ICMP error. A quoted
/// packet is cut short (RFC 792 guarantees its header and 8 bytes of payload): its total
/// length is not checked against the frame and only what those 8 bytes hold is read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Outer,
    Quoted,
}

/// The IPv4 header at `l3` and the L4 fields natd translates, read with loads.
#[inline(always)]
pub fn parse_ipv4_at(ctx: &TcContext, l3: usize, position: Position) -> Result<Ipv4Packet, Malformed> {
    let version_ihl: u8 = load(ctx, l3)?;
    let ihl = usize::from(version_ihl & 0x0f);
    // IHL counts 32-bit words; below 5 the header is invalid. Options (IHL > 5) are honoured
    // by starting L4 after them.
    if version_ihl >> 4 != 4 || ihl < 5 {
        return Err(Malformed);
    }
    let l4 = l3 + ihl * 4;
    let tot_len = u16::from_be(load::<u16>(ctx, l3 + 2)?);
    if position == Position::Outer && !length_ok(ctx, l3, usize::from(tot_len), ihl) {
        return Err(Malformed);
    }
    let frag = u16::from_be(load::<u16>(ctx, l3 + 6)?);
    let fragment = match (frag & 0x1fff, frag & 0x2000 != 0) {
        (0, false) => Fragment::None,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    };
    let mut packet = Ipv4Packet::empty(
        l3,
        l4,
        load(ctx, l3 + 9)?,
        load(ctx, l3 + 12)?,
        load(ctx, l3 + 16)?,
        load(ctx, l3 + 8)?,
        u32::from(tot_len),
        fragment,
        false,
    );
    if fragment == Fragment::Later {
        return Ok(packet);
    }
    loaded_l4(ctx, &mut packet, position)?;
    Ok(packet)
}

/// The L4 fields natd translates, read with loads.
#[inline(always)]
fn loaded_l4<A: Family>(
    ctx: &TcContext,
    packet: &mut Packet<A>,
    position: Position,
) -> Result<(), Malformed> {
    let l4 = packet.l4;
    match packet.proto {
        PROTO_TCP => {
            packet.sport = load(ctx, l4)?;
            packet.dport = load(ctx, l4 + 2)?;
            // Beyond the 8 bytes an ICMP error has to quote.
            if position == Position::Outer {
                packet.seq = load(ctx, l4 + 4)?;
                packet.ack = load(ctx, l4 + 8)?;
                packet.tcp_hlen = (load::<u8>(ctx, l4 + 12)? >> 4) * 4;
                packet.tcp_flags = load(ctx, l4 + 13)?;
            }
        }
        PROTO_UDP => {
            packet.sport = load(ctx, l4)?;
            packet.dport = load(ctx, l4 + 2)?;
        }
        p if p == A::ICMP => {
            packet.icmp_type = load(ctx, l4)?;
            let id: u16 = load(ctx, l4 + 4)?;
            if packet.icmp_type == A::ECHO_REQUEST {
                packet.sport = id;
            } else if packet.icmp_type == A::ECHO_REPLY {
                packet.dport = id;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The IPv6 header at `l3`, its extension headers (hop-by-hop, routing, fragment,
/// destination options, authentication; at most `MAX_EXT_HEADERS`) and the L4 fields,
/// read with loads. A chain longer than that leaves `proto` at the header it stopped on:
/// such a packet is not translated.
#[inline(always)]
pub fn parse_ipv6_at(
    ctx: &TcContext,
    l3: usize,
    position: Position,
    out: &mut Ipv6Packet,
) -> Result<(), Malformed> {
    let version: u8 = load(ctx, l3)?;
    if version >> 4 != 6 {
        return Err(Malformed);
    }
    let payload_len = u16::from_be(load::<u16>(ctx, l3 + 4)?);
    if position == Position::Outer && !length_ok6(ctx, l3, payload_len) {
        return Err(Malformed);
    }
    let mut next: u8 = load(ctx, l3 + 6)?;
    let mut offset = l3 + 40;
    let mut fragment = Fragment::None;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let len: u8 = load(ctx, offset + 1)?;
                next = load(ctx, offset)?;
                offset += (usize::from(len) + 1) * 8;
            }
            NEXTHDR_AUTH => {
                let len: u8 = load(ctx, offset + 1)?;
                next = load(ctx, offset)?;
                offset += (usize::from(len) + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                let word = u16::from_be(load::<u16>(ctx, offset + 2)?);
                next = load(ctx, offset)?;
                offset += 8;
                fragment = match (word >> 3, word & 1 != 0) {
                    (0, false) => Fragment::None,
                    (0, true) => Fragment::First,
                    _ => Fragment::Later,
                };
                if fragment == Fragment::Later {
                    break;
                }
            }
            _ => break,
        }
    }
    let tot_len = if payload_len == 0 {
        0
    } else {
        u32::from(payload_len) + 40
    };
    *out = Ipv6Packet::empty(
        l3,
        offset,
        next,
        load(ctx, l3 + 8)?,
        load(ctx, l3 + 24)?,
        load(ctx, l3 + 7)?,
        tot_len,
        fragment,
        false,
    );
    if fragment == Fragment::Later {
        return Ok(());
    }
    loaded_l4(ctx, out, position)
}

/// The Ethernet source and destination of the frame (for flows that answer the way
/// their first packet came).
#[inline(always)]
pub fn macs(ctx: &TcContext) -> Option<([u8; 6], [u8; 6])> {
    let eth: *const [u8; 12] = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked.
    let eth = unsafe { eth.read_unaligned() };
    Some((
        [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]],
        [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]],
    ))
}
