//! A transfer encoding for deltas: the header sent compressed against the tree of
//! the image the client already holds. A delta's header lists the whole target
//! tree, and the sha256 of every unchanged file in it is incompressible on its
//! own, yet the client has all of them in its base image. With the base's
//! canonical tree (`image::entry::canonical_tree`, the same bytes for every cdimg
//! of that image) as a zstd dictionary they cost almost nothing.
//!
//! The client rebuilds the exact delta file (the cdimg's header compression and
//! footer are deterministic) and checks its sha256 against the delta's blob
//! digest, so the encoding adds no trust; if the check fails it downloads the
//! plain blob instead.
//!
//! Layout: `D4CCMPT1`, the base image id (32 bytes), body length, header JSON
//! length and compressed header length (u64 LE each), the body (the cdimg's
//! bytes before its header), the compressed header.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use crate::digest::Digest;
use crate::fsutil::AtomicFile;
use crate::image::entry::canonical_tree;
use crate::image::format::{self, Header, ImageKind, Reader};

const MAGIC: &[u8; 8] = b"D4CCMPT1";
const PREFIX: u64 = 8 + 32 + 24;
/// Largest header JSON accepted when decoding.
const MAX_JSON: u64 = 1 << 30;

/// Writes the compact form of `delta` against `base` (the header of any cdimg
/// yielding the delta's base image) to `out`. Returns its size.
pub fn encode(delta: &Reader, base: &Header, out: &Path) -> Result<u64> {
    let h = delta.header();
    ensure!(
        h.kind == ImageKind::Delta && h.base_id == Some(base.image_id),
        "{} is not a delta from image {}",
        delta.path().display(),
        base.image_id.short()
    );
    let (offset, json) = format::header_json(delta)?;
    let dict = canonical_tree(&base.entries);
    let z = zstd::bulk::Compressor::with_dictionary(19, &dict)?.compress(&json)?;
    let mut f = AtomicFile::create(out)?;
    let w = f.file();
    w.write_all(MAGIC)?;
    w.write_all(&base.image_id.0)?;
    for n in [offset, json.len() as u64, z.len() as u64] {
        w.write_all(&n.to_le_bytes())?;
    }
    let mut body = delta.file().try_clone()?.take(offset);
    std::io::copy(&mut body, w)?;
    w.write_all(&z)?;
    f.commit()?;
    Ok(PREFIX + offset + z.len() as u64)
}

/// Rebuilds the delta from its compact form and the client's `base` header, and
/// writes it to `out` only if its sha256 is `want`.
pub fn decode(compact: &Path, base: &Header, want: &Digest, out: &Path) -> Result<()> {
    let mut f = File::open(compact).with_context(|| format!("opening {}", compact.display()))?;
    let mut prefix = [0u8; PREFIX as usize];
    f.read_exact(&mut prefix)
        .context("a compact delta too short")?;
    ensure!(&prefix[..8] == MAGIC, "not a compact delta");
    let base_id = Digest(prefix[8..40].try_into().unwrap());
    ensure!(
        base_id == base.image_id && base.compute_id() == base.image_id,
        "the compact delta is against image {}, not the held {}",
        base_id.short(),
        base.image_id.short()
    );
    let num = |i: usize| u64::from_le_bytes(prefix[40 + 8 * i..48 + 8 * i].try_into().unwrap());
    let (body_len, json_len, z_len) = (num(0), num(1), num(2));
    ensure!(
        json_len <= MAX_JSON && z_len <= MAX_JSON,
        "a compact delta's header is too large"
    );
    ensure!(
        f.metadata()?.len() == PREFIX.saturating_add(body_len).saturating_add(z_len),
        "a compact delta of the wrong length"
    );
    let mut w = AtomicFile::create(out)?;
    let mut hasher = crate::digest::HashWriter::new(w.file());
    // The body starts with the magic, which names the format version the
    // footer repeats.
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic)
        .context("a compact delta's body is too short")?;
    let magic = match format::version(&magic) {
        Some(1) => format::MAGIC,
        Some(_) => format::MAGIC_V2,
        None => bail!("a compact delta's body is not a cdimg's"),
    };
    hasher.write_all(magic)?;
    std::io::copy(&mut (&mut f).take(body_len.saturating_sub(8)), &mut hasher)?;
    let mut z = Vec::with_capacity(z_len as usize);
    f.read_to_end(&mut z)?;
    let dict = canonical_tree(&base.entries);
    // Streamed and capped: the stated length is not trusted for an allocation.
    let mut json = Vec::new();
    zstd::stream::read::Decoder::with_dictionary(&z[..], &dict)?
        .take(json_len + 1)
        .read_to_end(&mut json)
        .context("the compact delta's header does not decompress")?;
    ensure!(
        json.len() as u64 == json_len,
        "the compact delta's header is not the length it states"
    );
    hasher.write_all(&format::header_tail(&json, body_len, magic)?)?;
    let (_, got, _) = hasher.finish();
    ensure!(
        got == *want,
        "the delta rebuilt from its compact form hashes to {got:?}, not {want:?}"
    );
    w.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::entry::{image_id, Data, Entry, Kind};
    use crate::image::format::Writer;

    fn tree(n: usize, changed: usize) -> Vec<Entry> {
        let mut v = vec![Entry::dir("")];
        for i in 0..n {
            let content = format!("file {i} v{}", if i < changed { 2 } else { 1 });
            v.push(Entry {
                kind: Kind::File,
                size: Some(content.len() as u64),
                digest: Some(Digest::of(content.as_bytes())),
                data: Some(Data::Inline),
                ..Entry::dir(&format!("f{i:05}"))
            });
        }
        v
    }

    #[test]
    fn round_trip_is_exact_and_smaller() {
        let dir = tempfile::tempdir().unwrap();
        let base_entries = tree(2000, 0);
        let base = Header {
            kind: ImageKind::Image,
            image_id: image_id(&base_entries, None),
            base_id: None,
            config: "{}".into(),
            codecs: vec![],
            dicts: vec![],
            entries: base_entries,
            origin: None,
        };
        let mut entries = tree(2000, 3);
        for e in entries.iter_mut().skip(1) {
            e.data = Some(Data::Same);
        }
        let delta_h = Header {
            kind: ImageKind::Delta,
            image_id: image_id(&entries, None),
            base_id: Some(base.image_id),
            config: "{}".into(),
            codecs: vec![],
            dicts: vec![],
            entries,
            origin: None,
        };
        let delta = dir.path().join("d.cdimg");
        let mut w = Writer::create(&delta).unwrap();
        w.blob(b"some body bytes").unwrap();
        w.finish(&delta_h).unwrap();
        let want = crate::digest::of_file(&delta).unwrap().0;
        let r = Reader::open(&delta).unwrap();
        let compact = dir.path().join("d.compact");
        let n = encode(&r, &base, &compact).unwrap();
        assert!(n * 3 < r.len(), "{n} vs {}", r.len());
        let back = dir.path().join("back.cdimg");
        decode(&compact, &base, &want, &back).unwrap();
        assert_eq!(
            std::fs::read(&back).unwrap(),
            std::fs::read(&delta).unwrap()
        );
        // Against the wrong base, or expecting other bytes: refused, nothing written.
        let other = dir.path().join("other.cdimg");
        assert!(decode(&compact, &base, &Digest([0; 32]), &other).is_err());
        let mut wrong = base.clone();
        wrong.entries.pop();
        wrong.image_id = image_id(&wrong.entries, None);
        assert!(decode(&compact, &wrong, &want, &other).is_err());
        assert!(!other.exists());
    }
}
