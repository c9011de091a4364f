//! A client for the OCI distribution API: blobs (chunked uploads, ranged and
//! resumable downloads, every byte checked against its digest) and manifests,
//! with basic and bearer-token authentication.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use ureq::http::{self, Method, Response, StatusCode};
use ureq::{AsSendBody, Body};

use super::auth::{self, Challenge, Credentials};
use super::reference::Reference;
use crate::digest::{Digest, Hasher};
use crate::progress::Progress;

/// Manifest media types d4c asks for and writes.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
/// Uploads above this go in chunks of this size (progress, and no request body
/// larger than a proxy may take).
const CHUNK: usize = 16 << 20;
/// Largest manifest accepted.
const MAX_MANIFEST: u64 = 4 << 20;

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// PEM file of CA certificates to trust instead of the built-in roots.
    pub ca_cert: Option<PathBuf>,
    /// Cap on download speed, in bytes per second.
    pub limit_rate: Option<u64>,
    /// Credentials to use instead of looking them up.
    pub credentials: Option<Credentials>,
    /// A docker/containers auth file to look credentials up in first.
    pub auth_file: Option<PathBuf>,
    /// The registry's certificate directory (`*.crt` CAs, a `NAME.cert` and
    /// `NAME.key` client pair) [default: its `certs.d` directory, see
    /// [`super::tls`]].
    pub cert_dir: Option<PathBuf>,
    /// skopeo's `--tls-verify=false`: accept any certificate, and speak plain
    /// HTTP to a registry that does not speak TLS. For test registries only.
    pub insecure: bool,
}

/// One repository in one registry.
pub struct Registry {
    agent: ureq::Agent,
    base: String,
    reference: Reference,
    credentials: Option<Credentials>,
    /// The Authorization header that worked last.
    authorization: Mutex<Option<String>>,
    limit_rate: Option<u64>,
    received: AtomicU64,
}

impl Registry {
    /// Connects to the repository `reference` names and checks the registry
    /// answers the distribution API.
    pub fn connect(reference: &Reference, opts: &ConnectOptions) -> Result<Registry> {
        let mut registry = Registry::new(reference, opts)?;
        if !reference.plain_http && opts.insecure {
            // A bare request, no credentials in it: if TLS fails, the registry
            // may speak plain HTTP (allowed by --tls-verify=false alone).
            let probe = get(&format!("{}/v2/", registry.base));
            if let Err(e) = registry.run(probe, "GET /v2/ over HTTPS") {
                let plain = Reference {
                    plain_http: true,
                    ..reference.clone()
                };
                registry = Registry::new(&plain, opts)?;
                let probe = get(&format!("{}/v2/", registry.base));
                registry
                    .run(probe, "GET /v2/ over plain HTTP")
                    .map_err(|plain| anyhow!("{e:#}; {plain:#}"))?;
            }
        }
        let resp = registry.send(|| get(&format!("{}/v2/", registry.base)))?;
        if !resp.status().is_success() {
            return Err(registry.failure(resp, "checking the registry API (/v2/)"));
        }
        Ok(registry)
    }

