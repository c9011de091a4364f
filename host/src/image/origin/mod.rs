//! Provenance: the original OCI image a cdimg was converted from travels with
//! it (docs/FORMAT.md, "Provenance"), so that the image can be rebuilt down to
//! its digests and checked against them.
//!
//! - the manifest and the config, verbatim (the config is the header's);
//! - per layer, its tar stream as [`records`] (content by digest) and, where
//!   a codec reproduces the compressed blob from the tar stream, that codec's
//!   delta (the *recipe*);
//! - as content, what the tree alone lacks: record streams, recipes, and the
//!   files a later layer replaced or deleted.
//!
//! [`rebuild`] turns it back into tar streams and layer blobs and checks them.

pub mod rebuild;
pub mod records;

use std::collections::HashSet;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::Digest;
use crate::image::entry::{valid_path, Entry, Kind};
use crate::image::format::{codec_index, CodecRef};

/// The original image of a cdimg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The image manifest, verbatim: its sha256 is the manifest digest.
    pub manifest: String,
    /// The manifest's layers, in order.
    pub layers: Vec<OriginLayer>,
    /// Content the tree does not hold (regular-file entries, named for what
    /// they are): stored, diffed and merged like the tree's own files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Entry>,
}

/// How one layer is rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginLayer {
    /// The content holding the layer's tar records.
    pub records: Digest,
    /// How the layer blob is made from its tar stream, if a codec can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<Recipe>,
}

/// A compressed layer blob as a codec delta from the layer's tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    /// Index into the header's codec table.
    pub codec: u32,
    /// The content holding the codec's delta.
    pub delta: Digest,
}

/// A layer as the manifest and the config describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDesc {
    /// The blob's media type.
    pub media_type: String,
    /// The blob's sha256.
    pub digest: Digest,
    /// The blob's size.
    pub size: u64,
    /// sha256 of the uncompressed tar stream (`rootfs.diff_ids`).
    pub diff_id: Digest,
}

/// What the manifest and config say about the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// The manifest's sha256.
    pub manifest: Digest,
    /// The manifest's media type (from its `mediaType`, OCI's when absent).
    pub media_type: String,
    /// The config's sha256, as the manifest names it.
    pub config: Digest,
    /// The layers, in order.
    pub layers: Vec<LayerDesc>,
}

/// The OCI image manifest media type, the default of a manifest that names none.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Names of the content an origin adds: `layers/<n>/tar-split`, `layers/<n>/recipe`.
pub fn records_name(layer: usize) -> String {
    format!("layers/{layer}/tar-split")
}

/// See [`records_name`].
pub fn recipe_name(layer: usize) -> String {
    format!("layers/{layer}/recipe")
}

