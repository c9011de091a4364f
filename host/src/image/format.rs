//! Reading and writing cdimg files (docs/FORMAT.md): magic, blobs, a
//! zstd-compressed JSON header, and a fixed 64-byte footer at the end.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::entry::{
    image_id, valid_link_target, valid_path, valid_xattr_name, Compression, Data, Entry, Kind,
};
use super::origin::Origin;
use crate::digest::Digest;
use crate::fsutil::AtomicFile;

/// A cdimg's footer: where its header is and what it hashes to. Parsed alone so
/// a header can be read from a remote file by two range requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Where the compressed header starts (= where the body ends).
    pub header_offset: u64,
    /// Its length.
    pub header_len: u64,
    /// Its sha256.
    pub header_digest: Digest,
}

impl Footer {
    /// Parses and checks the last [`FOOTER_LEN`] bytes of a cdimg of `len` bytes.
    pub fn parse(footer: &[u8], len: u64) -> Result<Footer> {
        ensure!(
            footer.len() as u64 == FOOTER_LEN && version(&footer[56..64]).is_some(),
            "truncated or not a cdimg (no footer)"
        );
        let offset = u64::from_le_bytes(footer[0..8].try_into().unwrap());
        let hlen = u64::from_le_bytes(footer[8..16].try_into().unwrap());
        ensure!(hlen <= MAX_HEADER, "header length {hlen} is too large");
        ensure!(
            offset >= MAGIC.len() as u64
                && len >= FOOTER_LEN
                && offset.checked_add(hlen) == Some(len - FOOTER_LEN),
            "corrupt footer (header at {offset}+{hlen} in a file of {len} bytes)"
        );
        Ok(Footer {
            header_offset: offset,
            header_len: hlen,
            header_digest: Digest(footer[16..48].try_into().unwrap()),
        })
    }

    /// Checks, decompresses and validates the compressed header `raw`.
    pub fn header(&self, raw: &[u8]) -> Result<Header> {
        ensure!(
            raw.len() as u64 == self.header_len && Digest::of(raw) == self.header_digest,
            "corrupt header (digest mismatch)"
        );
        // Whole, then parsed from the slice: serde_json reads an `io::Read` a
        // byte at a time, several times slower on a header of thousands of entries.
        let cap = json_cap(self.header_len);
        let mut json = Vec::new();
        zstd::stream::read::Decoder::new(raw)?
            .take(cap)
            .read_to_end(&mut json)
            .context("corrupt header")?;
        ensure!(
            (json.len() as u64) < cap,
            "corrupt header (over {} MiB decompressed from {} bytes)",
            cap >> 20,
            self.header_len
        );
        let header: Header = serde_json::from_slice(&json).context("corrupt header")?;
        header
            .validate(self.header_offset)
            .context("invalid header")?;
        Ok(header)
    }
}

/// The largest content held whole in memory: codec inputs and outputs, which a
/// wasm32 codec cannot take beyond 4 GiB anyway.
pub const MAX_IN_MEMORY: u64 = u32::MAX as u64;

/// The most memory reserved ahead of the bytes that arrive.
const PREALLOC: u64 = 64 << 20;

/// Content up to this size is decoded whole rather than streamed.
const SMALL_CONTENT: u64 = 1 << 20;

thread_local! {
    /// One zstd decompression context per thread for small content (None if it
    /// could not be made; each call then makes its own).
    static SMALL_DECODER: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// Magic and format version 1, at the start and the end of a cdimg without
/// provenance.
pub const MAGIC: &[u8; 8] = b"D4CIMG01";
/// Magic of format version 2: the header may carry `origin`.
pub const MAGIC_V2: &[u8; 8] = b"D4CIMG02";

/// The format version a magic names, if it is a cdimg magic.
pub fn version(magic: &[u8]) -> Option<u8> {
    match magic {
        m if m == MAGIC => Some(1),
        m if m == MAGIC_V2 => Some(2),
        _ => None,
    }
}

/// The magic a file holding `header` starts and ends with: version 1 unless
/// it carries provenance, so older readers still take what they can read.
pub fn magic_for(header: &Header) -> &'static [u8; 8] {
    if header.origin.is_some() {
        MAGIC_V2
    } else {
        MAGIC
    }
}
/// Length of the footer.
pub const FOOTER_LEN: u64 = 64;
/// Largest compressed header accepted.
const MAX_HEADER: u64 = 1 << 30;
/// Largest decompressed header accepted: it is read whole before parsing, so
/// this bounds what a hostile header can make a reader allocate (a real one is
/// about 250 bytes per entry: 3.5 MB for python's 16k files).
const MAX_HEADER_JSON: u64 = 1 << 30;

