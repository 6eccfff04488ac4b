//! The eBPF dataplane: one object loaded per natd start, maps pinned by name under
//! `--bpffs`/maps (reused, not recreated, on restart), TCX links pinned under
//! `--bpffs`/links so attachments outlive natd and are adopted when it comes back.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap, HashSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
    },
};
use nat_common::{
    AddrKey, CtEntry, CtKey, FAMILY_V4, IfaceConfig, IfaceStats, MasqNet, NatConfig, PortKey, PortTarget, counter,
    ct, role,
};

use super::{Dataplane, DataplaneError, Desired, GcReport, IfaceRole, SyncReport};
use crate::config::DaemonConfig;

const PROG_UPLINK_INGRESS: &str = "natd_uplink_ingress";
const PROG_UPLINK_EGRESS: &str = "natd_uplink_egress";
const PROG_OBSERVE: &str = "natd_observe";
const PROGRAMS: [&str; 3] = [PROG_UPLINK_INGRESS, PROG_UPLINK_EGRESS, PROG_OBSERVE];

const COUNTERS: &str = "NATD_COUNTERS";
const IFACE_STATS: &str = "NATD_IFACE_STATS";
const IFACE_CONFIG: &str = "NATD_IFACE_CONFIG";
const CT: &str = "NATD_CT";
const PORTS: &str = "NATD_PORTS";
const LOCAL_ADDRS: &str = "NATD_LOCAL_ADDRS";
const MASQ_V4: &str = "NATD_MASQ_V4";
const CONFIG: &str = "NATD_CONFIG";

/// Idle timeouts of tracked flows, by state.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub tcp_closed: Duration,
    pub udp: Duration,
    pub udp_replied: Duration,
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn: Duration::from_secs(120),
            // RFC 5382 asks for at least 2 h 4 min for established TCP.
            tcp_established: Duration::from_secs(7440),
            tcp_closing: Duration::from_secs(120),
            tcp_closed: Duration::from_secs(10),
            udp: Duration::from_secs(30),
            udp_replied: Duration::from_secs(180),
            icmp: Duration::from_secs(30),
        }
    }
}

fn err(context: &str, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Ebpf(format!("{context}: {e}"))
}

pub struct EbpfDataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    timeouts: Timeouts,
    ct_capacity: u32,
}

/// Mounts bpffs at /sys/fs/bpf when it is missing (it is not mounted at boot everywhere).
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), DataplaneError> {
    let root = Path::new("/sys/fs/bpf");
    let is_bpffs = nix::sys::statfs::statfs(root)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false);
    if !is_bpffs && pin_dir.starts_with(root) {
        std::fs::create_dir_all(root).map_err(|e| err("create /sys/fs/bpf", e))?;
        nix::mount::mount(Some("bpf"), root, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .map_err(|e| err("mount bpffs at /sys/fs/bpf", e))?;
    }
    Ok(())
}

/// CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn v4_bytes(ip: Ipv4Addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&ip.octets());
    out
}

pub fn v4_of(bytes: &[u8; 16]) -> Ipv4Addr {
    Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])
}

/// The tuple a packet of the opposite direction carries after `entry` translated `key`.
pub fn reverse_of_translated(key: &CtKey, entry: &CtEntry) -> CtKey {
    let mut t = *key;
    if entry.rewrite == ct::REWRITE_SRC {
        t.src = entry.addr;
        t.sport = entry.port;
    } else {
        t.dst = entry.addr;
        t.dport = entry.port;
    }
    CtKey { src: t.dst, dst: t.src, sport: t.dport, dport: t.sport, proto: t.proto, family: t.family, _pad: [0; 2] }
}

