//! Frames for the packet tests and the benchmark, built with etherparse, and the checks of
//! what comes out: every checksum recomputed independently.
use std::net::Ipv4Addr;

use etherparse::{IpNumber, Ipv4Header, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

/// MACs of the frames built here: source, destination.
pub const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

pub fn builder(src: [u8; 4], dst: [u8; 4]) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    builder_ttl(src, dst, 64)
}

pub fn builder_ttl(
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC).ipv4(src, dst, ttl)
}

/// TCP flags of a segment.
#[derive(Clone, Copy, Default)]
pub struct Flags {
    pub syn: bool,
    pub ack: Option<u32>,
    pub fin: bool,
    pub rst: bool,
}

pub const SYN: Flags = Flags {
    syn: true,
    ack: None,
    fin: false,
    rst: false,
};

/// Only an acknowledgment (of `n`).
pub fn ack(n: u32) -> Flags {
    Flags {
        ack: Some(n),
        ..Flags::default()
    }
}

/// A SYN-ACK acknowledging `n`.
pub fn syn_ack(n: u32) -> Flags {
    Flags {
        syn: true,
        ack: Some(n),
        ..Flags::default()
    }
}

/// What `segment` carries unless it is a SYN, FIN or RST.
pub const PAYLOAD: &[u8] = b"natd test payload";

/// A TCP segment with a payload (`PAYLOAD`), sequence number `seq`.
pub fn segment(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, seq: u32, flags: Flags) -> Vec<u8> {
    segment_ttl(src, sport, dst, dport, seq, flags, 64)
}

pub fn segment_ttl(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    seq: u32,
    flags: Flags,
    ttl: u8,
) -> Vec<u8> {
    let mut b = builder_ttl(src, dst, ttl).tcp(sport, dport, seq, 64240);
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
        PAYLOAD
    };
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("frame");
    out
}

/// A SYN (`syn` true, sequence 1000) or a data segment acknowledging 1.
pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, syn: bool) -> Vec<u8> {
    segment(src, sport, dst, dport, 1000, if syn { SYN } else { ack(1) })
}

pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    builder(src, dst)
        .udp(sport, dport)
        .write(&mut out, b"datagram")
        .expect("frame");
    out
}

pub fn icmp_echo(src: [u8; 4], dst: [u8; 4], id: u16, request: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let b = builder(src, dst);
    if request {
        b.icmpv4_echo_request(id, 1)
            .write(&mut out, b"ping")
            .expect("frame");
    } else {
        b.icmpv4_echo_reply(id, 1)
            .write(&mut out, b"ping")
            .expect("frame");
    }
    out
}

/// The packet an ICMP error quotes, without Ethernet: the original datagram as sent.
pub fn inner_udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 63)
        .udp(sport, dport)
        .write(&mut out, b"quoted datagram")
        .expect("frame");
    out
}

pub fn inner_tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 63)
        .tcp(sport, dport, 7, 1000)
        .ack(1)
        .write(&mut out, &[0u8; 64])
        .expect("frame");
    out
}

pub fn icmp_error(src: [u8; 4], dst: [u8; 4], kind: etherparse::Icmpv4Type, quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    builder(src, dst)
        .icmpv4(kind)
        .write(&mut out, quoted)
        .expect("frame");
    out
}

pub fn fix_ip_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    let header = Ipv4Header::from_slice(&frame[14..]).expect("IPv4").0;
    frame[24..26].copy_from_slice(&header.calc_header_checksum().to_be_bytes());
    frame
}

/// What a frame says, after checking every checksum against an independent recomputation.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

pub fn seen(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Seen {
    Seen {
        src: src.into(),
        dst: dst.into(),
        sport,
        dport,
    }
}

/// Addresses and ports (the ICMP id for echo) of a frame whose every checksum is right.
pub fn inspect(frame: &[u8]) -> Seen {
    if let Err(wrong) = checksums_ok(frame) {
        panic!("{wrong}");
    }
    let packet = SlicedPacket::from_ethernet(frame).expect("output parses");
    let Some(NetSlice::Ipv4(ip)) = &packet.net else {
        panic!("not IPv4")
    };
    let header: Ipv4Header = ip.header().to_header();
    let (sport, dport) = match &packet.transport {
        Some(TransportSlice::Tcp(tcp)) => (tcp.source_port(), tcp.destination_port()),
        Some(TransportSlice::Udp(udp)) => (udp.source_port(), udp.destination_port()),
        Some(TransportSlice::Icmpv4(icmp)) => {
            let id = u16::from_be_bytes([icmp.bytes5to8()[0], icmp.bytes5to8()[1]]);
            (id, id)
        }
        other => panic!("unexpected transport {other:?}"),
    };
    Seen {
        src: header.source.into(),
        dst: header.destination.into(),
        sport,
        dport,
    }
}

/// TTL, and the Ethernet destination and source of a frame.
pub fn link(frame: &[u8]) -> (u8, [u8; 6], [u8; 6]) {
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&frame[0..6]);
    src.copy_from_slice(&frame[6..12]);
    (frame[22], dst, src)
}

