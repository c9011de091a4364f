//! `d4c load`: register an image chain with containerd so that
//! `ctr run --snapshotter d4c NAME:TAG` runs it (see d4c_snapshotter::load).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use d4c_snapshotter::load::{load, LoadOptions};

/// `d4c load`.
#[derive(Args)]
pub struct LoadArgs {
    /// The image name, e.g. `docker.io/library/app:v2`.
    name: String,
    /// A full image, then deltas in order (files, or a stored image's name).
    #[arg(required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// containerd's socket.
    #[arg(
        long,
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    address: PathBuf,
    /// containerd namespace.
    #[arg(long, env = "CONTAINERD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The d4c snapshotter's name in containerd's config.
    #[arg(long, default_value = "d4c")]
    snapshotter: String,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: &LoadArgs) -> Result<()> {
    let opts = LoadOptions {
        address: a.address.clone(),
        namespace: a.namespace.clone(),
        snapshotter: a.snapshotter.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let images = crate::store_cmd::expand(&a.images)?;
    let l = rt.block_on(load(&a.name, &images, &opts))?;
    if a.json {
        return crate::output::print_json(&serde_json::json!({
            "name": l.name,
            "image_id": l.image_id.oci(),
            "manifest": l.manifest.oci(),
            "snapshot_existed": l.snapshot_existed,
        }));
    }
    println!(
        "{}: image {}, manifest {}{}",
        l.name,
        l.image_id.short(),
        l.manifest.oci(),
        if l.snapshot_existed {
            " (snapshot already loaded)"
        } else {
            ""
        }
    );
    Ok(())
}
