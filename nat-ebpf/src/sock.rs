//! Socket hooks for connections the host itself opens to published ports (its own
//! addresses and 127.0.0.1): the destination is rewritten at connect()/sendmsg() time, so
//! no packet ever carries 127.0.0.1 off the host and route_localnet stays off. These
//! programs (connect, sendmsg, recvmsg and getpeername, for IPv4 and IPv6) are attached to the cgroup v2 root, which spans the whole machine: they act
//! only on sockets of the network namespace natd serves (its netns cookie) and leave every
//! other socket alone.
//!
//! One body serves both families: `SockFamily` reads and writes the context's address in
//! the 16-byte form `SockKey` keeps, and finds the published port behind it.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use nat_common::{
    FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, SockKey, SockOrig,
    addr::{v4_from_raw, v4_raw},
    counter,
};

use crate::{
    counters::bump,
    family::{Family, bytes6, words6},
    lookup::{is_local, published},
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

/// The address family of a socket hook.
pub trait SockFamily {
    const FAMILY: u8;
    /// `user_ip4` / `user_ip6` in the 16-byte form.
    unsafe fn get(sa: *mut bpf_sock_addr) -> [u8; 16];
    unsafe fn set(sa: *mut bpf_sock_addr, addr: [u8; 16]);
    /// Where a connection to `addr:port` of the host goes instead (a published port's
    /// sandbox), if anywhere. Only the host itself (its addresses, loopback) is redirected;
    /// anything else keeps its destination even when a mapping is bound to that address.
    fn target(addr: [u8; 16], port: u16, proto: u8) -> Option<([u8; 16], u16)>;
}

pub struct V4;
pub struct V6;

#[inline(always)]
fn target_of<A: Family>(addr: A, port: u16, proto: u8) -> Option<(A, u16)> {
    if !addr.is_loopback() && !is_local(addr) {
        return None;
    }
    published(addr, port, proto).map(|t| (t.addr, t.port))
}

impl SockFamily for V4 {
    const FAMILY: u8 = FAMILY_V4;
    #[inline(always)]
    unsafe fn get(sa: *mut bpf_sock_addr) -> [u8; 16] {
        // SAFETY: a valid context pointer (the caller's).
        v4_from_raw(unsafe { (*sa).user_ip4 })
    }
    #[inline(always)]
    unsafe fn set(sa: *mut bpf_sock_addr, addr: [u8; 16]) {
        // SAFETY: as above; writable for connect4/sendmsg4/recvmsg4/getpeername4.
        unsafe { (*sa).user_ip4 = v4_raw(&addr) };
    }
    #[inline(always)]
    fn target(addr: [u8; 16], port: u16, proto: u8) -> Option<([u8; 16], u16)> {
        target_of(v4_raw(&addr), port, proto).map(|(a, p)| (v4_from_raw(a), p))
    }
}

/// The third word of a v4-mapped IPv6 address (::ffff:0:0/96) as loaded.
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl SockFamily for V6 {
    const FAMILY: u8 = FAMILY_V6;
    #[inline(always)]
    unsafe fn get(sa: *mut bpf_sock_addr) -> [u8; 16] {
        // SAFETY: a valid context pointer; word by word (the verifier allows only 4-byte
        // accesses to `user_ip6`).
        bytes6(unsafe { [(*sa).user_ip6[0], (*sa).user_ip6[1], (*sa).user_ip6[2], (*sa).user_ip6[3]] })
    }
    #[inline(always)]
    unsafe fn set(sa: *mut bpf_sock_addr, addr: [u8; 16]) {
        let w = words6(addr);
        // SAFETY: as above; writable for connect6/sendmsg6/recvmsg6/getpeername6.
        unsafe {
            (*sa).user_ip6[0] = w[0];
            (*sa).user_ip6[1] = w[1];
            (*sa).user_ip6[2] = w[2];
            (*sa).user_ip6[3] = w[3];
        }
    }
    #[inline(always)]
    fn target(addr: [u8; 16], port: u16, proto: u8) -> Option<([u8; 16], u16)> {
        let w = words6(addr);
        if w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED {
            // A dual-stack socket reaches IPv4 through a v4-mapped address (::ffff:a.b.c.d):
            // connect4 never runs for it, so the IPv4 mapping is applied here.
            return target_of(w[3], port, proto).map(|(a, p)| (bytes6([0, 0, V4_MAPPED, a]), p));
        }
        target_of(w, port, proto).map(|(a, p)| (bytes6(a), p))
    }
}

/// connect / sendmsg: a destination that is a published port of this host becomes the
/// sandbox behind it.
#[inline(always)]
pub fn rewrite_destination<F: SockFamily>(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    // SAFETY: the context pointer is valid for the program's run; these fields are readable
    // and writable for the connect and sendmsg hooks.
    unsafe {
        let sa = ctx.sock_addr;
        let proto = (*sa).protocol as u8;
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return;
        }
        let addr = F::get(sa);
        let port = (*sa).user_port as u16;
        let Some((to, to_port)) = F::target(addr, port, proto) else {
            return;
        };
        F::set(sa, to);
        (*sa).user_port = u32::from(to_port);
        let key = SockKey {
            cookie: bpf_get_socket_cookie(ctx.sock_addr.cast()),
            addr: to,
            port: to_port,
            family: F::FAMILY,
            _pad: [0; 5],
        };
        let orig = SockOrig {
            addr,
            port,
            _pad: [0; 6],
        };
        let _ = maps::NATD_SOCK_ORIG.insert(&key, &orig, 0);
        bump(counter::SOCK_REWRITES);
    }
}

/// recvmsg / getpeername: the peer is shown as the address the application used.
#[inline(always)]
pub fn restore_peer<F: SockFamily>(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    // SAFETY: as above; the address fields hold the peer for recvmsg and getpeername.
    unsafe {
        let sa = ctx.sock_addr;
        let key = SockKey {
            cookie: bpf_get_socket_cookie(ctx.sock_addr.cast()),
            addr: F::get(sa),
            port: (*sa).user_port as u16,
            family: F::FAMILY,
            _pad: [0; 5],
        };
        if let Some(orig) = maps::NATD_SOCK_ORIG.get_ptr(&key) {
            F::set(sa, (*orig).addr);
            (*sa).user_port = u32::from((*orig).port);
        }
    }
}
