//! The one writer of natd's maps: from `Desired` to map entries, element by element (a
//! new mapping appears with one update, a removed one disappears with one delete, never
//! half-installed). Published mappings and endpoints get generation slots (`slots`), so
//! their removal ends their flows without touching the connection table. The agent, the
//! packet tests and the benchmark all write maps through here, so the bytes they install
//! are the bytes natd installs.
use std::{
    collections::{BTreeMap, HashMap as StdHashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key},
};
use nat_common::{
    Addr6, EndpointInfo, IfaceConfig, MAX_PORT_MAPPINGS, NatConfig, NetInfo4, NetInfo6,
    Port4Key, Port4Target, Port6Key, Port6Target, TrustKey, config, names::map, port_marks,
};

pub use super::kernel_form::{from_raw, from_raw6, raw, raw6};
use super::{
    conntrack::now_ticks,
    err,
    tables::{MapSet, read_all, write_all},
    kernel_form::{MappingKey, PortEntry, endpoint_info, iface_config, net_info, net_info6, port_entry},
    portmarks::PortMarks,
    slots::{SlotBook, SlotChange, SlotsExhausted},
};
use crate::dataplane::{DataplaneError, Desired, EndpointRule, NetworkRule, PortRule};

fn hash_map<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<HashMap<&'a mut MapData, K, V>, DataplaneError> {
    HashMap::try_from(ebpf.map_mut(name).ok_or_else(|| err("map missing", name))?).map_err(|e| err(name, e))
}

/// Deletes what is not wanted and writes what differs: one syscall per changed element.
/// `mirror` is what natd last wrote (compared instead of the kernel's map, so a request
/// costs no read of the whole map); unknown, the kernel's map is read once. After a failed
/// update it is unknown again.
fn sync_hash<K, V>(
    ebpf: &mut Ebpf,
    name: &str,
    want: BTreeMap<K, V>,
    mirror: &mut Option<Arc<BTreeMap<K, V>>>,
) -> Result<(), DataplaneError>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    let have = match mirror.take() {
        Some(have) => have,
        None => Arc::new(read_all::<K, V>(ebpf, name)?.into_iter().collect()),
    };
    let mut map = hash_map::<K, V>(ebpf, name)?;
    for key in have.keys().filter(|k| !want.contains_key(k)) {
        let _ = map.remove(key);
    }
    for (key, value) in &want {
        if have.get(key) != Some(value) {
            map.insert(key, value, 0).map_err(|e| err(name, e))?;
        }
    }
    *mirror = Some(Arc::new(want));
    Ok(())
}

/// What natd last wrote into a map, shared with the drift check (`drift`) so a copy of
/// every mirror is a few reference counts; a write while the check holds one copies it.
pub type Written<K, V> = Option<Arc<BTreeMap<K, V>>>;

/// What natd last wrote into each configuration map (None: unknown, read from the
/// kernel at the next write). Cloning is cheap (`Written`).
#[derive(Clone, Default)]
pub struct Mirror {
    pub ifaces: Written<u32, IfaceConfig>,
    pub local: Written<u32, u32>,
    pub local6: Written<Addr6, u32>,
    pub networks: Written<u32, NetInfo4>,
    pub nets4: Written<(u32, [u8; 4]), NetInfo4>,
    pub nets6: Written<(u32, [u8; 16]), NetInfo6>,
    pub endpoints: Written<u32, EndpointInfo>,
    pub endpoints6: Written<Addr6, EndpointInfo>,
    pub ports: Written<Port4Key, Port4Target>,
    pub ports6: Written<Port6Key, Port6Target>,
    pub trusted: Written<TrustKey, u32>,
    pub config: Option<NatConfig>,
    /// Generation of each slot natd read or wrote.
    pub generations: Arc<StdHashMap<u32, u32>>,
}

