//! The image store: cdimg files that d4c-backed snapshots are served from,
//! imported by copy and named by their sha256, so an image loaded twice, or the
//! base shared by several loaded versions, is stored once.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use d4c_host::digest::Hasher;
use d4c_host::fsutil::AtomicFile;

/// The cdimg files of a snapshotter.
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    /// The store in `dir` (created).
    pub fn open(dir: &Path) -> Result<ImageStore> {
        d4c_host::fsutil::create_dir_all(dir)?;
        Ok(ImageStore {
            dir: dir.to_path_buf(),
        })
    }

    /// The path of a stored file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Copies `src` in (unless the same content is already there); returns its
    /// name in the store.
    pub fn import(&self, src: &Path) -> Result<String> {
        let mut f =
            std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
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
        let name = format!("{}.cdimg", h.finish().hex());
        let dest = self.dir.join(&name);
        if !dest.exists() {
            out.commit_as(&dest)?;
        }
        Ok(name)
    }

    /// Where a download of the blob `digest` waits (resumable) until
    /// [`ImageStore::adopt`] takes it.
    pub fn download_path(&self, digest: &d4c_host::digest::Digest) -> PathBuf {
        self.dir.join(format!("incoming-{}", digest.hex()))
    }

    /// Moves a checked download of the blob `digest` into the store; returns
    /// its name there. A cdimg's name is its sha256, so the blob's digest names it.
    pub fn adopt(&self, download: &Path, digest: &d4c_host::digest::Digest) -> Result<String> {
        let name = format!("{}.cdimg", digest.hex());
        std::fs::rename(download, self.dir.join(&name))
            .with_context(|| format!("storing {}", download.display()))?;
        d4c_host::fsutil::sync_dir(&self.dir)?;
        Ok(name)
    }

    /// Removes stored files not in `used`.
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
