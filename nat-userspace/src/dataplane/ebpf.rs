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
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
    },
};
use nat_common::{
    AddrKey, CtEntry, CtKey, FAMILY_V4, IfaceConfig, IfaceStats, MappingStats, NatConfig, NetInfo, PortKey,
    PortTarget, counter, ct, net, role,
};

use super::{Dataplane, DataplaneError, Desired, Flow, GcReport, IfaceRole, Stats, SyncReport};
use crate::config::DaemonConfig;

const PROG_UPLINK_INGRESS: &str = "natd_uplink_ingress";
const PROG_UPLINK_EGRESS: &str = "natd_uplink_egress";
const PROG_SANDBOX: &str = "natd_sandbox_ingress";
const TC_PROGRAMS: [&str; 3] = [PROG_UPLINK_INGRESS, PROG_UPLINK_EGRESS, PROG_SANDBOX];
/// Socket hooks, attached to the cgroup v2 root and filtered by natd's netns cookie.
const SOCK_PROGRAMS: [&str; 4] = [
    "natd_connect4",
    "natd_sendmsg4",
    "natd_recvmsg4",
    "natd_getpeername4",
];

const COUNTERS: &str = "NATD_COUNTERS";
const IFACE_STATS: &str = "NATD_IFACE_STATS";
const IFACE_CONFIG: &str = "NATD_IFACE_CONFIG";
const CT: &str = "NATD_CT";
const PORTS: &str = "NATD_PORTS";
const LOCAL_ADDRS: &str = "NATD_LOCAL_ADDRS";
const NETS_V4: &str = "NATD_NETS_V4";
const NETWORKS: &str = "NATD_NETWORKS";
const MAPPING_STATS: &str = "NATD_MAPPING_STATS";
const NETNS: &str = "NATD_NETNS";
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

impl Timeouts {
    /// Defaults with the operator's `--conntrack-timeout KIND=SECONDS` applied.
    pub fn from_config(overrides: &[(String, u64)]) -> Self {
        let mut t = Self::default();
        for (kind, secs) in overrides {
            let d = Duration::from_secs(*secs);
            match kind.as_str() {
                "tcp-syn" => t.tcp_syn = d,
                "tcp-established" => t.tcp_established = d,
                "tcp-closing" => t.tcp_closing = d,
                "tcp-closed" => t.tcp_closed = d,
                "udp" => t.udp = d,
                "udp-replied" => t.udp_replied = d,
                "icmp" => t.icmp = d,
                _ => {}
            }
        }
        t
    }
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

/// The error with its whole source chain: aya's syscall errors keep the errno in a source.
fn err(context: &str, e: impl std::fmt::Display + std::fmt::Debug) -> DataplaneError {
    let debug = format!("{e:?}");
    let text = e.to_string();
    let detail = match debug.find("io_error") {
        Some(at) => format!("{text} ({})", &debug[at..]),
        None => text,
    };
    DataplaneError::Ebpf(format!("{context}: {detail}"))
}

pub struct EbpfDataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    timeouts: Timeouts,
    ct_capacity: u32,
    cgroup_root: Option<PathBuf>,
}