impl Mirror {
    /// Forgets what natd wrote into the map `name` (the next write reads the kernel's).
    pub fn forget(&mut self, name: &str) {
        match name {
            map::IFACE_CONFIG => self.ifaces = None,
            map::LOCAL4 => self.local = None,
            map::LOCAL6 => self.local6 = None,
            map::NETWORKS => self.networks = None,
            map::NETS4 => self.nets4 = None,
            map::NETS6 => self.nets6 = None,
            map::ENDPOINTS4 => self.endpoints = None,
            map::ENDPOINTS6 => self.endpoints6 = None,
            map::PORTS4 => self.ports = None,
            map::PORTS6 => self.ports6 = None,
            map::TRUSTED => self.trusted = None,
            map::CONFIG => self.config = None,
            map::GENERATIONS => {
                // The published ports and endpoints carry their slot's generation: written
                // again with the generations read back, or their flows never match.
                self.generations = Arc::default();
                for dependent in [map::PORTS4, map::PORTS6, map::ENDPOINTS4, map::ENDPOINTS6] {
                    self.forget(dependent);
                }
            }
            _ => {}
        }
    }

    /// Whether a map's contents are unknown (a write failed midway, or none was made yet):
    /// the next sync reads it back and writes what is missing.
    pub fn unknown(&self) -> bool {
        self.ifaces.is_none()
            || self.local.is_none()
            || self.local6.is_none()
            || self.networks.is_none()
            || self.nets4.is_none()
            || self.nets6.is_none()
            || self.endpoints.is_none()
            || self.endpoints6.is_none()
            || self.ports.is_none()
            || self.ports6.is_none()
            || self.trusted.is_none()
            || self.config.is_none()
    }
}

/// Records which mapping holds `slot` (None: no mapping).
fn name_slot(ids: &mut Vec<Option<u32>>, slot: u32, id: Option<u32>) {
    let index = slot as usize;
    if ids.len() <= index {
        ids.resize(index + 1, None);
    }
    ids[index] = id;
}

/// Who owns an endpoint slot: the address on that veth (the same address on a new veth
/// is a new endpoint, whose flows are not the old one's).
type EndpointOwner = (IpAddr, u32);

pub struct MapWriter {
    mappings: SlotBook<MappingKey>,
    /// The id of the mapping that holds each slot (for statistics and flows), by slot.
    mapping_ids: Vec<Option<u32>>,
    endpoints: SlotBook<EndpointOwner>,
    mirror: Mirror,
    /// The host-bound miss filter's marks, opened at first use (the inner `None`: an
    /// object from before them).
    marks: Option<Option<PortMarks>>,
    /// Whether the programs skip the lookups for unmarked ports (`config::PORT_FILTER`).
    port_filter: bool,
}

impl Default for MapWriter {
    fn default() -> Self {
        Self::new(MAX_PORT_MAPPINGS)
    }
}

impl MapWriter {
    /// A writer for `published_ports` mappings at most (`--max-published-ports`).
    pub fn new(published_ports: u32) -> Self {
        Self {
            mappings: SlotBook::new(0, published_ports.min(MAX_PORT_MAPPINGS)),
            mapping_ids: Vec::new(),
            endpoints: SlotBook::new(MAX_PORT_MAPPINGS, nat_common::MAX_ENDPOINTS),
            mirror: Mirror::default(),
            marks: None,
            port_filter: false,
        }
    }
}

impl MapWriter {
    /// The host-bound miss filter's marks (`None`: the object has none).
    pub fn marks(&mut self, ebpf: &Ebpf) -> Result<Option<&PortMarks>, DataplaneError> {
        if self.marks.is_none() {
            self.marks = Some(PortMarks::open(ebpf)?);
        }
        Ok(self.marks.as_ref().and_then(Option::as_ref))
    }

    /// Lets the programs skip the lookups for unmarked ports (or not) from the next write
    /// on. On only once every port the tables use is marked, by these programs or by the
    /// caller.
    pub fn set_port_filter(&mut self, on: bool) {
        self.port_filter = on;
    }

    pub fn port_filter(&self) -> bool {
        self.port_filter
    }

    /// The marks, if opened already.
    pub fn opened_marks(&self) -> Option<&PortMarks> {
        self.marks.as_ref().and_then(Option::as_ref)
    }