impl EbpfDataplane {
    pub fn open(config: &DaemonConfig) -> Result<Self, DataplaneError> {
        let pin_dir = config.bpffs.clone();
        ensure_bpffs(&pin_dir)?;
        for dir in [pin_dir.join("maps"), pin_dir.join("links")] {
            std::fs::create_dir_all(&dir).map_err(|e| err(&format!("create {}", dir.display()), e))?;
        }
        // The memlock rlimit may not be raisable here; kernels >= 5.11 charge BPF memory to
        // the cgroup instead, so a failure is not fatal.
        let _ = nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_MEMLOCK,
            nix::sys::resource::RLIM_INFINITY,
            nix::sys::resource::RLIM_INFINITY,
        );
        let ct_capacity = config.conntrack_max;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir.join("maps"))
            .map_max_entries(CT, ct_capacity)
            .load(crate::EBPF_OBJECT)
            .map_err(|e| {
                err(
                    &format!(
                        "load object (if maps pinned under {} were made with other sizes or by another version, \
                         run `natd --cleanup` first)",
                        pin_dir.display()
                    ),
                    e,
                )
            })?;
        for name in PROGRAMS {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| err("program missing", name))?
                .try_into()
                .map_err(|e| err("program type", e))?;
            program.load().map_err(|e| err(&format!("verifier rejected {name}"), e))?;
        }
        Ok(Self { ebpf, pin_dir, timeouts: Timeouts::default(), ct_capacity })
    }

    fn links_dir(&self) -> PathBuf {
        self.pin_dir.join("links")
    }

    fn pinned_links(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.links_dir())
            .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    }

    fn attach(&mut self, program: &str, ifname: &str, direction: TcAttachType, pin: &Path) -> Result<(), DataplaneError> {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| err("program missing", program))?
            .try_into()
            .map_err(|e| err("program type", e))?;
        let id = program
            .attach_with_options(ifname, direction, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(|e| err(&format!("attach to {ifname} (TCX, Linux >= 6.6 needed)"), e))?;
        let link = program.take_link(id).map_err(|e| err("take link", e))?;
        let fd_link: FdLink = link.try_into().map_err(|e| err("link is not an fd link", e))?;
        fd_link.pin(pin).map_err(|e| err(&format!("pin link {}", pin.display()), e))?;
        Ok(())
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> Result<HashMap<&mut MapData, K, V>, DataplaneError> {
        HashMap::try_from(self.ebpf.map_mut(name).ok_or_else(|| err("map missing", name))?).map_err(|e| err(name, e))
    }

    fn sync_links(&mut self, desired: &Desired, report: &mut SyncReport) -> Result<(), DataplaneError> {
        let mut wanted = BTreeSet::new();
        let mut plan = Vec::new();
        for iface in &desired.ifaces {
            let attachments: &[(TcAttachType, &str)] = match iface.role {
                IfaceRole::Uplink { .. } => &[
                    (TcAttachType::Ingress, PROG_UPLINK_INGRESS),
                    (TcAttachType::Egress, PROG_UPLINK_EGRESS),
                ],
                IfaceRole::SandboxVeth { .. } => &[(TcAttachType::Ingress, PROG_OBSERVE)],
            };
            for &(direction, program) in attachments {
                let dir = if direction == TcAttachType::Ingress { "ingress" } else { "egress" };
                let name = format!("{}-{}-{dir}-{program}", iface.index, iface.name);
                wanted.insert(name.clone());
                plan.push((name, iface.name.clone(), direction, program));
            }
        }
        let existing = self.pinned_links();
        for stale in existing.difference(&wanted) {
            unpin(&self.links_dir().join(stale)).map_err(|e| err("detach", e))?;
            report.detached.push(stale.clone());
        }
        for (name, ifname, direction, program) in plan {
            if existing.contains(&name) {
                report.adopted.push(name);
                continue;
            }
            let pin = self.links_dir().join(&name);
            self.attach(program, &ifname, direction, &pin)?;
            report.attached.push(name);
        }
        Ok(())
    }

    fn sync_iface_config(&mut self, desired: &Desired) -> Result<(), DataplaneError> {
        let mut want = BTreeMap::new();
        for iface in &desired.ifaces {
            let value = match iface.role {
                IfaceRole::Uplink { addr } => IfaceConfig {
                    role: role::UPLINK,
                    network_id: 0,
                    addr: addr.map(v4_bytes).unwrap_or_default(),
                    family: if addr.is_some() { FAMILY_V4 } else { 0 },
                    _pad: [0; 7],
                },
                IfaceRole::SandboxVeth { network_id } => IfaceConfig {
                    role: role::SANDBOX_VETH,
                    network_id,
                    ..Default::default()
                },
            };
            want.insert(iface.index, value);
        }
        let mut map = self.hash_map::<u32, IfaceConfig>(IFACE_CONFIG)?;
        sync_hash(&mut map, &want, IFACE_CONFIG)?;
        let mut stats = self.hash_map::<u32, IfaceStats>(IFACE_STATS)?;
        let stale: Vec<u32> = stats.keys().filter_map(Result::ok).filter(|k| !want.contains_key(k)).collect();
        for key in stale {
            let _ = stats.remove(&key);
        }
        Ok(())
    }

    /// Published ports go in element by element: a new mapping appears with one update, a
    /// removed one disappears with one delete, never half-installed.
    fn sync_ports(&mut self, desired: &Desired) -> Result<HashSet<u32>, DataplaneError> {
        let mut want = BTreeMap::new();
        for rule in &desired.ports {
            let key = PortKey {
                addr: rule.host_ip.map(v4_bytes).unwrap_or_default(),
                port: rule.host_port.to_be(),
                proto: rule.proto.number(),
                family: FAMILY_V4,
            };
            let value = PortTarget {
                addr: v4_bytes(rule.target),
                port: rule.target_port.to_be(),
                _pad: [0; 2],
                mapping_id: rule.mapping_id,
            };
            want.insert(key, value);
        }
        let mut map = self.hash_map::<PortKey, PortTarget>(PORTS)?;
        sync_hash(&mut map, &want, PORTS)?;
        Ok(want.values().map(|t| t.mapping_id).collect())
    }

    fn sync_addrs_and_nets(&mut self, desired: &Desired) -> Result<(), DataplaneError> {
        let want: BTreeMap<AddrKey, u32> = desired
            .local_addrs
            .iter()
            .map(|ip| (AddrKey { addr: v4_bytes(*ip), family: FAMILY_V4, _pad: [0; 3] }, 1))
            .collect();
        let mut map = self.hash_map::<AddrKey, u32>(LOCAL_ADDRS)?;
        sync_hash(&mut map, &want, LOCAL_ADDRS)?;

        let mut trie: LpmTrie<&mut MapData, [u8; 4], MasqNet> =
            LpmTrie::try_from(self.ebpf.map_mut(MASQ_V4).ok_or_else(|| err("map missing", MASQ_V4))?)
                .map_err(|e| err(MASQ_V4, e))?;
        let want: BTreeMap<(u32, [u8; 4]), MasqNet> = desired
            .masq_nets
            .iter()
            .map(|(net, id)| ((u32::from(net.prefix()), net.network().octets()), MasqNet { network_id: *id, _pad: 0 }))
            .collect();
        let have: Vec<Key<[u8; 4]>> = trie.keys().filter_map(Result::ok).collect();
        for key in have {
            if !want.contains_key(&(key.prefix_len(), key.data())) {
                let _ = trie.remove(&key);
            }
        }
        for ((prefix, data), value) in &want {
            trie.insert(&Key::new(*prefix, *data), *value, 0).map_err(|e| err(MASQ_V4, e))?;
        }

        let mut config: Array<&mut MapData, NatConfig> =
            Array::try_from(self.ebpf.map_mut(CONFIG).ok_or_else(|| err("map missing", CONFIG))?).map_err(|e| err(CONFIG, e))?;
        let value = NatConfig { snat_port_min: desired.snat_ports.0, snat_port_max: desired.snat_ports.1, _pad: 0 };
        config.set(0, value, 0).map_err(|e| err(CONFIG, e))?;
        Ok(())
    }

    /// Flows of mappings that no longer exist are removed at once (UDP included); the
    /// programs also refuse them packet by packet.
    fn invalidate_flows(&mut self, live: &HashSet<u32>) -> Result<usize, DataplaneError> {
        let mut map = self.hash_map::<CtKey, CtEntry>(CT)?;
        let dead: Vec<CtKey> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| (e.kind == ct::DNAT_FORWARD || e.kind == ct::DNAT_REPLY) && !live.contains(&e.mapping_id))
            .map(|(k, _)| k)
            .collect();
        for key in &dead {
            let _ = map.remove(key);
        }
        Ok(dead.len())
    }

    pub fn conntrack_entries(&self) -> Vec<(CtKey, CtEntry)> {
        self.ebpf
            .map(CT)
            .and_then(|m| HashMap::<_, CtKey, CtEntry>::try_from(m).ok())
            .map(|m| m.iter().filter_map(Result::ok).collect())
            .unwrap_or_default()
    }
}

