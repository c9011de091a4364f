//! Images containerd's CRI plugin pulls (kubelet's pulls): containerd prepares
//! each layer with labels naming the image (`cri.image-ref`,
//! `cri.manifest-digest`, `cri.layer-digest`, and the layer's chain id as
//! `containerd.io/snapshot.ref`). When d4c artifacts are attached to that
//! manifest (`d4c push --attach`), the snapshotter fetches the cheapest update
//! from the images it already holds, checks that it rebuilds the manifest's
//! layers exactly, and serves the image itself: containerd fetches no layer.
//! Without artifacts the layer is unpacked by containerd as usual.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use d4c_host::codec::Codecs;
use d4c_host::digest::Digest;
use d4c_host::image::chain::Chain;
use d4c_host::image::format::{ImageKind, Reader};
use d4c_host::image::origin::rebuild;
use d4c_host::progress::Silent;
use d4c_host::registry::{ConnectOptions, Reference, Registry};
use d4c_host::update::attach;
use d4c_host::update::plan::{self, Holdings};
use d4c_host::update::pull::fetch_codec;

use crate::meta::StoredImage;
use d4c_host::image::store::Blobs;

/// The chain id a prepared layer is to be committed as.
pub const REF_LABEL: &str = "containerd.io/snapshot.ref";
/// The image reference being pulled.
pub const IMAGE_REF_LABEL: &str = "containerd.io/snapshot/cri.image-ref";
/// The image's manifest digest.
pub const MANIFEST_LABEL: &str = "containerd.io/snapshot/cri.manifest-digest";
/// The layer's digest.
pub const LAYER_LABEL: &str = "containerd.io/snapshot/cri.layer-digest";

/// How the snapshotter reaches registries and what it keeps.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// TLS options and credentials (looked up per registry when none).
    pub connect: ConnectOptions,
    /// Images kept per repository once no snapshot uses them, as bases for
    /// the next update (the most recently pulled first).
    pub keep_per_repository: usize,
    /// Threads verifying a fetched image.
    pub threads: usize,
    /// Per registry host, endpoints (`http://` or `https://` URLs) tried
    /// before it.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Per registry host, the login to use (containerd's CRI registry
    /// config); other hosts' come from the auth files.
    pub logins: BTreeMap<String, d4c_host::registry::auth::Credentials>,
    /// A d4c image store (`$D4C_HOME/images`, filled by `d4c pull`) whose
    /// images updates may start from too: the start's files are copied in.
    pub shared_store: Option<PathBuf>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            connect: ConnectOptions::default(),
            keep_per_repository: 2,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            mirrors: BTreeMap::new(),
            logins: BTreeMap::new(),
            shared_store: None,
        }
    }
}

/// What containerd's labels say a layer prepare is for.
#[derive(Debug, Clone)]
pub struct Target {
    /// The chain id to commit as.
    pub chain_id: String,
    /// The repository the image comes from.
    pub repository: Reference,
    /// The image's manifest digest.
    pub manifest: Digest,
    /// The layer's digest.
    pub layer: Digest,
}

impl Target {
    /// The target the labels name, if they name one (`None`: an ordinary
    /// prepare, or labels d4c cannot use; containerd unpacks then).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<Target> {
        let chain_id = labels.get(REF_LABEL)?.clone();
        let image = labels.get(IMAGE_REF_LABEL)?;
        let mut repository = Reference::parse(image).ok()?;
        repository.tag = None;
        repository.digest = None;
        Some(Target {
            chain_id,
            repository,
            manifest: labels.get(MANIFEST_LABEL)?.parse().ok()?,
            layer: labels.get(LAYER_LABEL)?.parse().ok()?,
        })
    }
}

