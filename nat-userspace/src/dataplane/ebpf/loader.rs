//! Loading natd's object and attaching its programs: maps pinned by name under
//! `<bpffs>/maps` (reused, not recreated, on restart), TCX and cgroup links pinned under
//! `<bpffs>/links` so attachments outlive natd and are adopted when it comes back, and
//! upgraded in place when natd carries a different program.
use std::{
    collections::{BTreeSet, HashMap},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, Program, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
    },
};
use nat_common::names::{map, program};

use super::{adopt, err, pins, sizes::TableSizes};
use crate::{
    dataplane::{DataplaneError, Desired, IfaceRole, SyncReport},
    sys::bpf_link,
};

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

/// The cgroup v2 hierarchy's root, where socket hooks see every process.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(path))
    })
}

/// The shapes the maps of this natd's object get with `sizes`.
fn expected_shapes(sizes: TableSizes) -> Result<std::collections::BTreeMap<String, pins::Shape>, DataplaneError> {
    pins::expected(&sizes.overrides())
}

/// What a start of this natd with `sizes` would do to the maps pinned under `pin_dir`,
/// changing nothing (`natd --check-upgrade`): a line per pinned map, and whether the start
/// would go ahead.
pub fn check_upgrade(pin_dir: &Path, sizes: TableSizes) -> Result<Vec<String>, DataplaneError> {
    let maps = pin_dir.join("maps");
    let mut lines = vec![match pins::pinned_layout(&maps)? {
        Some(v) => format!("pinned layout version {v}; this natd's is {}", nat_common::LAYOUT_VERSION),
        None if maps.exists() => format!(
            "no layout version pinned (a natd from before versions: read as version 1); this natd's is {}",
            nat_common::LAYOUT_VERSION
        ),
        None => "nothing pinned: a first start".to_string(),
    }];
    pins::check_layout(&maps)?;
    check_fit(&maps, sizes)?;
    for (name, fate) in pins::assess(&maps, &expected_shapes(sizes)?) {
        lines.push(match fate {
            pins::Fate::Keep => format!("{name}: adopted as it is"),
            pins::Fate::Carry { why } => format!(
                "{name}: replaced ({why}), {} {} carried over",
                pins::entries_in(&maps, &name),
                pins::entry_word(&name)
            ),
            pins::Fate::Replace { why } => format!("{name}: replaced ({why}), rebuilt by natd"),
            pins::Fate::Remove => format!("{name}: removed (no natd map of that name any more)"),
        });
    }
    lines.push(
        "programs: every pinned link whose program or maps differ from this natd's is switched in place".into(),
    );
    Ok(lines)
}

/// A smaller established table than the flows it holds would drop established flows, a
/// smaller masquerade table mappings in use (their sandboxes' flows would leave from
/// other ports): the start is refused, nothing changed. (Pending flows, peers and shared
/// ports are LRUs': what does not fit is reported, as the LRU would evict it anyway.)
fn check_fit(maps: &Path, sizes: TableSizes) -> Result<(), DataplaneError> {
    let expected = expected_shapes(sizes)?;
    for (name, fate) in pins::assess(maps, &expected) {
        let (option, value, entries, dropped) = match name.as_str() {
            map::CT4 | map::CT6 => ("--conntrack-max", sizes.established, "flow entries", "established flows"),
            map::SNAT4 | map::SNAT6 => {
                ("--masquerade-max", sizes.masquerade, "masquerade mappings", "masquerade mappings in use")
            }
            _ => continue,
        };
        if !matches!(fate, pins::Fate::Carry { .. }) {
            continue;
        }
        let held = pins::entries_in(maps, &name);
        let room = expected.get(&name).map_or(value, |shape| shape.3);
        if held > room as usize {
            return Err(DataplaneError::Ebpf(format!(
                "{name} holds {held} {entries}, more than {option} {value} leaves room for: {dropped} \
                 would be dropped. Nothing was changed: start with {option} {held} or more (or once \
                 they have ended)"
            )));
        }
    }
    // Mappings keep their slots over a restart; one beyond the new regions would be given
    // another, and the flows still carrying the old one would outlive the mapping. Slots
    // are reused lowest first, but after mappings come and go one may sit high.
    if let Some(highest) = highest_mapping_slot(maps)
        && highest >= sizes.published_ports
    {
        return Err(DataplaneError::Ebpf(format!(
            "a published mapping holds slot {highest}, beyond what --max-published-ports {} leaves: \
             it would move and its flows outlive it. Nothing was changed: start with \
             --max-published-ports {} or more (slots are taken again lowest first: remove mappings \
             and publish them again to lower it)",
            sizes.published_ports,
            highest + 1
        )));
    }
    Ok(())
}

