//! `bsdiff`: Colin Percival's bsdiff 4 algorithm (a suffix array of the old file,
//! approximate matches extended forwards and backwards, bytewise differences that
//! are mostly zero), with its three streams compressed by zstd instead of bzip2,
//! and `merge` of two deltas without their base, as D4C's DeltaMerging does.
//!
//! The format is in [`delta`]; the encoder in [`search`]; composition in [`merge`].

pub mod delta;
pub mod merge;
pub mod search;

use d4c_codec_guest::{Codec, Result};

/// The bsdiff codec.
pub struct Bsdiff;

/// zstd level for the streams when the caller asks for the default.
const DEFAULT_LEVEL: u8 = 19;

impl Codec for Bsdiff {
    const NAME: &'static str = "bsdiff";
    const VERSION: &'static str = "1.1.0";
    /// The suffix array takes 4 bytes per old byte inside a 4 GiB address space.
    const MAX_INPUT: u64 = 256 << 20;
    const CAN_MERGE: bool = true;

    fn diff(old: &[u8], new: &[u8], level: u8) -> Result<Vec<u8>> {
        Self::check_inputs(old, new)?;
        let level = d4c_codec_guest::effort(level, DEFAULT_LEVEL);
        search::diff(old, new).encode(level)
    }

    fn patch(old: &[u8], delta: &[u8]) -> Result<Vec<u8>> {
        delta::Delta::decode(delta, Self::MAX_INPUT)?.apply(old)
    }

    fn merge(lower: &[u8], upper: &[u8]) -> Result<Vec<u8>> {
        let lower = delta::Delta::decode(lower, Self::MAX_INPUT)?;
        let upper = delta::Delta::decode(upper, Self::MAX_INPUT)?;
        merge::merge(&lower, &upper)?.encode(DEFAULT_LEVEL)
    }
}

#[cfg(feature = "component")]
d4c_codec_guest::export_codec!(Bsdiff);
