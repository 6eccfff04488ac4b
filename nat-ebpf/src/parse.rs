//! Header parsing. The common case (Ethernet, IPv4 without options, not a fragment, the
//! L4 header in the linear part of the skb) is read with direct packet access after one
//! bounds check per header; such a packet is `direct` and may take the fast path, which
//! writes the same fixed offsets back. Everything else is read with bpf_skb_load_bytes
//! (`ctx.load`), which checks lengths at run time, so IP options and quoted headers of
//! ICMP errors need no pointer arithmetic the verifier would have to follow.
use aya_ebpf::programs::TcContext;
use nat_common::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// Offsets of a `direct` packet: the IPv4 header right after Ethernet, L4 after 20 bytes.
pub const IP: usize = ETH_HLEN;
pub const L4: usize = ETH_HLEN + 20;

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
    /// TCP sequence and acknowledgment numbers (network byte order).
    pub seq: u32,
    pub ack: u32,
    /// ICMP type, for ICMP packets.
    pub icmp_type: u8,
    pub ttl: u8,
    /// The IP total length (host byte order; 0 on an IPv4 BIG TCP GSO packet).
    pub tot_len: u16,
    pub fragment: Fragment,
    /// Fixed offsets (IHL 5), headers in the linear area: the fast path may rewrite it
    /// with direct writes.
    pub direct: bool,
}

impl Ipv4Packet {
    /// TCP, UDP and ICMP echo are translated; everything else passes untouched.
    #[inline(always)]
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

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed, Malformed> {
    if let Some(packet) = parse_direct(ctx) {
        return Ok(Parsed::Ipv4(packet));
    }
    let ethertype = u16::from_be(load::<u16>(ctx, 12)?);
    match ethertype {
        ETH_P_IP => parse_ipv4_at(ctx, ETH_HLEN, Position::Outer).map(Parsed::Ipv4),
        ETH_P_IPV6 => Ok(Parsed::Ipv6 {
            next_header: load(ctx, ETH_HLEN + 6)?,
        }),
        _ => Ok(Parsed::Other),
    }
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
    let mut packet = Ipv4Packet {
        l4: L4,
        proto: ip[9],
        src: u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        dst: u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        seq: 0,
        ack: 0,
        icmp_type: 0,
        ttl: ip[8],
        tot_len,
        fragment: Fragment::None,
        direct: true,
    };
    match packet.proto {
        PROTO_TCP => {
            let tcp: *const [u8; 14] = ptr_at(ctx, L4)?;
            // SAFETY: bounds-checked above.
            let tcp = unsafe { tcp.read_unaligned() };
            packet.sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
            packet.dport = u16::from_ne_bytes([tcp[2], tcp[3]]);
            packet.seq = u32::from_ne_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            packet.ack = u32::from_ne_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
            packet.tcp_flags = tcp[13];
        }
        PROTO_UDP => {
            let ports: *const [u16; 2] = ptr_at(ctx, L4)?;
            // SAFETY: bounds-checked above.
            let ports = unsafe { ports.read_unaligned() };
            packet.sport = ports[0];
            packet.dport = ports[1];
        }
        PROTO_ICMP => {
            let icmp: *const [u8; 8] = ptr_at(ctx, L4)?;
            // SAFETY: bounds-checked above.
            let icmp = unsafe { icmp.read_unaligned() };
            packet.icmp_type = icmp[0];
            let id = u16::from_ne_bytes([icmp[4], icmp[5]]);
            match packet.icmp_type {
                ICMP_ECHO_REQUEST => packet.sport = id,
                ICMP_ECHO_REPLY => packet.dport = id,
                _ => {}
            }
        }
        _ => {}
    }
    Some(packet)
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
    let mut packet = Ipv4Packet {
        l4,
        proto: load(ctx, l3 + 9)?,
        src: load(ctx, l3 + 12)?,
        dst: load(ctx, l3 + 16)?,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        seq: 0,
        ack: 0,
        icmp_type: 0,
        ttl: load(ctx, l3 + 8)?,
        tot_len,
        fragment,
        direct: false,
    };
    if fragment == Fragment::Later {
        return Ok(packet);
    }
    match packet.proto {
        PROTO_TCP => {
            packet.sport = load(ctx, l4)?;
            packet.dport = load(ctx, l4 + 2)?;
            // Beyond the 8 bytes an ICMP error has to quote.
            if position == Position::Outer {
                packet.seq = load(ctx, l4 + 4)?;
                packet.ack = load(ctx, l4 + 8)?;
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