/// The highest generation slot a pinned published mapping holds (read in batches: a
/// start at 100,000 mappings must not make a syscall per entry).
fn highest_mapping_slot(maps: &Path) -> Option<u32> {
    fn highest<K: aya::Pod, V: aya::Pod>(path: &Path, slot: fn(&V) -> u32) -> Option<u32> {
        let data = aya::maps::MapData::from_pin(path).ok()?;
        let (_, values, count) = crate::sys::bpf_map::dump(data.fd().as_fd(), size_of::<K>(), size_of::<V>()).ok()?;
        (0..count)
            .map(|i| {
                // SAFETY: a Pod value the kernel copied, exactly the map's value size each.
                slot(&unsafe { std::ptr::read_unaligned(values[i * size_of::<V>()..].as_ptr().cast::<V>()) })
            })
            .max()
    }
    let v4 = highest::<nat_common::Port4Key, nat_common::Port4Target>(&maps.join(map::PORTS4), |t| t.slot);
    let v6 = highest::<nat_common::Port6Key, nat_common::Port6Target>(&maps.join(map::PORTS6), |t| t.slot);
    v4.max(v6)
}

/// Loads the object with its maps pinned under `pin_dir/maps` and every program
/// verified. Pinned maps that do not fit this object are replaced first (`pins`); the
/// flows they held come back in the `CarryOver`, with a line per change. When pins are to
/// be replaced, the programs are verified first on maps of their own (a staging
/// directory, removed after): a program this kernel refuses, or a start killed while
/// verifying, then leaves the running datapath and its pins as they were.
///
/// With every pinned map kept and the programs a natd with this same object pinned
/// (`adopt`), those programs are taken instead of verifying the object's again.
pub fn load(pin_dir: &Path, sizes: TableSizes) -> Result<Loaded, DataplaneError> {
    let maps = pin_dir.join("maps");
    pins::check_layout(&maps)?;
    check_fit(&maps, sizes)?;
    // The memlock rlimit may not be raisable here; kernels >= 5.11 charge BPF memory to
    // the cgroup instead, so a failure is not fatal.
    let _ = nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_MEMLOCK,
        nix::sys::resource::RLIM_INFINITY,
        nix::sys::resource::RLIM_INFINITY,
    );
    let expected = expected_shapes(sizes)?;
    let all_kept = pins::assess(&maps, &expected).iter().all(|(_, fate)| *fate == pins::Fate::Keep);
    if !all_kept {
        let staging = pin_dir.join("staging");
        let _ = cleanup_maps_dir(&staging);
        let verified = load_verified(&staging, sizes);
        let leftovers = cleanup_maps_dir(&staging);
        verified.map_err(|e| {
            DataplaneError::Ebpf(format!("{e}. Nothing was changed: the running datapath and its pins are as they were"))
        })?;
        if !leftovers.is_empty() {
            tracing::warn!(?leftovers, "staging maps not removed");
        }
    }
    let (carry, report) = pins::prepare(&maps, &expected);
    let adopted = if all_kept { adopt::pinned(pin_dir) } else { None };
    let mut ebpf = open_object(&maps, sizes)?;
    let adopted = match adopted {
        Some(programs) => {
            tracing::info!("programs of this object pinned by the last start adopted without verifying again");
            programs
        }
        None => {
            verify_all(&mut ebpf)?;
            // Only a faster next start depends on these pins.
            if let Err(e) = adopt::pin_all(&mut ebpf, pin_dir) {
                tracing::warn!("programs not pinned for the next start (it verifies them again): {e}");
            }
            HashMap::new()
        }
    };
    pins::record_layout(&mut ebpf)?;
    Ok(Loaded {
        ebpf,
        adopted,
        carry,
        report,
    })
}

/// What `load` made: the object (its programs loaded unless adopted), the programs adopted
/// from pins by name, the flows of replaced maps and a line per change.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub adopted: HashMap<String, Program>,
    pub carry: pins::CarryOver,
    pub report: Vec<String>,
}

