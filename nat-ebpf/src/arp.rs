//! ARP from sandboxes. A sandbox may announce and resolve from its own IPv4 address (or
//! probe from 0.0.0.0, RFC 5227), with the MAC it sends from: one that claims another
//! sandbox's or the gateway's address poisons the neighbour caches of everything on the
//! bridge, the host's included, and is dropped (`drop_link_spoof`). A sandbox speaks IPv4,
//! IPv6 and ARP; other EtherTypes (VLAN tags, which would carry IP past every check) are
//! dropped (`drop_ethertype`).
use aya_ebpf::programs::TcContext;
use nat_common::{TC_PASS, counter};

use crate::{
    lookup,
    parse::{self, ETH_HLEN, ETH_P_ARP, ethertype},
    policy,
};

const ARP_PTYPE_IPV4: u16 = 0x0800;
/// Offsets in the ARP body (RFC 826, Ethernet/IPv4): protocol type, protocol address
/// length, sender hardware and protocol addresses.
const PTYPE_AT: usize = 2;
const PLEN_AT: usize = 5;
const SHA_AT: usize = 8;
const SPA_AT: usize = 14;

/// What a sandbox's veth does with a frame that is not IP (the IPv4 program sees it first).
#[inline(never)]
pub fn at_sandbox(ctx: &TcContext, l3: usize) -> i32 {
    if ethertype(ctx, l3).ok() != Some(ETH_P_ARP) {
        return policy::drop(counter::DROP_ETHERTYPE);
    }
    let Some(own) = lookup::iface(lookup::ifindex(ctx)) else {
        return TC_PASS;
    };
    let arp = ETH_HLEN;
    let (Ok(ptype), Ok(plen), Ok(sha), Ok(spa), Some((src_mac, _))) = (
        ctx.load::<u16>(arp + PTYPE_AT),
        ctx.load::<u8>(arp + PLEN_AT),
        ctx.load::<[u8; 6]>(arp + SHA_AT),
        ctx.load::<u32>(arp + SPA_AT),
        parse::macs(ctx),
    ) else {
        return policy::drop(counter::DROP_LINK_SPOOF);
    };
    if u16::from_be(ptype) != ARP_PTYPE_IPV4 || plen != 4 {
        return policy::drop(counter::DROP_LINK_SPOOF);
    }
    if (spa != own.addr4 && spa != 0) || sha != src_mac {
        return policy::drop(counter::DROP_LINK_SPOOF);
    }
    TC_PASS
}
