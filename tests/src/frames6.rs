//! IPv6 frames for the packet tests, built with etherparse, and the checks of what comes
//! out. The checks do not use etherparse: they walk the IPv6 header and its extension
//! headers themselves and recompute every checksum (TCP, UDP and ICMPv6, each over the
//! IPv6 pseudo-header) from the bytes, so a wrong rewrite cannot agree with the builder by
//! sharing its code.
use std::net::Ipv6Addr;

use etherparse::PacketBuilder;

pub use crate::frames::{DST_MAC, Flags, SRC_MAC, SYN, ack};

const ETH_HLEN: usize = 14;
const IP6_HLEN: usize = 40;
pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_AUTH: u8 = 51;
pub const NEXTHDR_DEST: u8 = 60;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Network 2's IPv6 side in the packet tests: fd00:20::/64, gateway ::1, the test sandbox
/// ::2, another sandbox ::3.
pub const NET6: [u8; 16] = v6([0xfd00, 0x20, 0, 0, 0, 0, 0, 0]);
pub const GATEWAY6: [u8; 16] = v6([0xfd00, 0x20, 0, 0, 0, 0, 0, 1]);
pub const SANDBOX6: [u8; 16] = v6([0xfd00, 0x20, 0, 0, 0, 0, 0, 2]);
pub const OTHER_SANDBOX6: [u8; 16] = v6([0xfd00, 0x20, 0, 0, 0, 0, 0, 3]);
pub const LINK_LOCAL_A: [u8; 16] = v6([0xfe80, 0, 0, 0, 0, 0, 0, 1]);
pub const LINK_LOCAL_B: [u8; 16] = v6([0xfe80, 0, 0, 0, 0, 0, 0, 2]);
pub const ALL_NODES: [u8; 16] = v6([0xff02, 0, 0, 0, 0, 0, 0, 1]);

/// An IPv6 address from its text form (the tests' constants).
pub const fn v6(segments: [u16; 8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 8 {
        out[i * 2] = (segments[i] >> 8) as u8;
        out[i * 2 + 1] = segments[i] as u8;
        i += 1;
    }
    out
}

pub fn builder6(
    src: [u8; 16],
    dst: [u8; 16],
    hop_limit: u8,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC).ipv6(src, dst, hop_limit)
}

/// A TCP segment over IPv6 with sequence number `seq`; a payload unless SYN, FIN or RST.
pub fn segment6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, seq: u32, flags: Flags) -> Vec<u8> {
    let mut b = builder6(src, dst, 64).tcp(sport, dport, seq, 64240);
    if flags.syn {
        b = b.syn();
    }
    if let Some(n) = flags.ack {
        b = b.ack(n);
    }
    if flags.fin {
        b = b.fin();
    }
    if flags.rst {
        b = b.rst();
    }
    let payload: &[u8] = if flags.syn || flags.fin || flags.rst {
        b""
    } else {
        b"natd test payload over IPv6"
    };
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("frame");
    out
}

/// A SYN (sequence 1000) or a data segment acknowledging 1.
pub fn tcp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, syn: bool) -> Vec<u8> {
    segment6(src, sport, dst, dport, 1000, if syn { SYN } else { ack(1) })
}

pub fn udp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    builder6(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, b"datagram6")
        .expect("frame");
    out
}

/// ICMPv6 echo request (128) or reply (129) with `id`, sequence 1.
pub fn echo6(src: [u8; 16], dst: [u8; 16], id: u16, request: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let b = builder6(src, dst, 64);
    if request {
        b.icmpv6_echo_request(id, 1)
            .write(&mut out, b"ping6")
            .expect("frame");
    } else {
        b.icmpv6_echo_reply(id, 1)
            .write(&mut out, b"ping6")
            .expect("frame");
    }
    out
}

/// Packets an ICMPv6 error quotes, without Ethernet: the original packet as sent.
pub fn inner_udp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(src, dst, 63)
        .udp(sport, dport)
        .write(&mut out, b"quoted datagram")
        .expect("packet");
    out
}

pub fn inner_tcp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(src, dst, 63)
        .tcp(sport, dport, 7, 1000)
        .ack(1)
        .write(&mut out, &[0x5a; 64])
        .expect("packet");
    out
}

