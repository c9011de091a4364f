//! `convert`: an OCI image becomes a full cdimg. One file per input kind
//! ([`oci`], [`docker_archive`]) over a shared core: [`layer`] applies the layers
//! to a tree, this module stores the content (compressed in parallel, each
//! distinct content once) and writes the file.

pub mod docker_archive;
pub mod layer;
pub mod oci;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Mutex;

use anyhow::{bail, ensure, Context, Result};

use self::layer::{ContentSink, TreeBuilder};
use crate::digest::{Digest, Hasher};
use crate::image::entry::{image_id, Compression, Data, Kind};
use crate::image::format::{self, Header, ImageKind, Writer};
use crate::progress::Progress;

/// An image to convert: its config and its layer blobs, in order.
pub struct SourceImage {
    /// The OCI image config, verbatim.
    pub config: Vec<u8>,
    /// Layer blob paths, with the digest each must have (if known).
    pub layers: Vec<(PathBuf, Option<Digest>)>,
    /// Keeps a temporary unpack directory alive.
    pub(crate) _tmp: Option<tempfile::TempDir>,
}

/// Where an image comes from, as users write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An OCI image layout directory and optional tag.
    Layout(PathBuf, Option<String>),
    /// A `docker save` tar and optional tag.
    DockerArchive(PathBuf, Option<String>),
}

impl Source {
    /// Parses `DIR`, `DIR:TAG`, `oci:DIR[:TAG]` or `docker-archive:FILE[:TAG]`.
    pub fn parse(s: &str) -> Result<Source> {
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
        bail!("image source {s:?} not found (want DIR, DIR:TAG or docker-archive:FILE[:TAG])")
    }

    /// Opens the source; temporary files go in `tmp`.
    pub fn open(&self, tmp: &Path) -> Result<SourceImage> {
        match self {
            Source::Layout(d, t) => oci::open(d, t.as_deref()),
            Source::DockerArchive(f, t) => docker_archive::open(f, t.as_deref(), tmp),
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
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            level: 19,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
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

/// Applies one layer blob to `tree`: undoes gzip or zstd (detected by magic
/// bytes) and, if `expected` is given, checks the blob's digest in the same pass.
fn apply_layer_file(
    tree: &mut TreeBuilder,
    path: &Path,
    expected: Option<&Digest>,
    diff_id: Option<&Digest>,
    sink: &mut dyn ContentSink,
) -> Result<()> {
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
    let mut tar_hash = Hasher::default();
    let mut r = Tee {
        inner: r,
        hasher: &mut tar_hash,
    };
    tree.apply_layer(&mut r, sink)?;
    // The tar end marker may come before the end of the blob: read the rest too.
    std::io::copy(&mut r, &mut std::io::sink())?;
    drop(r);
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
    Ok(())
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
}

/// Converts `source` into a full cdimg at `out`.
pub fn convert(
    source: &Source,
    out: &Path,
    opts: BuildOptions,
    progress: &dyn Progress,
) -> Result<Converted> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let image = source.open(&dir)?;
    let config =
        String::from_utf8(image.config.clone()).context("the image config is not UTF-8")?;
    let diff_ids = diff_ids(&image.config, image.layers.len())?;

    let spool = Mutex::new(Spool {
        file: tempfile::tempfile_in(&dir)?,
        pos: 0,
        index: HashMap::new(),
    });
    let (tx, rx) = sync_channel::<(Digest, Vec<u8>)>(opts.threads * 2);
    let rx = Mutex::new(rx);
    let threads = opts.threads.max(1);
    let mut tree = TreeBuilder::default();
    progress.start("converting", 0);
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| worker(&rx, &spool, opts.level)))
            .collect();
        let mut sink = Sink {
            spool: &spool,
            work: tx,
            seen: Default::default(),
            level: opts.level,
            progress,
        };
        let mut result = Ok(());
        for (i, (path, digest)) in image.layers.iter().enumerate() {
            let diff_id = diff_ids.as_ref().map(|d| &d[i]);
            result = apply_layer_file(&mut tree, path, digest.as_ref(), diff_id, &mut sink)
                .with_context(|| format!("layer {} ({})", i + 1, path.display()));
            if result.is_err() {
                break;
            }
        }
        drop(sink);
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a compression worker panicked"))??;
        }
        result
    })?;
    progress.finish();

    let mut entries = tree.finish();
    let mut spool = spool.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut w = Writer::create(out)?;
    let mut written: HashMap<Digest, Data> = HashMap::new();
    for e in entries.iter_mut().filter(|e| e.kind == Kind::File) {
        let digest = e.digest.expect("file digest");
        if e.size == Some(0) {
            e.data = Some(Data::Inline);
            continue;
        }
        if let Some(d) = written.get(&digest) {
            e.data = Some(d.clone());
            continue;
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
        e.data = Some(data);
    }
    let header = Header {
        kind: ImageKind::Image,
        image_id: image_id(&entries),
        base_id: None,
        config,
        codecs: Vec::new(),
        dicts: Vec::new(),
        entries,
    };
    let bytes = w.finish(&header)?;
    Ok(Converted {
        image_id: header.image_id,
        entries: header.entries.len(),
        bytes,
    })
}
