//! The overlay's underlay filter: VXLAN for natd's overlay networks is accepted only from
//! the underlay addresses of the cluster's live hosts, and only carrying frames of the
//! sandboxes that host claims. Without it any machine that reaches this host's UDP port
//! 4789 could inject frames into an overlay network (VNIs are predictable, MACs derive
//! from addresses), and a member could speak for another host's sandboxes.
//!
//! One nftables table of natd's own (`ip <prefix>_underlay`) on the input hook, on both
//! dataplanes: VXLAN is delivered locally (the kernel's VXLAN socket decapsulates it after
//! the input hook), so one place sees it whatever the dataplane and whichever interface
//! it arrives on, interfaces that appear later included. Frames for VNIs that are not
//! natd's are left alone (another VXLAN user on the host). Fields are read at fixed
//! offsets from the outer UDP header (`@th`, in bits): the VNI at 12 bytes (after UDP and
//! the VXLAN flags), the inner source MAC at 22, the inner ethertype at 28 and the inner
//! IPv4 source at 42. Only IPv4 frames pass: overlay networks carry IPv4 and the VXLAN
//! devices answer ARP themselves (no ARP crosses hosts). A member's own sandbox's frame is
//! accepted by the first rule (one set lookup); only what it does not accept is sorted
//! into the two drop counters, for natd's VNIs.
use std::{collections::BTreeSet, fmt::Write as _, net::Ipv4Addr};

use crate::sys::{
    nft::{Nft, NftError},
    vxlan::VXLAN_PORT,
};

/// Counter of frames for natd's VNIs from an address that is no live member's.
pub const NON_MEMBER: &str = "non_member";
/// Counter of frames from a member that carry no sandbox of that member.
pub const SPOOFED: &str = "spoofed";

/// What may cross the underlay, as the cluster store says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowed {
    /// VNIs of the overlay networks this host has joined.
    pub vnis: BTreeSet<u32>,
    /// Underlay addresses of the other live hosts.
    pub members: BTreeSet<Ipv4Addr>,
    /// (underlay address, VNI, MAC, address) of each of their sandboxes.
    pub speakers: BTreeSet<(Ipv4Addr, u32, [u8; 6], Ipv4Addr)>,
}

pub fn table(prefix: &str) -> String {
    format!("{prefix}_underlay")
}

/// The table and its rules as one libnftables transaction. Counters and sets are added
/// (kept if there), so a change never resets the drop counts.
fn ruleset(prefix: &str, allowed: &Allowed) -> String {
    let t = format!("ip {}", table(prefix));
    let inner = "ip saddr . @th,96,24 . @th,176,48 . @th,336,32";
    let mut text = format!(
        "add table {t}
add counter {t} {NON_MEMBER}
add counter {t} {SPOOFED}
add set {t} vnis {{ typeof @th,96,24; }}
add set {t} members {{ type ipv4_addr; }}
add set {t} speakers {{ typeof {inner}; }}
add chain {t} input {{ type filter hook input priority filter - 10; policy accept; }}
add chain {t} check
flush chain {t} input
flush chain {t} check
add rule {t} input udp dport {VXLAN_PORT} @th,224,16 0x0800 {inner} @speakers accept
add rule {t} input udp dport {VXLAN_PORT} @th,96,24 @vnis jump check
add rule {t} check ip saddr != @members counter name {NON_MEMBER} drop
add rule {t} check counter name {SPOOFED} drop
flush set {t} vnis
flush set {t} members
flush set {t} speakers
"
    );
    let elements = |text: &mut String, set: &str, items: Vec<String>| {
        // Bounded lines: libnftables parses each command whole.
        for chunk in items.chunks(512) {
            let _ = writeln!(text, "add element {t} {set} {{ {} }}", chunk.join(", "));
        }
    };
    elements(&mut text, "vnis", allowed.vnis.iter().map(u32::to_string).collect());
    elements(&mut text, "members", allowed.members.iter().map(Ipv4Addr::to_string).collect());
    elements(
        &mut text,
        "speakers",
        allowed
            .speakers
            .iter()
            .map(|(underlay, vni, mac, ip)| {
                let mac = mac.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
                format!("{underlay} . {vni} . {mac:#014x} . {:#010x}", u32::from(*ip))
            })
            .collect(),
    );
    text
}

/// Puts the filter in place with exactly `allowed` (atomically: one transaction).
pub fn apply(prefix: &str, allowed: &Allowed) -> Result<(), NftError> {
    Nft::new(false)?.run(&ruleset(prefix, allowed)).map(|_| ())
}

/// Packets dropped so far: (non-member, spoofed). None when the table is not there.
pub fn drops(prefix: &str) -> Option<(u64, u64)> {
    let text = Nft::new(true).ok()?.run(&format!("list counters table ip {}", table(prefix))).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mut drops = (0, 0);
    for counter in json["nftables"].as_array()?.iter().filter_map(|i| i.get("counter")) {
        let packets = counter["packets"].as_u64().unwrap_or(0);
        match counter["name"].as_str() {
            Some(NON_MEMBER) => drops.0 = packets,
            Some(SPOOFED) => drops.1 = packets,
            _ => {}
        }
    }
    Some(drops)
}

/// Whether the table is still there (someone may have flushed the ruleset): names only,
/// not the sets' elements.
pub fn present(prefix: &str) -> bool {
    let wanted = format!("table ip {}", table(prefix));
    Nft::new(false)
        .and_then(|mut nft| nft.run("list tables"))
        .is_ok_and(|tables| tables.lines().any(|line| line.trim() == wanted))
}

/// `natd --cleanup`: the table goes, if it is there.
pub fn remove(prefix: &str) -> Vec<String> {
    match Nft::new(false) {
        Ok(mut nft) => crate::dataplane::nftables::delete_table(&mut nft, &table(prefix)),
        Err(e) => vec![e.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_written_as_the_offsets_read_them() {
        let mut allowed = Allowed::default();
        allowed.vnis.insert(4096);
        allowed.members.insert("198.51.100.3".parse().unwrap());
        allowed.speakers.insert((
            "198.51.100.3".parse().unwrap(),
            4096,
            [0x02, 0x42, 0x0a, 0x46, 0x00, 0x02],
            "10.70.0.2".parse().unwrap(),
        ));
        let text = ruleset("natd", &allowed);
        assert!(text.contains("add element ip natd_underlay speakers { 198.51.100.3 . 4096 . 0x02420a460002 . 0x0a460002 }"), "{text}");
        assert!(text.contains("add element ip natd_underlay members { 198.51.100.3 }"));
        assert!(text.contains("udp dport 4789 @th,96,24 @vnis jump check"));
        assert!(text.contains("input udp dport 4789 @th,224,16 0x0800 ip saddr . @th,96,24 . @th,176,48 . @th,336,32 @speakers accept"));
    }
}
