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

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use d4c_host::digest::Digest;
use d4c_host::fsutil::{self, AtomicFile};
use d4c_host::registry::artifact::{
    Manifest, RepoIndex, FRAGMENT_PREFIX, INDEX_JSON_TYPE, INDEX_TAG, INDEX_TYPE,
};
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
    /// Bytes the blobs and uploads may take together (None: no quota).
    pub quota: Option<u64>,
    /// A merged or compact delta nobody asked for this long is removed.
    pub merged_ttl: Duration,
    /// Blobs no tag or index reaches are removed once this old (younger ones
    /// may belong to a push whose manifest has not arrived yet).
    pub gc_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_upload: 16 << 30,
            upload_ttl: Duration::from_secs(24 * 3600),
            quota: None,
            merged_ttl: Duration::from_secs(7 * 24 * 3600),
            gc_grace: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a garbage collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Blobs removed.
    pub blobs: usize,
    /// Merged or compact results forgotten.
    pub merged: usize,
    /// Abandoned uploads removed.
    pub uploads: usize,
    /// Bytes freed.
    pub bytes: u64,
}

/// The store.
pub struct Store {
    root: PathBuf,
    limits: Limits,
    /// Uploads a request is writing or finishing now: one writer per upload.
    busy: Mutex<HashSet<String>>,
    /// Bytes of blobs and uploads, for the quota.
    used: AtomicU64,
    /// Repository indexes parsed, by the digest of their blob.
    indexes: Mutex<HashMap<Digest, Arc<RepoIndex>>>,
    /// Held (shared) while a manifest's blobs are checked and it is stored;
    /// held alone by a garbage collection.
    gc: RwLock<()>,
}

/// Why an upload cannot be written now.
#[derive(Debug, PartialEq, Eq)]
pub enum UploadError {
    /// No such upload (never started, finished, or expired).
    Unknown,
    /// Another request is writing it.
    Busy,
}