/// An image just fetched: downloads checked and verified, not yet stored.
pub struct Fetched {
    /// What to record once the downloads are adopted.
    pub image: StoredImage,
    /// The downloads (blob path and digest) that complete the chain: after
    /// `image.chain`'s held prefix.
    pub downloads: Vec<(PathBuf, Digest)>,
    /// The held image the update started from.
    pub start: Option<Digest>,
    /// Blob bytes received from the registry.
    pub received: u64,
    /// Time spent planning and downloading, then verifying.
    pub took: (std::time::Duration, std::time::Duration),
}

/// Fetches the image `target` names if d4c artifacts are attached to it:
/// plans from `held` (manifest digest -> stored image), downloads into the
/// store's incoming files, fetches codecs, and verifies the rebuilt image
/// against the manifest. `Ok(None)`: nothing attached.
pub fn fetch(
    target: &Target,
    held: &BTreeMap<Digest, StoredImage>,
    store: &Blobs,
    codecs: &Codecs,
    opts: &RemoteOptions,
) -> Result<Option<Fetched>> {
    let started = std::time::Instant::now();
    let reg = connect(&target.repository, opts)?;
    let Some(attached) = attach::discover(&reg, &target.manifest)? else {
        return Ok(None);
    };
    let shared = shared_images(opts)?;
    let holdings = Holdings {
        images: held
            .values()
            .map(|i| i.image_id)
            .chain(shared.iter().map(|(i, _)| i.image_id))
            .collect(),
        codecs: codecs.held()?.into_iter().collect::<HashSet<_>>(),
        fetch_codecs: true,
    };
    let plan = plan::plan(&attached.index, attached.target, &holdings)?;
    for c in &plan.fetch {
        fetch_codec(&reg, codecs, c)?;
    }
    let mut chain = match plan.start {
        Some(s) => start_chain(s, held, &shared, store)?,
        None => Vec::new(),
    };
    let mut paths: Vec<PathBuf> = chain.iter().map(|n| store.path(n)).collect();
    let mut downloads = Vec::new();
    for step in &plan.steps {
        let dest = store.download_path(&step.blob);
        reg.fetch_blob(&step.blob, step.size, &dest, &Silent)?;
        let h = Reader::open(&dest)?.header().clone();
        ensure!(
            h.kind == step.kind && h.image_id == step.image_id && h.base_id == step.base_id,
            "blob {:?} is not the cdimg its artifact says it is",
            step.blob
        );
        if step.kind == ImageKind::Image {
            chain.clear();
            paths.clear();
        }
        paths.push(dest.clone());
        downloads.push((dest, step.blob));
    }
    let downloaded = started.elapsed();
    let described = verify(&paths, codecs, &target.manifest, opts.threads)?;
    let layers = described.iter().map(|l| l.digest).collect();
    let whole: u64 = described.iter().map(|l| l.size).sum();
    d4c_host::metrics::add("d4c_snapshotter_bytes_received_total", &[], reg.received());
    d4c_host::metrics::add(
        "d4c_snapshotter_bytes_saved_total",
        &[],
        whole.saturating_sub(reg.received()),
    );
    Ok(Some(Fetched {
        image: StoredImage {
            image_id: plan.target,
            repository: format!(
                "{}/{}",
                target.repository.registry, target.repository.repository
            ),
            layers,
            chain,
            used: crate::meta::now(),
        },
        downloads,
        start: plan.start,
        received: reg.received(),
        took: (downloaded, started.elapsed() - downloaded),
    }))
}

/// The chain (names in `store`) of the held image `start`: the snapshotter's
/// own, or a shared store's, copied in.
fn start_chain(
    start: Digest,
    held: &BTreeMap<Digest, StoredImage>,
    shared: &[(d4c_host::image::store::StoredImage, Vec<PathBuf>)],
    store: &Blobs,
) -> Result<Vec<String>> {
    if let Some(i) = held.values().find(|i| i.image_id == start) {
        return Ok(i.chain.clone());
    }
    let (_, files) = shared
        .iter()
        .find(|(i, _)| i.image_id == start)
        .context("the plan starts from an image not held")?;
    files.iter().map(|f| store.import(f)).collect()
}

