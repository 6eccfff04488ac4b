//! The host-side lookups every hook shares: is an address the host's own, and which
//! sandbox port a published host address and port lead to. TC programs and socket hooks
//! both use `published`, so "which mapping applies" is decided in one place.
use nat_common::{AddrKey, FAMILY_V4, PortKey, PortTarget, addr::v4_from_raw};

use crate::maps;

#[inline(always)]
pub fn port_key(addr: u32, port: u16, proto: u8) -> PortKey {
    PortKey {
        addr: v4_from_raw(addr),
        port,
        proto,
        family: FAMILY_V4,
    }
}

/// One of the host's own addresses (Docker's `--dst-type LOCAL`).
#[inline(always)]
pub fn is_local(addr: u32) -> bool {
    let key = AddrKey {
        addr: v4_from_raw(addr),
        family: FAMILY_V4,
        _pad: [0; 3],
    };
    maps::NATD_LOCAL_ADDRS.get_ptr(&key).is_some()
}

#[inline(always)]
pub fn is_loopback(addr: u32) -> bool {
    addr.to_ne_bytes()[0] == 127
}

/// Whether `port` of `addr` is published at all (bound to `addr` or to every address):
/// masquerade never hands out such a port as a NAT port.
#[inline(always)]
pub fn is_published_port(addr: u32, port: u16, proto: u8) -> bool {
    maps::NATD_PORTS.get_ptr(&port_key(addr, port, proto)).is_some()
        || maps::NATD_PORTS.get_ptr(&port_key(0, port, proto)).is_some()
}

/// The mapping for a destination: bound to that address, or to every address when the
/// destination is one of the host's own (or loopback, for the host's own sockets).
#[inline(always)]
pub fn published(dst: u32, dport: u16, proto: u8) -> Option<PortTarget> {
    if let Some(target) = maps::NATD_PORTS.get_ptr(&port_key(dst, dport, proto)) {
        // SAFETY: valid map value pointer; copied out at once.
        return Some(unsafe { *target });
    }
    if !is_local(dst) && !is_loopback(dst) {
        return None;
    }
    // SAFETY: as above.
    maps::NATD_PORTS
        .get_ptr(&port_key(0, dport, proto))
        .map(|t| unsafe { *t })
}