/// The store's quota would be exceeded.
#[derive(Debug, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// The quota, in bytes.
    pub quota: u64,
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

    /// Counts `n` more bytes of this upload against the store's quota.
    pub fn charge(&self, n: u64) -> Result<(), QuotaExceeded> {
        self.store.charge(n)
    }

    /// Whether `n` more bytes would fit the store's quota now (charged only
    /// as they are written).
    pub fn fits(&self, n: u64) -> Result<(), QuotaExceeded> {
        let quota = self.store.limits.quota.unwrap_or(u64::MAX);
        if self.store.used().saturating_add(n) > quota {
            return Err(QuotaExceeded { quota });
        }
        Ok(())
    }

    /// Ends the upload: its content becomes blob `digest` if it hashes to it
    /// (an existing blob is kept, never replaced); the upload is gone either way.
    pub fn finish(self, digest: &Digest) -> Result<u64> {
        let len = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        self.store.uncharge(len);
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
        let used = ["blobs/sha256", "uploads"]
            .iter()
            .flat_map(|d| {
                std::fs::read_dir(root.join(d))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        let s = Store {
            root: root.to_path_buf(),
            limits,
            busy: Mutex::new(HashSet::new()),
            used: AtomicU64::new(used),
            indexes: Mutex::new(HashMap::new()),
            gc: RwLock::new(()),
        };
        s.expire_uploads();
        Ok(s)
    }

    /// Keeps garbage collection away while the guard lives: for checking that
    /// a manifest's blobs are here and storing it.
    pub fn pin(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gc.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of blobs and uploads the store holds.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn charge(&self, n: u64) -> Result<(), QuotaExceeded> {
        let quota = self.limits.quota.unwrap_or(u64::MAX);
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|t| *t <= quota)
            })
            .map(|_| ())
            .map_err(|_| QuotaExceeded { quota })
    }

    fn uncharge(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Removes uploads nobody has written for [`Limits::upload_ttl`]; returns
    /// how many and their bytes.
    pub fn expire_uploads(&self) -> (usize, u64) {
        let Ok(entries) = std::fs::read_dir(self.root.join("uploads")) else {
            return (0, 0);
        };
        let busy = self.busy.lock().expect("busy lock");
        let mut gone = (0, 0);
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if older_than(&m, self.limits.upload_ttl)
                && !busy.contains(e.file_name().to_string_lossy().as_ref())
                && std::fs::remove_file(e.path()).is_ok()
            {
                self.uncharge(m.len());
                gone = (gone.0 + 1, gone.1 + m.len());
            }
        }
        gone
    }

    /// Removes what nothing needs: abandoned uploads, merged and compact
    /// deltas nobody asked for within [`Limits::merged_ttl`], and blobs that no
    /// tag, manifest, repository index or kept merge result reaches (once
    /// older than [`Limits::gc_grace`]).
    pub fn collect_garbage(&self) -> Result<Collected> {
        let _alone = self.gc.write().unwrap_or_else(|e| e.into_inner());
        let (uploads, upload_bytes) = self.expire_uploads();
        let mut done = Collected {
            uploads,
            bytes: upload_bytes,
            ..Default::default()
        };
        let mut live: HashSet<Digest> = HashSet::new();
        self.mark_merged(&mut live, &mut done);
        for tag in self.tag_files() {
            let Ok(text) = std::fs::read_to_string(&tag) else {
                continue;
            };
            if let Ok(d) = text.trim().parse::<Digest>() {
                self.mark_manifest(&d, &mut live, 0);
            }
        }
        for e in std::fs::read_dir(self.root.join("blobs/sha256"))?.flatten() {
            let Ok(d) = e.file_name().to_string_lossy().parse::<Digest>() else {
                continue;
            };
            let Ok(m) = e.metadata() else { continue };
            if !live.contains(&d)
                && older_than(&m, self.limits.gc_grace)
                && std::fs::remove_file(e.path()).is_ok()
            {
                self.uncharge(m.len());
                done.blobs += 1;
                done.bytes += m.len();
            }
        }
        Ok(done)
    }

    /// Marks the blobs of merge results still wanted; forgets the others.
    fn mark_merged(&self, live: &mut HashSet<Digest>, done: &mut Collected) {
        let Ok(entries) = std::fs::read_dir(self.scratch_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") {
                continue;
            }
            let stale = e
                .metadata()
                .is_ok_and(|m| older_than(&m, self.limits.merged_ttl));
            if stale {
                if std::fs::remove_file(e.path()).is_ok() {
                    done.merged += 1;
                }
                continue;
            }
            let blob = std::fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v.get("blob")?.as_str()?.parse::<Digest>().ok());
            live.extend(blob);
        }
    }

    /// Marks manifest `d`, its config and layers, the manifests an image index
    /// lists, and everything a d4c repository index names.
    fn mark_manifest(&self, d: &Digest, live: &mut HashSet<Digest>, depth: usize) {
        if !live.insert(*d) || depth > 4 {
            return;
        }
        let Ok(Some(data)) = self.blob_bytes(d, MAX_MANIFEST) else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data) else {
            return;
        };
        // (digest, media type) of each descriptor under `key`.
        let descriptors = |key: &str| -> Vec<(Digest, String)> {
            v.get(key)
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten()
                .filter_map(|x| {
                    let d = x.get("digest")?.as_str()?.parse().ok()?;
                    let t = x.get("mediaType").and_then(|t| t.as_str()).unwrap_or("");
                    Some((d, t.to_string()))
                })
                .collect()
        };
        if let Some(c) = v
            .pointer("/config/digest")
            .and_then(|c| c.as_str()?.parse().ok())
        {
            live.insert(c);
        }
        for (l, media) in descriptors("layers") {
            live.insert(l);
            // A d4c index names cdimgs, compact forms and codecs whose tags
            // may have moved on.
            if media != INDEX_JSON_TYPE {
                continue;
            }
            let Ok(idx) = self.index_blob(&l) else {
                continue;
            };
            for i in &idx.images {
                live.insert(i.blob);
                live.extend(i.compact.as_ref().map(|c| c.blob));
                self.mark_manifest(&i.manifest, live, depth + 1);
            }
            for c in &idx.codecs {
                live.insert(c.digest);
                self.mark_manifest(&c.manifest, live, depth + 1);
            }
        }
        for (m, _) in descriptors("manifests") {
            self.mark_manifest(&m, live, depth + 1);
        }
    }

    /// Every tag file of every repository.
    fn tag_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut dirs = vec![self.root.join("repos")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if e.file_name() == "_tags" {
                    out.extend(
                        std::fs::read_dir(&p)
                            .into_iter()
                            .flatten()
                            .flatten()
                            .map(|t| t.path()),
                    );
                } else {
                    dirs.push(p);
                }
            }
        }
        out
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
            if f.commit_new(&self.blob_path(&d))? {
                self.used.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
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
            Ok(()) => {
                fsutil::sync_dir(&self.root.join("blobs/sha256"))?;
                self.used.fetch_add(size, Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Asked for again: it stays, and counts as fresh for the GC.
                let _ = File::open(self.blob_path(digest))
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            }
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

    /// The tags of a repository, sorted (none if it has none).
    pub fn tags(&self, repo: &str) -> Result<Vec<String>> {
        ensure!(valid_repository(repo), "invalid repository name {repo:?}");
        let dir = self.root.join("repos").join(repo).join("_tags");
        let mut tags: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|t| valid_tag(t))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        tags.sort();
        Ok(tags)
    }

    /// The d4c index of a repository: the index tag completed with the
    /// fragments pushes wrote ([`RepoIndex::assemble`]), each index blob
    /// parsed once.
    pub fn index(&self, repo: &str) -> Result<Option<Arc<RepoIndex>>> {
        let main = self.index_at(repo, INDEX_TAG)?;
        let fragments: Vec<String> = self
            .tags(repo)?
            .into_iter()
            .filter(|t| t.starts_with(FRAGMENT_PREFIX))
            .collect();
        let covered = |t: &str| {
            main.as_ref().is_some_and(|m| {
                m.images
                    .iter()
                    .any(|i| RepoIndex::fragment_tag(&i.blob) == t)
            })
        };
        if fragments.iter().all(|t| covered(t)) {
            return Ok(main);
        }
        let whole = RepoIndex::assemble(main.map(|m| (*m).clone()), fragments, |t| {
            Ok(self.index_at(repo, t)?.map(|i| (*i).clone()))
        })?;
        Ok(whole.map(Arc::new))
    }

    /// The index artifact under `tag`, parsed once per index blob.
    fn index_at(&self, repo: &str, tag: &str) -> Result<Option<Arc<RepoIndex>>> {
        let Some((data, _)) = self.manifest(repo, tag)? else {
            return Ok(None);
        };
        let m = Manifest::parse(&data)?;
        self.index_blob(&m.d4c_layer(INDEX_TYPE)?.sha256()?)
            .map(Some)
    }

    /// The index blob `digest`, parsed once.
    fn index_blob(&self, digest: &Digest) -> Result<Arc<RepoIndex>> {
        if let Some(i) = self.indexes.lock().expect("index cache").get(digest) {
            return Ok(i.clone());
        }
        let blob = self
            .blob_bytes(digest, MAX_INDEX)?
            .context("the index blob is missing")?;
        let index = Arc::new(RepoIndex::parse(&blob)?);
        let mut cache = self.indexes.lock().expect("index cache");
        // Indexes are replaced as pushes arrive; old ones are not asked for.
        if cache.len() >= 1024 {
            cache.clear();
        }
        cache.insert(*digest, index.clone());
        Ok(index)
    }
}

