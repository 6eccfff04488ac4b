//! IPv6 address management in Docker 27's terms: the host's unique-local pool that
//! networks created with `--ipv6` and no IPv6 subnet get a /64 of, the checks of a user's
//! IPv6 subnet, gateway and `--ip6` address (with Docker's wording), all pure functions.
use std::{collections::HashSet, net::Ipv6Addr};

use ipnetwork::Ipv6Network;
use sha2::{Digest as _, Sha256};

/// Prefix length of the subnets taken from the host's ULA pool.
pub const ULA_SUBNET_PREFIX: u8 = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Ipam6Error {
    #[error("'{0}' is not a valid IPv6 subnet")]
    NotASubnet(String),
    #[error("multicast subnet '{0}' is not allowed")]
    Multicast(String),
    #[error("'{0}' clashes with the Link-Local prefix 'fe80::/64'")]
    LinkLocal(String),
    #[error("invalid subnet {given}: it should be {canonical}")]
    HostBitsSet { given: String, canonical: String },
    #[error("invalid subnet {0}: an IPv6 subnet has at most 126 bits of prefix (sandboxes need addresses)")]
    TooSmall(String),
    #[error("invalid pool request: Pool overlaps with other one on this address space")]
    Overlaps,
    #[error("no free /64 left in this host's IPv6 pool {0}")]
    PoolExhausted(String),
    #[error("invalid gateway address: {0}")]
    NotAGateway(String),
    #[error("invalid gateway {gateway}: parent subnet {subnet} doesn't contain this address")]
    GatewayOutside { gateway: String, subnet: String },
    #[error("invalid IPv6 address: {0}")]
    NotAnAddress(String),
    #[error("no configured subnet or ip-range contain the IP address {0}")]
    OutsideSubnet(String),
    #[error("Invalid address {ip}: it is the subnet-router anycast address of {subnet}")]
    Anycast { ip: String, subnet: String },
    #[error("Address already in use: {0}")]
    InUse(String),
}

/// The host's unique-local /48, as Docker derives it: the first 40 bits of the global ID
/// are the first 8 bytes of SHA-256(host id), big endian, masked to 40 bits, after fd00::/8.
/// Stable for a state directory, and different between hosts so their networks can be
/// routed to each other without clashing.
pub fn ula_pool(host_id: &str) -> Ipv6Network {
    let digest = Sha256::digest(host_id.as_bytes());
    let first8: [u8; 8] = digest[..8].try_into().expect("a SHA-256 digest has 32 bytes");
    let gid = u64::from_be_bytes(first8) & ((1u64 << 40) - 1);
    let base = (0xfdu128 << 120) | (u128::from(gid) << 80);
    Ipv6Network::new(Ipv6Addr::from(base), 48).expect("a /48 prefix is valid")
}

/// The lowest /64 of `pool` that overlaps none of `taken`.
pub fn pick_free_v6(pool: Ipv6Network, taken: &[Ipv6Network]) -> Result<Ipv6Network, Ipam6Error> {
    let base = u128::from(pool.network());
    let count = 1u128 << (ULA_SUBNET_PREFIX - pool.prefix());
    let step = 1u128 << (128 - ULA_SUBNET_PREFIX);
    (0..count)
        .map(|i| Ipv6Network::new(Ipv6Addr::from(base + i * step), ULA_SUBNET_PREFIX).expect("valid prefix"))
        .find(|candidate| !taken.iter().any(|t| overlaps(*t, *candidate)))
        .ok_or_else(|| Ipam6Error::PoolExhausted(pool.to_string()))
}