    /// Takes over the slots the maps hold already (natd restarted over pinned maps).
    pub fn adopt(&mut self, ebpf: &Ebpf) {
        let held: Vec<PortEntry> = pinned::<Port4Key, Port4Target>(ebpf, map::PORTS4)
            .map(|(k, t)| PortEntry::V4(k, t))
            .chain(pinned::<Port6Key, Port6Target>(ebpf, map::PORTS6).map(|(k, t)| PortEntry::V6(k, t)))
            .collect();
        self.mappings
            .adopt(held.iter().map(|e| (e.slot_owner(), e.slot_and_id().0)));
        for (owner, (slot, id)) in held.iter().map(|e| (e.slot_owner(), e.slot_and_id())) {
            // Only what the book took (a slot in range, held by one owner).
            if self.mappings.slot(&owner) == Some(slot) {
                name_slot(&mut self.mapping_ids, slot, Some(id));
            }
        }
        self.endpoints.adopt(
            pinned::<u32, EndpointInfo>(ebpf, map::ENDPOINTS4)
                .map(|(addr, e)| ((IpAddr::V4(from_raw(addr)), e.host_ifindex), e.slot)),
        );
        self.endpoints.adopt(
            pinned::<Addr6, EndpointInfo>(ebpf, map::ENDPOINTS6)
                .map(|(addr, e)| ((IpAddr::V6(from_raw6(addr)), e.host_ifindex), e.slot)),
        );
    }

    /// Forgets what was written: the next write compares with the kernel's maps (and
    /// repairs whatever was changed behind natd's back).
    pub fn reread(&mut self) {
        self.mirror = Mirror::default();
    }

    /// What natd last wrote, to compare with the kernel's maps (`drift`).
    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    /// What natd last wrote, to forget what the drift check found changed.
    pub fn mirror_mut(&mut self) -> &mut Mirror {
        &mut self.mirror
    }

    /// The id of the mapping holding `slot`.
    pub fn mapping_of_slot(&self, slot: u32) -> Option<u32> {
        self.mapping_ids.get(slot as usize).copied().flatten()
    }

    /// The current generation of `slots`.
    pub fn generations_of(&self, ebpf: &Ebpf, slots: impl IntoIterator<Item = u32>) -> StdHashMap<u32, u32> {
        let Some(array) = ebpf
            .map(map::GENERATIONS)
            .and_then(|m| Array::<_, u32>::try_from(m).ok())
        else {
            return StdHashMap::new();
        };
        slots
            .into_iter()
            .filter_map(|s| Some((s, array.get(&s, 0).ok()?)))
            .collect()
    }

    /// (published mappings held, the most allowed).
    pub fn mapping_room(&self) -> (usize, usize) {
        self.mappings.room()
    }

    /// Every published mapping's (id, slot), for its statistics.
    pub fn mapping_slots(&self) -> Vec<(u32, u32)> {
        (0u32..)
            .zip(&self.mapping_ids)
            .filter_map(|(slot, id)| Some(((*id)?, slot)))
            .collect()
    }

    /// The slot of the rule natd 0.1 knew by `legacy_id` (`PortRule::legacy_id`), among `rules`.
    pub fn legacy_slots(&self, rules: &[PortRule]) -> StdHashMap<u32, u32> {
        rules
            .iter()
            .filter_map(|r| Some((r.legacy_id, self.mappings.slot(&MappingKey::of(r))?)))
            .collect()
    }

    /// Makes every configuration map hold `desired`. Order matters: a program never finds
    /// a port mapping or endpoint whose generation, counters or network are not there yet.
    pub fn write(&mut self, ebpf: &mut Ebpf, desired: &Desired) -> Result<(), DataplaneError> {
        self.write_all_but_ports(ebpf, desired)?;
        self.write_ports(ebpf, &desired.ports)
    }

