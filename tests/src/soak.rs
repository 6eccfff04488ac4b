//! The reliability matrix runs in two sizes: a short form in `cargo xtask test` and the
//! full one in `cargo xtask soak` (NATLAB_SOAK=1). Each row reports what it did and checked
//! to NATLAB_FIGURES (JSON lines) when set, for docs/reliability.md.
use std::io::Write as _;

/// Whether this is the soak run.
pub fn soak() -> bool {
    std::env::var_os("NATLAB_SOAK").is_some_and(|v| v != "0")
}

/// `short` in CI, `full` in the soak run.
pub fn size(short: usize, full: usize) -> usize {
    if soak() { full } else { short }
}

/// A random seed, printed so that a failing run can be repeated with NATLAB_SEED.
pub fn rng(row: &str) -> fastrand::Rng {
    let seed = std::env::var("NATLAB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("{row}: seed {seed} (repeat with NATLAB_SEED={seed})");
    fastrand::Rng::with_seed(seed)
}

/// One row's figures: iterations done, failures seen, and what was checked.
pub fn report(row: &str, iterations: usize, failures: usize, checked: &str) {
    let line = serde_json::json!({
        "row": row,
        "soak": soak(),
        "iterations": iterations,
        "failures": failures,
        "checked": checked,
    });
    println!("figures: {line}");
    if let Some(path) = std::env::var_os("NATLAB_FIGURES")
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// A row's figures counted as the run goes and reported when the row ends, also when it
/// ends by a failed assertion (the report then counts that failure): a figure is what the
/// run did, never a constant written after every check passed.
pub struct Row {
    name: &'static str,
    checked: String,
    iterations: usize,
    failures: usize,
}

impl Row {
    pub fn new(name: &'static str, checked: impl Into<String>) -> Self {
        Self {
            name,
            checked: checked.into(),
            iterations: 0,
            failures: 0,
        }
    }

    /// One more iteration done (a case, a probe, a refused flow).
    pub fn done(&mut self) {
        self.iterations += 1;
    }

    /// What was checked, as the run learnt it (figures measured on the way).
    pub fn checked(&mut self, text: impl Into<String>) {
        self.checked = text.into();
    }

    /// A failure the row counts and goes on after (the row asserts at its end).
    pub fn failed(&mut self) {
        self.failures += 1;
    }
}

impl Drop for Row {
    fn drop(&mut self) {
        let failures = self.failures + usize::from(std::thread::panicking());
        report(self.name, self.iterations, failures, &self.checked);
    }
}
