//! Who may do what on `d4c serve`: users from an htpasswd file (bcrypt, as
//! `htpasswd -B` and docker-registry write it), authenticated with HTTP Basic
//! on every request, or once at the server's token endpoint for a bearer
//! token the server signs (the distribution token flow, which registry clients
//! follow from the `WWW-Authenticate` challenge). Anonymous clients may read
//! (blobs, manifests, pulls) only when the server is started so.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use sha2::{Digest as _, Sha256};

/// Where clients trade their password for a token.
pub const TOKEN_PATH: &str = "/d4c/v1/token";

/// How clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HTTP Basic on every request.
    Basic,
    /// A bearer token from [`TOKEN_PATH`].
    Token,
}

/// A bcrypt check that passed is remembered this long (bcrypt costs ~0.1 s
/// of CPU by design: once per client, not once per request).
const VERIFIED_FOR: Duration = Duration::from_secs(300);
/// How long a token is good for.
const TOKEN_TTL: Duration = Duration::from_secs(600);

/// The server's users and how they log in.
pub struct Auth {
    users: HashMap<String, String>,
    scheme: Scheme,
    anonymous_read: bool,
    /// Signs tokens; new at each start (tokens die with the process).
    key: [u8; 32],
    /// sha256(user:password) of recent successful bcrypt checks.
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Blobs, manifests, pulls.
    Read,
    /// Uploads and tags too.
    Write,
}

impl Auth {
    /// Users from the htpasswd file at `path` (bcrypt entries only).
    pub fn from_htpasswd(path: &Path, scheme: Scheme, anonymous_read: bool) -> Result<Auth> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let users = parse_htpasswd(&text).with_context(|| format!("{}", path.display()))?;
        let mut key = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
        Ok(Auth {
            users,
            scheme,
            anonymous_read,
            key,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The `WWW-Authenticate` challenge for a client that reached `base`
    /// (`https://host:port`).
    pub fn challenge(&self, base: &str) -> String {
        match self.scheme {
            Scheme::Basic => r#"Basic realm="d4c""#.to_string(),
            Scheme::Token => format!(r#"Bearer realm="{base}{TOKEN_PATH}",service="d4c""#),
        }
    }

    /// Whether a request with this `Authorization` header (if any) may have
    /// `access`.
    pub fn allows(&self, authorization: Option<&str>, access: Access) -> bool {
        if access == Access::Read && self.anonymous_read {
            return true;
        }
        let Some(h) = authorization else {
            return false;
        };
        if let Some(b) = h.strip_prefix("Basic ") {
            return self.scheme == Scheme::Basic && self.basic_user(b).is_some();
        }
        if let Some(t) = h.strip_prefix("Bearer ") {
            return self.scheme == Scheme::Token && self.token_user(t).is_some();
        }
        false
    }

    /// A token for the user a `Basic` header names, if the password is right.
    pub fn issue(&self, authorization: Option<&str>) -> Option<String> {
        let user = self.basic_user(authorization?.strip_prefix("Basic ")?)?;
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .saturating_add(TOKEN_TTL)
            .as_secs();
        let payload = b64(serde_json::json!({"sub": user, "exp": exp})
            .to_string()
            .as_bytes());
        let sig = b64(&hmac(&self.key, payload.as_bytes()));
        Some(format!("{payload}.{sig}"))
    }

    /// How long an issued token lasts, in seconds.
    pub fn token_ttl(&self) -> u64 {
        TOKEN_TTL.as_secs()
    }

    fn basic_user(&self, b64_creds: &str) -> Option<String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64_creds.trim())
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (user, password) = raw.split_once(':')?;
        let hash = self.users.get(user)?;
        let key: [u8; 32] = Sha256::digest(raw.as_bytes()).into();
        {
            let mut v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            v.retain(|_, t| t.elapsed() < VERIFIED_FOR);
            if v.contains_key(&key) {
                return Some(user.to_string());
            }
        }
        if !bcrypt::verify(password, hash).unwrap_or(false) {
            return None;
        }
        let mut v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: a flood of distinct good logins cannot grow it without end.
        if v.len() < 10_000 {
            v.insert(key, Instant::now());
        }
        Some(user.to_string())
    }

    fn token_user(&self, token: &str) -> Option<String> {
        let (payload, sig) = token.trim().split_once('.')?;
        let want = b64(&hmac(&self.key, payload.as_bytes()));
        if !constant_time_eq(want.as_bytes(), sig.as_bytes()) {
            return None;
        }
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()?,
        )
        .ok()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        (claims.get("exp")?.as_u64()? > now)
            .then(|| claims.get("sub")?.as_str().map(String::from))?
    }
}

