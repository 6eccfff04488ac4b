//! natd's kernel programs. Entry points only; the work lives in the modules.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod arp;
#[cfg(target_arch = "bpf")]
mod bench;
#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod family;
#[cfg(target_arch = "bpf")]
mod fast;
#[cfg(target_arch = "bpf")]
mod fib;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod lookup;
#[cfg(target_arch = "bpf")]
mod mapping;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod ndp;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod policy;
#[cfg(target_arch = "bpf")]
mod portmarks;
#[cfg(target_arch = "bpf")]
mod quota;
#[cfg(target_arch = "bpf")]
mod sock;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        macros::{cgroup_sock_addr, classifier},
        programs::{SockAddrContext, TcContext},
    };
    use nat_common::{Addr6, FASTPATH_MARK, PROTO_TCP, PROTO_UDP, TC_PASS, config, counter, ct, iface, net, port};

    /// TCX: hand the packet to the next program of the hook (the IPv4 programs to the
    /// IPv6 ones). The same verdict as `TC_PASS`, named for what it does here.
    const TCX_NEXT: i32 = TC_PASS;

    use crate::{
        arp, counters,
        family::Family,
        icmp, lookup,
        nat::{self, ELSEWHERE, NOT_HANDLED},
        ndp,
        parse::{self, ETH_HLEN, Fragment, Packet, Parsed},
        policy, portmarks,
    };

    /// Edge ingress (every interface of natd's namespace that is not natd's own): packets
    /// of tracked flows (into sandboxes), published ports, errors about translated flows,
    /// and the drop of anything aimed directly at a sandbox address or at 127.0.0.0/8.
    #[classifier]
    pub fn natd_edge_in(ctx: TcContext) -> i32 {
        if for_upper_device(&ctx) {
            return TC_PASS;
        }
        with_ipv4(&ctx, ETH_HLEN, try_edge_ingress::<u32>, pass, pass)
    }

    #[classifier]
    pub fn natd_edge_in6(ctx: TcContext) -> i32 {
        if for_upper_device(&ctx) {
            return TC_PASS;
        }
        with_ipv6(&ctx, ETH_HLEN, try_edge_ingress::<Addr6>, edge_link_in, pass)
    }

    /// A frame for a device stacked on this one is judged by that device's program, as
    /// arriving there: a VLAN's (the kernel has moved its tag into the skb, so the frame
    /// looks untagged here, but is delivered to the VLAN device next) or, on an edge that
    /// carries macvlans, one for another MAC. Judged here it would be taken for this
    /// device's (a reply redirected out of it untagged, a trusted interface's rule applied
    /// to another) and judged again there (translated twice). Nothing escapes judgement: a
    /// tag with no device behind it makes the kernel deliver the frame as another host's
    /// (dropped by IP), and a priority tag (VLAN 0), which the kernel delivers on this
    /// device, is judged here; so is every frame on an edge without macvlans.
    #[inline(always)]
    fn for_upper_device(ctx: &TcContext) -> bool {
        // SAFETY: these fields are always readable in a TC context.
        let (vlan_present, vlan_tci, pkt_type) =
            unsafe { ((*ctx.skb.skb).vlan_present, (*ctx.skb.skb).vlan_tci, (*ctx.skb.skb).pkt_type) };
        if vlan_present != 0 && vlan_tci & VLAN_VID_MASK != 0 {
            return true;
        }
        pkt_type == PACKET_OTHERHOST
            && lookup::iface(lookup::ifindex(ctx)).is_some_and(|own| own.flags & iface::MACVLAN_UPPERS != 0)
    }

    /// `linux/if_vlan.h`, `linux/if_packet.h`.
    const VLAN_VID_MASK: u32 = 0x0fff;
    const PACKET_OTHERHOST: u32 = 3;

    /// A sandbox has no VLANs on its bridge: a tagged frame (the tag in the skb, as the
    /// veth hands it over) would reach whatever listens on that VLAN past every IP rule.
    #[inline(always)]
    fn tagged(ctx: &TcContext) -> bool {
        // SAFETY: as above.
        unsafe { (*ctx.skb.skb).vlan_present != 0 }
    }

    /// Edge egress: masquerade of flows the kernel routed here, errors about translated
    /// flows; nothing from a masqueraded network leaves untranslated.
    #[classifier]
    pub fn natd_edge_out(ctx: TcContext) -> i32 {
        if redirected_here(&ctx, parse::ETH_P_IP) {
            return TC_PASS;
        }
        with_ipv4(&ctx, ETH_HLEN, try_edge_egress::<u32>, pass, fail_closed::<u32>)
    }

    #[classifier]
    pub fn natd_edge_out6(ctx: TcContext) -> i32 {
        if redirected_here(&ctx, parse::ETH_P_IPV6) {
            return TC_PASS;
        }
        with_ipv6(
            &ctx,
            ETH_HLEN,
            try_edge_egress::<Addr6>,
            edge_link_out,
            fail_closed::<Addr6>,
        )
    }

    /// The edge programs for devices without a link layer (TUN: WireGuard, Tailscale,
    /// OpenVPN), whose frames start at the IP header.
    #[classifier]
    pub fn natd_edge3_in(ctx: TcContext) -> i32 {
        with_ipv4(&ctx, 0, try_edge_ingress::<u32>, pass, pass)
    }

    #[classifier]
    pub fn natd_edge3_in6(ctx: TcContext) -> i32 {
        with_ipv6(&ctx, 0, try_edge_ingress::<Addr6>, edge_link_in, pass)
    }

    #[classifier]
    pub fn natd_edge3_out(ctx: TcContext) -> i32 {
        with_ipv4(&ctx, 0, try_edge_egress::<u32>, pass, fail_closed::<u32>)
    }

    #[classifier]
    pub fn natd_edge3_out6(ctx: TcContext) -> i32 {
        with_ipv6(
            &ctx,
            0,
            try_edge_egress::<Addr6>,
            edge_link_out,
            fail_closed::<Addr6>,
        )
    }

    /// Host side of sandbox veths (what sandboxes send): packets of tracked flows (out of
    /// the host, or back to their clients), published ports reached from sandboxes
    /// (hairpin), new outbound flows, isolation and anti-spoofing, ARP included.
    #[classifier]
    pub fn natd_sandbox_ingress(ctx: TcContext) -> i32 {
        if tagged(&ctx) {
            return policy::drop(counter::DROP_ETHERTYPE);
        }
        with_ipv4(&ctx, ETH_HLEN, try_sandbox_ingress::<u32>, arp::at_sandbox, pass)
    }

    #[classifier]
    pub fn natd_sandbox_ingress6(ctx: TcContext) -> i32 {
        if tagged(&ctx) {
            return policy::drop(counter::DROP_ETHERTYPE);
        }
        with_ipv6(&ctx, ETH_HLEN, try_sandbox_ingress::<Addr6>, sandbox_link, pass)
    }

    /// A packet a sandbox program translated and redirected to this edge (its mark,
    /// cleared here): passed on untouched by the egress program of its family. The other
    /// family's program leaves the mark alone: it hands the packet on (TCX_NEXT), and the
    /// program after it must still know the packet is translated already.
    #[inline(always)]
    fn redirected_here(ctx: &TcContext, ethertype: u16) -> bool {
        // SAFETY: the mark and protocol fields are always readable in a TC context.
        let (mark, protocol) = unsafe { ((*ctx.skb.skb).mark, (*ctx.skb.skb).protocol) };
        if mark != FASTPATH_MARK || protocol != u32::from(ethertype.to_be()) {
            return false;
        }
        ctx.set_mark(0);
        true
    }

    /// Does nothing: the benchmark subtracts its cost (the test-run overhead) from the
    /// others'. Never attached by natd.
    #[classifier]
    pub fn natd_empty(_ctx: TcContext) -> i32 {
        // The one reference to the layout record, which no program needs: without it the
        // linker drops the map from the object.
        core::hint::black_box(crate::maps::NATD_LAYOUT.get_ptr(0));
        TC_PASS
    }

    #[cgroup_sock_addr(connect4)]
    pub fn natd_connect4(ctx: SockAddrContext) -> i32 {
        crate::sock::rewrite_destination::<crate::sock::V4>(&ctx);
        1
    }

    #[cgroup_sock_addr(sendmsg4)]
    pub fn natd_sendmsg4(ctx: SockAddrContext) -> i32 {
        crate::sock::rewrite_destination::<crate::sock::V4>(&ctx);
        1
    }

    #[cgroup_sock_addr(recvmsg4)]
    pub fn natd_recvmsg4(ctx: SockAddrContext) -> i32 {
        crate::sock::restore_peer::<crate::sock::V4>(&ctx);
        1
    }

    #[cgroup_sock_addr(getpeername4)]
    pub fn natd_getpeername4(ctx: SockAddrContext) -> i32 {
        crate::sock::restore_peer::<crate::sock::V4>(&ctx);
        1
    }

    #[cgroup_sock_addr(connect6)]
    pub fn natd_connect6(ctx: SockAddrContext) -> i32 {
        crate::sock::rewrite_destination::<crate::sock::V6>(&ctx);
        1
    }

    #[cgroup_sock_addr(sendmsg6)]
    pub fn natd_sendmsg6(ctx: SockAddrContext) -> i32 {
        crate::sock::rewrite_destination::<crate::sock::V6>(&ctx);
        1
    }

    #[cgroup_sock_addr(recvmsg6)]
    pub fn natd_recvmsg6(ctx: SockAddrContext) -> i32 {
        crate::sock::restore_peer::<crate::sock::V6>(&ctx);
        1
    }

    #[cgroup_sock_addr(getpeername6)]
    pub fn natd_getpeername6(ctx: SockAddrContext) -> i32 {
        crate::sock::restore_peer::<crate::sock::V6>(&ctx);
        1
    }

    /// Malformed frames are not ours to judge where the stack drops what it cannot use;
    /// neither are frames that are not IP at an edge.
    #[inline(always)]
    fn pass(_ctx: &TcContext, _l3: usize) -> i32 {
        TC_PASS
    }

    /// On the way out, an IP packet natd cannot parse must not leave with a sandbox's
    /// private source address. The family is the program's (the one the EtherType chose),
    /// whatever the version field claims.
    #[inline(never)]
    fn fail_closed<A: Family>(ctx: &TcContext, l3: usize) -> i32 {
        if ctx.load::<A>(l3 + A::SRC_AT).is_ok_and(masqueraded) {
            policy::drop(counter::DROP_UNTRANSLATED)
        } else {
            TC_PASS
        }
    }

    /// A source in a masqueraded network that is not the host's own (a bridge's gateway
    /// address answering a ping is the host speaking, not a sandbox).
    #[inline(always)]
    fn masqueraded<A: Family>(src: A) -> bool {
        policy::network_of(src).is_some_and(|n| n.flags & net::MASQ != 0) && !lookup::is_local(src)
    }

    /// The IPv4 programs: IPv6 goes on to the next program of the hook (the IPv6 one).
    /// `l3`: where the IP header starts (`ETH_HLEN`, or 0 on a device without a link
    /// layer); `other`: what becomes of frames that are not IP (ARP).
    #[inline(always)]
    fn with_ipv4(
        ctx: &TcContext,
        l3: usize,
        f: fn(&TcContext, &mut Packet<u32>) -> i32,
        other: fn(&TcContext, usize) -> i32,
        malformed: fn(&TcContext, usize) -> i32,
    ) -> i32 {
        // Every IPv6 packet comes here first (the IPv6 program is second in TCX order):
        // hand it on before the parser's attempt at IPv4 and its ethertype load (a
        // helper call). The frame's own ethertype decides, read directly, as the parser
        // would: not the skb's protocol, which a sender of raw frames on the host sets as
        // it likes (an IPv4 frame said to be IPv6 would then be judged by no program).
        if l3 == ETH_HLEN && parse::ethertype_direct(ctx) == Some(parse::ETH_P_IPV6) {
            return TCX_NEXT;
        }
        match parse::parse(ctx, l3) {
            Ok(Parsed::Ipv4(mut packet)) => {
                counters::packet(ctx.len(), 4, packet.proto);
                f(ctx, &mut packet)
            }
            Ok(Parsed::Ipv6) => TCX_NEXT,
            Ok(Parsed::Other) => {
                counters::packet(ctx.len(), 0, 0);
                other(ctx, l3)
            }
            Err(_) => {
                counters::bump(counter::MALFORMED);
                malformed(ctx, l3)
            }
        }
    }

    /// The IPv6 programs: the packet is parsed into this CPU's slot (its fields would
    /// take a fifth of the stack), anything else goes on.
    #[inline(always)]
    fn with_ipv6(
        ctx: &TcContext,
        l3: usize,
        f: fn(&TcContext, &mut Packet<Addr6>) -> i32,
        link: fn(&TcContext, &Packet<Addr6>) -> Option<i32>,
        malformed: fn(&TcContext, usize) -> i32,
    ) -> i32 {
        // Every IPv4 packet comes here too (TCX_NEXT): leave it before the slot lookup.
        // Ethernet only: a test run sets the protocol from an Ethernet header, even for
        // a frame without one.
        // SAFETY: the protocol field is always readable in a TC context.
        if l3 == ETH_HLEN && unsafe { (*ctx.skb.skb).protocol } != u32::from(parse::ETH_P_IPV6.to_be()) {
            return TCX_NEXT;
        }
        let Some(packet) = Addr6::packet_slot(0) else {
            return TCX_NEXT;
        };
        match parse::parse6(ctx, l3, packet) {
            Ok(false) => TCX_NEXT,
            Ok(true) => {
                counters::packet(ctx.len(), 6, packet.proto);
                if let Some(verdict) = link(ctx, packet) {
                    return verdict;
                }
                f(ctx, packet)
            }
            Err(_) => {
                counters::bump(counter::MALFORMED);
                malformed(ctx, l3)
            }
        }
    }

    /// Link traffic of a sandbox (see `ndp`); a veth natd does not serve passes it.
    #[inline(always)]
    fn sandbox_link(ctx: &TcContext, packet: &Packet<Addr6>) -> Option<i32> {
        let own = lookup::iface(lookup::ifindex(ctx))?;
        ndp::at_sandbox(ctx, packet, own)
    }

    #[inline(always)]
    fn edge_link_in(_ctx: &TcContext, packet: &Packet<Addr6>) -> Option<i32> {
        ndp::at_edge(packet, true)
    }

    #[inline(always)]
    fn edge_link_out(_ctx: &TcContext, packet: &Packet<Addr6>) -> Option<i32> {
        ndp::at_edge(packet, false)
    }

    #[inline(always)]
    fn tracked<A: Family>(packet: &Packet<A>) -> bool {
        packet.fragment != Fragment::Later && packet.translatable()
    }

    /// A TCP or UDP packet from outside to a port no flow, mapping or published port
    /// uses (`portmarks`): none of the lookups below can find anything for it (the host's
    /// own traffic), so it goes straight to the policy.
    #[inline(always)]
    fn nothing_of_natds<A: Family>(packet: &Packet<A>) -> bool {
        (packet.proto == PROTO_TCP || packet.proto == PROTO_UDP)
            && packet.fragment != Fragment::Later
            && lookup::config().flags & config::PORT_FILTER != 0
            && portmarks::unmarked(packet.proto, packet.dport)
    }

    #[inline(never)]
    fn try_edge_ingress<A: Family>(ctx: &TcContext, packet: &mut Packet<A>) -> i32 {
        let edge = lookup::ifindex(ctx);
        if packet.dst.is_loopback() || nothing_of_natds(packet) {
            return policy::enforce(policy::from_outside(edge, packet.dst));
        }
        if tracked(packet) {
            let verdict = nat::tracked(ctx, packet, ct::HOOK_EDGE_INGRESS, 0);
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
        if tracked(packet) {
            // A published port is the published port's: a mapping's filtering is asked
            // only about ports nothing is published on.
            let verdict = match lookup::published(packet.dst, packet.dport, packet.proto) {
                Some(target)
                    if target.flags & port::TRUSTED_ONLY == 0 || policy::trusted_from(edge, packet.dst) =>
                {
                    nat::dnat_from_outside(ctx, packet, target, edge)
                }
                Some(_) => NOT_HANDLED,
                None => nat::admit_inbound(ctx, packet, edge),
            };
            if verdict != NOT_HANDLED {
                return verdict;
            }
        }
        policy::enforce(policy::from_outside(edge, packet.dst))
    }

    #[inline(never)]
    fn try_edge_egress<A: Family>(ctx: &TcContext, packet: &mut Packet<A>) -> i32 {
        let Some(net) = policy::network_of(packet.src) else {
            // The host's own traffic, and what it routes for others: no flow of natd's
            // leaves with such a source (translated ones leave with the host's), so no
            // lookup. ICMP errors about translated flows come from the host, though.
            if icmp::is_error(packet) {
                let verdict = icmp::translate_error(ctx, packet);
                if verdict != NOT_HANDLED {
                    return verdict;
                }
            }
            return TC_PASS;
        };
        let masq = net.flags & net::MASQ != 0 && !lookup::is_local(packet.src);
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
                TC_PASS
            };
        }
        if tracked(packet) {
            match nat::tracked(ctx, packet, ct::HOOK_EDGE_EGRESS, 0) {
                NOT_HANDLED => {}
                ELSEWHERE if !masq => return TC_PASS,
                ELSEWHERE => {}
                verdict => return verdict,
            }
            if masq && nat::starts_flow(packet) {
                // Two calls from here, so their frames are never stacked.
                let verdict = nat::prepare_masquerade_at_egress(ctx, packet);
                if verdict != NOT_HANDLED {
                    return verdict;
                }
                return nat::start_masquerade(ctx, packet, net.flags);
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
        TC_PASS
    }

    #[inline(never)]
    fn try_sandbox_ingress<A: Family>(ctx: &TcContext, packet: &mut Packet<A>) -> i32 {
        let ifindex = lookup::ifindex(ctx);
        // The connection table first: an established packet costs one lookup, and its
        // entry says which sandbox may send it.
        if tracked(packet) {
            match nat::tracked(ctx, packet, ct::HOOK_SANDBOX, ifindex) {
                NOT_HANDLED => {}
                ELSEWHERE => return TC_PASS,
                verdict => return verdict,
            }
        }
        let Some(own) = lookup::iface(ifindex) else {
            return TC_PASS;
        };
        let Some(net) = A::own_network(own) else {
            // IPv6 from a sandbox whose network has none (link traffic was judged
            // before): nothing to route it with, and no policy to route it under.
            return if A::VERSION == 6 {
                policy::drop(counter::DROP_NO_IPV6)
            } else {
                TC_PASS
            };
        };
        // A sandbox sends from its own address only: never a host address (only natd's
        // translation produces those, and the bridge accepts local sources for that),
        // never another sandbox's.
        let own_addr = A::of_iface(own);
        let spoofed = if !own_addr.is_zero() {
            packet.src != own_addr
        } else {
            lookup::is_local(packet.src) || packet.src.is_loopback()
        };
        if spoofed {
            return policy::drop(counter::DROP_SPOOFED_SOURCE);
        }
        if packet.dst.is_loopback() {
            // A sandbox's own 127.0.0.0/8 (::1) never leaves it: one aimed at the host's loopback
            // through the gateway is an attack (CVE-2020-8558 class).
            return policy::drop(counter::DROP_LOOPBACK_SPOOF);
        }
        if net.flags & net::ICC == 0 && packet.dst.is_broadcast() {
            return policy::to_host_only(net.bridge_ifindex);
        }
        if icmp::is_error(packet) {
            let verdict = icmp::translate_error(ctx, packet);
            if verdict != NOT_HANDLED {
                return verdict;
            }
        }
        // Both ways of starting a masqueraded flow end in one call (the verifier walks a
        // call once per call site).
        let prepared = 'prepare: {
            if tracked(packet) && lookup::is_local(packet.dst) {
                if let Some(target) = lookup::published(packet.dst, packet.dport, packet.proto) {
                    // Through a gateway's address the source stays Docker's: that address is
                    // no peer's view of the sender.
                    if net.flags & (net::MASQ | net::HAIRPIN_EXTERNAL) == net::MASQ | net::HAIRPIN_EXTERNAL
                        && policy::network_of(packet.dst).is_none()
                    {
                        match nat::prepare_hairpin_to_published(packet, target, ifindex) {
                            nat::PREPARED => break 'prepare true,
                            NOT_HANDLED => {}
                            verdict => return verdict,
                        }
                    } else {
                        let verdict = nat::dnat_from_sandbox(ctx, packet, target, net.gateway, ifindex);
                        if verdict != NOT_HANDLED {
                            return verdict;
                        }
                    }
                } else if net.flags & net::MASQ != 0 {
                    match nat::prepare_hairpin_to_mapping(ctx, packet, ifindex) {
                        nat::PREPARED => break 'prepare true,
                        NOT_HANDLED => {}
                        verdict => return verdict,
                    }
                }
                return TC_PASS;
            }
            if let Some(reason) = policy::from_sandbox(&net, packet.dst) {
                return policy::drop(reason);
            }
            if net.flags & net::MASQ != 0
                && tracked(packet)
                && nat::starts_flow(packet)
                && policy::network_of(packet.dst).is_none()
            {
                match nat::prepare_masquerade_at_sandbox(ctx, packet, &net, own, ifindex) {
                    nat::PREPARED => break 'prepare true,
                    NOT_HANDLED => {}
                    verdict => return verdict,
                }
            }
            false
        };
        if prepared {
            return nat::start_masquerade(ctx, packet, net.flags);
        }
        if net.flags & net::ROUTED != 0
            && tracked(packet)
            && nat::starts_flow(packet)
            && policy::network_of(packet.dst).is_none()
        {
            // Routed: the flow keeps its addresses, but is tracked so its replies may come
            // in (everything else aimed at the sandbox from outside is dropped).
            return nat::track_routed(ctx, packet, ifindex);
        }
        TC_PASS
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
