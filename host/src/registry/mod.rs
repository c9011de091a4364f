//! OCI distribution registries: the client d4c pushes to and pulls from, and
//! how its content is laid out there (docs/FORMAT.md, "In a registry").
//!
//! - [`reference`]: `HOST[:PORT]/REPO[:TAG]` as users write it.
//! - [`auth`]: credentials and the basic / bearer-token challenges.
//! - [`client`]: blobs and manifests over HTTP(S); resumable, checked downloads.
//! - [`artifact`]: cdimgs, codecs and the repository index as OCI artifacts.

pub mod artifact;
pub mod auth;
pub mod client;
pub mod reference;

pub use client::{ConnectOptions, Registry};
pub use reference::Reference;

use anyhow::{Context, Result};

use artifact::{Manifest, RepoIndex, INDEX_JSON_TYPE, INDEX_TAG, INDEX_TYPE};

/// Largest repository index accepted.
const MAX_INDEX: u64 = 64 << 20;

/// The repository's d4c index, if it has one.
pub fn read_index(reg: &Registry) -> Result<Option<RepoIndex>> {
    let Some((data, _)) = reg.get_manifest(INDEX_TAG)? else {
        return Ok(None);
    };
    let m = Manifest::parse(&data).context("the d4c index manifest")?;
    let layer = m.d4c_layer(INDEX_TYPE)?;
    let blob = reg.fetch_blob_bytes(&layer.sha256()?, MAX_INDEX.min(layer.size))?;
    RepoIndex::parse(&blob).map(Some)
}

/// Stores `index` as the repository's d4c index.
pub fn write_index(reg: &Registry, index: &RepoIndex) -> Result<()> {
    let data = index.to_bytes();
    let digest = reg.push_blob_bytes(&data)?;
    reg.push_blob_bytes(artifact::EMPTY_CONFIG)?;
    let layer = artifact::Descriptor::new(INDEX_JSON_TYPE, &digest, data.len() as u64);
    let m = Manifest::artifact(INDEX_TYPE, layer, Default::default());
    reg.put_manifest(INDEX_TAG, &m.to_bytes(), client::OCI_MANIFEST)?;
    Ok(())
}