/// The object with its maps pinned under `maps` (reused where they are) and every program
/// loaded, so verified.
fn load_verified(maps: &Path, sizes: TableSizes) -> Result<Ebpf, DataplaneError> {
    let mut ebpf = open_object(maps, sizes)?;
    verify_all(&mut ebpf)?;
    Ok(ebpf)
}

/// The object with its maps pinned under `maps` (reused where they are), no program loaded.
fn open_object(maps: &Path, sizes: TableSizes) -> Result<Ebpf, DataplaneError> {
    std::fs::create_dir_all(maps).map_err(|e| err(&format!("create {}", maps.display()), e))?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(maps);
    for (name, entries) in sizes.overrides() {
        loader.map_max_entries(name, entries);
    }
    loader
        .load(&crate::ebpf_object())
        .map_err(|e| {
            err(
                &format!(
                    "load object (if maps pinned under {} were made with other sizes or by another version, \
                     run `natd --cleanup` first)",
                    maps.display()
                ),
                e,
            )
        })
}

/// Loads (so verifies) every program of the object.
fn verify_all(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    // Test builds: a verifier refusal on demand (fail point `verify-programs`).
    fail::fail_point!("verify-programs", |_| Err(DataplaneError::Ebpf(
        "verifier rejected natd_edge_in (injected by fail point verify-programs)".into()
    )));
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
    load_all!(SchedClassifier, program::TC.iter().copied());
    load_all!(CgroupSockAddr, program::SOCKET.iter().copied());
    Ok(())
}

/// Removes what is pinned under `dir` (maps, or links already unpinned) and the directory.
fn cleanup_maps_dir(dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Err(e) = std::fs::remove_file(entry.path()) {
            errors.push(format!("remove {}: {e}", entry.path().display()));
        }
    }
    if let Err(e) = std::fs::remove_dir(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        errors.push(format!("remove {}: {e}", dir.display()));
    }
    errors
}

/// The pinned program links of one natd and the object whose programs they run.
pub struct Links<'a> {
    pub ebpf: &'a mut Ebpf,
    /// Programs adopted from pins (`adopt`), used instead of the object's.
    pub adopted: &'a mut HashMap<String, Program>,
    pub dir: PathBuf,
    pub cgroup_root: Option<&'a Path>,
    /// What running programs are, by id (filled when an id is first seen on a link).
    pub programs: &'a mut ProgramCache,
    /// Interfaces whose pinned links a sync checked since the last full check: a link of
    /// one of them that is still pinned is not checked again (a request adds or removes
    /// a sandbox, not every link of the host).
    pub checked: &'a BTreeSet<(u32, String, IfaceRole)>,
    /// The links pinned as the last complete sync left them, when `checked` is in use:
    /// taken for the directory's listing, which grows with the sandboxes (two pins each;
    /// `getdents64` on every request, 2 ms at 600 sandboxes). What changed behind natd's
    /// back there is the drift check's to find (it lists the directory every tick); a sync
    /// that fails on it is done again with the listing.
    pub known: Option<&'a BTreeSet<String>>,
}

/// What makes a program the one natd wants on a link: its instructions (the kernel's tag)
/// and the pinned maps it uses (their ids, sorted). The tag alone ignores the maps: after a
/// map is replaced (a new `--conntrack-max`, a new layout) a program with the same tag may
/// still use the old map, which nobody collects or lists any more. Maps never pinned (the
/// programs' per-CPU working memory) are new with every load and do not count.
pub type Identity = (u64, Vec<u32>);

/// Identities of programs seen on natd's links, by id (a link keeps its program alive, so
/// an id stays bound to its identity while it is seen there), and of natd's own.
#[derive(Default)]
pub struct ProgramCache {
    running: std::collections::HashMap<u32, Identity>,
    ours: std::collections::HashMap<String, Identity>,
    /// Ids of the maps pinned under natd's `maps` directory (the loaded object's).
    pinned: Option<std::collections::HashSet<u32>>,
}

/// The ids of the maps pinned under `maps_dir`.
pub fn pinned_map_ids(maps_dir: &Path) -> std::collections::HashSet<u32> {
    Links::pinned(maps_dir)
        .iter()
        .filter_map(|name| aya::maps::MapInfo::from_pin(maps_dir.join(name)).ok())
        .map(|m| m.id())
        .collect()
}

