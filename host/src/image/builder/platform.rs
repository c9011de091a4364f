//! Platforms (`os/architecture[/variant]`) and picking one manifest from a
//! multi-platform image index, as containerd's platform matcher does for the
//! common cases: the same os and architecture, and the variant when one is
//! asked. Never silently another platform than the one asked.

use std::fmt;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// Media types of multi-platform indexes.
pub const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// An image platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, ...
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, `arm`, ...
    pub architecture: String,
    /// `v7`, `v8`, ... when asked.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    /// Parses `os/architecture[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        ensure!(
            (2..=3).contains(&parts.len()) && parts.iter().all(|p| ok(p)),
            "invalid platform {s:?} (want OS/ARCH[/VARIANT], e.g. linux/arm64)"
        );
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }

    fn matches(&self, p: &Value) -> bool {
        p["os"].as_str() == Some(&self.os)
            && p["architecture"].as_str() == Some(&self.architecture)
            && self
                .variant
                .as_deref()
                .is_none_or(|v| p["variant"].as_str() == Some(v))
    }

    /// The descriptor in the image index `index` for this platform.
    pub fn pick(&self, index: &Value) -> Result<Value> {
        let manifests = index["manifests"]
            .as_array()
            .context("image index without manifests")?;
        // Attestations and other artifacts sit in indexes with platform
        // unknown/unknown; they never match a real platform.
        if let Some(m) = manifests.iter().find(|m| self.matches(&m["platform"])) {
            return Ok(m.clone());
        }
        let offered: Vec<String> = manifests
            .iter()
            .filter_map(|m| {
                let p = &m["platform"];
                let (os, arch) = (p["os"].as_str()?, p["architecture"].as_str()?);
                Some(match p["variant"].as_str() {
                    Some(v) => format!("{os}/{arch}/{v}"),
                    None => format!("{os}/{arch}"),
                })
            })
            .collect();
        bail!(
            "the image index has no {self} manifest (it has: {}); choose one with --platform",
            if offered.is_empty() {
                "none with a platform".to_string()
            } else {
                offered.join(", ")
            }
        )
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Whether a manifest of media type `media_type` (or whose JSON says so) is a
/// multi-platform index.
pub fn is_index(media_type: Option<&str>, manifest: &Value) -> bool {
    let mt = manifest["mediaType"].as_str().or(media_type).unwrap_or("");
    INDEX_TYPES.contains(&mt) || (mt.is_empty() && manifest["manifests"].is_array())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Value {
        serde_json::json!({"manifests": [
            {"digest": "a", "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "b", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            {"digest": "c", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": "d", "platform": {"os": "unknown", "architecture": "unknown"}},
        ]})
    }

    #[test]
    fn picks_the_asked_platform_and_never_another() {
        let pick = |p: &str| Platform::parse(p).unwrap().pick(&index());
        assert_eq!(pick("linux/amd64").unwrap()["digest"], "a");
        assert_eq!(pick("linux/arm64").unwrap()["digest"], "c");
        assert_eq!(pick("linux/arm/v7").unwrap()["digest"], "b");
        let e = pick("linux/arm/v6").unwrap_err().to_string();
        assert!(e.contains("no linux/arm/v6 manifest"), "{e}");
        assert!(e.contains("linux/amd64, linux/arm/v7"), "{e}");
        let e = pick("linux/s390x").unwrap_err().to_string();
        assert!(e.contains("--platform"), "{e}");
        for bad in ["linux", "linux/", "Linux/amd64", "a/b/c/d"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Platform::host().os, "linux");
    }
}
