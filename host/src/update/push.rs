//! `push`: a cdimg (full image or delta) and the codec components its deltas
//! need become OCI artifacts in a repository, and the repository index lists
//! them. Blobs the repository already holds are not sent again.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::codec::Codecs;
use crate::digest::Digest;
use crate::image::format::{Header, ImageKind, Reader};
use crate::progress::Progress;
use crate::registry::artifact::{
    self, CodecItem, CompactRef, Descriptor, Item, Manifest, RepoIndex, A_BASE_ID, A_CODECS,
    A_CODEC_NAME, A_CODEC_VERSION, A_IMAGE_ID, A_KIND, CDIMG_TYPE, CODEC_TYPE, WASM_TYPE,
};
use crate::registry::{self, client::OCI_MANIFEST, referrers, Registry};

/// Times the main index is re-read and rewritten when another push raced this one.
const INDEX_TRIES: usize = 4;

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// The repository entry of the cdimg.
    pub item: Item,
    /// The tag that now names it, if one was given.
    pub tag: Option<String>,
    /// Whether the cdimg blob was sent (false: the repository had it).
    pub uploaded: bool,
    /// The codecs pushed beside it.
    pub codecs: Vec<SentCodec>,
}

/// A codec pushed beside a cdimg.
#[derive(Debug, Clone, Serialize)]
pub struct SentCodec {
    /// Its repository entry.
    #[serde(flatten)]
    pub codec: CodecItem,
    /// Whether its blob was sent (false: the repository had it).
    pub uploaded: bool,
}

/// Pushes the cdimg at `path` to `reg`, tagging it `tag`.
pub fn push(
    reg: &Registry,
    path: &Path,
    tag: Option<&str>,
    codecs: &Codecs,
    progress: &dyn Progress,
) -> Result<PushReport> {
    let reader = Reader::open(path)?;
    let header = reader.header();
    let codec_items = push_codecs(reg, path, header, codecs, None)?;
    let pushed = push_cdimg(reg, path, header, None, progress)?;
    let bytes = pushed.manifest.to_bytes();
    let compact = match header.base_id {
        Some(base) => push_compact(reg, &reader, base, pushed.item.size, progress)?,
        None => None,
    };
    let item = Item {
        compact,
        ..pushed.item
    };
    let uploaded = pushed.uploaded;
    let mut mine = RepoIndex::new();
    mine.add_item(item.clone());
    for c in &codec_items {
        mine.add_codec(c.item.clone());
    }
    // Its own fragment first: no concurrent push can lose it. Then the main
    // index, which readers complete with fragments it lacks.
    registry::write_fragment(reg, &item.blob, &mine)?;
    update_index(reg, &mine)?;
    // The tag last: whoever resolves it finds the index already listing it.
    if let Some(t) = tag {
        reg.put_manifest(t, &bytes, OCI_MANIFEST)?;
    }
    Ok(PushReport {
        item,
        tag: tag.map(str::to_string),
        uploaded,
        codecs: codec_items.into_iter().map(PushedCodec::sent).collect(),
    })
}

/// A codec component pushed as an artifact.
pub(crate) struct PushedCodec {
    /// Its repository entry.
    pub item: CodecItem,
    /// Whether its blob was sent.
    pub sent: bool,
    /// Its artifact manifest, as a referrer.
    pub referrer: Descriptor,
    /// Whether the registry indexed the manifest's subject (referrers API).
    pub indexed: bool,
}

impl PushedCodec {
    /// As a report says it.
    pub(crate) fn sent(self) -> SentCodec {
        SentCodec {
            codec: self.item,
            uploaded: self.sent,
        }
    }
}

/// Pushes the components of the codecs `header` names, each as an artifact
/// (attached to `subject` if given).
pub(crate) fn push_codecs(
    reg: &Registry,
    path: &Path,
    header: &Header,
    codecs: &Codecs,
    subject: Option<&Descriptor>,
) -> Result<Vec<PushedCodec>> {
    reg.push_blob_bytes(artifact::EMPTY_CONFIG)?;
    let mut out = Vec::new();
    for c in &header.codecs {
        let bytes = codecs.component_bytes(&c.sha256).with_context(|| {
            format!(
                "{} uses codec {} ({:?}), whose component is not here to push",
                path.display(),
                c.name,
                c.sha256
            )
        })?;
        let sent = reg.blob_size(&c.sha256)? != Some(bytes.len() as u64);
        reg.push_blob_bytes(&bytes)?;
        let mut ann = BTreeMap::new();
        ann.insert(A_CODEC_NAME.to_string(), c.name.clone());
        ann.insert(A_CODEC_VERSION.to_string(), c.version.clone());
        let mut m = Manifest::artifact(
            CODEC_TYPE,
            Descriptor::new(WASM_TYPE, &c.sha256, bytes.len() as u64),
            ann,
        );
        m.subject = subject.cloned();
        let (referrer, indexed) = put_artifact(reg, &m)?;
        out.push(PushedCodec {
            item: CodecItem {
                digest: c.sha256,
                name: c.name.clone(),
                version: c.version.clone(),
                size: bytes.len() as u64,
                manifest: referrer.sha256()?,
            },
            sent,
            referrer,
            indexed,
        });
    }
    Ok(out)
}

