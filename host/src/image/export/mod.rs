//! `export`: the image a chain yields, written as an OCI image layout that any
//! OCI tool takes: one gzip'd tar layer holding the whole tree, the original
//! config with its rootfs and history rewritten for that one layer, a manifest,
//! and an `index.json` entry (tagged if asked).
//!
//! Deterministic: the same tree gives the same tar ([`tar`]), gzip'd without a
//! name or time stamp at a fixed level, so the same content gives the same layer
//! and manifest digests however the image was delivered.

pub mod layout;
pub mod original;
pub mod tar;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde_json::{json, Value};

use self::layout::{descriptor, Layout};
use self::tar::TarWriter;
use crate::codec::Codecs;
use crate::digest::{Digest, HashWriter};
use crate::image::chain::Chain;
use crate::image::entry::Kind;
use crate::progress::Progress;

/// The layer's media type.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The manifest's media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config's media type.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Manifest annotation carrying the d4c image id.
pub const IMAGE_ID_ANNOTATION: &str = "dev.d4c.image.id";

/// gzip level of the layer: fixed, since it is part of the layer's digest.
const GZIP_LEVEL: u32 = 6;
/// Content rebuilt by codecs ahead of the (sequential) tar stream, at most.
const REBUILD_BATCH: u64 = 256 << 20;

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The manifest's digest.
    pub manifest: Digest,
    /// The layer blob's digest (gzip'd).
    pub layer: Digest,
    /// The layer's diff id (uncompressed tar).
    pub diff_id: Digest,
    /// The layer blob's size.
    pub layer_size: u64,
}

/// Splits `DIR[:TAG]`; a path that exists as given is a directory without tag.
pub fn parse_target(s: &str) -> Result<(std::path::PathBuf, Option<String>)> {
    if Path::new(s).exists() {
        return Ok((s.into(), None));
    }
    match s.rsplit_once(':') {
        Some((dir, tag)) if !tag.contains('/') => {
            anyhow::ensure!(
                !dir.is_empty()
                    && !tag.is_empty()
                    && tag
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-+@:".contains(c)),
                "bad export target {s:?} (want DIR or DIR:TAG, TAG of letters, digits and ._-+@)"
            );
            Ok((dir.into(), Some(tag.to_string())))
        }
        _ => Ok((s.into(), None)),
    }
}

/// Writes the image `chain` yields into the OCI layout `dir` (created if
/// missing), tagged `tag` if given.
pub fn export(
    chain: &Chain,
    codecs: &Codecs,
    dir: &Path,
    tag: Option<&str>,
    threads: usize,
    progress: &dyn Progress,
) -> Result<ExportSummary> {
    let top = chain.top();
    // Check the config before writing anything.
    let config: Value =
        serde_json::from_str(&top.config).context("the image config is not JSON")?;
    let layout = Layout::create(dir)?;

    let blob = layout.blob_writer()?;
    let gz = flate2::GzBuilder::new().write(blob, flate2::Compression::new(GZIP_LEVEL));
    let mut tar = TarWriter::new(HashWriter::new(gz));
    write_tree(chain, codecs, &mut tar, threads, progress)?;
    let (gz, diff_id, _) = tar.finish()?.finish();
    let blob = gz.finish().context("finishing the layer")?;
    let (layer, layer_size) = blob.commit()?;

    let config = rewrite_config(config, &diff_id)?;
    let config_desc = layout.put_json(CONFIG_MEDIA_TYPE, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config_desc,
        "layers": [descriptor(LAYER_MEDIA_TYPE, &layer, layer_size)],
        "annotations": { IMAGE_ID_ANNOTATION: top.image_id.oci() },
    });
    let manifest_desc = layout.put_json(MANIFEST_MEDIA_TYPE, &manifest)?;
    let manifest_digest: Digest = manifest_desc["digest"]
        .as_str()
        .expect("descriptor")
        .parse()?;
    layout.add_to_index(manifest_desc, tag)?;
    Ok(ExportSummary {
        manifest: manifest_digest,
        layer,
        diff_id,
        layer_size,
    })
}

/// Streams the tree into `tar`. Files that need a codec are rebuilt in parallel
/// batches ahead of the stream; the rest stream from their blobs.
fn write_tree<W: Write>(
    chain: &Chain,
    codecs: &Codecs,
    tar: &mut TarWriter<W>,
    threads: usize,
    progress: &dyn Progress,
) -> Result<()> {
    let entries = &chain.top().entries;
    let needs_codec =
        |i: usize| entries[i].kind == Kind::File && chain.raw_source(&entries[i]).is_none();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()?;
    progress.start("exporting", entries.iter().map(|e| e.file_size()).sum());
    let mut start = 0;
    while start < entries.len() {
        let mut end = start;
        let mut batch = 0;
        while end < entries.len() && batch < REBUILD_BATCH {
            if needs_codec(end) {
                batch += entries[end].file_size();
            }
            end += 1;
        }
        let mut rebuilt: HashMap<usize, Vec<u8>> = pool.install(|| {
            (start..end)
                .into_par_iter()
                .with_max_len(1)
                .filter(|&i| needs_codec(i))
                .map(|i| {
                    let e = &entries[i];
                    chain.content(codecs, e).map(|c| (i, c))
                })
                .collect::<Result<_>>()
        })?;
        for (i, e) in entries.iter().enumerate().take(end).skip(start) {
            if e.kind != Kind::File {
                tar.append(e, None)?;
                continue;
            }
            match rebuilt.remove(&i) {
                Some(data) => tar.append(e, Some(&mut &data[..]))?,
                None => {
                    let mut r = chain
                        .open_content(codecs, e)
                        .with_context(|| format!("reading {}", e.path))?;
                    tar.append(e, Some(&mut r))?;
                }
            }
            progress.advance(e.file_size());
        }
        start = end;
    }
    progress.finish();
    Ok(())
}

/// The original config with `rootfs` naming the one exported layer and the
/// history kept as a record (every old step marked empty) plus one step for it.
pub fn rewrite_config(mut config: Value, diff_id: &Digest) -> Result<Value> {
    let obj = config
        .as_object_mut()
        .context("the image config is not a JSON object")?;
    obj.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": [diff_id.oci()]}),
    );
    let mut history: Vec<Value> = obj
        .get("history")
        .and_then(|h| h.as_array())
        .cloned()
        .unwrap_or_default();
    for h in &mut history {
        if let Some(h) = h.as_object_mut() {
            h.insert("empty_layer".into(), Value::Bool(true));
        }
    }
    let mut step = json!({"created_by": "d4c export: the whole tree as one layer"});
    if let Some(created) = obj.get("created") {
        step["created"] = created.clone();
    }
    history.push(step);
    obj.insert("history".into(), Value::Array(history));
    Ok(config)
}