/// Deletes what is not wanted and writes what differs: one syscall per changed element.
fn sync_hash<K, V>(map: &mut HashMap<&mut MapData, K, V>, want: &BTreeMap<K, V>, name: &str) -> Result<(), DataplaneError>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    let have: BTreeMap<K, V> = map.iter().filter_map(Result::ok).collect();
    for key in have.keys().filter(|k| !want.contains_key(k)) {
        let _ = map.remove(key);
    }
    for (key, value) in want {
        if have.get(key) != Some(value) {
            map.insert(key, value, 0).map_err(|e| err(name, e))?;
        }
    }
    Ok(())
}

fn unpin(path: &Path) -> Result<(), String> {
    match PinnedLink::from_pin(path) {
        Ok(link) => {
            // Dropping the last reference to the link detaches the program.
            drop(link.unpin().map_err(|e| format!("unpin {}: {e}", path.display()))?);
            Ok(())
        }
        Err(_) => std::fs::remove_file(path).map_err(|e| format!("remove {}: {e}", path.display())),
    }
}

impl Timeouts {
    fn for_flow(&self, proto: u8, state: u8, replied: bool) -> Duration {
        match proto {
            6 => match state {
                ct::TCP_ESTABLISHED => self.tcp_established,
                ct::TCP_CLOSING => self.tcp_closing,
                ct::TCP_CLOSED => self.tcp_closed,
                _ => self.tcp_syn,
            },
            17 if replied => self.udp_replied,
            17 => self.udp,
            _ => self.icmp,
        }
    }
}