pub fn inner_echo6(src: [u8; 16], dst: [u8; 16], id: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(src, dst, 1)
        .icmpv6_echo_request(id, 1)
        .write(&mut out, b"ping6")
        .expect("packet");
    out
}

/// An ICMPv6 message of any type: `rest` is bytes 5-8 of its header.
pub fn icmp6(src: [u8; 16], dst: [u8; 16], icmp_type: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    builder6(src, dst, 64)
        .icmpv6_raw(icmp_type, code, rest)
        .write(&mut out, body)
        .expect("frame");
    out
}

/// A neighbour discovery message (133-137): hop limit 255, as RFC 4861 requires.
pub fn nd6(src: [u8; 16], dst: [u8; 16], icmp_type: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    builder6(src, dst, 255)
        .icmpv6_raw(icmp_type, 0, [0; 4])
        .write(&mut out, body)
        .expect("frame");
    out
}

/// Packet Too Big (type 2) with `mtu`.
pub fn packet_too_big(src: [u8; 16], dst: [u8; 16], mtu: u32, quoted: &[u8]) -> Vec<u8> {
    icmp6(src, dst, 2, 0, mtu.to_be_bytes(), quoted)
}

/// Destination Unreachable (type 1) with `code` (4: port unreachable).
pub fn dest_unreachable(src: [u8; 16], dst: [u8; 16], code: u8, quoted: &[u8]) -> Vec<u8> {
    icmp6(src, dst, 1, code, [0; 4], quoted)
}

/// Time Exceeded (type 3), hop limit exceeded in transit.
pub fn time_exceeded(src: [u8; 16], dst: [u8; 16], quoted: &[u8]) -> Vec<u8> {
    icmp6(src, dst, 3, 0, [0; 4], quoted)
}

/// ff02::1:ffXX:XXXX for `target`.
pub fn solicited_node(target: [u8; 16]) -> [u8; 16] {
    let mut out = v6([0xff02, 0, 0, 0, 0, 1, 0xff00, 0]);
    out[13..16].copy_from_slice(&target[13..16]);
    out
}

/// A neighbour solicitation (type 135) for `target`, with the source link-layer address
/// option, from `src` to `dst` (the solicited-node group, or `target` itself to
/// re-check a neighbour).
pub fn neighbour_solicitation(src: [u8; 16], dst: [u8; 16], target: [u8; 16]) -> Vec<u8> {
    let mut body = target.to_vec();
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&SRC_MAC);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(src, dst, 255)
        .icmpv6_raw(135, 0, [0; 4])
        .write(&mut out, &body)
        .expect("frame");
    out
}

/// An extension header `with_ext` inserts.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// 8 bytes: next header, length 0, a PadN option of 4 bytes.
    HopByHop,
    DestOpts,
    /// `offset` in 8-byte units, `more` fragments follow.
    Fragment {
        offset: u16,
        more: bool,
    },
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Ext::HopByHop => NEXTHDR_HOP,
            Ext::DestOpts => NEXTHDR_DEST,
            Ext::Fragment { .. } => NEXTHDR_FRAGMENT,
        }
    }

    fn bytes(self, next: u8) -> [u8; 8] {
        match self {
            Ext::HopByHop | Ext::DestOpts => [next, 0, 1, 4, 0, 0, 0, 0],
            Ext::Fragment { offset, more } => {
                let word = (offset << 3) | u16::from(more);
                let [hi, lo] = word.to_be_bytes();
                [next, 0, hi, lo, 0x4e, 0x41, 0x54, 0x36]
            }
        }
    }
}

/// `frame` (Ethernet + IPv6 without extension headers) with `exts` inserted, in order,
/// between the IPv6 header and what followed it. The upper-layer checksum stays right:
/// its pseudo-header counts the upper-layer length, which does not change.
pub fn with_ext(frame: &[u8], exts: &[Ext]) -> Vec<u8> {
    let l4 = ETH_HLEN + IP6_HLEN;
    let mut next = frame[ETH_HLEN + 6];
    let mut headers: Vec<[u8; 8]> = Vec::new();
    for ext in exts.iter().rev() {
        headers.insert(0, ext.bytes(next));
        next = ext.number();
    }
    let mut out = frame[..l4].to_vec();
    out[ETH_HLEN + 6] = next;
    for h in &headers {
        out.extend_from_slice(h);
    }
    out.extend_from_slice(&frame[l4..]);
    let payload_len =
        u16::from_be_bytes([frame[ETH_HLEN + 4], frame[ETH_HLEN + 5]]) + 8 * headers.len() as u16;
    out[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&payload_len.to_be_bytes());
    out
}

