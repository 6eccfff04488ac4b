//! Edges: every interface of natd's namespace that is not natd's own (NICs, VLANs, bridges
//! natd does not run, VPN devices, whatever appears later). What arrives there is from
//! outside, what leaves there is masqueraded with its address; natd follows the kernel's
//! link and address announcements so a new device is protected as it appears.
use ipnetwork::IpNetwork;

use super::{
    Daemon, drivers,
    error::Result,
    names,
    sync::{KernelView, effective_uplink, iface, is_global_v6},
};
use crate::{
    dataplane::{Iface, IfaceRole},
    sys::netlink::{Link, LinkEvent, LinkKind, LinkLayer},
};

impl Daemon {
    /// Every interface of natd's namespace that is not natd's own is an edge: what
    /// arrives there comes from outside, what leaves there is masqueraded. Not edges:
    /// loopback, natd's own (`is_own_ifname`), and ports of a bridge or bond (their master
    /// is the edge, if it is not natd's; a VRF's members stay edges: packets pass them).
    /// Masquerade leaves with the edge's own first address of a family; an edge without
    /// one borrows the first uplink's, as the kernel's source selection would.
    pub(super) fn edges(&self, view: &KernelView) -> Vec<Iface> {
        let addresses = &view.addresses;
        let first_v4 = |index: u32| {
            addresses.iter().find_map(|(i, net)| match net {
                IpNetwork::V4(v4) if *i == index => Some(v4.ip()),
                _ => None,
            })
        };
        // Masquerade leaves with a routable address, never a link-local one.
        let first_v6 = |index: u32| {
            addresses.iter().find_map(|(i, net)| match net {
                IpNetwork::V6(v6) if *i == index && is_global_v6(v6.ip()) => Some(v6.ip()),
                _ => None,
            })
        };
        let uplinks: Vec<&Link> = self
            .uplinks
            .iter()
            .filter_map(|u| effective_uplink(&view.links, u))
            .collect();
        let uplink_v4 = uplinks.iter().find_map(|l| first_v4(l.index));
        let uplink_v6 = uplinks.iter().find_map(|l| first_v6(l.index));
        let mut edges: Vec<Iface> = view
            .links
            .values()
            .filter(|l| !l.loopback && !is_port(view, l) && !self.is_own_ifname(&l.name))
            .filter(|l| {
                // A link layer natd cannot parse (InfiniBand, CAN, ...) is left alone.
                if l.layer == LinkLayer::Other {
                    tracing::debug!(iface = %l.name, "not an Ethernet or IP link: not served as an edge");
                }
                l.layer != LinkLayer::Other
            })
            .map(|link| {
                iface(
                    link,
                    IfaceRole::Edge {
                        addr: first_v4(link.index).or(uplink_v4),
                        addr6: first_v6(link.index).or(uplink_v6),
                        link_layer: link.layer == LinkLayer::Ethernet,
                        macvlan_uppers: view.links.values().any(|upper| {
                            upper.parent == Some(link.index)
                                && matches!(&upper.kind, LinkKind::Other(k) if k == "macvlan" || k == "macvtap")
                        }),
                    },
                )
            })
            .collect();
        edges.sort_by_key(|e| e.index);
        edges
    }

    /// With IPv6 forwarding on (a network has IPv6), the kernel ignores router
    /// advertisements on an interface whose accept_ra is 1: an edge configured by SLAAC
    /// would lose its default route when the advertised lifetime runs out. natd does not
    /// change the edge's settings; it says so, once per edge.
    pub(super) fn warn_router_advertised_edges(&mut self, edges: &[Iface]) {
        if !self.state.networks.values().any(|n| n.has_ipv6()) {
            return;
        }
        for edge in edges.iter().filter(|e| matches!(e.role, IfaceRole::Edge { .. })) {
            if !self.ra_checked.insert(edge.name.clone()) {
                continue;
            }
            if crate::sys::sysctl::read_iface_v6(&edge.name, "accept_ra").is_ok_and(|v| v == "1") {
                tracing::warn!(
                    edge = %edge.name,
                    "IPv6 forwarding is on: the kernel now ignores router advertisements on this interface \
                     (accept_ra=1); set net.ipv6.conf.{}.accept_ra=2 if it is configured by SLAAC",
                    edge.name
                );
            }
        }
    }

    /// natd's own interfaces, never edges: its translated networks' bridges and whatever
    /// carries its generated names (sandbox veths, one being made); a hostbridge network's
    /// bridge holds the host's LAN address and is an edge, whatever its name.
    fn is_own_ifname(&self, name: &str) -> bool {
        match self.state.networks.values().find(|n| n.bridge == name) {
            Some(network) => drivers::of(network.driver).translated(),
            None => names::is_generated_ifname(&self.config.name_prefix, name),
        }
    }

    /// Links and addresses the kernel announced as changed: when one concerns an interface
    /// that is not natd's own (an edge appeared, went, or changed its addresses), the
    /// dataplane follows at once (new edges protected within a moment, mappings bound to
    /// an address that left stop answering). natd's own veths and bridges change with
    /// every request, which syncs by itself.
    pub async fn follow_links(&mut self, events: &[LinkEvent]) -> Result<bool> {
        let known = |index: u32| {
            self.kernel_view
                .as_ref()
                .and_then(|v| v.links.values().find(|l| l.index == index))
                .map(|l| l.name.clone())
        };
        // An address event may come after its link went (a sandbox removed): natd's own
        // links are known by the link events of the same batch.
        let own: std::collections::HashSet<u32> = events
            .iter()
            .filter_map(|event| match event {
                LinkEvent::Link { index, name, .. } if self.is_own_ifname(name) => Some(*index),
                _ => None,
            })
            .collect();
        let relevant = events.iter().any(|event| match event {
            LinkEvent::Link { name, .. } => !self.is_own_ifname(name),
            LinkEvent::Address { index } => {
                !own.contains(index) && known(*index).is_none_or(|name| !self.is_own_ifname(&name))
            }
            LinkEvent::Lost => true,
        });
        if relevant {
            self.forget_view();
            let report = self.sync_dataplane().await?;
            if !report.attached.is_empty() || !report.detached.is_empty() {
                tracing::info!(attached = ?report.attached, detached = ?report.detached, "edges followed");
            }
        }
        Ok(relevant)
    }

}

/// A port of a bridge or a bond: its frames are its master's, whose programs see them.
fn is_port(view: &KernelView, link: &Link) -> bool {
    let Some(master) = link.master else {
        return false;
    };
    view.links.values().find(|l| l.index == master).is_none_or(|m| {
        matches!(&m.kind, LinkKind::Bridge) || matches!(&m.kind, LinkKind::Other(k) if k == "bond" || k == "team")
    })
}
