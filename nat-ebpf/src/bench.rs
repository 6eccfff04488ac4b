//! Benchmark-only programs, never attached by natd: the warm test-run wrapper and the
//! redirect-only baseline (routing by redirect, without NAT or tracking), which tells what
//! natd's translation itself costs on top of the redirect.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};
use nat_common::{bench, csum};

use crate::{
    lookup,
    maps::{NATD_BENCH_FRAME, NATD_BENCH_JUMP, NATD_BENCH_ROUTE},
    parse::{self, IP, L4, ptr_at},
};

/// Ethernet, IPv4 and a TCP header: what a run rewrites and the wrapper restores.
const HEADERS: usize = 54;

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
        let n = (*frame).vary;
        if n != 0 && (*frame).vary_how == bench::VARY_DST {
            // One source, so one masquerade mapping: every run a new flow reusing it.
            let dport = u16::from_be_bytes([bytes[L4 + 2], bytes[L4 + 3]]).wrapping_add((n % 60000) as u16);
            bytes[L4 + 2..L4 + 4].copy_from_slice(&dport.to_be_bytes());
            let last = u16::from_be_bytes([bytes[IP + 18], bytes[IP + 19]]).wrapping_add((n / 60000) as u16);
            bytes[IP + 18..IP + 20].copy_from_slice(&last.to_be_bytes());
            (*frame).vary = n + 1;
        } else if n != 0 {
            // Checksums are left as they are: no program under test verifies them.
            let sport = (1024 + n % 60000) as u16;
            bytes[L4..L4 + 2].copy_from_slice(&sport.to_be_bytes());
            if (*frame).vary_how == bench::VARY_SADDR {
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
            (*frame).vary = n + 1;
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
