//! OCI referrers: artifacts whose `subject` is a manifest. Found through the
//! distribution spec's referrers API (`GET /v2/<name>/referrers/<digest>`) or,
//! on registries without it (docker-registry 2.8), its tag-schema fallback: an
//! image index under the tag `sha256-<hex>` listing them, which the pusher
//! keeps up to date.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::artifact::{Descriptor, Manifest};
use super::Registry;
use crate::digest::Digest;

/// Media type of an OCI image index.
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Most referrers read for one manifest (a guard against hostile lists).
const MAX_REFERRERS: usize = 10_000;
/// Times the fallback index is re-read and rewritten when another push raced.
const TRIES: usize = 4;

/// The fallback tag of `subject`.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

impl Index {
    fn parse(data: &[u8]) -> Result<Index> {
        let mut i: Index = serde_json::from_slice(data).context("not an OCI image index")?;
        i.manifests.truncate(MAX_REFERRERS);
        Ok(i)
    }
}

/// The referrers of `subject`: the registry's API if it has one, else the
/// fallback tag's index (empty if neither lists any).
pub fn list(reg: &Registry, subject: &Digest) -> Result<Vec<Descriptor>> {
    let what = || format!("the referrers of {} in {}", subject.oci(), reg.reference());
    if let Some(data) = reg.referrers(subject)? {
        return Ok(Index::parse(&data).with_context(what)?.manifests);
    }
    match reg.get_manifest(&fallback_tag(subject))? {
        Some((data, _)) => Ok(Index::parse(&data).with_context(what)?.manifests),
        None => Ok(Vec::new()),
    }
}

/// The descriptor of `manifest` (stored as `bytes`) in a referrers list.
pub fn descriptor(manifest: &Manifest, bytes: &[u8]) -> Descriptor {
    let mut d = Descriptor::new(
        super::client::OCI_MANIFEST,
        &Digest::of(bytes),
        bytes.len() as u64,
    );
    d.artifact_type = manifest.artifact_type.clone();
    d.annotations = manifest.annotations.clone();
    d
}

/// Records `referrers` of `subject` in the fallback tag's index (for a
/// registry that did not index them itself). Registries have no
/// compare-and-swap: the write is read back and retried when a concurrent
/// push replaced it.
pub fn add_to_fallback(reg: &Registry, subject: &Digest, referrers: &[Descriptor]) -> Result<()> {
    let tag = fallback_tag(subject);
    let has_all = |i: &Index| {
        referrers
            .iter()
            .all(|r| i.manifests.iter().any(|m| m.digest == r.digest))
    };
    let read = || -> Result<Index> {
        match reg.get_manifest(&tag)? {
            Some((data, _)) => Index::parse(&data)
                .with_context(|| format!("the referrers index {tag} in {}", reg.reference())),
            None => Ok(Index {
                schema_version: 2,
                media_type: Some(INDEX_TYPE.to_string()),
                manifests: Vec::new(),
            }),
        }
    };
    for attempt in 0..TRIES {
        let mut index = read()?;
        if has_all(&index) {
            return Ok(());
        }
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50 << attempt));
        }
        for r in referrers {
            if !index.manifests.iter().any(|m| m.digest == r.digest) {
                index.manifests.push(r.clone());
            }
        }
        let bytes = serde_json::to_vec(&index).expect("index serializes");
        reg.put_manifest(&tag, &bytes, INDEX_TYPE)?;
    }
    if has_all(&read()?) {
        return Ok(());
    }
    anyhow::bail!(
        "{}: other pushes kept replacing the referrers index {tag}",
        reg.reference()
    )
}
