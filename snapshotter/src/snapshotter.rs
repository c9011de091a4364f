//! The snapshotter's operations, as containerd's snapshots API defines them,
//! synchronous and independent of gRPC ([`crate::service`] adapts them).
//!
//! Directory layout under the root:
//!
//! ```text
//! metadata.json          every snapshot (crate::meta)
//! snapshots/<id>/fs      a snapshot's tree: an overlay upper dir, a committed
//!                        layer, or the FUSE mount of a d4c image chain
//! snapshots/<id>/work    overlayfs work dir of an active snapshot
//! images/<sha256>.cdimg  cdimg files d4c snapshots are served from
//! codecs/, cache/        codec store, compiled components, rebuilt contents
//! ```
//!
//! A snapshot prepared with the label [`CHAIN_LABEL`] (a JSON list of cdimg
//! paths: a full image, then deltas) is served from those images: they are
//! copied into the image store (each file once) and mounted read-only with the
//! host library's lazy mount. Committed, it is a parent like any other: a
//! container's active snapshot is an overlay with the mount as its lower dir.
//!
//! A layer containerd's CRI plugin prepares for an image with d4c artifacts
//! attached ([`crate::remote`]) is answered `AlreadyExists` once the image is
//! fetched and verified: its top layer's snapshot is the image's mount (a
//! whole tree: its parents add nothing), the layers below are empty
//! placeholders, filled in ([`crate::lower`]) when another image builds on
//! one or a container runs from one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use d4c_host::codec::Codecs;
use d4c_host::mount;
use d4c_host::mount::cache::Flights;
use tonic::Status;

use crate::log::{log, Level};
use crate::meta::{now, Kind, Meta, Snapshot, StoredImage};
use crate::mounts::Mounts;
use crate::remote::{self, RemoteOptions, Target};
use d4c_host::image::store::Blobs;

/// How long an image found to have no d4c artifacts is not asked again.
const PLAIN_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// The label that makes a snapshot a d4c image chain. containerd passes labels
/// with the `containerd.io/snapshot/` prefix on to proxy snapshotters.
pub const CHAIN_LABEL: &str = "containerd.io/snapshot/d4c.chain";

/// A mount for containerd to perform (`containerd.types.Mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// File system type: `bind` or `overlay`.
    pub kind: String,
    /// Source.
    pub source: String,
    /// Options.
    pub options: Vec<String>,
}

/// Usage of a snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Bytes.
    pub size: i64,
    /// Inodes.
    pub inodes: i64,
}

/// Snapshot metadata as the API reports it.
#[derive(Debug, Clone)]
pub struct Info {
    /// Key or name.
    pub name: String,
    /// Parent name, empty for none.
    pub parent: String,
    /// Kind.
    pub kind: Kind,
    /// Creation time (ns since the epoch).
    pub created: i128,
    /// Last update (ns since the epoch).
    pub updated: i128,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

struct State {
    meta: Meta,
    /// d4c snapshots that could not be mounted again at start (a damaged or
    /// missing image, a missing codec), with why: they and their children fail
    /// alone while the rest is served.
    broken: HashMap<String, String>,
}

/// The snapshotter.
pub struct Snapshotter {
    root: PathBuf,
    images: Blobs,
    codecs: Codecs,
    /// The mount manager serving d4c snapshots' mounts.
    mounts: Mounts,
    state: Mutex<State>,
    /// Registries and retention, when the snapshotter fetches images itself.
    remote: Option<RemoteOptions>,
    /// One fetch per image manifest at a time.
    fetching: Flights<d4c_host::digest::Digest>,
    /// Manifests recently found without d4c artifacts, and when.
    plain: Mutex<HashMap<d4c_host::digest::Digest, std::time::Instant>>,
}

fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

fn not_found(key: &str) -> Status {
    Status::not_found(format!("snapshot {key} does not exist"))
}

impl Snapshotter {
    /// Opens the snapshotter in `root`, its d4c snapshots served by the mount
    /// manager `mounts` (which keeps those it already serves: a restart
    /// leaves running containers' files readable).
    pub fn open(root: &Path, codecs: Codecs, mounts: Mounts) -> anyhow::Result<Snapshotter> {
        // Images, metadata and mounts are root's alone: no local user may read
        // an image's files or plant a codec or a compiled module here.
        d4c_host::fsutil::create_private_dir(root)?;
        d4c_host::fsutil::create_dir_all(&root.join("snapshots"))?;
        let root = root.canonicalize()?;
        let meta = Meta::load(&root.join("metadata.json"))?;
        let s = Snapshotter {
            images: Blobs::open(&root.join("images"))?,
            root,
            codecs,
            mounts,
            state: Mutex::new(State {
                meta,
                broken: HashMap::new(),
            }),
            remote: None,
            fetching: Flights::default(),
            plain: Mutex::new(HashMap::new()),
        };
        let mut st = s.state.lock().expect("state lock");
        let d4c: Vec<(String, Snapshot)> = st
            .meta
            .snapshots
            .iter()
            .filter(|(_, v)| !v.chain.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, snap) in d4c {
            if let Err(e) = s.mount_chain(&snap) {
                let why = format!("{e:#}").replace('\n', " ");
                log(
                    Level::Warn,
                    &format!("snapshot {key} cannot be served: {why}"),
                );
                st.broken.insert(key, why);
            }
        }
        drop(st);
        Ok(s)
    }