    /// A client for `reference` that has not talked to the registry yet.
    fn new(reference: &Reference, opts: &ConnectOptions) -> Result<Registry> {
        let tls = super::tls::config(&reference.registry, opts)?;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .user_agent(concat!("d4c/", env!("CARGO_PKG_VERSION")))
            // Redirects are followed by `send`, which knows where credentials
            // may go.
            .max_redirects(0)
            .build();
        let in_file = match &opts.auth_file {
            Some(f) => auth::lookup_in(f, &reference.registry)?,
            None => None,
        };
        let credentials = match (&opts.credentials, in_file) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(c)) => Some(c),
            (None, None) => auth::lookup(&reference.registry)?,
        };
        Ok(Registry {
            agent: ureq::Agent::new_with_config(config),
            base: reference.api_base(),
            reference: reference.clone(),
            credentials,
            authorization: Mutex::new(None),
            limit_rate: opts.limit_rate,
            received: AtomicU64::new(0),
        })
    }

    /// The reference this client was made for.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Blob bytes received so far (not counting manifests and errors).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn repo_url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.reference.repository)
    }

    /// Sends a request, authenticating once if the registry challenges it, and
    /// following redirects of GET and HEAD (blob stores and CDNs) under
    /// [`redirect_target`]'s rules. Credentials go only to the registry's own
    /// host: never to an absolute upload location or a redirect elsewhere.
    fn send<B: AsSendBody>(&self, build: impl Fn() -> http::Request<B>) -> Result<Response<Body>> {
        let mut challenged = false;
        loop {
            let mut req = build();
            self.authorize(req.uri().clone(), req.headers_mut())?;
            let what = format!("{} {}", req.method(), req.uri().path());
            let (method, uri, headers) = (
                req.method().clone(),
                req.uri().clone(),
                req.headers().clone(),
            );
            let resp = self.run_retrying(req, &method, &headers, &what)?;
            let resp =
                if resp.status().is_redirection() && matches!(method, Method::GET | Method::HEAD) {
                    self.follow(resp, method, uri, headers, &what)?
                } else {
                    resp
                };
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if challenged {
                bail!(
                    "registry {} refused the login for {what} (HTTP 401){}",
                    self.reference.registry,
                    match &self.credentials {
                        Some(c) => format!(" as user {:?}", c.user),
                        None => String::new(),
                    }
                );
            }
            challenged = true;
            let header = resp
                .headers()
                .get(http::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let challenge = auth::parse_challenge(&header).with_context(|| {
                format!(
                    "registry {} refused {what} with no usable challenge ({header:?})",
                    self.reference.registry
                )
            })?;
            let value = self.answer(&challenge)?;
            *self.authorization.lock().unwrap() = Some(value);
        }
    }

    /// [`Registry::run`], and for a GET or HEAD that meets a server error
    /// (registries answer 500 or 503 for a moment under concurrent writes), a
    /// rate limit (429) or a broken connection, again after a pause that
    /// doubles (or the `Retry-After` the registry asks for, up to
    /// [`MAX_RETRY_AFTER`]), up to [`RETRIES`] times.
    fn run_retrying<B: AsSendBody>(
        &self,
        req: http::Request<B>,
        method: &Method,
        headers: &http::HeaderMap,
        what: &str,
    ) -> Result<Response<Body>> {
        if !matches!(*method, Method::GET | Method::HEAD) {
            return self.run(req, what);
        }
        let uri = req.uri().clone();
        let mut result = self.run(req, what);
        for attempt in 0..RETRIES {
            let pause = match &result {
                Ok(r)
                    if r.status().is_server_error()
                        || r.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    retry_after(r).unwrap_or(Duration::from_millis(200 << attempt))
                }
                Ok(_) => break,
                Err(_) => Duration::from_millis(200 << attempt),
            };
            std::thread::sleep(pause);
            result = self.run(bodiless(method, &uri, headers)?, what);
        }
        result
    }

    fn run<B: AsSendBody>(&self, req: http::Request<B>, what: &str) -> Result<Response<Body>> {
        self.agent.run(req).map_err(|e| {
            anyhow!(
                "cannot reach registry {} ({what}): {}",
                self.reference.registry,
                transport_error(&e)
            )
        })
    }

    /// Adds the Authorization header that worked last, if `uri` is on the
    /// registry's own host (scheme, host and port).
    fn authorize(&self, uri: http::Uri, headers: &mut http::HeaderMap) -> Result<()> {
        headers.remove(http::header::AUTHORIZATION);
        if !same_origin(&uri, &self.base) {
            return Ok(());
        }
        if let Some(a) = self.authorization.lock().unwrap().clone() {
            headers.insert(http::header::AUTHORIZATION, a.parse()?);
        }
        Ok(())
    }

    /// Follows the redirects of a GET or HEAD, up to [`MAX_REDIRECTS`].
    fn follow(
        &self,
        mut resp: Response<Body>,
        method: Method,
        mut uri: http::Uri,
        headers: http::HeaderMap,
        what: &str,
    ) -> Result<Response<Body>> {
        for _ in 0..MAX_REDIRECTS {
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .with_context(|| format!("{what}: a redirect without a location"))?;
            uri = redirect_target(&uri, location).with_context(|| what.to_string())?;
            let mut req = bodiless(&method, &uri, &headers)?;
            self.authorize(uri.clone(), req.headers_mut())?;
            resp = self.run(req, what)?;
        }
        bail!("{what}: more than {MAX_REDIRECTS} redirects")
    }

    /// The Authorization header value that answers `challenge`.
    fn answer(&self, challenge: &Challenge) -> Result<String> {
        match challenge {
            Challenge::Basic => match &self.credentials {
                Some(c) => Ok(c.basic_header()),
                None => bail!(
                    "registry {} requires a login: set D4C_REGISTRY_USER and D4C_REGISTRY_PASSWORD, or log in with docker/podman/skopeo",
                    self.reference.registry
                ),
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                // The realm gets the password: only over TLS, or on this machine.
                let realm_uri: http::Uri = realm
                    .parse()
                    .with_context(|| format!("the token realm {realm:?} is not a URL"))?;
                let local = realm_uri
                    .authority()
                    .is_some_and(|a| super::reference::is_loopback(a.as_str()));
                ensure!(
                    realm_uri.scheme_str() == Some("https") || local,
                    "registry {} names the token service {realm}, which is not https: refusing to send credentials there",
                    self.reference.registry
                );
                let mut url = realm.clone();
                let mut sep = if url.contains('?') { '&' } else { '?' };
                for (k, v) in [("service", service), ("scope", scope)] {
                    if let Some(v) = v {
                        url.push_str(&format!("{sep}{k}={}", percent_encode(v)));
                        sep = '&';
                    }
                }
                let mut req = self.agent.get(&url);
                if let Some(c) = &self.credentials {
                    req = req.header("Authorization", c.basic_header());
                }
                let mut resp = req.call().map_err(|e| {
                    anyhow!("cannot reach the token service {realm}: {}", transport_error(&e))
                })?;
                if !resp.status().is_success() {
                    bail!(
                        "the token service {realm} refused {} (HTTP {}){}",
                        self.reference.registry,
                        resp.status().as_u16(),
                        if self.credentials.is_none() {
                            "; no credentials were found for it"
                        } else {
                            ""
                        }
                    );
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body = resp.body_mut().with_config().limit(1 << 20).read_to_vec()?;
                let t: Token =
                    serde_json::from_slice(&body).context("the token service's answer")?;
                let token = t
                    .token
                    .or(t.access_token)
                    .context("the token service answered no token")?;
                Ok(format!("Bearer {token}"))
            }
        }
    }

    /// An error for an unexpected response, with the registry's own message.
    fn failure(&self, mut resp: Response<Body>, what: &str) -> anyhow::Error {
        let status = resp.status();
        self.error(what, status, error_message(&mut resp))
    }

    fn error(&self, what: &str, status: StatusCode, message: Option<String>) -> anyhow::Error {
        match message {
            Some(d) => anyhow!(
                "{what} at {}: {d} (HTTP {})",
                self.reference.registry,
                status.as_u16()
            ),
            None => anyhow!(
                "{what} at {}: HTTP {}",
                self.reference.registry,
                status.as_u16()
            ),
        }
    }

    /// The size of a blob if the repository has it.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let url = self.repo_url(&format!("blobs/{digest:?}"));
        let resp = self.send(|| head(&url))?;
        match resp.status() {
            s if s.is_success() => Ok(resp.body().content_length().or_else(|| {
                resp.headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
            })),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.failure(resp, &format!("checking blob {digest:?}"))),
        }
    }

    /// Uploads a blob from memory unless the repository has it.
    pub fn push_blob_bytes(&self, data: &[u8]) -> Result<Digest> {
        let digest = Digest::of(data);
        if self.blob_size(&digest)? != Some(data.len() as u64) {
            let mut r = data;
            self.upload(&digest, data.len() as u64, &mut r, &crate::progress::Silent)?;
        }
        Ok(digest)
    }

    /// Uploads the file at `path` (whose sha256 is `digest`) unless the
    /// repository has it. Returns whether it was uploaded.
    pub fn push_blob_file(
        &self,
        path: &Path,
        digest: &Digest,
        progress: &dyn Progress,
    ) -> Result<bool> {
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let size = f.metadata()?.len();
        if self.blob_size(digest)? == Some(size) {
            return Ok(false);
        }
        self.upload(digest, size, &mut f, progress)?;
        Ok(true)
    }

    /// POST a session, PATCH chunks, PUT with the digest.
    fn upload(
        &self,
        digest: &Digest,
        size: u64,
        r: &mut dyn Read,
        progress: &dyn Progress,
    ) -> Result<()> {
        let what = format!("uploading blob {digest:?}");
        let url = self.repo_url("blobs/uploads/");
        let resp = self.send(|| {
            request(Method::POST, &url)
                .header("Content-Length", "0")
                .body(&[][..])
                .unwrap()
        })?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.failure(resp, &what));
        }
        let mut location = self.location(&resp, &url, &what)?;
        progress.start("uploading", size);
        let mut buf = vec![0u8; CHUNK.min(size as usize)];
        let mut sent = 0u64;
        let mut hasher = Hasher::default();
        while sent < size {
            let n = read_full(r, &mut buf)?;
            ensure!(n > 0, "{what}: the file ended at {sent} of {size} bytes");
            hasher.update(&buf[..n]);
            let chunk = &buf[..n];
            let range = format!("{sent}-{}", sent + n as u64 - 1);
            let loc = location.clone();
            let resp = self.send(|| {
                request(Method::PATCH, &loc)
                    .header("Content-Type", "application/octet-stream")
                    .header("Content-Range", &range)
                    .body(chunk)
                    .unwrap()
            })?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(self.failure(resp, &what));
            }
            location = self.location(&resp, &loc, &what)?;
            sent += n as u64;
            progress.advance(n as u64);
        }
        progress.finish();
        ensure!(
            hasher.finish() == *digest,
            "{what}: the file changed while it was read"
        );
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!(
            "{location}{sep}digest={}",
            percent_encode(&format!("{digest:?}"))
        );
        let resp = self.send(|| {
            request(Method::PUT, &put)
                .header("Content-Length", "0")
                .body(&[][..])
                .unwrap()
        })?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.failure(resp, &what));
        }
        Ok(())
    }

    /// The absolute URL of the Location header of a response to a request
    /// for `url` (a relative location is relative to that request).
    fn location(&self, resp: &Response<Body>, url: &str, what: &str) -> Result<String> {
        let loc = resp
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .with_context(|| format!("{what}: the registry sent no upload location"))?;
        Ok(redirect_target(&url.parse()?, loc)
            .with_context(|| format!("{what}: the upload location"))?
            .to_string())
    }

    /// Downloads a blob to `dest`, resuming from `dest.partial` if an earlier
    /// download stopped, and checks its size and digest before `dest` appears.
    /// Returns the bytes received now.
    pub fn fetch_blob(
        &self,
        digest: &Digest,
        size: u64,
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let partial = PathBuf::from(format!("{}.partial", dest.display()));
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        // One download per file at a time; a second pull waits, then resumes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "locking {}: {}",
                partial.display(),
                std::io::Error::last_os_error()
            );
        }
        if dest.exists() {
            // Left by an earlier pull (or by anyone who can write there):
            // used only if it is the blob.
            if crate::digest::of_file(dest).is_ok_and(|(d, n)| d == *digest && n == size) {
                drop(f);
                let _ = std::fs::remove_file(&partial);
                return Ok(0);
            }
            std::fs::remove_file(dest)
                .with_context(|| format!("removing {}, which is not the blob", dest.display()))?;
        }
        let mut have = f.metadata()?.len();
        if have > size {
            f.set_len(0)?;
            have = 0;
        }
        progress.start("downloading", size);
        progress.advance(have);
        let mut received = 0;
        if have < size {
            received = self.download_into(digest, size, &mut f, have, progress)?;
        }
        progress.finish();
        f.sync_all()?;
        // Check the whole file, including what an earlier run wrote.
        f.seek(SeekFrom::Start(0))?;
        let (got, len) = crate::digest::of_reader(&mut f)?;
        if len != size || got != *digest {
            drop(f);
            let _ = std::fs::remove_file(&partial);
            bail!(
                "blob {digest:?} from {} is corrupt or tampered: got {len} bytes hashing to {got:?}, want {size} bytes; rejected",
                self.reference
            );
        }
        std::fs::rename(&partial, dest)
            .with_context(|| format!("renaming {} into place", partial.display()))?;
        crate::fsutil::sync_dir(dest.parent().unwrap_or(Path::new(".")))?;
        Ok(received)
    }

    fn download_into(
        &self,
        digest: &Digest,
        size: u64,
        f: &mut File,
        have: u64,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let url = self.repo_url(&format!("blobs/{digest:?}"));
        let what = format!("downloading blob {digest:?}");
        let resp = self.send(|| {
            let mut b = request(Method::GET, &url);
            if have > 0 {
                b = b.header("Range", format!("bytes={have}-"));
            }
            b.body(()).unwrap()
        })?;
        let start = match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let from = resp
                    .headers()
                    .get(http::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                ensure!(
                    from == Some(have),
                    "{what}: asked for bytes from {have}, got a different range"
                );
                have
            }
            StatusCode::OK => 0,
            StatusCode::NOT_FOUND => bail!(
                "blob {digest:?} is not in {}/{} (deleted, or the index is stale)",
                self.reference.registry,
                self.reference.repository
            ),
            _ => return Err(self.failure(resp, &what)),
        };
        f.set_len(start)?;
        f.seek(SeekFrom::Start(start))?;
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 256 << 10];
        let began = Instant::now();
        let mut received = 0u64;
        let mut at = start;
        while at < size {
            let n = body
                .read(&mut buf)
                .map_err(|e| anyhow!("{what} from {}: {e}", self.reference.registry))?;
            if n == 0 {
                break;
            }
            let n = n.min((size - at) as usize);
            f.write_all(&buf[..n])?;
            at += n as u64;
            received += n as u64;
            self.received.fetch_add(n as u64, Ordering::Relaxed);
            progress.advance(n as u64);
            if let Some(rate) = self.limit_rate {
                let due = Duration::from_secs_f64(received as f64 / rate.max(1) as f64);
                if let Some(wait) = due.checked_sub(began.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        ensure!(
            at == size,
            "{what} from {}: the connection ended at {at} of {size} bytes (run again to resume)",
            self.reference.registry
        );
        Ok(received)
    }

    /// Bytes `start..start+len` of a blob (a range request; for reading one part of
    /// a large blob, such as a cdimg's header). Unchecked: the caller verifies what
    /// it reads (a cdimg footer names its header's sha256).
    pub fn fetch_range(&self, digest: &Digest, start: u64, len: u64) -> Result<Vec<u8>> {
        ensure!(len > 0 && len <= 1 << 30, "range of {len} bytes refused");
        let url = self.repo_url(&format!("blobs/{digest:?}"));
        let what = format!("reading bytes {start}+{len} of blob {digest:?}");
        let range = format!("bytes={start}-{}", start + len - 1);
        let mut resp = self.send(|| {
            request(Method::GET, &url)
                .header("Range", &range)
                .body(())
                .unwrap()
        })?;
        let data = match resp.status() {
            StatusCode::PARTIAL_CONTENT => resp
                .body_mut()
                .with_config()
                .limit(len)
                .read_to_vec()
                .map_err(|e| anyhow!("{what}: {e}"))?,
            StatusCode::OK => {
                // A registry that ignores ranges sends everything: skip to the part.
                let mut r = resp.into_body().into_reader();
                std::io::copy(&mut (&mut r).take(start), &mut std::io::sink())?;
                let mut v = Vec::new();
                r.take(len).read_to_end(&mut v)?;
                v
            }
            StatusCode::NOT_FOUND => bail!("blob {digest:?} is not in {}", self.reference),
            _ => return Err(self.failure(resp, &what)),
        };
        ensure!(data.len() as u64 == len, "{what}: got {} bytes", data.len());
        self.received.fetch_add(len, Ordering::Relaxed);
        Ok(data)
    }

    /// Downloads a small blob into memory (at most `max` bytes) and checks its digest.
    pub fn fetch_blob_bytes(&self, digest: &Digest, max: u64) -> Result<Vec<u8>> {
        let url = self.repo_url(&format!("blobs/{digest:?}"));
        let what = format!("downloading blob {digest:?}");
        let mut resp = self.send(|| get(&url))?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => bail!(
                "blob {digest:?} is not in {}/{}",
                self.reference.registry,
                self.reference.repository
            ),
            _ => return Err(self.failure(resp, &what)),
        }
        let data = resp
            .body_mut()
            .with_config()
            .limit(max)
            .read_to_vec()
            .map_err(|e| anyhow!("{what}: {e}"))?;
        self.received
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let got = Digest::of(&data);
        ensure!(
            got == *digest,
            "blob {digest:?} from {} is corrupt or tampered: its content hashes to {got:?}; rejected",
            self.reference
        );
        Ok(data)
    }

    /// POSTs JSON to `path` below the server's base URL (the update server's
    /// negotiation) and returns the answer's body.
    pub fn post_json(&self, path: &str, body: &[u8]) -> Result<Vec<u8>> {
        let url = format!("{}{path}", self.base);
        let mut resp = self.send(|| {
            request(Method::POST, &url)
                .header("Content-Type", "application/json")
                .body(body)
                .unwrap()
        })?;
        if !resp.status().is_success() {
            return Err(self.failure(resp, "the update server"));
        }
        resp.body_mut()
            .with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .map_err(|e| anyhow!("POST {path}: {e}"))
    }

    /// A manifest by tag or digest, with its digest; `None` if there is none.
    pub fn get_manifest(&self, reference: &str) -> Result<Option<(Vec<u8>, Digest)>> {
        let url = self.repo_url(&format!("manifests/{reference}"));
        let mut resp = self.send(|| {
            request(Method::GET, &url)
                .header("Accept", ACCEPT_MANIFESTS)
                .body(())
                .unwrap()
        })?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.failure(resp, &format!("fetching manifest {reference}"))),
        }
        let data = resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .map_err(|e| anyhow!("fetching manifest {reference}: {e}"))?;
        let digest = Digest::of(&data);
        if let Ok(want) = reference.parse::<Digest>() {
            ensure!(
                want == digest,
                "manifest {reference} from {} hashes to {digest:?}; rejected",
                self.reference.registry
            );
        }
        Ok(Some((data, digest)))
    }

    /// The referrers API's image index for `subject`; `None` where the
    /// registry has no referrers API.
    pub fn referrers(&self, subject: &Digest) -> Result<Option<Vec<u8>>> {
        let url = self.repo_url(&format!("referrers/{}", subject.oci()));
        let what = format!("listing the referrers of {}", subject.oci());
        let mut resp = self.send(|| get(&url))?;
        let is_index = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/vnd.oci.image.index.v1+json"));
        match resp.status() {
            // A registry without the API answers 404, or (some proxies) 200
            // with something that is not an index.
            s if s.is_success() && is_index => {}
            s if s.is_success() || s == StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.failure(resp, &what)),
        }
        let data = resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .map_err(|e| anyhow!("{what}: {e}"))?;
        Ok(Some(data))
    }

    /// The repository's tags (`/tags/list`, following `Link` pages), or none
    /// if the repository does not exist yet.
    pub fn list_tags(&self) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut tags = Vec::new();
        let mut url = self.repo_url("tags/list");
        for _ in 0..MAX_TAG_PAGES {
            let mut resp = self.send(|| get(&url))?;
            match resp.status() {
                s if s.is_success() => {}
                StatusCode::NOT_FOUND => return Ok(tags),
                _ => return Err(self.failure(resp, "listing tags")),
            }
            let next = resp
                .headers()
                .get(http::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            let body = resp
                .body_mut()
                .with_config()
                .limit(MAX_MANIFEST)
                .read_to_vec()
                .map_err(|e| anyhow!("listing tags: {e}"))?;
            let page: Page = serde_json::from_slice(&body).context("listing tags")?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(n) => url = redirect_target(&url.parse()?, &n)?.to_string(),
                None => return Ok(tags),
            }
        }
        bail!("listing tags: more than {MAX_TAG_PAGES} pages")
    }

    /// Stores a manifest under a tag or its digest.
    pub fn put_manifest(&self, reference: &str, data: &[u8], media_type: &str) -> Result<Digest> {
        self.store_manifest(reference, data, media_type)
            .map(|(d, _)| d)
    }

    /// Stores a manifest that has a `subject`; also says whether the registry
    /// indexed it for its referrers API (it answers with `OCI-Subject`).
    pub fn put_referrer(&self, data: &[u8], media_type: &str) -> Result<(Digest, bool)> {
        self.store_manifest(&Digest::of(data).oci(), data, media_type)
    }

    fn store_manifest(
        &self,
        reference: &str,
        data: &[u8],
        media_type: &str,
    ) -> Result<(Digest, bool)> {
        let url = self.repo_url(&format!("manifests/{reference}"));
        let what = format!("storing manifest {reference}");
        let digest = Digest::of(data);
        let mut attempt = 0;
        loop {
            let mut resp = self.send(|| {
                request(Method::PUT, &url)
                    .header("Content-Type", media_type)
                    .body(data)
                    .unwrap()
            })?;
            if resp.status().is_success() {
                let indexed = resp.headers().contains_key("OCI-Subject");
                return Ok((digest, indexed));
            }
            // Storing the same manifest is idempotent, so a passing failure is
            // tried again: docker-registry answers DIGEST_INVALID (or 500) when
            // two clients store the same manifest at once and it reads the
            // other's half-written copy.
            let status = resp.status();
            let message = error_message(&mut resp);
            let passing = status.is_server_error()
                || (status == StatusCode::BAD_REQUEST
                    && message
                        .as_deref()
                        .is_some_and(|m| m.starts_with("DIGEST_INVALID")));
            if !passing || attempt == RETRIES {
                return Err(self.error(&what, status, message));
            }
            std::thread::sleep(Duration::from_millis(200 << attempt));
            attempt += 1;
        }
    }
}

