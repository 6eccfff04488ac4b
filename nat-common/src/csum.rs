//! Internet checksum arithmetic (RFC 1071, RFC 1624) on words as they sit in packet
//! memory, loaded natively: one's complement sums do not depend on byte order as long as
//! every value is loaded and stored the same way, which is how the kernel's csum helpers
//! work too. The fast path precomputes a flow's checksum differences with `diff` when the
//! flow is created and applies them per packet; the agent and the tests use the same code.

/// One's complement addition of 32-bit partial sums (the kernel's `csum_add`).
#[inline(always)]
pub const fn add(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    sum.wrapping_add(carry as u32)
}

/// The difference of replacing 32-bit words `old` by `new` (the result of
/// `bpf_csum_diff(old, new, 0)`): the sum of `!old` and `new`.
#[inline(always)]
pub const fn diff2(old: [u32; 2], new: [u32; 2]) -> u32 {
    add(add(!old[0], !old[1]), add(new[0], new[1]))
}

/// The difference of replacing one 32-bit word.
#[inline(always)]
pub const fn diff1(old: u32, new: u32) -> u32 {
    add(!old, new)
}

/// The difference of replacing one 16-bit word.
#[inline(always)]
pub const fn diff16(old: u16, new: u16) -> u32 {
    add((!old) as u32 & 0xffff, new as u32)
}

/// Folds a 32-bit partial sum into 16 bits.
#[inline(always)]
pub const fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// A stored checksum field after the covered data changed by `diff` (the kernel's
/// `csum_replace_by_diff`).
#[inline(always)]
pub const fn replace(check: u16, diff: u32) -> u16 {
    !fold(add(diff, (!check) as u32 & 0xffff))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full checksum of 16-bit words as read natively.
    fn full(words: &[u16]) -> u16 {
        let mut sum = 0u32;
        for w in words {
            sum = add(sum, *w as u32);
        }
        !fold(sum)
    }

    fn words(bytes: &[u8]) -> [u16; 10] {
        let mut out = [0u16; 10];
        for (i, w) in out.iter_mut().enumerate() {
            *w = u16::from_ne_bytes([bytes[2 * i], bytes[2 * i + 1]]);
        }
        out
    }

    #[test]
    fn incremental_update_equals_recomputation() {
        // An IPv4 header: 203.0.113.7 -> 198.51.100.1, TTL 64, TCP.
        let mut header: [u8; 20] = [
            0x45, 0, 0, 60, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 203, 0, 113, 7, 198, 51, 100, 1,
        ];
        let check = full(&words(&header));
        header[10..12].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(full(&words(&header)), 0, "a valid header sums to zero");

        // DNAT to 172.20.0.2 and TTL 64 -> 63, applied incrementally.
        let load32 = |h: &[u8; 20], at: usize| u32::from_ne_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let old = [load32(&header, 12), load32(&header, 16)];
        let new_dst = [172u8, 20, 0, 2];
        let new = [old[0], u32::from_ne_bytes(new_dst)];
        let ttl_old = u16::from_ne_bytes([header[8], header[9]]);
        let ttl_new = u16::from_ne_bytes([header[8] - 1, header[9]]);
        let d = add(diff2(old, new), diff16(ttl_old, ttl_new));
        let check = u16::from_ne_bytes([header[10], header[11]]);
        let updated = replace(check, d);

        header[8] -= 1;
        header[16..20].copy_from_slice(&new_dst);
        header[10..12].copy_from_slice(&updated.to_ne_bytes());
        assert_eq!(
            full(&words(&header)),
            0,
            "the updated checksum is the recomputed one"
        );
    }

    #[test]
    fn a_diff_and_its_inverse_cancel() {
        let (a, b) = (0x0a00_0001u32, 0xc633_6401u32);
        let there = diff1(a, b);
        let back = diff1(b, a);
        assert_eq!(fold(add(there, back)), 0xffff, "x + ~x is negative zero");
        assert_eq!(replace(replace(0x1234, there), back), 0x1234);
    }
}
