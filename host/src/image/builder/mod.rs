//! `convert`: an OCI image becomes a full cdimg. One file per input kind
//! ([`oci`], [`docker_archive`], [`registry`]) over a shared core: [`layer`] applies the layers
//! to a tree, this module stores the content (compressed in parallel, each
//! distinct content once) and writes the file.

pub mod docker_archive;
pub mod layer;
pub mod oci;
pub mod platform;
pub mod registry;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Mutex;

use anyhow::{bail, ensure, Context, Result};

use self::layer::{ContentSink, TreeBuilder};
use crate::codec::{Codec, ErrorKind};
use crate::digest::{Digest, Hasher};
use crate::image::entry::{Compression, Data, Entry, Kind};
use crate::image::format::CodecRef;
use crate::image::format::{self, Header, ImageKind, Writer};
use crate::image::origin::records::{self, Recorded, Recorder};
use crate::image::origin::{self, Origin, OriginLayer, Recipe};
use crate::progress::Progress;
use crate::registry::{ConnectOptions, Reference};
pub use platform::Platform;

/// An image to convert: its config and its layer blobs, in order.
pub struct SourceImage {
    /// The OCI image config, verbatim.
    pub config: Vec<u8>,
    /// The image manifest, verbatim, where the source has one (a docker
    /// archive holds none): what provenance is kept against.
    pub manifest: Option<Vec<u8>>,
    /// Layer blob paths, with the digest each must have (if known).
    pub layers: Vec<(PathBuf, Option<Digest>)>,
    /// Keeps a temporary unpack directory alive.
    pub _tmp: Option<tempfile::TempDir>,
}

/// Where an image comes from, as users write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An OCI image layout directory and optional tag.
    Layout(PathBuf, Option<String>),
    /// A `docker save` tar and optional tag.
    DockerArchive(PathBuf, Option<String>),
    /// An image in a registry, by tag or digest.
    Registry(Reference),
}

/// How to open a [`Source`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The platform to take from a multi-platform index.
    pub platform: Platform,
    /// How to reach a registry.
    pub connect: ConnectOptions,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            platform: Platform::host(),
            connect: ConnectOptions::default(),
        }
    }
}

impl Source {
    /// Parses `DIR`, `DIR:TAG`, `oci:DIR[:TAG]`, `docker-archive:FILE[:TAG]` or
    /// `docker://HOST/REPO[:TAG][@sha256:DIGEST]`.
    pub fn parse(s: &str) -> Result<Source> {
        if let Some(rest) = s.strip_prefix("docker://") {
            let r = Reference::parse(rest)?;
            r.manifest_ref()?;
            return Ok(Source::Registry(r));
        }
        let split = |rest: &str| -> (PathBuf, Option<String>) {
            if Path::new(rest).exists() {
                return (rest.into(), None);
            }
            match rest.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') => (p.into(), Some(t.to_string())),
                _ => (rest.into(), None),
            }
        };
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (p, t) = split(rest);
            return Ok(Source::DockerArchive(p, t));
        }
        // `oci:` is optional; a directory that happens to be called "oci" wins.
        for candidate in [Some(s), s.strip_prefix("oci:")].into_iter().flatten() {
            let (p, t) = split(candidate);
            if p.is_dir() {
                return Ok(Source::Layout(p, t));
            }
        }
        bail!("image source {s:?} not found (want DIR, DIR:TAG, docker-archive:FILE[:TAG] or docker://HOST/REPO:TAG)")
    }

    /// Opens the source; temporary files go in `tmp`.
    pub fn open(
        &self,
        opts: &OpenOptions,
        tmp: &Path,
        progress: &dyn Progress,
    ) -> Result<SourceImage> {
        match self {
            Source::Layout(d, t) => oci::open(d, t.as_deref(), &opts.platform),
            Source::DockerArchive(f, t) => docker_archive::open(f, t.as_deref(), tmp),
            Source::Registry(r) => registry::open(r, &opts.platform, &opts.connect, tmp, progress),
        }
    }
}

