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
use crate::image::entry::{image_id, Entry};
use crate::progress::Progress;

/// Content rebuilt by codecs ahead of a tar stream, at most.
const REBUILD_BATCH: u64 = 256 << 20;

/// The original image of a chain's top image.
pub struct Original<'a> {
    chain: &'a Chain,
    codecs: &'a Codecs,
    origin: &'a Origin,
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
        Ok(Original {
            chain,
            codecs,
            origin,
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
    /// against its digest; returns its length. Content that needs a codec is
    /// rebuilt in parallel batches ahead of the stream.
    pub fn write_tar(&self, i: usize, out: &mut dyn Write, progress: &dyn Progress) -> Result<u64> {
        let bytes = self.records(i)?;
        let items = records::parse(&bytes).with_context(|| format!("layer {}", i + 1))?;
        let mut written = 0u64;
        let mut at = 0;
        while at < items.len() {
            let (end, mut rebuilt) = self.rebuild_batch(&items[at..])?;
            for item in &items[at..at + end] {
                match *item {
                    Record::Raw(b) => {
                        out.write_all(b)?;
                        written += b.len() as u64;
                    }
                    Record::Content(d, size) => {
                        let e = self.item(&d)?;
                        ensure!(
                            e.size == Some(size),
                            "layer {}: content {} has another size in the image",
                            i + 1,
                            d.short()
                        );
                        let n = match rebuilt.remove(&d) {
                            Some(data) => {
                                out.write_all(&data)?;
                                data.len() as u64
                            }
                            None => {
                                std::io::copy(&mut self.chain.open_content(self.codecs, e)?, out)
                                    .with_context(|| {
                                        format!("layer {}: writing {}", i + 1, e.path)
                                    })?
                            }
                        };
                        written += n;
                        progress.advance(n);
                    }
                }
            }
            at += end;
        }
        Ok(written)
    }

    /// From the start of `items`, the content that needs a codec, rebuilt in
    /// parallel up to [`REBUILD_BATCH`] bytes; returns how many items that covers.
    fn rebuild_batch(&self, items: &[Record]) -> Result<(usize, HashMap<Digest, Vec<u8>>)> {
        let mut want = Vec::new();
        let mut batch = 0;
        let mut end = 0;
        while end < items.len() && batch < REBUILD_BATCH {
            if let Record::Content(d, size) = items[end] {
                if self.chain.raw_source(self.item(&d)?).is_none() {
                    want.push(d);
                    batch += size;
                }
            }
            end += 1;
        }
        want.sort_unstable();
        want.dedup();
        let rebuilt = want
            .into_par_iter()
            .map(|d| Ok((d, self.content(&d)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        Ok((end, rebuilt))
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
            let mut sink = Named(
                items
                    .iter()
                    .filter_map(|r| match *r {
                        Record::Content(d, s) => Some((d, s)),
                        Record::Raw(_) => None,
                    })
                    .collect(),
            );
            tree.apply_layer(Skeleton::new(&items), &mut sink)
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

/// A tar stream with every file's content replaced by zeros: what the tree
/// needs, without reading content.
struct Skeleton<'a> {
    items: &'a [Record<'a>],
    at: usize,
    off: u64,
}

impl<'a> Skeleton<'a> {
    fn new(items: &'a [Record<'a>]) -> Self {
        Skeleton {
            items,
            at: 0,
            off: 0,
        }
    }
}

impl Read for Skeleton<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(item) = self.items.get(self.at) {
            let len = match item {
                Record::Raw(b) => b.len() as u64,
                Record::Content(_, s) => *s,
            };
            let n = (len - self.off).min(buf.len() as u64) as usize;
            if n == 0 {
                self.at += 1;
                self.off = 0;
                continue;
            }
            match item {
                Record::Raw(b) => buf[..n].copy_from_slice(&b[self.off as usize..][..n]),
                Record::Content(..) => buf[..n].fill(0),
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
    let tree = o.tree()?;
    let top = chain.top();
    ensure!(
        image_id(&tree, Some(&d.manifest)) == top.image_id,
        "the tree the layers give is not the image's tree (image id {})",
        top.image_id.short()
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()?;
    progress.start("verifying", 0);
    let sizes = pool.install(|| {
        (0..d.layers.len())
            .into_par_iter()
            .with_max_len(1)
            .map(|i| {
                let mut h = HashWriter::new(std::io::sink());
                let n = o.write_tar(i, &mut h, progress)?;
                let (_, got, _) = h.finish();
                let want = d.layers[i].diff_id;
                ensure!(
                    got == want,
                    "layer {}: the rebuilt tar stream hashes to {}, not the config's diff_id {}",
                    i + 1,
                    got.oci(),
                    want.oci()
                );
                Ok(n)
            })
            .collect::<Result<Vec<u64>>>()
    })?;
    progress.finish();
    Ok(Verified {
        described: d.clone(),
        tar_bytes: sizes.iter().sum(),
    })
}
