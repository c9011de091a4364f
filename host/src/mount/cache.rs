//! The content cache: file contents rebuilt for a mount, on disk, named by their
//! sha256 (so mounts of different images share them), bounded in total size with
//! the least recently used leaving first.
//!
//! A file enters the cache only whole and checked: it is written to a temporary
//! file whose contents are verified as they stream in, then renamed to its digest.
//! Files found at startup (left by an earlier process) are re-hashed on first use,
//! since a crash may have left one torn. One file is built once, however many
//! readers ask for it at the same time.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::digest::{CheckedReader, Digest};

/// Builds in progress are files with this prefix, locked by their builder.
const TEMP_PREFIX: &str = ".tmp-";

/// An on-disk, size-bounded cache of file contents by sha256.
pub struct ContentCache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
    /// The first reader of a digest builds it, the others wait for it.
    building: Flights<Digest>,
}

/// Per-key mutual exclusion: concurrent calls of [`Flights::run`] for one key
/// run one at a time (so the second finds what the first built); other keys
/// are not held up.
pub struct Flights<K> {
    locks: Mutex<HashMap<K, Arc<Mutex<()>>>>,
}

impl<K: std::hash::Hash + Eq + Clone> Default for Flights<K> {
    fn default() -> Self {
        Flights {
            locks: Mutex::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Flights<K> {
    /// Runs `f` while holding `key`'s lock.
    pub fn run<T>(&self, key: K, f: impl FnOnce() -> T) -> T {
        let lock = self
            .locks
            .lock()
            .expect("flights lock")
            .entry(key.clone())
            .or_default()
            .clone();
        let result = {
            let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            f()
        };
        let mut locks = self.locks.lock().expect("flights lock");
        // Ours and the map's: nobody else waits, so the lock can go.
        if Arc::strong_count(&lock) == 2 {
            locks.remove(&key);
        }
        result
    }
}

#[derive(Default)]
struct State {
    used: u64,
    clock: u64,
    files: HashMap<Digest, Slot>,
}

struct Slot {
    size: u64,
    used_at: u64,
    verified: bool,
}

impl ContentCache {
    /// Opens (creating) the cache in `dir`, holding at most about `limit` bytes.
    pub fn open(dir: &Path, limit: u64) -> Result<ContentCache> {
        crate::fsutil::create_dir_all(dir)?;
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TEMP_PREFIX) {
                continue; // builds in progress, or left by a crash: see below
            }
            let Ok(digest) = name.parse::<Digest>() else {
                continue;
            };
            let m = e.metadata()?;
            found.push((m.modified().ok(), digest, m.len()));
        }
        // Builds a killed process left (another live process's are locked).
        crate::fsutil::remove_stale_temps(dir, TEMP_PREFIX);
        // Oldest first, so that they are the first to leave.
        found.sort();
        let mut state = State::default();
        for (_, digest, size) in found {
            state.clock += 1;
            state.used += size;
            state.files.insert(
                digest,
                Slot {
                    size,
                    used_at: state.clock,
                    verified: false,
                },
            );
        }
        let cache = ContentCache {
            dir: dir.to_path_buf(),
            limit,
            state: Mutex::new(state),
            building: Flights::default(),
        };
        cache.evict(None);
        Ok(cache)
    }

    /// The bytes the cache holds.
    pub fn used(&self) -> u64 {
        self.state.lock().expect("cache lock").used
    }

    /// The cached content `digest` of `size` bytes, opened for reading; if absent,
    /// built from `source` first (and checked: wrong content is never cached).
    pub fn get<'a>(
        &self,
        digest: Digest,
        size: u64,
        source: impl FnOnce() -> Result<Box<dyn std::io::Read + Send + 'a>>,
    ) -> Result<File> {
        self.building.run(digest, || match self.lookup(&digest)? {
            Some(f) => {
                crate::metrics::inc("d4c_mount_cache_total", &["hit"]);
                Ok(f)
            }
            None => {
                crate::metrics::inc("d4c_mount_cache_total", &["miss"]);
                self.build(digest, size, source)
            }
        })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Opens a cached file, checking it first if an earlier process wrote it.
    fn lookup(&self, digest: &Digest) -> Result<Option<File>> {
        let (verified, size) = {
            let mut st = self.state.lock().expect("cache lock");
            st.clock += 1;
            let clock = st.clock;
            match st.files.get_mut(digest) {
                None => return Ok(None),
                Some(slot) => {
                    slot.used_at = clock;
                    (slot.verified, slot.size)
                }
            }
        };
        let file = match File::open(self.path(digest)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(digest);
                return Ok(None);
            }
            Err(e) => return Err(e).context("opening a cached file"),
        };
        if !verified {
            let mut check = CheckedReader::new(&file, size, *digest, "cached file");
            // (Reads through `&file` move its offset: rewound below.)
            if std::io::copy(&mut check, &mut std::io::sink()).is_err() {
                let _ = std::fs::remove_file(self.path(digest));
                self.forget(digest);
                return Ok(None);
            }
            if let Some(slot) = self.state.lock().expect("cache lock").files.get_mut(digest) {
                slot.verified = true;
            }
            use std::io::Seek;
            (&file).rewind()?;
        }
        Ok(Some(file))
    }

