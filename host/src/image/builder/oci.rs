//! Input: an OCI image layout directory (`DIR` or `DIR:TAG`), as `skopeo copy ...
//! oci:DIR:TAG` writes it. Multi-platform indexes select the platform asked.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::platform::{self, Platform};
use super::SourceImage;
use crate::digest::Digest;

fn read_json(path: &Path) -> Result<Value> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&data).with_context(|| format!("parsing {}", path.display()))
}

/// The path of a blob in the layout, refusing digests that are not sha256 hex.
pub fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    let d: Digest = digest
        .parse()
        .with_context(|| format!("descriptor digest {digest:?}"))?;
    Ok(dir.join("blobs").join("sha256").join(d.hex()))
}

/// Reads a blob and checks it against its digest.
fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let path = blob_path(dir, digest)?;
    let data = std::fs::read(&path).with_context(|| format!("reading blob {}", path.display()))?;
    ensure!(
        Digest::of(&data) == digest.parse()?,
        "blob {digest} does not match its digest"
    );
    Ok(data)
}

/// Opens the image `tag` (or the only image) of the layout in `dir`, for
/// `platform` where it is a multi-platform index.
pub fn open(dir: &Path, tag: Option<&str>, platform: &Platform) -> Result<SourceImage> {
    ensure!(
        dir.join("oci-layout").is_file(),
        "{} is not an OCI image layout (no oci-layout file)",
        dir.display()
    );
    let index = read_json(&dir.join("index.json"))?;
    let manifests = index["manifests"]
        .as_array()
        .context("index.json has no manifests")?;
    let name_of = |m: &Value| {
        let a = &m["annotations"];
        a["org.opencontainers.image.ref.name"]
            .as_str()
            .or_else(|| {
                a["io.containerd.image.name"]
                    .as_str()
                    .and_then(|n| n.rsplit(':').next())
            })
            .map(str::to_string)
    };
    let desc = match tag {
        Some(t) => manifests
            .iter()
            .find(|m| name_of(m).as_deref() == Some(t))
            .cloned()
            .with_context(|| {
                let tags: Vec<String> = manifests.iter().filter_map(name_of).collect();
                format!(
                    "no image tagged {t:?} in {} (tags: {})",
                    dir.display(),
                    tags.join(", ")
                )
            })?,
        None => match manifests.as_slice() {
            [only] => only.clone(),
            [] => bail!("{} holds no image", dir.display()),
            _ => {
                let tags: Vec<String> = manifests.iter().filter_map(name_of).collect();
                bail!(
                    "{} holds several images; name one as DIR:TAG (tags: {})",
                    dir.display(),
                    tags.join(", ")
                )
            }
        },
    };
    let mut desc = desc;
    let mut raw = read_blob(dir, desc["digest"].as_str().unwrap_or_default())?;
    let mut manifest: Value = serde_json::from_slice(&raw)?;
    for _ in 0..2 {
        if !platform::is_index(desc["mediaType"].as_str(), &manifest) {
            break;
        }
        desc = platform.pick(&manifest)?;
        raw = read_blob(dir, desc["digest"].as_str().unwrap_or_default())?;
        manifest = serde_json::from_slice(&raw)?;
    }
    let m = ImageManifest::parse(&manifest)?;
    let config = read_blob(dir, &m.config.oci())?;
    let layers = m
        .layers
        .iter()
        .map(|(d, _)| Ok((blob_path(dir, &d.oci())?, Some(*d))))
        .collect::<Result<_>>()?;
    Ok(SourceImage {
        config,
        manifest: Some(raw),
        layers,
        _tmp: None,
    })
}

/// What an image manifest (OCI or Docker schema 2) names.
pub struct ImageManifest {
    /// The config blob.
    pub config: Digest,
    /// The layer blobs with their sizes, bottom first.
    pub layers: Vec<(Digest, u64)>,
}

impl ImageManifest {
    /// Reads the config and layer descriptors of `manifest`.
    pub fn parse(manifest: &Value) -> Result<ImageManifest> {
        ensure!(
            manifest["schemaVersion"].as_u64() == Some(2),
            "not an image manifest of schema version 2 (Docker schema 1 is not supported)"
        );
        let digest = |d: &Value| -> Result<Digest> {
            let s = d["digest"].as_str().context("descriptor without digest")?;
            s.parse()
                .with_context(|| format!("descriptor digest {s:?}"))
        };
        let config = digest(&manifest["config"]).context("the manifest's config")?;
        let layers = manifest["layers"]
            .as_array()
            .context("manifest without layers")?
            .iter()
            .map(|l| {
                let size = l["size"]
                    .as_u64()
                    .context("layer descriptor without size")?;
                Ok((digest(l)?, size))
            })
            .collect::<Result<_>>()?;
        Ok(ImageManifest { config, layers })
    }
}