/// Whether a file was last written more than `age` ago.
fn older_than(m: &std::fs::Metadata, age: Duration) -> bool {
    m.modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|a| a > age)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upload nobody wrote to for its time to live is gone (and its bytes
    /// no longer count); a fresh one stays.
    #[test]
    fn abandoned_uploads_expire() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            upload_ttl: Duration::from_secs(3600),
            ..Limits::default()
        };
        let store = Arc::new(Store::open_with(dir.path(), limits).unwrap());
        let old = store.new_upload().unwrap();
        let fresh = store.new_upload().unwrap();
        let path = dir.path().join("uploads").join(&old);
        std::fs::write(&path, vec![0u8; 1000]).unwrap();
        let f = File::open(&path).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        let store = Arc::new(Store::open_with(dir.path(), limits).unwrap());
        assert_eq!(store.claim_upload(&old).err(), Some(UploadError::Unknown));
        assert!(store.claim_upload(&fresh).is_ok());
        assert_eq!(store.used(), 0);
    }

    /// A repository index is parsed once per blob, not once per pull.
    #[test]
    fn an_index_is_parsed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = RepoIndex::new().to_bytes();
        let digest = store.put_blob_bytes(&index).unwrap();
        store
            .put_blob_bytes(d4c_host::registry::artifact::EMPTY_CONFIG)
            .unwrap();
        let layer = d4c_host::registry::artifact::Descriptor::new(
            d4c_host::registry::artifact::INDEX_JSON_TYPE,
            &digest,
            index.len() as u64,
        );
        let m = Manifest::artifact(INDEX_TYPE, layer, Default::default());
        store
            .put_manifest("t/app", INDEX_TAG, &m.to_bytes())
            .unwrap();
        let a = store.index("t/app").unwrap().unwrap();
        let b = store.index("t/app").unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }
}
