//! The update server's negotiation request (`POST /d4c/v1/pull`). Everything
//! else a client does with the server is the OCI distribution API.

use serde::{Deserialize, Serialize};

use super::plan::Plan;
use crate::digest::Digest;

/// The negotiation endpoint, below the server's base URL.
pub const PULL_PATH: &str = "/d4c/v1/pull";

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// The repository.
    pub repository: String,
    /// The tag of the wanted image.
    pub tag: String,
    /// Ids of the full images the client holds.
    pub have: Vec<Digest>,
    /// Codec components the client holds.
    pub codecs: Vec<Digest>,
    /// Whether the client may fetch codecs it lacks.
    pub fetch_codecs: bool,
}

/// The server's answer: a plan whose deltas are already merged into one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResponse {
    /// What to download. `steps` holds at most a full image and one delta (which
    /// may come with a compact form against the client's start image).
    pub plan: Plan,
    /// How many deltas the server merged into the one it offers (0 or 1: none).
    pub merged_from: usize,
    /// Bytes of the path before merging.
    pub unmerged_bytes: u64,
}
