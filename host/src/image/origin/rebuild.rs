//! The original layers rebuilt from a chain: each layer's tar stream from its
//! records and the content they name, its blob by the layer's recipe; and
//! [`verify`], which checks the whole chain against the manifest.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;

use super::records::{self, Record};
use super::{Described, Origin};
use crate::codec::Codecs;
use crate::digest::{Digest, HashWriter};
use crate::image::builder::layer::{ContentSink, TreeBuilder};
use crate::image::chain::Chain;
use crate::image::entry::{image_id, Entry, Kind};
use crate::progress::Progress;

/// Content rebuilt by codecs ahead of a tar stream, at most.
const REBUILD_BATCH: u64 = 256 << 20;
/// Stored content read and checked ahead of a tar stream, about.
const FETCH_BATCH: u64 = 32 << 20;
/// Larger stored content is streamed, not held.
const FETCH_LARGEST: u64 = 16 << 20;

/// The original image of a chain's top image.
pub struct Original<'a> {
    chain: &'a Chain,
    codecs: &'a Codecs,
    origin: &'a Origin,
    /// The top tree's regular files by path (a hardlink: the file it names).
    files: HashMap<&'a str, &'a Entry>,
    /// What the manifest and config say.
    pub described: Described,
}

impl<'a> Original<'a> {
    /// The origin of the image `chain` yields; an error if it keeps none.
    pub fn of(chain: &'a Chain, codecs: &'a Codecs) -> Result<Original<'a>> {
        let top = chain.top();
        let origin = top.origin.as_ref().with_context(|| {
            format!(
                "{} keeps no original image (converted by an older d4c or from a docker archive)",
                chain.layers().last().expect("non-empty").path().display()
            )
        })?;
        let mut files: HashMap<&str, &Entry> = HashMap::new();
        for e in &top.entries {
            match e.kind {
                Kind::File => {
                    files.insert(&e.path, e);
                }
                Kind::Hardlink => {
                    let target = e.link.as_deref().and_then(|t| files.get(t).copied());
                    if let Some(t) = target {
                        files.insert(&e.path, t);
                    }
                }
                _ => {}
            }
        }
        Ok(Original {
            chain,
            codecs,
            origin,
            files,
            described: origin.describe(&top.config)?,
        })
    }

    /// The origin.
    pub fn origin(&self) -> &'a Origin {
        self.origin
    }

    /// An entry of the top image holding `digest`, found anywhere in it.
    fn item(&self, digest: &Digest) -> Result<&'a Entry> {
        self.chain
            .top_item(digest)
            .with_context(|| format!("content {} is not in the image", digest.short()))
    }

    /// The entry holding the content a record refers to (None for raw bytes).
    fn content_of(&self, r: &Record) -> Result<Option<&'a Entry>> {
        Ok(match *r {
            Record::Raw(_) => None,
            Record::Content(d, size) => {
                let e = self.item(&d)?;
                ensure!(
                    e.size == Some(size),
                    "content {} has another size in the image",
                    d.short()
                );
                Some(e)
            }
            Record::Tree(p) => Some(self.files.get(p).copied().with_context(|| {
                format!("the records name {p:?}, which is no file of the tree")
            })?),
        })
    }

    /// Content by digest, whole (records and recipes: small).
    pub fn content(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.chain.content(self.codecs, self.item(digest)?)
    }

    /// Layer `i`'s tar records.
    fn records(&self, i: usize) -> Result<Vec<u8>> {
        self.content(&self.origin.layers[i].records)
            .with_context(|| format!("layer {}: reading its records", i + 1))
    }

    /// Writes layer `i`'s tar stream to `out`, every file's content checked
    /// against its digest; returns its length. Content is read and checked in
    /// parallel batches by a second thread, ahead of the stream.
    pub fn write_tar(&self, i: usize, out: &mut dyn Write, progress: &dyn Progress) -> Result<u64> {
        self.write_tar_as(i, out, progress, Check::EachFile)
    }

    /// [`Self::write_tar`], with stored content checked as `check` says.
    fn write_tar_as(
        &self,
        i: usize,
        out: &mut dyn Write,
        progress: &dyn Progress,
        check: Check,
    ) -> Result<u64> {
        let bytes = self.records(i)?;
        let items = records::parse(&bytes).with_context(|| format!("layer {}", i + 1))?;
        let pieces = items
            .iter()
            .map(|r| self.piece(r))
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("layer {}", i + 1))?;
        let batches = batches(&pieces);
        std::thread::scope(|s| -> Result<u64> {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let pieces = &pieces;
            s.spawn(move || {
                for range in batches {
                    let fetched = self
                        .fetch(&pieces[range.clone()], check)
                        .map(|f| (range, f));
                    let failed = fetched.is_err();
                    if tx.send(fetched).is_err() || failed {
                        return;
                    }
                }
            });
            let mut written = 0u64;
            for fetched in rx {
                let (range, content) = fetched?;
                for piece in &pieces[range] {
                    let n = self
                        .write_piece(piece, &content, out, check)
                        .with_context(|| format!("layer {}", i + 1))?;
                    written += n;
                    if let Piece::Content { .. } = piece {
                        progress.advance(n);
                    }
                }
            }
            Ok(written)
        })
    }

    /// A record resolved: its raw bytes, or the entry holding its content
    /// and whether that is fetched ahead.
    fn piece<'r>(&self, r: &Record<'r>) -> Result<Piece<'r, 'a>> {
        let Some(entry) = self.content_of(r)? else {
            let Record::Raw(b) = *r else {
                unreachable!("content_of resolves every content record")
            };
            return Ok(Piece::Raw(b));
        };
        let needs_codec = self.chain.raw_source(entry).is_none();
        let ahead = (needs_codec || entry.file_size() <= FETCH_LARGEST).then_some(needs_codec);
        Ok(Piece::Content { entry, ahead })
    }

    /// Writes one piece: raw bytes, or content fetched ahead (else streamed).
    fn write_piece(
        &self,
        piece: &Piece,
        fetched: &HashMap<Digest, Vec<u8>>,
        out: &mut dyn Write,
        check: Check,
    ) -> Result<u64> {
        let e = match *piece {
            Piece::Raw(b) => {
                out.write_all(b)?;
                return Ok(b.len() as u64);
            }
            Piece::Content { entry, .. } => entry,
        };
        if let Some(data) = fetched.get(&e.digest.expect("a file")) {
            out.write_all(data)?;
            return Ok(data.len() as u64);
        }
        std::io::copy(&mut self.open(e, check)?, out).with_context(|| format!("writing {}", e.path))
    }

    /// The content of `pieces` that is fetched ahead, read and checked in
    /// parallel. Memory is reserved from the bytes that arrive, never from a
    /// size the header claims.
    fn fetch(&self, pieces: &[Piece], check: Check) -> Result<HashMap<Digest, Vec<u8>>> {
        let want: HashMap<Digest, &Entry> = pieces
            .iter()
            .filter_map(|p| match *p {
                Piece::Content {
                    entry,
                    ahead: Some(_),
                } => Some((entry.digest.expect("a file"), entry)),
                _ => None,
            })
            .collect();
        want.into_par_iter()
            .map(|(d, e)| {
                let mut data = Vec::with_capacity(e.file_size().min(FETCH_LARGEST) as usize);
                self.open(e, check)?
                    .read_to_end(&mut data)
                    .with_context(|| format!("reading {}", e.path))?;
                Ok((d, data))
            })
            .collect()
    }

    /// A reader over `e`'s content (codec output is always checked).
    fn open(&self, e: &'a Entry, check: Check) -> Result<Box<dyn Read + Send + 'a>> {
        match check {
            Check::EachFile => self.chain.open_content(self.codecs, e),
            // One byte past the size is read, so content of another length
            // changes the stream (and the rerun with checks names it); never
            // more, so a lying blob cannot fill memory.
            Check::LayerOnly => Ok(Box::new(
                self.chain
                    .open_content_unchecked(self.codecs, e)?
                    .take(e.file_size().saturating_add(1)),
            )),
        }
    }

    /// Layer `i`'s blob, made from its tar stream by its recipe and checked
    /// against the manifest's digest; None if it has no recipe.
    pub fn layer_blob(&self, i: usize, progress: &dyn Progress) -> Result<Option<Vec<u8>>> {
        let Some(recipe) = self.origin.layers[i].recipe else {
            return Ok(None);
        };
        let mut tar = Vec::new();
        self.write_tar(i, &mut tar, progress)?;
        let c = &self.chain.top().codecs[recipe.codec as usize];
        let codec = self.codecs.get(&c.sha256, &c.name)?;
        let delta = self.content(&recipe.delta)?;
        let blob = codec
            .patch_checked(&tar, &delta, &self.described.layers[i].digest)
            .with_context(|| format!("layer {}: its recipe ({})", i + 1, c.name))?;
        Ok(Some(blob))
    }

    /// The tree the layers' records give, content named by the records'
    /// digests (no content is read: [`verify`] checks those digests).
    pub fn tree(&self) -> Result<Vec<Entry>> {
        let mut tree = TreeBuilder::default();
        for i in 0..self.origin.layers.len() {
            let bytes = self.records(i)?;
            let items = records::parse(&bytes)?;
            let mut named = VecDeque::new();
            for r in &items {
                if let Some(e) = self.content_of(r)? {
                    named.push_back((e.digest.expect("a file"), e.file_size()));
                }
            }
            let sizes = named.iter().map(|(_, size)| *size).collect();
            let mut sink = Named(named);
            let skeleton = Skeleton {
                items: &items,
                sizes,
                at: 0,
                content: 0,
                off: 0,
            };
            tree.apply_layer(skeleton, &mut sink)
                .with_context(|| format!("layer {}", i + 1))?;
            ensure!(
                sink.0.is_empty(),
                "layer {}: its records name more content than it has files",
                i + 1
            );
        }
        Ok(tree.finish())
    }
}

