//! Writing an OCI image layout: content-addressed blobs, each written atomically
//! under its digest, and `index.json`, where a tag replaces an older manifest of
//! the same name and everything else in the layout is kept.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use crate::digest::{Digest, HashWriter};
use crate::fsutil::{self, AtomicFile};

const LAYOUT_FILE: &str = "oci-layout";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout directory open for writing.
pub struct Layout {
    dir: PathBuf,
}

/// A blob being written: lands under its digest on [`BlobWriter::commit`].
pub struct BlobWriter {
    out: HashWriter<std::io::BufWriter<AtomicFile>>,
    blobs: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl BlobWriter {
    /// Syncs the blob and moves it to `blobs/sha256/<digest>`; returns (digest, size).
    pub fn commit(self) -> Result<(Digest, u64)> {
        let (buf, digest, len) = self.out.finish();
        let file = buf.into_inner().map_err(|e| e.into_error())?;
        file.commit_as(&self.blobs.join(digest.hex()))?;
        Ok((digest, len))
    }
}

impl Layout {
    /// Opens the layout in `dir`, creating it if `dir` is missing or empty. A
    /// non-empty directory that is not a layout is refused (nothing in it is
    /// touched).
    pub fn create(dir: &Path) -> Result<Layout> {
        if dir.exists() {
            let empty = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .next()
                .is_none();
            ensure!(
                empty || dir.join(LAYOUT_FILE).is_file(),
                "{} exists and is not an OCI image layout",
                dir.display()
            );
        }
        fsutil::create_dir_all(&dir.join("blobs").join("sha256"))?;
        if !dir.join(LAYOUT_FILE).is_file() {
            fsutil::write_atomic(&dir.join(LAYOUT_FILE), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
        })
    }

    /// Starts a blob written as a stream.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let blobs = self.dir.join("blobs").join("sha256");
        let file = AtomicFile::create(&blobs.join("incoming"))?;
        Ok(BlobWriter {
            out: HashWriter::new(std::io::BufWriter::with_capacity(1 << 20, file)),
            blobs,
        })
    }

    /// Writes a small blob; returns its descriptor with `media_type`.
    pub fn put_json(&self, media_type: &str, value: &Value) -> Result<Value> {
        let (digest, size) = self.put_bytes(&serde_json::to_vec(value)?)?;
        Ok(descriptor(media_type, &digest, size))
    }

    /// Writes a small blob as given; returns its digest and size.
    pub fn put_bytes(&self, data: &[u8]) -> Result<(Digest, u64)> {
        let mut w = self.blob_writer()?;
        w.write_all(data)?;
        w.commit()
    }

    /// Adds `manifest` (a descriptor) to `index.json`, named `tag` if given; a
    /// manifest of the same name is replaced, and an identical entry not repeated.
    pub fn add_to_index(&self, mut manifest: Value, tag: Option<&str>) -> Result<()> {
        let path = self.dir.join("index.json");
        let mut index: Value = if path.is_file() {
            let raw =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_slice(&raw).with_context(|| format!("parsing {}", path.display()))?
        } else {
            json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []})
        };
        if let Some(t) = tag {
            manifest["annotations"] = json!({ REF_NAME: t });
        }
        let list = index["manifests"]
            .as_array_mut()
            .with_context(|| format!("{}: no manifests list", path.display()))?;
        list.retain(|m| match tag {
            Some(t) => m["annotations"][REF_NAME].as_str() != Some(t),
            None => m != &manifest,
        });
        list.push(manifest);
        fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&index)?)
    }
}

/// An OCI descriptor.
pub fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Value {
    json!({"mediaType": media_type, "digest": digest.oci(), "size": size})
}
