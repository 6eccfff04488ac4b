//! Whole-map reads in batches (BPF_MAP_LOOKUP_BATCH, Linux 5.6), which aya does not
//! offer: a walk with aya's iterator costs two syscalls per entry (next key, lookup), a
//! batch one per `CHUNK` entries. natd's housekeeping reads tables of hundreds of
//! thousands of entries every few seconds. Every kernel natd runs on has them: its programs
//! attach with tcx (Linux 6.6); batches came with 5.6 for the hash, LRU and array maps.
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// `enum bpf_cmd` (linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call. A hash map's batch ends on a bucket boundary and fails
/// with ENOSPC if one bucket holds more than this: far above any real bucket.
const CHUNK: usize = 4096;

/// Every entry of a hash, LRU hash or array map, as raw keys and values (`value_size`
/// as the kernel copies it: for per-CPU maps, the per-CPU values one after the other, each
/// rounded up to 8 bytes). Entries changed during the read may be seen or not, as with
/// any walk; none is seen twice.
pub fn dump(map: BorrowedFd<'_>, key_size: usize, value_size: usize) -> io::Result<(Vec<u8>, Vec<u8>, usize)> {
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let mut total = 0;
    // The position tokens: a bucket index for hash maps, a key for arrays.
    let token = key_size.max(8);
    let (mut position, mut next) = (vec![0u8; token], vec![0u8; token]);
    let mut first = true;
    loop {
        keys.resize((total + CHUNK) * key_size, 0);
        values.resize((total + CHUNK) * value_size, 0);
        // struct { __aligned_u64 in_batch, out_batch, keys, values; __u32 count, map_fd;
        //          __u64 elem_flags, flags; } batch;
        let mut attr = [0u64; 8];
        attr[0] = if first { 0 } else { position.as_ptr() as u64 };
        attr[1] = next.as_mut_ptr() as u64;
        attr[2] = keys[total * key_size..].as_mut_ptr() as u64;
        attr[3] = values[total * value_size..].as_mut_ptr() as u64;
        attr[4] = CHUNK as u64 | (u64::from(map.as_raw_fd() as u32) << 32);
        // SAFETY: `attr` is the batch member of union bpf_attr, zero-padded; the buffers it
        // points to hold `CHUNK` keys and values and a token of at least the key's size.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
        let error = (rc < 0).then(io::Error::last_os_error);
        // The kernel writes back how many entries it filled, also with the final ENOENT.
        let filled = (attr[4] & 0xffff_ffff) as usize;
        total += filled.min(CHUNK);
        match error {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Some(e) => return Err(e),
        }
        std::mem::swap(&mut position, &mut next);
        first = false;
    }
    keys.truncate(total * key_size);
    values.truncate(total * value_size);
    Ok((keys, values, total))
}

/// `enum bpf_cmd` (linux/bpf.h).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Writes `count` entries (raw keys and values, one after the other) in one syscall
/// (BPF_MAP_UPDATE_BATCH): what one element update per entry costs `count` syscalls for.
/// On failure some entries may be written: the error says how many were.
pub fn update(map: BorrowedFd<'_>, keys: &[u8], values: &[u8], count: usize) -> io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let mut attr = [0u64; 8];
    attr[2] = keys.as_ptr() as u64;
    attr[3] = values.as_ptr() as u64;
    attr[4] = count as u64 | (u64::from(map.as_raw_fd() as u32) << 32);
    // SAFETY: the batch member of union bpf_attr, zero-padded; `keys` and `values` hold
    // `count` entries of the map's key and value size (the kernel only reads them).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        let written = attr[4] & 0xffff_ffff;
        return Err(io::Error::new(e.kind(), format!("{e} ({written} of {count} entries written)")));
    }
    Ok(())
}

/// The kernel memory charged for a map (`memlock` in its fdinfo, Linux 6.4 and later
/// compute it from what the map holds: for a hash map allocated by use, its buckets and
/// the entries present; for a preallocated one, its whole capacity).
pub fn memlock(map: BorrowedFd<'_>) -> io::Result<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", map.as_raw_fd()))?;
    info.lines()
        .find_map(|line| line.strip_prefix("memlock:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no memlock in the map's fdinfo"))
}
