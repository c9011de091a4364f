//! A layer's tar stream as records (tar-split style): the stream's own bytes
//! (headers, PAX records, padding, the end blocks, anything after them) kept
//! verbatim, and each regular file's content replaced by its digest and size.
//! Concatenating the raw bytes and the contents gives the stream back byte for
//! byte, so its sha256 is the layer's diff_id again.
//!
//! Layout (docs/FORMAT.md, "Provenance"): `"D4CTSR01"`, then items: `1`,
//! varint length, raw bytes; or `2`, 32-byte sha256, varint size.

use std::cell::RefCell;
use std::io::Read;
use std::rc::Rc;

use anyhow::{bail, ensure, Context, Result};

use crate::digest::Digest;

/// Magic at the start of every record stream.
pub const MAGIC: &[u8; 8] = b"D4CTSR01";
const RAW: u8 = 1;
const CONTENT: u8 = 2;

/// One piece of a layer's tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// Bytes of the stream itself.
    Raw(&'a [u8]),
    /// A regular file's content: `size` bytes with this sha256.
    Content(Digest, u64),
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
                let (len, n) = varint(&bytes[at..])?;
                at += n;
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|l| at.checked_add(l))
                    .filter(|&e| e <= bytes.len())
                    .context("a raw record runs past the end")?;
                out.push(Record::Raw(&bytes[at..end]));
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

/// Records a tar stream as it is read: wrap the stream's reader in
/// [`Recorder::reader`] and mark each file's content with
/// [`Recorder::content`] while it is read from the same stream.
#[derive(Clone, Default)]
pub struct Recorder(Rc<RefCell<State>>);

#[derive(Default)]
struct State {
    out: Vec<u8>,
    raw: Vec<u8>,
    in_content: bool,
}

impl State {
    fn flush_raw(&mut self) {
        if self.raw.is_empty() {
            return;
        }
        if self.out.is_empty() {
            self.out.extend_from_slice(MAGIC);
        }
        self.out.push(RAW);
        put_varint(&mut self.out, self.raw.len() as u64);
        self.out.append(&mut self.raw);
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

    /// Runs `read_content`, which reads one file's content from the stream and
    /// returns its digest; records the content by digest and size instead of
    /// its bytes.
    pub fn content(
        &self,
        size: u64,
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
        s.out.push(CONTENT);
        s.out.extend_from_slice(&digest.0);
        put_varint(&mut s.out, size);
        Ok(digest)
    }

    /// The record stream of everything read so far.
    pub fn finish(&self) -> Vec<u8> {
        let mut s = self.0.borrow_mut();
        s.flush_raw();
        if s.out.is_empty() {
            s.out.extend_from_slice(MAGIC);
        }
        std::mem::take(&mut s.out)
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
        let c1 = rec.content(8, || Ok(Digest::of(&take(8, &mut r)))).unwrap();
        take(13, &mut r);
        rec.content(11, || Ok(Digest::of(&take(11, &mut r))))
            .unwrap();
        take(4, &mut r);
        let bytes = rec.finish();
        let items = parse(&bytes).unwrap();
        assert_eq!(items.len(), 5);
        assert_eq!(items[0], Record::Raw(b"header1 "));
        assert_eq!(items[1], Record::Content(c1, 8));
        assert_eq!(items[2], Record::Raw(b" pad header2 "));
        assert_eq!(items[4], Record::Raw(b" end"));
        assert!(parse(&bytes[..bytes.len() - 2]).is_err());
        assert!(parse(b"D4CTSR01\x09").is_err());
    }
}