/// An IPv6 header and its extension headers, walked independently of natd and of
/// etherparse.
#[derive(Clone, Debug)]
pub struct Ip6 {
    /// Offset of the IPv6 header in the buffer.
    pub l3: usize,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub hop_limit: u8,
    /// Upper-layer protocol and where it starts.
    pub proto: u8,
    pub l4: usize,
    /// End of the packet as its payload length says.
    pub end: usize,
    /// (offset in 8-byte units, more fragments) of a fragment header.
    pub fragment: Option<(u16, bool)>,
}

/// Walks the IPv6 header at `l3` of `buf`; `quoted`: the packet may be cut short (only
/// the headers must be there).
pub fn walk6(buf: &[u8], l3: usize, quoted: bool) -> Result<Ip6, String> {
    let h = buf
        .get(l3..l3 + IP6_HLEN)
        .ok_or_else(|| format!("IPv6 header cut at {}", buf.len()))?;
    if h[0] >> 4 != 6 {
        return Err(format!("IP version {}", h[0] >> 4));
    }
    let payload_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let end = l3 + IP6_HLEN + payload_len;
    if !quoted && end > buf.len() {
        return Err(format!("payload length {payload_len} beyond the frame"));
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    dst.copy_from_slice(&h[24..40]);
    let hop_limit = h[7];
    let mut next = h[6];
    let mut at = l3 + IP6_HLEN;
    let mut fragment = None;
    loop {
        let ext = |len: usize| {
            buf.get(at..at + len)
                .ok_or_else(|| format!("extension header cut at {at}"))
        };
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let e = ext(2)?;
                next = e[0];
                at += (usize::from(e[1]) + 1) * 8;
            }
            NEXTHDR_AUTH => {
                let e = ext(2)?;
                next = e[0];
                at += (usize::from(e[1]) + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                let e = ext(8)?;
                next = e[0];
                let word = u16::from_be_bytes([e[2], e[3]]);
                fragment = Some((word >> 3, word & 1 != 0));
                at += 8;
            }
            _ => break,
        }
    }
    Ok(Ip6 {
        l3,
        src,
        dst,
        hop_limit,
        proto: next,
        l4: at,
        end,
        fragment,
    })
}

fn sum16(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Where the checksum of an upper-layer header sits in it.
fn csum_offset(proto: u8) -> Option<usize> {
    match proto {
        PROTO_TCP => Some(16),
        PROTO_UDP => Some(6),
        PROTO_ICMPV6 => Some(2),
        _ => None,
    }
}

/// Checks the upper-layer checksum of `upper` (the whole upper-layer packet) under the
/// pseudo-header of `ip`: Err says what it is and what it should be.
fn check_upper(ip: &Ip6, upper: &[u8], what: &str) -> Result<(), String> {
    let at = csum_offset(ip.proto).ok_or_else(|| format!("{what}: protocol {} has no checksum", ip.proto))?;
    if upper.len() < at + 2 {
        return Err(format!("{what}: header cut"));
    }
    let have = u16::from_be_bytes([upper[at], upper[at + 1]]);
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&ip.src);
    pseudo.extend_from_slice(&ip.dst);
    pseudo.extend_from_slice(&(upper.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, ip.proto]);
    let mut zeroed = upper.to_vec();
    zeroed[at..at + 2].copy_from_slice(&[0, 0]);
    let mut want = !fold(sum16(&pseudo) + sum16(&zeroed));
    if ip.proto == PROTO_UDP && want == 0 {
        want = 0xffff;
    }
    // One's complement: 0x0000 and 0xffff are the same sum for TCP and ICMPv6 (an
    // incremental update may write either); the whole must add up to 0xffff.
    let valid = fold(sum16(&pseudo) + sum16(upper)) == 0xffff && !(ip.proto == PROTO_UDP && have == 0);
    if valid {
        Ok(())
    } else {
        Err(format!("{what} checksum {have:#06x}, want {want:#06x}"))
    }
}

