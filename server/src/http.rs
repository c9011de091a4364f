//! The HTTP surface: `/v2/...` (blobs with ranges, chunked uploads, manifests by
//! tag or digest) and `POST /d4c/v1/pull`. Disk and CPU work runs on blocking
//! threads, so many clients are served at once.

use std::io::SeekFrom;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use d4c_host::digest::Digest;
use d4c_host::registry::artifact::{Manifest, INDEX_TAG};
use d4c_host::registry::reference::valid_repository;
use d4c_host::update::protocol::{PullRequest, PULL_PATH};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio_stream::StreamExt;

use crate::auth::{Access, Auth, TOKEN_PATH};
use crate::negotiate::Negotiator;
use crate::store::{QuotaExceeded, Store, Upload, UploadError, MAX_MANIFEST};
use crate::ApiError;

/// What the handlers share.
pub struct Server {
    /// The store.
    pub store: Arc<Store>,
    /// Pull planning and merging.
    pub negotiator: Negotiator,
    /// Who may do what; None: anyone may do anything (a trusted network).
    pub auth: Option<Auth>,
    /// Whether clients reach it over TLS (for the token realm's URL).
    pub tls: bool,
}

/// The server's routes.
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route(PULL_PATH, post(pull))
        .route(TOKEN_PATH, get(token))
        .fallback(registry)
        .layer(middleware::from_fn_with_state(server.clone(), authenticate))
        .layer(middleware::from_fn(count))
        .with_state(server)
}

/// Counts every request by route and status (`d4c_serve_requests_total`).
async fn count(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let name = match path {
        PULL_PATH => "pull",
        TOKEN_PATH => "token",
        _ => match route(path) {
            Some(Route::Base) => "base",
            Some(Route::Uploads(_) | Route::Upload(..)) => "upload",
            Some(Route::Blob(_)) => "blob",
            Some(Route::Manifest(..)) => "manifest",
            Some(Route::Tags(_)) => "tags",
            None => "other",
        },
    };
    let resp = next.run(req).await;
    let code = resp.status().as_u16().to_string();
    d4c_host::metrics::inc("d4c_serve_requests_total", &[name, &code]);
    resp
}

/// Lets a request through if the server's [`Auth`] allows it; otherwise 401
/// with the challenge that tells the client how to log in.
async fn authenticate(State(s): State<Arc<Server>>, req: Request, next: Next) -> Response {
    let Some(auth) = &s.auth else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if path == TOKEN_PATH {
        return next.run(req).await;
    }
    let read = matches!(*req.method(), Method::GET | Method::HEAD)
        || (req.method() == Method::POST && path == PULL_PATH);
    let access = if read { Access::Read } else { Access::Write };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // bcrypt is slow on purpose: off the async threads.
    let st = s.clone();
    let allowed = tokio::task::spawn_blocking(move || {
        st.auth
            .as_ref()
            .is_some_and(|a| a.allows(given.as_deref(), access))
    })
    .await
    .unwrap_or(false);
    if allowed {
        return next.run(req).await;
    }
    let challenge = auth.challenge(&base_url(&s, req.headers()));
    let mut resp = ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "UNAUTHORIZED",
        message: "authentication required".into(),
    }
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// `scheme://host` as the client addressed the server.
fn base_url(s: &Server, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("{}://{host}", if s.tls { "https" } else { "http" })
}

/// The token endpoint: a bearer token for valid Basic credentials.
async fn token(State(s): State<Arc<Server>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let refused = || ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "UNAUTHORIZED",
        message: "a valid user name and password are required".into(),
    };
    let Some(auth) = s.auth.as_ref() else {
        return Err(ApiError::not_found(
            "UNSUPPORTED",
            "this server has no logins",
        ));
    };
    // bcrypt is slow on purpose: off the async threads.
    let st = s.clone();
    let token = tokio::task::spawn_blocking(move || {
        st.auth.as_ref().and_then(|a| a.issue(given.as_deref()))
    })
    .await
    .map_err(blocking_err)?
    .ok_or_else(refused)?;
    Ok(Json(serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": auth.token_ttl(),
    }))
    .into_response())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{"code": self.code, "message": self.message}]
        });
        (self.status, Json(body)).into_response()
    }
}

