//! Image references as users write them:
//! `[SCHEME://]HOST[:PORT]/REPO[:TAG][@sha256:HEX]`.

use std::fmt;

use anyhow::{bail, ensure, Context, Result};

use crate::digest::Digest;

/// Docker Hub's name in references, and the host its API is served from.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A repository in a registry, and optionally a tag in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` for Docker Hub).
    pub registry: String,
    /// The repository path, e.g. `d4c/debian`.
    pub repository: String,
    /// The tag, if one was given.
    pub tag: Option<String>,
    /// The manifest digest, if one was given (`@sha256:...`): it wins over the tag.
    pub digest: Option<Digest>,
    /// Whether to speak plain HTTP: an `http://` prefix or a loopback host.
    pub plain_http: bool,
}

impl Reference {
    /// Parses `[http://|https://|docker://]HOST[:PORT]/REPO[:TAG][@sha256:HEX]`
    /// (`docker://` as skopeo writes references: no scheme forced). A first
    /// component with no `.` or `:` that is not `localhost` is a Docker Hub
    /// repository.
    pub fn parse(s: &str) -> Result<Reference> {
        let (scheme, rest) = match s.split_once("://") {
            Some(("http", r)) => (Some(false), r),
            Some(("https", r)) => (Some(true), r),
            Some(("docker", r)) => (None, r),
            Some((other, _)) => {
                bail!("{s:?}: unknown scheme {other:?} (use docker, http or https)")
            }
            None => (None, s),
        };
        ensure!(!rest.is_empty(), "empty image reference");
        let (rest, digest) = match rest.split_once('@') {
            Some((r, d)) => {
                ensure!(
                    d.starts_with("sha256:"),
                    "{s:?}: want @sha256:<64 hex digits>"
                );
                let d: Digest = d
                    .parse()
                    .with_context(|| format!("{s:?}: invalid digest {d:?}"))?;
                (r, Some(d))
            }
            None => (rest, None),
        };
        let (first, remainder) = rest.split_once('/').unwrap_or(("", rest));
        let is_host = first.contains('.') || first.contains(':') || first == "localhost";
        let (registry, path) = if is_host {
            (first.to_string(), remainder)
        } else if scheme.is_some() {
            bail!("{s:?}: {first:?} is not a registry host");
        } else {
            (DOCKER_HUB.to_string(), rest)
        };
        // A tag is after the last ':' that follows the last '/'.
        let (repo, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (path, None),
        };
        let mut repository = repo.to_string();
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        ensure!(
            valid_repository(&repository),
            "{s:?}: invalid repository name {repository:?} (lowercase letters, digits and . _ - / only)"
        );
        if let Some(t) = &tag {
            ensure!(
                valid_tag(t),
                "{s:?}: invalid tag {t:?} (up to 128 letters, digits, . _ -; not starting with . or -)"
            );
        }
        let plain_http = scheme.map_or_else(|| is_loopback(&registry), |https| !https);
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
            plain_http,
        })
    }

    /// The tag, or an error saying one is needed (d4c's own tags are not
    /// addressed by digest).
    pub fn require_tag(&self) -> Result<&str> {
        match (&self.tag, &self.digest) {
            (Some(t), None) => Ok(t),
            (_, Some(_)) => bail!("{self}: name a tag, not a digest (REPO:TAG)"),
            (None, None) => bail!("{self}: name a tag (REPO:TAG)"),
        }
    }

    /// What names the manifest: the digest if one was given, else the tag.
    pub fn manifest_ref(&self) -> Result<String> {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Ok(d.oci()),
            (None, Some(t)) => Ok(t.clone()),
            (None, None) => bail!("{self}: name a tag or a digest (REPO:TAG or REPO@sha256:...)"),
        }
    }

    /// The base URL of the registry's API, without the `/v2/`.
    pub fn api_base(&self) -> String {
        let host = if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        };
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{host}")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{}", d.oci())?;
        }
        Ok(())
    }
}

/// Whether `host_port` (`host[:port]`, IPv6 in brackets) is this machine.
pub fn is_loopback(host_port: &str) -> bool {
    let host = if let Some(h) = host_port.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// OCI distribution's repository grammar: components of `[a-z0-9]+([._-][a-z0-9]+)*`
/// (with `__` allowed) joined by `/`.
pub fn valid_repository(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && r.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        })
}

/// OCI distribution's tag grammar: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r = Reference::parse("127.0.0.1:5000/d4c/debian:v4").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "d4c/debian");
        assert_eq!(r.tag.as_deref(), Some("v4"));
        assert!(r.plain_http);
        assert_eq!(r.api_base(), "http://127.0.0.1:5000");

        let r = Reference::parse("registry.example.com/team/app").unwrap();
        assert_eq!(r.tag, None);
        assert!(!r.plain_http);
        assert_eq!(r.api_base(), "https://registry.example.com");

        let r = Reference::parse("debian:12").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/debian");
        assert_eq!(r.api_base(), "https://registry-1.docker.io");

        let r = Reference::parse("docker://127.0.0.1:5000/d4c/debian:v4").unwrap();
        assert_eq!(r, Reference::parse("127.0.0.1:5000/d4c/debian:v4").unwrap());
        let r = Reference::parse("http://10.0.0.1:5000/x:y").unwrap();
        assert!(r.plain_http);
        let r = Reference::parse("https://localhost:5000/x:y").unwrap();
        assert!(!r.plain_http);
        assert!(Reference::parse("localhost/x").unwrap().plain_http);
        assert!(Reference::parse("[::1]:5000/x").unwrap().plain_http);

        let hex = "ab".repeat(32);
        let r = Reference::parse(&format!("localhost:5000/x:v1@sha256:{hex}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_ref().unwrap(), format!("sha256:{hex}"));
        assert_eq!(r.to_string(), format!("localhost:5000/x:v1@sha256:{hex}"));
        assert!(r.require_tag().is_err());
        let r = Reference::parse(&format!("localhost:5000/x@sha256:{hex}")).unwrap();
        assert_eq!((r.tag, r.repository.as_str()), (None, "x"));
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "127.0.0.1:5000/Upper:v1",
            "127.0.0.1:5000/x:-bad",
            "127.0.0.1:5000/x@sha256:00",
            "127.0.0.1:5000/x@md5:00",
            "ftp://host/x",
            "127.0.0.1:5000/a//b",
            "127.0.0.1:5000/",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Reference::parse("127.0.0.1:5000/x")
            .unwrap()
            .require_tag()
            .is_err());
    }
}