/// Times a GET or HEAD is tried again after a server error, a rate limit or
/// a broken connection.
const RETRIES: u32 = 3;

/// The longest pause a `Retry-After` gets (a longer one is cut to this).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The pause a response's `Retry-After` (in seconds) asks for, within
/// [`MAX_RETRY_AFTER`].
fn retry_after(resp: &Response<Body>) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Pages of tags read at most.
const MAX_TAG_PAGES: usize = 100;

/// The target of a `Link: <url>; rel="next"` header.
fn next_link(h: &str) -> Option<String> {
    h.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params.contains(r#"rel="next""#).then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

/// Redirects followed for one request.
const MAX_REDIRECTS: usize = 5;

/// Where a redirect from `from` to `location` leads: a relative location
/// resolves against `from`; https never leads to plain http.
fn redirect_target(from: &http::Uri, location: &str) -> Result<http::Uri> {
    let to: http::Uri = if location.starts_with("http://") || location.starts_with("https://") {
        location.parse()?
    } else {
        let mut parts = from.clone().into_parts();
        let path = if location.starts_with('/') {
            location.to_string()
        } else {
            let base = from.path();
            format!(
                "{}{location}",
                &base[..base.rfind('/').map_or(0, |i| i + 1)]
            )
        };
        parts.path_and_query = Some(path.parse()?);
        http::Uri::from_parts(parts)?
    };
    ensure!(
        !(from.scheme_str() == Some("https") && to.scheme_str() == Some("http")),
        "refusing a redirect from https to plain http ({to})"
    );
    Ok(to)
}

/// Whether `uri` has the scheme, host and port of the URL `base`.
fn same_origin(uri: &http::Uri, base: &str) -> bool {
    let Ok(b) = base.parse::<http::Uri>() else {
        return false;
    };
    let port = |u: &http::Uri| {
        u.port_u16().or(match u.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        })
    };
    uri.scheme() == b.scheme()
        && uri.host().map(str::to_ascii_lowercase) == b.host().map(str::to_ascii_lowercase)
        && port(uri) == port(&b)
}

/// A GET or HEAD again: the same method and headers, to `uri`.
fn bodiless(
    method: &Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> Result<http::Request<()>> {
    let mut req = http::Request::builder()
        .method(method.clone())
        .uri(uri.clone())
        .body(())?;
    *req.headers_mut() = headers.clone();
    Ok(req)
}

fn request(method: Method, url: &str) -> http::request::Builder {
    http::Request::builder().method(method).uri(url)
}

fn get(url: &str) -> http::Request<()> {
    request(Method::GET, url).body(()).unwrap()
}

fn head(url: &str) -> http::Request<()> {
    request(Method::HEAD, url).body(()).unwrap()
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A transport error in a few words ("Connection refused", "timed out").
fn transport_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// The registry's own message in an error response's body, if it has one.
fn error_message(resp: &mut Response<Body>) -> Option<String> {
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 << 10)
        .read_to_vec()
        .unwrap_or_default();
    registry_message(&body)
}

/// The first message of an OCI error body (`{"errors":[{"code","message"}]}`).
fn registry_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Error>,
    }
    #[derive(serde::Deserialize)]
    struct Error {
        code: Option<String>,
        message: Option<String>,
    }
    let e: Errors = serde_json::from_slice(body).ok()?;
    let first = e.errors.into_iter().next()?;
    Some(
        [first.code, first.message]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": "),
    )
}

