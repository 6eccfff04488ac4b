//! Changes behind natd's back, found without the daemon's lock: the configuration maps
//! are compared with what natd last wrote (`maps::Mirror`) and the pinned links with the
//! ones natd keeps. The kernel's side is read first, with no lock; what natd wrote is
//! copied under the lock afterwards (reference counts, `maps::Written`) and compared with
//! no lock again; what differs is looked up once more under the lock (`confirm`), since a
//! request may have written it in between. Only what is still different is repaired: its
//! mirror is forgotten and the next sync reads that map whole (more than `MAX_RECHECKED`
//! keys differing in one map, a request's range racing the read, is taken as changed
//! without looking each up: one read of that map too many). A pinned link counts as
//! changed when it went, appeared, or runs another program than at the last check (the
//! first check after a link is attached takes its program as the one to keep). A tick that
//! finds nothing holds the lock for two copies of reference counts and no syscall.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::fd::AsFd as _,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use aya::{
    Pod,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData},
};
use nat_common::{
    Addr6, EndpointInfo, IfaceConfig, NatConfig, NetInfo4, NetInfo6, Port4Key, Port4Target, Port6Key,
    Port6Target, TrustKey, names::map,
};

use super::{
    loader::Links,
    maps::{Mirror, Written, config_entry},
    tables::{MapSet as _, Tables, read_all},
};
use crate::{
    dataplane::{DriftCheck, WrittenState},
    sys::bpf_link,
};

/// What natd wrote, as the eBPF dataplane hands it to its drift check.
pub struct EbpfWritten {
    pub mirror: Mirror,
    /// The names of the links natd keeps pinned (None: not all attached yet, the next
    /// sync checks them all anyway).
    pub pins: Option<Arc<BTreeSet<String>>>,
}

/// Name of the finding for links (maps are named by their map name).
pub const LINKS: &str = "pinned links";

/// More keys than this differing in one map: repaired without looking each up again.
const MAX_RECHECKED: usize = 256;

/// One map's comparison.
trait MapCheck: Send {
    fn name(&self) -> &'static str;
    /// No lock: the kernel's entries.
    fn read(&mut self, maps: &Tables);
    /// No lock: what differs from what natd wrote (then the kernel's copy is dropped).
    fn compare(&mut self, written: &Mirror);
    /// Under the lock: whether anything found still differs from what natd wrote now.
    fn confirm(&self, maps: &Tables, written: &Mirror) -> bool;
    /// After `read`: the entries the kernel's map holds (None: not read, or not counted).
    fn entries(&self) -> Option<usize> {
        None
    }
}

struct HashCheck<K, V> {
    name: &'static str,
    field: fn(&Mirror) -> &Written<K, V>,
    kernel: Option<Vec<(K, V)>>,
    differing: Vec<K>,
}

fn hash<K: Pod + Ord + Send, V: Pod + PartialEq + Send>(
    name: &'static str,
    field: fn(&Mirror) -> &Written<K, V>,
) -> Box<dyn MapCheck> {
    Box::new(HashCheck { name, field, kernel: None, differing: Vec::new() })
}

impl<K: Pod + Ord + Send, V: Pod + PartialEq + Send> MapCheck for HashCheck<K, V> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn read(&mut self, maps: &Tables) {
        // Sorted here, so the comparison (which holds a copy of what natd wrote, and makes
        // a request that writes meanwhile copy its mirror) is one merge walk.
        self.kernel = read_all::<K, V>(maps, self.name).ok().map(|mut kernel| {
            kernel.sort_unstable_by_key(|entry| entry.0);
            kernel
        });
    }

    fn entries(&self) -> Option<usize> {
        self.kernel.as_ref().map(Vec::len)
    }

    fn compare(&mut self, written: &Mirror) {
        // Unknown on either side: the next write reads the kernel's map anyway.
        let (Some(kernel), Some(wrote)) = (self.kernel.take(), (self.field)(written)) else {
            return;
        };
        self.differing = sorted_difference(&kernel, wrote.iter());
    }

    fn confirm(&self, maps: &Tables, written: &Mirror) -> bool {
        if self.differing.is_empty() {
            return false;
        }
        let Some(wrote) = (self.field)(written) else {
            return false;
        };
        if self.differing.len() > MAX_RECHECKED {
            return true;
        }
        let Some(Ok(kernel)) = maps.map(self.name).map(BpfHashMap::<&MapData, K, V>::try_from) else {
            return true;
        };
        self.differing
            .iter()
            .any(|key| kernel.get(key, 0).ok() != wrote.get(key).copied())
    }
}

