//! How d4c lays its content out in an OCI registry (docs/FORMAT.md, "In a
//! registry"): every cdimg and every codec component is an OCI artifact (an image
//! manifest with `artifactType`, the empty config, one layer), and one small
//! index per repository, an artifact under the tag [`INDEX_TAG`], lists them.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::image::format::ImageKind;

/// `artifactType` and layer media type of a cdimg (full image or delta).
pub const CDIMG_TYPE: &str = "application/vnd.dev.d4c.cdimg.v1";
/// `artifactType` of a codec component.
pub const CODEC_TYPE: &str = "application/vnd.dev.d4c.codec.v1";
/// Layer media type of a codec component.
pub const WASM_TYPE: &str = "application/wasm";
/// `artifactType` of the repository index.
pub const INDEX_TYPE: &str = "application/vnd.dev.d4c.index.v1";
/// Layer media type of the repository index.
pub const INDEX_JSON_TYPE: &str = "application/vnd.dev.d4c.index.v1+json";
/// The tag of the repository index.
pub const INDEX_TAG: &str = "d4c-index";
/// Tags of index fragments start with this, followed by the hex digest of the
/// cdimg blob the fragment adds: each push writes its own fragment, which no
/// other push touches, so concurrent pushes lose nothing (FORMAT.md, "In a
/// registry").
pub const FRAGMENT_PREFIX: &str = "d4c-index-";
/// The OCI empty config.
pub const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Its content.
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// Annotation: `image` or `delta`.
pub const A_KIND: &str = "dev.d4c.kind";
/// Annotation: the image id a cdimg yields.
pub const A_IMAGE_ID: &str = crate::image::export::IMAGE_ID_ANNOTATION;
/// Annotation: the image id a delta applies to.
pub const A_BASE_ID: &str = "dev.d4c.base.id";
/// Annotation: the codec digests a delta needs, comma-separated.
pub const A_CODECS: &str = "dev.d4c.codecs";
/// Annotation: a codec's name.
pub const A_CODEC_NAME: &str = "dev.d4c.codec.name";
/// Annotation: a codec's version.
pub const A_CODEC_VERSION: &str = "dev.d4c.codec.version";

/// Most entries an index may list (a guard against hostile indexes).
const MAX_ITEMS: usize = 100_000;

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the content.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// The artifact type of the manifest it describes (in referrer lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// A descriptor of `size` bytes with sha256 `digest`.
    pub fn new(media_type: &str, digest: &Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: format!("{digest:?}"),
            size,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }

    /// The digest, parsed (only sha256 is accepted).
    pub fn sha256(&self) -> Result<Digest> {
        self.digest
            .parse()
            .with_context(|| format!("descriptor digest {:?}", self.digest))
    }
}

/// An OCI image manifest as d4c writes and reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// What kind of artifact this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config (the empty one for d4c artifacts).
    pub config: Descriptor,
    /// The content.
    pub layers: Vec<Descriptor>,
    /// The manifest this artifact is attached to (OCI referrers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// An artifact of type `artifact_type` with one layer.
    pub fn artifact(
        artifact_type: &str,
        layer: Descriptor,
        annotations: BTreeMap<String, String>,
    ) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: Some(super::client::OCI_MANIFEST.to_string()),
            artifact_type: Some(artifact_type.to_string()),
            config: Descriptor::new(
                EMPTY_TYPE,
                &Digest::of(EMPTY_CONFIG),
                EMPTY_CONFIG.len() as u64,
            ),
            layers: vec![layer],
            subject: None,
            annotations,
        }
    }

    /// Parses a manifest someone else wrote.
    pub fn parse(data: &[u8]) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(data).context("not an OCI image manifest")?;
        ensure!(
            m.schema_version == 2,
            "manifest schemaVersion {} is not 2",
            m.schema_version
        );
        Ok(m)
    }

    /// Serialized (deterministically: annotation maps are ordered).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serializes")
    }

    /// The single layer of a d4c artifact of type `artifact_type`.
    pub fn d4c_layer(&self, artifact_type: &str) -> Result<&Descriptor> {
        let t = self.artifact_type.as_deref().unwrap_or("");
        if t != artifact_type {
            bail!(
                "not a d4c artifact of type {artifact_type} (artifactType {:?}); push it with `d4c push`",
                t
            );
        }
        ensure!(
            self.layers.len() == 1,
            "a d4c artifact has exactly one layer"
        );
        Ok(&self.layers[0])
    }

    /// The image id a cdimg artifact yields.
    pub fn image_id(&self) -> Result<Digest> {
        self.d4c_layer(CDIMG_TYPE)?;
        self.annotations
            .get(A_IMAGE_ID)
            .context("the artifact names no image id")?
            .parse()
    }
}