/// Reads `manifest` (an OCI or Docker v2 image manifest) against `config`:
/// the config must be the one it names and list one diff_id per layer.
pub fn describe(manifest: &[u8], config: &[u8]) -> Result<Described> {
    let m: Value = serde_json::from_slice(manifest).context("the manifest is not JSON")?;
    let digest_of = |v: &Value, what: &str| -> Result<Digest> {
        v["digest"]
            .as_str()
            .with_context(|| format!("{what} has no digest"))?
            .parse()
            .with_context(|| format!("{what} has no sha256 digest"))
    };
    let config_digest = digest_of(&m["config"], "the manifest's config")?;
    ensure!(
        Digest::of(config) == config_digest,
        "the config is not the one the manifest names ({config_digest})"
    );
    let c: Value = serde_json::from_slice(config).context("the config is not JSON")?;
    let diff_ids = c
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .context("the config lists no rootfs.diff_ids")?;
    let layers = m["layers"]
        .as_array()
        .context("the manifest lists no layers")?;
    ensure!(
        layers.len() == diff_ids.len(),
        "the manifest has {} layers and the config {} diff_ids",
        layers.len(),
        diff_ids.len()
    );
    let layers = layers
        .iter()
        .zip(diff_ids)
        .enumerate()
        .map(|(i, (l, d))| {
            let what = format!("layer {}", i + 1);
            Ok(LayerDesc {
                media_type: l["mediaType"].as_str().unwrap_or_default().to_string(),
                digest: digest_of(l, &what)?,
                size: l["size"]
                    .as_u64()
                    .with_context(|| format!("{what} has no size"))?,
                diff_id: d
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("diff_id {} is not a sha256 digest", i + 1))?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Described {
        manifest: Digest::of(manifest),
        media_type: m["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_string(),
        config: config_digest,
        layers,
    })
}

/// The chain id of a stack of layers (OCI image spec, "Layer ChainID"): what
/// containerd names the snapshot of the whole image by.
pub fn chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    let (first, rest) = diff_ids.split_first()?;
    Some(rest.iter().fold(*first, |chain, d| {
        Digest::of(format!("{} {}", chain.oci(), d.oci()).as_bytes())
    }))
}

impl Described {
    /// The chain id of the image's layers.
    pub fn chain_id(&self) -> Option<Digest> {
        chain_id(&self.layers.iter().map(|l| l.diff_id).collect::<Vec<_>>())
    }
}

impl Origin {
    /// This origin in another file: its content stored as `content` says, its
    /// recipes' codecs (indices into `from`) renumbered into `codecs`.
    pub fn carried(
        &self,
        content: Vec<Entry>,
        from: &[CodecRef],
        codecs: &mut Vec<CodecRef>,
    ) -> Origin {
        let layers = self
            .layers
            .iter()
            .map(|l| OriginLayer {
                records: l.records,
                recipe: l.recipe.map(|r| Recipe {
                    codec: codec_index(codecs, &from[r.codec as usize]),
                    delta: r.delta,
                }),
            })
            .collect();
        Origin {
            manifest: self.manifest.clone(),
            layers,
            content,
        }
    }

    /// The manifest's sha256.
    pub fn manifest_digest(&self) -> Digest {
        Digest::of(self.manifest.as_bytes())
    }

    /// The manifest read against `config`.
    pub fn describe(&self, config: &str) -> Result<Described> {
        describe(self.manifest.as_bytes(), config.as_bytes())
    }

    /// Checks what needs no content: the manifest matches the config and has
    /// one layer per record, content entries are well-formed regular files
    /// (their storage is checked by the header), and every record stream and
    /// recipe is content of the image (`tree`: the tree's file digests).
    pub(crate) fn validate(
        &self,
        config: &str,
        codecs: usize,
        tree: &HashSet<Digest>,
    ) -> Result<()> {
        let d = self.describe(config)?;
        ensure!(
            d.layers.len() == self.layers.len(),
            "the manifest has {} layers and the origin {}",
            d.layers.len(),
            self.layers.len()
        );
        let mut own = HashSet::new();
        for e in &self.content {
            let p = &e.path;
            ensure!(valid_path(p) && !p.is_empty(), "invalid content name {p:?}");
            ensure!(
                e.kind == Kind::File
                    && e.link.is_none()
                    && e.rdev.is_none()
                    && e.data.is_some()
                    && e.size.is_some(),
                "{p:?}: origin content must be a regular file with data"
            );
            let digest = e.digest.with_context(|| format!("{p:?}: no digest"))?;
            ensure!(
                !tree.contains(&digest) && own.insert(digest),
                "{p:?}: content {} listed twice",
                digest.short()
            );
        }
        let known = |d: &Digest| tree.contains(d) || own.contains(d);
        for (i, l) in self.layers.iter().enumerate() {
            ensure!(
                known(&l.records),
                "layer {}: its records are missing",
                i + 1
            );
            if let Some(r) = &l.recipe {
                ensure!(
                    (r.codec as usize) < codecs,
                    "layer {}: codec index out of range",
                    i + 1
                );
                ensure!(known(&r.delta), "layer {}: its recipe is missing", i + 1);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::entry::{image_id, Data};
    use crate::image::format::{version, Header, ImageKind, Reader, Writer, MAGIC, MAGIC_V2};

    /// A one-file image that keeps an origin of one (made up) layer.
    fn with_origin(path: &std::path::Path) -> Header {
        let layer = Digest::of(b"a layer");
        let config = format!(
            r#"{{"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            layer.oci()
        );
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":7}}]}}"#,
            Digest::of(config.as_bytes()).oci(),
            config.len(),
            layer.oci()
        );
        let records = b"D4CTSR01".to_vec();
        let mut w = Writer::create(path).unwrap();
        let data = w.content(&records, 3).unwrap();
        let content = Entry {
            kind: Kind::File,
            size: Some(records.len() as u64),
            digest: Some(Digest::of(&records)),
            data: Some(data),
            ..Entry::dir(&records_name(0))
        };
        let mut h = Header {
            kind: ImageKind::Image,
            image_id: Digest([0; 32]),
            base_id: None,
            config,
            codecs: vec![],
            dicts: vec![],
            entries: vec![Entry::dir("")],
            origin: Some(Origin {
                manifest,
                layers: vec![OriginLayer {
                    records: Digest::of(&records),
                    recipe: None,
                }],
                content: vec![content],
            }),
        };
        h.image_id = h.compute_id();
        w.finish(&h).unwrap();
        h
    }

    #[test]
    fn provenance_is_version_2_and_a_version_1_file_may_not_claim_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.cdimg");
        let h = with_origin(&p);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(version(&bytes[..8]), Some(2));
        assert_eq!(&bytes[bytes.len() - 8..], MAGIC_V2);
        assert_eq!(Reader::open(&p).unwrap().header(), &h);
        // The same tree without its origin is another image.
        assert_ne!(image_id(&h.entries, None), h.image_id);

        let mut v1 = bytes.clone();
        let n = v1.len();
        v1[..8].copy_from_slice(MAGIC);
        v1[n - 8..].copy_from_slice(MAGIC);
        std::fs::write(&p, &v1).unwrap();
        let e = format!("{:#}", Reader::open(&p).err().unwrap());
        assert!(e.contains("provenance in a version 1 file"), "{e}");

        let mut mixed = bytes.clone();
        mixed[..8].copy_from_slice(MAGIC);
        std::fs::write(&p, &mixed).unwrap();
        let e = format!("{:#}", Reader::open(&p).err().unwrap());
        assert!(e.contains("magics differ"), "{e}");
    }

    #[test]
    fn an_origin_must_match_its_config_and_hold_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let h = with_origin(&dir.path().join("o.cdimg"));
        let o = h.origin.as_ref().unwrap();
        let tree = HashSet::new();
        assert!(o.validate(&h.config, 0, &tree).is_ok());
        let other = h.config.replace("layers\",", "layers\" ,");
        let e = format!("{:#}", o.validate(&other, 0, &tree).unwrap_err());
        assert!(e.contains("not the one the manifest names"), "{e}");
        let mut missing = o.clone();
        missing.content.clear();
        let e = format!("{:#}", missing.validate(&h.config, 0, &tree).unwrap_err());
        assert!(e.contains("records are missing"), "{e}");
        let mut twice = o.clone();
        twice.content.push(twice.content[0].clone());
        assert!(twice.validate(&h.config, 0, &tree).is_err());
        let mut bad = o.clone();
        bad.content[0].data = Some(Data::Same);
        bad.content[0].kind = Kind::Dir;
        assert!(bad.validate(&h.config, 0, &tree).is_err());
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(&[a]), Some(a));
        let ab = Digest::of(format!("{} {}", a.oci(), b.oci()).as_bytes());
        assert_eq!(chain_id(&[a, b]), Some(ab));
    }
}
