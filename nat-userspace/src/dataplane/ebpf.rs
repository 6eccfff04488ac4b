//! The eBPF dataplane: one object loaded per natd start, maps pinned by name under
//! `--bpffs`/maps (reused, not recreated, on restart), TCX links pinned under
//! `--bpffs`/links so attachments outlive natd and are adopted when it comes back.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
    },
};
use nat_common::{IfaceConfig, IfaceStats, counter, role};

use super::{Dataplane, DataplaneError, Desired, IfaceRole, SyncReport};
use crate::config::DaemonConfig;

const PROGRAM: &str = "natd_observe";
const COUNTERS: &str = "NATD_COUNTERS";
const IFACE_STATS: &str = "NATD_IFACE_STATS";
const IFACE_CONFIG: &str = "NATD_IFACE_CONFIG";

fn err(context: &str, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Ebpf(format!("{context}: {e}"))
}

pub struct EbpfDataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
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
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir.join("maps"))
            .load(crate::EBPF_OBJECT)
            .map_err(|e| err("load object", e))?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| err("program missing", PROGRAM))?
            .try_into()
            .map_err(|e| err("program type", e))?;
        program.load().map_err(|e| err("verifier rejected natd_observe", e))?;
        Ok(Self { ebpf, pin_dir })
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

    fn attach(&mut self, ifname: &str, direction: TcAttachType, pin: &Path) -> Result<(), DataplaneError> {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| err("program missing", PROGRAM))?
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

    fn iface_config(&mut self) -> Result<HashMap<&mut MapData, u32, IfaceConfig>, DataplaneError> {
        HashMap::try_from(
            self.ebpf
                .map_mut(IFACE_CONFIG)
                .ok_or_else(|| err("map missing", IFACE_CONFIG))?,
        )
        .map_err(|e| err(IFACE_CONFIG, e))
    }
}

fn link_name(index: u32, ifname: &str, direction: TcAttachType) -> String {
    let dir = match direction {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    };
    format!("{index}-{ifname}-{dir}")
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

impl Dataplane for EbpfDataplane {
    fn kind(&self) -> &'static str {
        "ebpf"
    }

    fn sync(&mut self, desired: &Desired) -> Result<SyncReport, DataplaneError> {
        let mut report = SyncReport::default();
        let mut wanted = BTreeSet::new();
        let mut plan = Vec::new();
        for iface in &desired.ifaces {
            let directions: &[TcAttachType] = match iface.role {
                IfaceRole::Uplink => &[TcAttachType::Ingress, TcAttachType::Egress],
                IfaceRole::SandboxVeth { .. } => &[TcAttachType::Ingress],
            };
            for &direction in directions {
                let name = link_name(iface.index, &iface.name, direction);
                wanted.insert(name.clone());
                plan.push((name, iface.name.clone(), direction));
            }
        }
        let existing = self.pinned_links();
        for stale in existing.difference(&wanted) {
            unpin(&self.links_dir().join(stale)).map_err(|e| err("detach", e))?;
            report.detached.push(stale.clone());
        }
        for (name, ifname, direction) in plan {
            let pin = self.links_dir().join(&name);
            if existing.contains(&name) {
                report.adopted.push(name);
                continue;
            }
            self.attach(&ifname, direction, &pin)?;
            report.attached.push(name);
        }
        // Roles per ifindex: rewrite the whole set so stale entries go.
        let mut config = self.iface_config()?;
        let keep: BTreeSet<u32> = desired.ifaces.iter().map(|i| i.index).collect();
        let stale: Vec<u32> = config.keys().filter_map(Result::ok).filter(|k| !keep.contains(k)).collect();
        for key in stale {
            let _ = config.remove(&key);
        }
        for iface in &desired.ifaces {
            let value = match iface.role {
                IfaceRole::Uplink => IfaceConfig { role: role::UPLINK, network_id: 0 },
                IfaceRole::SandboxVeth { network_id } => IfaceConfig {
                    role: role::SANDBOX_VETH,
                    network_id,
                },
            };
            config.insert(iface.index, value, 0).map_err(|e| err(IFACE_CONFIG, e))?;
        }
        Ok(report)
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
        serde_json::json!({
            "attach": "tcx",
            "pin_dir": self.pin_dir.display().to_string(),
            "links": self.pinned_links(),
            "counters": counters,
            "interfaces": ifaces,
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
