//! The server's storage, on disk below one directory:
//!
//! ```text
//! blobs/sha256/<hex>           content: cdimgs, codec components, manifests, indexes
//! uploads/<id>                 blob uploads in progress
//! repos/<repository>/_tags/<tag>   "sha256:<hex>" of the tagged manifest
//! merged/<key>.json            merged deltas already made (key: the deltas merged)
//! codecs/                      codec components the server's merges load
//! ```
//!
//! Content is one namespace shared by all repositories (it is addressed by
//! digest); repositories hold tags, and so their own d4c index. Every file
//! appears by rename after fsync, so a crash leaves the old or the new.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use d4c_host::digest::Digest;
use d4c_host::fsutil::{self, AtomicFile};
use d4c_host::registry::artifact::{Manifest, RepoIndex, INDEX_TAG, INDEX_TYPE};
use d4c_host::registry::reference::{valid_repository, valid_tag};

/// Largest manifest or index kept in memory.
pub const MAX_MANIFEST: u64 = 4 << 20;
const MAX_INDEX: u64 = 64 << 20;

/// Bounds on what clients may make the store hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest blob one upload may write.
    pub max_upload: u64,
    /// An upload untouched this long is abandoned, and removed.
    pub upload_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_upload: 16 << 30,
            upload_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// The store.
pub struct Store {
    root: PathBuf,
    limits: Limits,
    /// Uploads a request is writing or finishing now: one writer per upload.
    busy: Mutex<HashSet<String>>,
}

/// Why an upload cannot be written now.
#[derive(Debug, PartialEq, Eq)]
pub enum UploadError {
    /// No such upload (never started, finished, or expired).
    Unknown,
    /// Another request is writing it.
    Busy,
}

/// An upload claimed by one request: no other request can write or finish it
/// until this is dropped.
pub struct Upload {
    store: Arc<Store>,
    id: String,
    path: PathBuf,
}

impl Upload {
    /// The file the upload's bytes go to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The largest the upload may grow.
    pub fn max_len(&self) -> u64 {
        self.store.limits.max_upload
    }

    /// Ends the upload: its content becomes blob `digest` if it hashes to it
    /// (an existing blob is kept, never replaced); the upload is gone either way.
    pub fn finish(self, digest: &Digest) -> Result<u64> {
        self.store.adopt_blob(&self.path, digest)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.store.busy.lock().expect("busy lock").remove(&self.id);
    }
}

impl Store {
    /// Opens (creating) the store at `root` with default [`Limits`].
    pub fn open(root: &Path) -> Result<Store> {
        Self::open_with(root, Limits::default())
    }

    /// Opens (creating) the store at `root`.
    pub fn open_with(root: &Path, limits: Limits) -> Result<Store> {
        for d in ["blobs/sha256", "uploads", "repos", "merged", "codecs"] {
            fsutil::create_dir_all(&root.join(d))?;
        }
        let s = Store {
            root: root.to_path_buf(),
            limits,
            busy: Mutex::new(HashSet::new()),
        };
        s.expire_uploads();
        Ok(s)
    }

