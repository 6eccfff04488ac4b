//! natd's kernel programs. Entry points only; the work lives in the modules.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod csum;
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
    use nat_common::{PROTO_ICMP, counter, net};

    use crate::{
        counters, icmp, lookup, maps,
        nat::{self, Hook},
        parse::{self, Fragment, Ipv4Packet, Parsed},
        policy, sock,
    };

    /// Uplink ingress: published ports, replies to masqueraded flows, errors about them,
    /// and the drop of anything aimed directly at a sandbox address.
    #[classifier]
    pub fn natd_uplink_ingress(ctx: TcContext) -> i32 {
        with_ipv4(&ctx, try_uplink_ingress)
    }

    /// Uplink egress: masquerade, replies of published-port flows and errors about them.
    #[classifier]
    pub fn natd_uplink_egress(ctx: TcContext) -> i32 {
        with_ipv4(&ctx, try_uplink_egress)
    }

    /// Host side of sandbox veths (what sandboxes send): published ports reached from
    /// sandboxes (hairpin), replies to flows from outside, and isolation.
    #[classifier]
    pub fn natd_sandbox_ingress(ctx: TcContext) -> i32 {
        with_ipv4(&ctx, try_sandbox_ingress)
    }

    /// Does nothing: the benchmark subtracts its cost (the test-run overhead) from the
    /// others'. Never attached by natd.
    #[classifier]
    pub fn natd_empty(_ctx: TcContext) -> i32 {
        TC_ACT_OK
    }

    #[cgroup_sock_addr(connect4)]
    pub fn natd_connect4(ctx: SockAddrContext) -> i32 {
        sock::rewrite_destination(&ctx);
        1
    }

    #[cgroup_sock_addr(sendmsg4)]
    pub fn natd_sendmsg4(ctx: SockAddrContext) -> i32 {
        sock::rewrite_destination(&ctx);
        1
    }

    #[cgroup_sock_addr(recvmsg4)]
    pub fn natd_recvmsg4(ctx: SockAddrContext) -> i32 {
        sock::restore_peer(&ctx);
        1
    }

    #[cgroup_sock_addr(getpeername4)]
    pub fn natd_getpeername4(ctx: SockAddrContext) -> i32 {
        sock::restore_peer(&ctx);
        1
    }

    #[inline(always)]
    fn with_ipv4(ctx: &TcContext, f: fn(&TcContext, &mut Ipv4Packet) -> i32) -> i32 {
        counters::count_iface(ctx);
        match parse::parse(ctx) {
            Ok(Parsed::Ipv4(mut packet)) => {
                counters::count_l3(4, packet.proto);
                f(ctx, &mut packet)
            }
            Ok(Parsed::Ipv6 { next_header }) => {
                counters::count_l3(6, next_header);
                TC_ACT_OK
            }
            Ok(Parsed::Other) => {
                counters::count_l3(0, 0);
                TC_ACT_OK
            }
            Err(_) => {
                // Malformed frames are not ours to judge: the stack drops what it cannot use.
                counters::bump(counter::MALFORMED);
                TC_ACT_OK
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
        if icmp::is_error(packet)
            && let Some(verdict) = icmp::translate_error(ctx, packet)
        {
            return verdict;
        }
        if tracked(packet) {
            if let Some(verdict) = nat::established(ctx, packet, Hook::UplinkIngress) {
                return verdict;
            }
            if packet.proto != PROTO_ICMP
                && let Some(target) = lookup::published(packet.dst, packet.dport, packet.proto)
            {
                return nat::dnat_new(ctx, packet, &target, None);
            }
        }
        policy::enforce(policy::from_outside(packet.dst))
    }

    fn try_uplink_egress(ctx: &TcContext, packet: &mut Ipv4Packet) -> i32 {
        if icmp::is_error(packet)
            && let Some(verdict) = icmp::translate_error(ctx, packet)
        {
            return verdict;
        }
        let masq = policy::network_of(packet.src).is_some_and(|n| n.flags & net::MASQ != 0);
        if packet.fragment == Fragment::Later {
            // Without ports a later fragment cannot be translated; letting it out would
            // leak a sandbox address.
            if masq {
                counters::bump(counter::DROP_FRAGMENT);
                return aya_ebpf::bindings::TC_ACT_SHOT;
            }
            return TC_ACT_OK;
        }
        if !packet.translatable() {
            return TC_ACT_OK;
        }
        if let Some(verdict) = nat::established(ctx, packet, Hook::UplinkEgress) {
            return verdict;
        }
        if !masq || (packet.proto == PROTO_ICMP && packet.icmp_type != parse::ICMP_ECHO_REQUEST) {
            return TC_ACT_OK;
        }
        nat::masquerade_new(ctx, packet)
    }

    fn try_sandbox_ingress(ctx: &TcContext, packet: &mut Ipv4Packet) -> i32 {
        // SAFETY: the ifindex field is always readable in a TC context.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        let own = maps::NATD_IFACE_CONFIG
            .get_ptr(&ifindex)
            // SAFETY: valid map value pointers, copied at once.
            .and_then(|c| unsafe { maps::NATD_NETWORKS.get_ptr(&(*c).network_id) })
            .map(|n| unsafe { *n });
        let Some(own) = own else { return TC_ACT_OK };
        // Sandboxes never send with a host address as source: only natd's own translation
        // may produce those (the bridge accepts local sources for that reason).
        if lookup::is_local(packet.src) || lookup::is_loopback(packet.src) {
            counters::bump(counter::DROP_SPOOFED_SOURCE);
            return aya_ebpf::bindings::TC_ACT_SHOT;
        }
        if icmp::is_error(packet)
            && let Some(verdict) = icmp::translate_error(ctx, packet)
        {
            return verdict;
        }
        if tracked(packet) {
            if let Some(verdict) = nat::established(ctx, packet, Hook::Sandbox) {
                return verdict;
            }
            if packet.proto != PROTO_ICMP
                && lookup::is_local(packet.dst)
                && let Some(target) = lookup::published(packet.dst, packet.dport, packet.proto)
            {
                return nat::dnat_new(ctx, packet, &target, Some(&own));
            }
        }
        policy::enforce(policy::from_sandbox(&own, packet.dst))
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
