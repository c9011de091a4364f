//! Input: an image in an OCI registry (`docker://HOST/REPO:TAG` or
//! `…@sha256:DIGEST`), downloaded into a temporary directory beside the
//! output: the manifest (the platform's, from a multi-platform index), its
//! config and its layer blobs, each checked against its digest.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::oci::ImageManifest;
use super::platform::{self, Platform};
use super::SourceImage;
use crate::digest::Digest;
use crate::progress::Progress;
use crate::registry::{ConnectOptions, Reference, Registry};

/// Largest image config accepted.
const MAX_CONFIG: u64 = 32 << 20;
/// Most layers an image may have (containerd and docker stop at 127 for
/// overlayfs; this guards against hostile manifests only).
const MAX_LAYERS: usize = 1000;

/// Downloads the image `reference` names, for `platform`; blobs go in a
/// temporary directory in `tmp`.
pub fn open(
    reference: &Reference,
    platform: &Platform,
    connect: &ConnectOptions,
    tmp: &Path,
    progress: &dyn Progress,
) -> Result<SourceImage> {
    let reg = Registry::connect(reference, connect)?;
    let (raw, manifest) = resolve(&reg, reference, platform)?;
    let m =
        ImageManifest::parse(&manifest).with_context(|| format!("the manifest of {reference}"))?;
    if m.layers.len() > MAX_LAYERS {
        bail!(
            "{reference}: {} layers (at most {MAX_LAYERS})",
            m.layers.len()
        );
    }
    let config = reg.fetch_blob_bytes(&m.config, MAX_CONFIG)?;
    let dir = tempfile::Builder::new()
        .prefix(".d4c-pull-")
        .tempdir_in(tmp)
        .with_context(|| format!("creating a download directory in {}", tmp.display()))?;
    let total = m.layers.iter().map(|(_, s)| s).sum();
    progress.start("downloading layers", total);
    let mut layers = Vec::new();
    for (digest, size) in &m.layers {
        let path = dir.path().join(digest.hex());
        // The same blob twice in one image is downloaded once.
        if !path.exists() {
            reg.fetch_blob(digest, *size, &path, progress)?;
        }
        layers.push((path, Some(*digest)));
    }
    progress.finish();
    Ok(SourceImage {
        config,
        manifest: Some(raw),
        layers,
        _tmp: Some(dir),
    })
}

/// The image manifest `reference` names, verbatim and parsed: through a
/// multi-platform index to `platform`'s manifest.
fn resolve(reg: &Registry, reference: &Reference, platform: &Platform) -> Result<(Vec<u8>, Value)> {
    let mut name = reference.manifest_ref()?;
    let mut media_type: Option<String> = None;
    // An index names manifests, never another index that d4c would follow.
    for depth in 0..2 {
        let (raw, _) = reg
            .get_manifest(&name)?
            .with_context(|| format!("{reference}: manifest {name} not found"))?;
        let manifest: Value = serde_json::from_slice(&raw)
            .with_context(|| format!("{reference}: manifest {name} is not JSON"))?;
        if !platform::is_index(media_type.as_deref(), &manifest) {
            return Ok((raw, manifest));
        }
        if depth == 1 {
            break;
        }
        let desc = platform
            .pick(&manifest)
            .with_context(|| format!("{reference}"))?;
        let digest: Digest = desc["digest"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("{reference}: the index's {platform} descriptor"))?;
        name = digest.oci();
        media_type = desc["mediaType"].as_str().map(str::to_string);
    }
    bail!("{reference}: an image index names another index")
}