/// Whether two IPv6 subnets share an address.
pub fn overlaps(a: Ipv6Network, b: Ipv6Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// A user's IPv6 subnet (`--subnet`), checked as Docker checks it.
pub fn parse_subnet(text: &str) -> Result<Ipv6Network, Ipam6Error> {
    let not_valid = || Ipam6Error::NotASubnet(text.to_string());
    let (address, prefix) = text.split_once('/').ok_or_else(not_valid)?;
    let address: Ipv6Addr = address.parse().map_err(|_| not_valid())?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 128).ok_or_else(not_valid)?;
    let given = Ipv6Network::new(address, prefix).map_err(|_| not_valid())?;
    let subnet = Ipv6Network::new(given.network(), prefix).expect("same prefix");
    if subnet.ip() != address {
        return Err(Ipam6Error::HostBitsSet {
            given: text.to_string(),
            canonical: subnet.to_string(),
        });
    }
    let multicast: Ipv6Network = "ff00::/8".parse().expect("constant");
    if overlaps(multicast, subnet) {
        return Err(Ipam6Error::Multicast(text.to_string()));
    }
    // All of fe80::/10 is link-local scope (Docker checks only fe80::/64): natd's programs
    // leave such addresses to the link, a network there would escape every policy.
    let link_local: Ipv6Network = "fe80::/10".parse().expect("constant");
    if overlaps(link_local, subnet) {
        return Err(Ipam6Error::LinkLocal(text.to_string()));
    }
    if prefix > 126 {
        return Err(Ipam6Error::TooSmall(text.to_string()));
    }
    Ok(subnet)
}

/// `subnet` unless it overlaps one of `taken` (other networks' IPv6 subnets).
pub fn check_free(subnet: Ipv6Network, taken: &[Ipv6Network]) -> Result<Ipv6Network, Ipam6Error> {
    if taken.iter().any(|t| overlaps(*t, subnet)) {
        return Err(Ipam6Error::Overlaps);
    }
    Ok(subnet)
}

/// A user's IPv6 gateway (`--gateway`) inside `subnet`.
pub fn parse_gateway(subnet: Ipv6Network, text: &str) -> Result<Ipv6Addr, Ipam6Error> {
    let gateway: Ipv6Addr = text
        .parse()
        .map_err(|_| Ipam6Error::NotAGateway(text.to_string()))?;
    if !subnet.contains(gateway) {
        return Err(Ipam6Error::GatewayOutside {
            gateway: text.to_string(),
            subnet: subnet.to_string(),
        });
    }
    if gateway == subnet.network() || gateway.is_unspecified() {
        return Err(Ipam6Error::Anycast {
            ip: text.to_string(),
            subnet: subnet.to_string(),
        });
    }
    Ok(gateway)
}

/// The text of `--ip6`: an IPv6 address that is not `::` (an IPv4 one is refused too).
pub fn parse_requested(text: &str) -> Result<Ipv6Addr, Ipam6Error> {
    text.parse::<Ipv6Addr>()
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .ok_or_else(|| Ipam6Error::NotAnAddress(text.to_string()))
}

