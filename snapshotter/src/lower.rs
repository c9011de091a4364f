//! Lower layers of an image the snapshotter serves whole. containerd names
//! layers by chain id, so another image with the same first layers (an
//! ordinary one, unpacked by containerd) finds them as existing snapshots
//! and builds on them, or runs a container from one. Such a placeholder is
//! filled in on first use: the original layers up to it are rebuilt from the
//! stored image (checked against their diff_ids), applied, and the resulting
//! tree extracted into it, which is then whole.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use d4c_host::codec::Codecs;
use d4c_host::image::builder::{self, BuildOptions, SourceImage};
use d4c_host::image::chain::Chain;
use d4c_host::image::extract::extract;
use d4c_host::image::origin::rebuild::Original;
use d4c_host::progress::Silent;

/// Writes into `dest` (which must not exist) the tree of the first `layers`
/// original layers of the image `chain` (cdimg paths) yields; scratch files go
/// in `scratch`.
pub fn fill(
    chain: &[PathBuf],
    layers: usize,
    codecs: &Codecs,
    dest: &Path,
    scratch: &Path,
    threads: usize,
) -> Result<()> {
    let chain = Chain::open(chain)?;
    let original = Original::of(&chain, codecs)?;
    let tmp = tempfile::Builder::new()
        .prefix(".d4c-lower-")
        .tempdir_in(scratch)?;
    let described = &original.described;
    anyhow::ensure!(
        layers >= 1 && layers <= described.layers.len(),
        "the image has {} layers, not {layers}",
        described.layers.len()
    );
    let mut tars = Vec::new();
    for (i, l) in described.layers.iter().take(layers).enumerate() {
        let path = tmp.path().join(format!("layer-{i}.tar"));
        let mut f = std::fs::File::create(&path)?;
        original.write_tar(i, &mut f, &Silent)?;
        tars.push((path, Some(l.diff_id)));
    }
    let image = SourceImage {
        config: config_with_layers(&chain.top().config, layers)?,
        manifest: None,
        layers: tars,
        _tmp: None,
    };
    let partial = tmp.path().join("lower.cdimg");
    let opts = BuildOptions {
        level: 1,
        threads,
        origin: false,
    };
    builder::convert_image(&image, &partial, opts, None, &Silent)?;
    let partial = Chain::open(&[partial])?;
    extract(&partial, codecs, dest, threads, &Silent)?;
    Ok(())
}

/// The image config with only the first `layers` diff_ids.
fn config_with_layers(config: &str, layers: usize) -> Result<Vec<u8>> {
    let mut v: serde_json::Value =
        serde_json::from_str(config).context("the image config is not JSON")?;
    let ids = v
        .pointer_mut("/rootfs/diff_ids")
        .and_then(|d| d.as_array_mut())
        .context("the image config lists no diff_ids")?;
    ids.truncate(layers);
    Ok(serde_json::to_vec(&v)?)
}
