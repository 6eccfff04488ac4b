//! Pinned BPF links by path, for what aya does not offer: the program a pinned link runs
//! (any link type) and swapping it in place (BPF_LINK_UPDATE) for link types aya cannot
//! update (cgroup links). The swap is atomic: the hook never runs without a program.
use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

/// `enum bpf_cmd` (linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 8]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded union bpf_attr prefix of the size given; the kernel
    // reads (and for info, writes through the pointer it holds) no more than that.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// Opens the link pinned at `pin`.
pub fn open(pin: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let mut attr = [0u64; 8];
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    attr[0] = path.as_ptr() as u64;
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: a new file descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The id of the program the link runs.
pub fn program_id(link: BorrowedFd<'_>) -> io::Result<u32> {
    // struct bpf_link_info starts { __u32 type; __u32 id; __u32 prog_id; }: the kernel
    // fills as much as the buffer holds.
    let mut info = [0u32; 4];
    let mut attr = [0u64; 8];
    // struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }
    attr[0] = u64::from(link.as_raw_fd() as u32) | (u64::from(std::mem::size_of_val(&info) as u32) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info[2])
}

/// Makes the link run `program` instead of what it runs (BPF_LINK_UPDATE).
pub fn update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = [0u64; 8];
    // struct { __u32 link_fd; __u32 new_prog_fd; __u32 flags; __u32 old_prog_fd; }
    attr[0] = u64::from(link.as_raw_fd() as u32) | (u64::from(program.as_raw_fd() as u32) << 32);
    sys_bpf(BPF_LINK_UPDATE, &mut attr)?;
    Ok(())
}

/// `update` for the link pinned at `pin`.
pub fn update_pinned(pin: &Path, program: impl AsFd) -> io::Result<()> {
    let link = open(pin)?;
    update(link.as_fd(), program.as_fd())
}
