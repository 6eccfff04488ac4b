//! Sysctls of natd's network namespace (/proc/sys/net is per namespace): the one place
//! that writes /proc/sys.
use std::path::{Path, PathBuf};

fn path_of(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// `key` in dotted form (`net.ipv4.ip_forward`); an interface name in it may hold no dot.
pub fn write(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(path_of(key), value)
}

pub fn read(key: &str) -> std::io::Result<String> {
    std::fs::read_to_string(path_of(key)).map(|s| s.trim().to_string())
}

/// A per-interface IPv4 setting (`net.ipv4.conf.<ifname>.<setting>`); written through the
/// slash form, since interface names may contain dots.
pub fn write_iface_v4(ifname: &str, setting: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(
        Path::new("/proc/sys/net/ipv4/conf").join(ifname).join(setting),
        value,
    )
}

/// A per-interface IPv6 setting (`net.ipv6.conf.<ifname>.<setting>`).
pub fn write_iface_v6(ifname: &str, setting: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(
        Path::new("/proc/sys/net/ipv6/conf").join(ifname).join(setting),
        value,
    )
}

pub fn read_iface_v6(ifname: &str, setting: &str) -> std::io::Result<String> {
    std::fs::read_to_string(Path::new("/proc/sys/net/ipv6/conf").join(ifname).join(setting))
        .map(|s| s.trim().to_string())
}

/// The host's ephemeral port range (`ip_local_port_range`), inclusive.
pub fn local_port_range() -> Option<(u16, u16)> {
    let text = read("net.ipv4.ip_local_port_range").ok()?;
    let mut parts = text.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    Some((parts.next()?, parts.next()?))
}

/// Replaces `ip_local_reserved_ports` with `ports`, written as ranges so tens of
/// thousands of ports stay a short line. Does nothing when it already holds them.
pub fn reserve_local_ports(ports: &[u16]) -> std::io::Result<()> {
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ports.len() {
        let mut j = i;
        while j + 1 < ports.len() && ports[j + 1] == ports[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            ports[i].to_string()
        } else {
            format!("{}-{}", ports[i], ports[j])
        });
        i = j + 1;
    }
    let text = parts.join(",");
    const KEY: &str = "net.ipv4.ip_local_reserved_ports";
    if read(KEY).unwrap_or_default() == text {
        return Ok(());
    }
    write(KEY, if text.is_empty() { "\n" } else { &text })
}