async fn pull(State(s): State<Arc<Server>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: PullRequest = serde_json::from_slice(&body)
        .context("not a pull request")
        .map_err(ApiError::bad_request)?;
    let what = format!(
        "pull {}:{} holding {} image(s)",
        req.repository,
        req.tag,
        req.have.len()
    );
    let answer = tokio::task::spawn_blocking(move || s.negotiator.pull(&req))
        .await
        .map_err(|e| ApiError::internal(e.into()))?;
    // One line per negotiation: what operators ask about first.
    match &answer {
        Ok(a) => tracing::info!(
            "{what}: {} step(s), {} bytes{}{}",
            a.plan.steps.len(),
            a.plan.bytes,
            if a.merged_from > 1 {
                format!(" ({} deltas merged)", a.merged_from)
            } else {
                String::new()
            },
            match a.plan.steps.last().and_then(|s| s.compact.as_ref()) {
                Some(_) => " with the delta in compact form",
                None => "",
            }
        ),
        Err(e) => tracing::warn!("{what}: {}", e.message),
    }
    let result = if answer.is_ok() { "planned" } else { "failed" };
    d4c_host::metrics::inc("d4c_serve_pulls_total", &[result]);
    Ok(Json(answer?).into_response())
}

/// What a `/v2/` path names.
enum Route {
    Base,
    Uploads(String),
    Upload(String, String),
    Blob(String),
    Manifest(String, String),
    Tags(String),
}

fn route(path: &str) -> Option<Route> {
    let p = path.strip_prefix("/v2")?;
    if p.is_empty() || p == "/" {
        return Some(Route::Base);
    }
    let p = p.strip_prefix('/')?;
    if let Some(name) = p.strip_suffix("/tags/list") {
        return valid_repository(name).then(|| Route::Tags(name.to_string()));
    }
    // The repository name may itself hold "blobs" or "manifests": the last marker counts.
    let marker = ["/blobs/uploads", "/blobs/", "/manifests/"]
        .into_iter()
        .filter_map(|m| p.rfind(m).map(|i| (i, m)))
        .max_by_key(|&(i, m)| (i, m.len()))?;
    let (i, m) = marker;
    let name = p[..i].to_string();
    if !valid_repository(&name) {
        return None;
    }
    let rest = &p[i + m.len()..];
    match m {
        "/blobs/uploads" => match rest.trim_start_matches('/') {
            "" => Some(Route::Uploads(name)),
            id if !id.contains('/') => Some(Route::Upload(name, id.to_string())),
            _ => None,
        },
        "/blobs/" if !rest.contains('/') => Some(Route::Blob(rest.to_string())),
        "/manifests/" if !rest.contains('/') => Some(Route::Manifest(name, rest.to_string())),
        _ => None,
    }
}

