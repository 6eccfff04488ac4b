//! Host port allocation for `-p` and `-P`: pure functions over what is taken (the port
//! book of every published mapping, and the host's own sockets), so they are unit-tested
//! without a kernel. Docker's rules, per address family: a port bound to 0.0.0.0 ([::])
//! conflicts with the same port on every IPv4 (IPv6) address, a specific address only with
//! itself and 0.0.0.0 ([::]), and never across families; a sandbox with IPv6 publishes a
//! `-p` without address on 0.0.0.0 and [::] with the same host port; random ports come
//! from the host's ephemeral range and skip ports any host socket uses.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
};

use crate::{
    model::{PortMapping, display_host_ip},
    portspec::{ExposeSpec, PortRange, Proto, PublishSpec},
    sys::{sockets::HostSockets, sysctl},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortError {
    #[error("Bind for {addr}:{port} failed: port is already allocated")]
    Allocated { addr: String, port: String },
    #[error("Bind for {addr}:{port} failed: address already in use by a process on the host")]
    HostProcess { addr: String, port: u16 },
    #[error("no free host port left in the port range {first}-{last}")]
    Exhausted { first: u16, last: u16 },
}

/// Which host ports are published, by protocol and port: the host addresses they are
/// bound to (None: every address). One index, so publishing tens of thousands of ports
/// stays linear.
#[derive(Default)]
pub struct PortBook {
    taken: HashMap<(Proto, u16), Vec<Option<IpAddr>>>,
}

impl PortBook {
    pub fn of<'a>(mappings: impl IntoIterator<Item = &'a PortMapping>) -> Self {
        let mut book = Self::default();
        for mapping in mappings {
            book.add(mapping);
        }
        book
    }

    pub fn add(&mut self, m: &PortMapping) {
        self.taken
            .entry((m.proto, m.host_port))
            .or_default()
            .push(m.host_ip);
    }

    /// Forgets one holding of `m` (a mapping published once is held once).
    pub fn remove(&mut self, m: &PortMapping) {
        let key = (m.proto, m.host_port);
        if let Some(ips) = self.taken.get_mut(&key) {
            if let Some(at) = ips.iter().position(|ip| *ip == m.host_ip) {
                ips.swap_remove(at);
            }
            if ips.is_empty() {
                self.taken.remove(&key);
            }
        }
    }

    /// How many mappings it holds.
    pub fn len(&self) -> usize {
        self.taken.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }

    /// Within one family, the unspecified address conflicts with every address, a specific
    /// address with itself and the unspecified one.
    pub fn taken(&self, ip: Option<IpAddr>, port: u16, proto: Proto) -> bool {
        self.taken.get(&(proto, port)).is_some_and(|ips| {
            ips.iter()
                .any(|h| is_v6(*h) == is_v6(ip) && (is_any(*h) || is_any(ip) || *h == ip))
        })
    }
}

/// Published host ports inside the host's ephemeral range (`ip_local_port_range`), held
/// in `ip_local_reserved_ports` so the host never picks one as the source port of its own
/// connections (whose replies would be taken for connections to the sandbox). The host
/// never picks a port outside that range, so those are not reserved. Counted per port (one
/// port may be published on several addresses and both families); the sysctl is written
/// only when the set changes, and entries natd did not add are kept.
pub struct Reserved {
    count: Vec<u32>,
    written: sysctl::PortSet,
}

impl Reserved {
    /// `published`: every port natd publishes; those the sysctl holds already are taken as
    /// natd's own (a natd before this bookkeeping wrote them, in range or not).
    pub fn new(published: impl IntoIterator<Item = u16>) -> Self {
        let mut reserved = Self {
            count: vec![0; 65536],
            written: sysctl::PortSet::default(),
        };
        reserved.reset(published);
        reserved.written = sysctl::reserved_ports()
            .map(|now| {
                let mut ours = sysctl::PortSet::default();
                for port in (0..=u16::MAX).filter(|p| reserved.count[usize::from(*p)] > 0 && now.contains(*p)) {
                    ours.insert(port);
                }
                ours
            })
            .unwrap_or_default();
        reserved
    }

