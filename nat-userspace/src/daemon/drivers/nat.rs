//! A network's masquerade behaviour (`-o natd.nat.filtering`, `-o natd.nat.masquerade-ports`):
//! which inbound packets its mappings admit (RFC 4787 section 5) and how they pick their
//! ports. Mappings themselves are always endpoint-independent.
use std::collections::BTreeMap;

use crate::{
    config::DataplaneKind,
    daemon::error::{Result, invalid},
    model::{NatBehaviour, NatFiltering, Network, PortAssignment},
};

pub const FILTERING: &str = "natd.nat.filtering";
pub const MASQUERADE_PORTS: &str = "natd.nat.masquerade-ports";

/// The options of a new network. `internal`: the network masquerades nothing;
/// `dataplane`: the one natd runs (nftables cannot filter other than by address and port).
pub fn behaviour(opts: &BTreeMap<&str, &str>, internal: bool, dataplane: DataplaneKind) -> Result<NatBehaviour> {
    let filtering = match opts.get(FILTERING) {
        Some(text) => text.parse::<NatFiltering>().map_err(|e| invalid(format!("invalid value for {FILTERING}: {e}")))?,
        None => NatFiltering::default(),
    };
    let ports = opts
        .get(MASQUERADE_PORTS)
        .map(|text| text.parse().map_err(|e| invalid(format!("invalid value for {MASQUERADE_PORTS}: {e}"))))
        .transpose()?;
    let nat = NatBehaviour { filtering, ports };
    if internal && !nat.is_default() {
        return Err(invalid(format!(
            "{FILTERING} and {MASQUERADE_PORTS} apply to masqueraded traffic: an --internal network has none"
        )));
    }
    if dataplane == DataplaneKind::Nftables && filtering != NatFiltering::AddressAndPortDependent {
        return Err(invalid(format!(
            "{FILTERING}={} needs the eBPF dataplane: nftables' masquerade admits only replies \
             (address-and-port-dependent filtering)",
            filtering.name()
        )));
    }
    if dataplane == DataplaneKind::Nftables && ports == Some(PortAssignment::Random) {
        return Err(invalid(format!(
            "{MASQUERADE_PORTS}=random needs the eBPF dataplane: nftables' random masquerade picks a \
             port per flow, so the mapping would depend on the destination"
        )));
    }
    Ok(nat)
}

/// What `network inspect` shows of them (only what was set).
pub fn options(network: &Network, out: &mut BTreeMap<String, String>) {
    if network.nat.filtering != NatFiltering::default() {
        out.insert(FILTERING.to_string(), network.nat.filtering.name().to_string());
    }
    if let Some(ports) = network.nat.ports {
        out.insert(MASQUERADE_PORTS.to_string(), ports.name().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_refuse_with_the_reason() {
        let opts = BTreeMap::from([(FILTERING, "endpoint-independent"), (MASQUERADE_PORTS, "random")]);
        assert_eq!(
            behaviour(&opts, false, DataplaneKind::Ebpf).unwrap(),
            NatBehaviour {
                filtering: NatFiltering::EndpointIndependent,
                ports: Some(PortAssignment::Random)
            }
        );
        let bad = BTreeMap::from([(FILTERING, "full-cone")]);
        let e = behaviour(&bad, false, DataplaneKind::Ebpf).unwrap_err().to_string();
        assert!(e.contains("unknown NAT filtering \"full-cone\"") && e.contains("endpoint-independent"), "{e}");
        let e = behaviour(&opts, true, DataplaneKind::Ebpf).unwrap_err().to_string();
        assert!(e.contains("--internal"), "{e}");
        let e = behaviour(&opts, false, DataplaneKind::Nftables).unwrap_err().to_string();
        assert!(e.contains("needs the eBPF dataplane"), "{e}");
        // Random ports would be per flow on nftables; preserving is what it does anyway.
        let ports = BTreeMap::from([(MASQUERADE_PORTS, "random")]);
        let e = behaviour(&ports, false, DataplaneKind::Nftables).unwrap_err().to_string();
        assert!(e.contains("depend on the destination"), "{e}");
        let ports = BTreeMap::from([(MASQUERADE_PORTS, "preserve")]);
        assert!(behaviour(&ports, false, DataplaneKind::Nftables).is_ok());
    }
}