impl Item {
    /// The entry of the cdimg artifact `m`, whose manifest digest is `digest`.
    pub fn from_manifest(m: &Manifest, digest: Digest) -> Result<Item> {
        let layer = m.d4c_layer(CDIMG_TYPE)?;
        let ann = |k: &str| m.annotations.get(k).map(String::as_str);
        let kind = match ann(A_KIND) {
            Some("image") => ImageKind::Image,
            Some("delta") => ImageKind::Delta,
            other => bail!("cdimg artifact {digest:?}: kind {other:?} is neither image nor delta"),
        };
        let base_id = ann(A_BASE_ID).map(str::parse).transpose()?;
        ensure!(
            base_id.is_some() == (kind == ImageKind::Delta),
            "cdimg artifact {digest:?}: a delta names its base, a full image none"
        );
        let codecs = match ann(A_CODECS) {
            None | Some("") => Vec::new(),
            Some(list) => list.split(',').map(str::parse).collect::<Result<_>>()?,
        };
        Ok(Item {
            kind,
            image_id: m.image_id()?,
            base_id,
            blob: layer.sha256()?,
            size: layer.size,
            manifest: digest,
            codecs,
            compact: None,
        })
    }
}

impl CodecItem {
    /// The entry of the codec artifact `m`, whose manifest digest is `digest`.
    pub fn from_manifest(m: &Manifest, digest: Digest) -> Result<CodecItem> {
        let layer = m.d4c_layer(CODEC_TYPE)?;
        let ann = |k: &str| m.annotations.get(k).cloned().unwrap_or_default();
        Ok(CodecItem {
            digest: layer.sha256()?,
            name: ann(A_CODEC_NAME),
            version: ann(A_CODEC_VERSION),
            size: layer.size,
            manifest: digest,
        })
    }
}

/// One cdimg in a repository: an edge of the update graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Full image or delta.
    pub kind: ImageKind,
    /// The image it yields.
    pub image_id: Digest,
    /// The image a delta applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_id: Option<Digest>,
    /// The cdimg blob.
    pub blob: Digest,
    /// Its size.
    pub size: u64,
    /// The artifact manifest.
    pub manifest: Digest,
    /// The codec components its content needs.
    #[serde(default)]
    pub codecs: Vec<Digest>,
    /// The same delta in the compact transfer encoding (`update::compact`),
    /// against the tree of its base image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact: Option<CompactRef>,
}

/// A blob holding a delta in the compact transfer encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactRef {
    /// The compact blob.
    pub blob: Digest,
    /// Its size.
    pub size: u64,
}

impl Item {
    /// Bytes a client downloads for this edge: the compact form if there is one
    /// (any client can decode it: it holds, or has just downloaded, the base tree).
    pub fn transfer_size(&self) -> u64 {
        self.compact.as_ref().map_or(self.size, |c| c.size)
    }
}

/// A codec component in a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodecItem {
    /// sha256 of the component: its identity and its blob digest.
    pub digest: Digest,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Component size.
    pub size: u64,
    /// The artifact manifest.
    pub manifest: Digest,
}

/// The repository index: what full images, deltas and codecs a repository holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RepoIndex {
    /// Format version, 1.
    pub version: u32,
    /// Full images and deltas.
    pub images: Vec<Item>,
    /// Codec components.
    pub codecs: Vec<CodecItem>,
}

impl RepoIndex {
    /// An empty index.
    pub fn new() -> RepoIndex {
        RepoIndex {
            version: 1,
            ..Default::default()
        }
    }

    /// Parses and checks an index from a registry or server.
    pub fn parse(data: &[u8]) -> Result<RepoIndex> {
        let idx: RepoIndex = serde_json::from_slice(data).context("corrupt d4c index")?;
        ensure!(
            idx.version == 1,
            "d4c index version {} is not supported",
            idx.version
        );
        ensure!(
            idx.images.len() <= MAX_ITEMS && idx.codecs.len() <= MAX_ITEMS,
            "d4c index lists too many entries"
        );
        for i in &idx.images {
            ensure!(
                (i.kind == ImageKind::Delta) == i.base_id.is_some(),
                "d4c index: entry {:?} names a base only if it is a delta",
                i.blob
            );
            ensure!(
                i.base_id != Some(i.image_id),
                "d4c index: delta {:?} applies to its own image",
                i.blob
            );
        }
        Ok(idx)
    }