/// The cgroup v2 hierarchy's root, where socket hooks see every process.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(path))
    })
}

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE, Linux 5.14).
fn netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket =
        std::net::UdpSocket::bind("127.0.0.1:0").or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid socket fd, a u64 out-buffer and its length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Mounts bpffs at /sys/fs/bpf when it is missing (it is not mounted at boot everywhere).
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), DataplaneError> {
    let root = Path::new("/sys/fs/bpf");
    let is_bpffs = nix::sys::statfs::statfs(root)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false);
    if !is_bpffs && pin_dir.starts_with(root) {
        std::fs::create_dir_all(root).map_err(|e| err("create /sys/fs/bpf", e))?;
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
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

/// The key of the other direction of the flow `key` belongs to: the translated tuple,
/// reversed.
pub fn peer_key(key: &CtKey, entry: &CtEntry) -> CtKey {
    CtKey {
        src: entry.dst,
        dst: entry.src,
        sport: entry.dport,
        dport: entry.sport,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    }
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
        // The same steps for both program types; their `load` is inherent, not a trait.
        macro_rules! load_all {
            ($ty:ty, $names:expr) => {
                for name in $names {
                    let program: &mut $ty = ebpf
                        .program_mut(name)
                        .ok_or_else(|| err("program missing", name))?
                        .try_into()
                        .map_err(|e| err("program type", e))?;
                    program
                        .load()
                        .map_err(|e| err(&format!("verifier rejected {name}"), e))?;
                }
            };
        }
        load_all!(SchedClassifier, TC_PROGRAMS);
        load_all!(CgroupSockAddr, SOCK_PROGRAMS);
        let cookie = netns_cookie().map_err(|e| err("netns cookie (SO_NETNS_COOKIE, Linux >= 5.14)", e))?;
        let mut netns: Array<&mut MapData, u64> =
            Array::try_from(ebpf.map_mut(NETNS).ok_or_else(|| err("map missing", NETNS))?)
                .map_err(|e| err(NETNS, e))?;
        netns.set(0, cookie, 0).map_err(|e| err(NETNS, e))?;
        Ok(Self {
            ebpf,
            pin_dir,
            timeouts: Timeouts::from_config(&config.conntrack_timeouts),
            ct_capacity,
            cgroup_root: cgroup2_root(),
        })
    }

    fn links_dir(&self) -> PathBuf {
        self.pin_dir.join("links")
    }

    fn pinned_links(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.links_dir())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn attach(
        &mut self,
        program: &str,
        ifname: &str,
        direction: TcAttachType,
        pin: &Path,
    ) -> Result<(), DataplaneError> {
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
        fd_link
            .pin(pin)
            .map_err(|e| err(&format!("pin link {}", pin.display()), e))?;
        Ok(())
    }

    /// A pinned link from an earlier natd keeps its program; when this natd carries a
    /// different program (an upgrade), the link is updated in place (BPF_LINK_UPDATE), so
    /// there is no moment without a program on the interface.
    fn replace_if_outdated(&mut self, program: &str, pin: &Path) -> Result<bool, DataplaneError> {
        let fd_link: FdLink = PinnedLink::from_pin(pin)
            .map_err(|e| err("open pinned link", e))?
            .into();
        let current = fd_link.info().map_err(|e| err("link info", e))?.program_id();
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| err("program missing", program))?
            .try_into()
            .map_err(|e| err("program type", e))?;
        let wanted_tag = prog.info().map_err(|e| err("program info", e))?.tag();
        let current_tag = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == current)
            .map(|p| p.tag());
        if current_tag == Some(wanted_tag) {
            return Ok(false);
        }
        let link =
            aya::programs::tc::SchedClassifierLink::try_from(fd_link).map_err(|e| err("link type", e))?;
        let id = prog.attach_to_link(link).map_err(|e| err("update link", e))?;
        // The pin keeps the (updated) link; our handle only needs closing.
        drop(prog.take_link(id).map_err(|e| err("take link", e))?);
        Ok(true)
    }

    fn attach_cgroup(&mut self, program: &str, pin: &Path) -> Result<(), DataplaneError> {
        let root = self
            .cgroup_root
            .clone()
            .ok_or_else(|| err("attach socket hooks", "no cgroup v2 hierarchy"))?;
        let cgroup = std::fs::File::open(&root).map_err(|e| err(&format!("open {}", root.display()), e))?;
        let prog: &mut CgroupSockAddr = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| err("program missing", program))?
            .try_into()
            .map_err(|e| err("program type", e))?;
        let id = prog
            // With BPF links (Linux >= 5.7, which aya uses) cgroup attachments always
            // coexist with other programs; the kernel rejects any attach flag there.
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|e| err(&format!("attach {program} to {}", root.display()), e))?;
        let link = prog.take_link(id).map_err(|e| err("take link", e))?;
        let fd_link: FdLink = link.try_into().map_err(|e| err("link is not an fd link", e))?;
        fd_link
            .pin(pin)
            .map_err(|e| err(&format!("pin link {}", pin.display()), e))?;
        Ok(())
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
    ) -> Result<HashMap<&mut MapData, K, V>, DataplaneError> {
        HashMap::try_from(self.ebpf.map_mut(name).ok_or_else(|| err("map missing", name))?)
            .map_err(|e| err(name, e))
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
                IfaceRole::SandboxVeth { .. } => &[(TcAttachType::Ingress, PROG_SANDBOX)],
            };
            for &(direction, program) in attachments {
                let dir = if direction == TcAttachType::Ingress {
                    "ingress"
                } else {
                    "egress"
                };
                let name = format!("{}-{}-{dir}-{program}", iface.index, iface.name);
                wanted.insert(name.clone());
                plan.push((name, iface.name.clone(), direction, program));
            }
        }
        let mut cgroup_plan = Vec::new();
        if self.cgroup_root.is_some() {
            for program in SOCK_PROGRAMS {
                let name = format!("cgroup-{program}");
                wanted.insert(name.clone());
                cgroup_plan.push((name, program));
            }
        }
        let existing = self.pinned_links();
        for (name, program) in cgroup_plan {
            let pin = self.links_dir().join(&name);
            if existing.contains(&name) {
                report.adopted.push(name);
                continue;
            }
            self.attach_cgroup(program, &pin)?;
            report.attached.push(name);
        }
        for stale in existing.difference(&wanted) {
            unpin(&self.links_dir().join(stale)).map_err(|e| err("detach", e))?;
            report.detached.push(stale.clone());
        }
        for (name, ifname, direction, program) in plan {
            if existing.contains(&name) {
                if self.replace_if_outdated(program, &self.links_dir().join(&name))? {
                    report
                        .attached
                        .push(format!("{name} (program replaced atomically)"));
                } else {
                    report.adopted.push(name);
                }
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
        let stale: Vec<u32> = stats
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want.contains_key(k))
            .collect();
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
        let live: HashSet<u32> = want.values().map(|t| t.mapping_id).collect();
        // Counters exist before the mapping does, so the programs only ever add to them.
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| err("nr_cpus", e))?;
        let mut stats: PerCpuHashMap<&mut MapData, u32, MappingStats> = PerCpuHashMap::try_from(
            self.ebpf
                .map_mut(MAPPING_STATS)
                .ok_or_else(|| err("map missing", MAPPING_STATS))?,
        )
        .map_err(|e| err(MAPPING_STATS, e))?;
        let have: HashSet<u32> = stats.keys().filter_map(Result::ok).collect();
        for id in have.difference(&live) {
            let _ = stats.remove(id);
        }
        for id in live.difference(&have) {
            let zeros = PerCpuValues::try_from(vec![MappingStats::default(); cpus])
                .map_err(|e| err(MAPPING_STATS, e))?;
            stats.insert(id, zeros, 0).map_err(|e| err(MAPPING_STATS, e))?;
        }
        let mut map = self.hash_map::<PortKey, PortTarget>(PORTS)?;
        sync_hash(&mut map, &want, PORTS)?;
        Ok(live)
    }

    fn sync_addrs_and_nets(&mut self, desired: &Desired) -> Result<(), DataplaneError> {
        let want: BTreeMap<AddrKey, u32> = desired
            .local_addrs
            .iter()
            .map(|ip| {
                (
                    AddrKey {
                        addr: v4_bytes(*ip),
                        family: FAMILY_V4,
                        _pad: [0; 3],
                    },
                    1,
                )
            })
            .collect();
        let mut map = self.hash_map::<AddrKey, u32>(LOCAL_ADDRS)?;
        sync_hash(&mut map, &want, LOCAL_ADDRS)?;

        let infos: Vec<NetInfo> = desired
            .networks
            .iter()
            .map(|n| NetInfo {
                network_id: n.id,
                flags: (if n.icc { net::ICC } else { 0 })
                    | (if n.internal { net::INTERNAL } else { 0 })
                    | (if n.masquerade { net::MASQ } else { 0 }),
                gateway: v4_bytes(n.gateway),
                subnet: v4_bytes(n.subnet.network()),
                prefix_len: n.subnet.prefix(),
                _pad: [0; 7],
            })
            .collect();
        let by_id: BTreeMap<u32, NetInfo> = infos.iter().map(|i| (i.network_id, *i)).collect();
        let mut networks = self.hash_map::<u32, NetInfo>(NETWORKS)?;
        sync_hash(&mut networks, &by_id, NETWORKS)?;
        let mut trie: LpmTrie<&mut MapData, [u8; 4], NetInfo> = LpmTrie::try_from(
            self.ebpf
                .map_mut(NETS_V4)
                .ok_or_else(|| err("map missing", NETS_V4))?,
        )
        .map_err(|e| err(NETS_V4, e))?;
        let want: BTreeMap<(u32, [u8; 4]), NetInfo> = infos
            .iter()
            .map(|i| {
                (
                    (
                        u32::from(i.prefix_len),
                        [i.subnet[0], i.subnet[1], i.subnet[2], i.subnet[3]],
                    ),
                    *i,
                )
            })
            .collect();
        let have: Vec<Key<[u8; 4]>> = trie.keys().filter_map(Result::ok).collect();
        for key in have {
            if !want.contains_key(&(key.prefix_len(), key.data())) {
                let _ = trie.remove(&key);
            }
        }
        for ((prefix, data), value) in &want {
            trie.insert(&Key::new(*prefix, *data), *value, 0)
                .map_err(|e| err(NETS_V4, e))?;
        }

        let mut config: Array<&mut MapData, NatConfig> = Array::try_from(
            self.ebpf
                .map_mut(CONFIG)
                .ok_or_else(|| err("map missing", CONFIG))?,
        )
        .map_err(|e| err(CONFIG, e))?;
        let value = NatConfig {
            snat_port_min: desired.snat_ports.0,
            snat_port_max: desired.snat_ports.1,
            _pad: 0,
        };
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
            .filter(|(_, e)| {
                (e.kind == ct::DNAT_FORWARD || e.kind == ct::DNAT_REPLY) && !live.contains(&e.mapping_id)
            })
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
fn sync_hash<K, V>(
    map: &mut HashMap<&mut MapData, K, V>,
    want: &BTreeMap<K, V>,
    name: &str,
) -> Result<(), DataplaneError>
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
            drop(
                link.unpin()
                    .map_err(|e| format!("unpin {}: {e}", path.display()))?,
            );
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
    let state = if rank(a.state) >= rank(b_state) {
        a.state
    } else {
        b_state
    };
    let replied =
        a.state == ct::DGRAM_REPLIED || b_state == ct::DGRAM_REPLIED || b.is_some_and(|b| b.packets > 0);
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
            let peer_key = peer_key(key, entry);
            let peer = entries.get(&peer_key);
            let (state, replied, last) = flow_state(entry, peer);
            let idle = Duration::from_nanos(now.saturating_sub(last));
            // An entry without its peer is the remains of a refused insert: short grace.
            let limit = if peer.is_none() {
                timeouts.tcp_closed
            } else {
                timeouts.for_flow(key.proto, state, replied)
            };
            if idle > limit {
                expired.push(*key);
            }
        }
        for key in &expired {
            let _ = map.remove(key);
        }
        Ok(GcReport {
            scanned: entries.len(),
            expired: expired.len(),
        })
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
                ifaces.insert(
                    index.to_string(),
                    serde_json::json!({"packets": value.packets, "bytes": value.bytes}),
                );
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
            "socket_hooks_cgroup": self.cgroup_root.as_ref().map(|p| p.display().to_string()),
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

    fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        if let Some(map) = self.ebpf.map(COUNTERS)
            && let Ok(array) = PerCpuArray::<_, u64>::try_from(map)
        {
            for (id, name) in counter::NAMES.iter().enumerate() {
                if let Ok(values) = array.get(&(id as u32), 0) {
                    stats.counters.insert((*name).to_string(), values.iter().sum());
                }
            }
        }
        if let Some(map) = self.ebpf.map(MAPPING_STATS)
            && let Ok(per_cpu) = PerCpuHashMap::<_, u32, MappingStats>::try_from(map)
        {
            for (id, values) in per_cpu.iter().filter_map(Result::ok) {
                let packets = values.iter().map(|v| v.packets).sum();
                let bytes = values.iter().map(|v| v.bytes).sum();
                stats.mappings.insert(id, (packets, bytes));
            }
        }
        let entries = |name: &str| -> usize {
            let Some(map) = self.ebpf.map(name) else { return 0 };
            match name {
                CT => HashMap::<_, CtKey, CtEntry>::try_from(map)
                    .map(|m| m.keys().count())
                    .unwrap_or(0),
                PORTS => HashMap::<_, PortKey, PortTarget>::try_from(map)
                    .map(|m| m.keys().count())
                    .unwrap_or(0),
                LOCAL_ADDRS => HashMap::<_, AddrKey, u32>::try_from(map)
                    .map(|m| m.keys().count())
                    .unwrap_or(0),
                NETWORKS => HashMap::<_, u32, NetInfo>::try_from(map)
                    .map(|m| m.keys().count())
                    .unwrap_or(0),
                IFACE_CONFIG => HashMap::<_, u32, IfaceConfig>::try_from(map)
                    .map(|m| m.keys().count())
                    .unwrap_or(0),
                _ => 0,
            }
        };
        for (name, capacity) in [
            (CT, self.ct_capacity),
            (PORTS, nat_common::MAX_PORT_MAPPINGS),
            (LOCAL_ADDRS, nat_common::MAX_LOCAL_ADDRS),
            (NETWORKS, nat_common::MAX_NETWORKS),
            (IFACE_CONFIG, nat_common::MAX_IFACES),
        ] {
            stats.maps.insert(name.to_string(), (entries(name), capacity));
        }
        stats
    }

    fn flows(&self) -> Vec<Flow> {
        let now = monotonic_ns();
        let proto_name = |p: u8| match p {
            6 => "tcp",
            17 => "udp",
            1 => "icmp",
            _ => "other",
        };
        let kind_name = |k: u8| match k {
            ct::DNAT_FORWARD => "dnat",
            ct::DNAT_REPLY => "dnat-reply",
            ct::SNAT_FORWARD => "snat",
            ct::SNAT_REPLY => "snat-reply",
            _ => "unknown",
        };
        let state_name = |s: u8| match s {
            ct::TCP_SYN_SENT => "syn-sent",
            ct::TCP_ESTABLISHED => "established",
            ct::TCP_CLOSING => "closing",
            ct::TCP_CLOSED => "closed",
            ct::DGRAM_REPLIED => "replied",
            _ => "new",
        };
        let addr = |a: &[u8; 16]| std::net::IpAddr::V4(v4_of(a));
        self.conntrack_entries()
            .iter()
            .map(|(k, e)| Flow {
                proto: proto_name(k.proto).into(),
                kind: kind_name(e.kind).into(),
                state: state_name(e.state).into(),
                original: (
                    addr(&k.src),
                    u16::from_be(k.sport),
                    addr(&k.dst),
                    u16::from_be(k.dport),
                ),
                translated: (
                    addr(&e.src),
                    u16::from_be(e.sport),
                    addr(&e.dst),
                    u16::from_be(e.dport),
                ),
                mapping_id: e.mapping_id,
                packets: e.packets,
                bytes: e.bytes,
                age_s: now.saturating_sub(e.created_ns) / 1_000_000_000,
                idle_s: now.saturating_sub(e.last_seen_ns) / 1_000_000_000,
            })
            .collect()
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
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let result = if is_link {
                unpin(&entry.path())
            } else {
                std::fs::remove_file(entry.path())
                    .map_err(|e| format!("remove {}: {e}", entry.path().display()))
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
