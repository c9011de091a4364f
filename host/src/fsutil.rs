//! File writes that never leave a half-written file at the final path: write to a
//! temporary file in the same directory, fsync it, rename it over the target, then
//! fsync the directory so the rename itself survives a crash.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// Temporary files of [`AtomicFile`] start with this.
pub const TEMP_PREFIX: &str = ".d4c-tmp-";

/// Temporary files younger than this are never taken for stale: their writer may
/// not hold its lock yet.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Marks a temporary file as in use for as long as it is open (an exclusive
/// `flock`, released by the kernel when the writer exits, however it exits).
pub fn hold_temp(f: &File) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::last_os_error()).context("locking a temporary file");
    }
    Ok(())
}

/// Removes temporary files (`prefix*`) in `dir` that a killed writer left: older
/// than a minute and not held by any live writer. Best effort.
pub fn remove_stale_temps(dir: &Path, prefix: &str) {
    use std::os::fd::AsRawFd;
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if !old {
            continue;
        }
        let Ok(f) = File::open(e.path()) else {
            continue;
        };
        // SAFETY: a valid descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// A file being written that becomes visible at its path only on [`AtomicFile::commit`].
/// Dropped without commit, it leaves nothing behind.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    path: std::path::PathBuf,
}

impl AtomicFile {
    /// Starts writing `path`; its parent directory must exist.
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let dir = parent_dir(path);
        // Readable like any file the user writes (tempfile's default is 0600).
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        hold_temp(tmp.as_file())?;
        remove_stale_temps(dir, TEMP_PREFIX);
        Ok(AtomicFile {
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// The open file, for writing.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(self) -> Result<()> {
        let path = self.path.clone();
        self.commit_as(&path)
    }

    /// Like [`AtomicFile::commit_as`], but never replaces what is at `path`:
    /// content-addressed stores keep the file that is there (same name, same
    /// content), so nothing written later can swap it. Returns whether this
    /// file was stored.
    pub fn commit_new(self, path: &Path) -> Result<bool> {
        self.tmp
            .as_file()
            .sync_all()
            .with_context(|| format!("syncing {}", path.display()))?;
        match self.tmp.persist_noclobber(path) {
            Ok(_) => {}
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e.error).with_context(|| format!("storing {}", path.display())),
        }
        sync_dir(parent_dir(path))?;
        Ok(true)
    }

    /// Like [`AtomicFile::commit`], to a path chosen only now (in the same
    /// directory), e.g. a name that is the content's digest.
    pub fn commit_as(self, path: &Path) -> Result<()> {
        self.tmp
            .as_file()
            .sync_all()
            .with_context(|| format!("syncing {}", path.display()))?;
        self.tmp
            .persist(path)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming into {}", path.display()))?;
        sync_dir(parent_dir(path))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tmp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tmp.flush()
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsyncs a directory, making renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Writes `data` to `path` atomically.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    f.commit()
}

/// Copies `r` into the empty file `f`, leaving holes where a whole block is zero
/// (so a sparse file stays sparse); returns the length written. `size_hint`
/// (the expected length) keeps the buffer small for small files.
pub fn copy_sparse(r: &mut dyn io::Read, f: &File, size_hint: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    // A whole-file buffer for small files (one write), 64 KiB blocks otherwise.
    let block = (size_hint.clamp(1, 64 << 10) as usize).next_power_of_two();
    let mut buf = vec![0u8; block];
    let mut pos = 0u64;
    loop {
        // Fill the block, so holes stay block-aligned whatever the reader returns.
        let mut n = 0;
        while n < block {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            f.write_all_at(&buf[..n], pos)?;
        }
        pos += n as u64;
        if n < block {
            break;
        }
    }
    f.set_len(pos)?;
    Ok(pos)
}

/// Creates `dir` and its parents.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))
}

/// Creates `dir` (and its parents) if needed and makes it private to its owner
/// (0700), whatever mode it had: for state no other local user may read or
/// plant files in.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_and_drop_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"partial").unwrap();
        }
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_temporary_files_go_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        // Left by a killed writer: old and unlocked.
        let dead = dir.path().join(format!("{TEMP_PREFIX}dead"));
        File::create(&dead).unwrap().set_modified(old).unwrap();
        // Old but held by a live writer.
        let live_path = dir.path().join(format!("{TEMP_PREFIX}live"));
        let live = File::create(&live_path).unwrap();
        live.set_modified(old).unwrap();
        hold_temp(&live).unwrap();
        // Young: its writer may not have locked it yet.
        let young = dir.path().join(format!("{TEMP_PREFIX}young"));
        File::create(&young).unwrap();
        write_atomic(&dir.path().join("out"), b"x").unwrap();
        assert!(!dead.exists());
        assert!(live_path.exists() && young.exists());
        drop(live);
    }

    #[test]
    fn sparse_copy_keeps_content_and_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 8 << 20];
        data[5] = 1;
        data[(8 << 20) - 1] = 2;
        let p = dir.path().join("s");
        let f = File::create(&p).unwrap();
        assert_eq!(
            copy_sparse(&mut &data[..], &f, 1 << 30).unwrap(),
            data.len() as u64
        );
        assert_eq!(fs::read(&p).unwrap(), data);
        // Two 64 KiB blocks hold data; the rest is holes (where the file system
        // supports them: allow generous slack for block sizes).
        assert!(fs::metadata(&p).unwrap().blocks() * 512 < 1 << 20);
        // A zero tail still sets the length.
        let z = vec![0u8; 100_000];
        let p2 = dir.path().join("z");
        copy_sparse(&mut &z[..], &File::create(&p2).unwrap(), 10).unwrap();
        assert_eq!(fs::read(&p2).unwrap(), z);
    }
}
