//! A network's masquerade behaviour (`-o natd.nat.filtering`, `-o natd.nat.masquerade-ports`,
//! `-o natd.nat.hairpin-source`): which inbound packets its mappings admit (RFC 4787
//! section 5), how they pick their ports, and which source its sandboxes have at a
//! published port they reach through a host address. Mappings themselves are always
//! endpoint-independent.
use std::collections::BTreeMap;

use crate::{
    config::DataplaneKind,
    daemon::error::{Result, invalid},
    model::{NatBehaviour, NatFiltering, Network, PortAssignment},
};

pub const FILTERING: &str = "natd.nat.filtering";
pub const MASQUERADE_PORTS: &str = "natd.nat.masquerade-ports";
pub const HAIRPIN_SOURCE: &str = "natd.nat.hairpin-source";

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
    let hairpin_source = opts
        .get(HAIRPIN_SOURCE)
        .map(|text| text.parse().map_err(|e| invalid(format!("invalid value for {HAIRPIN_SOURCE}: {e}"))))
        .transpose()?
        .unwrap_or_default();
    let nat = NatBehaviour {
        filtering,
        ports,
        hairpin_source,
    };
    if internal && !nat.is_default() {
        return Err(invalid(format!(
            "{FILTERING}, {MASQUERADE_PORTS} and {HAIRPIN_SOURCE} apply to masqueraded traffic: an \
             --internal network has none"
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
    if !network.nat.hairpin_source.is_default() {
        out.insert(HAIRPIN_SOURCE.to_string(), network.nat.hairpin_source.name().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HairpinSource;

    #[test]
    fn options_parse_and_refuse_with_the_reason() {
        let opts = BTreeMap::from([
            (FILTERING, "endpoint-independent"),
            (MASQUERADE_PORTS, "random"),
            (HAIRPIN_SOURCE, "external"),
        ]);
        assert_eq!(
            behaviour(&opts, false, DataplaneKind::Ebpf).unwrap(),
            NatBehaviour {
                filtering: NatFiltering::EndpointIndependent,
                ports: Some(PortAssignment::Random),
                hairpin_source: HairpinSource::External,
            }
        );
        let bad = BTreeMap::from([(HAIRPIN_SOURCE, "gateway")]);
        let e = behaviour(&bad, false, DataplaneKind::Ebpf).unwrap_err().to_string();
        assert!(e.contains("unknown hairpin source \"gateway\""), "{e}");
        // Both dataplanes give the external source.
        let external = BTreeMap::from([(HAIRPIN_SOURCE, "external")]);
        assert!(behaviour(&external, false, DataplaneKind::Nftables).is_ok());
        assert!(behaviour(&external, true, DataplaneKind::Ebpf).is_err());
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