/// A cdimg pushed as an artifact.
pub(crate) struct PushedCdimg {
    /// Its repository entry (no compact form).
    pub item: Item,
    /// Its artifact manifest.
    pub manifest: Manifest,
    /// Whether its blob was sent.
    pub uploaded: bool,
    /// Its artifact manifest, as a referrer.
    pub referrer: Descriptor,
    /// Whether the registry indexed the manifest's subject (referrers API).
    pub indexed: bool,
}

/// Pushes the cdimg at `path` (whose header is `header`) and its artifact
/// manifest, attached to `subject` if given.
pub(crate) fn push_cdimg(
    reg: &Registry,
    path: &Path,
    header: &Header,
    subject: Option<&Descriptor>,
    progress: &dyn Progress,
) -> Result<PushedCdimg> {
    let (digest, size) = crate::digest::of_file(path)?;
    reg.push_blob_bytes(artifact::EMPTY_CONFIG)?;
    let uploaded = reg.push_blob_file(path, &digest, progress)?;
    let codec_list: Vec<Digest> = header.codecs.iter().map(|c| c.sha256).collect();
    let mut ann = BTreeMap::new();
    let kind = match header.kind {
        ImageKind::Image => "image",
        ImageKind::Delta => "delta",
    };
    ann.insert(A_KIND.to_string(), kind.to_string());
    ann.insert(A_IMAGE_ID.to_string(), header.image_id.hex());
    if let Some(b) = header.base_id {
        ann.insert(A_BASE_ID.to_string(), b.hex());
    }
    if !codec_list.is_empty() {
        let list: Vec<String> = codec_list.iter().map(|c| format!("{c:?}")).collect();
        ann.insert(A_CODECS.to_string(), list.join(","));
    }
    let mut m = Manifest::artifact(CDIMG_TYPE, Descriptor::new(CDIMG_TYPE, &digest, size), ann);
    m.subject = subject.cloned();
    let (referrer, indexed) = put_artifact(reg, &m)?;
    let md = referrer.sha256()?;
    Ok(PushedCdimg {
        item: Item {
            kind: header.kind,
            image_id: header.image_id,
            base_id: header.base_id,
            blob: digest,
            size,
            manifest: md,
            codecs: codec_list,
            compact: None,
        },
        manifest: m,
        uploaded,
        referrer,
        indexed,
    })
}

/// Stores an artifact manifest under its digest; returns it as a referrer,
/// and whether the registry indexed its subject.
fn put_artifact(reg: &Registry, m: &Manifest) -> Result<(Descriptor, bool)> {
    let bytes = m.to_bytes();
    let indexed = match m.subject {
        Some(_) => reg.put_referrer(&bytes, OCI_MANIFEST)?.1,
        None => {
            reg.put_manifest(&Digest::of(&bytes).oci(), &bytes, OCI_MANIFEST)?;
            false
        }
    };
    Ok((referrers::descriptor(m, &bytes), indexed))
}

/// Pushes the compact form of a delta (`update::compact`) if the repository holds
/// a cdimg of its base image (whose tree it is encoded against) and it is
/// smaller by at least a KiB.
fn push_compact(
    reg: &Registry,
    delta: &Reader,
    base: Digest,
    size: u64,
    progress: &dyn Progress,
) -> Result<Option<CompactRef>> {
    let Some(index) = registry::read_index(reg)? else {
        return Ok(None);
    };
    let Some(of_base) = index.images.iter().find(|i| i.image_id == base) else {
        return Ok(None);
    };
    let base_header = registry::read_header(reg, &of_base.blob, of_base.size)
        .context("reading the base image's tree for the compact form")?;
    let dir = tempfile::tempdir()?;
    let tmp = dir.path().join("compact");
    let n = super::compact::encode(delta, &base_header, &tmp)?;
    if n + 1024 > size {
        return Ok(None);
    }
    let (digest, n) = crate::digest::of_file(&tmp)?;
    reg.push_blob_file(&tmp, &digest, progress)?;
    Ok(Some(CompactRef {
        blob: digest,
        size: n,
    }))
}

/// Folds `mine` (and the fragments of other pushes) into the main index, so
/// readers need few fragment reads. Registries have no compare-and-swap: a
/// concurrent push may overwrite this write, so it is checked and retried a
/// few times; what it still lacks then, its fragment holds.
fn update_index(reg: &Registry, mine: &RepoIndex) -> Result<()> {
    for attempt in 0..INDEX_TRIES {
        if registry::read_main_index(reg)?.is_some_and(|m| m.contains(mine)) {
            return Ok(());
        }
        let mut idx = registry::read_index(reg)?.unwrap_or_else(RepoIndex::new);
        // Ours replace what the index says of the same blobs (a push again
        // may add a compact form).
        for i in &mine.images {
            idx.add_item(i.clone());
        }
        for c in &mine.codecs {
            idx.add_codec(c.clone());
        }
        registry::write_index(reg, &idx)?;
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50 << attempt.min(5)));
        }
    }
    Ok(())
}
