//! Address management: sandbox addresses from a network's pool and free subnets for new
//! networks. Pure functions over what is in use, so the daemon decides what "in use" means.
use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnetwork::{Ipv4Network, Ipv6Network};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("no available IPv4 addresses on this network's address pools: {network} ({pool})")]
    Exhausted { network: String, pool: String },
    #[error("Invalid address {ip}: It does not belong to any of this network's subnets")]
    OutsideSubnet { ip: String },
    #[error("Address already in use: {ip}")]
    InUse { ip: String },
    #[error("Invalid address {ip}: it is the network or broadcast address of {subnet}")]
    Reserved { ip: String, subnet: String },
    #[error(
        "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network"
    )]
    NoFreeSubnet,
    #[error("no matching subnet for range {range}")]
    PoolOutsideSubnet { range: String },
}

/// Docker-like default pools that networks created without `--subnet` are carved from, as /24s.
pub const DEFAULT_POOLS: [(Ipv4Addr, u8); 2] = [
    (Ipv4Addr::new(172, 20, 0, 0), 14),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
];
pub const DEFAULT_POOL_PREFIX: u8 = 24;

/// First free address of `pool` (or of `subnet` when no pool is set), skipping the subnet's
/// network and broadcast addresses and everything in `used` (which holds the gateway).
pub fn allocate_v4(
    network_name: &str,
    subnet: Ipv4Network,
    pool: Option<Ipv4Network>,
    used: &HashSet<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    let range = pool.unwrap_or(subnet);
    let first = u32::from(range.network());
    let last = u32::from(range.broadcast());
    (first..=last)
        .map(Ipv4Addr::from)
        // The pool's own first and last address are skipped too: a sandbox on x.y.z.0 of a
        // larger subnet is valid but confuses enough tools to not be worth handing out.
        .find(|ip| !is_reserved_v4(subnet, *ip) && !is_reserved_v4(range, *ip) && !used.contains(ip))
        .ok_or_else(|| IpamError::Exhausted {
            network: network_name.to_string(),
            pool: range.to_string(),
        })
}

/// Checks an address the user asked for (`--ip`).
pub fn check_requested_v4(
    subnet: Ipv4Network,
    ip: Ipv4Addr,
    used: &HashSet<Ipv4Addr>,
) -> Result<(), IpamError> {
    if !subnet.contains(ip) {
        return Err(IpamError::OutsideSubnet { ip: ip.to_string() });
    }
    if is_reserved_v4(subnet, ip) {
        return Err(IpamError::Reserved {
            ip: ip.to_string(),
            subnet: subnet.to_string(),
        });
    }
    if used.contains(&ip) {
        return Err(IpamError::InUse { ip: ip.to_string() });
    }
    Ok(())
}

fn is_reserved_v4(subnet: Ipv4Network, ip: Ipv4Addr) -> bool {
    // /31 and /32 have no network or broadcast address (RFC 3021).
    subnet.prefix() < 31 && (ip == subnet.network() || ip == subnet.broadcast())
}

/// First free IPv6 address of `subnet`, skipping the subnet-router anycast address.
pub fn allocate_v6(
    network_name: &str,
    subnet: Ipv6Network,
    used: &HashSet<Ipv6Addr>,
) -> Result<Ipv6Addr, IpamError> {
    let base = u128::from(subnet.network());
    let host_bits = 128 - u32::from(subnet.prefix());
    // Searching more than a few million candidates means the pool is effectively full of
    // our own allocations; real networks never get near that.
    let span: u128 = if host_bits >= 24 {
        1 << 24
    } else {
        1u128 << host_bits
    };
    (1..span)
        .map(|offset| Ipv6Addr::from(base + offset))
        .find(|ip| !used.contains(ip))
        .ok_or_else(|| IpamError::Exhausted {
            network: network_name.to_string(),
            pool: subnet.to_string(),
        })
}

/// Checks that a pool (`--ip-range`, `--fixed-cidr`) lies inside its subnet.
pub fn check_pool(subnet: Ipv4Network, pool: Ipv4Network) -> Result<(), IpamError> {
    if !subnet.contains(pool.network()) || pool.prefix() < subnet.prefix() {
        return Err(IpamError::PoolOutsideSubnet {
            range: pool.to_string(),
        });
    }
    Ok(())
}

