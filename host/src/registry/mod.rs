//! OCI distribution registries: the client d4c pushes to and pulls from, and
//! how its content is laid out there (docs/FORMAT.md, "In a registry").
//!
//! - [`reference`](mod@reference): `HOST[:PORT]/REPO[:TAG]` as users write it.
//! - [`auth`]: credentials and the basic / bearer-token challenges.
//! - [`client`]: blobs and manifests over HTTP(S); resumable, checked downloads.
//! - [`artifact`]: cdimgs, codecs and the repository index as OCI artifacts.
//! - [`referrers`]: artifacts attached to a manifest (its `subject`).
//! - [`tls`]: CA files, `certs.d` directories and client certificates.

pub mod artifact;
pub mod auth;
pub mod client;
pub mod reference;
pub mod referrers;
pub mod tls;

pub use client::{ConnectOptions, Registry};
pub use reference::Reference;

use anyhow::{Context, Result};

use artifact::{Manifest, RepoIndex, INDEX_JSON_TYPE, INDEX_TAG, INDEX_TYPE};

/// Largest repository index accepted.
const MAX_INDEX: u64 = 64 << 20;

/// The repository's d4c index, if it has one: the index tag completed with
/// the fragments pushes wrote (see [`RepoIndex::assemble`]).
pub fn read_index(reg: &Registry) -> Result<Option<RepoIndex>> {
    let main = read_main_index(reg)?;
    RepoIndex::assemble(main, reg.list_tags()?, |tag| read_index_at(reg, tag))
}

/// The index under the index tag alone, without fragments.
pub fn read_main_index(reg: &Registry) -> Result<Option<RepoIndex>> {
    read_index_at(reg, INDEX_TAG)
}

/// The index artifact under `tag`, if there is one.
fn read_index_at(reg: &Registry, tag: &str) -> Result<Option<RepoIndex>> {
    let Some((data, _)) = reg.get_manifest(tag)? else {
        return Ok(None);
    };
    let m = Manifest::parse(&data).with_context(|| format!("the d4c index manifest {tag}"))?;
    let layer = m.d4c_layer(INDEX_TYPE)?;
    let blob = reg.fetch_blob_bytes(&layer.sha256()?, MAX_INDEX.min(layer.size))?;
    RepoIndex::parse(&blob).map(Some)
}

/// Stores `index` as the repository's d4c index.
pub fn write_index(reg: &Registry, index: &RepoIndex) -> Result<()> {
    write_index_at(reg, INDEX_TAG, index)
}

/// Stores `fragment` (what one push adds) under its own fragment tag.
pub fn write_fragment(
    reg: &Registry,
    blob: &crate::digest::Digest,
    fragment: &RepoIndex,
) -> Result<()> {
    write_index_at(reg, &RepoIndex::fragment_tag(blob), fragment)
}

fn write_index_at(reg: &Registry, tag: &str, index: &RepoIndex) -> Result<()> {
    let data = index.to_bytes();
    let digest = reg.push_blob_bytes(&data)?;
    reg.push_blob_bytes(artifact::EMPTY_CONFIG)?;
    let layer = artifact::Descriptor::new(INDEX_JSON_TYPE, &digest, data.len() as u64);
    let m = Manifest::artifact(INDEX_TYPE, layer, Default::default());
    reg.put_manifest(tag, &m.to_bytes(), client::OCI_MANIFEST)?;
    Ok(())
}

/// The header of the cdimg blob `blob` (of `size` bytes), read with two range
/// requests (footer, then header) and checked like a local file's.
pub fn read_header(
    reg: &Registry,
    blob: &crate::digest::Digest,
    size: u64,
) -> Result<crate::image::format::Header> {
    use crate::image::format::{Footer, FOOTER_LEN};
    anyhow::ensure!(
        size >= FOOTER_LEN,
        "blob {blob:?} is too short to be a cdimg"
    );
    let footer = reg.fetch_range(blob, size - FOOTER_LEN, FOOTER_LEN)?;
    let f = Footer::parse(&footer, size).with_context(|| format!("blob {blob:?}"))?;
    let raw = reg.fetch_range(blob, f.header_offset, f.header_len)?;
    f.header(&raw).with_context(|| format!("blob {blob:?}"))
}
