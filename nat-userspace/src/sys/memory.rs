//! natd's own heap and glibc's allocator. Each housekeeping tick reads whole tables in
//! batches (megabytes at a host's scale) and frees them again. (A `malloc_trim` after
//! each tick was tried: RSS medians 68.7-80.9 MiB in five scale runs with it, 67.6-94.8
//! in four without, no reliable gain, and it takes the arenas' locks while requests run.)

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