    /// `write`, with the published ports changed only by `added` and `removed`: those alone
    /// are written when what natd wrote is known, else every port.
    pub fn write_with_ports(
        &mut self,
        ebpf: &mut Ebpf,
        desired: &Desired,
        added: &[PortRule],
        removed: &[PortRule],
    ) -> Result<(), DataplaneError> {
        self.write_all_but_ports(ebpf, desired)?;
        if self.change_ports(ebpf, added, removed)? {
            return Ok(());
        }
        self.write_ports(ebpf, &desired.ports)
    }

    fn write_all_but_ports(&mut self, ebpf: &mut Ebpf, desired: &Desired) -> Result<(), DataplaneError> {
        let ifaces: BTreeMap<u32, IfaceConfig> = desired
            .ifaces
            .iter()
            .map(|i| (i.index, iface_config(i)))
            .collect();
        let m = &mut self.mirror;
        sync_hash(ebpf, map::IFACE_CONFIG, ifaces, &mut m.ifaces)?;
        let mut local = BTreeMap::new();
        let mut local6 = BTreeMap::new();
        for ip in &desired.local_addrs {
            match ip {
                IpAddr::V4(v4) => local.insert(raw(*v4), 1),
                IpAddr::V6(v6) => local6.insert(raw6(*v6), 1),
            };
        }
        sync_hash(ebpf, map::LOCAL4, local, &mut m.local)?;
        sync_hash(ebpf, map::LOCAL6, local6, &mut m.local6)?;
        write_networks(ebpf, &desired.networks, m)?;
        let trusted: BTreeMap<TrustKey, u32> = desired
            .trusted_edges()
            .into_iter()
            .map(|(ifindex, network_id)| (TrustKey { ifindex, network_id }, 1))
            .collect();
        sync_hash(ebpf, map::TRUSTED, trusted, &mut m.trusted)?;
        self.write_endpoints(ebpf, &desired.endpoints)?;
        write_config(ebpf, desired, self.port_filter, &mut self.mirror.config)
    }

    fn write_endpoints(&mut self, ebpf: &mut Ebpf, endpoints: &[EndpointRule]) -> Result<(), DataplaneError> {
        let owners: Vec<EndpointOwner> = endpoints.iter().map(|e| (e.addr, e.host_ifindex)).collect();
        let changes = self.endpoints.sync(&owners).map_err(|e| err("endpoints", e))?;
        let mut generations = Generations::open(ebpf, &mut self.mirror.generations)?;
        for change in &changes {
            let (SlotChange::Taken { slot, .. } | SlotChange::Released { slot, .. }) = change;
            generations.bump(*slot)?;
        }
        let mut want = BTreeMap::new();
        let mut want6 = BTreeMap::new();
        for e in endpoints {
            let slot = self
                .endpoints
                .slot(&(e.addr, e.host_ifindex))
                .expect("synced above");
            let info = endpoint_info(e, slot, generations.get(slot)?);
            match e.addr {
                IpAddr::V4(v4) => want.insert(raw(v4), info),
                IpAddr::V6(v6) => want6.insert(raw6(v6), info),
            };
        }
        sync_hash(ebpf, map::ENDPOINTS4, want, &mut self.mirror.endpoints)?;
        sync_hash(ebpf, map::ENDPOINTS6, want6, &mut self.mirror.endpoints6)
    }

