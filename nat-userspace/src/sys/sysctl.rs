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

/// A set of ports, one bit each.
#[derive(Clone, PartialEq, Eq)]
pub struct PortSet([u64; 1024]);

impl Default for PortSet {
    fn default() -> Self {
        Self([0; 1024])
    }
}

impl PortSet {
    pub fn insert(&mut self, port: u16) {
        self.0[usize::from(port / 64)] |= 1 << (port % 64);
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0[usize::from(port / 64)] & (1 << (port % 64)) != 0
    }

    /// `ip_local_reserved_ports` syntax: `8080,30000-30010`.
    fn parse(text: &str) -> Self {
        let mut set = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (first, last) = part.split_once('-').unwrap_or((part, part));
            if let (Ok(first), Ok(last)) = (first.trim().parse::<u16>(), last.trim().parse::<u16>()) {
                for port in first..=last {
                    set.insert(port);
                }
            }
        }
        set
    }

    /// The set as ranges, so tens of thousands of ports stay a short line.
    fn text(&self) -> String {
        let mut parts = Vec::new();
        let mut port = 0u32;
        while port <= u32::from(u16::MAX) {
            if !self.contains(port as u16) {
                port += 1;
                continue;
            }
            let first = port;
            while port < u32::from(u16::MAX) && self.contains(port as u16 + 1) {
                port += 1;
            }
            parts.push(if first == port { first.to_string() } else { format!("{first}-{port}") });
            port += 1;
        }
        parts.join(",")
    }

    fn union(&self, other: &Self) -> Self {
        let mut out = self.clone();
        for (a, b) in out.0.iter_mut().zip(other.0.iter()) {
            *a |= b;
        }
        out
    }

    fn minus(&self, other: &Self) -> Self {
        let mut out = self.clone();
        for (a, b) in out.0.iter_mut().zip(other.0.iter()) {
            *a &= !b;
        }
        out
    }
}

/// What `ip_local_reserved_ports` holds.
pub fn reserved_ports() -> std::io::Result<PortSet> {
    Ok(PortSet::parse(&read("net.ipv4.ip_local_reserved_ports")?))
}

/// Makes `ip_local_reserved_ports` hold `now` where it held `before` (what the caller
/// wrote last), keeping every entry someone else added. Writes only on a change.
pub fn replace_reserved_ports(before: &PortSet, now: &PortSet) -> std::io::Result<()> {
    const KEY: &str = "net.ipv4.ip_local_reserved_ports";
    let current = reserved_ports()?;
    let wanted = current.minus(before).union(now);
    if wanted == current {
        return Ok(());
    }
    let text = wanted.text();
    write(KEY, if text.is_empty() { "\n" } else { &text })
}

#[cfg(test)]
mod tests {
    use super::PortSet;

    #[test]
    fn port_sets_read_and_write_the_sysctl_syntax() {
        let set = PortSet::parse("0, 22,8080-8082,65535");
        assert_eq!(set.text(), "0,22,8080-8082,65535");
        assert_eq!(PortSet::default().text(), "");
        let theirs = PortSet::parse("22,9000");
        let ours_before = PortSet::parse("8080-8082");
        let ours_now = PortSet::parse("8081,9000");
        // Entries someone else added stay, ours follow: 9000 is both.
        assert_eq!(set.minus(&ours_before).union(&ours_now).text(), "0,22,8081,9000,65535");
        assert_eq!(theirs.minus(&ours_now).text(), "22");
    }
}
