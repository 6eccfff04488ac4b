//! natd's own heap against glibc's allocator. Each housekeeping tick reads whole tables in
//! batches (megabytes at a host's scale) and frees them again; what glibc keeps free in
//! its heap stays resident, so natd's RSS at 100,000 mappings differed by 20 MiB between
//! runs of the same benchmark. A tick ends by handing free heap pages back (scale
//! benchmark, one run each: median RSS 86.5 MiB before, 71.1 after). A fixed mmap
//! threshold and two arenas on top (tried) gave no less and slowed range publishes.

/// Returns free heap pages to the kernel.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}
