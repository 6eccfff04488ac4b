//! `-p`/`--expose` parsing with Docker's grammar and error wording:
//! `[IP:[HOSTPORT[-END]]:]CONTAINERPORT[-END][/PROTO]`, IPv6 literals in brackets.
use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        })
    }
}

impl FromStr for Proto {
    type Err = PortSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" | "" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "sctp" => Ok(Proto::Sctp),
            _ => Err(PortSpecError::Proto(s.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortSpecError {
    #[error("Invalid containerPort: {0}")]
    ContainerPort(String),
    #[error("Invalid hostPort: {0}")]
    HostPort(String),
    #[error("Invalid proto: {0}")]
    Proto(String),
    #[error("Invalid ip address: {0}")]
    Ip(String),
    #[error("No port specified: {0}<empty>")]
    Empty(String),
    #[error("Invalid ranges specified for container and host Ports: {container} and {host}")]
    RangeMismatch { container: String, host: String },
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }
    pub fn count(self) -> u32 {
        u32::from(self.last - self.first) + 1
    }
    pub fn is_single(self) -> bool {
        self.first == self.last
    }
    pub fn ports(self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// `PORT` or `FIRST-LAST` (1-65535, FIRST <= LAST).
pub fn parse_range(text: &str) -> Option<PortRange> {
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (a, b),
        None => (text, text),
    };
    let parse = |s: &str| -> Option<u16> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u16>().ok().filter(|p| *p != 0)
    };
    let (first, last) = (parse(first)?, parse(last)?);
    (first <= last).then_some(PortRange { first, last })
}

/// One `-p` argument, parsed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishSpec {
    pub host_ip: Option<IpAddr>,
    /// None: a random free port; a range with a single container port: any free port of it.
    pub host_ports: Option<PortRange>,
    pub container_ports: PortRange,
    pub proto: Proto,
}

impl FromStr for PublishSpec {
    type Err = PortSpecError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let (rest, proto) = match raw.rsplit_once('/') {
            Some((rest, proto)) => (rest, proto.parse::<Proto>()?),
            None => (raw, Proto::Tcp),
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let n = parts.len();
        let container = parts[n - 1];
        let (ip, host) = match n {
            1 => ("", ""),
            2 => ("", parts[0]),
            3 => (parts[0], parts[1]),
            // IPv6 literals contain colons: everything before the last two parts is the IP.
            _ => (
                &rest[..rest.len() - container.len() - parts[n - 2].len() - 2],
                parts[n - 2],
            ),
        };
        let host_ip = if ip.is_empty() {
            None
        } else {
            let bare = ip
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .unwrap_or(ip);
            Some(
                bare.parse::<IpAddr>()
                    .map_err(|_| PortSpecError::Ip(ip.to_string()))?,
            )
        };
        if container.is_empty() {
            return Err(PortSpecError::Empty(raw.to_string()));
        }
        let container_ports =
            parse_range(container).ok_or_else(|| PortSpecError::ContainerPort(container.to_string()))?;
        let host_ports = if host.is_empty() {
            None
        } else {
            Some(parse_range(host).ok_or_else(|| PortSpecError::HostPort(host.to_string()))?)
        };
        if let Some(h) = host_ports
            && h.count() != container_ports.count()
            && !container_ports.is_single()
        {
            return Err(PortSpecError::RangeMismatch {
                container: container.to_string(),
                host: host.to_string(),
            });
        }
        Ok(Self {
            host_ip,
            host_ports,
            container_ports,
            proto,
        })
    }
}

impl fmt::Display for PublishSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.host_ip, self.host_ports) {
            (Some(IpAddr::V6(ip)), h) => {
                write!(f, "[{ip}]:{}:", h.map(|h| h.to_string()).unwrap_or_default())?
            }
            (Some(ip), h) => write!(f, "{ip}:{}:", h.map(|h| h.to_string()).unwrap_or_default())?,
            (None, Some(h)) => write!(f, "{h}:")?,
            (None, None) => {}
        }
        write!(f, "{}/{}", self.container_ports, self.proto)
    }
}

/// One `--expose` argument: `PORT[-END][/PROTO]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposeSpec {
    pub ports: PortRange,
    pub proto: Proto,
}