/// Percent-encodes a query parameter value.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_reads_errors() {
        assert_eq!(
            percent_encode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
        assert_eq!(
            registry_message(
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
            ),
            Some("MANIFEST_UNKNOWN: manifest unknown".into())
        );
        assert_eq!(registry_message(b"<html>"), None);
    }

    #[test]
    fn redirects_resolve_and_never_downgrade() {
        let from: http::Uri = "https://r.example/v2/a/blobs/sha256:x".parse().unwrap();
        let to = |l: &str| redirect_target(&from, l).map(|u| u.to_string());
        assert_eq!(to("/b").unwrap(), "https://r.example/b");
        assert_eq!(to("c?x=1").unwrap(), "https://r.example/v2/a/blobs/c?x=1");
        assert_eq!(
            to("https://cdn.example/o").unwrap(),
            "https://cdn.example/o"
        );
        assert!(to("http://cdn.example/o").is_err());
        let base = "https://r.example";
        for (u, same) in [
            ("https://r.example/v2/", true),
            ("https://R.example:443/x", true),
            ("http://r.example/x", false),
            ("https://r.example:8443/x", false),
            ("https://cdn.example/x", false),
        ] {
            assert_eq!(same_origin(&u.parse().unwrap(), base), same, "{u}");
        }
    }

    /// A scripted peer on loopback: answers each request with what `answer`
    /// returns for its request line and headers, and records every request.
    struct Peer {
        addr: std::net::SocketAddr,
        seen: std::sync::Arc<Mutex<Vec<String>>>,
    }

    impl Peer {
        fn start(ip: &str, answer: impl Fn(&str) -> String + Send + 'static) -> Peer {
            use std::io::{BufRead, BufReader};
            let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
            let log = seen.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming().take(20) {
                    let Ok(mut conn) = conn else { return };
                    // A TLS hello has no line end: answer it after a moment.
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(300)));
                    let mut head = String::new();
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    log.lock().unwrap().push(head.clone());
                    let _ = conn.write_all(answer(&head).as_bytes());
                }
            });
            Peer { addr, seen }
        }

        fn saw_authorization(&self) -> bool {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .any(|h| h.to_ascii_lowercase().contains("authorization:"))
        }
    }

    fn reply(status: &str, extra: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// A registry that is busy (429 with `Retry-After`, or 503) is asked again
    /// after the pause it asks for, and the read succeeds.
    #[test]
    fn a_busy_registry_is_asked_again() {
        use std::sync::atomic::AtomicUsize;
        let blob = "the blob";
        let digest = Digest::of(blob.as_bytes());
        let tries = std::sync::Arc::new(AtomicUsize::new(0));
        let t = tries.clone();
        let peer = Peer::start("127.0.0.1", move |head| {
            if !head.contains("/blobs/") {
                return reply("200 OK", "", "{}");
            }
            match t.fetch_add(1, Ordering::SeqCst) {
                0 => reply("429 Too Many Requests", "Retry-After: 1\r\n", ""),
                1 => reply("503 Service Unavailable", "", ""),
                _ => reply("200 OK", "", blob),
            }
        });
        let reference = Reference::parse(&format!("{}/a/b:t", peer.addr)).unwrap();
        let reg = Registry::connect(&reference, &ConnectOptions::default()).unwrap();
        let started = Instant::now();
        assert_eq!(
            reg.fetch_blob_bytes(&digest, 1 << 20).unwrap(),
            blob.as_bytes()
        );
        assert_eq!(tries.load(Ordering::SeqCst), 3);
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "Retry-After not honoured"
        );
    }

    /// A registry off loopback named without a scheme is spoken to over
    /// HTTPS; plain HTTP only with `--tls-verify=false` (`insecure`), and
    /// then without credentials until the registry asks for them.
    #[test]
    fn plain_http_only_with_tls_verify_false() {
        let peer = Peer::start("127.0.0.1", |_| reply("200 OK", "", "{}"));
        let mut reference = Reference::parse(&format!("{}/a/b:t", peer.addr)).unwrap();
        // As a bare non-loopback HOST:PORT parses.
        reference.plain_http = false;
        let opts = ConnectOptions {
            credentials: Some(Credentials {
                user: "u".into(),
                password: "secret".into(),
            }),
            ..Default::default()
        };
        let err = Registry::connect(&reference, &opts).err().unwrap();
        assert!(
            format!("{err:#}").contains("cannot reach registry"),
            "{err:#}"
        );
        let insecure = ConnectOptions {
            insecure: true,
            ..opts
        };
        let reg = Registry::connect(&reference, &insecure).unwrap();
        assert!(reg.base.starts_with("http://"), "{}", reg.base);
        assert!(!peer.saw_authorization());
    }

    /// Referrers come from the registry's API where it answers with an image
    /// index, and from the `sha256-<hex>` fallback tag where it answers 404
    /// (docker-registry 2.8, which the end-to-end tests use).
    #[test]
    fn referrers_from_the_api_or_the_fallback_tag() {
        use crate::registry::referrers;
        let subject = Digest::of(b"an image manifest");
        let index = |t: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1,"artifactType":"{t}"}}]}}"#,
                Digest::of(t.as_bytes()).oci()
            )
        };
        let listed = |api: bool| {
            let (with_api, fallback) = (index("from-api"), index("from-tag"));
            let tag = referrers::fallback_tag(&subject);
            let peer = Peer::start("127.0.0.1", move |head| {
                if head.starts_with("GET /v2/ ") {
                    reply("200 OK", "", "{}")
                } else if head.contains("/referrers/") && api {
                    let ct = "Content-Type: application/vnd.oci.image.index.v1+json\r\n";
                    reply("200 OK", ct, &with_api)
                } else if head.contains(&format!("/manifests/{tag} ")) {
                    reply("200 OK", "", &fallback)
                } else {
                    reply("404 Not Found", "", "")
                }
            });
            let r = Reference::parse(&format!("{}/a/b", peer.addr)).unwrap();
            let reg = Registry::connect(&r, &ConnectOptions::default()).unwrap();
            let l = referrers::list(&reg, &subject).unwrap();
            l.iter()
                .map(|d| d.artifact_type.clone().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(listed(true), ["from-api"]);
        assert_eq!(listed(false), ["from-tag"]);
    }

    /// A registry that wants a login and keeps its blobs elsewhere: the blob
    /// is fetched through the redirect, and the password stays with the
    /// registry.
    #[test]
    fn credentials_stay_with_the_registry_host() {
        let blob = "hello blob";
        let digest = Digest::of(blob.as_bytes());
        let elsewhere = Peer::start("127.0.0.2", move |head| {
            if head.starts_with("PUT ") {
                reply("201 Created", "", "")
            } else if head.starts_with("PATCH ") {
                reply("202 Accepted", "Location: /stored?upload=1\r\n", "")
            } else {
                reply("200 OK", "", blob)
            }
        });
        let other = format!("http://{}/stored", elsewhere.addr);
        let registry = Peer::start("127.0.0.1", move |head| {
            let authed = head.to_ascii_lowercase().contains("authorization: basic");
            if !authed {
                reply(
                    "401 Unauthorized",
                    "WWW-Authenticate: Basic realm=\"r\"\r\n",
                    "",
                )
            } else if head.starts_with("GET /v2/ ") {
                reply("200 OK", "", "{}")
            } else if head.starts_with("HEAD ") {
                reply("404 Not Found", "", "")
            } else if head.starts_with("POST ") {
                // An upload location on another host.
                reply(
                    "202 Accepted",
                    &format!("Location: {other}?upload=1\r\n"),
                    "",
                )
            } else {
                reply(
                    "307 Temporary Redirect",
                    &format!("Location: {other}\r\n"),
                    "",
                )
            }
        });
        let reference = Reference::parse(&format!("{}/a/b:t", registry.addr)).unwrap();
        let opts = ConnectOptions {
            credentials: Some(Credentials {
                user: "u".into(),
                password: "secret".into(),
            }),
            ..Default::default()
        };
        let reg = Registry::connect(&reference, &opts).unwrap();
        assert_eq!(
            reg.fetch_blob_bytes(&digest, 1 << 20).unwrap(),
            blob.as_bytes()
        );
        assert!(
            !elsewhere.saw_authorization(),
            "the password followed the redirect"
        );
        reg.push_blob_bytes(b"pushed").unwrap();
        assert!(registry.saw_authorization());
        let puts = elsewhere
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.starts_with("PUT "))
            .count();
        assert_eq!(puts, 1, "the upload went to its location");
        assert!(
            !elsewhere.saw_authorization(),
            "the password went to the upload location"
        );
    }

    /// A token realm over plain http off this machine never gets the password.
    #[test]
    fn a_plain_http_token_realm_gets_no_credentials() {
        let registry = Peer::start("127.0.0.1", |_| {
            reply(
                "401 Unauthorized",
                "WWW-Authenticate: Bearer realm=\"http://auth.example.invalid/token\",service=\"r\"\r\n",
                "",
            )
        });
        let reference = Reference::parse(&format!("{}/a/b:t", registry.addr)).unwrap();
        let opts = ConnectOptions {
            credentials: Some(Credentials {
                user: "u".into(),
                password: "secret".into(),
            }),
            ..Default::default()
        };
        let err = Registry::connect(&reference, &opts).err().unwrap();
        assert!(format!("{err:#}").contains("not https"), "{err:#}");
    }

    /// A file already at a download's destination is used only if it is the
    /// blob; anything else there is replaced by the real download.
    #[test]
    fn a_planted_download_is_fetched_again() {
        let blob = "the real blob";
        let digest = Digest::of(blob.as_bytes());
        let registry = Peer::start("127.0.0.1", move |head| {
            if head.starts_with("GET /v2/ ") {
                reply("200 OK", "", "{}")
            } else {
                reply("200 OK", "", blob)
            }
        });
        let reference = Reference::parse(&format!("{}/a/b:t", registry.addr)).unwrap();
        let reg = Registry::connect(&reference, &ConnectOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join(digest.hex());
        std::fs::write(&dest, b"planted, not the blob").unwrap();
        let silent = crate::progress::Silent;
        reg.fetch_blob(&digest, blob.len() as u64, &dest, &silent)
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), blob.as_bytes());
        // The real blob there now: used as it is, nothing downloaded.
        let asked = registry.seen.lock().unwrap().len();
        assert_eq!(
            reg.fetch_blob(&digest, blob.len() as u64, &dest, &silent)
                .unwrap(),
            0
        );
        assert_eq!(registry.seen.lock().unwrap().len(), asked);
    }
}