/// Options for building a cdimg.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    /// zstd level for file content.
    pub level: i32,
    /// Compression threads.
    pub threads: usize,
    /// Whether the original image is kept (docs/FORMAT.md, "Provenance").
    pub origin: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            level: 19,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            origin: true,
        }
    }
}

/// Files up to this size are compressed on worker threads; larger ones are
/// streamed through a zstd encoder as they are read, so memory stays bounded.
const IN_MEMORY: u64 = 64 << 20;

/// Compressed content waiting for the final file: a temporary file of blobs
/// indexed by digest.
struct Spool {
    file: File,
    pos: u64,
    index: HashMap<Digest, (u64, u64, Compression)>,
}

impl Spool {
    fn append(&mut self, digest: Digest, data: &[u8], compression: Compression) -> Result<()> {
        if self.index.contains_key(&digest) {
            return Ok(());
        }
        self.file.write_all(data)?;
        self.index
            .insert(digest, (self.pos, data.len() as u64, compression));
        self.pos += data.len() as u64;
        Ok(())
    }
}

struct Sink<'a> {
    spool: &'a Mutex<Spool>,
    work: std::sync::mpsc::SyncSender<(Digest, Vec<u8>)>,
    seen: std::collections::HashSet<Digest>,
    level: i32,
    progress: &'a dyn Progress,
}

/// Hashes what passes through.
struct Tee<'a, R> {
    inner: R,
    hasher: &'a mut Hasher,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl ContentSink for Sink<'_> {
    fn store(&mut self, r: &mut dyn Read, size: u64) -> Result<Digest> {
        self.progress.advance(size);
        if size <= IN_MEMORY {
            let mut data = Vec::with_capacity(size as usize);
            r.take(size).read_to_end(&mut data)?;
            ensure!(data.len() as u64 == size, "file content is truncated");
            let digest = Digest::of(&data);
            if self.seen.insert(digest) {
                self.work
                    .send((digest, data))
                    .context("compression workers stopped")?;
            }
            return Ok(digest);
        }
        // Large: stream through zstd into a temporary file, then into the spool.
        let mut hasher = Hasher::default();
        let mut tmp = tempfile::tempfile()?;
        {
            let mut enc = zstd::stream::write::Encoder::new(&mut tmp, self.level)?;
            enc.set_pledged_src_size(Some(size))?;
            enc.include_contentsize(true)?;
            let n = std::io::copy(
                &mut Tee {
                    inner: r.take(size),
                    hasher: &mut hasher,
                },
                &mut enc,
            )?;
            ensure!(n == size, "file content is truncated");
            enc.finish()?;
        }
        let digest = hasher.finish();
        if self.seen.insert(digest) {
            tmp.seek(SeekFrom::Start(0))?;
            let mut spool = self.spool.lock().unwrap_or_else(|p| p.into_inner());
            let at = spool.pos;
            let n = std::io::copy(&mut tmp, &mut spool.file)?;
            spool.index.insert(digest, (at, n, Compression::Zstd));
            spool.pos += n;
        }
        Ok(digest)
    }
}

fn worker(rx: &Mutex<Receiver<(Digest, Vec<u8>)>>, spool: &Mutex<Spool>, level: i32) -> Result<()> {
    loop {
        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((digest, data)) = job else {
            return Ok(());
        };
        let (bytes, compression) = format::compress(&data, level)?;
        spool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(digest, &bytes, compression)?;
    }
}