/// The keys where two key-sorted sequences of entries differ (in one only, or in value).
fn sorted_difference<'a, K: Ord + Copy + 'a, V: PartialEq + 'a>(
    kernel: &[(K, V)],
    wrote: impl Iterator<Item = (&'a K, &'a V)>,
) -> Vec<K> {
    let mut differing = Vec::new();
    let mut kernel = kernel.iter().peekable();
    let mut wrote = wrote.peekable();
    loop {
        match (kernel.peek(), wrote.peek()) {
            (None, None) => return differing,
            (Some((k, _)), None) => {
                differing.push(*k);
                kernel.next();
            }
            (None, Some((w, _))) => {
                differing.push(**w);
                wrote.next();
            }
            (Some((k, kv)), Some((w, wv))) => match k.cmp(w) {
                std::cmp::Ordering::Less => {
                    differing.push(*k);
                    kernel.next();
                }
                std::cmp::Ordering::Greater => {
                    differing.push(**w);
                    wrote.next();
                }
                std::cmp::Ordering::Equal => {
                    if kv != *wv {
                        differing.push(*k);
                    }
                    kernel.next();
                    wrote.next();
                }
            },
        }
    }
}

/// An LPM trie (a few entries per network): compared whole, read again whole to confirm.
struct TrieCheck<K, V> {
    name: &'static str,
    field: fn(&Mirror) -> &Written<(u32, K), V>,
    kernel: Option<BTreeMap<(u32, K), V>>,
    differs: bool,
}

fn trie<K: Pod + Ord + Send, V: Pod + PartialEq + Send>(
    name: &'static str,
    field: fn(&Mirror) -> &Written<(u32, K), V>,
) -> Box<dyn MapCheck> {
    Box::new(TrieCheck { name, field, kernel: None, differs: false })
}

fn read_trie<K: Pod + Ord, V: Pod>(maps: &Tables, name: &str) -> Option<BTreeMap<(u32, K), V>> {
    let trie = LpmTrie::<&MapData, K, V>::try_from(maps.map(name)?).ok()?;
    trie.iter()
        .map(|entry| entry.ok().map(|(key, value)| ((key.prefix_len(), key.data()), value)))
        .collect()
}

impl<K: Pod + Ord + Send, V: Pod + PartialEq + Send> MapCheck for TrieCheck<K, V> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn read(&mut self, maps: &Tables) {
        self.kernel = read_trie(maps, self.name);
    }

    fn compare(&mut self, written: &Mirror) {
        let (Some(kernel), Some(wrote)) = (self.kernel.take(), (self.field)(written)) else {
            return;
        };
        self.differs = kernel != **wrote;
    }

    fn confirm(&self, maps: &Tables, written: &Mirror) -> bool {
        let Some(wrote) = (self.field)(written) else {
            return false;
        };
        self.differs && read_trie::<K, V>(maps, self.name).is_none_or(|kernel| kernel != **wrote)
    }
}

/// `NATD_CONFIG`'s one entry.
#[derive(Default)]
struct ConfigCheck {
    kernel: Option<NatConfig>,
    differs: bool,
}

impl MapCheck for ConfigCheck {
    fn name(&self) -> &'static str {
        map::CONFIG
    }

    fn read(&mut self, maps: &Tables) {
        self.kernel = config_entry(maps);
    }

    fn compare(&mut self, written: &Mirror) {
        if let (Some(kernel), Some(wrote)) = (self.kernel.take(), written.config) {
            self.differs = kernel != wrote;
        }
    }

    fn confirm(&self, maps: &Tables, written: &Mirror) -> bool {
        self.differs && written.config.is_some() && config_entry(maps) != written.config
    }
}

/// The generations natd knows (slots it read or wrote), against the array.
#[derive(Default)]
struct GenerationsCheck {
    kernel: Option<Vec<(u32, u32)>>,
    differing: Vec<u32>,
}

impl MapCheck for GenerationsCheck {
    fn name(&self) -> &'static str {
        map::GENERATIONS
    }

    fn read(&mut self, maps: &Tables) {
        self.kernel = read_all::<u32, u32>(maps, map::GENERATIONS).ok();
    }

    fn compare(&mut self, written: &Mirror) {
        let Some(kernel) = self.kernel.take() else { return };
        // An array's entries come in slot order, every slot there: indexed by slot.
        let by_slot = |slot: u32| kernel.get(slot as usize).filter(|(s, _)| *s == slot).map(|(_, g)| *g);
        self.differing = written
            .generations
            .iter()
            .filter(|(slot, g)| by_slot(**slot) != Some(**g))
            .map(|(slot, _)| *slot)
            .collect();
    }

    fn confirm(&self, maps: &Tables, written: &Mirror) -> bool {
        if self.differing.is_empty() {
            return false;
        }
        if self.differing.len() > MAX_RECHECKED {
            return true;
        }
        let Some(Ok(array)) = maps.map(map::GENERATIONS).map(Array::<&MapData, u32>::try_from) else {
            return true;
        };
        self.differing.iter().any(|slot| {
            written
                .generations
                .get(slot)
                .is_some_and(|g| array.get(slot, 0).ok() != Some(*g))
        })
    }
}

