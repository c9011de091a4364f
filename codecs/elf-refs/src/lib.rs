//! `elf-refs`: a codec for ELF executables and shared libraries. Code that
//! moves by a few bytes rewrites every relative reference across the move, and
//! every address of what moved; a byte-level differ then sees thousands of
//! scattered changes. This codec rewrites both files before bsdiff sees them:
//!
//! - code references become the absolute addresses they reach ([`x86`]:
//!   `call`/`jmp`/`jcc rel32` and RIP-relative operands; [`arm64`]: `BL`/`B`
//!   and `ADRP`), exactly invertibly in the new file;
//! - in the old file, those addresses and the 64-bit addresses in relocation,
//!   symbol and pointer tables are moved through an [`map::AddressMap`] (where
//!   the old bytes went in the new file, from a first bsdiff pass), so that a
//!   reference whose target moved reads as it does in the new file.
//!
//! The patcher rewrites the old file the same way from the stored layouts and
//! map, applies the inner bsdiff delta and undoes the new file's rewrite. When
//! rewriting does not pay (or the files are not ELF), the first pass's plain
//! bsdiff delta is the answer.
//!
//! Delta: `"D4CELFR1"`, the old file's [`Layout`], the new file's, the
//! address map, then the inner bsdiff delta (docs/CODECS.md, "elf-refs").

pub mod arm64;
pub mod elf;
pub mod layout;
pub mod map;
pub mod x86;

use d4c_codec_bsdiff::{delta::Delta, merge, search};
use d4c_codec_guest::{varint, Codec, Error, Result};
pub use layout::Layout;
use map::AddressMap;

/// The elf-refs codec.
pub struct ElfRefs;

const MAGIC: &[u8; 8] = b"D4CELFR1";
/// zstd level for bsdiff's streams when the caller asks for the default.
const DEFAULT_LEVEL: u8 = 19;
/// zstd level at which the plain and the rewritten delta are compared.
const PROBE_LEVEL: u8 = 3;

/// A decoded delta: the two layouts, the address map and the inner bsdiff
/// delta between the rewritten files.
struct Parts {
    old: Layout,
    new: Layout,
    map: AddressMap,
    inner: Delta,
}

impl Parts {
    /// Plain bsdiff, nothing rewritten.
    fn plain(inner: Delta) -> Parts {
        Parts {
            old: Layout::none(),
            new: Layout::none(),
            map: AddressMap::EMPTY,
            inner,
        }
    }

    fn encode(&self, level: u8) -> Result<Vec<u8>> {
        let mut out = MAGIC.to_vec();
        self.old.encode(&mut out);
        self.new.encode(&mut out);
        self.map.encode(&mut out);
        out.extend(self.inner.encode(level)?);
        Ok(out)
    }

    fn decode(delta: &[u8]) -> Result<Parts> {
        let mut r = varint::Reader::new(delta);
        r.expect(MAGIC, "elf-refs")?;
        let old = Layout::decode(&mut r)?;
        let new = Layout::decode(&mut r)?;
        let map = AddressMap::decode(&mut r)?;
        let inner = Delta::decode(r.rest(), ElfRefs::MAX_INPUT)?;
        for (layout, len, what) in [(&old, inner.old_len, "old"), (&new, inner.new_len, "new")] {
            if !layout.fits(len) {
                return Err(Error::InvalidInput(format!(
                    "the {what} file's layout reaches past its {len} bytes"
                )));
            }
        }
        Ok(Parts {
            old,
            new,
            map,
            inner,
        })
    }

    /// The old file as the inner delta sees it.
    fn old_rewritten(&self, old: &[u8]) -> Vec<u8> {
        let mut out = old.to_vec();
        self.old.forward_old(&mut out, &self.map);
        out
    }
}

/// The rewritten delta of two ELF files, aligned by the matches of `plain`,
/// or `None` when the new file is not an ELF this codec models or its
/// rewrite would not invert.
fn rewritten(old: &[u8], new: &[u8], plain: &Delta) -> Option<Parts> {
    let (old_elf, new_elf) = (elf::parse(old)?, elf::parse(new)?);
    let mut new_t = new.to_vec();
    new_elf.layout.forward(&mut new_t);
    let mut back = new_t.clone();
    new_elf.layout.inverse(&mut back);
    // A bijection by construction; checked, as the price is one pass.
    if back != new {
        return None;
    }
    let mut parts = Parts::plain(Delta::default());
    parts.map = AddressMap::from_matches(plain, &old_elf.loads, &new_elf.loads);
    (parts.old, parts.new) = (old_elf.layout, new_elf.layout);
    parts.inner = search::diff(&parts.old_rewritten(old), &new_t);
    Some(parts)
}

impl Codec for ElfRefs {
    const NAME: &'static str = "elf-refs";
    const VERSION: &'static str = "1.0.1";
    /// As bsdiff's: its suffix array takes 4 bytes per old byte.
    const MAX_INPUT: u64 = <d4c_codec_bsdiff::Bsdiff as Codec>::MAX_INPUT;
    const CAN_MERGE: bool = true;

    /// Two bsdiff passes: the first, on the files as they are, finds where
    /// code went (the address map) and is the answer when rewriting does not
    /// pay; the second runs on the rewritten files. The two are compared
    /// compressed at a fast level and only the smaller is compressed at
    /// `level` (zstd's strong levels cost as much as a bsdiff pass here).
    fn diff(old: &[u8], new: &[u8], level: u8) -> Result<Vec<u8>> {
        Self::check_inputs(old, new)?;
        let level = d4c_codec_guest::effort(level, DEFAULT_LEVEL);
        let plain = search::diff(old, new);
        let Some(aligned) = rewritten(old, new, &plain) else {
            return Parts::plain(plain).encode(level);
        };
        let plain = Parts::plain(plain);
        let probe = level.min(PROBE_LEVEL);
        if aligned.encode(probe)?.len() < plain.encode(probe)?.len() {
            aligned.encode(level)
        } else {
            plain.encode(level)
        }
    }

    fn patch(old: &[u8], delta: &[u8]) -> Result<Vec<u8>> {
        let parts = Parts::decode(delta)?;
        if old.len() as u64 != parts.inner.old_len {
            return Err(Error::InvalidInput(format!(
                "delta was made for a base of {} bytes, this base has {}",
                parts.inner.old_len,
                old.len()
            )));
        }
        let mut new = parts.inner.apply(&parts.old_rewritten(old))?;
        parts.new.inverse(&mut new);
        Ok(new)
    }

    /// Composes the inner deltas when both rewrote the middle file the same
    /// way and the upper one moved nothing through a map (a map applies to
    /// the old file, which the merged delta no longer sees).
    fn merge(lower: &[u8], upper: &[u8]) -> Result<Vec<u8>> {
        let (lower, upper) = (Parts::decode(lower)?, Parts::decode(upper)?);
        if lower.new != upper.old || !upper.map.is_empty() {
            return Err(Error::Unsupported(
                "the upper delta rewrites the middle file its own way".into(),
            ));
        }
        Parts {
            inner: merge::merge(&lower.inner, &upper.inner)?,
            old: lower.old,
            new: upper.new,
            map: lower.map,
        }
        .encode(DEFAULT_LEVEL)
    }
}

d4c_codec_guest::export_codec!(ElfRefs);
