//! The snapshotter's configuration file (TOML, `--config`), as a cluster admin
//! writes it (packaging/d4c-snapshotter.toml is the annotated example).
//! Command-line flags override it; what neither sets has its default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// The file's contents. Unknown keys are errors: a misspelt setting must not
/// silently fall back to its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// State directory.
    pub root: Option<PathBuf>,
    /// The unix socket containerd reaches the snapshotter on.
    pub address: Option<PathBuf>,
    /// Bound on the cache of rebuilt file contents, e.g. `"10G"`.
    pub cache_size: Option<String>,
    /// Images kept per repository after containerd removed them.
    pub keep_per_repository: Option<usize>,
    /// `error`, `warn` or `info`.
    pub log_level: Option<crate::log::Level>,
    /// Caps on codec calls.
    #[serde(default)]
    pub codec: CodecConfig,
    /// How registries are reached.
    #[serde(default)]
    pub registry: RegistryConfig,
}

/// `[codec]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodecConfig {
    /// Memory per call, e.g. `"3G"`.
    pub memory: Option<String>,
    /// Seconds per call.
    pub timeout: Option<u64>,
}

/// `[registry]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// PEM CA certificates to trust instead of the built-in roots.
    pub ca_cert: Option<PathBuf>,
    /// A docker/containers auth file (`{"auths": {...}}`) looked in first;
    /// then the node's own (root's docker and podman auth files).
    pub auth_file: Option<PathBuf>,
    /// Per registry host, endpoints tried before it (`"http://10.0.0.5:5000"`).
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
}

/// `[registry.mirrors."HOST"]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// `http://` or `https://` URLs, in order.
    pub endpoints: Vec<String>,
}

impl Config {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            let msg = e.message().to_string();
            let at = e
                .span()
                .map(|s| {
                    let before = &text.as_bytes()[..s.start.min(text.len())];
                    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            anyhow::anyhow!("{}{at}: {msg}", path.display())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_example_and_refuses_unknown_keys() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/d4c-snapshotter.toml");
        let c = Config::load(&example).unwrap();
        assert_eq!(c.keep_per_repository, Some(2));
        assert_eq!(c.cache_size.as_deref(), Some("10G"));
        assert!(c.registry.mirrors.contains_key("docker.io"));
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "root = \"/x\"\ncache_szie = \"1G\"\n").unwrap();
        let e = Config::load(&bad).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("cache_szie"), "{e}");
    }
}