    /// Lets the snapshotter fetch images with d4c artifacts attached when
    /// containerd's CRI plugin pulls them.
    pub fn with_remote(mut self, opts: RemoteOptions) -> Snapshotter {
        self.remote = Some(opts);
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn fs_of(&self, snap: &Snapshot) -> PathBuf {
        self.dir(snap.id).join("fs")
    }

    /// Has the mount manager serve the d4c snapshot `snap`.
    fn mount_chain(&self, snap: &Snapshot) -> anyhow::Result<()> {
        let paths: Vec<PathBuf> = snap.chain.iter().map(|n| self.images.path(n)).collect();
        self.mounts.mount(&paths, &self.fs_of(snap))
    }

    /// `Prepare` (kind Active) and `View` (kind View).
    pub fn prepare(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<MountSpec>, Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument("empty snapshot key"));
        }
        self.prepare_unlocked(kind, parent, &labels)?;
        let mut st = self.state.lock().expect("state lock");
        if st.meta.snapshots.contains_key(key) {
            return Err(Status::already_exists(format!(
                "snapshot {key} already exists"
            )));
        }
        let parent = (!parent.is_empty()).then(|| parent.to_string());
        if let Some(p) = &parent {
            match st.meta.snapshots.get(p) {
                None => {
                    return Err(Status::not_found(format!(
                        "parent snapshot {p} does not exist"
                    )))
                }
                Some(s) if s.kind != Kind::Committed => {
                    return Err(Status::failed_precondition(format!(
                        "parent snapshot {p} is not committed"
                    )))
                }
                _ => {}
            }
        }
        let chain_paths: Vec<PathBuf> = match labels.get(CHAIN_LABEL) {
            None => Vec::new(),
            Some(v) => {
                if parent.is_some() || kind != Kind::Active {
                    return Err(Status::invalid_argument(
                        "a d4c image snapshot is prepared without a parent",
                    ));
                }
                serde_json::from_str(v).map_err(|e| {
                    Status::invalid_argument(format!(
                        "label {CHAIN_LABEL}: want a JSON list of paths: {e}"
                    ))
                })?
            }
        };
        let chain = chain_paths
            .iter()
            .map(|p| self.images.import(p))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| {
                // Files imported before the failing one belong to nothing.
                self.gc_images(&st.meta);
                Status::invalid_argument(format!("{e:#}"))
            })?;
        let id = st.meta.next_id.max(1);
        let dir = self.dir(id);
        // A directory left by a crash before the metadata named it: start clean.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("fs")).map_err(|e| internal(e.into()))?;
        if kind == Kind::Active && chain.is_empty() {
            std::fs::create_dir_all(dir.join("work")).map_err(|e| internal(e.into()))?;
        }
        let t = now();
        let snap = Snapshot {
            id,
            kind,
            parent,
            labels,
            created: t,
            updated: t,
            chain,
            lower_of: None,
            whole: false,
        };
        if !snap.chain.is_empty() {
            if let Err(e) = self.mount_chain(&snap) {
                let _ = std::fs::remove_dir_all(&dir);
                self.gc_images(&st.meta);
                return Err(Status::invalid_argument(format!("{e:#}")));
            }
        }
        st.meta.next_id = id + 1;
        st.meta.snapshots.insert(key.to_string(), snap);
        if let Err(e) = st.meta.save() {
            if let Some(s) = st.meta.snapshots.remove(key) {
                if !s.chain.is_empty() {
                    let _ = self.mounts.unmount(&self.fs_of(&s));
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            return Err(internal(e));
        }
        self.mounts_of(&st, key)
    }

    /// What `prepare` does before it takes the lock (slow work that must not
    /// hold up other calls): a layer of a CRI pull served from d4c artifacts
    /// (then the answer is `AlreadyExists`, as containerd expects of a remote
    /// snapshotter), or a placeholder parent filled in.
    fn prepare_unlocked(
        &self,
        kind: Kind,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), Status> {
        if let (Kind::Active, Some(t)) = (kind, Target::from_labels(labels)) {
            if self.prepare_remote(&t, parent, labels)? {
                return Err(Status::already_exists(format!(
                    "target snapshot {} exists",
                    t.chain_id
                )));
            }
        }
        if !parent.is_empty() {
            self.fill_lower(parent)?;
        }
        Ok(())
    }

    /// Fills in the placeholder `name` if it is one (slow work unlocked, one
    /// at a time per image), so that a snapshot can build on it.
    fn fill_lower(&self, name: &str) -> Result<(), Status> {
        let placeholder = |s: &Self| {
            let st = s.state.lock().expect("state lock");
            let snap = st.meta.snapshots.get(name)?;
            let (manifest, layers) = snap.lower_of?;
            let chain = st.meta.images.get(&manifest).map(|i| i.chain.clone());
            Some((snap.id, manifest, layers, chain))
        };
        let Some((_, manifest, _, _)) = placeholder(self) else {
            return Ok(());
        };
        self.fetching.run(manifest, || {
            self.fill_placeholder(name, manifest, placeholder(self))
        })
    }

    /// [`Snapshotter::fill_lower`]'s work, under the image's flight lock;
    /// `found` is the placeholder as read then.
    fn fill_placeholder(
        &self,
        name: &str,
        manifest: d4c_host::digest::Digest,
        found: Option<(u64, d4c_host::digest::Digest, usize, Option<Vec<String>>)>,
    ) -> Result<(), Status> {
        let Some((id, _, layers, chain)) = found else {
            return Ok(());
        };
        let chain = chain.ok_or_else(|| {
            Status::failed_precondition(format!(
                "snapshot {name} is a layer of image {}, which is no longer stored",
                manifest.oci()
            ))
        })?;
        let paths: Vec<PathBuf> = chain.iter().map(|n| self.images.path(n)).collect();
        let fresh = self.dir(id).join("fs.new");
        let _ = std::fs::remove_dir_all(&fresh);
        let threads = self.remote.as_ref().map_or(2, |r| r.threads);
        let what = || format!("filling in snapshot {name}");
        crate::lower::fill(&paths, layers, &self.codecs, &fresh, &self.root, threads)
            .map_err(|e| internal(e.context(what())))?;
        let mut st = self.state.lock().expect("state lock");
        let fs = self.dir(id).join("fs");
        // (A placeholder's own tree holds nothing: a fill a crash cut short
        // may have left one.)
        let swapped = std::fs::remove_dir_all(&fs).and_then(|()| std::fs::rename(&fresh, &fs));
        if let Err(e) = swapped {
            let _ = std::fs::remove_dir_all(&fresh);
            return Err(internal(anyhow::Error::from(e).context(what())));
        }
        if let Some(s) = st.meta.snapshots.get_mut(name) {
            s.lower_of = None;
            s.whole = true;
        }
        st.meta.save().map_err(internal)
    }

    /// Serves the layer `t` names from d4c artifacts if its image has any:
    /// fetched (unlocked: other calls go on) unless held, then committed as
    /// `t.chain_id`. `Ok(false)`: no artifacts; containerd unpacks the layer.
    fn prepare_remote(
        &self,
        t: &Target,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, Status> {
        let Some(opts) = &self.remote else {
            return Ok(false);
        };
        let image = match self.fetched(t, opts) {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(false),
            // containerd can still pull the image itself.
            Err(e) => {
                let why = format!("{e:#}").replace('\n', " ");
                let m = t.manifest.oci();
                log(
                    Level::Warn,
                    &format!("{m}: unpacking as an ordinary image: {why}"),
                );
                return Ok(false);
            }
        };
        let Some(index) = image.layers.iter().position(|l| *l == t.layer) else {
            return Err(Status::invalid_argument(format!(
                "layer {} is not in image {}",
                t.layer.oci(),
                t.manifest.oci()
            )));
        };
        self.commit_remote(t, parent, labels, &image, index)?;
        Ok(true)
    }

    /// The stored image of `t.manifest`, fetched first if need be; `None` if
    /// it has no d4c artifacts.
    fn fetched(&self, t: &Target, opts: &RemoteOptions) -> anyhow::Result<Option<StoredImage>> {
        let stored = |s: &Self| {
            let st = s.state.lock().expect("state lock");
            st.meta.images.get(&t.manifest).cloned()
        };
        if let Some(i) = stored(self) {
            return Ok(Some(i));
        }
        let plain = self
            .plain
            .lock()
            .expect("plain lock")
            .get(&t.manifest)
            .copied();
        if plain.is_some_and(|at| at.elapsed() < PLAIN_FOR) {
            return Ok(None);
        }
        self.fetching.run(t.manifest, || match stored(self) {
            Some(i) => Ok(Some(i)),
            None => self.fetch(t, opts),
        })
    }

    /// Fetches the image of `t` (see [`remote::fetch`]) and stores it.
    fn fetch(&self, t: &Target, opts: &RemoteOptions) -> anyhow::Result<Option<StoredImage>> {
        let held = self.state.lock().expect("state lock").meta.images.clone();
        let fetched = remote::fetch(t, &held, &self.images, &self.codecs, opts);
        let result = match &fetched {
            Ok(Some(_)) => "fetched",
            Ok(None) => "none",
            Err(_) => "failed",
        };
        d4c_host::metrics::inc("d4c_snapshotter_fetches_total", &[result]);
        let Some(f) = fetched? else {
            let mut plain = self.plain.lock().expect("plain lock");
            plain.retain(|_, at| at.elapsed() < PLAIN_FOR);
            plain.insert(t.manifest, std::time::Instant::now());
            return Ok(None);
        };
        self.store_fetched(t, f, opts).map(Some)
    }

    /// Moves a fetched image's downloads into the store and records it;
    /// forgets images beyond the retention policy.
    fn store_fetched(
        &self,
        t: &Target,
        f: remote::Fetched,
        opts: &RemoteOptions,
    ) -> anyhow::Result<StoredImage> {
        let mut image = f.image;
        for (path, digest) in &f.downloads {
            image.chain.push(self.images.adopt(path, digest)?);
        }
        let start = f.start.map_or("nothing held".to_string(), |s| {
            format!("held image {}", s.short())
        });
        log(
            Level::Info,
            &format!(
                "fetched {} ({}, image {}) from {start}: {} bytes received, {} cdimg(s) \
                 in {:.2} s, verified in {:.2} s",
                t.manifest.oci(),
                image.repository,
                image.image_id.short(),
                f.received,
                f.downloads.len(),
                f.took.0.as_secs_f64(),
                f.took.1.as_secs_f64(),
            ),
        );
        let mut st = self.state.lock().expect("state lock");
        st.meta.images.insert(t.manifest, image.clone());
        // In use: served by a snapshot, or needed to fill one in.
        let chains: HashSet<&Vec<String>> = st.meta.snapshots.values().map(|s| &s.chain).collect();
        let lowers = st
            .meta
            .snapshots
            .values()
            .filter_map(|s| s.lower_of.map(|(m, _)| m));
        let in_use = st
            .meta
            .images
            .iter()
            .filter(|(_, i)| chains.contains(&i.chain))
            .map(|(m, _)| *m)
            .chain(lowers)
            .collect();
        for m in remote::expired(&st.meta.images, &in_use, opts.keep_per_repository) {
            st.meta.images.remove(&m);
        }
        st.meta.save()?;
        self.gc_images(&st.meta);
        Ok(image)
    }

    /// Commits layer `index` of the fetched `image` as `t.chain_id` on
    /// `parent`: the image's mount for its top layer, a placeholder below.
    fn commit_remote(
        &self,
        t: &Target,
        parent: &str,
        labels: &BTreeMap<String, String>,
        image: &StoredImage,
        index: usize,
    ) -> Result<(), Status> {
        let mut st = self.state.lock().expect("state lock");
        if st.meta.snapshots.contains_key(&t.chain_id) {
            return Ok(());
        }
        let parent = (!parent.is_empty()).then(|| parent.to_string());
        if let Some(p) = &parent {
            if st.meta.snapshots.get(p).map(|s| s.kind) != Some(Kind::Committed) {
                return Err(Status::failed_precondition(format!(
                    "parent snapshot {p} is not a committed snapshot"
                )));
            }
        }
        let top = index + 1 == image.layers.len();
        let id = st.meta.next_id.max(1);
        let dir = self.dir(id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("fs")).map_err(|e| internal(e.into()))?;
        let t0 = now();
        let snap = Snapshot {
            id,
            kind: Kind::Committed,
            parent,
            labels: labels.clone(),
            created: t0,
            updated: t0,
            chain: if top { image.chain.clone() } else { Vec::new() },
            lower_of: (!top).then_some((t.manifest, index + 1)),
            whole: false,
        };
        if top {
            if let Err(e) = self.mount_chain(&snap) {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(internal(e));
            }
        }
        st.meta.next_id = id + 1;
        st.meta.snapshots.insert(t.chain_id.clone(), snap);
        if let Some(i) = st.meta.images.get_mut(&t.manifest) {
            i.used = t0;
        }
        if let Err(e) = st.meta.save() {
            st.meta.snapshots.remove(&t.chain_id);
            if top {
                let _ = self.mounts.unmount(&dir.join("fs"));
            }
            let _ = std::fs::remove_dir_all(&dir);
            return Err(internal(e));
        }
        Ok(())
    }

    /// `Mounts`: how to mount the snapshot `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<MountSpec>, Status> {
        let st = self.state.lock().expect("state lock");
        self.mounts_of(&st, key)
    }

    fn mounts_of(&self, st: &State, key: &str) -> Result<Vec<MountSpec>, Status> {
        let meta = &st.meta;
        let snap = meta.snapshots.get(key).ok_or_else(|| not_found(key))?;
        if let Some((k, why)) = meta
            .lineage(key)
            .iter()
            .find_map(|k| st.broken.get(k).map(|w| (k, w)))
        {
            return Err(Status::failed_precondition(format!(
                "snapshot {k} cannot be served: {why}"
            )));
        }
        let fs = |s: &Snapshot| self.dir(s.id).join("fs").to_string_lossy().into_owned();
        // A d4c image's mount is a whole tree: what is below it adds nothing.
        let whole = |s: &Snapshot| !s.chain.is_empty() || s.whole;
        let mut lowers: Vec<String> = Vec::new();
        if !whole(snap) {
            for s in meta
                .lineage(key)
                .iter()
                .skip(1)
                .filter_map(|k| meta.snapshots.get(k))
            {
                lowers.push(fs(s));
                if whole(s) {
                    break;
                }
            }
        }
        let bind = |source: String, rw: bool| MountSpec {
            kind: "bind".into(),
            source,
            options: vec!["rbind".into(), if rw { "rw" } else { "ro" }.into()],
        };
        let writable = snap.kind == Kind::Active && snap.chain.is_empty();
        Ok(vec![match (writable, lowers.as_slice()) {
            // The image itself, or a tree without parents.
            (_, []) => bind(fs(snap), writable),
            (false, [one]) => bind(one.clone(), false),
            (false, _) => MountSpec {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![format!("lowerdir={}", lowers.join(":"))],
            },
            (true, _) => MountSpec {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!(
                        "workdir={}",
                        self.dir(snap.id).join("work").to_string_lossy()
                    ),
                    format!("upperdir={}", fs(snap)),
                    format!("lowerdir={}", lowers.join(":")),
                ],
            },
        }])
    }

