//! The 16-byte address form of every map key and value: IPv4 in the first 4 bytes, the
//! rest zero (a family byte beside it says which). Kernel code holds IPv4 addresses as
//! the `u32` it loads from the packet (network byte order bytes read natively); the agent
//! and tests hold octets. Both convert here, nowhere else.

/// Octets (`Ipv4Addr::octets()`) to the 16-byte form.
#[inline(always)]
pub const fn v4(octets: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0] = octets[0];
    out[1] = octets[1];
    out[2] = octets[2];
    out[3] = octets[3];
    out
}

/// The octets of a 16-byte IPv4 address.
#[inline(always)]
pub const fn v4_octets(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}

/// An address as loaded from a packet (`u32` in network byte order) to the 16-byte form.
#[inline(always)]
pub const fn v4_from_raw(raw: u32) -> [u8; 16] {
    v4(raw.to_ne_bytes())
}

/// The 16-byte form back to the packet's `u32`.
#[inline(always)]
pub const fn v4_raw(addr: &[u8; 16]) -> u32 {
    u32::from_ne_bytes(v4_octets(addr))
}
