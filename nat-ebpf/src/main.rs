//! natd's kernel programs. Entry points only; the work lives in the modules.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod bench;
#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod fast;
#[cfg(target_arch = "bpf")]
mod fib;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod lookup;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod policy;
#[cfg(target_arch = "bpf")]
mod sock;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::TC_ACT_OK,
        macros::{cgroup_sock_addr, classifier},
        programs::{SockAddrContext, TcContext},
    };
    use nat_common::{FASTPATH_MARK, counter, ct, net};

    use crate::{
        counters, icmp, lookup,
        nat::{self, ELSEWHERE, NOT_HANDLED},
        parse::{self, ETH_HLEN, Fragment, Ipv4Packet, Parsed},
        policy,
    };

    /// Uplink ingress: packets of tracked flows (into sandboxes), published ports, errors
    /// about translated flows, and the drop of anything aimed directly at a sandbox address
    /// or at 127.0.0.0/8.
    #[classifier]
    pub fn natd_uplink_ingress(ctx: TcContext) -> i32 {
        with_ipv4(&ctx, try_uplink_ingress, pass)
    }

    /// Uplink egress: masquerade of flows the kernel routed here, errors about translated
    /// flows; nothing from a masqueraded network leaves untranslated.
    #[classifier]
    pub fn natd_uplink_egress(ctx: TcContext) -> i32 {
        // SAFETY: the mark field is always readable in a TC context.
        if unsafe { (*ctx.skb.skb).mark } == FASTPATH_MARK {
            // Translated and redirected here by a sandbox program.
            ctx.set_mark(0);
            return TC_ACT_OK;
        }
        with_ipv4(&ctx, try_uplink_egress, fail_closed)
    }

    /// Host side of sandbox veths (what sandboxes send): packets of tracked flows (out of
    /// the host, or back to their clients), published ports reached from sandboxes
    /// (hairpin), new outbound flows, isolation and anti-spoofing.
    #[classifier]
    pub fn natd_sandbox_ingress(ctx: TcContext) -> i32 {
        with_ipv4(&ctx, try_sandbox_ingress, pass)
    }

    /// Does nothing: the benchmark subtracts its cost (the test-run overhead) from the
    /// others'. Never attached by natd.
    #[classifier]
    pub fn natd_empty(_ctx: TcContext) -> i32 {
        TC_ACT_OK
    }

    #[cgroup_sock_addr(connect4)]
    pub fn natd_connect4(ctx: SockAddrContext) -> i32 {
        crate::sock::rewrite_destination(&ctx);
        1
    }

    #[cgroup_sock_addr(sendmsg4)]
    pub fn natd_sendmsg4(ctx: SockAddrContext) -> i32 {
        crate::sock::rewrite_destination(&ctx);
        1
    }

    #[cgroup_sock_addr(recvmsg4)]
    pub fn natd_recvmsg4(ctx: SockAddrContext) -> i32 {
        crate::sock::restore_peer(&ctx);
        1
    }

    #[cgroup_sock_addr(getpeername4)]
    pub fn natd_getpeername4(ctx: SockAddrContext) -> i32 {
        crate::sock::restore_peer(&ctx);
        1
    }

    /// Malformed frames are not ours to judge where the stack drops what it cannot use.
    #[inline(always)]
    fn pass(_ctx: &TcContext) -> i32 {
        TC_ACT_OK
    }

    /// On the way out, an IPv4 packet natd cannot parse must not leave with a sandbox's
    /// private source address.
    #[inline(always)]
    fn fail_closed(ctx: &TcContext) -> i32 {
        match ctx.load::<u32>(ETH_HLEN + 12) {
            Ok(src) if masqueraded(src) => policy::drop(counter::DROP_UNTRANSLATED),
            _ => TC_ACT_OK,
        }
    }

    /// A source in a masqueraded network that is not the host's own (a bridge's gateway
    /// address answering a ping is the host speaking, not a sandbox).
    #[inline(always)]
    fn masqueraded(src: u32) -> bool {
        policy::network_of(src).is_some_and(|n| n.flags & net::MASQ != 0) && !lookup::is_local(src)
    }

    #[inline(always)]
    fn with_ipv4(
        ctx: &TcContext,
        f: fn(&TcContext, &mut Ipv4Packet) -> i32,
        malformed: fn(&TcContext) -> i32,
    ) -> i32 {
        match parse::parse(ctx) {
            Ok(Parsed::Ipv4(mut packet)) => {
                counters::packet(ctx.len(), 4, packet.proto);
                f(ctx, &mut packet)
            }
            Ok(Parsed::Ipv6 { next_header }) => {
                counters::packet(ctx.len(), 6, next_header);
                TC_ACT_OK
            }
            Ok(Parsed::Other) => {
                counters::packet(ctx.len(), 0, 0);
                TC_ACT_OK
            }
            Err(_) => {
                counters::bump(counter::MALFORMED);
                malformed(ctx)
            }
        }
    }

    #[inline(always)]
    fn tracked(packet: &Ipv4Packet) -> bool {
        packet.fragment != Fragment::Later && packet.translatable()
    }

    fn try_uplink_ingress(ctx: &TcContext, packet: &mut Ipv4Packet) -> i32 {
        if lookup::is_loopback(packet.dst) {
            return policy::enforce(policy::from_outside(packet.dst));
        }
        if tracked(packet) {
            let verdict = nat::tracked(ctx, packet, ct::HOOK_UPLINK_INGRESS, 0);
            if verdict != NOT_HANDLED && verdict != ELSEWHERE {
                return verdict;
            }
        }
        if icmp::is_error(packet) {
            let verdict = icmp::translate_error(ctx, packet);
            if verdict != NOT_HANDLED {
                return verdict;
            }
        }
        if tracked(packet)
            && let Some(target) = lookup::published(packet.dst, packet.dport, packet.proto)
        {
            let verdict = nat::dnat_from_outside(ctx, packet, &target, lookup::ifindex(ctx));
            if verdict != NOT_HANDLED {
                return verdict;
            }
        }
        policy::enforce(policy::from_outside(packet.dst))
    }

    fn try_uplink_egress(ctx: &TcContext, packet: &mut Ipv4Packet) -> i32 {
        let masq = masqueraded(packet.src);
        if icmp::is_error(packet) {
            let verdict = icmp::translate_error(ctx, packet);
            if verdict != NOT_HANDLED {
                return verdict;
            }
        }
        if packet.fragment == Fragment::Later {
            // Without ports a later fragment cannot be translated; letting it out would
            // leak a sandbox address.
            return if masq {
                policy::drop(counter::DROP_FRAGMENT)
            } else {
                TC_ACT_OK
            };
        }
        if tracked(packet) {
            match nat::tracked(ctx, packet, ct::HOOK_UPLINK_EGRESS, 0) {
                NOT_HANDLED => {}
                ELSEWHERE if !masq => return TC_ACT_OK,
                ELSEWHERE => {}
                verdict => return verdict,
            }
            if masq && nat::starts_flow(packet) {
                return nat::masquerade_at_egress(ctx, packet);
            }
        }
        if masq {
            // A TCP packet of no flow, another protocol, an ICMP message of no flow: none
            // may leave with a private source address.
            let reason = if packet.proto == nat_common::PROTO_TCP {
                counter::DROP_TCP_NO_FLOW
            } else {
                counter::DROP_UNTRANSLATED
            };
            return policy::drop(reason);
        }
        TC_ACT_OK
    }

    fn try_sandbox_ingress(ctx: &TcContext, packet: &mut Ipv4Packet) -> i32 {
        let ifindex = lookup::ifindex(ctx);
        // The connection table first: an established packet costs one lookup, and its
        // entry says which sandbox may send it.
        if tracked(packet) {
            match nat::tracked(ctx, packet, ct::HOOK_SANDBOX, ifindex) {
                NOT_HANDLED => {}
                ELSEWHERE => return TC_ACT_OK,
                verdict => return verdict,
            }
        }
        let Some(own) = lookup::iface(ifindex) else {
            return TC_ACT_OK;
        };
        let Some(net) = lookup::network(own.network_id) else {
            return TC_ACT_OK;
        };
        // A sandbox sends from its own address only: never a host address (only natd's
        // translation produces those, and the bridge accepts local sources for that),
        // never another sandbox's.
        let spoofed = if own.addr4 != 0 {
            packet.src != own.addr4
        } else {
            lookup::is_local(packet.src) || lookup::is_loopback(packet.src)
        };
        if spoofed {
            return policy::drop(counter::DROP_SPOOFED_SOURCE);
        }
        if lookup::is_loopback(packet.dst) {
            // A sandbox's own 127.0.0.0/8 never leaves it: one aimed at the host's loopback
            // through the gateway is an attack (CVE-2020-8558 class).
            return policy::drop(counter::DROP_LOOPBACK_SPOOF);
        }
        if icmp::is_error(packet) {
            let verdict = icmp::translate_error(ctx, packet);
            if verdict != NOT_HANDLED {
                return verdict;
            }
        }
        if tracked(packet) && lookup::is_local(packet.dst) {
            if let Some(target) = lookup::published(packet.dst, packet.dport, packet.proto) {
                let verdict = nat::dnat_from_sandbox(ctx, packet, &target, net.gateway, ifindex);
                if verdict != NOT_HANDLED {
                    return verdict;
                }
            }
            return TC_ACT_OK;
        }
        if let Some(reason) = policy::from_sandbox(&net, packet.dst) {
            return policy::drop(reason);
        }
        if net.flags & net::MASQ != 0
            && tracked(packet)
            && nat::starts_flow(packet)
            && policy::network_of(packet.dst).is_none()
        {
            if nat::prepare_masquerade_at_sandbox(ctx, packet, &net, &own, ifindex) {
                return nat::start_masquerade(ctx, packet);
            }
        }
        TC_ACT_OK
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
