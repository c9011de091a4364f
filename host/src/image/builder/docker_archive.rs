//! Input: a `docker save` archive (`docker-archive:FILE.tar[:TAG]`): its regular
//! members unpacked to a private temporary directory, then read through its
//! `manifest.json`.
//!
//! The archive is hostile input: only regular files and directories with plain
//! relative names are written, each beneath the directory ([`Beneath`]). A
//! symlink member (docker writes one for a layer that appears twice) is never
//! created: it is an alias of the member it names inside the archive, so no
//! path the manifest names can reach a file of the host.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::SourceImage;
use crate::beneath::Beneath;

/// What the archive holds: regular members, written; symlink members, as
/// aliases (member name → the member name it stands for).
struct Members {
    aliases: HashMap<PathBuf, PathBuf>,
}

/// A plain relative name: normal components only.
fn plain(p: &Path) -> bool {
    p.components().count() > 0 && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Unpacks the regular members of `file` beneath `dir`.
fn unpack(file: &Path, dir: &Path) -> Result<Members> {
    use std::os::unix::ffi::OsStrExt;
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut ar = tar::Archive::new(std::io::BufReader::new(f));
    let root = Beneath::open(dir)?;
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    let mut aliases = HashMap::new();
    for entry in ar.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        anyhow::ensure!(plain(&name), "member {name:?} is not a plain relative name");
        let kind = entry.header().entry_type();
        // Parents first, each once.
        let mut parent = PathBuf::new();
        let parts: Vec<_> = name.components().collect();
        let own_dir = kind.is_dir() as usize;
        for c in &parts[..parts.len() - 1 + own_dir] {
            parent.push(c);
            if dirs.insert(parent.clone()) {
                root.mkdir(parent.as_os_str().as_bytes())?;
            }
        }
        match kind {
            k if k.is_dir() => {}
            k if k.is_file() => {
                let mut out = root.create_file(name.as_os_str().as_bytes())?;
                std::io::copy(&mut entry, &mut out)
                    .with_context(|| format!("unpacking {}", name.display()))?;
            }
            k if k.is_symlink() => {
                let target = entry.link_name()?.context("a symlink without a target")?;
                let mut resolved = name.parent().unwrap_or(Path::new("")).to_path_buf();
                for c in target.components() {
                    match c {
                        Component::Normal(n) => resolved.push(n),
                        Component::CurDir => {}
                        Component::ParentDir if resolved.pop() => {}
                        _ => bail!("member {name:?} links outside the archive ({target:?})"),
                    }
                }
                aliases.insert(name, resolved);
            }
            other => bail!("member {name:?} is a {other:?}, not a regular file"),
        }
    }
    Ok(Members { aliases })
}

/// Opens the image `tag` (a RepoTag, or its tag part), or the only image, of the archive.
pub fn open(file: &Path, tag: Option<&str>, tmp_in: &Path) -> Result<SourceImage> {
    let tmp = tempfile::Builder::new()
        .prefix(".d4c-archive-")
        .tempdir_in(tmp_in)?;
    let members = unpack(file, tmp.path())?;
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
    let rel = |v: &Value| -> Result<PathBuf> {
        let p = v.as_str().context("manifest.json entry is not a path")?;
        let mut p = PathBuf::from(p);
        anyhow::ensure!(plain(&p), "manifest.json names {p:?}, outside the archive");
        // An alias chain longer than the archive's aliases is a loop.
        for _ in 0..=members.aliases.len() {
            match members.aliases.get(&p) {
                Some(t) => p = t.clone(),
                None => return Ok(tmp.path().join(p)),
            }
        }
        bail!("manifest.json names {p:?}, a symlink loop in the archive")
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
        manifest: None,
        layers,
        _tmp: Some(tmp),
    })
}
