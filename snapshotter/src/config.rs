//! The snapshotter's configuration file (TOML, `--config`), as a cluster admin
//! writes it (packaging/d4c-snapshotter.toml is the annotated example).
//! Command-line flags override it; what neither sets has its default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use d4c_host::registry::auth::Credentials;
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
    /// `error`, `warn`, `info` or `debug`.
    pub log_level: Option<crate::log::Level>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// Where to serve Prometheus metrics (`HOST:PORT`), if anywhere.
    pub metrics_address: Option<String>,
    /// A d4c image store (`$D4C_HOME/images` of `d4c pull`) whose images
    /// updates may start from too.
    pub shared_store: Option<PathBuf>,
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
    /// containerd's config, whose CRI registry logins
    /// (`registry.configs."HOST".auth`) are used for their hosts
    /// [default: /etc/containerd/config.toml, when it exists].
    pub containerd_config: Option<PathBuf>,
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

/// The logins containerd's CRI plugin is configured with, by registry host:
/// `[plugins."io.containerd.grpc.v1.cri".registry.configs."HOST".auth]`
/// (config version 2) or `[plugins."io.containerd.cri.v1.images".registry…]`
/// (version 3), each `username` and `password`, or `auth` (base64 of
/// `user:password`), or an `identitytoken`.
pub fn containerd_logins(path: &Path) -> Result<BTreeMap<String, Credentials>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: not TOML", path.display()))?;
    let mut out = BTreeMap::new();
    for plugin in ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images"] {
        let configs = v
            .get("plugins")
            .and_then(|p| p.get(plugin))
            .and_then(|c| c.get("registry"))
            .and_then(|r| r.get("configs"))
            .and_then(|c| c.as_table());
        for (host, c) in configs.into_iter().flatten() {
            let Some(auth) = c.get("auth") else { continue };
            let field = |k: &str| auth.get(k).and_then(|v| v.as_str()).unwrap_or("");
            let login = match (field("username"), field("auth"), field("identitytoken")) {
                (u, _, _) if !u.is_empty() => Credentials {
                    user: u.to_string(),
                    password: field("password").to_string(),
                },
                (_, a, _) if !a.is_empty() => {
                    use base64::Engine;
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .with_context(|| {
                            format!("{}: the auth of {host} is not base64", path.display())
                        })?;
                    let raw = String::from_utf8(raw).with_context(|| {
                        format!("{}: the auth of {host} is not UTF-8", path.display())
                    })?;
                    let (u, p) = raw.split_once(':').with_context(|| {
                        format!(
                            "{}: the auth of {host} is not user:password",
                            path.display()
                        )
                    })?;
                    Credentials {
                        user: u.to_string(),
                        password: p.to_string(),
                    }
                }
                // An identity token goes as the password of the user
                // `<token>`, as docker sends it.
                (_, _, t) if !t.is_empty() => Credentials {
                    user: "<token>".to_string(),
                    password: t.to_string(),
                },
                _ => continue,
            };
            out.insert(host.clone(), login);
        }
    }
    Ok(out)
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

    #[test]
    fn reads_cri_logins_from_containerd_configs_of_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = dir.path().join("v2.toml");
        std::fs::write(
            &v2,
            r#"version = 2
[plugins."io.containerd.grpc.v1.cri".registry.configs."reg.example:5000".auth]
  username = "alice"
  password = "s3cret"
[plugins."io.containerd.grpc.v1.cri".registry.configs."other.example".auth]
  auth = "Ym9iOmh1bnRlcjI="
[plugins."io.containerd.grpc.v1.cri".registry.configs."tls-only.example".tls]
  insecure_skip_verify = false
"#,
        )
        .unwrap();
        let l = containerd_logins(&v2).unwrap();
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(
            (
                l["reg.example:5000"].user.as_str(),
                l["reg.example:5000"].password.as_str()
            ),
            ("alice", "s3cret")
        );
        assert_eq!(
            (
                l["other.example"].user.as_str(),
                l["other.example"].password.as_str()
            ),
            ("bob", "hunter2")
        );
        let v3 = dir.path().join("v3.toml");
        std::fs::write(
            &v3,
            "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry.configs.'r3.example'.auth]\nidentitytoken = 'tok'\n",
        )
        .unwrap();
        let l = containerd_logins(&v3).unwrap();
        assert_eq!(
            (
                l["r3.example"].user.as_str(),
                l["r3.example"].password.as_str()
            ),
            ("<token>", "tok")
        );
    }
}