    /// Removes uploads nobody has written for [`Limits::upload_ttl`].
    pub fn expire_uploads(&self) {
        let Ok(entries) = std::fs::read_dir(self.root.join("uploads")) else {
            return;
        };
        let busy = self.busy.lock().expect("busy lock");
        for e in entries.flatten() {
            let idle = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > self.limits.upload_ttl);
            if idle && !busy.contains(e.file_name().to_string_lossy().as_ref()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// The codec store directory.
    pub fn codec_dir(&self) -> PathBuf {
        self.root.join("codecs")
    }

    /// Where a merge writes before its result is stored as a blob.
    pub fn scratch_dir(&self) -> PathBuf {
        self.root.join("merged")
    }

    /// Where a blob is (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// A blob's size, if it is stored.
    pub fn blob_size(&self, d: &Digest) -> Option<u64> {
        std::fs::metadata(self.blob_path(d)).ok().map(|m| m.len())
    }

    /// A small blob's content.
    pub fn blob_bytes(&self, d: &Digest, max: u64) -> Result<Option<Vec<u8>>> {
        let Ok(f) = File::open(self.blob_path(d)) else {
            return Ok(None);
        };
        let mut data = Vec::new();
        f.take(max + 1).read_to_end(&mut data)?;
        ensure!(
            data.len() as u64 <= max,
            "blob {d:?} is larger than {max} bytes"
        );
        Ok(Some(data))
    }

    /// Stores bytes as a blob (a blob already stored is kept as it is).
    pub fn put_blob_bytes(&self, data: &[u8]) -> Result<Digest> {
        let d = Digest::of(data);
        if self.blob_size(&d).is_none() {
            let mut f = AtomicFile::create(&self.blob_path(&d))?;
            std::io::Write::write_all(f.file(), data)?;
            f.commit_new(&self.blob_path(&d))?;
        }
        Ok(d)
    }

    /// Moves a finished file into the blob store under its digest, which is
    /// checked. A stored blob is never replaced: content is checked on the way
    /// in, so what is there already has these bytes. The file is gone after.
    pub fn adopt_blob(&self, path: &Path, digest: &Digest) -> Result<u64> {
        let (got, size) = d4c_host::digest::of_file(path)?;
        if got != *digest {
            let _ = std::fs::remove_file(path);
            bail!("the uploaded content hashes to {got:?}, not {digest:?}");
        }
        File::open(path)?.sync_all()?;
        // link(2) fails rather than replace what is there.
        match std::fs::hard_link(path, self.blob_path(digest)) {
            Ok(()) => fsutil::sync_dir(&self.root.join("blobs/sha256"))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).context("storing the blob"),
        }
        std::fs::remove_file(path)?;
        Ok(size)
    }

    /// Starts an upload; returns its id.
    pub fn new_upload(&self) -> Result<String> {
        self.expire_uploads();
        let mut id = [0u8; 16];
        File::open("/dev/urandom")?.read_exact(&mut id)?;
        let id = hex::encode(id);
        File::create(self.root.join("uploads").join(&id))?;
        Ok(id)
    }

    /// Claims upload `id` for one request (see [`Upload`]).
    pub fn claim_upload(self: &Arc<Self>, id: &str) -> Result<Upload, UploadError> {
        let ok = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
        let path = self.root.join("uploads").join(id);
        if !ok {
            return Err(UploadError::Unknown);
        }
        let mut busy = self.busy.lock().expect("busy lock");
        // Checked under the lock: a PUT that finished the upload removed it.
        if !path.is_file() {
            return Err(UploadError::Unknown);
        }
        if !busy.insert(id.to_string()) {
            return Err(UploadError::Busy);
        }
        Ok(Upload {
            store: self.clone(),
            id: id.to_string(),
            path,
        })
    }

    fn tag_path(&self, repo: &str, tag: &str) -> Result<PathBuf> {
        ensure!(valid_repository(repo), "invalid repository name {repo:?}");
        ensure!(valid_tag(tag), "invalid tag {tag:?}");
        Ok(self.root.join("repos").join(repo).join("_tags").join(tag))
    }

    /// Stores a manifest, under a tag if `reference` is not its digest.
    pub fn put_manifest(&self, repo: &str, reference: &str, data: &[u8]) -> Result<Digest> {
        let d = Digest::of(data);
        if let Ok(want) = reference.parse::<Digest>() {
            ensure!(want == d, "the manifest hashes to {d:?}, not {reference}");
            ensure!(valid_repository(repo), "invalid repository name {repo:?}");
            self.put_blob_bytes(data)?;
            return Ok(d);
        }
        let tag = self.tag_path(repo, reference)?;
        self.put_blob_bytes(data)?;
        fsutil::create_dir_all(tag.parent().expect("tag dir"))?;
        let mut f = AtomicFile::create(&tag)?;
        std::io::Write::write_all(f.file(), format!("{d:?}").as_bytes())?;
        f.commit()?;
        Ok(d)
    }

    /// A manifest by tag or digest.
    pub fn manifest(&self, repo: &str, reference: &str) -> Result<Option<(Vec<u8>, Digest)>> {
        let d = match reference.parse::<Digest>() {
            Ok(d) => d,
            Err(_) => {
                let Ok(text) = std::fs::read_to_string(self.tag_path(repo, reference)?) else {
                    return Ok(None);
                };
                text.trim().parse()?
            }
        };
        Ok(self.blob_bytes(&d, MAX_MANIFEST)?.map(|b| (b, d)))
    }

    /// The d4c index of a repository.
    pub fn index(&self, repo: &str) -> Result<Option<RepoIndex>> {
        let Some((data, _)) = self.manifest(repo, INDEX_TAG)? else {
            return Ok(None);
        };
        let m = Manifest::parse(&data)?;
        let layer = m.d4c_layer(INDEX_TYPE)?;
        let blob = self
            .blob_bytes(&layer.sha256()?, MAX_INDEX)?
            .context("the index blob is missing")?;
        RepoIndex::parse(&blob).map(Some)
    }
}
