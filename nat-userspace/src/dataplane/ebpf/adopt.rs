//! Programs adopted across a restart: verifying natd's programs takes seconds (4 s at
//! 1,000 sandboxes on the benchmark's machine, most of a restart), and a restart of the
//! same natd on the same maps would verify the same instructions again. So every program
//! is pinned once loaded, under `<bpffs>/programs/<SHA-256 of the object>` (bpffs holds no
//! regular files: the directory's name records the object). A start with the same object
//! whose pinned maps were all kept takes the pinned programs instead of loading its own if
//! all are there (a start killed while pinning leaves some out) and every map they use is
//! pinned now or known as their working memory (a map replaced since, by a size change or
//! a layout conversion, means the programs must be loaded for the new one). Anything else
//! loads and verifies as before, pins the new programs and removes the other objects'.
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{CgroupSockAddr, Program, SchedClassifier, cgroup_sock_addr::CgroupSockAddrAttachType},
};
use nat_common::names::{map, program};
use sha2::{Digest as _, Sha256};

use super::{
    err,
    loader::{self, Links},
};
use crate::dataplane::DataplaneError;

/// Where every object's programs are pinned, each object in a directory of its own.
pub fn dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("programs")
}

/// Where this object's programs are pinned.
fn object_dir(pin_dir: &Path) -> PathBuf {
    dir(pin_dir).join(digest())
}

/// The object this natd carries, as recorded beside its pinned programs.
fn digest() -> String {
    Sha256::digest(crate::ebpf_object().as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a socket program hooks, by name (aya needs it to attach a program from a pin).
fn sock_attach_type(name: &str) -> Option<CgroupSockAddrAttachType> {
    Some(match name {
        program::CONNECT4 => CgroupSockAddrAttachType::Connect4,
        program::SENDMSG4 => CgroupSockAddrAttachType::UDPSendMsg4,
        program::RECVMSG4 => CgroupSockAddrAttachType::UDPRecvMsg4,
        program::GETPEERNAME4 => CgroupSockAddrAttachType::GetPeerName4,
        program::CONNECT6 => CgroupSockAddrAttachType::Connect6,
        program::SENDMSG6 => CgroupSockAddrAttachType::UDPSendMsg6,
        program::RECVMSG6 => CgroupSockAddrAttachType::UDPRecvMsg6,
        program::GETPEERNAME6 => CgroupSockAddrAttachType::GetPeerName6,
        _ => return None,
    })
}

/// The programs pinned by a natd with this object, on maps all pinned under `maps_dir`
/// now; None when any is missing, from another object or on a map no longer pinned.
pub fn pinned(pin_dir: &Path) -> Option<HashMap<String, Program>> {
    let dir = object_dir(pin_dir);
    let pinned_maps = loader::pinned_map_ids(&pin_dir.join("maps"));
    let mut programs = HashMap::new();
    let mut unpinned = HashSet::new();
    for &name in program::TC.iter().chain(program::SOCKET) {
        let path = dir.join(name);
        let adopted = match sock_attach_type(name) {
            Some(attach) => Program::CgroupSockAddr(CgroupSockAddr::from_pin(&path, attach).ok()?),
            None => Program::SchedClassifier(SchedClassifier::from_pin(&path).ok()?),
        };
        let ids = adopted.info().ok()?.map_ids().ok()??;
        unpinned.extend(ids.into_iter().filter(|id| !pinned_maps.contains(id)));
        programs.insert(name.to_string(), adopted);
    }
    (!uses_replaced_map(&unpinned)).then_some(programs)
}

/// Whether any of these maps the programs use, none of them pinned now, may be one of
/// natd's pinned maps replaced since (a size change, a layout conversion) rather than the
/// programs' working memory, which is never pinned: told by the kernel's name of each map
/// (cut to 15 characters). A map that cannot be found or named counts as replaced.
fn uses_replaced_map(unpinned: &HashSet<u32>) -> bool {
    if unpinned.is_empty() {
        return false;
    }
    let Ok(named) = aya::maps::loaded_maps()
        .filter_map(|m| match m {
            Ok(m) if unpinned.contains(&m.id()) => Some(Ok((m.id(), m.name_as_str().unwrap_or_default().to_string()))),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<HashMap<u32, String>, _>>()
    else {
        return true;
    };
    unpinned.iter().any(|id| {
        named.get(id).is_none_or(|name| {
            name.is_empty() || !map::UNPINNED.iter().any(|working| working.starts_with(name.as_str()))
        })
    })
}

/// Pins every program of `ebpf` (loaded) for the next start, and removes what other
/// objects pinned.
pub fn pin_all(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<(), DataplaneError> {
    let ours = object_dir(pin_dir);
    for other in Links::pinned(&dir(pin_dir)) {
        let other = dir(pin_dir).join(other);
        if other != ours {
            remove(&other);
        }
    }
    std::fs::create_dir_all(&ours).map_err(|e| err(&format!("create {}", ours.display()), e))?;
    for &name in program::TC.iter().chain(program::SOCKET) {
        let path = ours.join(name);
        let _ = std::fs::remove_file(&path);
        let program = ebpf.program_mut(name).ok_or_else(|| err("program missing", name))?;
        let pinned = match program {
            Program::SchedClassifier(p) => p.pin(&path),
            Program::CgroupSockAddr(p) => p.pin(&path),
            _ => return Err(err("program type", name)),
        };
        pinned.map_err(|e| err(&format!("pin program {}", path.display()), e))?;
    }
    Ok(())
}

/// Removes an object's pinned programs (a program goes with its last reference).
fn remove(object: &Path) {
    for name in Links::pinned(object) {
        let _ = std::fs::remove_file(object.join(name));
    }
    let _ = std::fs::remove_dir(object);
}

/// Removes every object's pinned programs and the directory (`natd --cleanup`).
pub fn remove_all(pin_dir: &Path) -> Vec<String> {
    let dir = dir(pin_dir);
    for object in Links::pinned(&dir) {
        let path = dir.join(object);
        if path.is_dir() {
            remove(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    match std::fs::remove_dir(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => vec![format!("remove {}: {e}", dir.display())],
        _ => Vec::new(),
    }
}
