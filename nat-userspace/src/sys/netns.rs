//! Network namespaces: named ones under /run/netns (the iproute2 convention, so `ip netns`
//! sees them), entering one for a command, and finding the processes inside one.
use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

pub const NETNS_RUN_DIR: &str = "/run/netns";
pub const NETNS_ETC_DIR: &str = "/etc/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("network namespace {path} already exists")]
    Exists { path: PathBuf },
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> NetnsError + use<> {
    let path = path.to_owned();
    move |source| NetnsError::Io { path, op, source }
}

fn nix_err(path: &Path, op: &'static str) -> impl FnOnce(nix::Error) -> NetnsError + use<> {
    let path = path.to_owned();
    move |e| NetnsError::Io {
        path,
        op,
        source: io::Error::from(e),
    }
}

pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// /run/netns must be a shared mount point so that namespaces bound there are seen by
/// every mount namespace (iproute2 does the same on first use).
fn ensure_run_dir() -> Result<(), NetnsError> {
    let dir = Path::new(NETNS_RUN_DIR);
    std::fs::create_dir_all(dir).map_err(io_err(dir, "create directory"))?;
    let flags = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(None::<&str>, dir, None::<&str>, flags, None::<&str>).is_err() {
        mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(nix_err(dir, "bind-mount onto itself"))?;
        mount(None::<&str>, dir, None::<&str>, flags, None::<&str>).map_err(nix_err(dir, "make shared"))?;
    }
    Ok(())
}

/// Creates a new, empty network namespace pinned at /run/netns/NAME.
pub fn create_named(name: &str) -> Result<PathBuf, NetnsError> {
    ensure_run_dir()?;
    let path = named_path(name);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NetnsError::Exists { path });
        }
        Err(e) => return Err(io_err(&path, "create mount point")(e)),
    }
    let target = path.clone();
    // unshare() changes the calling thread only; a throwaway thread keeps natd's threads in
    // natd's namespace.
    let result = std::thread::spawn(move || -> Result<(), NetnsError> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(nix_err(&target, "unshare"))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(nix_err(&target, "bind-mount"))
    })
    .join()
    .unwrap_or_else(|_| {
        Err(NetnsError::Io {
            path: path.clone(),
            op: "create",
            source: io::Error::other("thread panicked"),
        })
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Removes a namespace pinned by `create_named`. Missing is fine: the goal is reached.
pub fn delete_named(path: &Path) -> Result<(), NetnsError> {
    if !path.exists() {
        return Ok(());
    }
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(nix_err(path, "unmount")(e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, "remove")(e)),
    }
}

/// True when `path` is a network namespace: an nsfs file (a /run/netns bind mount or
/// /proc/PID/ns/net) whose namespace type is CLONE_NEWNET.
pub fn is_netns(path: &Path) -> bool {
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    let Ok(file) = File::open(path) else {
        return false;
    };
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd's namespace type; on a
    // file that is not an nsfs inode it fails with ENOTTY.
    let kind = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), NS_GET_NSTYPE as _) };
    kind == libc::CLONE_NEWNET
}

pub fn open(path: &Path) -> Result<OwnedFd, NetnsError> {
    File::open(path).map(OwnedFd::from).map_err(io_err(path, "open"))
}

/// Runs `f` on a thread that has entered the namespace at `path`.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let fd = open(path)?;
    let path = path.to_owned();
    std::thread::spawn(move || -> Result<T, NetnsError> {
        setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(nix_err(&path, "setns"))?;
        Ok(f())
    })
    .join()
    .map_err(|_| NetnsError::Io {
        path: PathBuf::new(),
        op: "run",
        source: io::Error::other("thread panicked"),
    })?
}

