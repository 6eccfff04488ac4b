//! What natd accepts from the cluster store. Anyone who can write to the store could
//! otherwise steer this host's kernel: a claim outside its network's subnet or on its
//! gateway would put a neighbour entry over a local address, the all-zero MAC is VXLAN's
//! default destination (every broadcast of the network would go to the writer), a host
//! record with a loopback or local address would send the overlay's traffic back into this
//! host. Each check here is self-contained (one record, or a claim against its network's
//! record); what depends on this host (its addresses, routes and sandboxes) is checked
//! where the overlay is programmed (`daemon::overlay`).
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::{Claim, HostRecord, OverlayRecord};

/// VXLAN's network identifier is 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// A record longer than this is refused unread (the store's values are small JSON
/// documents; etcd itself accepts up to 1.5 MiB).
pub const MAX_RECORD_BYTES: usize = 4096;
/// Smallest overlay subnet with room for sandboxes (as `network create` allows).
const MAX_PREFIX: u8 = 30;

/// Network, sandbox and host names as natd's API accepts them (Docker's rule).
pub fn valid_name(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An address another host may be reached at: a unicast address that leaves this host.
pub fn underlay_address(ip: Ipv4Addr) -> Result<(), String> {
    let why = if ip.is_unspecified() || ip.octets()[0] == 0 {
        "an unspecified address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if ip.is_link_local() {
        "a link-local address"
    } else if ip.is_broadcast() || ip.octets()[0] >= 240 {
        "a reserved or broadcast address"
    } else {
        return Ok(());
    };
    Err(format!("underlay address {ip} is {why}"))
}

/// An overlay sandbox's MAC: Docker's 02:42 followed by its address. Every natd gives
/// its overlay endpoints this MAC (when an address is reused on another host, the neighbour
/// entries other sandboxes still hold for it stay right), so a claim with any other MAC is
/// forged: this also keeps a claim from taking a local sandbox's or another claim's MAC.
pub fn overlay_mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// A sandbox's MAC: unicast and not all zeros.
pub fn endpoint_mac(text: &str) -> Result<[u8; 6], String> {
    let mac = crate::sys::vxlan::parse_mac(text).ok_or_else(|| format!("MAC {text:?} is not a MAC address"))?;
    if mac == [0; 6] {
        return Err("MAC 00:00:00:00:00:00 is VXLAN's default destination, never a sandbox's".into());
    }
    if mac[0] & 1 == 1 {
        return Err(format!("MAC {text} is a multicast address"));
    }
    Ok(mac)
}

pub fn host(id: &str, record: &HostRecord) -> Result<(), String> {
    if record.id != id {
        return Err(format!("the record names host {:?}, its key {id:?}", record.id));
    }
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!("host id {id:?} is not a host id"));
    }
    // Shown by `natctl info` and `network inspect`: a host name, no control characters.
    if record.name.len() > 253 || !record.name.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!("host name {:?} is not a host name", record.name));
    }
    underlay_address(record.addr)
}

pub fn network(name: &str, record: &OverlayRecord) -> Result<(), String> {
    if record.name != name {
        return Err(format!("the record names network {:?}, its key {name:?}", record.name));
    }
    if !valid_name(name) {
        return Err(format!("network name {name:?} is not a valid name"));
    }
    if !(1..=MAX_VNI).contains(&record.vni) {
        return Err(format!("VNI {} is outside 1..={MAX_VNI}", record.vni));
    }
    let subnet = record.subnet;
    if subnet.prefix() > MAX_PREFIX || subnet.prefix() < 8 {
        return Err(format!("subnet {subnet} is not between /8 and /{MAX_PREFIX}"));
    }
    if subnet.ip() != subnet.network() {
        return Err(format!("subnet {subnet} is not a network address (it would be {}/{})", subnet.network(), subnet.prefix()));
    }
    let base = subnet.network();
    if base.is_loopback() || base.is_multicast() || base.is_link_local() || base.octets()[0] == 0 || base.octets()[0] >= 240 {
        return Err(format!("subnet {subnet} is not a unicast range"));
    }
    let gateway = record.gateway;
    if !subnet.contains(gateway) || gateway == subnet.network() || gateway == subnet.broadcast() {
        return Err(format!("gateway {gateway} is not a host address of subnet {subnet}"));
    }
    Ok(())
}

/// A claim on its own: a well-formed owner and, once known, a sandbox's MAC.
pub fn claim(record: &Claim) -> Result<(), String> {
    if record.host.is_empty() || record.host.len() > 64 {
        return Err(format!("owner host id {:?} is not a host id", record.host));
    }
    if !valid_name(&record.sandbox) {
        return Err(format!("sandbox name {:?} is not a valid name", record.sandbox));
    }
    match &record.mac {
        Some(mac) => endpoint_mac(mac).map(|_| ()),
        None => Ok(()),
    }
}

