//! A chain: a full image followed by deltas, each applying to the image the chain
//! so far yields. Resolves any file of the top image to its bytes by walking down
//! the chain (a full blob, the same content below, or a codec patch of content
//! below), checking every step's sha256.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};

use super::entry::{Data, Entry, Step};
use super::format::{Header, ImageKind, Reader};
use crate::codec::Codecs;
use crate::digest::{CheckedReader, Digest};

/// An opened, checked chain of cdimg files.
pub struct Chain {
    layers: Vec<Reader>,
    /// Per layer: content digest → index of an item with that content
    /// ([`Header::items`]: the tree's entries, then the origin's content).
    by_digest: Vec<HashMap<Digest, usize>>,
}

/// How a piece of content can be had without running a codec, if it can.
pub enum RawSource<'a> {
    /// Empty.
    Empty,
    /// A full blob in this layer's file.
    Blob(&'a Reader, &'a Entry),
}

impl Chain {
    /// Opens `paths`: a full image, then deltas in order.
    pub fn open(paths: &[PathBuf]) -> Result<Chain> {
        ensure!(!paths.is_empty(), "no image given");
        let mut layers: Vec<Reader> = Vec::with_capacity(paths.len());
        for p in paths {
            let r = Reader::open(p)?;
            match (layers.last(), r.header().kind) {
                (None, ImageKind::Delta) => bail!(
                    "{} is a delta (for image {}); the chain must start with a full image",
                    p.display(),
                    r.header().base_id.map(|d| d.short()).unwrap_or_default()
                ),
                (Some(_), ImageKind::Image) => bail!(
                    "{} is a full image; only deltas may follow the first",
                    p.display()
                ),
                (Some(prev), ImageKind::Delta) => {
                    let want = r.header().base_id.expect("validated");
                    let have = prev.header().image_id;
                    ensure!(
                        want == have,
                        "{} applies to image {}, but {} gives image {}",
                        p.display(),
                        want.short(),
                        prev.path().display(),
                        have.short()
                    );
                }
                (None, ImageKind::Image) => {}
            }
            layers.push(r);
        }
        Ok(Self::from_readers(layers))
    }

    /// A chain of already opened (and checked) readers.
    pub fn from_readers(layers: Vec<Reader>) -> Chain {
        let by_digest = layers
            .iter()
            .map(|r| {
                let mut m = HashMap::new();
                for (i, e) in r.header().items().enumerate() {
                    if let Some(d) = e.digest {
                        // Prefer an entry that is cheap to read.
                        let cheap = matches!(e.data, Some(Data::Full { .. } | Data::Inline));
                        if cheap || !m.contains_key(&d) {
                            m.insert(d, i);
                        }
                    }
                }
                m
            })
            .collect();
        Chain { layers, by_digest }
    }

    /// The header of the image the chain yields.
    pub fn top(&self) -> &Header {
        self.layers.last().expect("non-empty").header()
    }

    /// The readers, bottom first.
    pub fn layers(&self) -> &[Reader] {
        &self.layers
    }

    /// The content of `entry` of the top image, checked against its digest.
    pub fn content(&self, codecs: &Codecs, entry: &Entry) -> Result<Vec<u8>> {
        let top = self.layers.len() - 1;
        self.resolve(codecs, top, entry)
            .with_context(|| format!("rebuilding {}", entry.path))
    }