    /// Counts `published` afresh.
    pub fn reset(&mut self, published: impl IntoIterator<Item = u16>) {
        self.count.fill(0);
        for port in published {
            self.count[usize::from(port)] += 1;
        }
    }

    pub fn add(&mut self, port: u16) {
        self.count[usize::from(port)] += 1;
    }

    pub fn remove(&mut self, port: u16) {
        let count = &mut self.count[usize::from(port)];
        *count = count.saturating_sub(1);
    }

    /// Brings the sysctl in line.
    pub fn write(&mut self) -> std::io::Result<()> {
        let (first, last) = sysctl::local_port_range().unwrap_or((32768, 60999));
        let mut now = sysctl::PortSet::default();
        for port in (first..=last).filter(|p| self.count[usize::from(*p)] > 0) {
            now.insert(port);
        }
        sysctl::replace_reserved_ports(&self.written, &now)?;
        self.written = now;
        Ok(())
    }
}

/// Whether a host address is IPv6 (None is 0.0.0.0).
fn is_v6(ip: Option<IpAddr>) -> bool {
    matches!(ip, Some(IpAddr::V6(_)))
}

/// 0.0.0.0 or [::].
fn is_any(ip: Option<IpAddr>) -> bool {
    ip.is_none_or(|ip| ip.is_unspecified())
}

/// The host addresses one `-p` binds: the one given, else 0.0.0.0 and, when the sandbox
/// has IPv6, [::] too (Docker publishes on both families with the same port).
pub fn host_addresses(given: Option<IpAddr>, ipv6: bool) -> Vec<Option<IpAddr>> {
    match given {
        None if ipv6 => vec![None, Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED))],
        other => vec![other],
    }
}

/// What a sandbox asks to publish.
pub struct PortRequest<'a> {
    pub publish: &'a [PublishSpec],
    pub publish_all: bool,
    /// Ports `-P` publishes: `--expose` and the container side of every `-p`.
    pub expose: &'a [ExposeSpec],
    /// The sandbox's network has IPv6: ports without a host address are published on
    /// both families.
    pub ipv6: bool,
}

impl PortRequest<'_> {
    /// Whether a host port must be picked (random, or any free one of a range): then every
    /// port in use on the host counts, not only listeners.
    pub fn picks_ports(&self) -> bool {
        self.publish_all
            || self.publish.iter().any(|s| {
                s.host_ports
                    .is_none_or(|h| h.count() != s.container_ports.count())
            })
    }
}

/// The host's sockets a request must avoid: listeners only, unless it picks ports.
pub fn host_sockets(request: &PortRequest<'_>) -> HostSockets {
    if request.picks_ports() {
        crate::sys::sockets::scan()
    } else {
        crate::sys::sockets::scan_listening()
    }
}

/// Where the next search of the random range starts, per protocol, kept from request to
/// request as Docker's port allocator does: random ports are not handed out again right
/// after they are freed, and many of them cost linear time, not quadratic.
pub type Cursor = HashMap<Proto, u16>;

struct Allocator<'a> {
    /// Every mapping published before the request.
    published: &'a PortBook,
    /// The request's own, as they are allocated.
    book: PortBook,
    host: &'a HostSockets,
    out: Vec<PortMapping>,
    cursor: &'a mut Cursor,
}