/// Checks an address the user asked for (`--ip6`) against the network's subnet and the
/// addresses in use (which hold the gateway).
pub fn check_requested(
    subnet: Ipv6Network,
    ip: Ipv6Addr,
    used: &HashSet<Ipv6Addr>,
) -> Result<(), Ipam6Error> {
    if !subnet.contains(ip) {
        return Err(Ipam6Error::OutsideSubnet(ip.to_string()));
    }
    if ip == subnet.network() {
        return Err(Ipam6Error::Anycast {
            ip: ip.to_string(),
            subnet: subnet.to_string(),
        });
    }
    if used.contains(&ip) {
        return Err(Ipam6Error::InUse(ip.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv6Network {
        s.parse().unwrap()
    }

    #[test]
    fn the_ula_pool_is_derived_from_the_host_id_as_docker_does() {
        // The 40-bit global ID sits right after fd00::/8, the subnet ID and host bits are 0.
        let digest = Sha256::digest(b"natd-test-host");
        let expected_gid = u64::from_be_bytes(digest[..8].try_into().unwrap()) & 0xff_ffff_ffff;
        let pool = ula_pool("natd-test-host");
        assert_eq!(pool.prefix(), 48);
        let segments = pool.network().segments();
        assert_eq!(segments[0] >> 8, 0xfd);
        let gid =
            (u64::from(segments[0] & 0xff) << 32) | (u64::from(segments[1]) << 16) | u64::from(segments[2]);
        assert_eq!(gid, expected_gid);
        assert_eq!(&segments[3..], &[0; 5]);
        // Stable for one id, different for another.
        assert_eq!(ula_pool("natd-test-host"), pool);
        assert_ne!(ula_pool("another-host"), pool);
    }

    #[test]
    fn a_known_digest_gives_the_known_prefix() {
        // sha256("abc") starts ba7816bf8f01cfea: low 40 bits bf8f01cfea.
        assert_eq!(ula_pool("abc"), net("fdbf:8f01:cfea::/48"));
    }

    #[test]
    fn first_fit_skips_taken_subnets() {
        let pool = net("fd12:3456:789a::/48");
        assert_eq!(pick_free_v6(pool, &[]).unwrap(), net("fd12:3456:789a::/64"));
        let taken = [
            net("fd12:3456:789a::/64"),
            net("fd12:3456:789a:1::/64"),
            net("fd12:3456:789a:3::/64"),
        ];
        assert_eq!(pick_free_v6(pool, &taken).unwrap(), net("fd12:3456:789a:2::/64"));
        // A larger subnet somewhere else in the pool covers several /64s.
        let taken = [net("fd12:3456:789a::/62")];
        assert_eq!(pick_free_v6(pool, &taken).unwrap(), net("fd12:3456:789a:4::/64"));
        // A subnet that covers the whole pool leaves nothing.
        assert_eq!(
            pick_free_v6(pool, &[net("fd12::/16")]).unwrap_err(),
            Ipam6Error::PoolExhausted("fd12:3456:789a::/48".into())
        );
    }

    #[test]
    fn subnets_are_checked_with_dockers_words() {
        assert_eq!(parse_subnet("2001:db8:1::/64").unwrap(), net("2001:db8:1::/64"));
        let msg = |t: &str| parse_subnet(t).unwrap_err().to_string();
        assert_eq!(
            msg("2001:db8::zz/64"),
            "'2001:db8::zz/64' is not a valid IPv6 subnet"
        );
        assert_eq!(msg("2001:db8::"), "'2001:db8::' is not a valid IPv6 subnet");
        assert_eq!(
            msg("2001:db8::/129"),
            "'2001:db8::/129' is not a valid IPv6 subnet"
        );
        assert_eq!(msg("ff02::/64"), "multicast subnet 'ff02::/64' is not allowed");
        assert_eq!(
            msg("fe80::/64"),
            "'fe80::/64' clashes with the Link-Local prefix 'fe80::/64'"
        );
        assert_eq!(
            msg("fe80::/10"),
            "'fe80::/10' clashes with the Link-Local prefix 'fe80::/64'"
        );
        assert_eq!(
            msg("fe80:1::/64"),
            "'fe80:1::/64' clashes with the Link-Local prefix 'fe80::/64'"
        );
        assert_eq!(
            msg("2001:db8::1/64"),
            "invalid subnet 2001:db8::1/64: it should be 2001:db8::/64"
        );
        assert_eq!(
            check_free(net("2001:db8::/56"), &[net("2001:db8:0:1::/64")])
                .unwrap_err()
                .to_string(),
            "invalid pool request: Pool overlaps with other one on this address space"
        );
        assert!(check_free(net("2001:db8:1::/64"), &[net("2001:db8::/64")]).is_ok());
    }

    #[test]
    fn gateways_and_requested_addresses() {
        let subnet = net("2001:db8::/64");
        assert_eq!(
            parse_gateway(subnet, "2001:db8::fe").unwrap().to_string(),
            "2001:db8::fe"
        );
        assert_eq!(
            parse_gateway(subnet, "2001:db9::1").unwrap_err().to_string(),
            "invalid gateway 2001:db9::1: parent subnet 2001:db8::/64 doesn't contain this address"
        );
        assert_eq!(
            parse_requested("10.0.0.1").unwrap_err().to_string(),
            "invalid IPv6 address: 10.0.0.1"
        );
        assert_eq!(
            parse_requested("::").unwrap_err().to_string(),
            "invalid IPv6 address: ::"
        );
        let used = HashSet::from(["2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap()]);
        assert!(check_requested(subnet, "2001:db8::10".parse().unwrap(), &used).is_ok());
        assert_eq!(
            check_requested(subnet, "2001:db8::2".parse().unwrap(), &used)
                .unwrap_err()
                .to_string(),
            "Address already in use: 2001:db8::2"
        );
        assert_eq!(
            check_requested(subnet, "2001:db9::2".parse().unwrap(), &used)
                .unwrap_err()
                .to_string(),
            "no configured subnet or ip-range contain the IP address 2001:db9::2"
        );
    }
}
