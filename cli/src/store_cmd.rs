//! The local image store (`$D4C_HOME/images`): `d4c images`, `d4c rmi`, and
//! the names of stored images wherever a command takes cdimg files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use d4c_host::digest::Digest;
use d4c_host::image::chain::Chain;
use d4c_host::image::delta::patch;
use d4c_host::image::store::{self, ImageStore, StoreLock, StoredImage};
use serde::Serialize;

use crate::bar::Bar;
use crate::output::{human_bytes, print_json};
use crate::CodecArgs;

/// `d4c images`.
#[derive(Args)]
pub struct ImagesArgs {
    /// One JSON array on stdout.
    #[arg(long)]
    json: bool,
}

/// `d4c rmi`.
#[derive(Args)]
pub struct RmiArgs {
    /// Names of stored images (`REGISTRY/REPO:TAG`, or `REPO:TAG` where one
    /// image has it).
    #[arg(required = true)]
    names: Vec<String>,
    /// One JSON array of the removed images on stdout.
    #[arg(long)]
    json: bool,
}

/// The store commands use: `$D4C_HOME/images`.
pub fn open() -> Result<ImageStore> {
    ImageStore::open(&ImageStore::default_dir())
}

/// A stored image as `images --json` shows it.
#[derive(Serialize)]
struct Listed {
    #[serde(flatten)]
    image: StoredImage,
    /// Bytes of its chain's files.
    size: u64,
}

pub fn images(a: &ImagesArgs) -> Result<()> {
    let store = open()?;
    let listed: Vec<Listed> = store
        .list()?
        .into_iter()
        .map(|image| {
            let size = store
                .paths(&image)
                .iter()
                .filter_map(|p| p.metadata().ok())
                .map(|m| m.len())
                .sum();
            Listed { image, size }
        })
        .collect();
    if a.json {
        return print_json(&listed);
    }
    println!(
        "{:<50} {:<12} {:>5} {:>10}",
        "NAME", "IMAGE ID", "CHAIN", "SIZE"
    );
    for l in &listed {
        println!(
            "{:<50} {:<12} {:>5} {:>10}",
            l.image.name,
            l.image.image_id.short(),
            l.image.chain.len(),
            human_bytes(l.size)
        );
    }
    Ok(())
}

pub fn rmi(a: &RmiArgs) -> Result<()> {
    let store = open()?;
    let lock = store.lock()?;
    let removed = store.remove(&lock, &a.names)?;
    if a.json {
        return print_json(&removed);
    }
    for r in &removed {
        println!("removed {} ({})", r.name, r.image_id.short());
    }
    Ok(())
}

/// Command arguments naming cdimg files, with each name of a stored image
/// replaced by its chain's files (a full image, then deltas). A path that
/// exists is a file, whatever it looks like.
pub fn expand(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut store = None;
    for a in args {
        match stored(a, &mut store)? {
            Some((s, image)) => out.extend(s.paths(&image)),
            None => out.push(a.clone()),
        }
    }
    Ok(out)
}

/// One full image file for `arg`, a cdimg file or the name of a stored image.
/// A stored chain (a full image and deltas) is first made one full image in
/// the store, for commands that read one file (`diff`).
pub fn full_image(codecs: &CodecArgs, arg: &Path) -> Result<PathBuf> {
    let mut store = None;
    let Some((s, image)) = stored(arg, &mut store)? else {
        return Ok(arg.to_path_buf());
    };
    if let [one] = s.paths(&image).as_slice() {
        return Ok(one.clone());
    }
    let lock = s.lock()?;
    // Another process may have done it meanwhile.
    let image = s
        .find(&image.name)?
        .with_context(|| format!("{}: removed from the store meanwhile", image.name))?;
    let paths = s.paths(&image);
    if paths.len() == 1 {
        return Ok(paths[0].clone());
    }
    eprintln!(
        "d4c: note: {} is stored as a full image and {} delta(s); storing it as one full image",
        image.name,
        paths.len() - 1
    );
    let chain = Chain::open(&paths)?;
    let tmp = s.blobs().scratch_path("full");
    patch::materialize(
        &chain,
        &codecs.codecs()?,
        &tmp,
        FULL_LEVEL,
        crate::image_cmd::default_threads(),
        &Bar::new(),
    )?;
    let name = s.blobs().take(&tmp)?;
    let path = s.blobs().path(&name);
    s.set(
        &lock,
        StoredImage {
            chain: vec![name],
            updated: store::now(),
            ..image
        },
    )?;
    Ok(path)
}

/// zstd level for files rebuilt when the store turns a chain into one image:
/// fast, as a client's patch should be.
const FULL_LEVEL: i32 = 3;

/// The stored image `arg` names, if it is not a file and names one.
fn stored<'a>(
    arg: &Path,
    store: &'a mut Option<ImageStore>,
) -> Result<Option<(&'a ImageStore, StoredImage)>> {
    if arg.exists() {
        return Ok(None);
    }
    let Some(name) = arg.to_str().filter(|n| !looks_like_file(n)) else {
        return Ok(None);
    };
    if store.is_none() {
        *store = Some(open()?);
    }
    let s = store.as_ref().expect("just opened");
    match s.find(name)? {
        Some(image) => Ok(Some((s, image))),
        None => anyhow::bail!(
            "{name}: no such file, and no image of that name in the store (see d4c images)"
        ),
    }
}

/// Whether `name` reads as a path (so "no such file" is the right error).
fn looks_like_file(name: &str) -> bool {
    name.ends_with(".cdimg") || name.starts_with('.') || name.starts_with('/')
}

/// `name` as the store keys it, or an error saying how to name images.
pub fn canonical(name: &str) -> Result<String> {
    store::canonical_name(name).with_context(|| {
        format!("{name:?}: images in the store are named REGISTRY/REPO:TAG (--tag)")
    })
}

/// Stores `file` (the store's scratch file: see
/// [`d4c_host::image::store::Blobs::scratch_path`]) on top of `below` (names
/// in the store; empty when `file` is a full image) as `name`, the image
/// `(id, original manifest)`.
pub fn store_file(
    store: &ImageStore,
    lock: &StoreLock,
    name: &str,
    mut below: Vec<String>,
    file: &Path,
    (image_id, manifest): (Digest, Option<Digest>),
) -> Result<StoredImage> {
    let name = canonical(name)?;
    below.push(store.blobs().take(file)?);
    let image = StoredImage {
        name,
        image_id,
        chain: below,
        manifest,
        updated: store::now(),
    };
    store.set(lock, image.clone())?;
    Ok(image)
}