/// Hashes the compressed bytes of a layer as they are read, so its digest is
/// checked in the same pass that unpacks it.
struct Hashing<R> {
    inner: R,
    hasher: std::rc::Rc<std::cell::RefCell<Hasher>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

/// Largest layer tar stream a recipe is made for: what the gzip codec inflates.
const RECIPE_LIMIT: usize = 512 << 20;
/// zstd level of a recipe's inner frame: the tar stream is its whole base, so
/// long-distance matching alone finds everything and the fastest level does.
const RECIPE_LEVEL: u8 = 1;

/// What reading one layer left besides the tree.
struct LayerRun {
    /// Its tar records (origin/records.rs), before encoding.
    records: Vec<Recorded>,
    /// Its tar stream, kept when the blob is gzip and at most [`RECIPE_LIMIT`].
    tar: Option<Vec<u8>>,
}

/// Keeps what passes through, up to a limit (then nothing).
struct Capture<R> {
    inner: R,
    kept: Option<Vec<u8>>,
}

impl<R: Read> Read for Capture<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(k) = &mut self.kept {
            if k.len() + n > RECIPE_LIMIT {
                self.kept = None;
            } else {
                k.extend_from_slice(&buf[..n]);
            }
        }
        Ok(n)
    }
}

/// A sink whose every file's content is noted in the records.
struct RecordingSink<'a> {
    inner: &'a mut dyn ContentSink,
    rec: Recorder,
    path: String,
}

impl ContentSink for RecordingSink<'_> {
    fn store(&mut self, r: &mut dyn Read, size: u64) -> Result<Digest> {
        let inner = &mut *self.inner;
        self.rec.content(size, &self.path, || inner.store(r, size))
    }

    fn next_path(&mut self, path: &str) {
        self.path.clear();
        self.path.push_str(path);
    }

    fn store_sparse(&mut self, r: &mut dyn Read, size: u64) -> Result<Digest> {
        // Recorded as the raw bytes the stream holds.
        self.inner.store_sparse(r, size)
    }
}

/// Applies one layer blob to `tree`: undoes gzip or zstd (detected by magic
/// bytes) and, if `expected` is given, checks the blob's digest in the same pass.
/// Records the tar stream as it goes, and keeps it whole for a recipe if
/// `for_recipe` (and the blob is gzip).
fn apply_layer_file(
    tree: &mut TreeBuilder,
    path: &Path,
    expected: Option<&Digest>,
    diff_id: Option<&Digest>,
    sink: &mut dyn ContentSink,
    for_recipe: bool,
) -> Result<LayerRun> {
    let file = File::open(path).with_context(|| format!("opening layer {}", path.display()))?;
    let hasher = std::rc::Rc::new(std::cell::RefCell::new(Hasher::default()));
    let mut f = BufReader::with_capacity(
        1 << 20,
        Hashing {
            inner: file,
            hasher: hasher.clone(),
        },
    );
    let magic = {
        use std::io::BufRead;
        f.fill_buf()?
            .get(..4)
            .map(|m| m.to_vec())
            .unwrap_or_default()
    };
    let r: Box<dyn Read> = match magic.as_slice() {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(f)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::with_buffer(f)?),
        _ => Box::new(f),
    };
    let gzip = magic.starts_with(&[0x1f, 0x8b]);
    let mut tar_hash = Hasher::default();
    let rec = Recorder::default();
    let mut r = rec.reader(Capture {
        inner: Tee {
            inner: r,
            hasher: &mut tar_hash,
        },
        kept: (gzip && for_recipe).then(Vec::new),
    });
    let mut recording = RecordingSink {
        inner: sink,
        rec: rec.clone(),
        path: String::new(),
    };
    tree.apply_layer(&mut r, &mut recording)?;
    // The tar end marker may come before the end of the blob: read the rest too.
    std::io::copy(&mut r, &mut std::io::sink())?;
    let tar = r.into_inner().kept;
    if let Some(d) = diff_id {
        ensure!(
            tar_hash.finish() == *d,
            "the layer's tar stream does not match its diff_id {d} in the config"
        );
    }
    if let Some(d) = expected {
        let got = std::rc::Rc::try_unwrap(hasher)
            .map_err(|_| anyhow::anyhow!("layer reader still shared"))?;
        ensure!(
            got.into_inner().finish() == *d,
            "layer does not match its digest {d}"
        );
    }
    Ok(LayerRun {
        records: rec.finish(),
        tar,
    })
}