    fn build<'a>(
        &self,
        digest: Digest,
        size: u64,
        source: impl FnOnce() -> Result<Box<dyn std::io::Read + Send + 'a>>,
    ) -> Result<File> {
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.dir)
            .with_context(|| format!("creating a file in {}", self.dir.display()))?;
        crate::fsutil::hold_temp(tmp.as_file())?;
        let mut content = CheckedReader::new(source()?, size, digest, "content");
        let mut out = BufWriter::with_capacity(1 << 20, tmp);
        std::io::copy(&mut content, &mut out)?;
        out.flush()?;
        let tmp = out.into_inner().map_err(|e| e.into_error())?;
        if size > self.limit {
            // Larger than the whole cache: served from an unnamed file that
            // goes when its last reader closes, never admitted (it would
            // evict everything else and still not fit).
            let mut f = tmp.into_file();
            std::io::Seek::rewind(&mut f)?;
            return Ok(f);
        }
        let path = self.path(&digest);
        tmp.persist(&path).map_err(|e| e.error)?;
        {
            let mut st = self.state.lock().expect("cache lock");
            st.clock += 1;
            let clock = st.clock;
            st.used += size;
            st.files.insert(
                digest,
                Slot {
                    size,
                    used_at: clock,
                    verified: true,
                },
            );
        }
        let file = File::open(&path)?;
        self.evict(Some(digest));
        Ok(file)
    }

    fn forget(&self, digest: &Digest) {
        let mut st = self.state.lock().expect("cache lock");
        if let Some(slot) = st.files.remove(digest) {
            st.used -= slot.size;
        }
    }

    /// Removes least recently used files until the cache fits its limit, never
    /// `keep`. Open files stay readable to whoever has them open.
    fn evict(&self, keep: Option<Digest>) {
        let mut st = self.state.lock().expect("cache lock");
        while st.used > self.limit {
            let victim = st
                .files
                .iter()
                .filter(|(d, _)| Some(**d) != keep)
                .min_by_key(|(_, s)| s.used_at)
                .map(|(d, _)| *d);
            let Some(d) = victim else { break };
            let slot = st.files.remove(&d).expect("present");
            st.used -= slot.size;
            let _ = std::fs::remove_file(self.path(&d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn content(n: u8) -> (Vec<u8>, Digest) {
        let data = vec![n; 1000];
        let d = Digest::of(&data);
        (data, d)
    }

    fn read(mut f: File) -> Vec<u8> {
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn builds_once_checks_and_evicts_least_recent() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ContentCache::open(dir.path(), 2500).unwrap();
        let (a, da) = content(1);
        let (b, db) = content(2);
        let (c, dc) = content(3);
        let src = |v: &Vec<u8>| {
            let v = v.clone();
            move || -> Result<Box<dyn std::io::Read + Send>> {
                Ok(Box::new(std::io::Cursor::new(v)))
            }
        };
        assert_eq!(read(cache.get(da, 1000, src(&a)).unwrap()), a);
        // Cached: the source is not asked again.
        let f = cache.get(da, 1000, || anyhow::bail!("rebuilt")).unwrap();
        assert_eq!(read(f), a);
        cache.get(db, 1000, src(&b)).unwrap();
        cache.get(da, 1000, src(&a)).unwrap(); // a is now the most recent
        cache.get(dc, 1000, src(&c)).unwrap(); // over the limit: b leaves
        assert!(!dir.path().join(db.hex()).exists());
        assert!(dir.path().join(da.hex()).exists() && dir.path().join(dc.hex()).exists());
        assert_eq!(cache.used(), 2000);
        // Wrong content never lands.
        let (_, dx) = content(9);
        assert!(cache.get(dx, 1000, src(&a)).is_err());
        assert!(!dir.path().join(dx.hex()).exists());
        // A torn file left by an earlier process is found, checked, and rebuilt.
        std::fs::write(dir.path().join(dc.hex()), b"torn").unwrap();
        drop(cache);
        let cache = ContentCache::open(dir.path(), 2500).unwrap();
        assert_eq!(read(cache.get(dc, 1000, src(&c)).unwrap()), c);
        assert_eq!(
            read(cache.get(da, 1000, || anyhow::bail!("rebuilt")).unwrap()),
            a
        );
    }

    #[test]
    fn a_file_larger_than_the_cache_is_served_but_not_admitted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ContentCache::open(dir.path(), 1500).unwrap();
        let (a, da) = content(1);
        let big = vec![7u8; 4000];
        let dbig = Digest::of(&big);
        cache
            .get(da, 1000, || {
                Ok(Box::new(std::io::Cursor::new(a.clone())) as Box<dyn std::io::Read + Send>)
            })
            .unwrap();
        let f = cache
            .get(dbig, 4000, || {
                Ok(Box::new(std::io::Cursor::new(big.clone())) as Box<dyn std::io::Read + Send>)
            })
            .unwrap();
        assert_eq!(read(f), big);
        assert!(!dir.path().join(dbig.hex()).exists());
        assert!(
            dir.path().join(da.hex()).exists(),
            "the big file evicted the rest"
        );
        assert_eq!(cache.used(), 1000);
    }

    #[test]
    fn concurrent_readers_build_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ContentCache::open(dir.path(), 1 << 20).unwrap();
        let (a, da) = content(4);
        let builds = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let f = cache
                        .get(da, 1000, || {
                            builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok(Box::new(std::io::Cursor::new(a.clone())))
                        })
                        .unwrap();
                    assert_eq!(read(f), a);
                });
            }
        });
        assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
