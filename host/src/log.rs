//! Logs of the long-running services (`d4c serve`, the snapshotter):
//! `tracing` events on stderr (journald takes them under systemd), as text or
//! as JSON lines, at `--log-level`, or as `RUST_LOG` says when it is set (it
//! reaches the libraries' own events too, e.g. `RUST_LOG=info,h2=debug`).

use anyhow::{Context, Result};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(format!("{s:?}: want text or json")),
        }
    }
}

/// Sends this process's events to stderr from now on: `level` (`error`,
/// `warn`, `info`, `debug`, `trace`) for d4c's own, `warn` for the
/// libraries', unless `RUST_LOG` is set.
pub fn init(level: &str, format: Format) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(&spec).with_context(|| format!("RUST_LOG={spec:?}"))?
        }
        _ => EnvFilter::try_new(format!(
            "warn,d4c={level},d4c_host={level},d4c_server={level},d4c_snapshotter={level}"
        ))
        .with_context(|| format!("log level {level:?}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    // A second init (tests running services in one process) keeps the first.
    let _ = match format {
        Format::Text => builder.try_init(),
        Format::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}