    fn write_ports(&mut self, ebpf: &mut Ebpf, ports: &[PortRule]) -> Result<(), DataplaneError> {
        let owners: Vec<MappingKey> = ports.iter().map(MappingKey::of).collect();
        let changes = self.mappings.sync(&owners).map_err(no_room)?;
        let mut generations = Generations::open(ebpf, &mut self.mirror.generations)?;
        let mut fresh = Vec::new();
        for change in &changes {
            match change {
                SlotChange::Released { slot, .. } => generations.bump(*slot)?,
                SlotChange::Taken { slot, .. } => {
                    generations.bump(*slot)?;
                    fresh.push(*slot);
                }
            }
        }
        let mut want = BTreeMap::new();
        let mut want6 = BTreeMap::new();
        self.mapping_ids.clear();
        for (rule, owner) in ports.iter().zip(&owners) {
            let slot = self.mappings.slot(owner).expect("synced above");
            name_slot(&mut self.mapping_ids, slot, Some(rule.mapping_id));
            match port_entry(rule, slot, generations.get(slot)?) {
                PortEntry::V4(key, target) => want.insert(key, target).map(drop),
                PortEntry::V6(key, target) => want6.insert(key, target).map(drop),
            };
        }
        // Counters start at zero before the mapping exists, so the programs only add;
        // the port is marked before it is published (or its packets could skip it).
        super::mapping_stats::zero(ebpf, &fresh, self.mappings.room().1 as u32)?;
        if let Some(marks) = self.marks(ebpf)? {
            let now = now_ticks();
            let wanted = want.keys().filter_map(port_marks::of_port);
            marks.mark_all(wanted.chain(want6.keys().filter_map(port_marks::of_port)), now);
        }
        sync_hash(ebpf, map::PORTS4, want, &mut self.mirror.ports)?;
        sync_hash(ebpf, map::PORTS6, want6, &mut self.mirror.ports6)
    }

    /// Published ports added and removed, nothing else changed: only those elements are
    /// written (no walk of the other mappings). False when what natd wrote is not known
    /// (start, after a failed write, a map found changed by the tick): the caller writes everything instead.
    pub fn change_ports(
        &mut self,
        ebpf: &mut Ebpf,
        added: &[PortRule],
        removed: &[PortRule],
    ) -> Result<bool, DataplaneError> {
        let (Some(mut mirror), Some(mut mirror6)) = (self.mirror.ports.take(), self.mirror.ports6.take())
        else {
            return Ok(false);
        };
        let mut generations = Generations::open(ebpf, &mut self.mirror.generations)?;
        let mut fresh = Vec::new();
        let mut gone = Vec::new();
        // A rule removed and added again with only its id changed (the open container port
        // of two mappings, when the one whose id it had is withdrawn) keeps its slot and
        // flows, as in a full write: its entry is just rewritten.
        let staying: HashSet<MappingKey> = added.iter().map(MappingKey::of).collect();
        for rule in removed.iter().filter(|r| !staying.contains(&MappingKey::of(r))) {
            if let Some(SlotChange::Released { slot, .. }) = self.mappings.release(&MappingKey::of(rule)) {
                generations.bump(slot)?;
                name_slot(&mut self.mapping_ids, slot, None);
            }
            // The key does not depend on the slot.
            gone.push(port_entry(rule, 0, 0));
        }
        for rule in added {
            let change = self
                .mappings
                .take(&MappingKey::of(rule))
                .map_err(no_room)?;
            if let Some(SlotChange::Taken { slot, .. }) = change {
                fresh.push(slot);
            }
        }
        generations.bump_all(&fresh)?;
        let mut new = Vec::new();
        for rule in added {
            let slot = self.mappings.slot(&MappingKey::of(rule)).expect("taken above");
            name_slot(&mut self.mapping_ids, slot, Some(rule.mapping_id));
            new.push(port_entry(rule, slot, generations.get(slot)?));
        }
        super::mapping_stats::zero(ebpf, &fresh, self.mappings.room().1 as u32)?;
        if let Some(marks) = self.marks(ebpf)? {
            let now = now_ticks();
            marks.mark_all(new.iter().filter_map(PortEntry::mark), now);
        }
        apply_port_changes(
            ebpf,
            map::PORTS4,
            gone.iter().filter_map(PortEntry::v4),
            new.iter().filter_map(PortEntry::v4),
            &mut mirror,
        )?;
        self.mirror.ports = Some(mirror);
        apply_port_changes(
            ebpf,
            map::PORTS6,
            gone.iter().filter_map(PortEntry::v6),
            new.iter().filter_map(PortEntry::v6),
            &mut mirror6,
        )?;
        self.mirror.ports6 = Some(mirror6);
        Ok(true)
    }
}