async fn registry(State(s): State<Arc<Server>>, req: Request) -> Response {
    match handle(s, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn blocking_err(e: tokio::task::JoinError) -> ApiError {
    ApiError::internal(e.into())
}

async fn handle(s: Arc<Server>, req: Request) -> Result<Response, ApiError> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers = req.headers().clone();
    let body = req.into_body();
    let unknown = || ApiError::not_found("UNSUPPORTED", format!("{method} {path}"));
    let Some(r) = route(&path) else {
        return Err(unknown());
    };
    match (r, &method) {
        (Route::Base, &Method::GET | &Method::HEAD) => Ok((
            [("Docker-Distribution-API-Version", "registry/2.0")],
            Json(serde_json::json!({})),
        )
            .into_response()),
        (Route::Uploads(name), &Method::POST) => {
            let id = {
                let s = s.clone();
                tokio::task::spawn_blocking(move || s.store.new_upload())
                    .await
                    .map_err(blocking_err)?
                    .map_err(ApiError::internal)?
            };
            Ok(Response::builder()
                .status(StatusCode::ACCEPTED)
                .header(header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}"))
                .header("Docker-Upload-UUID", &id)
                .header(header::RANGE, "0-0")
                .header(header::CONTENT_LENGTH, "0")
                .body(Body::empty())
                .unwrap())
        }
        (Route::Upload(name, id), &Method::PATCH | &Method::PUT) => {
            let upload = s.store.claim_upload(&id).map_err(|e| match e {
                UploadError::Unknown => {
                    ApiError::not_found("BLOB_UPLOAD_UNKNOWN", format!("upload {id}"))
                }
                UploadError::Busy => ApiError {
                    status: StatusCode::CONFLICT,
                    code: "BLOB_UPLOAD_INVALID",
                    message: format!("upload {id} is being written by another request"),
                },
            })?;
            let declared = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let len = append_body(&upload, declared, body).await?;
            if method == Method::PATCH {
                return Ok(Response::builder()
                    .status(StatusCode::ACCEPTED)
                    .header(header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}"))
                    .header("Docker-Upload-UUID", &id)
                    .header(header::RANGE, format!("0-{}", len.saturating_sub(1)))
                    .header(header::CONTENT_LENGTH, "0")
                    .body(Body::empty())
                    .unwrap());
            }
            let digest: Digest = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("digest="))
                .map(|d| d.replace("%3A", ":").replace("%3a", ":"))
                .ok_or_else(|| {
                    ApiError::bad_request(anyhow::anyhow!("PUT of an upload needs ?digest="))
                })?
                .parse()
                .map_err(ApiError::bad_request)?;
            // Still claimed while it is hashed and stored: nothing can write
            // into it after this PUT's body.
            tokio::task::spawn_blocking(move || upload.finish(&digest))
                .await
                .map_err(blocking_err)?
                .map_err(|e| ApiError {
                    status: StatusCode::BAD_REQUEST,
                    code: "DIGEST_INVALID",
                    message: format!("{e:#}"),
                })?;
            Ok(Response::builder()
                .status(StatusCode::CREATED)
                .header(header::LOCATION, format!("/v2/{name}/blobs/{digest:?}"))
                .header("Docker-Content-Digest", format!("{digest:?}"))
                .header(header::CONTENT_LENGTH, "0")
                .body(Body::empty())
                .unwrap())
        }
        (Route::Tags(name), &Method::GET) => {
            let st = s.clone();
            let n = name.clone();
            let tags = tokio::task::spawn_blocking(move || st.store.tags(&n))
                .await
                .map_err(blocking_err)?
                .map_err(ApiError::internal)?;
            if tags.is_empty() {
                return Err(ApiError::not_found(
                    "NAME_UNKNOWN",
                    format!("repository {name}"),
                ));
            }
            Ok(Json(serde_json::json!({"name": name, "tags": tags})).into_response())
        }
        (Route::Blob(d), &Method::GET | &Method::HEAD) => {
            let digest: Digest = d.parse().map_err(|_| {
                ApiError::not_found("DIGEST_INVALID", format!("not a sha256 digest: {d}"))
            })?;
            let size = s
                .store
                .blob_size(&digest)
                .ok_or_else(|| ApiError::not_found("BLOB_UNKNOWN", format!("blob {d}")))?;
            serve_blob(&s.store, &digest, size, &headers, method == Method::HEAD).await
        }
        (Route::Manifest(name, reference), &Method::GET | &Method::HEAD) => {
            let st = s.clone();
            let (n, r) = (name.clone(), reference.clone());
            let found = tokio::task::spawn_blocking(move || st.store.manifest(&n, &r))
                .await
                .map_err(blocking_err)?
                .map_err(ApiError::bad_request)?;
            let (data, digest) = found.ok_or_else(|| {
                ApiError::not_found("MANIFEST_UNKNOWN", format!("{name}:{reference}"))
            })?;
            let media = serde_json::from_slice::<serde_json::Value>(&data)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
                .unwrap_or_else(|| d4c_host::registry::client::OCI_MANIFEST.to_string());
            let len = data.len();
            let body = if method == Method::HEAD {
                Body::empty()
            } else {
                Body::from(data)
            };
            Ok(Response::builder()
                .header(header::CONTENT_TYPE, media)
                .header(header::CONTENT_LENGTH, len)
                .header("Docker-Content-Digest", format!("{digest:?}"))
                .body(body)
                .unwrap())
        }
        (Route::Manifest(name, reference), &Method::PUT) => {
            let data = axum::body::to_bytes(body, MAX_MANIFEST as usize)
                .await
                .map_err(|e| ApiError::bad_request(anyhow::anyhow!("manifest body: {e}")))?;
            let m = Manifest::parse(&data).map_err(ApiError::bad_request)?;
            let st = s.clone();
            let n = name.clone();
            let r = reference.clone();
            let digest = tokio::task::spawn_blocking(move || {
                // No garbage collection between the check and the tag.
                let _pinned = st.store.pin();
                for b in std::iter::once(&m.config).chain(&m.layers) {
                    let d = b.sha256().map_err(ApiError::bad_request)?;
                    if st.store.blob_size(&d) != Some(b.size) {
                        return Err(ApiError::not_found(
                            "MANIFEST_BLOB_UNKNOWN",
                            format!("blob {d:?} of {} bytes is not here", b.size),
                        ));
                    }
                }
                st.store
                    .put_manifest(&n, &r, &data)
                    .map_err(ApiError::bad_request)
            })
            .await
            .map_err(blocking_err)??;
            if reference.parse::<Digest>().is_err() && reference != INDEX_TAG {
                tracing::info!("{name}:{reference} is now {digest:?}");
            }
            Ok(Response::builder()
                .status(StatusCode::CREATED)
                .header(header::LOCATION, format!("/v2/{name}/manifests/{digest:?}"))
                .header("Docker-Content-Digest", format!("{digest:?}"))
                .header(header::CONTENT_LENGTH, "0")
                .body(Body::empty())
                .unwrap())
        }
        _ => Err(unknown()),
    }
}

