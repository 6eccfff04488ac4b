//! Builds natd's kernel programs (the nat-ebpf crate) so that a plain `cargo build` yields a
//! natd that carries them (`natd::EBPF_OBJECT`).
//!
//! This does what aya-build does, differently in two ways that matter to whoever builds
//! natd: aya-build forwards every line of the nested cargo run as a `warning:` (a hundred
//! and more on each build), and builds inside OUT_DIR, so every new fingerprint of this
//! crate (debug and release, the tests' feature set) compiled the object again from
//! scratch. Here the nested build has one target directory shared by all of them, a build
//! that succeeds prints nothing, and one that fails shows its whole output.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    if let Err(message) = build() {
        eprintln!("{message}");
        std::process::exit(1);
    }
}

fn var(name: &str) -> Result<String, String> {
    env::var(name).map_err(|_| format!("{name} is not set"))
}

fn build() -> Result<(), String> {
    let manifest_dir = PathBuf::from(var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .ok_or("nat-userspace has no parent directory")?;
    let ebpf_crate = root.join("nat-ebpf");
    let common_crate = root.join("nat-common");
    for path in [
        ebpf_crate.join("src"),
        ebpf_crate.join("Cargo.toml"),
        common_crate.join("src"),
        common_crate.join("Cargo.toml"),
        root.join("Cargo.toml"),
        root.join("Cargo.lock"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    // bpf-linker is not a cargo dependency: a rebuilt linker must rebuild the object.
    if let Some(linker) = find_in_path("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }

    let out_dir = PathBuf::from(var("OUT_DIR")?);
    // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out: one directory for the eBPF
    // build beside the profiles, whatever profile or features this build uses.
    let target_root = out_dir.ancestors().nth(4).ok_or("unexpected OUT_DIR layout")?;
    let bpf_target_dir = target_root.join("bpf");
    let endian = var("CARGO_CFG_TARGET_ENDIAN")?;
    let bpf_target = if endian == "big" {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    };
    let arch = var("CARGO_CFG_TARGET_ARCH")?;

    let mut cargo = Command::new("rustup");
    cargo
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--quiet",
            "--package",
            "nat-ebpf",
            "--bins",
        ])
        .args(["--release", "--target", bpf_target, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&bpf_target_dir)
        .current_dir(root)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
        );
    // The outer build's compiler settings are for the host toolchain, not nightly's.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
    ] {
        cargo.env_remove(key);
    }
    let output = cargo.output().map_err(|e| {
        format!(
            "cannot run `rustup run nightly cargo` to build the eBPF programs ({e}): run `cargo xtask setup`"
        )
    })?;
    if !output.status.success() {
        return Err(format!(
            "building natd's eBPF programs failed ({}):\n{}{}\n\
             (the nightly toolchain with rust-src and bpf-linker are needed: `cargo xtask setup`)",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        ));
    }
    // With --quiet, whatever the nested build printed is a compiler diagnostic: show it.
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        println!("cargo:warning=nat-ebpf: {line}");
    }
    let object = bpf_target_dir.join(bpf_target).join("release").join("nat-ebpf");
    copy_if_changed(&object, &out_dir.join("nat-ebpf"))
}

/// Copies only when the content differs, so an unchanged object keeps its timestamp.
fn copy_if_changed(from: &Path, to: &Path) -> Result<(), String> {
    let new = std::fs::read(from).map_err(|e| format!("read {}: {e}", from.display()))?;
    if std::fs::read(to).ok().as_deref() != Some(new.as_slice()) {
        std::fs::write(to, new).map_err(|e| format!("write {}: {e}", to.display()))?;
    }
    Ok(())
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}