/// Every checksum of an IPv6 frame (TCP, UDP, ICMPv6, over the pseudo-header),
/// recomputed: Err names the wrong one. A later fragment has no checksum to check; a
/// first fragment is checked over what it carries (the tests' first fragments carry the
/// whole upper-layer packet).
pub fn checksums_ok6(frame: &[u8]) -> Result<(), String> {
    if frame.get(12..14) != Some(&[0x86, 0xdd][..]) {
        return Err("not an IPv6 frame".into());
    }
    let ip = walk6(frame, ETH_HLEN, false)?;
    match ip.fragment {
        Some((offset, _)) if offset != 0 => return Err("a later fragment has no L4 header".into()),
        _ => {}
    }
    if ip.l4 > ip.end {
        return Err("extension headers beyond the payload length".into());
    }
    check_upper(&ip, &frame[ip.l4..ip.end], "L4")
}

/// What a frame says, after checking every checksum against an independent recomputation.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Seen6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub sport: u16,
    pub dport: u16,
}

pub fn seen6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Seen6 {
    Seen6 {
        src: src.into(),
        dst: dst.into(),
        sport,
        dport,
    }
}

fn ports(buf: &[u8], ip: &Ip6) -> Result<(u16, u16), String> {
    let l4 = buf.get(ip.l4..ip.l4 + 8).ok_or("L4 header cut")?;
    match ip.proto {
        PROTO_TCP | PROTO_UDP => Ok((
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )),
        PROTO_ICMPV6 => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            Ok((id, id))
        }
        other => Err(format!("unexpected protocol {other}")),
    }
}

/// Addresses and ports (the echo id for ICMPv6) of a frame whose every checksum is
/// right: (src, sport, dst, dport).
pub fn inspect6(frame: &[u8]) -> Seen6 {
    if let Err(wrong) = checksums_ok6(frame) {
        panic!("{wrong}");
    }
    let ip = walk6(frame, ETH_HLEN, false).expect("walked above");
    let (sport, dport) = ports(frame, &ip).unwrap_or_else(|e| panic!("{e}"));
    seen6(ip.src, sport, ip.dst, dport)
}

/// The IPv6 header of a frame (hop limit, where L4 starts...), after the walk.
pub fn ip6(frame: &[u8]) -> Ip6 {
    walk6(frame, ETH_HLEN, false).unwrap_or_else(|e| panic!("{e}"))
}

/// An ICMPv6 error as it came out.
#[derive(Debug)]
pub struct Error6 {
    /// Outer addresses (ports 0).
    pub outer: Seen6,
    pub icmp_type: u8,
    pub code: u8,
    /// Bytes 5-8 of the ICMPv6 header (Packet Too Big: the MTU).
    pub rest: [u8; 4],
    /// The quoted packet's addresses and ports (echo: the id).
    pub quoted: Seen6,
    /// Whether the quoted packet is there entirely, so its L4 checksum was checked too.
    pub quoted_whole: bool,
}

/// Outer addresses and the quoted tuple of an ICMPv6 error, after checking the ICMPv6
/// checksum (pseudo-header with the outer addresses, over every quoted byte) and, when
/// the quoted packet is whole, its own L4 checksum under its own pseudo-header.
pub fn inspect_error6(frame: &[u8]) -> Error6 {
    if let Err(wrong) = checksums_ok6(frame) {
        panic!("outer: {wrong}");
    }
    let outer = ip6(frame);
    assert_eq!(outer.proto, PROTO_ICMPV6, "not ICMPv6");
    let icmp = &frame[outer.l4..outer.end];
    let quoted = &icmp[8..];
    let inner = walk6(quoted, 0, true).unwrap_or_else(|e| panic!("quoted: {e}"));
    let (sport, dport) = ports(quoted, &inner).unwrap_or_else(|e| panic!("quoted: {e}"));
    let quoted_whole = inner.end <= quoted.len();
    if quoted_whole {
        if let Err(wrong) = check_upper(&inner, &quoted[inner.l4..inner.end], "quoted L4") {
            panic!("{wrong}");
        }
    }
    Error6 {
        outer: seen6(outer.src, 0, outer.dst, 0),
        icmp_type: icmp[0],
        code: icmp[1],
        rest: [icmp[4], icmp[5], icmp[6], icmp[7]],
        quoted: seen6(inner.src, sport, inner.dst, dport),
        quoted_whole,
    }
}
