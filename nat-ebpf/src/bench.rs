//! Benchmark-only programs, never attached by natd: the warm test-run wrapper and the
//! redirect-only baseline (routing by redirect, without NAT or tracking), which tells what
//! natd's translation itself costs on top of the redirect.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_get_prandom_u32, bpf_redirect, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};
use nat_common::{Addr6, PROTO_TCP, PROTO_UDP, bench, csum};

use crate::{
    family::Family,
    lookup,
    maps::{NATD_BENCH_FRAME, NATD_BENCH_JUMP, NATD_BENCH_ROUTE},
    parse::{self, IP, L4, ptr_at},
};

/// Ethernet, IPv4 and a TCP header: what a run rewrites and the wrapper restores.
const HEADERS: usize = 54;
/// What an IPv6 frame has beyond `HEADERS` up to the end of its TCP header (Ethernet,
/// IPv6 and TCP: 74 bytes).
const TAIL6: usize = 20;

/// Restores the frame's headers (a test run does not reset the packet between
/// repetitions), optionally makes it a new flow, then tail-calls the program under test
/// (`NATD_BENCH_JUMP[0]`).
#[classifier]
pub fn natd_bench_wrapper(ctx: TcContext) -> i32 {
    let Some(frame) = NATD_BENCH_FRAME.get_ptr_mut(0) else {
        return TC_ACT_SHOT;
    };
    let Some(headers) = ptr_at::<[u8; HEADERS]>(&ctx, 0) else {
        return TC_ACT_SHOT;
    };
    // SAFETY: `headers` is bounds-checked; `frame` is this array's only value, and test
    // runs execute on one CPU.
    unsafe {
        let mut bytes = [0u8; HEADERS];
        let saved = &(*frame).bytes;
        bytes.copy_from_slice(&saved[..HEADERS]);
        let ipv6 = saved[12..14] == [0x86, 0xdd];
        if ipv6 {
            let Some(tail) = ptr_at::<[u8; TAIL6]>(&ctx, HEADERS) else {
                return TC_ACT_SHOT;
            };
            let mut rest = [0u8; TAIL6];
            rest.copy_from_slice(&saved[HEADERS..HEADERS + TAIL6]);
            tail.write_unaligned(rest);
        }
        // New flows are made at IPv4's offsets only: an IPv6 frame asked to vary is
        // refused, never measured as one flow.
        if ipv6 && (*frame).vary != 0 {
            return TC_ACT_SHOT;
        }
        let first = (*frame).vary;
        let among = (*frame).pick_among;
        let n = if first != 0 && among != 0 {
            first + bpf_get_prandom_u32() % among
        } else {
            first
        };
        let how = (*frame).vary_how;
        if n != 0 && how == bench::VARY_DST {
            // One source, so one masquerade mapping: every run a new flow reusing it.
            let dport = u16::from_be_bytes([bytes[L4 + 2], bytes[L4 + 3]]).wrapping_add((n % 60000) as u16);
            bytes[L4 + 2..L4 + 4].copy_from_slice(&dport.to_be_bytes());
            let last = u16::from_be_bytes([bytes[IP + 18], bytes[IP + 19]]).wrapping_add((n / 60000) as u16);
            bytes[IP + 18..IP + 20].copy_from_slice(&last.to_be_bytes());
        } else if n != 0 && how == bench::VARY_DADDR {
            let dport = (1024 + n % 60000) as u16;
            bytes[L4 + 2..L4 + 4].copy_from_slice(&dport.to_be_bytes());
            let last = u16::from_be_bytes([bytes[IP + 18], bytes[IP + 19]]).wrapping_add((n / 60000) as u16);
            bytes[IP + 18..IP + 20].copy_from_slice(&last.to_be_bytes());
        } else if n != 0 {
            // Checksums are left as they are: no program under test verifies them.
            let sport = (1024 + n % 60000) as u16;
            bytes[L4..L4 + 2].copy_from_slice(&sport.to_be_bytes());
            if how == bench::VARY_SADDR {
                let last =
                    u16::from_be_bytes([bytes[IP + 14], bytes[IP + 15]]).wrapping_add((n / 60000) as u16);
                bytes[IP + 14..IP + 16].copy_from_slice(&last.to_be_bytes());
            } else {
                // Unique (source, destination port) pairs for 15 million runs (60000 and
                // 251 are coprime), and few flows per destination: no run waits for a NAT
                // port.
                let dport = u16::from_be_bytes([bytes[L4 + 2], bytes[L4 + 3]]).wrapping_add((n % 251) as u16);
                bytes[L4 + 2..L4 + 4].copy_from_slice(&dport.to_be_bytes());
            }
        }
        if first != 0 && among == 0 {
            (*frame).vary = first + 1;
        }
        headers.write_unaligned(bytes);
        NATD_BENCH_JUMP.tail_call(&ctx, 0);
    }
    TC_ACT_SHOT
}