/// A claim of `ip` against its network: a host address of the subnet, never the gateway.
pub fn claim_in(network: &OverlayRecord, ip: Ipv4Addr) -> Result<(), String> {
    let subnet: Ipv4Network = network.subnet;
    if !subnet.contains(ip) {
        return Err(format!("address {ip} is outside subnet {subnet} of network {}", network.name));
    }
    if ip == subnet.network() || ip == subnet.broadcast() {
        return Err(format!("address {ip} is the network or broadcast address of {subnet}"));
    }
    if ip == network.gateway {
        return Err(format!("address {ip} is the gateway of network {}", network.name));
    }
    Ok(())
}

/// A claim's MAC against its address (see `overlay_mac`); a claim without a MAC yet is
/// not programmed anywhere.
pub fn claim_mac(ip: Ipv4Addr, claim: &Claim) -> Result<Option<[u8; 6]>, String> {
    let Some(text) = &claim.mac else {
        return Ok(None);
    };
    let mac = endpoint_mac(text)?;
    if mac != overlay_mac(ip) {
        let want = overlay_mac(ip).map(|b| format!("{b:02x}")).join(":");
        return Err(format!("MAC {text} is not the MAC of address {ip} ({want})"));
    }
    Ok(Some(mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network_record(subnet: &str, gateway: &str) -> OverlayRecord {
        OverlayRecord {
            name: "ov1".into(),
            subnet: subnet.parse().unwrap(),
            gateway: gateway.parse().unwrap(),
            vni: 4096,
            internal: false,
            created: 0,
            created_by: "a".into(),
        }
    }

    #[test]
    fn macs_a_sandbox_can_have() {
        assert!(endpoint_mac("02:42:0a:46:00:02").is_ok());
        assert!(endpoint_mac("00:00:00:00:00:00").unwrap_err().contains("default destination"));
        assert!(endpoint_mac("01:00:5e:00:00:01").unwrap_err().contains("multicast"));
        assert!(endpoint_mac("ff:ff:ff:ff:ff:ff").unwrap_err().contains("multicast"));
        assert!(endpoint_mac("02:42").is_err());
    }

    #[test]
    fn underlay_addresses() {
        assert!(underlay_address("198.51.100.3".parse().unwrap()).is_ok());
        for bad in ["127.0.0.1", "0.0.0.0", "224.0.0.1", "169.254.1.1", "255.255.255.255", "240.0.0.1", "0.1.2.3"] {
            assert!(underlay_address(bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn networks_and_claims() {
        let good = network_record("10.70.0.0/24", "10.70.0.1");
        assert!(network("ov1", &good).is_ok());
        assert!(network("ov2", &good).unwrap_err().contains("its key"));
        assert!(network("ov1", &network_record("10.70.0.0/24", "10.71.0.1")).is_err());
        assert!(network("ov1", &network_record("10.70.0.0/24", "10.70.0.255")).is_err());
        assert!(network("ov1", &network_record("10.70.0.5/24", "10.70.0.1")).is_err());
        assert!(network("ov1", &network_record("127.0.0.0/24", "127.0.0.1")).is_err());
        assert!(network("ov1", &network_record("10.70.0.0/31", "10.70.0.1")).is_err());
        let mut vni = good.clone();
        vni.vni = 1 << 24;
        assert!(network("ov1", &vni).is_err());
        assert!(claim_in(&good, "10.70.0.9".parse().unwrap()).is_ok());
        assert!(claim_in(&good, "10.99.0.9".parse().unwrap()).unwrap_err().contains("outside"));
        assert!(claim_in(&good, "10.70.0.1".parse().unwrap()).unwrap_err().contains("gateway"));
        assert!(claim_in(&good, "10.70.0.255".parse().unwrap()).is_err());
        assert!(claim_in(&good, "10.70.0.0".parse().unwrap()).is_err());
        let claim = |mac: &str| Claim { host: "a".into(), sandbox: "s1".into(), mac: Some(mac.into()) };
        let ip: Ipv4Addr = "10.70.0.9".parse().unwrap();
        assert_eq!(claim_mac(ip, &claim("02:42:0a:46:00:09")), Ok(Some(overlay_mac(ip))));
        assert!(claim_mac(ip, &claim("02:42:0a:46:00:02")).unwrap_err().contains("not the MAC of address"));
    }
}