/// The entries of a pinned hash map, read in batches (none when it cannot be read).
fn pinned<K: aya::Pod, V: aya::Pod>(ebpf: &Ebpf, name: &str) -> impl Iterator<Item = (K, V)> {
    read_all::<K, V>(ebpf, name).unwrap_or_default().into_iter()
}

/// Removes the `gone` keys and writes the `new` entries of one port map and its mirror.
fn apply_port_changes<K: aya::Pod + Ord, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    gone: impl Iterator<Item = (K, V)>,
    new: impl Iterator<Item = (K, V)>,
    mirror: &mut Arc<BTreeMap<K, V>>,
) -> Result<(), DataplaneError> {
    let mirror = Arc::make_mut(mirror);
    {
        let mut ports: HashMap<&mut MapData, K, V> = hash_map(ebpf, name)?;
        for (key, _) in gone {
            let _ = ports.remove(&key);
            mirror.remove(&key);
        }
    }
    // A range of thousands of ports in one syscall.
    let new: Vec<(K, V)> = new.collect();
    write_all(ebpf, name, &new)?;
    mirror.extend(new);
    Ok(())
}

/// `NATD_GENERATIONS`: read once in a batch, then known (natd is its only writer), and
/// bumped slot by slot or in a batch.
struct Generations<'a> {
    ebpf: &'a mut Ebpf,
    known: &'a mut StdHashMap<u32, u32>,
}

impl<'a> Generations<'a> {
    fn open(ebpf: &'a mut Ebpf, known: &'a mut Arc<StdHashMap<u32, u32>>) -> Result<Self, DataplaneError> {
        let known = Arc::make_mut(known);
        if known.is_empty() {
            // Every slot in one batched read, not one lookup per slot as it is needed.
            known.extend(read_all::<u32, u32>(ebpf, map::GENERATIONS)?);
        }
        Ok(Self { ebpf, known })
    }

    fn get(&mut self, slot: u32) -> Result<u32, DataplaneError> {
        if let Some(g) = self.known.get(&slot) {
            return Ok(*g);
        }
        let array: Array<&MapData, u32> = Array::try_from(
            self.ebpf
                .map(map::GENERATIONS)
                .ok_or_else(|| err("map missing", map::GENERATIONS))?,
        )
        .map_err(|e| err(map::GENERATIONS, e))?;
        let g = array.get(&slot, 0).map_err(|e| err(map::GENERATIONS, e))?;
        self.known.insert(slot, g);
        Ok(g)
    }

    fn bump(&mut self, slot: u32) -> Result<(), DataplaneError> {
        self.bump_all(&[slot])
    }

    /// Every slot of `slots` to its next generation, in one write.
    fn bump_all(&mut self, slots: &[u32]) -> Result<(), DataplaneError> {
        let mut next = Vec::with_capacity(slots.len());
        for slot in slots {
            next.push((*slot, self.get(*slot)?.wrapping_add(1)));
        }
        // Unknown until written: a failed write leaves them to be read again.
        for slot in slots {
            self.known.remove(slot);
        }
        write_all(&*self.ebpf, map::GENERATIONS, &next)?;
        self.known.extend(next);
        Ok(())
    }
}

/// Every slot for published mappings taken (the daemon refuses requests past
/// `--max-published-ports` before they are stored; this is what a sync meets otherwise).
fn no_room(e: SlotsExhausted) -> DataplaneError {
    err(
        "published ports",
        format!("natd allows {} (--max-published-ports) and every one is taken", e.0),
    )
}

fn write_networks(ebpf: &mut Ebpf, networks: &[NetworkRule], m: &mut Mirror) -> Result<(), DataplaneError> {
    let infos: Vec<NetInfo4> = networks.iter().map(net_info).collect();
    let by_id: BTreeMap<u32, NetInfo4> = infos.iter().map(|i| (i.network_id, *i)).collect();
    sync_hash(ebpf, map::NETWORKS, by_id, &mut m.networks)?;
    let want: BTreeMap<(u32, [u8; 4]), NetInfo4> = infos
        .iter()
        .map(|i| ((u32::from(i.prefix_len), i.subnet.to_ne_bytes()), *i))
        .collect();
    sync_trie(ebpf, map::NETS4, want, &mut m.nets4)?;
    let want6: BTreeMap<(u32, [u8; 16]), NetInfo6> = networks
        .iter()
        .filter_map(|n| {
            Some((
                (u32::from(n.v6?.subnet.prefix()), n.v6?.subnet.network().octets()),
                net_info6(n)?,
            ))
        })
        .collect();
    sync_trie(ebpf, map::NETS6, want6, &mut m.nets6)
}