/// Picks the first /24 of the default pools that overlaps none of `taken`.
pub fn pick_free_subnet(taken: &[Ipv4Network]) -> Result<Ipv4Network, IpamError> {
    pick_free_from(&DEFAULT_POOLS, taken)
}

/// Overlay networks' default pool, as Docker's swarm: 10.0.0.0/8 in /24s.
pub const OVERLAY_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 0, 0, 0), 8);

pub fn pick_free_overlay_subnet(taken: &[Ipv4Network]) -> Result<Ipv4Network, IpamError> {
    pick_free_from(&[OVERLAY_POOL], taken)
}

fn pick_free_from(pools: &[(Ipv4Addr, u8)], taken: &[Ipv4Network]) -> Result<Ipv4Network, IpamError> {
    for &(base, prefix) in pools {
        let pool = Ipv4Network::new(base, prefix).expect("constant pool");
        let step = 1u32 << (32 - DEFAULT_POOL_PREFIX);
        let mut start = u32::from(pool.network());
        while pool.contains(Ipv4Addr::from(start)) {
            let candidate =
                Ipv4Network::new(Ipv4Addr::from(start), DEFAULT_POOL_PREFIX).expect("valid prefix");
            if !taken.iter().any(|t| t.overlaps(candidate)) {
                return Ok(candidate);
            }
            match start.checked_add(step) {
                Some(next) => start = next,
                None => break,
            }
        }
    }
    Err(IpamError::NoFreeSubnet)
}

/// The first host address of an IPv6 subnet (its gateway by default).
pub fn first_v6_host(net: Ipv6Network) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) + 1)
}

/// The gateway a new network gets when none is given: the first host address.
pub fn default_gateway(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_sequentially_skipping_used() {
        let subnet = net("10.1.0.0/29");
        let mut used = HashSet::from([Ipv4Addr::new(10, 1, 0, 1)]);
        let mut got = Vec::new();
        loop {
            match allocate_v4("n", subnet, None, &used) {
                Ok(ip) => {
                    used.insert(ip);
                    got.push(ip.to_string());
                }
                Err(e) => {
                    assert!(matches!(e, IpamError::Exhausted { .. }));
                    break;
                }
            }
        }
        assert_eq!(got, ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]);
    }

    #[test]
    fn pool_restricts_range() {
        let ip = allocate_v4("n", net("10.1.0.0/16"), Some(net("10.1.5.0/24")), &HashSet::new()).unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 1, 5, 1));
    }

    #[test]
    fn requested_address_checks() {
        let subnet = net("10.1.0.0/24");
        let used = HashSet::from([Ipv4Addr::new(10, 1, 0, 7)]);
        assert!(check_requested_v4(subnet, Ipv4Addr::new(10, 1, 0, 8), &used).is_ok());
        assert_eq!(
            check_requested_v4(subnet, Ipv4Addr::new(10, 1, 0, 7), &used)
                .unwrap_err()
                .to_string(),
            "Address already in use: 10.1.0.7"
        );
        assert!(matches!(
            check_requested_v4(subnet, Ipv4Addr::new(10, 2, 0, 7), &used),
            Err(IpamError::OutsideSubnet { .. })
        ));
        assert!(matches!(
            check_requested_v4(subnet, Ipv4Addr::new(10, 1, 0, 255), &used),
            Err(IpamError::Reserved { .. })
        ));
    }

    #[test]
    fn v6_allocation() {
        let subnet: Ipv6Network = "2001:db8::/64".parse().unwrap();
        let used = HashSet::from(["2001:db8::1".parse().unwrap()]);
        assert_eq!(
            allocate_v6("n", subnet, &used).unwrap().to_string(),
            "2001:db8::2"
        );
    }

    #[test]
    fn free_subnet_avoids_overlaps() {
        let taken = [net("172.20.0.0/24"), net("172.20.1.0/25"), net("172.16.0.0/12")];
        // 172.16.0.0/12 covers the whole first pool, so the second pool is used.
        assert_eq!(pick_free_subnet(&taken).unwrap(), net("192.168.0.0/24"));
        let taken = [net("172.20.0.0/24"), net("172.20.1.0/25")];
        assert_eq!(pick_free_subnet(&taken).unwrap(), net("172.20.2.0/24"));
    }
}
