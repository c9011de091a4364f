//! The local image store: cdimg files named by their sha256 ([`Blobs`]) and
//! names (`REGISTRY/REPO:TAG`) for the images they make up, each a chain of
//! them: a full image, then deltas ([`ImageStore`]). `d4c pull` updates it from
//! what it holds, `d4c images` lists it, `d4c rmi` removes names and the files
//! no name uses any more; every command that takes a cdimg takes a name too.
//! The snapshotter keeps its images in [`Blobs`] of its own.
//!
//! ```text
//! $D4C_HOME/images/
//!   index.json           names -> image id, chain of blob names (atomic rewrites)
//!   lock                 held (flock) by whoever changes the store
//!   blobs/<sha256>.cdimg the cdimg files
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hasher};
use crate::fsutil::{self, AtomicFile};
use crate::registry::Reference;

/// cdimg files named by their sha256, so an image stored twice, or the base
/// several versions share, is stored once.
pub struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    /// The files in `dir` (created).
    pub fn open(dir: &Path) -> Result<Blobs> {
        fsutil::create_dir_all(dir)?;
        Ok(Blobs {
            dir: dir.to_path_buf(),
        })
    }

    /// The path of a stored file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Copies `src` in (unless the same content is already there), hashing it
    /// as it is copied; returns its name in the store.
    pub fn import(&self, src: &Path) -> Result<String> {
        let mut f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let mut out = AtomicFile::create(&self.dir.join("incoming"))?;
        let mut h = Hasher::default();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", src.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])?;
        }
        let name = blob_name(&h.finish());
        out.commit_new(&self.dir.join(&name))?;
        Ok(name)
    }

    /// Where a download of the blob `digest`, or another file the store is to
    /// take, waits (resumable) until [`Blobs::adopt`] takes it.
    pub fn download_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("incoming-{}", digest.hex()))
    }

    /// Moves a checked download of the blob `digest` (a file in this
    /// directory) into the store; returns its name there.
    pub fn adopt(&self, download: &Path, digest: &Digest) -> Result<String> {
        let name = blob_name(digest);
        std::fs::rename(download, self.dir.join(&name))
            .with_context(|| format!("storing {}", download.display()))?;
        fsutil::sync_dir(&self.dir)?;
        Ok(name)
    }

    /// A file for the store to [`take`](Blobs::take) once written: one per
    /// `what`, so callers take turns (the store's lock).
    pub fn scratch_path(&self, what: &str) -> PathBuf {
        self.dir.join(format!("incoming-{what}"))
    }

    /// Moves `file` (in this directory) into the store under its sha256;
    /// returns its name there.
    pub fn take(&self, file: &Path) -> Result<String> {
        let (digest, _) = crate::digest::of_file(file)?;
        self.adopt(file, &digest)
    }

    /// Removes the stored cdimg files not in `used`.
    pub fn retain(&self, used: &HashSet<String>) -> Result<()> {
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".cdimg") && !used.contains(&name) {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(())
    }
}

/// A cdimg file's name in [`Blobs`].
fn blob_name(digest: &Digest) -> String {
    format!("{}.cdimg", digest.hex())
}

/// Chains longer than this are not extended: the next update of the image is
/// stored as a full image (reads through a long chain are slower).
pub const MAX_CHAIN: usize = 4;

/// One named image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredImage {
    /// Its name, `REGISTRY/REPOSITORY:TAG`.
    pub name: String,
    /// The d4c image id.
    pub image_id: Digest,
    /// The cdimg files (names in [`Blobs`]): a full image, then deltas.
    pub chain: Vec<String>,
    /// The manifest of the original image it rebuilds, if it keeps one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Digest>,
    /// When the name was last set, seconds since the epoch.
    pub updated: u64,
}

/// `index.json`.
#[derive(Default, Serialize, Deserialize)]
struct Index {
    /// The stored images by name.
    images: BTreeMap<String, StoredImage>,
}