/// The most JSON a compressed header of `len` bytes may decompress to. Real
/// headers shrink 4-5x (sha256 digests do not compress); a few KB that claim
/// a gigabyte of entries are a bomb aimed at the parser's memory.
fn json_cap(len: u64) -> u64 {
    (16u64 << 20)
        .saturating_add(len.saturating_mul(64))
        .min(MAX_HEADER_JSON)
}

/// Whether a cdimg is a full image or a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// Every file's content is in the file.
    Image,
    /// Content is given relative to the image `base_id`.
    Delta,
}

/// A codec named by a header, by the sha256 of its component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodecRef {
    /// sha256 of the component.
    pub sha256: Digest,
    /// Its name (for messages; the digest is what counts).
    pub name: String,
    /// Its version.
    pub version: String,
}

/// A shared dictionary of a delta: bytes that codec steps see in front of their
/// base content, so that many small files can borrow from content that is new in
/// this version (say, library code that a hundred rebuilt binaries all link).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dict {
    /// Absolute offset of the blob (one zstd frame).
    pub offset: u64,
    /// Blob length.
    pub length: u64,
    /// Dictionary length, decompressed.
    pub size: u64,
    /// sha256 of the decompressed dictionary.
    pub digest: Digest,
}

/// Largest dictionary a reader accepts.
pub const MAX_DICT: u64 = 16 << 20;

/// The header of a cdimg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Full image or delta.
    pub kind: ImageKind,
    /// Id of the image this file yields.
    pub image_id: Digest,
    /// Id of the image a delta applies to.
    pub base_id: Option<Digest>,
    /// The OCI image config, verbatim.
    pub config: String,
    /// Codecs the entries refer to by index.
    pub codecs: Vec<CodecRef>,
    /// Dictionaries the codec steps refer to by index (deltas only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dicts: Vec<Dict>,
    /// The tree, sorted by path.
    pub entries: Vec<Entry>,
    /// The original OCI image, when the file keeps it (format version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

impl Header {
    /// Checks the header's structure: everything FORMAT.md's "Validation" lists
    /// that does not need the blobs. `body_end` is where blobs must end.
    pub fn validate(&self, body_end: u64) -> Result<()> {
        ensure!(
            (self.kind == ImageKind::Delta) == self.base_id.is_some(),
            "a delta must name its base image and a full image must not"
        );
        let in_body = |offset: u64, length: u64| {
            offset >= MAGIC.len() as u64
                && offset.checked_add(length).is_some_and(|e| e <= body_end)
        };
        ensure!(
            self.dicts.is_empty() || self.kind == ImageKind::Delta,
            "dictionaries in a full image"
        );
        for (i, d) in self.dicts.iter().enumerate() {
            ensure!(
                in_body(d.offset, d.length),
                "dictionary {i} outside the body"
            );
            ensure!(d.size <= MAX_DICT, "dictionary {i} is too large");
        }
        let mut tree = TreeCheck::default();
        for e in &self.entries {
            tree.place(e)?;
            check_shape(e, &tree.files)?;
            self.check_data(e, &in_body)?;
        }
        ensure!(
            self.entries.first().is_some_and(|e| e.path.is_empty()),
            "the tree has no root entry"
        );
        if let Some(o) = &self.origin {
            let tree: HashSet<Digest> = self.entries.iter().filter_map(|e| e.digest).collect();
            o.validate(&self.config, self.codecs.len(), &tree)
                .context("invalid origin")?;
            for e in &o.content {
                self.check_data(e, &in_body)?;
            }
        }
        ensure!(
            self.compute_id() == self.image_id,
            "the image id does not match the tree"
        );
        Ok(())
    }