impl Allocator<'_> {
    fn push(&mut self, host_ip: Option<IpAddr>, host_port: u16, container_port: u16, proto: Proto) {
        let mapping = PortMapping {
            host_ip,
            host_port,
            container_port,
            proto,
            id: 0,
        };
        self.book.add(&mapping);
        self.out.push(mapping);
    }

    fn push_all(&mut self, ips: &[Option<IpAddr>], host_port: u16, container_port: u16, proto: Proto) {
        for ip in ips {
            self.push(*ip, host_port, container_port, proto);
        }
    }

    /// Free on every one of `ips` (one port for both families).
    fn is_free(&self, ips: &[Option<IpAddr>], proto: Proto, port: u16) -> bool {
        !self.host.in_use.contains(&(proto, port)) && !ips.iter().any(|ip| self.taken(*ip, port, proto))
    }

    fn taken(&self, ip: Option<IpAddr>, port: u16, proto: Proto) -> bool {
        self.book.taken(ip, port, proto) || self.published.taken(ip, port, proto)
    }

    /// The first free port of a `-p` host range.
    fn free_in(&self, ips: &[Option<IpAddr>], proto: Proto, (first, last): (u16, u16)) -> Result<u16, PortError> {
        (first..=last)
            .find(|p| self.is_free(ips, proto, *p))
            .ok_or(PortError::Exhausted { first, last })
    }

    /// A free port of the random range, searched from where the last search ended.
    fn random(
        &mut self,
        ips: &[Option<IpAddr>],
        proto: Proto,
        (first, last): (u16, u16),
    ) -> Result<u16, PortError> {
        let start = self
            .cursor
            .get(&proto)
            .copied()
            .unwrap_or(first)
            .clamp(first, last);
        let span = u32::from(last - first) + 1;
        let port = (0..span)
            .map(|i| (u32::from(first) + (u32::from(start - first) + i) % span) as u16)
            .find(|p| self.is_free(ips, proto, *p))
            .ok_or(PortError::Exhausted { first, last })?;
        self.cursor
            .insert(proto, if port >= last { first } else { port + 1 });
        Ok(port)
    }

    /// `-p HOST:CONTAINER` with as many host ports as container ports: exactly those.
    fn fixed(&mut self, spec: &PublishSpec, ips: &[Option<IpAddr>], host: PortRange) -> Result<(), PortError> {
        for (h, c) in host.ports().zip(spec.container_ports.ports()) {
            for ip in ips {
                let addr = display_host_ip(*ip);
                if self.taken(*ip, h, spec.proto) {
                    return Err(PortError::Allocated {
                        addr,
                        port: h.to_string(),
                    });
                }
                if self.host.listening.contains(&(spec.proto, h)) {
                    return Err(PortError::HostProcess { addr, port: h });
                }
            }
            self.push_all(ips, h, c, spec.proto);
        }
        Ok(())
    }
}