/// A record of a tar stream, resolved against the image.
enum Piece<'r, 'a> {
    /// Bytes of the stream itself.
    Raw(&'r [u8]),
    /// A file's content: the entry holding it, and whether it is fetched
    /// ahead: Some(needs a codec), or None for content stored whole that is
    /// too large to hold (streamed instead).
    Content {
        entry: &'a Entry,
        ahead: Option<bool>,
    },
}

/// The pieces split into runs whose content to fetch ahead adds up to about
/// [`FETCH_BATCH`] bytes (content that needs a codec, up to [`REBUILD_BATCH`]).
fn batches(pieces: &[Piece]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut plain, mut codec) = (0, 0u64, 0u64);
    for (i, p) in pieces.iter().enumerate() {
        match *p {
            Piece::Content {
                entry,
                ahead: Some(true),
            } => codec += entry.file_size(),
            Piece::Content {
                entry,
                ahead: Some(false),
            } => plain += entry.file_size(),
            _ => {}
        }
        if plain >= FETCH_BATCH || codec >= REBUILD_BATCH {
            out.push(start..i + 1);
            (start, plain, codec) = (i + 1, 0, 0);
        }
    }
    if start < pieces.len() {
        out.push(start..pieces.len());
    }
    out
}

/// A tar stream with every file's content replaced by zeros: what the tree
/// needs, without reading content. `sizes`: the content items' sizes, in order.
struct Skeleton<'a> {
    items: &'a [Record<'a>],
    sizes: Vec<u64>,
    at: usize,
    content: usize,
    off: u64,
}