/// The state of a flow from its two entries: the more final TCP state wins.
fn flow_state(a: &CtEntry, b: Option<&CtEntry>) -> (u8, bool, u64) {
    let b_state = b.map(|b| b.state).unwrap_or(0);
    let rank = |s: u8| match s {
        ct::TCP_CLOSED => 4,
        ct::TCP_CLOSING => 3,
        ct::TCP_ESTABLISHED => 2,
        _ => 1,
    };
    let state = if rank(a.state) >= rank(b_state) { a.state } else { b_state };
    let replied = a.state == ct::DGRAM_REPLIED || b_state == ct::DGRAM_REPLIED || b.is_some_and(|b| b.packets > 0);
    let last = a.last_seen_ns.max(b.map(|b| b.last_seen_ns).unwrap_or(0));
    (state, replied, last)
}

impl Dataplane for EbpfDataplane {
    fn kind(&self) -> &'static str {
        "ebpf"
    }

    fn sync(&mut self, desired: &Desired) -> Result<SyncReport, DataplaneError> {
        let mut report = SyncReport::default();
        // Maps first, then attachments: a program never runs on a half-filled map.
        self.sync_iface_config(desired)?;
        self.sync_addrs_and_nets(desired)?;
        let live = self.sync_ports(desired)?;
        report.flows_invalidated = self.invalidate_flows(&live)?;
        self.sync_links(desired, &mut report)?;
        Ok(report)
    }

    fn gc(&mut self) -> Result<GcReport, DataplaneError> {
        let now = monotonic_ns();
        let timeouts = self.timeouts;
        let mut map = self.hash_map::<CtKey, CtEntry>(CT)?;
        let entries: StdHashMap<CtKey, CtEntry> = map.iter().filter_map(Result::ok).collect();
        let mut expired = Vec::new();
        for (key, entry) in &entries {
            let peer_key = reverse_of_translated(key, entry);
            let peer = entries.get(&peer_key);
            let (state, replied, last) = flow_state(entry, peer);
            let idle = Duration::from_nanos(now.saturating_sub(last));
            // An entry without its peer is the remains of a refused insert: short grace.
            let limit = if peer.is_none() { timeouts.tcp_closed } else { timeouts.for_flow(key.proto, state, replied) };
            if idle > limit {
                expired.push(*key);
            }
        }
        for key in &expired {
            let _ = map.remove(key);
        }
        Ok(GcReport { scanned: entries.len(), expired: expired.len() })
    }

    fn info(&self) -> serde_json::Value {
        let mut counters = serde_json::Map::new();
        if let Some(map) = self.ebpf.map(COUNTERS)
            && let Ok(array) = PerCpuArray::<_, u64>::try_from(map)
        {
            for (id, name) in counter::NAMES.iter().enumerate() {
                if let Ok(values) = array.get(&(id as u32), 0) {
                    counters.insert((*name).into(), values.iter().sum::<u64>().into());
                }
            }
        }
        let mut ifaces = serde_json::Map::new();
        if let Some(map) = self.ebpf.map(IFACE_STATS)
            && let Ok(stats) = HashMap::<_, u32, IfaceStats>::try_from(map)
        {
            for (index, value) in stats.iter().filter_map(Result::ok) {
                ifaces.insert(index.to_string(), serde_json::json!({"packets": value.packets, "bytes": value.bytes}));
            }
        }
        let ct_entries = self.conntrack_entries().len();
        let ports = self
            .ebpf
            .map(PORTS)
            .and_then(|m| HashMap::<_, PortKey, PortTarget>::try_from(m).ok())
            .map(|m| m.keys().count())
            .unwrap_or(0);
        serde_json::json!({
            "attach": "tcx",
            "pin_dir": self.pin_dir.display().to_string(),
            "links": self.pinned_links(),
            "counters": counters,
            "interfaces": ifaces,
            "maps": {
                "conntrack": {"entries": ct_entries, "capacity": self.ct_capacity},
                "ports": {"entries": ports, "capacity": nat_common::MAX_PORT_MAPPINGS},
            },
        })
    }

    fn cleanup(&mut self) -> Vec<String> {
        cleanup_pin_dir(&self.pin_dir)
    }
}

/// Detaches every pinned link and removes every pinned map under `pin_dir`, then the
/// directory itself. Works without loading the object, so `natd --cleanup` always can.
pub fn cleanup_pin_dir(pin_dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    for (sub, is_link) in [("links", true), ("maps", false)] {
        let dir = pin_dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let result = if is_link {
                unpin(&entry.path())
            } else {
                std::fs::remove_file(entry.path()).map_err(|e| format!("remove {}: {e}", entry.path().display()))
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }
    }
    for dir in [pin_dir.join("maps"), pin_dir.join("links"), pin_dir.to_owned()] {
        if let Err(e) = std::fs::remove_dir(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(format!("remove {}: {e}", dir.display()));
        }
    }
    errors
}