/// Rewrites link-layer addresses and TTL (with the IP checksum) of a `direct` packet.
#[inline(always)]
fn hop(ctx: &TcContext, smac: [u8; 6], dmac: [u8; 6]) -> Option<()> {
    let eth: *mut [u8; 12] = ptr_at(ctx, 0)?;
    let ip: *mut [u8; 20] = ptr_at(ctx, IP)?;
    // SAFETY: bounds-checked pointers.
    unsafe {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&dmac);
        macs[6..].copy_from_slice(&smac);
        eth.write_unaligned(macs);
        let mut header = ip.read_unaligned();
        if header[8] <= 1 {
            return None;
        }
        let old = u16::from_ne_bytes([header[8], header[9]]);
        header[8] -= 1;
        let new = u16::from_ne_bytes([header[8], header[9]]);
        let check = u16::from_ne_bytes([header[10], header[11]]);
        header[10..12].copy_from_slice(&csum::replace(check, csum::diff16(old, new)).to_ne_bytes());
        ip.write_unaligned(header);
    }
    Some(())
}

/// Edge ingress of the baseline: a packet to a sandbox address goes into the sandbox.
#[classifier]
pub fn natd_bench_redirect_ingress(ctx: TcContext) -> i32 {
    let Ok(parse::Parsed::Ipv4(packet)) = parse::parse(&ctx, parse::ETH_HLEN) else {
        return TC_ACT_OK;
    };
    let Some(endpoint) = lookup::endpoint(packet.dst) else {
        return TC_ACT_OK;
    };
    if !packet.direct || hop(&ctx, endpoint.gw_mac, endpoint.mac).is_none() {
        return TC_ACT_OK;
    }
    // SAFETY: records the redirect target only.
    unsafe { bpf_redirect_peer(endpoint.host_ifindex, 0) as i32 }
}

/// Sandbox ingress of the baseline: a packet out of the sandbox goes to the edge.
#[classifier]
pub fn natd_bench_redirect_sandbox(ctx: TcContext) -> i32 {
    let Ok(parse::Parsed::Ipv4(packet)) = parse::parse(&ctx, parse::ETH_HLEN) else {
        return TC_ACT_OK;
    };
    let Some(route) = NATD_BENCH_ROUTE.get(0) else {
        return TC_ACT_OK;
    };
    if route.ifindex == 0 || !packet.direct || hop(&ctx, route.smac, route.dmac).is_none() {
        return TC_ACT_OK;
    }
    // SAFETY: records the redirect target only.
    unsafe { bpf_redirect(route.ifindex, 0) as i32 }
}

/// IPv6's `hop`: the hop limit has no header checksum to follow.
#[inline(always)]
fn hop6(ctx: &TcContext, smac: [u8; 6], dmac: [u8; 6]) -> Option<()> {
    let eth: *mut [u8; 12] = ptr_at(ctx, 0)?;
    let hop_limit: *mut u8 = ptr_at(ctx, IP + 7)?;
    // SAFETY: bounds-checked pointers.
    unsafe {
        if *hop_limit <= 1 {
            return None;
        }
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&dmac);
        macs[6..].copy_from_slice(&smac);
        eth.write_unaligned(macs);
        *hop_limit -= 1;
    }
    Some(())
}

/// A TCP or UDP packet without extension headers, parsed into this CPU's slot. Neighbour
/// discovery (ICMPv6) is left to the kernel: redirected, it would never be answered.
#[inline(always)]
fn direct6(ctx: &TcContext) -> Option<&'static parse::Ipv6Packet> {
    let packet = Addr6::packet_slot(0)?;
    if !matches!(parse::parse6(ctx, parse::ETH_HLEN, packet), Ok(true)) || !packet.direct {
        return None;
    }
    matches!(packet.proto, PROTO_TCP | PROTO_UDP).then_some(&*packet)
}

/// `natd_bench_redirect_ingress` for IPv6.
#[classifier]
pub fn natd_bench_redirect_ingress6(ctx: TcContext) -> i32 {
    let Some(packet) = direct6(&ctx) else {
        return TC_ACT_OK;
    };
    let Some(endpoint) = lookup::endpoint(packet.dst) else {
        return TC_ACT_OK;
    };
    if hop6(&ctx, endpoint.gw_mac, endpoint.mac).is_none() {
        return TC_ACT_OK;
    }
    // SAFETY: records the redirect target only.
    unsafe { bpf_redirect_peer(endpoint.host_ifindex, 0) as i32 }
}

/// `natd_bench_redirect_sandbox` for IPv6.
#[classifier]
pub fn natd_bench_redirect_sandbox6(ctx: TcContext) -> i32 {
    if direct6(&ctx).is_none() {
        return TC_ACT_OK;
    }
    let Some(route) = NATD_BENCH_ROUTE.get(0) else {
        return TC_ACT_OK;
    };
    if route.ifindex == 0 || hop6(&ctx, route.smac, route.dmac).is_none() {
        return TC_ACT_OK;
    }
    // SAFETY: records the redirect target only.
    unsafe { bpf_redirect(route.ifindex, 0) as i32 }
}
