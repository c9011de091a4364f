//! One tag, both worlds: cdimgs (full images and deltas) and their codecs
//! attached to the ordinary image a tag names, as OCI referrers whose
//! `subject` is that image's manifest (docs/FORMAT.md, "Attached to an
//! image"). The tag is untouched, so docker, skopeo and containerd pull the
//! image as before; d4c finds the referrers and pulls a delta.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::push::{push_cdimg, push_codecs, SentCodec};
use crate::codec::Codecs;
use crate::digest::Digest;
use crate::image::builder::platform::{self, Platform};
use crate::image::format::Reader;
use crate::progress::Progress;
use crate::registry::artifact::{
    CodecItem, Descriptor, Item, Manifest, RepoIndex, CDIMG_TYPE, CODEC_TYPE,
};
use crate::registry::client::OCI_MANIFEST;
use crate::registry::{referrers, Registry};

/// What an attach did.
#[derive(Debug, Clone, Serialize)]
pub struct AttachReport {
    /// The image manifest the cdimg is attached to.
    pub subject: Digest,
    /// The cdimg's entry.
    pub item: Item,
    /// Whether the cdimg blob was sent (false: the repository had it).
    pub uploaded: bool,
    /// The codecs attached beside it.
    pub codecs: Vec<SentCodec>,
    /// Whether the registry lacks the referrers API, so the fallback tag
    /// (`sha256-<hex>`) lists them.
    pub fallback_tag: Option<String>,
}

/// Attaches the cdimg at `path` to the image `tag` names in `reg`, after
/// checking that it is the image the cdimg was converted from.
pub fn attach(
    reg: &Registry,
    path: &Path,
    tag: &str,
    codecs: &Codecs,
    progress: &dyn Progress,
) -> Result<AttachReport> {
    let reader = Reader::open(path)?;
    let header = reader.header();
    let origin = header.origin.as_ref().with_context(|| {
        format!(
            "{} keeps no original image (converted with --no-origin, or from a docker archive): \
             there is no image manifest to attach it to",
            path.display()
        )
    })?;
    let subject = check_subject(reg, tag, &origin.manifest, &header.config)?;
    let digest = origin.manifest_digest();
    let pushed_codecs = push_codecs(reg, path, header, codecs, Some(&subject))?;
    let pushed = push_cdimg(reg, path, header, Some(&subject), progress)?;
    let unindexed: Vec<Descriptor> = pushed_codecs
        .iter()
        .filter(|c| !c.indexed)
        .map(|c| c.referrer.clone())
        .chain((!pushed.indexed).then(|| pushed.referrer.clone()))
        .collect();
    let fallback_tag = (!unindexed.is_empty()).then(|| referrers::fallback_tag(&digest));
    if !unindexed.is_empty() {
        referrers::add_to_fallback(reg, &digest, &unindexed)?;
    }
    Ok(AttachReport {
        subject: digest,
        item: pushed.item,
        uploaded: pushed.uploaded,
        codecs: pushed_codecs.into_iter().map(|c| c.sent()).collect(),
        fallback_tag,
    })
}

/// The descriptor of `manifest` (the cdimg's original, with `config`) if
/// `tag` names it, directly or in its multi-platform index, and the registry
/// holds it with that config.
fn check_subject(reg: &Registry, tag: &str, manifest: &str, config: &str) -> Result<Descriptor> {
    let want = Digest::of(manifest.as_bytes());
    let r = reg.reference();
    let (data, got) = reg
        .get_manifest(tag)?
        .with_context(|| format!("{}/{}:{tag} not found", r.registry, r.repository))?;
    let v: Value = serde_json::from_slice(&data).with_context(|| {
        format!(
            "{}/{}:{tag}: the manifest is not JSON",
            r.registry, r.repository
        )
    })?;
    let listed = got == want
        || (platform::is_index(None, &v)
            && v["manifests"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["digest"].as_str() == Some(&want.oci()))));
    ensure!(
        listed,
        "{}/{}:{tag} is {}, not the image this cdimg was converted from ({}): \
         attach it to that image's tag",
        r.registry,
        r.repository,
        got.oci(),
        want.oci()
    );
    // The manifest itself must be there (an index may name one it lacks), and
    // name the cdimg's config.
    let (stored, _) = reg
        .get_manifest(&want.oci())?
        .with_context(|| format!("{}: manifest {} is not in the repository", r, want.oci()))?;
    let stored: Value = serde_json::from_slice(&stored)?;
    let config_digest = Digest::of(config.as_bytes()).oci();
    ensure!(
        stored["config"]["digest"].as_str() == Some(&config_digest),
        "{r}: manifest {} does not name the cdimg's config {config_digest}",
        want.oci()
    );
    let media_type = stored["mediaType"].as_str().unwrap_or(OCI_MANIFEST);
    Ok(Descriptor::new(media_type, &want, manifest.len() as u64))
}

/// What `reference`'s tag or digest names: an image manifest (through a
/// multi-platform index, for `platform`), by digest.
pub fn image_manifest(reg: &Registry, name: &str, platform: &Platform) -> Result<Digest> {
    let r = reg.reference();
    let (data, digest) = reg
        .get_manifest(name)?
        .with_context(|| format!("{}/{}: {name} not found", r.registry, r.repository))?;
    let v: Value = serde_json::from_slice(&data)
        .with_context(|| format!("{r}: manifest {name} is not JSON"))?;
    if !platform::is_index(None, &v) {
        return Ok(digest);
    }
    let d = platform.pick(&v).with_context(|| format!("{r}"))?;
    d["digest"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("{r}: the index's {platform} descriptor"))
}

/// The d4c artifacts attached to the image manifest `subject`.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The image they yield.
    pub target: Digest,
    /// The full images, deltas and codecs, as a repository index to plan over.
    pub index: RepoIndex,
}

/// The d4c artifacts attached to `subject`, if any.
pub fn discover(reg: &Registry, subject: &Digest) -> Result<Option<Attached>> {
    let mut index = RepoIndex::new();
    for d in referrers::list(reg, subject)? {
        let t = d.artifact_type.as_deref();
        if t != Some(CDIMG_TYPE) && t != Some(CODEC_TYPE) {
            continue;
        }
        // A fallback index is written by whoever may push, and may name a
        // manifest since deleted: what is missing, or does not itself say it
        // belongs to this image, is not this image's.
        let Ok(md) = d.sha256() else { continue };
        let Some((data, _)) = reg.get_manifest(&md.oci())? else {
            continue;
        };
        let Ok(m) = Manifest::parse(&data) else {
            continue;
        };
        if m.subject.as_ref().map(|s| s.digest.as_str()) != Some(subject.oci().as_str()) {
            continue;
        }
        match t {
            Some(CDIMG_TYPE) => index.add_item(Item::from_manifest(&m, md)?),
            _ => index.add_codec(CodecItem::from_manifest(&m, md)?),
        }
    }
    let mut targets: Vec<Digest> = index.images.iter().map(|i| i.image_id).collect();
    targets.sort_unstable();
    targets.dedup();
    match targets.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(Attached {
            target: *one,
            index,
        })),
        _ => bail!(
            "{}: the cdimgs attached to {} yield different images",
            reg.reference(),
            subject.oci()
        ),
    }
}
