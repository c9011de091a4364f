//! Input: an OCI image layout directory (`DIR` or `DIR:TAG`), as `skopeo copy ...
//! oci:DIR:TAG` writes it. Multi-platform indexes select linux/amd64.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::SourceImage;
use crate::digest::Digest;

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

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

fn pick_platform(index: &Value) -> Result<Value> {
    let manifests = index["manifests"]
        .as_array()
        .context("index without manifests")?;
    let amd64 = manifests.iter().find(|m| {
        m["platform"]["os"].as_str() == Some("linux")
            && m["platform"]["architecture"].as_str() == Some("amd64")
    });
    match (amd64, manifests.as_slice()) {
        (Some(m), _) => Ok(m.clone()),
        (None, [only]) => Ok(only.clone()),
        _ => bail!("the image index has no linux/amd64 manifest"),
    }
}

/// Opens the image `tag` (or the only image) of the layout in `dir`.
pub fn open(dir: &Path, tag: Option<&str>) -> Result<SourceImage> {
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
        let mt = manifest["mediaType"]
            .as_str()
            .or(desc["mediaType"].as_str())
            .unwrap_or_default()
            .to_string();
        if !INDEX_TYPES.contains(&mt.as_str()) {
            break;
        }
        desc = pick_platform(&manifest)?;
        raw = read_blob(dir, desc["digest"].as_str().unwrap_or_default())?;
        manifest = serde_json::from_slice(&raw)?;
    }
    let config = read_blob(
        dir,
        manifest["config"]["digest"]
            .as_str()
            .context("manifest without config")?,
    )?;
    let mut layers = Vec::new();
    for l in manifest["layers"]
        .as_array()
        .context("manifest without layers")?
    {
        let digest: Digest = l["digest"].as_str().unwrap_or_default().parse()?;
        layers.push((blob_path(dir, &digest.oci())?, Some(digest)));
    }
    Ok(SourceImage {
        config,
        manifest: Some(raw),
        layers,
        _tmp: None,
    })
}