    /// The image id of this tree and origin (FORMAT.md, "Image id").
    pub fn compute_id(&self) -> Digest {
        image_id(
            &self.entries,
            self.origin.as_ref().map(|o| o.manifest_digest()).as_ref(),
        )
    }

    /// Every entry that holds content: the tree's entries, then the origin's
    /// content. [`Header::item`] takes an index into this sequence.
    pub fn items(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .chain(self.origin.iter().flat_map(|o| o.content.iter()))
    }

    /// Item `i` of [`Header::items`].
    pub fn item(&self, i: usize) -> &Entry {
        match i.checked_sub(self.entries.len()) {
            None => &self.entries[i],
            Some(j) => &self.origin.as_ref().expect("origin item").content[j],
        }
    }

    /// How a file entry's content is stored: blobs inside the body, codec and
    /// dictionary indices in range, delta-only kinds only in deltas.
    fn check_data(&self, e: &Entry, in_body: &dyn Fn(u64, u64) -> bool) -> Result<()> {
        let p = &e.path;
        match &e.data {
            Some(Data::Inline) => {
                ensure!(e.size == Some(0), "{p:?}: inline data for a non-empty file")
            }
            Some(Data::Full { offset, length, .. }) => {
                ensure!(in_body(*offset, *length), "{p:?}: blob outside the body")
            }
            Some(Data::Same) => ensure!(
                self.kind == ImageKind::Delta,
                "{p:?}: 'same' in a full image"
            ),
            Some(Data::Delta { steps, .. }) => {
                ensure!(
                    self.kind == ImageKind::Delta,
                    "{p:?}: 'delta' in a full image"
                );
                ensure!(!steps.is_empty(), "{p:?}: delta without steps");
                for s in steps {
                    ensure!(
                        (s.codec as usize) < self.codecs.len(),
                        "{p:?}: codec index out of range"
                    );
                    ensure!(
                        in_body(s.offset, s.length),
                        "{p:?}: delta blob outside the body"
                    );
                    ensure!(
                        s.dict.is_none_or(|d| (d as usize) < self.dicts.len()),
                        "{p:?}: dictionary index out of range"
                    );
                }
                ensure!(
                    steps.last().map(|s| s.digest) == e.digest,
                    "{p:?}: last step digest differs"
                );
            }
            None => {}
        }
        Ok(())
    }

    /// The index of the dictionary with `digest`, if the table has it.
    pub fn dict_index(&self, digest: &Digest) -> Option<u32> {
        self.dicts
            .iter()
            .position(|d| d.digest == *digest)
            .map(|i| i as u32)
    }

    /// The index of `codec` in the codec table, adding it if absent.
    pub fn codec_index(&mut self, codec: CodecRef) -> u32 {
        codec_index(&mut self.codecs, &codec)
    }
}

/// The index of `codec` in `codecs`, adding it if absent.
pub fn codec_index(codecs: &mut Vec<CodecRef>, codec: &CodecRef) -> u32 {
    match codecs.iter().position(|c| c.sha256 == codec.sha256) {
        Some(i) => i as u32,
        None => {
            codecs.push(codec.clone());
            (codecs.len() - 1) as u32
        }
    }
}

/// Where each entry stands in the tree, entry by entry: sorted without
/// duplicates, a valid name, its parent an earlier directory.
#[derive(Default)]
struct TreeCheck<'a> {
    prev: Option<&'a str>,
    dirs: HashSet<&'a str>,
    files: HashSet<&'a str>,
}

impl<'a> TreeCheck<'a> {
    fn place(&mut self, e: &'a Entry) -> Result<()> {
        let p = e.path.as_str();
        if let Some(q) = self.prev {
            ensure!(q < p, "entries not sorted or duplicated at {p:?}");
        }
        self.prev = Some(p);
        ensure!(valid_path(p), "invalid path {p:?}");
        if p.is_empty() {
            ensure!(e.kind == Kind::Dir, "the root must be a directory");
        } else {
            let parent = p.rfind('/').map_or("", |i| &p[..i]);
            ensure!(
                self.dirs.contains(parent),
                "{p:?}: parent {parent:?} is missing or not a directory"
            );
        }
        match e.kind {
            Kind::Dir => self.dirs.insert(p),
            Kind::File => self.files.insert(p),
            _ => false,
        };
        Ok(())
    }
}