/// `user:hash` lines; blank lines and `#` comments skipped.
fn parse_htpasswd(text: &str) -> Result<HashMap<String, String>> {
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            bail!("line {}: not user:hash", n + 1);
        };
        ensure!(
            ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)),
            "line {}: {user:?} has no bcrypt hash (make the file with `htpasswd -B`)",
            n + 1
        );
        users.insert(user.to_string(), hash.to_string());
    }
    ensure!(!users.is_empty(), "no users");
    Ok(users)
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(key);
    let pad = |b: u8| k.map(|x| x ^ b);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(scheme: Scheme, anonymous_read: bool) -> Auth {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        std::fs::write(&p, format!("# users\nalice:{hash}\n")).unwrap();
        Auth::from_htpasswd(&p, scheme, anonymous_read).unwrap()
    }

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[test]
    fn basic_users_and_anonymous_reads() {
        let a = auth(Scheme::Basic, false);
        assert!(a.allows(Some(&basic("alice", "s3cret")), Access::Write));
        assert!(
            a.allows(Some(&basic("alice", "s3cret")), Access::Write),
            "cached"
        );
        assert!(!a.allows(Some(&basic("alice", "wrong")), Access::Write));
        assert!(!a.allows(Some(&basic("bob", "s3cret")), Access::Read));
        assert!(!a.allows(None, Access::Read));
        let a = auth(Scheme::Basic, true);
        assert!(a.allows(None, Access::Read) && !a.allows(None, Access::Write));
    }

    #[test]
    fn tokens_are_signed_and_expire() {
        let a = auth(Scheme::Token, false);
        assert!(a.issue(Some(&basic("alice", "wrong"))).is_none());
        let t = a.issue(Some(&basic("alice", "s3cret"))).unwrap();
        assert!(a.allows(Some(&format!("Bearer {t}")), Access::Write));
        // Basic is not accepted where tokens are asked for.
        assert!(!a.allows(Some(&basic("alice", "s3cret")), Access::Write));
        // Another server's key, or a payload changed, or expired: refused.
        let other = auth(Scheme::Token, false);
        assert!(!other.allows(Some(&format!("Bearer {t}")), Access::Read));
        let (_, sig) = t.split_once('.').unwrap();
        let forged = b64(br#"{"sub":"alice","exp":99999999999}"#);
        assert!(!a.allows(Some(&format!("Bearer {forged}.{sig}")), Access::Read));
        let old = b64(br#"{"sub":"alice","exp":1}"#);
        let old_sig = b64(&hmac(&a.key, old.as_bytes()));
        assert!(!a.allows(Some(&format!("Bearer {old}.{old_sig}")), Access::Read));
    }

    #[test]
    fn hmac_matches_python() {
        // hmac.new(b"\x0b" * 32, b"Hi There", hashlib.sha256).hexdigest()
        assert_eq!(
            hex::encode(hmac(&[0x0b; 32], b"Hi There")),
            "198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7"
        );
    }

    #[test]
    fn htpasswd_needs_bcrypt() {
        assert!(parse_htpasswd("alice:{SHA}abc").is_err());
        assert!(parse_htpasswd("alice:$apr1$x$y").is_err());
        assert!(parse_htpasswd("").is_err());
    }
}
