//! `zstd-dict`: the new file compressed by zstd with the old file as a raw
//! reference prefix, as `zstd --patch-from=old new` does. The window covers both
//! inputs and long-distance matching is on, so a match anywhere in the old file is
//! found. It cannot merge: a zstd frame has no structure that maps back to the
//! old file's bytes without decoding it.
//!
//! Match tables are sized to large references as `zstd --patch-from` would
//! want them ([`table_logs`]; 1.1.0: 1.0.0's deltas decode the same).
//!
//! Delta layout: `"D4CZSTD1"`, varint old length, varint new length, one zstd
//! frame. The lengths let `patch` reject a wrong base before decoding, and bound
//! the output allocation.

use d4c_codec_guest::{varint, Codec, Error, Result};
use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter};

const MAGIC: &[u8; 8] = b"D4CZSTD1";
/// zstd's largest window in a 32-bit address space (ZSTD_WINDOWLOG_MAX_32).
const MAX_WINDOW_LOG: u32 = 30;
const DEFAULT_LEVEL: u8 = 19;

/// The zstd-dict codec.
pub struct ZstdDict;

fn zerr(what: &str, code: usize) -> Error {
    Error::Failed(format!("zstd {what}: {}", zstd_safe::get_error_name(code)))
}

/// The window log covering `old` followed by `new`, as `--patch-from` sizes it.
fn window_log(total: usize) -> u32 {
    let bits = usize::BITS - total.max(1).saturating_sub(1).leading_zeros();
    bits.clamp(10, MAX_WINDOW_LOG)
}

/// Above this window log the level's own match tables (at most 2^24 chain
/// entries) reach only the end of a large reference, and the rest is found by
/// long-distance matching alone, in 64-byte pieces: an unchanged 35 MB file
/// cost 81 KB. Larger windows get chain and hash tables sized to them.
const TABLES_FROM_LOG: u32 = 24;

/// Chain and hash logs for window log `w` (zstd's btultra needs 4 bytes per
/// chain entry and per hash entry: 1.25 GiB at most, within the sandbox's cap).
fn table_logs(w: u32) -> Option<(u32, u32)> {
    (w > TABLES_FROM_LOG).then_some((w.min(28), w.min(26)))
}

impl Codec for ZstdDict {
    const NAME: &'static str = "zstd-dict";
    const VERSION: &'static str = "1.1.0";
    const MAX_INPUT: u64 = 512 << 20;

    fn diff(old: &[u8], new: &[u8], level: u8) -> Result<Vec<u8>> {
        Self::check_inputs(old, new)?;
        let level = d4c_codec_guest::effort(level, DEFAULT_LEVEL);
        let mut cctx =
            CCtx::try_create().ok_or_else(|| Error::Failed("zstd: no context".into()))?;
        let window = window_log(old.len() + new.len());
        let mut params = vec![
            CParameter::CompressionLevel(level.into()),
            CParameter::WindowLog(window),
            CParameter::EnableLongDistanceMatching(true),
            CParameter::ContentSizeFlag(true),
            CParameter::ChecksumFlag(false),
        ];
        if let Some((chain, hash)) = table_logs(window) {
            params.extend([CParameter::ChainLog(chain), CParameter::HashLog(hash)]);
        }
        for p in params {
            cctx.set_parameter(p).map_err(|c| zerr("parameter", c))?;
        }
        cctx.ref_prefix(old).map_err(|c| zerr("prefix", c))?;

        let mut out = Vec::with_capacity(24 + zstd_safe::compress_bound(new.len()));
        out.extend_from_slice(MAGIC);
        varint::put(&mut out, old.len() as u64);
        varint::put(&mut out, new.len() as u64);
        // compress2 writes from the start of its buffer, so the frame gets its own.
        let mut frame = Vec::with_capacity(zstd_safe::compress_bound(new.len()));
        cctx.compress2(&mut frame, new)
            .map_err(|c| zerr("compress", c))?;
        out.extend_from_slice(&frame);
        Ok(out)
    }

    fn patch(old: &[u8], delta: &[u8]) -> Result<Vec<u8>> {
        let mut r = varint::Reader::new(delta);
        r.expect(MAGIC, "zstd-dict")?;
        let old_len = r.get()?;
        if old_len != old.len() as u64 {
            return Err(Error::InvalidInput(format!(
                "delta was made for a base of {old_len} bytes, this base has {}",
                old.len()
            )));
        }
        let new_len = r.get_len("new length", Self::MAX_INPUT)?;
        let frame = r.rest();
        let mut dctx =
            DCtx::try_create().ok_or_else(|| Error::Failed("zstd: no context".into()))?;
        dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
            .map_err(|c| zerr("parameter", c))?;
        dctx.ref_prefix(old).map_err(|c| zerr("prefix", c))?;
        let mut out = Vec::with_capacity(new_len);
        dctx.decompress(&mut out, frame).map_err(|c| {
            Error::InvalidInput(format!(
                "corrupt zstd frame: {}",
                zstd_safe::get_error_name(c)
            ))
        })?;
        if out.len() != new_len {
            return Err(Error::InvalidInput(format!(
                "delta decodes to {} bytes, header says {new_len}",
                out.len()
            )));
        }
        Ok(out)
    }
}

d4c_codec_guest::export_codec!(ZstdDict);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_base() {
        let old: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i * 7).to_le_bytes())
            .collect();
        let mut new = old.clone();
        new[5000..5010].copy_from_slice(b"0123456789");
        new.extend_from_slice(b"tail");
        let d = ZstdDict::diff(&old, &new, 3).unwrap();
        assert!(d.len() < 200, "delta {} bytes", d.len());
        assert_eq!(ZstdDict::patch(&old, &d).unwrap(), new);
        assert!(matches!(
            ZstdDict::patch(&old[1..], &d),
            Err(Error::InvalidInput(_))
        ));
        assert!(ZstdDict::patch(&old, &d[..d.len() - 3]).is_err());
        assert!(ZstdDict::merge(&d, &d).is_err());
    }

    #[test]
    fn empty_inputs() {
        for (o, n) in [(&b""[..], &b""[..]), (b"abc", b""), (b"", b"abc")] {
            let d = ZstdDict::diff(o, n, 0).unwrap();
            assert_eq!(ZstdDict::patch(o, &d).unwrap(), n);
        }
    }
}