/// The config's `rootfs.diff_ids`, which every layer's tar stream must match:
/// None if the config lists none (then nothing is claimed).
fn diff_ids(config: &[u8], layers: usize) -> Result<Option<Vec<Digest>>> {
    let v: serde_json::Value =
        serde_json::from_slice(config).context("the image config is not JSON")?;
    let Some(list) = v.pointer("/rootfs/diff_ids").and_then(|d| d.as_array()) else {
        return Ok(None);
    };
    ensure!(
        list.len() == layers,
        "the image config lists {} diff_ids for {layers} layers",
        list.len()
    );
    list.iter()
        .map(|d| {
            d.as_str()
                .context("a diff_id is not a string")?
                .parse::<Digest>()
                .context("a diff_id is not a sha256 digest")
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// What `convert` produced.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The image id.
    pub image_id: Digest,
    /// Entries in the tree.
    pub entries: usize,
    /// Size of the written cdimg.
    pub bytes: u64,
    /// The original manifest's digest, when provenance was kept.
    pub manifest: Option<Digest>,
    /// Why something of the original image will not be rebuilt exactly: no
    /// provenance at all, or a layer blob no codec reproduces.
    pub notes: Vec<String>,
}

/// Content convert stored beyond the tree, with its size and name.
#[derive(Default)]
struct Extra {
    /// Digest → (size, name), first name kept.
    content: HashMap<Digest, (u64, String)>,
}

impl Extra {
    fn add(&mut self, digest: Digest, size: u64, name: impl FnOnce() -> String) {
        self.content.entry(digest).or_insert_with(|| (size, name()));
    }
}

/// Stores `bytes` as content named `name`.
fn store_extra(sink: &mut Sink, extra: &mut Extra, bytes: &[u8], name: String) -> Result<Digest> {
    let d = sink.store(&mut &bytes[..], bytes.len() as u64)?;
    extra.add(d, bytes.len() as u64, || name);
    Ok(d)
}

/// The recipe of layer `i` (blob at `path`, tar stream `tar`): the gzip
/// codec's delta from the tar stream to the blob; or why there is none.
fn make_recipe(
    codec: &Codec,
    i: usize,
    path: &Path,
    tar: &[u8],
    sink: &mut Sink,
    extra: &mut Extra,
) -> Result<std::result::Result<Recipe, String>> {
    let blob = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    match codec.diff(tar, &blob, RECIPE_LEVEL) {
        Ok(delta) => {
            let d = store_extra(sink, extra, &delta, origin::recipe_name(i))?;
            Ok(Ok(Recipe { codec: 0, delta: d }))
        }
        Err(e) if e.kind == ErrorKind::Unsupported => Ok(Err(e.message)),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Converts `source` into a full cdimg at `out`. With `gzip` (the built-in
/// gzip codec), compressed layers get recipes where it reproduces them.
pub fn convert(
    source: &Source,
    open: &OpenOptions,
    out: &Path,
    opts: BuildOptions,
    gzip: Option<&Codec>,
    progress: &dyn Progress,
) -> Result<Converted> {
    let image = source.open(open, &dir_of(out), progress)?;
    convert_image(&image, out, opts, gzip, progress)
}

/// The directory `out` is in: temporary files go there.
fn dir_of(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Converts an opened image into a full cdimg at `out` (see [`convert`]).
pub fn convert_image(
    image: &SourceImage,
    out: &Path,
    opts: BuildOptions,
    gzip: Option<&Codec>,
    progress: &dyn Progress,
) -> Result<Converted> {
    let dir = dir_of(out);
    let config =
        String::from_utf8(image.config.clone()).context("the image config is not UTF-8")?;
    let mut notes = Vec::new();
    let manifest = match opts.origin {
        true => provenance_manifest(image, &mut notes)?,
        false => None,
    };
    let spool = Mutex::new(Spool {
        file: tempfile::tempfile_in(&dir)?,
        pos: 0,
        index: HashMap::new(),
    });
    let keep = manifest.is_some().then_some(Keep { gzip });
    let read = read_layers(image, keep, opts, &spool, &mut notes, progress)?;
    let spool = spool.into_inner().unwrap_or_else(|p| p.into_inner());
    let (header, bytes) = write_image(out, config, manifest, read, spool, gzip)?;
    Ok(Converted {
        image_id: header.image_id,
        entries: header.entries.len(),
        bytes,
        manifest: header.origin.as_ref().map(|o| o.manifest_digest()),
        notes,
    })
}

/// The manifest provenance is kept against: the source's, if it names this
/// config and its diff_ids (else why not, in `notes`).
fn provenance_manifest(image: &SourceImage, notes: &mut Vec<String>) -> Result<Option<String>> {
    let Some(m) = &image.manifest else {
        notes.push("no provenance kept: the source holds no image manifest".to_string());
        return Ok(None);
    };
    if let Err(e) = origin::describe(m, &image.config) {
        notes.push(format!("no provenance kept: {e:#}"));
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8(m.clone()).context("the manifest is not UTF-8")?,
    ))
}

/// What reading the layers gathered when provenance is kept.
struct Keep<'a> {
    gzip: Option<&'a Codec>,
}

/// The layers applied: the tree, and (when kept) each layer's origin and the
/// content it needs beyond the tree.
struct Applied {
    tree: TreeBuilder,
    layers: Vec<OriginLayer>,
    extra: Extra,
}

/// Applies every layer in order while worker threads compress content into
/// `spool`; with `keep`, records each layer and makes its recipe.
fn read_layers(
    image: &SourceImage,
    keep: Option<Keep>,
    opts: BuildOptions,
    spool: &Mutex<Spool>,
    notes: &mut Vec<String>,
    progress: &dyn Progress,
) -> Result<Applied> {
    let diff_ids = diff_ids(&image.config, image.layers.len())?;
    let (tx, rx) = sync_channel::<(Digest, Vec<u8>)>(opts.threads * 2);
    let rx = Mutex::new(rx);
    let mut read = Applied {
        tree: TreeBuilder::default(),
        layers: Vec::new(),
        extra: Extra::default(),
    };
    progress.start("converting", 0);
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..opts.threads.max(1))
            .map(|_| s.spawn(|| worker(&rx, spool, opts.level)))
            .collect();
        let mut sink = Sink {
            spool,
            work: tx,
            seen: Default::default(),
            level: opts.level,
            progress,
        };
        let result = (|| {
            let mut recorded = Vec::new();
            for (i, (path, digest)) in image.layers.iter().enumerate() {
                let diff_id = diff_ids.as_ref().map(|d| &d[i]);
                let for_recipe = keep.as_ref().is_some_and(|k| k.gzip.is_some());
                let run = apply_layer_file(
                    &mut read.tree,
                    path,
                    digest.as_ref(),
                    diff_id,
                    &mut sink,
                    for_recipe,
                )
                .with_context(|| format!("layer {} ({})", i + 1, path.display()))?;
                if let Some(k) = &keep {
                    let recipe = layer_recipe(&run, i, path, k.gzip, &mut sink, &mut read.extra)?;
                    if let Err(why) = &recipe {
                        notes.push(format!(
                            "layer {}: its blob will be recompressed on export: {why}",
                            i + 1
                        ));
                    }
                    recorded.push((run.records, recipe.ok()));
                }
            }
            // Only now is the tree final: content it holds at the same path
            // is referred to by path.
            for (i, (items, recipe)) in recorded.into_iter().enumerate() {
                let records = store_records(&items, i, &read.tree, &mut sink, &mut read.extra)?;
                read.layers.push(OriginLayer { records, recipe });
            }
            Ok(())
        })();
        drop(sink);
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a compression worker panicked"))??;
        }
        result
    })?;
    progress.finish();
    Ok(read)
}

