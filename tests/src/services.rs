//! The services `scripts/services` starts (a registry, containerd with and
//! without CRI): tests that need one ask here. `scripts/test` sets
//! `D4C_REQUIRE_SERVICES=1`, so there a missing service fails the test; a bare
//! `cargo test` skips such tests, saying so on stderr.

/// The value of `var` (set by `scripts/services env`), or `None` after saying
/// the test is skipped; panics when services are required.
pub fn env(var: &str) -> Option<String> {
    if let Ok(v) = std::env::var(var) {
        return Some(v);
    }
    let why = format!(
        "{var} is not set: this test needs the services scripts/services starts (scripts/test starts them)"
    );
    if std::env::var_os("D4C_REQUIRE_SERVICES").is_some() {
        panic!("{why}");
    }
    eprintln!("skipped: {why}");
    None
}

/// The test registry, `HOST:PORT` (`D4C_TEST_REGISTRY`).
pub fn registry() -> Option<String> {
    env("D4C_TEST_REGISTRY")
}
