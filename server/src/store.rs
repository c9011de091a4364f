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

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use d4c_host::digest::Digest;
use d4c_host::fsutil::{self, AtomicFile};
use d4c_host::registry::artifact::{Manifest, RepoIndex, INDEX_TAG, INDEX_TYPE};
use d4c_host::registry::reference::{valid_repository, valid_tag};

/// Largest manifest or index kept in memory.
pub const MAX_MANIFEST: u64 = 4 << 20;
const MAX_INDEX: u64 = 64 << 20;

/// The store.
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        for d in ["blobs/sha256", "uploads", "repos", "merged", "codecs"] {
            fsutil::create_dir_all(&root.join(d))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
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

    /// Stores bytes as a blob.
    pub fn put_blob_bytes(&self, data: &[u8]) -> Result<Digest> {
        let d = Digest::of(data);
        if self.blob_size(&d) != Some(data.len() as u64) {
            fsutil::write_atomic(&self.blob_path(&d), data)?;
        }
        Ok(d)
    }

    /// Moves a finished file into the blob store under its digest, which is checked.
    pub fn adopt_blob(&self, path: &Path, digest: &Digest) -> Result<u64> {
        let (got, size) = d4c_host::digest::of_file(path)?;
        if got != *digest {
            let _ = std::fs::remove_file(path);
            bail!("the uploaded content hashes to {got:?}, not {digest:?}");
        }
        File::open(path)?.sync_all()?;
        std::fs::rename(path, self.blob_path(digest))?;
        fsutil::sync_dir(&self.root.join("blobs/sha256"))?;
        Ok(size)
    }

    /// Starts an upload; returns its id.
    pub fn new_upload(&self) -> Result<String> {
        let mut id = [0u8; 16];
        File::open("/dev/urandom")?.read_exact(&mut id)?;
        let id = hex::encode(id);
        File::create(self.root.join("uploads").join(&id))?;
        Ok(id)
    }

    /// The file of upload `id`, if it exists.
    pub fn upload_path(&self, id: &str) -> Option<PathBuf> {
        let ok = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
        let p = self.root.join("uploads").join(id);
        (ok && p.is_file()).then_some(p)
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