/// Writes the cdimg: the tree's content and the origin's from the spool, then
/// the header. Returns the header and the file's size.
fn write_image(
    out: &Path,
    config: String,
    manifest: Option<String>,
    read: Applied,
    mut spool: Spool,
    gzip: Option<&Codec>,
) -> Result<(Header, u64)> {
    let mut entries = read.tree.finish();
    let mut w = Writer::create(out)?;
    let mut written: HashMap<Digest, Data> = HashMap::new();
    let tree_digests: std::collections::HashSet<Digest> =
        entries.iter().filter_map(|e| e.digest).collect();
    let mut content: Vec<Entry> = read
        .extra
        .content
        .into_iter()
        .filter(|(d, _)| !tree_digests.contains(d))
        .map(|(d, (size, name))| Entry {
            kind: Kind::File,
            size: Some(size),
            digest: Some(d),
            ..Entry::dir(&name)
        })
        .collect();
    content.sort_by(|a, b| a.path.cmp(&b.path).then(a.digest.cmp(&b.digest)));
    for e in entries
        .iter_mut()
        .chain(content.iter_mut())
        .filter(|e| e.kind == Kind::File)
    {
        e.data = Some(stored_data(e, &mut spool, &mut w, &mut written)?);
    }
    let codecs: Vec<CodecRef> = match gzip {
        Some(c) if read.layers.iter().any(|l| l.recipe.is_some()) => {
            vec![crate::image::delta::diff::codec_ref(c)]
        }
        _ => Vec::new(),
    };
    let origin = manifest.map(|manifest| Origin {
        manifest,
        layers: read.layers,
        content,
    });
    let mut header = Header {
        kind: ImageKind::Image,
        image_id: Digest([0; 32]),
        base_id: None,
        config,
        codecs,
        dicts: Vec::new(),
        entries,
        origin,
    };
    header.image_id = header.compute_id();
    let bytes = w.finish(&header)?;
    Ok((header, bytes))
}

