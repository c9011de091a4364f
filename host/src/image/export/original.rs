//! `export` of an image that keeps its origin: the original image, config and
//! layer blobs rebuilt byte for byte, so its digests are the publisher's.
//! A layer blob that no recipe rebuilds is compressed anew (its digest, and so
//! the manifest's, then differ); the summary says which and why.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::layout::{descriptor, Layout};
use crate::codec::Codecs;
use crate::digest::Digest;
use crate::image::chain::Chain;
use crate::image::origin::rebuild::Original;
use crate::image::origin::LayerDesc;
use crate::progress::Progress;

/// gzip level of a layer compressed anew.
const GZIP_LEVEL: u32 = 6;
/// zstd level of a layer compressed anew.
const ZSTD_LEVEL: i32 = 3;

/// What [`export_original`] wrote.
#[derive(Debug, Clone)]
pub struct OriginalExport {
    /// The manifest written (the original's when nothing changed).
    pub manifest: Digest,
    /// The original manifest's digest.
    pub original: Digest,
    /// The config's digest (always the original's).
    pub config: Digest,
    /// Per layer: the digest written and, if it is not the original's, why.
    pub layers: Vec<(Digest, Option<String>)>,
}

impl OriginalExport {
    /// Whether every digest is the original's.
    pub fn identical(&self) -> bool {
        self.manifest == self.original
    }
}

/// How a layer's media type says its blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn compression_of(media_type: &str) -> Result<Compression> {
    Ok(match media_type {
        t if t.ends_with("tar+gzip") || t.ends_with("tar.gzip") => Compression::Gzip,
        t if t.ends_with("tar+zstd") => Compression::Zstd,
        t if t.ends_with(".tar") || t.ends_with("layer.v1.tar") => Compression::None,
        t => bail!("layer media type {t:?} is not a tar layer d4c can rebuild"),
    })
}

/// Writes the original image of the image `chain` yields into the layout `dir`,
/// tagged `tag` if given.
pub fn export_original(
    chain: &Chain,
    codecs: &Codecs,
    dir: &Path,
    tag: Option<&str>,
    progress: &dyn Progress,
) -> Result<OriginalExport> {
    let o = Original::of(chain, codecs)?;
    let d = &o.described;
    let layout = Layout::create(dir)?;
    let config = layout.put_bytes(chain.top().config.as_bytes())?;
    progress.start("exporting", 0);
    let mut layers = Vec::with_capacity(d.layers.len());
    for (i, l) in d.layers.iter().enumerate() {
        let r =
            write_layer(&o, i, l, &layout, progress).with_context(|| format!("layer {}", i + 1))?;
        layers.push(r);
    }
    progress.finish();
    let manifest = if layers.iter().all(|(_, _, why)| why.is_none()) {
        layout.put_bytes(o.origin().manifest.as_bytes())?
    } else {
        let m = rewritten_manifest(&o.origin().manifest, &layers)?;
        layout.put_bytes(&m)?
    };
    layout.add_to_index(descriptor(&d.media_type, &manifest.0, manifest.1), tag)?;
    Ok(OriginalExport {
        manifest: manifest.0,
        original: d.manifest,
        config: config.0,
        layers: layers.into_iter().map(|(d, _, why)| (d, why)).collect(),
    })
}

/// Writes layer `i`'s blob; returns its digest, size, and why it is not the
/// original's (None when it is).
fn write_layer(
    o: &Original,
    i: usize,
    l: &LayerDesc,
    layout: &Layout,
    progress: &dyn Progress,
) -> Result<(Digest, u64, Option<String>)> {
    let compression = compression_of(&l.media_type)?;
    let mut blob = layout.blob_writer()?;
    let mut why = None;
    match compression {
        Compression::None => {
            o.write_tar(i, &mut blob, progress)?;
        }
        Compression::Gzip => match o.layer_blob(i, progress)? {
            Some(bytes) => blob.write_all(&bytes)?,
            None => {
                let mut gz =
                    flate2::GzBuilder::new().write(&mut blob, flate2::Compression::new(GZIP_LEVEL));
                o.write_tar(i, &mut gz, progress)?;
                gz.finish()?;
                why = Some(format!(
                    "recompressed (gzip level {GZIP_LEVEL}): no codec reproduced its compressor when the image was converted"
                ));
            }
        },
        Compression::Zstd => {
            let mut z = zstd::stream::write::Encoder::new(&mut blob, ZSTD_LEVEL)?;
            o.write_tar(i, &mut z, progress)?;
            z.finish()?;
            why = Some(format!(
                "recompressed (zstd level {ZSTD_LEVEL}): zstd layers have no recipe yet"
            ));
        }
    }
    let (digest, size) = blob.commit()?;
    if why.is_none() && digest != l.digest {
        why = Some(format!("rebuilt as {}, not the original", digest.short()));
    }
    Ok((digest, size, why))
}

/// The original manifest with the layers' digests and sizes replaced.
fn rewritten_manifest(manifest: &str, layers: &[(Digest, u64, Option<String>)]) -> Result<Vec<u8>> {
    let mut m: Value = serde_json::from_str(manifest)?;
    let list = m["layers"]
        .as_array_mut()
        .context("the manifest lists no layers")?;
    for (desc, (digest, size, _)) in list.iter_mut().zip(layers) {
        desc["digest"] = Value::String(digest.oci());
        desc["size"] = Value::from(*size);
    }
    Ok(serde_json::to_vec(&m)?)
}