impl Read for Skeleton<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(item) = self.items.get(self.at) {
            let (raw, len) = match item {
                Record::Raw(b) => (Some(b), b.len() as u64),
                _ => (None, self.sizes[self.content]),
            };
            let n = (len - self.off).min(buf.len() as u64) as usize;
            if n == 0 {
                self.at += 1;
                self.off = 0;
                self.content += usize::from(raw.is_none());
                continue;
            }
            match raw {
                Some(b) => buf[..n].copy_from_slice(&b[self.off as usize..][..n]),
                None => buf[..n].fill(0),
            }
            self.off += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

/// Hands out the records' content digests, in order, as the tree's files.
struct Named(VecDeque<(Digest, u64)>);

impl ContentSink for Named {
    fn store(&mut self, r: &mut dyn Read, size: u64) -> Result<Digest> {
        let Some((d, s)) = self.0.pop_front() else {
            bail!("a file the records name no content for");
        };
        ensure!(s == size, "a file's size differs from its record");
        std::io::copy(&mut r.take(size), &mut std::io::sink())?;
        Ok(d)
    }
}

/// Checks that the tree the layers' records give is the image's.
fn check_tree(o: &Original, chain: &Chain) -> Result<()> {
    let tree = o.tree()?;
    let top = chain.top();
    ensure!(
        image_id(&tree, Some(&o.described.manifest)) == top.image_id,
        "the tree the layers give is not the image's tree (image id {})",
        top.image_id.short()
    );
    Ok(())
}

/// How content read from the image is checked while a tar stream is rebuilt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Every file against its digest: an error names the file.
    EachFile,
    /// Only by the layer's diff_id, which covers every byte of the stream
    /// (one sha256 pass instead of two); for verify's first pass.
    LayerOnly,
}

