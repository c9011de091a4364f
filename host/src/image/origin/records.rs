//! A layer's tar stream as records (tar-split style): the stream's own bytes
//! (headers, PAX records, padding, the end blocks, anything after them) kept
//! verbatim, and each regular file's content replaced by a reference: the
//! image's tree file at a path, when that is the content, else its digest and
//! size. Concatenating the raw bytes and the contents gives the stream back
//! byte for byte, so its sha256 is the layer's diff_id again. A reference by
//! path costs a delta nothing when a file changes: the new digest is in the
//! tree already.
//!
//! Layout (docs/FORMAT.md, "Provenance"): `"D4CTSR01"`, then items: `1`,
//! varint length, raw bytes; `2`, 32-byte sha256, varint size; or `3`,
//! varint length, a tree path.

use std::cell::RefCell;
use std::io::Read;
use std::rc::Rc;

use anyhow::{bail, ensure, Context, Result};

use crate::digest::Digest;

/// Magic at the start of every record stream.
pub const MAGIC: &[u8; 8] = b"D4CTSR01";
const RAW: u8 = 1;
const CONTENT: u8 = 2;
const TREE: u8 = 3;

/// One piece of a layer's tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// Bytes of the stream itself.
    Raw(&'a [u8]),
    /// A regular file's content: `size` bytes with this sha256.
    Content(Digest, u64),
    /// A regular file's content: that of the image's tree file at this path.
    Tree(&'a str),
}

/// The items of a record stream, checked as they are read.
pub fn parse(bytes: &[u8]) -> Result<Vec<Record<'_>>> {
    ensure!(bytes.starts_with(MAGIC), "not a tar record stream");
    let mut at = MAGIC.len();
    let mut out = Vec::new();
    while at < bytes.len() {
        let tag = bytes[at];
        at += 1;
        match tag {
            RAW => {
                let (b, end) = prefixed(bytes, at).context("a raw record runs past the end")?;
                out.push(Record::Raw(b));
                at = end;
            }
            TREE => {
                let (b, end) = prefixed(bytes, at).context("a tree record runs past the end")?;
                let path = std::str::from_utf8(b).context("a tree record's path is not UTF-8")?;
                out.push(Record::Tree(path));
                at = end;
            }
            CONTENT => {
                let d = bytes
                    .get(at..at + 32)
                    .context("a content record is truncated")?;
                at += 32;
                let (size, n) = varint(&bytes[at..])?;
                at += n;
                out.push(Record::Content(
                    Digest(d.try_into().expect("32 bytes")),
                    size,
                ));
            }
            t => bail!("unknown tar record type {t}"),
        }
    }
    Ok(out)
}

/// The varint-length-prefixed bytes at `at`, and where they end.
fn prefixed(bytes: &[u8], at: usize) -> Result<(&[u8], usize)> {
    let (len, n) = varint(&bytes[at..])?;
    let start = at + n;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| start.checked_add(l))
        .filter(|&e| e <= bytes.len())
        .context("length past the end")?;
    Ok((&bytes[start..end], end))
}

fn varint(b: &[u8]) -> Result<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f)
            .checked_shl(7 * i as u32)
            .context("varint overflow")?;
        if byte & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    bail!("truncated varint in tar records")
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A record as the recorder keeps it, before the final tree decides how
/// content is referred to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Bytes of the stream itself.
    Raw(Vec<u8>),
    /// A regular file's content, with the tree path its entry had.
    Content {
        /// Its sha256.
        digest: Digest,
        /// Its length.
        size: u64,
        /// The path of the entry it belonged to.
        path: String,
    },
}

