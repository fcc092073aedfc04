//! The visible skip, shared by the service's and the engine's tests (the engine's include this
//! file by path).

/// A test that cannot run here says so: SKIPPED on stderr and a line in $EIGENPRUNE_SKIPS
/// (which `.ci/run` counts and prints), or a failure when EIGENPRUNE_REQUIRE_MODELS is set
/// (CI fetches every model first).
pub fn skip(reason: &str) {
    assert!(
        std::env::var_os("EIGENPRUNE_REQUIRE_MODELS").is_none(),
        "EIGENPRUNE_REQUIRE_MODELS is set, but: {reason}"
    );
    skip_without_requirement(reason);
}

/// The skip itself (the caller has checked its own requirement variable).
pub fn skip_without_requirement(reason: &str) {
    eprintln!("SKIPPED: {reason}");
    if let Some(path) = std::env::var_os("EIGENPRUNE_SKIPS") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{reason}");
        }
    }
}
