//! natd's own heap and glibc's allocator. Each housekeeping tick reads whole tables in
//! batches (megabytes at a host's scale) and frees them again.

/// glibc's malloc raises its mmap threshold each time a large block is freed, so the
/// buffers of whole-table reads (tens of MiB every tick) end up in the heap and stay
/// resident; and it gives each thread that allocates an arena of its own. A fixed
/// threshold returns large buffers to the system when freed; two arenas serve natd's
/// few busy threads. Before any other thread starts.
pub fn limit_malloc_retention() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns the heap's free pages to the kernel: what the smaller blocks of a tick's work
/// leave free in the heap otherwise stays resident. Called after every tick; the scale
/// benchmark's natd at 100,000 mappings had a median RSS of 67.6-94.8 MiB in four runs
/// without it, 68.7-80.9 MiB in five with it: not reliably less, not the 64 MiB asked.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}
