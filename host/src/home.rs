//! Where d4c keeps its data on this machine: `$D4C_HOME`, else
//! `$XDG_DATA_HOME/d4c`, else `~/.local/share/d4c`. Below it:
//! `codecs/` (the codec store), `cache/compiled/` (compiled components) and
//! `cache/content/` (file contents rebuilt by mounts).

use std::path::PathBuf;

/// The d4c data directory (not created here).
pub fn data_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("D4C_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(x).join("d4c");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".local/share/d4c")
}

/// The default codec store directory.
pub fn codec_dir() -> PathBuf {
    data_dir().join("codecs")
}

/// The default cache of compiled components.
pub fn compiled_cache_dir() -> PathBuf {
    data_dir().join("cache").join("compiled")
}

/// The default cache of file contents rebuilt by mounts.
pub fn content_cache_dir() -> PathBuf {
    data_dir().join("cache").join("content")
}

/// Where `pull` keeps downloads until they are complete and used (partial ones
/// stay for the next pull to resume).
pub fn downloads_dir() -> PathBuf {
    data_dir().join("downloads")
}
