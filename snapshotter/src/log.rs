//! The snapshotter's log: one line per event on stderr (journald takes it
//! under systemd), filtered by level.

use std::sync::atomic::{AtomicU8, Ordering};

use serde::Deserialize;

/// How much to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Failures only.
    Error,
    /// And what was worked around (an image unpacked by containerd after a
    /// fetch failed, a snapshot that cannot be served).
    Warn,
    /// And what was done (images fetched, with their bytes).
    Info,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the level.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Logs `msg` at `level`.
pub fn log(level: Level, msg: &str) {
    if level as u8 <= LEVEL.load(Ordering::Relaxed) {
        eprintln!("d4c-snapshotter: {msg}");
    }
}