    /// `Commit`: the active snapshot `key` becomes the committed `name`.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), Status> {
        let mut st = self.state.lock().expect("state lock");
        let snap = st.meta.snapshots.get(key).ok_or_else(|| not_found(key))?;
        if snap.kind != Kind::Active {
            return Err(Status::failed_precondition(format!(
                "snapshot {key} is not active"
            )));
        }
        if st.meta.snapshots.contains_key(name) {
            return Err(Status::already_exists(format!(
                "snapshot {name} already exists"
            )));
        }
        let mut snap = st.meta.snapshots.remove(key).expect("present");
        snap.kind = Kind::Committed;
        snap.labels.extend(labels);
        // A committed snapshot is a new one, as in containerd's own store.
        let (created, updated) = (snap.created, snap.updated);
        snap.created = now();
        snap.updated = snap.created;
        let id = snap.id;
        st.meta.snapshots.insert(name.to_string(), snap);
        if let Err(e) = st.meta.save() {
            let mut snap = st.meta.snapshots.remove(name).expect("present");
            snap.kind = Kind::Active;
            (snap.created, snap.updated) = (created, updated);
            st.meta.snapshots.insert(key.to_string(), snap);
            return Err(internal(e));
        }
        if let Some(why) = st.broken.remove(key) {
            st.broken.insert(name.to_string(), why);
        }
        let _ = std::fs::remove_dir_all(self.dir(id).join("work"));
        Ok(())
    }

    /// `Remove`: a snapshot without children goes, with its mount and data.
    pub fn remove(&self, key: &str) -> Result<(), Status> {
        let mut st = self.state.lock().expect("state lock");
        let snap = st
            .meta
            .snapshots
            .get(key)
            .ok_or_else(|| not_found(key))?
            .clone();
        if st.meta.has_children(key) {
            return Err(Status::failed_precondition(format!(
                "cannot remove snapshot {key}: it has children"
            )));
        }
        if !snap.chain.is_empty() {
            self.mounts.unmount(&self.fs_of(&snap)).map_err(internal)?;
        }
        st.broken.remove(key);
        st.meta.snapshots.remove(key);
        if let Err(e) = st.meta.save() {
            st.meta.snapshots.insert(key.to_string(), snap);
            return Err(internal(e));
        }
        // The metadata no longer names it: what is left on disk is garbage that
        // `cleanup` also collects, so failures here lose nothing.
        let _ = std::fs::remove_dir_all(self.dir(snap.id));
        self.gc_images(&st.meta);
        Ok(())
    }

    fn gc_images(&self, meta: &Meta) {
        let used: HashSet<String> = meta
            .snapshots
            .values()
            .flat_map(|s| s.chain.iter().cloned())
            .chain(meta.images.values().flat_map(|i| i.chain.iter().cloned()))
            .collect();
        if let Err(e) = self.images.retain(&used) {
            log(Level::Error, &format!("cleaning the image store: {e:#}"));
        }
    }

    /// `Stat`.
    pub fn stat(&self, key: &str) -> Result<Info, Status> {
        let st = self.state.lock().expect("state lock");
        let s = st.meta.snapshots.get(key).ok_or_else(|| not_found(key))?;
        Ok(info(key, s))
    }

    /// `Update`: labels only (the one mutable field). `paths` is the field mask:
    /// empty or `labels` replaces all labels, `labels.<key>` sets or removes one.
    pub fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Info, Status> {
        let mut st = self.state.lock().expect("state lock");
        let s = st
            .meta
            .snapshots
            .get_mut(key)
            .ok_or_else(|| not_found(key))?;
        let before = s.labels.clone();
        if paths.is_empty() || paths.iter().any(|p| p == "labels") {
            s.labels = labels;
        } else {
            for p in paths {
                let Some(k) = p.strip_prefix("labels.") else {
                    return Err(Status::invalid_argument(format!(
                        "cannot update field {p:?} of snapshot {key}"
                    )));
                };
                match labels.get(k) {
                    Some(v) => s.labels.insert(k.to_string(), v.clone()),
                    None => s.labels.remove(k),
                };
            }
        }
        s.updated = now();
        let out = info(key, s);
        if let Err(e) = st.meta.save() {
            if let Some(s) = st.meta.snapshots.get_mut(key) {
                s.labels = before;
            }
            return Err(internal(e));
        }
        Ok(out)
    }

    /// `List`: every snapshot (the service applies the request's filters).
    pub fn list(&self) -> Vec<Info> {
        let st = self.state.lock().expect("state lock");
        st.meta.snapshots.iter().map(|(k, s)| info(k, s)).collect()
    }

    /// `Usage`: what the snapshot itself takes: its own tree, or for a d4c
    /// image its top cdimg file (the rest is shared with the images below).
    pub fn usage(&self, key: &str) -> Result<Usage, Status> {
        let (dir, top) = {
            let st = self.state.lock().expect("state lock");
            let s = st.meta.snapshots.get(key).ok_or_else(|| not_found(key))?;
            (self.dir(s.id).join("fs"), s.chain.last().cloned())
        };
        if let Some(top) = top {
            let path = self.images.path(&top);
            let size = std::fs::metadata(&path)
                .map_err(|e| internal(e.into()))?
                .len();
            let r = d4c_host::image::format::Reader::open(&path).map_err(internal)?;
            return Ok(Usage {
                size: size as i64,
                inodes: r.header().entries.len() as i64,
            });
        }
        du(&dir).map_err(internal)
    }

    /// `Cleanup`: removes snapshot directories and images nothing names.
    pub fn cleanup(&self) -> Result<(), Status> {
        let st = self.state.lock().expect("state lock");
        let ids: HashSet<String> = st
            .meta
            .snapshots
            .values()
            .map(|s| s.id.to_string())
            .collect();
        let dir = self.root.join("snapshots");
        for e in std::fs::read_dir(&dir).map_err(|e| internal(e.into()))? {
            let e = e.map_err(|e| internal(e.into()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !ids.contains(&name) {
                let fs = e.path().join("fs");
                // A mount a crash left there must go before the directory:
                // one the manager still serves, or a dead one.
                let _ = self.mounts.unmount(&fs);
                let _ = mount::clean_stale(&fs);
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        self.gc_images(&st.meta);
        Ok(())
    }
}

fn info(key: &str, s: &Snapshot) -> Info {
    Info {
        name: key.to_string(),
        parent: s.parent.clone().unwrap_or_default(),
        kind: s.kind,
        created: s.created,
        updated: s.updated,
        labels: s.labels.clone(),
    }
}

/// Bytes and inodes below `dir`, each inode counted once.
fn du(dir: &Path) -> anyhow::Result<Usage> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p)?;
        if seen.insert((m.dev(), m.ino())) {
            usage.inodes += 1;
            usage.size += (m.blocks() * 512) as i64;
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use d4c_host::codec::{CodecStore, Limits, Runtime};
    use d4c_tests::raw::Raw;
    use std::sync::Arc;
    use tonic::Code;

    /// The test's mount managers (threads of this process), by root.
    type Managers = HashMap<PathBuf, (Arc<crate::mounts::Manager>, PathBuf)>;

    fn managers() -> &'static Mutex<Managers> {
        static M: std::sync::OnceLock<Mutex<Managers>> = std::sync::OnceLock::new();
        M.get_or_init(Default::default)
    }

    fn codecs(root: &Path) -> Codecs {
        let runtime = Runtime::new(Limits::default(), None).unwrap();
        Codecs::new(runtime, CodecStore::new(root.join("codecs")))
    }

    /// Opens the snapshotter in `root`, with a mount manager for it started
    /// in a thread the first time.
    fn open(root: &Path) -> Snapshotter {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        std::fs::create_dir_all(root).unwrap();
        let mut managers = managers().lock().unwrap();
        if !managers.contains_key(root) {
            let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let socket = root.with_extension(format!("mounts{n}.sock"));
            let cache =
                d4c_host::mount::cache::ContentCache::open(&root.with_extension("cache"), 1 << 30)
                    .unwrap();
            let m = crate::mounts::Manager::new(codecs(root), Arc::new(cache));
            let (m2, sock) = (m.clone(), socket.clone());
            std::thread::spawn(move || m2.serve(&sock, false));
            while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            managers.insert(root.to_path_buf(), (m, socket));
        }
        let mounts = crate::mounts::Mounts::new(&managers[root].1, None);
        Snapshotter::open(root, codecs(root), mounts).unwrap()
    }

    /// Everything unmounted and the mount manager gone, as after a reboot of
    /// the node: the next [`open`] starts another.
    fn reboot(root: &Path) {
        if let Some((m, _)) = managers().lock().unwrap().remove(root) {
            m.unmount_all();
        }
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
        r.unwrap_err().code()
    }

    #[test]
    fn the_api_behaves_as_containerd_expects() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());

        // A layer: prepared without parent (a writable bind mount), committed.
        let m = s.prepare(Kind::Active, "k1", "", BTreeMap::new()).unwrap();
        assert_eq!(m[0].kind, "bind");
        assert!(m[0].options.contains(&"rw".to_string()));
        std::fs::write(Path::new(&m[0].source).join("f"), b"layer one").unwrap();
        assert_eq!(
            code(s.prepare(Kind::Active, "k1", "", BTreeMap::new())),
            Code::AlreadyExists
        );
        s.commit("layer1", "k1", labels(&[("a", "1")])).unwrap();
        assert_eq!(code(s.stat("k1")), Code::NotFound);
        assert_eq!(
            code(s.commit("x", "layer1", BTreeMap::new())),
            Code::FailedPrecondition
        );
        let i = s.stat("layer1").unwrap();
        assert_eq!(
            (i.kind, i.labels.get("a").map(String::as_str)),
            (Kind::Committed, Some("1"))
        );

        // An active child is an overlay on it; a view of it is a read-only bind.
        let m = s
            .prepare(Kind::Active, "c1", "layer1", BTreeMap::new())
            .unwrap();
        assert_eq!(m[0].kind, "overlay");
        assert!(m[0].options.iter().any(|o| o.starts_with("upperdir=")));
        let v = s
            .prepare(Kind::View, "v1", "layer1", BTreeMap::new())
            .unwrap();
        assert_eq!(
            (v[0].kind.as_str(), v[0].options[1].as_str()),
            ("bind", "ro")
        );
        assert_eq!(
            code(s.prepare(Kind::Active, "c2", "nope", BTreeMap::new())),
            Code::NotFound
        );
        assert_eq!(
            code(s.prepare(Kind::Active, "c2", "c1", BTreeMap::new())),
            Code::FailedPrecondition
        );
        assert_eq!(s.mounts("c1").unwrap(), m);
        assert_eq!(code(s.mounts("nope")), Code::NotFound);

        // Labels: one key by mask, or all.
        let i = s
            .update("layer1", labels(&[("b", "2")]), &["labels.b".into()])
            .unwrap();
        assert_eq!(i.labels, labels(&[("a", "1"), ("b", "2")]));
        let i = s.update("layer1", labels(&[("c", "3")]), &[]).unwrap();
        assert_eq!(i.labels, labels(&[("c", "3")]));
        assert_eq!(
            code(s.update("layer1", BTreeMap::new(), &["parent".into()])),
            Code::InvalidArgument
        );

        // Usage counts the snapshot's own tree; list has everything.
        assert!(s.usage("layer1").unwrap().inodes >= 2);
        assert_eq!(s.list().len(), 3);

        // A parent with children stays; children first, then it goes.
        assert_eq!(code(s.remove("layer1")), Code::FailedPrecondition);
        assert_eq!(code(s.remove("nope")), Code::NotFound);
        s.remove("c1").unwrap();
        s.remove("v1").unwrap();

        // Everything survives a restart; cleanup removes what nothing names.
        drop(s);
        std::fs::create_dir_all(dir.path().join("snapshots/999/fs")).unwrap();
        let s = open(dir.path());
        assert_eq!(s.stat("layer1").unwrap().labels, labels(&[("c", "3")]));
        s.cleanup().unwrap();
        assert!(!dir.path().join("snapshots/999").exists());
        s.remove("layer1").unwrap();
        assert!(s.list().is_empty());

        // A bad chain label is refused and leaves nothing.
        let bad = labels(&[(CHAIN_LABEL, "[\"/nonexistent.cdimg\"]")]);
        assert_eq!(
            code(s.prepare(Kind::Active, "img", "", bad)),
            Code::InvalidArgument
        );
        assert!(s.list().is_empty());
    }

    /// A one-file full image at `path`; its image id.
    fn image(path: &Path, content: &[u8]) -> d4c_host::digest::Digest {
        let mut r = Raw::new();
        let f = r.file("version", content);
        r.write(path, None, vec![], vec![f])
    }

    /// A damaged image fails its own snapshot (and its children) at restart;
    /// the snapshotter starts and serves the rest. State is root's alone.
    #[test]
    fn a_restart_with_a_damaged_image_serves_the_rest() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let s = open(&root);
        let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let chain = |name: &str, content: &[u8]| {
            let p = dir.path().join(name);
            image(&p, content);
            labels(&[(CHAIN_LABEL, &serde_json::to_string(&[p]).unwrap())])
        };
        s.prepare(Kind::Active, "a", "", chain("a.cdimg", b"a\n"))
            .unwrap();
        s.commit("a-img", "a", BTreeMap::new()).unwrap();
        s.prepare(Kind::Active, "a-ctr", "a-img", BTreeMap::new())
            .unwrap();
        s.prepare(Kind::Active, "b", "", chain("b.cdimg", b"b\n"))
            .unwrap();
        s.commit("b-img", "b", BTreeMap::new()).unwrap();
        let damaged = s.state.lock().unwrap().meta.snapshots["a-img"].chain[0].clone();
        drop(s);
        reboot(&root);
        std::fs::write(root.join("images").join(&damaged), b"not a cdimg").unwrap();

        let s = open(&root);
        for key in ["a-img", "a-ctr"] {
            let e = s.mounts(key).unwrap_err();
            assert_eq!(e.code(), Code::FailedPrecondition, "{key}: {e:?}");
            assert!(e.message().contains("a-img cannot be served"), "{e:?}");
        }
        let m = s.mounts("b-img").unwrap();
        let served = Path::new(&m[0].source).join("version");
        assert_eq!(std::fs::read(served).unwrap(), b"b\n");
        // The broken ones can still be removed.
        s.remove("a-ctr").unwrap();
        s.remove("a-img").unwrap();
        reboot(&root);
    }

    /// The mount manager outlives the snapshotter: a file opened before a
    /// restart reads on during and after it, and the restarted snapshotter
    /// serves the same mount.
    #[test]
    fn a_restart_leaves_mounts_serving() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let s = open(&root);
        let p = dir.path().join("a.cdimg");
        image(&p, b"served across restarts\n");
        let chain = labels(&[(CHAIN_LABEL, &serde_json::to_string(&[&p]).unwrap())]);
        let m = s.prepare(Kind::Active, "a", "", chain).unwrap();
        let file = Path::new(&m[0].source).join("version");
        let mut open_before = std::fs::File::open(&file).unwrap();
        drop(s);
        let mut text = String::new();
        open_before.read_to_string(&mut text).unwrap();
        assert_eq!(text, "served across restarts\n");
        let s = open(&root);
        assert_eq!(s.mounts("a").unwrap(), m);
        assert_eq!(std::fs::read(&file).unwrap(), b"served across restarts\n");
        drop(open_before);
        s.remove("a").unwrap();
        assert!(d4c_host::mount::is_mounted(
            &Path::new(&m[0].source).canonicalize().unwrap_or_default()
        )
        .unwrap()
        .is_none());
        reboot(&root);
    }

    #[test]
    fn a_hostile_image_is_refused_at_prepare() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let s = open(&root);
        let p = dir.path().join("hostile.cdimg");
        let mut r = Raw::new();
        let f = r.file("\\x2e\\x2e", b"pwned");
        r.write(&p, None, vec![], vec![f]);
        let label = labels(&[(CHAIN_LABEL, &serde_json::to_string(&[&p]).unwrap())]);
        let e = s.prepare(Kind::Active, "h", "", label).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("invalid header"), "{e:?}");
        assert!(s.list().is_empty());
        assert_eq!(std::fs::read_dir(root.join("images")).unwrap().count(), 0);
        assert!(!dir.path().join("pwned").exists() && !root.join("pwned").exists());
    }

    /// A snapshot whose delta needs a codec that is gone from the store at
    /// restart fails alone, naming the codec.
    #[test]
    fn a_restart_with_a_codec_gone_serves_the_rest() {
        use d4c_host::digest::Digest;
        use d4c_host::image::entry::{Data, Kind as EntryKind, Step};
        use d4c_host::image::format::CodecRef;
        use d4c_tests::raw::entry;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let s = open(&root);
        let codec = CodecStore::new(root.join("codecs"))
            .put(d4c_tests::components::TEMPLATE)
            .unwrap();
        let base = dir.path().join("v1.cdimg");
        let base_id = image(&base, b"v1\n");
        // A delta whose one file is a template-codec step from v1's file.
        let delta = dir.path().join("d12.cdimg");
        let mut r = Raw::new();
        let (offset, length) = r.blob(b"a delta");
        let mut f = entry("version", EntryKind::File);
        f.size = Some(3);
        f.digest = Some(Digest::of(b"v2\n"));
        f.data = Some(Data::Delta {
            source: Digest::of(b"v1\n"),
            steps: vec![Step {
                codec: 0,
                offset,
                length,
                digest: Digest::of(b"v2\n"),
                dict: None,
            }],
        });
        let template = CodecRef {
            sha256: codec,
            name: "template".into(),
            version: "0".into(),
        };
        r.write(&delta, Some(base_id), vec![template], vec![f]);
        let chain =
            |paths: &[&Path]| labels(&[(CHAIN_LABEL, &serde_json::to_string(paths).unwrap())]);
        s.prepare(Kind::Active, "d", "", chain(&[&base, &delta]))
            .unwrap();
        s.prepare(Kind::Active, "v", "", chain(&[&base])).unwrap();
        drop(s);
        reboot(&root);
        for e in std::fs::read_dir(root.join("codecs")).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        let s = open(&root);
        let e = s.mounts("d").unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("template"), "{e:?}");
        let m = s.mounts("v").unwrap();
        assert_eq!(
            std::fs::read(Path::new(&m[0].source).join("version")).unwrap(),
            b"v1\n"
        );
        reboot(&root);
    }
}
