//! The names natd gives what it creates, and how it recognises them again. Reconcile and
//! `natd --cleanup` only ever remove names of these shapes.

/// The host end of endpoint `id`'s veth: `<prefix>v<hex>`.
pub fn host_veth(prefix: &str, id: u32) -> String {
    format!("{prefix}v{id:x}")
}

/// The sandbox end of a veth until it is moved and renamed: `<prefix>p<hex>`.
pub fn peer_veth(prefix: &str, host_veth: &str) -> String {
    host_veth.replacen(&format!("{prefix}v"), &format!("{prefix}p"), 1)
}

/// The bridge of user network `id`: `<prefix>b<hex>`.
pub fn bridge(prefix: &str, id: u32) -> String {
    format!("{prefix}b{id:x}")
}

/// The VXLAN device of overlay network `id`: `<prefix>x<hex>`.
pub fn vxlan(prefix: &str, id: u32) -> String {
    format!("{prefix}x{id:x}")
}

/// Namespaces (and /etc/netns entries) natd creates are named `<prefix>-sbx-<sandbox>`.
pub fn sandbox_ns_prefix(prefix: &str) -> String {
    format!("{prefix}-sbx-")
}

pub fn sandbox_ns(prefix: &str, sandbox: &str) -> String {
    format!("{}{sandbox}", sandbox_ns_prefix(prefix))
}

/// Whether `name` is one natd generates for interfaces: `<prefix>` then `v`, `p` or `b`
/// then lowercase hex (`x`: an overlay's VXLAN device).
pub fn is_generated_ifname(prefix: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let mut chars = rest.chars();
    matches!(chars.next(), Some('v' | 'p' | 'b' | 'x'))
        && !chars.as_str().is_empty()
        && chars
            .as_str()
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names() {
        let g = is_generated_ifname;
        assert!(g("natd", "natdv1f") && g("natd", "natdp1f") && g("natd", "natdb2"));
        assert!(!g("natd", "natd0") && !g("natd", "natdbr") && !g("natd", "natdv") && !g("natd", "eth0"));
        assert!(!g("natd", "natdvX1") && !g("natd", "natdbackup"));
        assert_eq!(peer_veth("natd", &host_veth("natd", 31)), "natdp1f");
        assert!(g("natd", &bridge("natd", 0x2a)) && g("natd", &vxlan("natd", 0x2a)));
    }
}