impl ProgramCache {
    fn identity(&mut self, maps_dir: &Path, info: &aya::programs::ProgramInfo) -> Result<Identity, DataplaneError> {
        let pinned = self.pinned.get_or_insert_with(|| pinned_map_ids(maps_dir));
        let mut maps: Vec<u32> = info
            .map_ids()
            .map_err(|e| err("program map ids", e))?
            .unwrap_or_default()
            .into_iter()
            .filter(|id| pinned.contains(id))
            .collect();
        maps.sort_unstable();
        Ok((info.tag(), maps))
    }

    fn running(&mut self, maps_dir: &Path, id: u32) -> Result<Option<Identity>, DataplaneError> {
        if !self.running.contains_key(&id) {
            // One walk of the kernel's program list (a few syscalls per program loaded on
            // the machine); aya opens programs by id only while walking.
            if let Some(info) = aya::programs::loaded_programs().filter_map(Result::ok).find(|p| p.id() == id) {
                let known = self.identity(maps_dir, &info)?;
                self.running.insert(id, known);
            }
        }
        Ok(self.running.get(&id).cloned())
    }

    fn ours(&mut self, maps_dir: &Path, program: &Program, name: &str) -> Result<Identity, DataplaneError> {
        if let Some(known) = self.ours.get(name) {
            return Ok(known.clone());
        }
        let wanted = self.identity(maps_dir, &program.info().map_err(|e| err("program info", e))?)?;
        self.ours.insert(name.to_string(), wanted.clone());
        Ok(wanted)
    }
}

