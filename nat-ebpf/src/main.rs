//! natd's TC programs. Entry points only; the work lives in the modules.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

    use crate::{counters, parse};

    /// Attached to uplinks (ingress and egress) and to the host side of sandbox veths.
    /// The foundation only observes traffic; translation arrives with the NAT modules.
    #[classifier]
    pub fn natd_observe(ctx: TcContext) -> i32 {
        try_observe(&ctx);
        TC_ACT_OK
    }

    fn try_observe(ctx: &TcContext) {
        counters::count_iface(ctx);
        match parse::classify(ctx) {
            Ok(class) => counters::count_class(class),
            Err(_) => counters::bump(nat_common::counter::MALFORMED, 1),
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
