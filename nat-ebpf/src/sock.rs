//! Socket hooks for connections the host itself opens to published ports (its own
//! addresses and 127.0.0.1): the destination is rewritten at connect()/sendmsg() time, so
//! no packet ever carries 127.0.0.1 off the host and route_localnet stays off. These
//! programs are attached to the cgroup v2 root, which spans the whole machine: they act
//! only on sockets of the network namespace natd serves (its netns cookie) and leave every
//! other socket alone.
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use nat_common::{
    Addr6, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, SockKey, SockOrig,
    addr::{v4_from_raw, v4_raw},
    counter,
};

use crate::{
    counters::bump,
    family::{Family, bytes6, words6},
    lookup::{is_local, is_loopback, published},
    maps,
};

#[inline(always)]
fn ours(ctx: &SockAddrContext) -> bool {
    let Some(wanted) = maps::NATD_NETNS.get(0) else {
        return false;
    };
    // SAFETY: the helper only reads the context.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    *wanted != 0 && cookie == *wanted
}

/// connect4 / sendmsg4: a destination that is a published port of this host becomes the
/// sandbox behind it.
#[inline(always)]
pub fn rewrite_destination(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    // SAFETY: the context pointer is valid for the program's run; these fields are readable
    // and writable for cgroup/connect4 and cgroup/sendmsg4.
    unsafe {
        let sa = ctx.sock_addr;
        let proto = (*sa).protocol as u8;
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return;
        }
        let addr = (*sa).user_ip4;
        let port = (*sa).user_port as u16;
        // Only connections to the host itself are redirected; anything else keeps its
        // destination even when a mapping happens to be bound to that address.
        if !is_loopback(addr) && !is_local(addr) {
            return;
        }
        let Some(target) = published(addr, port, proto) else {
            return;
        };
        (*sa).user_ip4 = target.addr;
        (*sa).user_port = u32::from(target.port);
        let key = SockKey {
            cookie: bpf_get_socket_cookie(ctx.sock_addr.cast()),
            addr: v4_from_raw(target.addr),
            port: target.port,
            family: FAMILY_V4,
            _pad: [0; 5],
        };
        let orig = SockOrig {
            addr: v4_from_raw(addr),
            port,
            _pad: [0; 6],
        };
        let _ = maps::NATD_SOCK_ORIG.insert(&key, &orig, 0);
        bump(counter::SOCK_REWRITES);
    }
}

/// recvmsg4 / getpeername4: the peer is shown as the address the application used.
#[inline(always)]
pub fn restore_peer(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    // SAFETY: as above; user_ip4/user_port hold the peer for recvmsg4 and getpeername4.
    unsafe {
        let sa = ctx.sock_addr;
        let key = SockKey {
            cookie: bpf_get_socket_cookie(ctx.sock_addr.cast()),
            addr: v4_from_raw((*sa).user_ip4),
            port: (*sa).user_port as u16,
            family: FAMILY_V4,
            _pad: [0; 5],
        };
        if let Some(orig) = maps::NATD_SOCK_ORIG.get_ptr(&key) {
            (*sa).user_ip4 = v4_raw(&(*orig).addr);
            (*sa).user_port = u32::from((*orig).port);
        }
    }
}

/// The third word of a v4-mapped IPv6 address (::ffff:0:0/96) as loaded.
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The IPv6 address in a sock_addr context, word by word (the verifier allows only
/// 4-byte accesses to `user_ip6`).
#[inline(always)]
unsafe fn user_ip6(sa: *mut aya_ebpf::bindings::bpf_sock_addr) -> Addr6 {
    // SAFETY: the caller holds a valid context pointer.
    unsafe { [(*sa).user_ip6[0], (*sa).user_ip6[1], (*sa).user_ip6[2], (*sa).user_ip6[3]] }
}

#[inline(always)]
unsafe fn set_user_ip6(sa: *mut aya_ebpf::bindings::bpf_sock_addr, addr: Addr6) {
    // SAFETY: as above; these fields are writable for connect6/sendmsg6/recvmsg6/getpeername6.
    unsafe {
        (*sa).user_ip6[0] = addr[0];
        (*sa).user_ip6[1] = addr[1];
        (*sa).user_ip6[2] = addr[2];
        (*sa).user_ip6[3] = addr[3];
    }
}

/// connect6 / sendmsg6: the IPv6 counterpart of `rewrite_destination` ([::1] and the
/// host's own IPv6 addresses).
#[inline(always)]
pub fn rewrite_destination6(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    // SAFETY: as in `rewrite_destination`.
    unsafe {
        let sa = ctx.sock_addr;
        let proto = (*sa).protocol as u8;
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return;
        }
        let addr = user_ip6(sa);
        let port = (*sa).user_port as u16;
        // A dual-stack socket reaches IPv4 through a v4-mapped address (::ffff:a.b.c.d):
        // connect4 never runs for it, so the IPv4 mapping is applied here.
        let target_addr = if addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED {
            let v4 = addr[3];
            if !is_loopback(v4) && !is_local(v4) {
                return;
            }
            let Some(target) = published(v4, port, proto) else {
                return;
            };
            (*sa).user_port = u32::from(target.port);
            [0, 0, V4_MAPPED, target.addr]
        } else {
            if !addr.is_loopback() && !is_local(addr) {
                return;
            }
            let Some(target) = published(addr, port, proto) else {
                return;
            };
            (*sa).user_port = u32::from(target.port);
            target.addr
        };
        set_user_ip6(sa, target_addr);
        let key = SockKey {
            cookie: bpf_get_socket_cookie(ctx.sock_addr.cast()),
            addr: bytes6(target_addr),
            port: (*sa).user_port as u16,
            family: FAMILY_V6,
            _pad: [0; 5],
        };
        let orig = SockOrig {
            addr: bytes6(addr),
            port,
            _pad: [0; 6],
        };
        let _ = maps::NATD_SOCK_ORIG.insert(&key, &orig, 0);
        bump(counter::SOCK_REWRITES);
    }
}

/// recvmsg6 / getpeername6.
#[inline(always)]
pub fn restore_peer6(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    // SAFETY: as in `restore_peer`.
    unsafe {
        let sa = ctx.sock_addr;
        let key = SockKey {
            cookie: bpf_get_socket_cookie(ctx.sock_addr.cast()),
            addr: bytes6(user_ip6(sa)),
            port: (*sa).user_port as u16,
            family: FAMILY_V6,
            _pad: [0; 5],
        };
        if let Some(orig) = maps::NATD_SOCK_ORIG.get_ptr(&key) {
            set_user_ip6(sa, words6((*orig).addr));
            (*sa).user_port = u32::from((*orig).port);
        }
    }
}