impl Links<'_> {
    pub fn pinned(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// natd's program `name`: adopted, or the object's.
    fn program(&self, name: &str) -> Result<&Program, DataplaneError> {
        self.adopted
            .get(name)
            .or_else(|| self.ebpf.program(name))
            .ok_or_else(|| err("program missing", name))
    }

    fn program_mut(&mut self, name: &str) -> Result<&mut Program, DataplaneError> {
        match self.adopted.get_mut(name) {
            Some(program) => Ok(program),
            None => self.ebpf.program_mut(name).ok_or_else(|| err("program missing", name)),
        }
    }

    fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier, DataplaneError> {
        self.program_mut(name)?.try_into().map_err(|e| err("program type", e))
    }

    fn attach_tc(
        &mut self,
        program: &str,
        ifname: &str,
        direction: TcAttachType,
        pin: &Path,
    ) -> Result<(), DataplaneError> {
        let prog = self.classifier(program)?;
        let id = prog
            .attach_with_options(ifname, direction, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(|e| err(&format!("attach to {ifname} (TCX, Linux >= 6.6 needed)"), e))?;
        pin_link(prog.take_link(id).map_err(|e| err("take link", e))?, pin)
    }

    /// A pinned link from an earlier natd keeps its program; when this natd carries a
    /// different program (an upgrade) or the same one on other maps (a map replaced), the
    /// link is updated in place (BPF_LINK_UPDATE), TC and cgroup links alike, so there is
    /// no moment without a program on the hook.
    fn replace_if_outdated(&mut self, program: &str, pin: &Path) -> Result<bool, DataplaneError> {
        let link = bpf_link::open(pin).map_err(|e| err(&format!("open pinned link {}", pin.display()), e))?;
        let current = bpf_link::program_id(link.as_fd()).map_err(|e| err("link info", e))?;
        let maps_dir = self.dir.with_file_name("maps");
        let ours = self.adopted.get(program).or_else(|| self.ebpf.program(program));
        let ours = ours.ok_or_else(|| err("program missing", program))?;
        let wanted = self.programs.ours(&maps_dir, ours, program)?;
        if self.programs.running(&maps_dir, current)? == Some(wanted) {
            return Ok(false);
        }
        let prog = self.program(program)?;
        let fd = prog.fd().map_err(|e| err("program fd", e))?;
        bpf_link::update(link.as_fd(), fd.as_fd()).map_err(|e| err(&format!("update link {}", pin.display()), e))?;
        Ok(true)
    }

    fn attach_cgroup(&mut self, program: &str, root: &Path, pin: &Path) -> Result<(), DataplaneError> {
        let cgroup = std::fs::File::open(root).map_err(|e| err(&format!("open {}", root.display()), e))?;
        let prog: &mut CgroupSockAddr = self
            .program_mut(program)?
            .try_into()
            .map_err(|e| err("program type", e))?;
        let id = prog
            // With BPF links (Linux >= 5.7, which aya uses) cgroup attachments always
            // coexist with other programs; the kernel rejects any attach flag there.
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|e| err(&format!("attach {program} to {}", root.display()), e))?;
        pin_link(prog.take_link(id).map_err(|e| err("take link", e))?, pin)
    }

    /// Attaches what `desired` needs and is not attached, adopts (or upgrades) what is,
    /// and detaches pinned links nothing needs any more. False: an edge could not be
    /// attached now (to be tried again); with the names of the links wanted pinned.
    pub fn sync(&mut self, desired: &Desired, report: &mut SyncReport) -> Result<(bool, BTreeSet<String>), DataplaneError> {
        let mut complete = true;
        let mut wanted = BTreeSet::new();
        let mut plan = Vec::new();
        for iface in &desired.ifaces {
            // Each IPv4 program hands IPv6 on to the IPv6 one attached after it.
            let attachments: &[(TcAttachType, &str)] = match iface.role {
                IfaceRole::Edge { link_layer: true, .. } => &[
                    (TcAttachType::Ingress, program::EDGE_INGRESS),
                    (TcAttachType::Ingress, program::EDGE_INGRESS6),
                    (TcAttachType::Egress, program::EDGE_EGRESS),
                    (TcAttachType::Egress, program::EDGE_EGRESS6),
                ],
                IfaceRole::Edge {
                    link_layer: false, ..
                } => &[
                    (TcAttachType::Ingress, program::EDGE3_INGRESS),
                    (TcAttachType::Ingress, program::EDGE3_INGRESS6),
                    (TcAttachType::Egress, program::EDGE3_EGRESS),
                    (TcAttachType::Egress, program::EDGE3_EGRESS6),
                ],
                IfaceRole::SandboxVeth { .. } => &[
                    (TcAttachType::Ingress, program::SANDBOX_INGRESS),
                    (TcAttachType::Ingress, program::SANDBOX_INGRESS6),
                ],
            };
            for &(direction, program) in attachments {
                let dir = if direction == TcAttachType::Ingress {
                    "ingress"
                } else {
                    "egress"
                };
                let name = format!("{}-{}-{dir}-{program}", iface.index, iface.name);
                wanted.insert(name.clone());
                let edge = matches!(iface.role, IfaceRole::Edge { .. });
                let known = self.checked.contains(&(iface.index, iface.name.clone(), iface.role));
                plan.push((name, iface.name.clone(), direction, program, edge, known));
            }
        }
        let cgroup_plan: Vec<(String, &str)> = match self.cgroup_root {
            Some(_) => program::SOCKET
                .iter()
                .map(|p| (format!("cgroup-{p}"), *p))
                .collect(),
            None => Vec::new(),
        };
        wanted.extend(cgroup_plan.iter().map(|(name, _)| name.clone()));
        // A pin to drop and one to make at once may be one renamed (an interface renamed):
        // the directory is read and renames found, so the link moves without a gap.
        let known = self
            .known
            .filter(|known| known.difference(&wanted).next().is_none() || wanted.difference(known).next().is_none());
        let listed;
        let existing = match known {
            Some(known) => known,
            None => {
                // Renamed pins (an earlier natd's program names, a renamed interface) are
                // a start's or a full check's to find.
                rename_legacy_pins(&self.dir, &wanted, report);
                listed = Self::pinned(&self.dir);
                &listed
            }
        };
        for (name, program) in cgroup_plan {
            if existing.contains(&name) {
                if self.replace_if_outdated(program, &self.dir.join(&name))? {
                    report.attached.push(format!("{name} (program replaced atomically)"));
                } else {
                    report.adopted.push(name);
                }
                continue;
            }
            let root = self
                .cgroup_root
                .expect("planned only with a cgroup root")
                .to_owned();
            self.attach_cgroup(program, &root, &self.dir.join(&name))?;
            report.attached.push(name);
        }
        for stale in existing.difference(&wanted) {
            unpin(&self.dir.join(stale)).map_err(|e| err("detach", e))?;
            report.detached.push(stale.clone());
        }
        for (name, ifname, direction, program, edge, known) in plan {
            let pin = self.dir.join(&name);
            if known && existing.contains(&name) {
                continue;
            }
            if !existing.contains(&name) {
                match self.attach_tc(program, &ifname, direction, &pin) {
                    Ok(()) => report.attached.push(name),
                    // Other software's interfaces come and go (a veth a runtime is about to
                    // put into its bridge, a device deleted since the dump): one that cannot
                    // be attached now is reported and tried again at the next sync, and
                    // never keeps natd from serving the others. natd's own must attach.
                    Err(e) if edge => {
                        tracing::warn!(iface = %ifname, error = %e, "cannot attach to an edge now");
                        report.detached.push(format!("{name} (not attached: {e})"));
                        complete = false;
                    }
                    Err(e) => return Err(e),
                }
            } else if self.replace_if_outdated(program, &pin)? {
                report
                    .attached
                    .push(format!("{name} (program replaced atomically)"));
            } else {
                report.adopted.push(name);
            }
        }
        Ok((complete, wanted))
    }
}