    /// Serialized.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("index serializes")
    }

    /// Adds or replaces (by blob) an image or delta.
    pub fn add_item(&mut self, item: Item) {
        self.images.retain(|i| i.blob != item.blob);
        self.images.push(item);
        self.images
            .sort_by_key(|i| (i.kind == ImageKind::Delta, i.blob));
    }

    /// Adds or replaces (by digest) a codec.
    pub fn add_codec(&mut self, codec: CodecItem) {
        self.codecs.retain(|c| c.digest != codec.digest);
        self.codecs.push(codec);
        self.codecs.sort_by_key(|c| c.digest);
    }

    /// Whether everything in `other` is here.
    pub fn contains(&self, other: &RepoIndex) -> bool {
        other.images.iter().all(|i| self.images.contains(i))
            && other.codecs.iter().all(|c| self.codecs.contains(c))
    }

    /// Adds what `other` has and this one lacks.
    pub fn union(&mut self, other: &RepoIndex) {
        for i in &other.images {
            if !self.images.iter().any(|m| m.blob == i.blob) {
                self.add_item(i.clone());
            }
        }
        for c in &other.codecs {
            if self.codec(&c.digest).is_none() {
                self.add_codec(c.clone());
            }
        }
    }

    /// The fragment tag of the cdimg blob `blob`.
    pub fn fragment_tag(blob: &crate::digest::Digest) -> String {
        format!("{FRAGMENT_PREFIX}{}", blob.hex())
    }

    /// The index `main` (if any) completed with the fragments among `tags`
    /// that it does not cover yet, read with `read`: the one way an index is
    /// assembled, by clients and by the update server.
    pub fn assemble(
        main: Option<RepoIndex>,
        tags: impl IntoIterator<Item = String>,
        mut read: impl FnMut(&str) -> Result<Option<RepoIndex>>,
    ) -> Result<Option<RepoIndex>> {
        let mut index = main;
        for tag in tags {
            let Some(blob) = tag
                .strip_prefix(FRAGMENT_PREFIX)
                .and_then(|h| h.parse::<crate::digest::Digest>().ok())
            else {
                continue;
            };
            if index
                .as_ref()
                .is_some_and(|i| i.images.iter().any(|m| m.blob == blob))
            {
                continue;
            }
            if let Some(f) = read(&tag)? {
                index.get_or_insert_with(RepoIndex::new).union(&f);
            }
        }
        Ok(index)
    }

    /// The codec with this digest.
    pub fn codec(&self, digest: &Digest) -> Option<&CodecItem> {
        self.codecs.iter().find(|c| c.digest == *digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trip_and_checks() {
        let d = |b: u8| Digest([b; 32]);
        let mut idx = RepoIndex::new();
        idx.add_item(Item {
            kind: ImageKind::Delta,
            image_id: d(2),
            base_id: Some(d(1)),
            blob: d(9),
            size: 10,
            manifest: d(8),
            codecs: vec![d(7)],
            compact: None,
        });
        idx.add_item(Item {
            kind: ImageKind::Image,
            image_id: d(1),
            base_id: None,
            blob: d(6),
            size: 100,
            manifest: d(5),
            codecs: vec![],
            compact: None,
        });
        let back = RepoIndex::parse(&idx.to_bytes()).unwrap();
        assert_eq!(back, idx);
        assert_eq!(back.images[0].kind, ImageKind::Image);

        let mut bad = idx.clone();
        bad.images[1].base_id = None;
        assert!(RepoIndex::parse(&bad.to_bytes()).is_err());
        let mut bad = idx.clone();
        bad.version = 2;
        assert!(RepoIndex::parse(&bad.to_bytes()).is_err());
        assert!(RepoIndex::parse(b"[]").is_err());
    }

    #[test]
    fn manifests_name_their_type() {
        let layer = Descriptor::new(CDIMG_TYPE, &Digest([1; 32]), 5);
        let mut ann = BTreeMap::new();
        ann.insert(A_IMAGE_ID.to_string(), Digest([2; 32]).hex());
        let m = Manifest::artifact(CDIMG_TYPE, layer, ann);
        let back = Manifest::parse(&m.to_bytes()).unwrap();
        assert_eq!(back.image_id().unwrap(), Digest([2; 32]));
        assert!(back.d4c_layer(CODEC_TYPE).is_err());
    }
}