impl FromStr for ExposeSpec {
    type Err = PortSpecError;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let (port, proto) = match raw.rsplit_once('/') {
            Some((port, proto)) => (port, proto.parse::<Proto>()?),
            None => (raw, Proto::Tcp),
        };
        let ports = parse_range(port).ok_or_else(|| PortSpecError::ContainerPort(port.to_string()))?;
        Ok(Self { ports, proto })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn p(s: &str) -> Result<PublishSpec, String> {
        s.parse::<PublishSpec>().map_err(|e| e.to_string())
    }

    #[test]
    fn docker_forms() {
        let spec = p("80").unwrap();
        assert_eq!(
            (spec.host_ip, spec.host_ports, spec.container_ports.first),
            (None, None, 80)
        );
        let spec = p("8080:80").unwrap();
        assert_eq!(spec.host_ports, Some(PortRange::single(8080)));
        let spec = p("127.0.0.1::80").unwrap();
        assert_eq!(spec.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(spec.host_ports, None);
        let spec = p("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(spec.proto, Proto::Udp);
        let spec = p("8000-8010:80-90").unwrap();
        assert_eq!(spec.container_ports.count(), 11);
        let spec = p("8000-8010:80").unwrap();
        assert_eq!(spec.host_ports.unwrap().count(), 11);
        let spec = p("[::1]:8080:80").unwrap();
        assert_eq!(spec.host_ip, Some("::1".parse().unwrap()));
        let spec = p("::1:8080:80").unwrap();
        assert_eq!(spec.host_ip, Some("::1".parse().unwrap()));
        assert_eq!(p("53/SCTP").unwrap().proto, Proto::Sctp);
    }

    #[test]
    fn docker_errors() {
        assert_eq!(p("abc").unwrap_err(), "Invalid containerPort: abc");
        assert_eq!(p("0").unwrap_err(), "Invalid containerPort: 0");
        assert_eq!(p("70000").unwrap_err(), "Invalid containerPort: 70000");
        assert_eq!(p("x:80").unwrap_err(), "Invalid hostPort: x");
        assert_eq!(p("90-80:80").unwrap_err(), "Invalid hostPort: 90-80");
        assert_eq!(p("80/icmp").unwrap_err(), "Invalid proto: icmp");
        assert_eq!(p("300.1.1.1:80:80").unwrap_err(), "Invalid ip address: 300.1.1.1");
        assert_eq!(p("8080:").unwrap_err(), "No port specified: 8080:<empty>");
        assert_eq!(
            p("8000-8005:80-90").unwrap_err(),
            "Invalid ranges specified for container and host Ports: 80-90 and 8000-8005"
        );
    }

    #[test]
    fn expose() {
        let e: ExposeSpec = "53/udp".parse().unwrap();
        assert_eq!((e.ports, e.proto), (PortRange::single(53), Proto::Udp));
        assert!("x/tcp".parse::<ExposeSpec>().is_err());
    }

    fn spec_strategy() -> impl Strategy<Value = PublishSpec> {
        let range = (1u16..=65000, 0u16..20).prop_map(|(a, n)| PortRange {
            first: a,
            last: a + n,
        });
        let ip = prop_oneof![
            Just(None),
            any::<[u8; 4]>().prop_map(|b| Some(IpAddr::from(b))),
            any::<[u8; 16]>().prop_map(|b| Some(IpAddr::from(b))),
        ];
        let proto = prop_oneof![Just(Proto::Tcp), Just(Proto::Udp), Just(Proto::Sctp)];
        (ip, proptest::option::of(1u16..=60000), range, proto).prop_map(
            |(host_ip, host_first, container_ports, proto)| {
                let host_ports = host_first.map(|f| PortRange {
                    first: f,
                    last: f + (container_ports.last - container_ports.first),
                });
                PublishSpec {
                    host_ip,
                    host_ports,
                    container_ports,
                    proto,
                }
            },
        )
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(spec in spec_strategy()) {
            let text = spec.to_string();
            prop_assert_eq!(text.parse::<PublishSpec>(), Ok(spec), "{}", text);
        }

        #[test]
        fn never_panics(raw in "[0-9a-f:.\\[\\]/-]{0,40}") {
            let _ = raw.parse::<PublishSpec>();
        }

        #[test]
        fn accepted_specs_are_consistent(raw in "[0-9:.\\-/a-z]{1,24}") {
            if let Ok(spec) = raw.parse::<PublishSpec>() {
                prop_assert!(spec.container_ports.first >= 1);
                prop_assert!(spec.container_ports.first <= spec.container_ports.last);
                if let Some(h) = spec.host_ports {
                    prop_assert!(h.count() == spec.container_ports.count() || spec.container_ports.is_single());
                }
            }
        }
    }
}