/// Whether the namespace at `path` is the initial network namespace (the machine's own):
/// since Linux 6.18 its nsfs inode number is fixed (PROC_NET_INIT_INO), wherever natd
/// runs and whether or not /proc/1 may be read; before, it is the one of PID 1 (when
/// natd shares the machine's PID namespace, the usual case for a host agent).
pub fn is_initial(path: &Path) -> bool {
    const PROC_NET_INIT_INO: u64 = 0xEFFF_FFF9;
    let Some(id) = identity(path) else {
        return false;
    };
    let fixed = identity(Path::new("/proc/self/ns/net")).is_some_and(|(nsfs, _)| id == (nsfs, PROC_NET_INIT_INO));
    fixed || identity(Path::new("/proc/1/ns/net")) == Some(id)
}

/// The cookie of the namespace at `path` (see `current_cookie`); `None` if it cannot
/// be entered.
pub fn cookie_of(path: &Path) -> Option<u64> {
    run_in(path, current_cookie).ok()?.ok()
}

/// (device, inode) that identifies a namespace.
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Processes whose network namespace is the one at `path` (what `ip netns pids` lists).
pub fn pids_in(path: &Path) -> Vec<i32> {
    let Some(id) = identity(path) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| identity(Path::new(&format!("/proc/{pid}/ns/net"))) == Some(id))
        .collect()
}

/// What a child process does between fork and exec to live "inside" a sandbox, as
/// `ip netns exec` does: enter the network namespace, get a private mount namespace,
/// bind /etc/netns/NAME/* over /etc/*, and mount a sysfs that shows the sandbox's devices.
/// Everything is prepared before fork so the child only makes syscalls.
pub struct EnterPlan {
    netns: OwnedFd,
    etc_binds: Vec<(CString, CString)>,
}

impl EnterPlan {
    pub fn new(netns_path: &Path, etc_name: Option<&str>) -> Result<Self, NetnsError> {
        let netns = open(netns_path)?;
        let mut etc_binds = Vec::new();
        if let Some(name) = etc_name {
            let dir = Path::new(NETNS_ETC_DIR).join(name);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    let src = entry.path();
                    let dst = Path::new("/etc").join(entry.file_name());
                    if let (Ok(src), Ok(dst)) = (
                        CString::new(src.as_os_str().as_bytes()),
                        CString::new(dst.as_os_str().as_bytes()),
                    ) {
                        etc_binds.push((src, dst));
                    }
                }
            }
        }
        Ok(Self { netns, etc_binds })
    }

    /// To be called in the child after fork (e.g. from `CommandExt::pre_exec`).
    pub fn enter(&self) -> io::Result<()> {
        setns(self.netns.as_fd(), CloneFlags::CLONE_NEWNET)?;
        unshare(CloneFlags::CLONE_NEWNS)?;
        // Keep our binds from propagating back to the host's mount namespace.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )?;
        for (src, dst) in &self.etc_binds {
            // A missing /etc target (e.g. no /etc/hosts) is not fatal, as with ip netns exec.
            let _ = mount(
                Some(src.as_c_str()),
                dst.as_c_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            );
        }
        if umount2("/sys", MntFlags::MNT_DETACH).is_ok() {
            let _ = mount(
                Some("sysfs"),
                "/sys",
                Some("sysfs"),
                MsFlags::empty(),
                None::<&str>,
            );
        }
        Ok(())
    }
}

/// Writes /etc/netns/NAME/resolv.conf; with no servers the directory is removed so the
/// sandbox sees the host's resolv.conf.
pub fn write_resolv_conf(name: &str, servers: &[std::net::IpAddr]) -> io::Result<()> {
    let dir = Path::new(NETNS_ETC_DIR).join(name);
    if servers.is_empty() {
        return remove_etc(name);
    }
    std::fs::create_dir_all(&dir)?;
    let mut text = String::from("# written by natd\n");
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    let tmp = dir.join(".resolv.conf.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, dir.join("resolv.conf"))
}

pub fn remove_etc(name: &str) -> io::Result<()> {
    match std::fs::remove_dir_all(Path::new(NETNS_ETC_DIR).join(name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE, Linux 5.14).
pub fn current_cookie() -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // Unbound: a host whose whole ephemeral range is published (and so reserved) has no
    // port to bind to, and the cookie needs none.
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
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
