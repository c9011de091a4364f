//! The snapshotter's metadata: every snapshot by key (active and view
//! snapshots) or name (committed ones; both share one namespace), persisted in
//! one JSON file rewritten atomically after each change, so a crash leaves the
//! previous or the new state, never a mix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use d4c_host::digest::Digest;
use serde::{Deserialize, Serialize};

/// A snapshot's kind, as containerd names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only, never committed.
    View,
    /// Writable, may be committed.
    Active,
    /// Read-only, may be a parent.
    Committed,
}

/// One snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// Names its directory, `snapshots/<id>`.
    pub id: u64,
    /// Its kind.
    pub kind: Kind,
    /// The committed snapshot it is based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Labels, as containerd set them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Creation time, nanoseconds since the epoch.
    pub created: i128,
    /// Last update, nanoseconds since the epoch.
    pub updated: i128,
    /// For a snapshot served from d4c images: the cdimg files (names in the
    /// image store), a full image first, then deltas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// A lower layer of an image served whole, not filled in yet: the image's
    /// manifest digest and how many of its layers end here
    /// ([`crate::lower`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_of: Option<(Digest, usize)>,
    /// Its tree is the whole image up to it (a filled-in lower layer): what
    /// is below adds nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub whole: bool,
}

/// An image fetched from a registry for containerd's CRI plugin
/// ([`crate::remote`]): kept while snapshots use it, and afterwards as a base
/// for the next update of its repository, within the retention policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredImage {
    /// The d4c image id.
    pub image_id: Digest,
    /// `registry/repository` it came from.
    pub repository: String,
    /// Its original layers' digests, bottom first.
    pub layers: Vec<Digest>,
    /// The cdimg files (names in the image store): a full image, then deltas.
    pub chain: Vec<String>,
    /// Last pulled, nanoseconds since the epoch.
    pub used: i128,
}

/// All snapshots, the images fetched for them, and the next directory id.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    /// The next snapshot id.
    pub next_id: u64,
    /// Snapshots by key or name.
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Images fetched from registries, by original manifest digest.
    #[serde(default)]
    pub images: BTreeMap<Digest, StoredImage>,
    #[serde(skip)]
    path: PathBuf,
}

/// Now, in nanoseconds since the epoch.
pub fn now() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

impl Meta {
    /// Loads `path`, or starts empty if it does not exist.
    pub fn load(path: &Path) -> Result<Meta> {
        let mut meta = match std::fs::read(path) {
            Ok(data) => serde_json::from_slice(&data)
                .with_context(|| format!("{}: corrupt metadata", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        meta.path = path.to_path_buf();
        Ok(meta)
    }

    /// Writes the metadata durably.
    pub fn save(&self) -> Result<()> {
        d4c_host::fsutil::write_atomic(&self.path, &serde_json::to_vec_pretty(self)?)
    }

    /// The keys of the snapshot `key` and its ancestors, nearest first.
    pub fn lineage(&self, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut next = Some(key.to_string());
        while let Some(k) = next {
            next = self.snapshots.get(&k).and_then(|s| s.parent.clone());
            out.push(k);
            if out.len() > self.snapshots.len() {
                break; // a cycle: corrupt metadata, do not loop
            }
        }
        out
    }

    /// Whether some snapshot has `key` as its parent.
    pub fn has_children(&self, key: &str) -> bool {
        self.snapshots
            .values()
            .any(|s| s.parent.as_deref() == Some(key))
    }
}
