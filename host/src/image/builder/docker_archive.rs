//! Input: a `docker save` archive (`docker-archive:FILE.tar[:TAG]`): unpacked to a
//! temporary directory, then read through its `manifest.json`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::SourceImage;

/// Opens the image `tag` (a RepoTag, or its tag part), or the only image, of the archive.
pub fn open(file: &Path, tag: Option<&str>, tmp_in: &Path) -> Result<SourceImage> {
    let tmp = tempfile::Builder::new()
        .prefix(".d4c-archive-")
        .tempdir_in(tmp_in)?;
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut ar = tar::Archive::new(std::io::BufReader::new(f));
    // tar's unpack refuses entries that would land outside the directory.
    ar.unpack(tmp.path())
        .with_context(|| format!("unpacking {}", file.display()))?;
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("manifest.json"))
            .context("the archive has no manifest.json")?,
    )
    .context("parsing manifest.json")?;
    let images = manifest.as_array().context("manifest.json is not a list")?;
    let tags_of = |m: &Value| -> Vec<String> {
        m["RepoTags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let image = match tag {
        Some(t) => images
            .iter()
            .find(|m| {
                tags_of(m)
                    .iter()
                    .any(|r| r == t || r.rsplit(':').next() == Some(t))
            })
            .with_context(|| format!("no image tagged {t:?} in {}", file.display()))?,
        None => match images.as_slice() {
            [only] => only,
            _ => bail!(
                "{} holds {} images; name one with :TAG",
                file.display(),
                images.len()
            ),
        },
    };
    let rel = |v: &Value| -> Result<std::path::PathBuf> {
        let p = v.as_str().context("manifest.json entry is not a path")?;
        if Path::new(p)
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            bail!("manifest.json names {p:?}, outside the archive");
        }
        Ok(tmp.path().join(p))
    };
    let config = std::fs::read(rel(&image["Config"])?).context("reading the image config")?;
    let layers = image["Layers"]
        .as_array()
        .context("manifest.json entry without Layers")?
        .iter()
        .map(|l| rel(l).map(|p| (p, None)))
        .collect::<Result<_>>()?;
    Ok(SourceImage {
        config,
        layers,
        _tmp: Some(tmp),
    })
}