/// Outer addresses and the quoted tuple of an ICMP error, after checking the outer IP
/// checksum, the ICMP checksum, the quoted IP checksum and the quoted L4 checksum.
pub fn inspect_error(frame: &[u8]) -> (Seen, Seen) {
    let packet = SlicedPacket::from_ethernet(frame).expect("output parses");
    let Some(NetSlice::Ipv4(ip)) = &packet.net else {
        panic!("not IPv4")
    };
    let outer: Ipv4Header = ip.header().to_header();
    assert_eq!(
        outer.header_checksum,
        outer.calc_header_checksum(),
        "outer IPv4 checksum"
    );
    let Some(TransportSlice::Icmpv4(icmp)) = &packet.transport else {
        panic!("not ICMP")
    };
    let header = icmp.header();
    assert_eq!(
        header.checksum,
        header.icmp_type.calc_checksum(icmp.payload()),
        "ICMP checksum"
    );
    let quoted = icmp.payload();
    let (inner, rest) = Ipv4Header::from_slice(quoted).expect("quoted IPv4 header");
    assert_eq!(
        inner.header_checksum,
        inner.calc_header_checksum(),
        "quoted IPv4 checksum"
    );
    let (sport, dport) = match inner.protocol {
        IpNumber::UDP => {
            let (udp, payload) = etherparse::UdpHeader::from_slice(rest).expect("quoted UDP");
            assert_eq!(
                udp.checksum,
                udp.calc_checksum_ipv4(&inner, payload).expect("checksum"),
                "quoted UDP checksum"
            );
            (udp.source_port, udp.destination_port)
        }
        IpNumber::TCP => {
            let (tcp, payload) = etherparse::TcpHeader::from_slice(rest).expect("quoted TCP");
            assert_eq!(
                tcp.checksum,
                tcp.calc_checksum_ipv4(&inner, payload).expect("checksum"),
                "quoted TCP checksum"
            );
            (tcp.source_port, tcp.destination_port)
        }
        IpNumber::ICMP => {
            let id = u16::from_be_bytes([rest[4], rest[5]]);
            (id, id)
        }
        other => panic!("quoted protocol {other:?}"),
    };
    (
        Seen {
            src: outer.source.into(),
            dst: outer.destination.into(),
            sport: 0,
            dport: 0,
        },
        Seen {
            src: inner.source.into(),
            dst: inner.destination.into(),
            sport,
            dport,
        },
    )
}

/// Where the L4 checksum of a frame sits, if its headers parse completely.
fn l4_checksum(frame: &[u8]) -> Option<(usize, u16, u16)> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(NetSlice::Ipv4(ip)) = &packet.net else {
        return None;
    };
    if ip.is_payload_fragmented() {
        return None;
    }
    let header: Ipv4Header = ip.header().to_header();
    let l4 = 14 + header.header_len();
    match &packet.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let h = tcp.to_header();
            Some((
                l4 + 16,
                h.checksum,
                h.calc_checksum_ipv4(&header, tcp.payload()).ok()?,
            ))
        }
        Some(TransportSlice::Udp(udp)) => {
            let h = udp.to_header();
            let want = if h.checksum == 0 {
                0
            } else {
                h.calc_checksum_ipv4(&header, udp.payload()).ok()?
            };
            Some((l4 + 6, h.checksum, want))
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            let h = icmp.header();
            Some((l4 + 2, h.checksum, h.icmp_type.calc_checksum(icmp.payload())))
        }
        _ => None,
    }
}

/// Makes the checksums of a (mutated) frame right again where its headers parse, so that
/// what a program writes can be checked. Returns whether the frame is a well-formed IPv4
/// packet with every checksum right.
pub fn repair(frame: &mut [u8]) -> bool {
    let Ok((header, _)) = Ipv4Header::from_slice(frame.get(14..).unwrap_or_default()) else {
        return false;
    };
    if frame.len() < 14 + header.header_len() {
        return false;
    }
    frame[24..26].copy_from_slice(&header.calc_header_checksum().to_be_bytes());
    match l4_checksum(frame) {
        Some((at, _, want)) => {
            frame[at..at + 2].copy_from_slice(&want.to_be_bytes());
            true
        }
        None => false,
    }
}

/// Every checksum of a frame that parses, recomputed: Err names the wrong one.
pub fn checksums_ok(frame: &[u8]) -> Result<(), String> {
    let (header, _) = Ipv4Header::from_slice(&frame[14..]).map_err(|e| format!("IPv4 header: {e}"))?;
    if header.header_checksum != header.calc_header_checksum() {
        return Err("IPv4 header checksum".into());
    }
    match l4_checksum(frame) {
        Some((_, have, want)) if have != want => Err(format!("L4 checksum {have:#06x}, want {want:#06x}")),
        Some(_) => Ok(()),
        None => Err("L4 header does not parse".into()),
    }
}
