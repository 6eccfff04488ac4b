//! Builds the eBPF object with aya-build so that a plain `cargo build` produces a natd
//! that carries its kernel programs (`include_bytes_aligned!` in `dataplane::ebpf`).
use std::path::PathBuf;

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .context("nat-userspace has no parent directory")?
        .join("nat-ebpf");
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path to nat-ebpf")?;
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.parent().unwrap().join("nat-common").display()
    );
    aya_build::build_ebpf(
        [Package {
            name: "nat-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
    .context("building the eBPF programs failed: run `cargo xtask setup` (nightly rust-src and bpf-linker are needed)")
}