/// What an entry of its kind may and must carry: mode bits, xattr names, link
/// targets (valid symlink targets, hardlinks to earlier files), device
/// numbers, and size, digest and data for files alone.
fn check_shape(e: &Entry, files: &HashSet<&str>) -> Result<()> {
    let p = &e.path;
    ensure!(e.mode <= 0o7777, "{p:?}: mode {:o} has type bits", e.mode);
    ensure!(
        e.xattrs.keys().all(|k| valid_xattr_name(k)),
        "{p:?}: invalid extended attribute name"
    );
    ensure!(
        e.link.is_none() || matches!(e.kind, Kind::Symlink | Kind::Hardlink),
        "{p:?}: a link target on a {:?}",
        e.kind
    );
    let is_file = e.kind == Kind::File;
    ensure!(
        is_file == e.data.is_some(),
        "{p:?}: data only and always for files"
    );
    ensure!(
        is_file == e.digest.is_some() && is_file == e.size.is_some(),
        "{p:?}: size and digest only for files"
    );
    let device = matches!(e.kind, Kind::Char | Kind::Block);
    ensure!(
        device == e.rdev.is_some(),
        "{p:?}: device numbers only and always on devices"
    );
    match e.kind {
        Kind::Symlink => ensure!(
            e.link.as_deref().is_some_and(valid_link_target),
            "{p:?}: symlink without a valid target"
        ),
        Kind::Hardlink => {
            let t = e.link.as_deref().unwrap_or_default();
            ensure!(
                files.contains(t),
                "{p:?}: hardlink to {t:?}, which is not an earlier file"
            );
        }
        _ => {}
    }
    Ok(())
}

/// An open cdimg: its header, and random access to its blobs. Safe to share
/// between threads (reads are positional).
pub struct Reader {
    file: File,
    path: PathBuf,
    header: Header,
    len: u64,
    /// Dictionaries read so far, by index (each is read and checked once).
    dicts: Vec<std::sync::OnceLock<Arc<Vec<u8>>>>,
}

impl Reader {
    /// Opens and validates `path`.
    pub fn open(path: &Path) -> Result<Reader> {
        Self::open_inner(path).with_context(|| format!("{}", path.display()))
    }

    /// Reads and validates an already open cdimg; `path` names it in messages.
    pub fn from_file(file: File, path: &Path) -> Result<Reader> {
        Self::from_file_inner(file, path).with_context(|| format!("{}", path.display()))
    }

    fn open_inner(path: &Path) -> Result<Reader> {
        let file = File::open(path).context("cannot open")?;
        Self::from_file_inner(file, path)
    }