/// An LPM trie made to hold exactly `want` (keyed by prefix length and address bytes).
fn sync_trie<K, V>(
    ebpf: &mut Ebpf,
    name: &str,
    want: BTreeMap<(u32, K), V>,
    mirror: &mut Written<(u32, K), V>,
) -> Result<(), DataplaneError>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    if mirror.as_deref() == Some(&want) {
        return Ok(());
    }
    *mirror = None;
    let mut trie: LpmTrie<&mut MapData, K, V> =
        LpmTrie::try_from(ebpf.map_mut(name).ok_or_else(|| err("map missing", name))?)
            .map_err(|e| err(name, e))?;
    let have: Vec<Key<K>> = trie.keys().filter_map(Result::ok).collect();
    for key in have {
        if !want.contains_key(&(key.prefix_len(), key.data())) {
            let _ = trie.remove(&key);
        }
    }
    for ((prefix, data), value) in &want {
        trie.insert(&Key::new(*prefix, *data), *value, 0)
            .map_err(|e| err(name, e))?;
    }
    *mirror = Some(Arc::new(want));
    Ok(())
}

fn write_config(
    ebpf: &mut Ebpf,
    desired: &Desired,
    port_filter: bool,
    mirror: &mut Option<NatConfig>,
) -> Result<(), DataplaneError> {
    let value = NatConfig {
        snat_port_min: desired.snat_ports.0,
        snat_port_max: desired.snat_ports.1,
        flags: (if desired.fast_path { config::FAST_PATH } else { 0 })
            | (if desired.direct_routing {
                config::DIRECT_ROUTING
            } else {
                0
            })
            | (if port_filter { config::PORT_FILTER } else { 0 }),
        embryonic_per_source: desired.quota_embryonic,
        promoted_per_source: desired.quota_promoted,
    };
    if mirror.as_ref() == Some(&value) {
        return Ok(());
    }
    let mut config_map: Array<&mut MapData, NatConfig> = Array::try_from(
        ebpf.map_mut(map::CONFIG)
            .ok_or_else(|| err("map missing", map::CONFIG))?,
    )
    .map_err(|e| err(map::CONFIG, e))?;
    *mirror = None;
    config_map.set(0, value, 0).map_err(|e| err(map::CONFIG, e))?;
    *mirror = Some(value);
    Ok(())
}

/// Whether the pinned configuration has the host-bound miss filter on (a natd with these
/// programs started it before).
pub fn port_filter_on(ebpf: &Ebpf) -> bool {
    config_entry(ebpf).is_some_and(|c| c.flags & config::PORT_FILTER != 0)
}

/// `NATD_CONFIG`'s one entry as the kernel holds it.
pub fn config_entry(maps: &(impl MapSet + ?Sized)) -> Option<NatConfig> {
    Array::<&MapData, NatConfig>::try_from(maps.map(map::CONFIG)?).ok()?.get(&0, 0).ok()
}

/// The cookie of the network namespace natd serves: socket hooks act only there.
pub fn write_netns_cookie(ebpf: &mut Ebpf, cookie: u64) -> Result<(), DataplaneError> {
    let mut netns: Array<&mut MapData, u64> = Array::try_from(
        ebpf.map_mut(map::NETNS)
            .ok_or_else(|| err("map missing", map::NETNS))?,
    )
    .map_err(|e| err(map::NETNS, e))?;
    netns.set(0, cookie, 0).map_err(|e| err(map::NETNS, e))
}

