//! A minimal safe wrapper over libnftables, the upstream nftables library: it turns nft
//! commands into one atomic netlink batch in-process (no `nft` binary is run). natd needs
//! maps with concatenated keys and NAT from map lookups, which the nftnl crate cannot
//! express; libnftables speaks the same netlink to the kernel.
use std::{
    ffi::{CStr, CString, c_char, c_int, c_uint},
    ptr::NonNull,
};

#[repr(C)]
struct NftCtx {
    _private: [u8; 0],
}

#[link(name = "nftables")]
unsafe extern "C" {
    fn nft_ctx_new(flags: u32) -> *mut NftCtx;
    fn nft_ctx_free(ctx: *mut NftCtx);
    fn nft_ctx_buffer_output(ctx: *mut NftCtx) -> c_int;
    fn nft_ctx_get_output_buffer(ctx: *mut NftCtx) -> *const c_char;
    fn nft_ctx_buffer_error(ctx: *mut NftCtx) -> c_int;
    fn nft_ctx_get_error_buffer(ctx: *mut NftCtx) -> *const c_char;
    fn nft_ctx_output_set_flags(ctx: *mut NftCtx, flags: c_uint);
    fn nft_run_cmd_from_buffer(ctx: *mut NftCtx, buf: *const c_char) -> c_int;
}

const NFT_CTX_OUTPUT_JSON: c_uint = 1 << 4;

#[derive(Debug, thiserror::Error)]
#[error("nft: {0}")]
pub struct NftError(pub String);

/// One libnftables context (not thread-safe: natd keeps it behind its mutex). Netlink
/// sockets are opened in the calling thread's network namespace.
pub struct Nft {
    ctx: NonNull<NftCtx>,
}

// SAFETY: the context is only used through &mut self, never from two threads at once.
unsafe impl Send for Nft {}
// SAFETY: as above: every method that touches the context takes &mut self or &self behind
// natd's mutex.
unsafe impl Sync for Nft {}

impl Nft {
    pub fn new(json_output: bool) -> Result<Self, NftError> {
        // SAFETY: plain constructor; NULL means failure.
        let ctx = NonNull::new(unsafe { nft_ctx_new(0) })
            .ok_or_else(|| NftError("cannot create a libnftables context".into()))?;
        // SAFETY: ctx is valid until drop.
        unsafe {
            nft_ctx_buffer_output(ctx.as_ptr());
            nft_ctx_buffer_error(ctx.as_ptr());
            if json_output {
                nft_ctx_output_set_flags(ctx.as_ptr(), NFT_CTX_OUTPUT_JSON);
            }
        }
        Ok(Self { ctx })
    }

    /// Runs `commands` (nft syntax, several lines) as one transaction; returns the output.
    pub fn run(&mut self, commands: &str) -> Result<String, NftError> {
        let text = CString::new(commands).map_err(|e| NftError(e.to_string()))?;
        // SAFETY: valid context and NUL-terminated buffer; the output/error buffers are
        // owned by the context and copied before the next call.
        unsafe {
            let rc = nft_run_cmd_from_buffer(self.ctx.as_ptr(), text.as_ptr());
            let read = |p: *const c_char| {
                if p.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            };
            let output = read(nft_ctx_get_output_buffer(self.ctx.as_ptr()));
            let error = read(nft_ctx_get_error_buffer(self.ctx.as_ptr()));
            if rc != 0 {
                return Err(NftError(error.trim().to_string()));
            }
            Ok(output)
        }
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        // SAFETY: created by nft_ctx_new, freed once.
        unsafe { nft_ctx_free(self.ctx.as_ptr()) }
    }
}

/// nf_tables changes in the calling thread's namespace, as the kernel announces them
/// (the NFNLGRP_NFTABLES group: every table, chain, rule, set and element change, natd's
/// own included). What `nft monitor` listens to.
pub struct RulesetWatch {
    socket: netlink_sys::Socket,
}

impl RulesetWatch {
    const NFNLGRP_NFTABLES: u32 = 7;

    pub fn open() -> std::io::Result<Self> {
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
        socket.bind(&netlink_sys::SocketAddr::new(
            0,
            1 << (Self::NFNLGRP_NFTABLES - 1),
        ))?;
        socket.set_non_blocking(true)?;
        Ok(Self { socket })
    }

    /// Returns when the ruleset changed (true) or `timeout` passed (false); what was
    /// queued is read, so one burst of changes wakes the caller once.
    pub fn wait(&mut self, timeout: std::time::Duration) -> bool {
        use std::os::fd::AsRawFd as _;
        let mut poll = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as i32) };
        if ready <= 0 {
            return false;
        }
        let mut buf = vec![0u8; 65536];
        // An overrun (ENOBUFS) also means changes happened.
        while self.socket.recv(&mut &mut buf[..], 0).is_ok() {}
        true
    }
}