/// Proof that the store is locked for changes (an exclusive `flock`, released
/// when dropped or when the process ends, however it ends).
pub struct StoreLock(#[allow(dead_code)] File);

/// The local image store.
pub struct ImageStore {
    dir: PathBuf,
    blobs: Blobs,
}

impl ImageStore {
    /// The store in `dir` (created).
    pub fn open(dir: &Path) -> Result<ImageStore> {
        Ok(ImageStore {
            dir: dir.to_path_buf(),
            blobs: Blobs::open(&dir.join("blobs"))?,
        })
    }

    /// The default store, `$D4C_HOME/images`.
    pub fn default_dir() -> PathBuf {
        crate::home::data_dir().join("images")
    }

    /// Its cdimg files.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// Waits for, then holds, the right to change the store.
    pub fn lock(&self) -> Result<StoreLock> {
        use std::os::fd::AsRawFd;
        let path = self.dir.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: a valid descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(StoreLock(f))
    }

    fn index(&self) -> Result<Index> {
        let path = self.dir.join("index.json");
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .with_context(|| format!("{}: not a d4c image store index", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, _lock: &StoreLock, index: &Index) -> Result<()> {
        fsutil::write_atomic(
            &self.dir.join("index.json"),
            &serde_json::to_vec_pretty(index)?,
        )
    }

    /// Every stored image, by name.
    pub fn list(&self) -> Result<Vec<StoredImage>> {
        Ok(self.index()?.images.into_values().collect())
    }

    /// The image `name` names: its exact name (`REGISTRY/REPO:TAG`, any
    /// spelling of it), or `REPO:TAG` where one stored image has it.
    pub fn find(&self, name: &str) -> Result<Option<StoredImage>> {
        let images = self.index()?.images;
        if let Some(key) = canonical_name(name) {
            if let Some(i) = images.get(&key) {
                return Ok(Some(i.clone()));
            }
        }
        let short: Vec<&StoredImage> = images
            .values()
            .filter(|i| i.name.split_once('/').is_some_and(|(_, rest)| rest == name))
            .collect();
        match short.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some((*one).clone())),
            many => bail!(
                "{name:?} is ambiguous in the image store: {}",
                many.iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The files of a stored image's chain, full image first.
    pub fn paths(&self, image: &StoredImage) -> Vec<PathBuf> {
        image.chain.iter().map(|n| self.blobs.path(n)).collect()
    }

    /// Names `image` (its chain's files already stored), replacing what the
    /// name named, and removes the files no name uses any more: callers store
    /// files and name them under one [`StoreLock`].
    pub fn set(&self, lock: &StoreLock, image: StoredImage) -> Result<()> {
        let mut index = self.index()?;
        index.images.insert(image.name.clone(), image);
        self.save(lock, &index)?;
        self.collect(lock, &index)
    }

    /// Removes the names `names` (each as [`ImageStore::find`] takes it) and
    /// the files no name uses any more; returns what was removed.
    pub fn remove(&self, lock: &StoreLock, names: &[String]) -> Result<Vec<StoredImage>> {
        let mut index = self.index()?;
        let mut removed = Vec::new();
        for n in names {
            let found = self
                .find(n)?
                .with_context(|| format!("{n}: no such image in the store (see d4c images)"))?;
            if let Some(i) = index.images.remove(&found.name) {
                removed.push(i);
            }
        }
        self.save(lock, &index)?;
        self.collect(lock, &index)?;
        Ok(removed)
    }

    fn collect(&self, _lock: &StoreLock, index: &Index) -> Result<()> {
        let used: HashSet<String> = index
            .images
            .values()
            .flat_map(|i| i.chain.iter().cloned())
            .collect();
        self.blobs.retain(&used)
    }
}

/// `name` as the store keys it, `REGISTRY/REPO:TAG` (no scheme, Docker Hub's
/// `library/` spelled out), if it is a reference with a tag.
pub fn canonical_name(name: &str) -> Option<String> {
    let r = Reference::parse(name).ok()?;
    r.tag.as_ref()?;
    Some(format!("{}/{}:{}", r.registry, r.repository, r.tag?))
}

/// Now, in seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, chain: &[&str], id: u8) -> StoredImage {
        StoredImage {
            name: name.to_string(),
            image_id: Digest([id; 32]),
            chain: chain.iter().map(|c| c.to_string()).collect(),
            manifest: None,
            updated: 1,
        }
    }

    #[test]
    fn names_resolve_and_unused_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let mut names = Vec::new();
        for content in [b"v1".as_slice(), b"d12"] {
            let src = dir.path().join("src");
            std::fs::write(&src, content).unwrap();
            names.push(store.blobs().import(&src).unwrap());
        }
        let lock = store.lock().unwrap();
        let v1 = image("127.0.0.1:5000/app:v1", &[&names[0]], 1);
        let v2 = image("127.0.0.1:5000/app:v2", &[&names[0], &names[1]], 2);
        // Files no name uses go at every change: v2 (which uses both) first.
        store.set(&lock, v2.clone()).unwrap();
        store.set(&lock, v1.clone()).unwrap();
        assert_eq!(store.list().unwrap(), vec![v1.clone(), v2.clone()]);
        // Any spelling of the full name, or the repository and tag alone.
        for n in [
            "http://127.0.0.1:5000/app:v2",
            "app:v2",
            "127.0.0.1:5000/app:v2",
        ] {
            assert_eq!(store.find(n).unwrap().as_ref(), Some(&v2), "{n}");
        }
        assert_eq!(store.find("app:v3").unwrap(), None);
        assert_eq!(
            std::fs::read(&store.paths(&v2)[1]).unwrap(),
            b"d12".to_vec()
        );
        // v1's file stays while v2 uses it; then goes with the last name.
        store.remove(&lock, &["app:v1".to_string()]).unwrap();
        assert!(store.paths(&v2).iter().all(|p| p.exists()));
        store.remove(&lock, &["app:v2".to_string()]).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs")).unwrap().count(),
            0
        );
        let err = store.remove(&lock, &["app:v2".to_string()]).unwrap_err();
        assert!(err.to_string().contains("no such image"), "{err:#}");
    }

    #[test]
    fn a_short_name_two_registries_share_is_ambiguous() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let lock = store.lock().unwrap();
        store.set(&lock, image("a.example/app:v1", &[], 1)).unwrap();
        store.set(&lock, image("b.example/app:v1", &[], 2)).unwrap();
        let err = store.find("app:v1").unwrap_err();
        assert!(err.to_string().contains("ambiguous"), "{err:#}");
        assert!(store.find("b.example/app:v1").unwrap().is_some());
    }
}