/// The images of the shared d4c store, with their files, if there is one.
fn shared_images(
    opts: &RemoteOptions,
) -> Result<Vec<(d4c_host::image::store::StoredImage, Vec<PathBuf>)>> {
    let Some(dir) = opts.shared_store.as_deref().filter(|d| d.is_dir()) else {
        return Ok(Vec::new());
    };
    let store = d4c_host::image::store::ImageStore::open(dir)?;
    Ok(store
        .list()?
        .into_iter()
        .map(|i| {
            let files = store.paths(&i);
            (i, files)
        })
        .collect())
}

/// The repository through its first mirror that answers, else itself.
fn connect(repository: &Reference, opts: &RemoteOptions) -> Result<Registry> {
    let options = |r: &Reference| ConnectOptions {
        credentials: opts
            .logins
            .get(&r.registry)
            .cloned()
            .or_else(|| opts.connect.credentials.clone()),
        ..opts.connect.clone()
    };
    for endpoint in opts.mirrors.get(&repository.registry).into_iter().flatten() {
        let mirror = through(repository, endpoint)?;
        match Registry::connect(&mirror, &options(&mirror)) {
            Ok(reg) => return Ok(reg),
            Err(e) => crate::log::log(
                crate::log::Level::Warn,
                &format!("mirror {endpoint} of {}: {e:#}", repository.registry),
            ),
        }
    }
    Registry::connect(repository, &options(repository))
}

/// `repository` served by the mirror at `endpoint` (`http[s]://HOST[:PORT]`).
fn through(repository: &Reference, endpoint: &str) -> Result<Reference> {
    let (plain_http, host) = match endpoint.split_once("://") {
        Some(("http", h)) => (true, h),
        Some(("https", h)) => (false, h),
        _ => anyhow::bail!(
            "mirror endpoint {endpoint:?}: want http://HOST[:PORT] or https://HOST[:PORT]"
        ),
    };
    let host = host.trim_end_matches('/');
    ensure!(
        !host.is_empty() && !host.contains('/'),
        "mirror endpoint {endpoint:?}: a host, without a path"
    );
    Ok(Reference {
        registry: host.to_string(),
        plain_http,
        ..repository.clone()
    })
}

/// Rebuilds every original layer of the image `paths` yield and checks it
/// against `manifest`'s digests, before any container sees a file of it;
/// returns the layers.
fn verify(
    paths: &[PathBuf],
    codecs: &Codecs,
    manifest: &Digest,
    threads: usize,
) -> Result<Vec<d4c_host::image::origin::LayerDesc>> {
    let chain = Chain::open(paths)?;
    let top = chain.top();
    let origin = top
        .origin
        .as_ref()
        .context("the attached image keeps no original image to verify")?;
    ensure!(
        origin.manifest_digest() == *manifest,
        "the attached image rebuilds manifest {}, not {}",
        origin.manifest_digest().oci(),
        manifest.oci()
    );
    rebuild::verify(&chain, codecs, Some(manifest), threads, &Silent)
        .with_context(|| format!("verifying the image of {}", manifest.oci()))?;
    Ok(origin.describe(&top.config)?.layers)
}

/// The stored images to forget: beyond the `keep` most recently pulled of each
/// repository, those no snapshot uses (`in_use`).
pub fn expired(
    images: &BTreeMap<Digest, StoredImage>,
    in_use: &HashSet<Digest>,
    keep: usize,
) -> Vec<Digest> {
    let mut by_repo: BTreeMap<&str, Vec<(&Digest, &StoredImage)>> = BTreeMap::new();
    for (m, i) in images {
        by_repo.entry(&i.repository).or_default().push((m, i));
    }
    let mut out = Vec::new();
    for (_, mut list) in by_repo {
        list.sort_by_key(|(_, i)| std::cmp::Reverse(i.used));
        out.extend(
            list.into_iter()
                .skip(keep)
                .filter(|(m, _)| !in_use.contains(m))
                .map(|(m, _)| *m),
        );
    }
    out
}