/// Appends a request body to a claimed upload, up to its size limit; returns
/// the upload's length. A body that its Content-Length (`declared`) already
/// puts past the limit is refused before a byte of it is read (a client that
/// sent `Expect: 100-continue` then sends nothing).
async fn append_body(upload: &Upload, declared: Option<u64>, body: Body) -> Result<u64, ApiError> {
    let io = |e: std::io::Error| ApiError::internal(e.into());
    let too_large = || ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "SIZE_INVALID",
        message: format!("a blob may not exceed {} bytes here", upload.max_len()),
    };
    let mut f = tokio::fs::OpenOptions::new()
        .append(true)
        .open(upload.path())
        .await
        .map_err(io)?;
    let mut len = f.metadata().await.map_err(io)?.len();
    if len.saturating_add(declared.unwrap_or(0)) > upload.max_len() {
        return Err(too_large());
    }
    let full = |q: QuotaExceeded| ApiError {
        status: StatusCode::INSUFFICIENT_STORAGE,
        code: "DENIED",
        message: format!("the server's store is full (quota {} bytes)", q.quota),
    };
    // Refused before the body if it cannot fit (charged as it is written).
    upload.fits(declared.unwrap_or(0)).map_err(full)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(anyhow::anyhow!("{e}")))?;
        len += chunk.len() as u64;
        if len > upload.max_len() {
            return Err(too_large());
        }
        upload.charge(chunk.len() as u64).map_err(full)?;
        f.write_all(&chunk).await.map_err(io)?;
    }
    f.flush().await.map_err(io)?;
    Ok(len)
}

/// A blob, whole or from a `Range: bytes=N-[M]`.
async fn serve_blob(
    store: &Store,
    digest: &Digest,
    size: u64,
    headers: &HeaderMap,
    head_only: bool,
) -> Result<Response, ApiError> {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| {
            let (a, b) = v.split_once('-')?;
            let start: u64 = a.parse().ok()?;
            let end: u64 = if b.is_empty() {
                size.checked_sub(1)?
            } else {
                b.parse::<u64>().ok()?.min(size.checked_sub(1)?)
            };
            Some((start, end))
        });
    let mut resp = Response::builder()
        .header("Docker-Content-Digest", format!("{digest:?}"))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes");
    let (start, len) = match range {
        Some((start, end)) if start <= end && end < size => {
            resp = resp
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
            (start, end - start + 1)
        }
        Some(_) => {
            return Ok(Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .body(Body::empty())
                .unwrap())
        }
        None => (0, size),
    };
    resp = resp.header(header::CONTENT_LENGTH, HeaderValue::from(len));
    if head_only {
        return Ok(resp.body(Body::empty()).unwrap());
    }
    d4c_host::metrics::add("d4c_serve_blob_bytes_sent_total", &[], len);
    let mut f = tokio::fs::File::open(store.blob_path(digest))
        .await
        .map_err(|e| ApiError::internal(e.into()))?;
    f.seek(SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::internal(e.into()))?;
    let stream = tokio_util::io::ReaderStream::new(tokio::io::AsyncReadExt::take(f, len));
    Ok(resp.body(Body::from_stream(stream)).unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(route("/v2/"), Some(Route::Base)));
        assert!(matches!(route("/v2/a/b/blobs/uploads/"), Some(Route::Uploads(n)) if n == "a/b"));
        assert!(
            matches!(route("/v2/a/blobs/uploads/abc"), Some(Route::Upload(n, i)) if n == "a" && i == "abc")
        );
        assert!(matches!(route("/v2/a/blobs/sha256:00"), Some(Route::Blob(d)) if d == "sha256:00"));
        assert!(route("/v2/A/blobs/sha256:00").is_none());
        assert!(
            matches!(route("/v2/x/blobs/y/manifests/v1"), Some(Route::Manifest(n, r)) if n == "x/blobs/y" && r == "v1")
        );
        assert!(route("/v3/").is_none());
        assert!(matches!(route("/v2/a/b/tags/list"), Some(Route::Tags(n)) if n == "a/b"));
        assert!(route("/v2/A/tags/list").is_none());
    }
}