/// A pinned link whose name is not wanted but names the same attachment as a wanted one
/// is renamed to it, so the link stays attached (an interface is never without its
/// program, and never runs two copies of it): one pinned under a program name an earlier
/// natd used (`program::RENAMED`, then upgraded in place like any other), or one of an
/// interface that was renamed (same ifindex, direction and program).
fn rename_legacy_pins(dir: &Path, wanted: &BTreeSet<String>, report: &mut SyncReport) {
    // `<ifindex>-<ifname>-<direction>-<program>`; interface names have no '-' of their
    // own only by convention, so the ifname is what lies between the first dash and the
    // direction.
    let parts = |pin: &str| -> Option<(String, String)> {
        let (index, rest) = pin.split_once('-')?;
        let at = rest.rfind("-ingress-").or_else(|| rest.rfind("-egress-"))?;
        Some((index.to_string(), rest[at..].to_string()))
    };
    for pinned in Links::pinned(dir) {
        if wanted.contains(&pinned) {
            continue;
        }
        let mut renamed = None;
        for (old, new) in program::RENAMED {
            if let Some(stem) = pinned.strip_suffix(old) {
                renamed = Some(format!("{stem}{new}"));
            }
        }
        let candidate = renamed.unwrap_or_else(|| pinned.clone());
        let target = if wanted.contains(&candidate) {
            Some(candidate)
        } else {
            parts(&candidate).and_then(|(index, tail)| {
                wanted
                    .iter()
                    .find(|w| w.starts_with(&format!("{index}-")) && w.ends_with(&tail) && !dir.join(w).exists())
                    .cloned()
            })
        };
        if let Some(target) = target
            && std::fs::rename(dir.join(&pinned), dir.join(&target)).is_ok()
        {
            report.adopted.push(format!("{target} (was {pinned})"));
        }
    }
}

/// Pins a link so the attachment outlives natd (and is found again at its next start).
fn pin_link(
    link: impl TryInto<FdLink, Error = impl std::fmt::Display + std::fmt::Debug>,
    pin: &Path,
) -> Result<(), DataplaneError> {
    let fd_link: FdLink = link.try_into().map_err(|e| err("link is not an fd link", e))?;
    fd_link
        .pin(pin)
        .map_err(|e| err(&format!("pin link {}", pin.display()), e))?;
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
        // Gone already (removed behind natd's back): nothing to detach.
        Err(_) if !path.exists() => Ok(()),
        Err(_) => std::fs::remove_file(path).map_err(|e| format!("remove {}: {e}", path.display())),
    }
}

/// Detaches every pinned link and removes every pinned map under `pin_dir`, then the
/// directory itself. Works without loading the object, so `natd --cleanup` always can.
pub fn cleanup_pin_dir(pin_dir: &Path) -> Vec<String> {
    let links = pin_dir.join("links");
    let mut errors: Vec<String> = std::fs::read_dir(&links)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| unpin(&entry.path()).err())
        .collect();
    errors.extend(cleanup_maps_dir(&links));
    errors.extend(cleanup_maps_dir(&pin_dir.join("maps")));
    errors.extend(cleanup_maps_dir(&pin_dir.join("staging")));
    errors.extend(adopt::remove_all(pin_dir));
    if let Err(e) = std::fs::remove_dir(pin_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        errors.push(format!("remove {}: {e}", pin_dir.display()));
    }
    errors
}