/// Encodes `items`: content that `tree` (path → the final tree's content
/// digest there) holds at the same path is referred to by path, the rest by
/// digest. Returns the bytes and the content referred to by digest.
pub fn encode(
    items: &[Recorded],
    tree: impl Fn(&str) -> Option<Digest>,
) -> (Vec<u8>, Vec<(Digest, u64)>) {
    let mut out = MAGIC.to_vec();
    let mut by_digest = Vec::new();
    for item in items {
        match item {
            Recorded::Raw(b) => {
                out.push(RAW);
                put_varint(&mut out, b.len() as u64);
                out.extend_from_slice(b);
            }
            Recorded::Content { digest, size, path } if tree(path) == Some(*digest) => {
                let _ = size;
                out.push(TREE);
                put_varint(&mut out, path.len() as u64);
                out.extend_from_slice(path.as_bytes());
            }
            Recorded::Content { digest, size, .. } => {
                out.push(CONTENT);
                out.extend_from_slice(&digest.0);
                put_varint(&mut out, *size);
                by_digest.push((*digest, *size));
            }
        }
    }
    (out, by_digest)
}

/// Records a tar stream as it is read: wrap the stream's reader in
/// [`Recorder::reader`] and mark each file's content with
/// [`Recorder::content`] while it is read from the same stream.
#[derive(Clone, Default)]
pub struct Recorder(Rc<RefCell<State>>);

#[derive(Default)]
struct State {
    items: Vec<Recorded>,
    raw: Vec<u8>,
    in_content: bool,
}

impl State {
    fn flush_raw(&mut self) {
        if !self.raw.is_empty() {
            let raw = std::mem::take(&mut self.raw);
            self.items.push(Recorded::Raw(raw));
        }
    }
}

/// The stream reader of a [`Recorder`].
pub struct Recording<R> {
    inner: R,
    state: Rc<RefCell<State>>,
}

impl<R> Recording<R> {
    /// The wrapped reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for Recording<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.state.borrow_mut();
        if !s.in_content {
            s.raw.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

impl Recorder {
    /// Wraps the reader of the tar stream.
    pub fn reader<R: Read>(&self, inner: R) -> Recording<R> {
        Recording {
            inner,
            state: self.0.clone(),
        }
    }

    /// Runs `read_content`, which reads the content of the file at `path`
    /// from the stream and returns its digest; records a reference to the
    /// content instead of its bytes.
    pub fn content(
        &self,
        size: u64,
        path: &str,
        read_content: impl FnOnce() -> Result<Digest>,
    ) -> Result<Digest> {
        {
            let mut s = self.0.borrow_mut();
            s.flush_raw();
            s.in_content = true;
        }
        let r = read_content();
        let mut s = self.0.borrow_mut();
        s.in_content = false;
        let digest = r?;
        s.items.push(Recorded::Content {
            digest,
            size,
            path: path.to_string(),
        });
        Ok(digest)
    }

    /// Everything read so far, as records.
    pub fn finish(&self) -> Vec<Recorded> {
        let mut s = self.0.borrow_mut();
        s.flush_raw();
        std::mem::take(&mut s.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_give_the_stream_back() {
        let stream = b"header1 content1 pad header2 content-two end".to_vec();
        let rec = Recorder::default();
        let mut r = rec.reader(&stream[..]);
        let take = |n: usize, r: &mut dyn Read| {
            let mut b = vec![0; n];
            r.read_exact(&mut b).unwrap();
            b
        };
        take(8, &mut r);
        let c1 = rec
            .content(8, "a", || Ok(Digest::of(&take(8, &mut r))))
            .unwrap();
        take(13, &mut r);
        let c2 = rec
            .content(11, "b", || Ok(Digest::of(&take(11, &mut r))))
            .unwrap();
        take(4, &mut r);
        // "a" is in the tree with that content, "b" no longer is.
        let tree = |p: &str| (p == "a").then_some(c1);
        let (bytes, by_digest) = encode(&rec.finish(), tree);
        assert_eq!(by_digest, vec![(c2, 11)]);
        let items = parse(&bytes).unwrap();
        assert_eq!(items.len(), 5);
        assert_eq!(items[0], Record::Raw(b"header1 "));
        assert_eq!(items[1], Record::Tree("a"));
        assert_eq!(items[2], Record::Raw(b" pad header2 "));
        assert_eq!(items[3], Record::Content(c2, 11));
        assert_eq!(items[4], Record::Raw(b" end"));
        assert!(parse(&bytes[..bytes.len() - 2]).is_err());
        assert!(parse(b"D4CTSR01\x09").is_err());
        assert!(parse(b"D4CTSR01\x03\x05ab").is_err());
    }
}
