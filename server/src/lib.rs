//! The d4c update server (`d4c serve`): takes pushes through the subset of the
//! OCI distribution API that `d4c push` and `d4c pull` use, and answers
//! `POST /d4c/v1/pull` by choosing the cheapest path the client can decode and
//! merging its deltas into one (docs/ARCHITECTURE.md, "Update server").
//!
//! - [`auth`]: htpasswd users, Basic or bearer-token logins, anonymous reads.
//! - [`store`]: blobs, uploads, tags and merged results on disk.
//! - [`negotiate`]: planning and server-side merging.
//! - [`http`]: the HTTP surface.
//! - [`tls`]: TLS listening (rustls).

pub mod auth;
pub mod http;
pub mod negotiate;
pub mod store;
pub mod tls;

use axum::http::StatusCode;

/// An error answered to a client: an HTTP status and an OCI error body.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OCI error code, e.g. `BLOB_UNKNOWN`.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
}

impl ApiError {
    /// 404 with `code`.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code,
            message: message.into(),
        }
    }

    /// 400: the request is wrong.
    pub fn bad_request(e: anyhow::Error) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "UNSUPPORTED",
            message: format!("{e:#}"),
        }
    }

    /// 409: there is no path this client can take.
    pub fn no_path(e: anyhow::Error) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            code: "NO_UPDATE_PATH",
            message: format!("{e:#}"),
        }
    }

    /// 500: the server failed.
    pub fn internal(e: anyhow::Error) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "UNKNOWN",
            message: format!("{e:#}"),
        }
    }
}