    fn from_file_inner(file: File, path: &Path) -> Result<Reader> {
        let len = file.metadata()?.len();
        ensure!(
            len >= MAGIC.len() as u64 + FOOTER_LEN,
            "not a cdimg: too short ({len} bytes)"
        );
        let mut head = [0u8; 8];
        file.read_exact_at(&mut head, 0)?;
        let Some(v) = version(&head) else {
            bail!("not a cdimg (bad magic)");
        };
        let mut footer = [0u8; FOOTER_LEN as usize];
        file.read_exact_at(&mut footer, len - FOOTER_LEN)?;
        let f = Footer::parse(&footer, len)?;
        ensure!(
            footer[56..64] == head,
            "corrupt cdimg (its two magics differ)"
        );
        let mut raw = vec![0u8; f.header_len as usize];
        file.read_exact_at(&mut raw, f.header_offset)?;
        let header = f.header(&raw)?;
        ensure!(
            v >= 2 || header.origin.is_none(),
            "corrupt cdimg (provenance in a version 1 file)"
        );
        let dicts = header.dicts.iter().map(|_| Default::default()).collect();
        Ok(Reader {
            file,
            path: path.to_path_buf(),
            header,
            len,
            dicts,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for positional reads of blobs in place.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty (never, for a valid cdimg).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw bytes of a blob (validated to lie in the body).
    pub fn blob(&self, offset: u64, length: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; usize::try_from(length)?];
        self.file
            .read_exact_at(&mut buf, offset)
            .with_context(|| format!("{}: reading blob at {offset}", self.path.display()))?;
        Ok(buf)
    }

    /// Dictionary `index`, decompressed and checked against its digest.
    pub fn dict(&self, index: u32) -> Result<Arc<Vec<u8>>> {
        let slot = self
            .dicts
            .get(index as usize)
            .with_context(|| format!("{}: no dictionary {index}", self.path.display()))?;
        if let Some(d) = slot.get() {
            return Ok(d.clone());
        }
        let d = &self.header.dicts[index as usize];
        let raw = self.blob(d.offset, d.length)?;
        let mut bytes = Vec::with_capacity(d.size as usize);
        zstd::stream::read::Decoder::new(&raw[..])?
            .take(d.size + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("{}: corrupt dictionary {index}", self.path.display()))?;
        ensure!(
            bytes.len() as u64 == d.size && Digest::of(&bytes) == d.digest,
            "{}: dictionary {index} is corrupt (size or sha256 differs)",
            self.path.display()
        );
        // Two threads may both read it; either copy is the same bytes.
        Ok(slot.get_or_init(|| Arc::new(bytes)).clone())
    }

    /// A reader over a blob's raw bytes.
    pub fn blob_reader(&self, offset: u64, length: u64) -> impl Read + '_ {
        BlobReader {
            file: &self.file,
            pos: offset,
            end: offset + length,
        }
    }

    /// A reader over the content of a `Full` file entry, decompressed (neither
    /// size nor digest checked: see [`crate::digest::CheckedReader`]).
    pub fn content_reader(&self, entry: &Entry) -> Result<Box<dyn Read + Send + '_>> {
        let Some(Data::Full {
            offset,
            length,
            compression,
        }) = &entry.data
        else {
            bail!("{}: not stored in full", entry.path);
        };
        let size = entry.file_size();
        if *compression == Compression::Zstd && size <= SMALL_CONTENT {
            // Small files, most of an image, decode in one call with this
            // thread's decompression context: a streaming decoder per file
            // allocates and clears a fresh one (5% of an extract).
            let raw = self.blob(*offset, *length)?;
            let out = SMALL_DECODER
                .with(|d| match d.borrow_mut().as_mut() {
                    Some(d) => d.decompress(&raw, size as usize),
                    None => zstd::bulk::decompress(&raw, size as usize),
                })
                .with_context(|| {
                    format!("{}: corrupt blob of {}", self.path.display(), entry.path)
                })?;
            return Ok(Box::new(std::io::Cursor::new(out)));
        }
        let raw = self.blob_reader(*offset, *length);
        Ok(match compression {
            Compression::None => Box::new(raw),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(raw)?),
        })
    }

    /// The content of a `Full` file entry, decompressed and checked against the
    /// entry's size (the digest is checked by callers that need it).
    /// Content is held whole only to feed a codec, so it is refused past
    /// [`MAX_IN_MEMORY`]; and memory grows with the bytes that really decode,
    /// never from the size the header claims.
    pub fn full_content(&self, entry: &Entry) -> Result<Vec<u8>> {
        let size = entry.file_size();
        ensure!(
            size <= MAX_IN_MEMORY,
            "{}: {} is {size} bytes, more than content rebuilt in memory may be ({MAX_IN_MEMORY})",
            self.path.display(),
            entry.path
        );
        let mut out = Vec::with_capacity(size.min(PREALLOC) as usize);
        self.content_reader(entry)?
            .take(size + 1)
            .read_to_end(&mut out)
            .with_context(|| format!("{}: corrupt blob of {}", self.path.display(), entry.path))?;
        ensure!(
            out.len() as u64 == size,
            "{}: blob of {} has the wrong size",
            self.path.display(),
            entry.path
        );
        Ok(out)
    }
}

struct BlobReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.end - self.pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += got as u64;
        Ok(got)
    }
}

/// Writes a cdimg: blobs first, then the header and footer; the file appears at
/// its path only when [`Writer::finish`] succeeds.
pub struct Writer {
    out: std::io::BufWriter<AtomicFile>,
    pos: u64,
}

