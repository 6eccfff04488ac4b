//! natd's TC programs. Entry points only; the work lives in the modules.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod parse;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
    use nat_common::counter;

    use crate::{counters, nat, parse};

    /// Uplink ingress: published ports and replies to masqueraded flows.
    #[classifier]
    pub fn natd_uplink_ingress(ctx: TcContext) -> i32 {
        try_uplink(&ctx, nat::uplink_ingress)
    }

    /// Uplink egress: masquerade and replies of published-port flows.
    #[classifier]
    pub fn natd_uplink_egress(ctx: TcContext) -> i32 {
        try_uplink(&ctx, nat::uplink_egress)
    }

    /// Host side of sandbox veths: counts what sandboxes send.
    #[classifier]
    pub fn natd_observe(ctx: TcContext) -> i32 {
        counters::count_iface(&ctx);
        if let Ok(parsed) = parse::parse(&ctx) {
            count(&parsed);
        }
        TC_ACT_OK
    }

    #[inline(always)]
    fn count(parsed: &parse::Parsed) {
        match parsed {
            parse::Parsed::Ipv4(p) => counters::count_l3(4, p.proto),
            parse::Parsed::Ipv6 { next_header } => counters::count_l3(6, *next_header),
            parse::Parsed::Other => counters::count_l3(0, 0),
        }
    }

    #[inline(always)]
    fn try_uplink(ctx: &TcContext, translate: fn(&TcContext, &mut parse::Ipv4Packet) -> i32) -> i32 {
        counters::count_iface(ctx);
        match parse::parse(ctx) {
            Ok(parsed) => {
                count(&parsed);
                match parsed {
                    parse::Parsed::Ipv4(mut packet) => translate(ctx, &mut packet),
                    _ => TC_ACT_OK,
                }
            }
            Err(_) => {
                // Malformed frames are not ours to judge: the stack drops what it cannot use.
                counters::bump(counter::MALFORMED);
                TC_ACT_OK
            }
        }
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
