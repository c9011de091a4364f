//! The snapshotter's log: `tracing` events on stderr (journald takes them
//! under systemd), as text or JSON lines ([`d4c_host::log`]).

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
    /// And the steps of each operation.
    Debug,
}

impl Level {
    /// Its name, as `tracing` filters take it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// Logs `msg` at `level`.
pub fn log(level: Level, msg: &str) {
    match level {
        Level::Error => tracing::error!("{msg}"),
        Level::Warn => tracing::warn!("{msg}"),
        Level::Info => tracing::info!("{msg}"),
        Level::Debug => tracing::debug!("{msg}"),
    }
}