    /// A reader over the content of `entry` of the top image. Content stored in
    /// full somewhere in the chain streams from its blob, whatever its size;
    /// content that needs a codec is rebuilt in memory (codec inputs are bounded).
    /// The reader fails at end of input unless the content matched its digest, so
    /// whoever reads to the end never accepts wrong bytes.
    pub fn open_content<'a>(
        &'a self,
        codecs: &Codecs,
        entry: &'a Entry,
    ) -> Result<Box<dyn Read + Send + 'a>> {
        let digest = entry.digest.context("not a regular file")?;
        Ok(Box::new(CheckedReader::new(
            self.open_content_unchecked(codecs, entry)?,
            entry.file_size(),
            digest,
            entry.path.clone(),
        )))
    }

    /// Like [`Chain::open_content`] without the final check of a stored blob's
    /// digest (codec output is always checked), for callers that check what they
    /// read themselves.
    pub fn open_content_unchecked<'a>(
        &'a self,
        codecs: &Codecs,
        entry: &'a Entry,
    ) -> Result<Box<dyn Read + Send + 'a>> {
        Ok(match self.raw_source(entry) {
            Some(RawSource::Empty) => Box::new(std::io::empty()),
            Some(RawSource::Blob(reader, e)) => reader.content_reader(e)?,
            None => Box::new(std::io::Cursor::new(self.content(codecs, entry)?)),
        })
    }

    /// Where the top entry's bytes lie without patching (following `same` down),
    /// or None if a codec must run.
    pub fn raw_source<'a>(&'a self, entry: &'a Entry) -> Option<RawSource<'a>> {
        let mut level = self.layers.len() - 1;
        let mut e = entry;
        loop {
            match e.data.as_ref()? {
                Data::Inline => return Some(RawSource::Empty),
                Data::Full { .. } => return Some(RawSource::Blob(&self.layers[level], e)),
                Data::Delta { .. } => return None,
                Data::Same => {
                    level = level.checked_sub(1)?;
                    let i = *self.by_digest[level].get(&e.digest?)?;
                    e = self.layers[level].header().item(i);
                }
            }
        }
    }

    fn find(&self, level: usize, digest: &Digest) -> Result<&Entry> {
        let i = self.by_digest[level].get(digest).with_context(|| {
            format!(
                "content {} is not in {}",
                digest.short(),
                self.layers[level].path().display()
            )
        })?;
        Ok(self.layers[level].header().item(*i))
    }

    /// An item of the top image (a tree entry or origin content) holding `digest`.
    pub fn top_item(&self, digest: &Digest) -> Option<&Entry> {
        let top = self.layers.len() - 1;
        let i = self.by_digest[top].get(digest)?;
        Some(self.layers[top].header().item(*i))
    }

    fn resolve(&self, codecs: &Codecs, level: usize, entry: &Entry) -> Result<Vec<u8>> {
        let digest = entry.digest.context("not a regular file")?;
        let reader = &self.layers[level];
        let out = match entry.data.as_ref().context("no data")? {
            Data::Inline => Vec::new(),
            Data::Full { .. } => reader.full_content(entry)?,
            Data::Same => {
                let below = level.checked_sub(1).context("'same' in the bottom image")?;
                return self.resolve(codecs, below, self.find(below, &digest)?);
            }
            Data::Delta { source, steps } => {
                let below = level
                    .checked_sub(1)
                    .context("'delta' in the bottom image")?;
                let mut data = self.resolve(codecs, below, self.find(below, source)?)?;
                for step in steps {
                    data = apply_step(reader, codecs, step, data)?;
                }
                data
            }
        };
        let got = Digest::of(&out);
        ensure!(
            got == digest,
            "{}: content of {} has sha256 {}, expected {}",
            reader.path().display(),
            entry.path,
            got.short(),
            digest.short()
        );
        Ok(out)
    }
}

/// Applies one codec step of `reader` to `base`: the step's codec patches its
/// delta blob onto the base (behind the step's dictionary, if it names one), and
/// the output must have the step's sha256.
pub fn apply_step(reader: &Reader, codecs: &Codecs, step: &Step, base: Vec<u8>) -> Result<Vec<u8>> {
    let c = &reader.header().codecs[step.codec as usize];
    let codec = codecs.get(&c.sha256, &c.name)?;
    let delta = reader.blob(step.offset, step.length)?;
    let old = match step.dict {
        None => base,
        Some(i) => super::delta::dict::behind(&reader.dict(i)?, &base),
    };
    Ok(codec.patch_checked(&old, &delta, &step.digest)?)
}