/// Every configuration map natd mirrors.
fn map_checks() -> Vec<Box<dyn MapCheck>> {
    vec![
        hash::<u32, IfaceConfig>(map::IFACE_CONFIG, |m| &m.ifaces),
        hash::<u32, u32>(map::LOCAL4, |m| &m.local),
        hash::<Addr6, u32>(map::LOCAL6, |m| &m.local6),
        hash::<u32, NetInfo4>(map::NETWORKS, |m| &m.networks),
        trie::<[u8; 4], NetInfo4>(map::NETS4, |m| &m.nets4),
        trie::<[u8; 16], NetInfo6>(map::NETS6, |m| &m.nets6),
        hash::<u32, EndpointInfo>(map::ENDPOINTS4, |m| &m.endpoints),
        hash::<Addr6, EndpointInfo>(map::ENDPOINTS6, |m| &m.endpoints6),
        hash::<Port4Key, Port4Target>(map::PORTS4, |m| &m.ports),
        hash::<Port6Key, Port6Target>(map::PORTS6, |m| &m.ports6),
        hash::<TrustKey, u32>(map::TRUSTED, |m| &m.trusted),
        Box::new(ConfigCheck::default()),
        Box::new(GenerationsCheck::default()),
    ]
}

/// The eBPF dataplane's drift check (`DriftCheck`), on the housekeeper's descriptors.
pub struct Check {
    maps: Arc<Tables>,
    checks: Vec<Box<dyn MapCheck>>,
    links_dir: PathBuf,
    /// The program each pinned link ran at the last check (shared between checks).
    programs: Arc<Mutex<HashMap<String, u32>>>,
    /// Pins found: name -> program id.
    pins: Option<HashMap<String, u32>>,
    /// Pins missing, or there but not natd's.
    odd_pins: Vec<String>,
    /// Pins whose program changed since the last check (or cannot be read).
    reprogrammed: bool,
    /// The entries of each hash map read, for statistics (`Housekeeper::stats`): the
    /// scrape does not read the tables the check has just read.
    counted: Counted,
}

/// Entries of maps as a walk of them found, by map name.
pub type Counted = Arc<Mutex<BTreeMap<&'static str, usize>>>;

impl Check {
    pub fn new(
        maps: Arc<Tables>,
        links_dir: PathBuf,
        programs: Arc<Mutex<HashMap<String, u32>>>,
        counted: Counted,
    ) -> Self {
        Self {
            counted,
            maps,
            checks: map_checks(),
            links_dir,
            programs,
            pins: None,
            odd_pins: Vec::new(),
            reprogrammed: false,
        }
    }
}

impl DriftCheck for Check {
    fn read(&mut self) {
        for check in &mut self.checks {
            check.read(&self.maps);
        }
        let mut counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        for check in &self.checks {
            if let Some(entries) = check.entries() {
                counted.insert(check.name(), entries);
            }
        }
        drop(counted);
        let pins = Links::pinned(&self.links_dir)
            .into_iter()
            .map(|name| {
                let id = bpf_link::open(&self.links_dir.join(&name))
                    .and_then(|link| bpf_link::program_id(link.as_fd()))
                    .unwrap_or(0);
                (name, id)
            })
            .collect();
        self.pins = Some(pins);
    }

    fn compare(&mut self, written: &WrittenState) {
        let Some(written) = written.0.downcast_ref::<EbpfWritten>() else {
            return;
        };
        for check in &mut self.checks {
            check.compare(&written.mirror);
        }
        let (Some(found), Some(wanted)) = (self.pins.take(), &written.pins) else {
            return;
        };
        let mut last = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        self.odd_pins = wanted
            .iter()
            .filter(|name| !found.contains_key(*name))
            .chain(found.keys().filter(|name| !wanted.contains(*name)))
            .cloned()
            .collect();
        self.reprogrammed = found
            .iter()
            .any(|(name, id)| *id == 0 || last.get(name).is_some_and(|before| before != id));
        *last = found;
    }

    fn confirm(&self, written: &WrittenState) -> Vec<String> {
        let Some(written) = written.0.downcast_ref::<EbpfWritten>() else {
            return Vec::new();
        };
        let mut drifted: Vec<String> = self
            .checks
            .iter()
            .filter(|check| check.confirm(&self.maps, &written.mirror))
            .map(|check| check.name().to_string())
            .collect();
        // A pin that is (or is not) there as natd wants it now was a request's doing.
        let pins_odd = written.pins.as_ref().is_some_and(|wanted| {
            self.odd_pins
                .iter()
                .any(|name| wanted.contains(name) != self.links_dir.join(name).exists())
        });
        if pins_odd || self.reprogrammed {
            drifted.push(LINKS.to_string());
        }
        drifted
    }
}

#[cfg(test)]
mod tests {
    use super::sorted_difference;

    #[test]
    fn the_merge_walk_finds_every_key_that_differs_and_no_other() {
        let kernel = [(1u32, 10u32), (2, 20), (4, 40), (6, 60)];
        let wrote: std::collections::BTreeMap<u32, u32> = [(2, 20), (3, 30), (4, 41), (6, 60), (7, 70)].into();
        // 1: only in the kernel; 3 and 7: only written; 4: another value.
        assert_eq!(sorted_difference(&kernel, wrote.iter()), vec![1, 3, 4, 7]);
        let same: std::collections::BTreeMap<u32, u32> = kernel.into_iter().collect();
        assert!(sorted_difference(&kernel, same.iter()).is_empty(), "control: the same entries");
        assert_eq!(sorted_difference::<u32, u32>(&[], same.iter()), vec![1, 2, 4, 6]);
    }
}
