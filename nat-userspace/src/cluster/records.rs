//! The cluster store's keys and records, and the view natd keeps of them: what a list and
//! the watch events after it say, with every record checked (`validate`) as it enters.
use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{store::Kv, validate};

pub const ROOT: &str = "/natd/v1/";
/// Where natd 0.x kept the same records, without a version.
pub const UNVERSIONED_ROOT: &str = "/natd/";
/// Written once the unversioned records were copied under `ROOT`.
pub(crate) fn migrated_key() -> String {
    format!("{ROOT}migrated-from-unversioned")
}

pub fn host_key(id: &str) -> String {
    format!("{ROOT}hosts/{id}")
}
pub fn network_key(name: &str) -> String {
    format!("{ROOT}networks/{name}")
}
pub(super) fn subnet_key(subnet: Ipv4Network) -> String {
    format!("{ROOT}subnets/{}_{}", subnet.network(), subnet.prefix())
}
pub(super) fn vni_key(vni: u32) -> String {
    format!("{ROOT}vnis/{vni}")
}
pub(super) fn claims_prefix(network: &str) -> String {
    format!("{ROOT}ips/{network}/")
}
pub fn claim_key(network: &str, ip: Ipv4Addr) -> String {
    format!("{}{ip}", claims_prefix(network))
}
pub(super) fn gone_key(id: &str) -> String {
    format!("{ROOT}gone/{id}")
}

/// A host holding claims is unregistered (`gone/<host id>`). The time is for people
/// reading the store; collectors measure the grace on their own clocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoneRecord {
    /// Seconds since the Unix epoch, by the clock of the host that noticed.
    pub since: u64,
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub id: String,
    pub name: String,
    /// Underlay address VXLAN packets for this host's sandboxes go to.
    pub addr: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayRecord {
    pub name: String,
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub vni: u32,
    pub internal: bool,
    pub created: u64,
    /// The host (id) whose `network create` made it.
    pub created_by: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Owner host id.
    pub host: String,
    pub sandbox: String,
    /// The endpoint's MAC, once its interface exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Everything under `ROOT` as the last list and the watch events after it left it. Hosts
/// and networks are held only once they passed `validate`; claims are checked against
/// their network when read (`remote_endpoints`), as a claim may arrive before its network.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// At least one list succeeded: until then nothing may be removed for being absent.
    pub loaded: bool,
    pub revision: i64,
    pub hosts: BTreeMap<String, HostRecord>,
    pub networks: BTreeMap<String, OverlayRecord>,
    pub claims: BTreeMap<String, BTreeMap<Ipv4Addr, Claim>>,
    /// Records natd does not apply: key -> why.
    rejected: BTreeMap<String, String>,
}

pub(super) fn decode<T: DeserializeOwned>(kv: &Kv) -> Result<T, String> {
    if kv.value.len() > validate::MAX_RECORD_BYTES {
        return Err(format!("the record is {} bytes, more than {}", kv.value.len(), validate::MAX_RECORD_BYTES));
    }
    serde_json::from_slice(&kv.value).map_err(|e| format!("natd cannot read the record: {e}"))
}

/// The records of one kind under `ROOT`, by the rest of their key.
enum Key<'a> {
    Host(&'a str),
    Network(&'a str),
    Claim(&'a str, &'a str),
    Other,
}

fn parse_key(key: &str) -> Key<'_> {
    let Some(rest) = key.strip_prefix(ROOT) else {
        return Key::Other;
    };
    if let Some(id) = rest.strip_prefix("hosts/") {
        Key::Host(id)
    } else if let Some(name) = rest.strip_prefix("networks/") {
        Key::Network(name)
    } else if let Some((network, ip)) = rest.strip_prefix("ips/").and_then(|r| r.rsplit_once('/')) {
        Key::Claim(network, ip)
    } else {
        Key::Other
    }
}

impl ClusterView {
    pub(super) fn from_kvs(revision: i64, kvs: &[Kv]) -> Self {
        let mut view = Self {
            loaded: true,
            revision,
            ..Default::default()
        };
        for kv in kvs {
            view.put(kv);
        }
        view
    }

    pub(super) fn put(&mut self, kv: &Kv) {
        // A put replaces what the key held, accepted or not.
        self.delete(&kv.key);
        let accepted = match parse_key(&kv.key) {
            Key::Host(id) => decode::<HostRecord>(kv)
                .and_then(|h| validate::host(id, &h).map(|()| h))
                .map(|h| {
                    self.hosts.insert(id.to_string(), h);
                }),
            Key::Network(name) => decode::<OverlayRecord>(kv)
                .and_then(|n| validate::network(name, &n).map(|()| n))
                .map(|n| {
                    self.networks.insert(name.to_string(), n);
                }),
            Key::Claim(network, ip) => ip
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("{ip:?} is not an IPv4 address"))
                .and_then(|ip| decode::<Claim>(kv).and_then(|c| validate::claim(&c).map(|()| (ip, c))))
                .map(|(ip, claim)| {
                    self.claims.entry(network.to_string()).or_default().insert(ip, claim);
                }),
            Key::Other => Ok(()),
        };
        if let Err(why) = accepted {
            self.rejected.insert(kv.key.clone(), why);
        }
    }

    pub(super) fn delete(&mut self, key: &str) {
        self.rejected.remove(key);
        match parse_key(key) {
            Key::Host(id) => {
                self.hosts.remove(id);
            }
            Key::Network(name) => {
                self.networks.remove(name);
            }
            Key::Claim(network, ip) => {
                if let Ok(ip) = ip.parse::<Ipv4Addr>()
                    && let Some(claims) = self.claims.get_mut(network)
                {
                    claims.remove(&ip);
                    if claims.is_empty() {
                        self.claims.remove(network);
                    }
                }
            }
            Key::Other => {}
        }
    }

    /// Every record natd does not apply, and why: the ones refused on their own and the
    /// claims that do not fit their network.
    pub fn rejected(&self) -> BTreeMap<String, String> {
        let mut out = self.rejected.clone();
        for (name, claims) in &self.claims {
            let Some(network) = self.networks.get(name) else {
                continue; // Not applied anyway: no such network (yet).
            };
            for (ip, claim) in claims {
                if let Err(why) = validate::claim_in(network, *ip).and_then(|()| validate::claim_mac(*ip, claim)) {
                    out.insert(claim_key(name, *ip), why);
                }
            }
        }
        out
    }

    /// Sandboxes of live hosts other than `me` on `network` whose claims fit it:
    /// (address, MAC, underlay).
    pub fn remote_endpoints(&self, network: &str, me: &str) -> Vec<(Ipv4Addr, [u8; 6], Ipv4Addr)> {
        let (Some(claims), Some(record)) = (self.claims.get(network), self.networks.get(network)) else {
            return Vec::new();
        };
        claims
            .iter()
            .filter(|(ip, c)| c.host != me && validate::claim_in(record, **ip).is_ok())
            .filter_map(|(ip, c)| {
                let mac = validate::claim_mac(*ip, c).ok()??;
                Some((*ip, mac, self.hosts.get(&c.host)?.addr))
            })
            .collect()
    }

    pub fn host_name(&self, id: &str) -> String {
        self.hosts
            .get(id)
            .map(|h| h.name.clone())
            .unwrap_or_else(|| format!("{id} (not running)"))
    }
}