/// Layer `i`'s recipe, if the gzip codec reproduces its blob, or why not.
fn layer_recipe(
    run: &LayerRun,
    i: usize,
    path: &Path,
    gzip: Option<&Codec>,
    sink: &mut Sink,
    extra: &mut Extra,
) -> Result<std::result::Result<Recipe, String>> {
    Ok(match (gzip, &run.tar) {
        (Some(codec), Some(tar)) => make_recipe(codec, i, path, tar, sink, extra)?,
        (None, _) => Err("no gzip codec at hand".to_string()),
        (_, None) => Err(format!(
            "not gzip, or its tar stream is over {} MiB",
            RECIPE_LIMIT >> 20
        )),
    })
}

/// Stores layer `i`'s records, content referred to by path where the final
/// `tree` has it there; the content referred to by digest (the files a later
/// layer replaced or deleted) is named for the origin. Returns their digest.
fn store_records(
    items: &[Recorded],
    i: usize,
    tree: &TreeBuilder,
    sink: &mut Sink,
    extra: &mut Extra,
) -> Result<Digest> {
    let (bytes, by_digest) = records::encode(items, |p| tree.file_digest(p));
    for (d, size) in by_digest {
        extra.add(d, size, || format!("layers/{i}/files/{}", d.hex()));
    }
    store_extra(sink, extra, &bytes, origin::records_name(i))
}

/// Where a file's content lands in the cdimg: inline when empty, else its
/// spooled blob, written once per digest.
fn stored_data(
    e: &Entry,
    spool: &mut Spool,
    w: &mut Writer,
    written: &mut HashMap<Digest, Data>,
) -> Result<Data> {
    let digest = e.digest.expect("file digest");
    if e.size == Some(0) {
        return Ok(Data::Inline);
    }
    if let Some(d) = written.get(&digest) {
        return Ok(d.clone());
    }
    let (at, len, compression) = *spool
        .index
        .get(&digest)
        .context("content missing from the spool")?;
    spool.file.seek(SeekFrom::Start(at))?;
    let (offset, length) = w.blob_from(&mut (&mut spool.file).take(len))?;
    ensure!(length == len, "spool truncated");
    let data = Data::Full {
        offset,
        length,
        compression,
    };
    written.insert(digest, data.clone());
    Ok(data)
}