/// Rebuilds layer `i`'s tar stream and checks it against its diff_id;
/// returns its length. The stream is hashed once; a layer that fails is
/// rebuilt again with every file checked, to name the file at fault.
fn check_layer(o: &Original, i: usize, progress: &dyn Progress) -> Result<u64> {
    let hash = |check| -> Result<(u64, Digest)> {
        let mut h = HashWriter::new(std::io::sink());
        let n = o.write_tar_as(i, &mut h, progress, check)?;
        let (_, got, _) = h.finish();
        Ok((n, got))
    };
    let want = o.described.layers[i].diff_id;
    let (n, got) = match hash(Check::LayerOnly) {
        Ok((n, got)) if got == want => return Ok(n),
        _ => hash(Check::EachFile)?,
    };
    ensure!(
        got == want,
        "layer {}: the rebuilt tar stream hashes to {}, not the config's diff_id {}",
        i + 1,
        got.oci(),
        want.oci()
    );
    Ok(n)
}

/// What [`verify`] checked.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The manifest and its layers.
    pub described: Described,
    /// Bytes of tar streams rebuilt and hashed.
    pub tar_bytes: u64,
}

/// Checks the image `chain` yields against its original: the manifest is the
/// one expected (if given), the config the one it names, every layer's
/// rebuilt tar stream hashes to the config's diff_id, and the tree the layers
/// give is the image's. Layers are rebuilt in parallel on `threads`.
pub fn verify(
    chain: &Chain,
    codecs: &Codecs,
    manifest: Option<&Digest>,
    threads: usize,
    progress: &dyn Progress,
) -> Result<Verified> {
    let o = Original::of(chain, codecs)?;
    let d = &o.described;
    if let Some(m) = manifest {
        ensure!(
            d.manifest == *m,
            "the image's manifest is {}, not the expected {}",
            d.manifest.oci(),
            m.oci()
        );
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()?;
    progress.start("verifying", 0);
    // The tree check reads records only: it runs beside the layers' hashing.
    let (tree, sizes) = pool.install(|| {
        rayon::join(
            || check_tree(&o, chain),
            || {
                (0..d.layers.len())
                    .into_par_iter()
                    .with_max_len(1)
                    .map(|i| check_layer(&o, i, progress))
                    .collect::<Result<Vec<u64>>>()
            },
        )
    });
    tree?;
    let sizes = sizes?;
    progress.finish();
    Ok(Verified {
        described: d.clone(),
        tar_bytes: sizes.iter().sum(),
    })
}
