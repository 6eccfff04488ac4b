use which::which;

/// Rebuild when bpf-linker changes, since it is not tracked by cargo.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
