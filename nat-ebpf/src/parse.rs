//! Bounds-checked header parsing. Every read goes through `TcContext::load`
//! (bpf_skb_load_bytes), which checks the packet length at run time, so variable offsets
//! from IP options need no manual `data_end` arithmetic for the verifier.
use aya_ebpf::programs::TcContext;
use nat_common::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

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

/// An IPv4 packet's addresses and ports, all in network byte order as in the packet.
#[derive(Clone, Copy)]
pub struct Ipv4Packet {
    pub l4: usize,
    pub proto: u8,
    pub src: u32,
    pub dst: u32,
    /// TCP/UDP source port; ICMP echo request: the echo id.
    pub sport: u16,
    /// TCP/UDP destination port; ICMP echo reply: the echo id.
    pub dport: u16,
    pub tcp_flags: u8,
    /// ICMP type, for ICMP packets.
    pub icmp_type: u8,
    pub fragment: Fragment,
}

impl Ipv4Packet {
    /// TCP, UDP and ICMP echo are translated; everything else passes untouched.
    pub fn translatable(&self) -> bool {
        match self.proto {
            PROTO_TCP | PROTO_UDP => true,
            PROTO_ICMP => self.icmp_type == ICMP_ECHO_REQUEST || self.icmp_type == ICMP_ECHO_REPLY,
            _ => false,
        }
    }
}

pub enum Parsed {
    Ipv4(Ipv4Packet),
    Ipv6 { next_header: u8 },
    Other,
}

#[inline(always)]
fn load<T>(ctx: &TcContext, offset: usize) -> Result<T, Malformed> {
    ctx.load::<T>(offset).map_err(|_| Malformed)
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed, Malformed> {
    let ethertype = u16::from_be(load::<u16>(ctx, 12)?);
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx).map(Parsed::Ipv4),
        ETH_P_IPV6 => Ok(Parsed::Ipv6 {
            next_header: load(ctx, ETH_HLEN + 6)?,
        }),
        _ => Ok(Parsed::Other),
    }
}

/// Whether an IPv4 header is the packet's own or one quoted inside an ICMP error. A quoted
/// packet is cut short (RFC 792 guarantees its header and 8 bytes of payload): its total
/// length is not checked against the frame and only what those 8 bytes hold is read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Outer,
    Quoted,
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext) -> Result<Ipv4Packet, Malformed> {
    parse_ipv4_at(ctx, ETH_HLEN, Position::Outer)
}

/// The IPv4 header at `l3` and the L4 fields natd translates.
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
    let total_len = u16::from_be(load::<u16>(ctx, l3 + 2)?) as usize;
    if position == Position::Outer && (total_len < ihl * 4 || (ctx.len() as usize) < l3 + total_len) {
        return Err(Malformed);
    }
    let frag = u16::from_be(load::<u16>(ctx, l3 + 6)?);
    let more_fragments = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    let fragment = match (offset, more_fragments) {
        (0, false) => Fragment::None,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    };
    let proto: u8 = load(ctx, l3 + 9)?;
    let src: u32 = load(ctx, l3 + 12)?;
    let dst: u32 = load(ctx, l3 + 16)?;
    let mut packet = Ipv4Packet {
        l4,
        proto,
        src,
        dst,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        fragment,
    };
    if fragment == Fragment::Later {
        return Ok(packet);
    }
    match proto {
        PROTO_TCP => {
            packet.sport = load(ctx, l4)?;
            packet.dport = load(ctx, l4 + 2)?;
            // Byte 13 lies beyond the 8 bytes an ICMP error has to quote.
            if position == Position::Outer {
                packet.tcp_flags = load(ctx, l4 + 13)?;
            }
        }
        PROTO_UDP => {
            packet.sport = load(ctx, l4)?;
            packet.dport = load(ctx, l4 + 2)?;
        }
        PROTO_ICMP => {
            packet.icmp_type = load(ctx, l4)?;
            let id: u16 = load(ctx, l4 + 4)?;
            match packet.icmp_type {
                ICMP_ECHO_REQUEST => packet.sport = id,
                ICMP_ECHO_REPLY => packet.dport = id,
                _ => {}
            }
        }
        _ => {}
    }
    Ok(packet)
}
