//! Registry credentials and the two challenges registries answer 401 with:
//! `Basic` (send the credentials) and `Bearer` (trade them, or nothing, for a
//! token at the realm the challenge names).
//!
//! Credentials come from `D4C_REGISTRY_USER`/`D4C_REGISTRY_PASSWORD`, else the
//! auth files other tools write: `$REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json`, `$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json` (the `auths` map of base64 `user:password`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine;

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.user)
    }
}

impl Credentials {
    /// The value of a `Basic` Authorization header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.user, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Finds credentials for `registry` (`host[:port]`).
pub fn lookup(registry: &str) -> Result<Option<Credentials>> {
    if let (Ok(user), Ok(password)) = (
        std::env::var("D4C_REGISTRY_USER"),
        std::env::var("D4C_REGISTRY_PASSWORD"),
    ) {
        return Ok(Some(Credentials { user, password }));
    }
    for path in auth_files() {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let found = from_auth_file(&text, registry)
            .with_context(|| format!("reading credentials from {}", path.display()))?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Finds credentials for `registry` in the docker/containers auth file `path`
/// alone.
pub fn lookup_in(path: &Path, registry: &str) -> Result<Option<Credentials>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    from_auth_file(&text, registry)
        .with_context(|| format!("reading credentials from {}", path.display()))
}

fn auth_files() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let mut files = Vec::new();
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(f));
    }
    if let Some(d) = env("XDG_RUNTIME_DIR") {
        files.push(PathBuf::from(d).join("containers/auth.json"));
    } else if rustix::process::geteuid().is_root() {
        // podman's for root when no session set XDG_RUNTIME_DIR (services).
        files.push(PathBuf::from("/run/containers/0/auth.json"));
    }
    if let Some(d) = env("DOCKER_CONFIG") {
        files.push(PathBuf::from(d).join("config.json"));
    } else if let Some(h) = env("HOME") {
        files.push(PathBuf::from(h).join(".docker/config.json"));
    }
    files
}

/// Reads the login for `registry` from a docker/containers auth file: its
/// credential helper (`credHelpers`), else its `auths` entry, else the
/// file's credential store (`credsStore`), as docker does.
fn from_auth_file(text: &str, registry: &str) -> Result<Option<Credentials>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct File {
        #[serde(default)]
        auths: HashMap<String, Entry>,
        #[serde(default)]
        cred_helpers: HashMap<String, String>,
        #[serde(default)]
        creds_store: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        auth: Option<String>,
    }
    let file: File = serde_json::from_str(text).context("not a JSON auth file")?;
    let wanted = |key: &str| {
        let k = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let k = k.split('/').next().unwrap_or(k);
        k == registry
            || (registry == "docker.io" && (k == "index.docker.io" || k == "registry-1.docker.io"))
    };
    if let Some(helper) = file
        .cred_helpers
        .iter()
        .find(|(k, _)| wanted(k))
        .map(|(_, h)| h)
    {
        return from_helper(helper, registry);
    }
    let entry = file.auths.iter().find(|(k, _)| wanted(k)).map(|(_, e)| e);
    if let Some(auth) = entry.and_then(|e| e.auth.as_ref()) {
        return decode_auth(auth, registry).map(Some);
    }
    match &file.creds_store {
        Some(store) => from_helper(store, registry),
        None => Ok(None),
    }
}

/// `user:password`, base64-encoded, as auth files hold it.
fn decode_auth(auth: &str, registry: &str) -> Result<Credentials> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .context("auth entry is not base64")?;
    let raw = String::from_utf8(raw).context("auth entry is not UTF-8")?;
    let Some((user, password)) = raw.split_once(':') else {
        bail!("auth entry for {registry} is not user:password");
    };
    Ok(Credentials {
        user: user.to_string(),
        password: password.to_string(),
    })
}

/// Asks the credential helper `docker-credential-<name>` (docker's protocol:
/// `get`, the server on stdin, JSON on stdout) for `registry`'s login; none if
/// it has none.
fn from_helper(name: &str, registry: &str) -> Result<Option<Credentials>> {
    use std::io::Write;
    anyhow::ensure!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !name.starts_with('.'),
        "credential helper name {name:?} is not a plain name"
    );
    let program = format!("docker-credential-{name}");
    let mut child = std::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running the credential helper {program}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(registry.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout);
        // Its "not found" answer: no login for this registry.
        if said.contains("credentials not found") {
            return Ok(None);
        }
        bail!(
            "the credential helper {program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        username: String,
        secret: String,
    }
    let a: Answer = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("the answer of the credential helper {program}"))?;
    Ok(Some(Credentials {
        user: a.username,
        password: a.secret,
    }))
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Send the credentials with every request.
    Basic,
    /// Fetch a token from `realm`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` parameter, if given.
        service: Option<String>,
        /// The `scope` parameter, if given.
        scope: Option<String>,
    },
}

/// Parses `Basic realm="x"` or `Bearer realm="x",service="y",scope="z"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

/// `k="v", k2=v2` (quoted values may hold commas, as scopes do).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_string());
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn reads_auth_files() {
        let text = r#"{"auths":{"https://reg.example.com:5000":{"auth":"dXNlcjpwYTpzcw=="}}}"#;
        let c = from_auth_file(text, "reg.example.com:5000")
            .unwrap()
            .unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("user", "pa:ss"));
        assert!(from_auth_file(text, "other:5000").unwrap().is_none());
        assert!(from_auth_file("{", "x").is_err());
        assert!(from_auth_file(r#"{"auths":{"x":{"auth":"bm9jb2xvbg=="}}}"#, "x").is_err());
    }
}