impl Writer {
    /// Starts writing `path`. The magic is written last (by [`Writer::finish`]),
    /// when the header says which version the file is.
    pub fn create(path: &Path) -> Result<Writer> {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, AtomicFile::create(path)?);
        out.write_all(MAGIC)?;
        Ok(Writer {
            out,
            pos: MAGIC.len() as u64,
        })
    }

    /// Appends a blob; returns its offset.
    pub fn blob(&mut self, data: &[u8]) -> Result<u64> {
        let at = self.pos;
        self.out.write_all(data)?;
        self.pos += data.len() as u64;
        Ok(at)
    }

    /// Appends a blob copied from a reader; returns (offset, length).
    pub fn blob_from(&mut self, r: &mut impl Read) -> Result<(u64, u64)> {
        let at = self.pos;
        let n = std::io::copy(r, &mut self.out)?;
        self.pos += n;
        Ok((at, n))
    }

    /// Appends a blob holding `data` compressed at zstd `level` (or raw, when that
    /// is not larger); returns the resulting [`Data`].
    pub fn content(&mut self, data: &[u8], level: i32) -> Result<Data> {
        if data.is_empty() {
            return Ok(Data::Inline);
        }
        let (bytes, compression) = compress(data, level)?;
        let offset = self.blob(&bytes)?;
        Ok(Data::Full {
            offset,
            length: bytes.len() as u64,
            compression,
        })
    }

    /// The offset the next blob will have.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Validates and writes the header and footer, and commits the file.
    pub fn finish(mut self, header: &Header) -> Result<u64> {
        header
            .validate(self.pos)
            .context("refusing to write an invalid header")?;
        let json = serde_json::to_vec(header)?;
        let offset = self.pos;
        let magic = magic_for(header);
        let tail = header_tail(&json, offset, magic)?;
        self.out.write_all(&tail)?;
        let total = offset + tail.len() as u64;
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.file().write_all_at(magic, 0)?;
        file.commit()?;
        Ok(total)
    }
}

/// zstd level of the header. A delta's header is mostly sha256 digests, which
/// no level shrinks, but 19 against 9 still takes 10% off it (39 KB of a 24 MB
/// debian delta) for about half a second per file written.
const HEADER_LEVEL: i32 = 19;

/// The bytes that end a cdimg whose body ends at `offset` and which starts
/// with `magic`: the compressed header JSON and the footer. Deterministic, so a
/// header sent in another encoding can be turned back into the exact file.
pub fn header_tail(json: &[u8], offset: u64, magic: &[u8; 8]) -> Result<Vec<u8>> {
    let raw = zstd::bulk::compress(json, HEADER_LEVEL)?;
    let mut out = Vec::with_capacity(raw.len() + FOOTER_LEN as usize);
    out.extend_from_slice(&raw);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&Digest::of(&raw).0);
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(magic);
    Ok(out)
}

/// Where a cdimg's body ends and its header JSON, decompressed (the file must be
/// one the reader accepted).
pub fn header_json(r: &Reader) -> Result<(u64, Vec<u8>)> {
    let mut footer = [0u8; FOOTER_LEN as usize];
    r.file().read_exact_at(&mut footer, r.len() - FOOTER_LEN)?;
    let offset = u64::from_le_bytes(footer[0..8].try_into().unwrap());
    let hlen = u64::from_le_bytes(footer[8..16].try_into().unwrap());
    let mut raw = vec![0u8; hlen as usize];
    r.file().read_exact_at(&mut raw, offset)?;
    let mut json = Vec::new();
    zstd::stream::read::Decoder::new(&raw[..])?
        .take(MAX_HEADER_JSON)
        .read_to_end(&mut json)?;
    Ok((offset, json))
}

/// zstd-compresses `data` at `level`, or returns it raw when compression does not
/// make it smaller.
pub fn compress(data: &[u8], level: i32) -> Result<(Vec<u8>, Compression)> {
    let z = zstd::bulk::compress(data, level)?;
    Ok(if z.len() < data.len() {
        (z, Compression::Zstd)
    } else {
        (data.to_vec(), Compression::None)
    })
}