/// Turns `-p`/`-P` into concrete host ports, or the first conflict in Docker's words.
/// `published` holds every mapping already published (the daemon keeps it up to date, so
/// a request costs what it asks for, not what the host publishes); `random` the range
/// random ports come from.
pub fn allocate(
    published: &PortBook,
    host: &HostSockets,
    random: (u16, u16),
    cursor: &mut Cursor,
    request: &PortRequest<'_>,
) -> Result<Vec<PortMapping>, PortError> {
    let mut alloc = Allocator {
        published,
        book: PortBook::default(),
        host,
        out: Vec::new(),
        cursor,
    };
    for spec in request.publish {
        let ips = host_addresses(spec.host_ip, request.ipv6);
        match spec.host_ports {
            Some(host) if host.count() == spec.container_ports.count() => alloc.fixed(spec, &ips, host)?,
            Some(host) => {
                // A host range with a single container port: any free port of the range.
                let port = alloc
                    .free_in(&ips, spec.proto, (host.first, host.last))
                    .map_err(|_| PortError::Allocated {
                        addr: display_host_ip(spec.host_ip),
                        port: host.to_string(),
                    })?;
                alloc.push_all(&ips, port, spec.container_ports.first, spec.proto);
            }
            None => {
                for c in spec.container_ports.ports() {
                    let port = alloc.random(&ips, spec.proto, random)?;
                    alloc.push_all(&ips, port, c, spec.proto);
                }
            }
        }
    }
    if request.publish_all {
        for spec in request.expose {
            for c in spec.ports.ports() {
                let published = alloc
                    .out
                    .iter()
                    .any(|m| m.container_port == c && m.proto == spec.proto);
                if !published {
                    let ips = host_addresses(None, request.ipv6);
                    let port = alloc.random(&ips, spec.proto, random)?;
                    alloc.push_all(&ips, port, c, spec.proto);
                }
            }
        }
    }
    Ok(alloc.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> PublishSpec {
        text.parse().unwrap()
    }

    fn mapping(host_ip: Option<&str>, port: u16) -> PortMapping {
        PortMapping {
            host_ip: host_ip.map(|i| i.parse().unwrap()),
            host_port: port,
            container_port: 80,
            proto: Proto::Tcp,
            id: 0,
        }
    }

    #[test]
    fn the_book_forgets_one_holding_at_a_time() {
        let (any, local) = (mapping(None, 8080), mapping(Some("127.0.0.1"), 8080));
        let mut book = PortBook::of([&any, &local, &any]);
        book.remove(&any);
        assert!(book.taken(Some("198.51.100.1".parse().unwrap()), 8080, Proto::Tcp), "0.0.0.0 held twice");
        book.remove(&any);
        assert!(!book.taken(Some("198.51.100.1".parse().unwrap()), 8080, Proto::Tcp));
        assert!(book.taken(None, 8080, Proto::Tcp), "127.0.0.1 still holds it");
        book.remove(&local);
        assert!(book.is_empty() && book.len() == 0);
    }

    fn publish(
        existing: &[PortMapping],
        host: &HostSockets,
        specs: &[&str],
    ) -> Result<Vec<PortMapping>, PortError> {
        let publish: Vec<PublishSpec> = specs.iter().map(|s| spec(s)).collect();
        let request = PortRequest {
            publish: &publish,
            publish_all: false,
            expose: &[],
            ipv6: false,
        };
        allocate(&PortBook::of(existing), host, (40000, 40009), &mut Cursor::new(), &request)
    }

    #[test]
    fn bound_addresses_conflict_as_docker_says() {
        let none = HostSockets::default();
        let any = [mapping(None, 8080)];
        let err = publish(&any, &none, &["127.0.0.1:8080:80"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Bind for 127.0.0.1:8080 failed: port is already allocated"
        );
        let one = [mapping(Some("127.0.0.1"), 8080)];
        assert!(publish(&one, &none, &["198.51.100.1:8080:80"]).is_ok());
        assert_eq!(
            publish(&one, &none, &["8080:80"]).unwrap_err().to_string(),
            "Bind for 0.0.0.0:8080 failed: port is already allocated"
        );
        // Same port, other protocol: free.
        assert!(publish(&any, &none, &["8080:80/udp"]).is_ok());
        // Within one request too.
        assert!(publish(&[], &none, &["8080:80", "8080:81"]).is_err());
    }

    fn publish_v6(existing: &[PortMapping], specs: &[&str]) -> Result<Vec<PortMapping>, PortError> {
        let publish: Vec<PublishSpec> = specs.iter().map(|s| spec(s)).collect();
        let request = PortRequest {
            publish: &publish,
            publish_all: false,
            expose: &[],
            ipv6: true,
        };
        allocate(&PortBook::of(existing), &HostSockets::default(), (40000, 40009), &mut Cursor::new(), &request)
    }

    fn shown(mappings: &[PortMapping]) -> Vec<String> {
        mappings
            .iter()
            .map(|m| format!("{}->{}/{}", m.host_display(), m.container_port, m.proto))
            .collect()
    }

    #[test]
    fn a_sandbox_with_ipv6_publishes_on_both_families_with_one_port() {
        assert_eq!(
            shown(&publish_v6(&[], &["8080:80"]).unwrap()),
            ["0.0.0.0:8080->80/tcp", "[::]:8080->80/tcp"]
        );
        // A random port is one that is free in both families.
        let v6_only = [mapping(Some("::"), 40000)];
        assert_eq!(
            shown(&publish_v6(&v6_only, &["80"]).unwrap()),
            ["0.0.0.0:40001->80/tcp", "[::]:40001->80/tcp"]
        );
        // An address picks its family only.
        assert_eq!(shown(&publish_v6(&[], &["[::]:8081:80"]).unwrap()), ["[::]:8081->80/tcp"]);
        assert_eq!(
            shown(&publish_v6(&[], &["[2001:db8::1]:8082:80"]).unwrap()),
            ["[2001:db8::1]:8082->80/tcp"]
        );
        assert_eq!(shown(&publish_v6(&[], &["0.0.0.0:8083:80"]).unwrap()), ["0.0.0.0:8083->80/tcp"]);
        assert_eq!(shown(&publish_v6(&[], &["10.0.0.1:8084:80"]).unwrap()), ["10.0.0.1:8084->80/tcp"]);
        // Without IPv6 nothing changes.
        assert_eq!(
            shown(&publish(&[], &HostSockets::default(), &["8080:80"]).unwrap()),
            ["0.0.0.0:8080->80/tcp"]
        );
    }

    #[test]
    fn conflicts_stay_within_one_family() {
        let any6 = [mapping(Some("::"), 8080)];
        assert_eq!(
            publish_v6(&any6, &["[2001:db8::1]:8080:80"]).unwrap_err().to_string(),
            "Bind for [2001:db8::1]:8080 failed: port is already allocated"
        );
        assert_eq!(
            publish_v6(&any6, &["8080:80"]).unwrap_err().to_string(),
            "Bind for [::]:8080 failed: port is already allocated"
        );
        // [::]:8080 leaves every IPv4 address's 8080 free, and 0.0.0.0 every IPv6 one.
        assert!(publish_v6(&any6, &["0.0.0.0:8080:80"]).is_ok());
        assert!(publish_v6(&any6, &["10.0.0.1:8080:80"]).is_ok());
        let any4 = [mapping(None, 8080)];
        assert!(publish_v6(&any4, &["[::]:8080:80"]).is_ok());
        assert_eq!(
            publish_v6(&any4, &["8080:80"]).unwrap_err().to_string(),
            "Bind for 0.0.0.0:8080 failed: port is already allocated"
        );
        // Two specific IPv6 addresses do not conflict; the same one does.
        let one6 = [mapping(Some("2001:db8::1"), 8080)];
        assert!(publish_v6(&one6, &["[2001:db8::2]:8080:80"]).is_ok());
        assert!(publish_v6(&one6, &["[2001:db8::1]:8080:80"]).is_err());
        assert!(publish_v6(&one6, &["[::]:8080:80"]).is_err());
    }

    #[test]
    fn publish_all_doubles_too() {
        let expose: Vec<ExposeSpec> = vec!["53/udp".parse().unwrap()];
        let request = PortRequest {
            publish: &[],
            publish_all: true,
            expose: &expose,
            ipv6: true,
        };
        let got = allocate(&PortBook::default(), &HostSockets::default(), (40000, 40009), &mut Cursor::new(), &request).unwrap();
        assert_eq!(shown(&got), ["0.0.0.0:40000->53/udp", "[::]:40000->53/udp"]);
    }

    #[test]
    fn a_port_a_host_process_listens_on_is_refused() {
        let mut host = HostSockets::default();
        host.listening.insert((Proto::Tcp, 9000));
        host.in_use.insert((Proto::Tcp, 9000));
        let err = publish(&[], &host, &["9000:80"]).unwrap_err();
        assert_eq!(
            err,
            PortError::HostProcess {
                addr: "0.0.0.0".into(),
                port: 9000
            }
        );
    }

    #[test]
    fn random_ports_skip_taken_and_used_ports_and_run_out_cleanly() {
        let mut host = HostSockets::default();
        host.in_use.insert((Proto::Tcp, 40000));
        let existing = [mapping(None, 40001)];
        let got = publish(&existing, &host, &["80", "[::1]::81"]).unwrap();
        assert_eq!(got[0].host_port, 40002);
        assert_eq!(got[1].host_port, 40003, "the search goes on from where the last one ended");
        // 40000..=40009 minus two taken leaves 8.
        let eight: Vec<&str> = vec!["80"; 8];
        assert_eq!(publish(&existing, &host, &eight).unwrap().len(), 8);
        let nine: Vec<&str> = vec!["80"; 9];
        assert_eq!(
            publish(&existing, &host, &nine).unwrap_err(),
            PortError::Exhausted {
                first: 40000,
                last: 40009
            }
        );
    }

    #[test]
    fn ranges_map_one_to_one_or_pick_one_of_the_host_range() {
        let none = HostSockets::default();
        let got = publish(&[], &none, &["8000-8002:80-82"]).unwrap();
        let pairs: Vec<(u16, u16)> = got.iter().map(|m| (m.host_port, m.container_port)).collect();
        assert_eq!(pairs, [(8000, 80), (8001, 81), (8002, 82)]);
        let taken = [mapping(None, 8000), mapping(None, 8001)];
        let got = publish(&taken, &none, &["8000-8010:80"]).unwrap();
        assert_eq!((got[0].host_port, got[0].container_port), (8002, 80));
        let full: Vec<PortMapping> = (8000..=8010).map(|p| mapping(None, p)).collect();
        assert_eq!(
            publish(&full, &none, &["8000-8010:80"]).unwrap_err().to_string(),
            "Bind for 0.0.0.0:8000-8010 failed: port is already allocated"
        );
    }

    #[test]
    fn publish_all_covers_exposed_ports_not_published_yet() {
        let none = HostSockets::default();
        let publish = [spec("8080:80")];
        let expose: Vec<ExposeSpec> = ["80", "53/udp", "443"]
            .iter()
            .map(|e| e.parse().unwrap())
            .collect();
        let request = PortRequest {
            publish: &publish,
            publish_all: true,
            expose: &expose,
            ipv6: false,
        };
        let got = allocate(&PortBook::default(), &none, (40000, 40009), &mut Cursor::new(), &request).unwrap();
        let shown: Vec<String> = got
            .iter()
            .map(|m| format!("{}->{}/{}", m.host_display(), m.container_port, m.proto))
            .collect();
        assert_eq!(
            shown,
            [
                "0.0.0.0:8080->80/tcp",
                "0.0.0.0:40000->53/udp",
                "0.0.0.0:40000->443/tcp"
            ]
        );
    }

    #[test]
    fn tens_of_thousands_of_ports_stay_distinct() {
        let none = HostSockets::default();
        let specs: Vec<PublishSpec> = (0..20_000).map(|_| spec("80")).collect();
        let request = PortRequest {
            publish: &specs,
            publish_all: false,
            expose: &[],
            ipv6: false,
        };
        let got = allocate(&PortBook::default(), &none, (10000, 65535), &mut Cursor::new(), &request).unwrap();
        let mut ports: Vec<u16> = got.iter().map(|m| m.host_port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 20_000);
    }

    #[test]
    fn the_cursor_carries_over_between_requests() {
        let none = HostSockets::default();
        let publish = [spec("80")];
        let request = PortRequest {
            publish: &publish,
            publish_all: false,
            expose: &[],
            ipv6: false,
        };
        let mut cursor = Cursor::new();
        let first = allocate(&PortBook::default(), &none, (40000, 40002), &mut cursor, &request).unwrap();
        // The first mapping is gone again, yet the next request gets the next port...
        let second = allocate(&PortBook::default(), &none, (40000, 40002), &mut cursor, &request).unwrap();
        assert_eq!((first[0].host_port, second[0].host_port), (40000, 40001));
        // ...and wraps around at the end of the range.
        allocate(&PortBook::default(), &none, (40000, 40002), &mut cursor, &request).unwrap();
        let wrapped = allocate(&PortBook::default(), &none, (40000, 40002), &mut cursor, &request).unwrap();
        assert_eq!(wrapped[0].host_port, 40000);
    }
}
