//! The bsdiff delta: a list of control triples and two byte streams.
//!
//! Applying it keeps a position in the old file, starting at 0. Each triple
//! `(add, copy, seek)` appends `add` bytes that are `old[pos..]` plus the next `add`
//! bytes of the diff stream (wrapping bytewise addition), advances `pos` by `add`,
//! appends the next `copy` bytes of the extra stream, then moves `pos` by `seek`.
//!
//! Encoding: `"D4CBSDF1"`, varints old length, new length, raw control length,
//! and the compressed lengths of control, diff and extra; then the three zstd
//! frames. Control triples are varints (seek zigzag-signed).

use d4c_codec_guest::{varint, Error, Result};

const MAGIC: &[u8; 8] = b"D4CBSDF1";

/// One control triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    /// Bytes built from old plus diff.
    pub add: u64,
    /// Bytes copied from the extra stream.
    pub copy: u64,
    /// Relative move of the old position after the triple.
    pub seek: i64,
}

/// A decoded bsdiff delta.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Length of the file the delta applies to.
    pub old_len: u64,
    /// Length of the file it produces (= diff.len() + extra.len()).
    pub new_len: u64,
    /// Control triples.
    pub ctrl: Vec<Control>,
    /// Bytewise differences for the `add` parts, concatenated.
    pub diff: Vec<u8>,
    /// Literal bytes for the `copy` parts, concatenated.
    pub extra: Vec<u8>,
}

fn compress(data: &[u8], level: u8) -> Result<Vec<u8>> {
    zstd::bulk::compress(data, level.into()).map_err(|e| Error::Failed(format!("zstd: {e}")))
}

fn decompress(data: &[u8], len: usize, what: &str) -> Result<Vec<u8>> {
    if len == 0 && data.is_empty() {
        return Ok(Vec::new());
    }
    let out = zstd::bulk::decompress(data, len)
        .map_err(|e| Error::InvalidInput(format!("corrupt {what} stream: {e}")))?;
    if out.len() != len {
        return Err(Error::InvalidInput(format!(
            "{what} stream has {} bytes, header says {len}",
            out.len()
        )));
    }
    Ok(out)
}

impl Delta {
    /// Serialises the delta, compressing the streams at zstd `level`.
    pub fn encode(&self, level: u8) -> Result<Vec<u8>> {
        let mut ctrl = Vec::with_capacity(self.ctrl.len() * 6);
        for c in &self.ctrl {
            varint::put(&mut ctrl, c.add);
            varint::put(&mut ctrl, c.copy);
            varint::put_signed(&mut ctrl, c.seek);
        }
        let streams = [
            compress(&ctrl, level)?,
            compress(&self.diff, level)?,
            compress(&self.extra, level)?,
        ];
        let mut out = Vec::with_capacity(64 + streams.iter().map(Vec::len).sum::<usize>());
        out.extend_from_slice(MAGIC);
        varint::put(&mut out, self.old_len);
        varint::put(&mut out, self.new_len);
        varint::put(&mut out, ctrl.len() as u64);
        for s in &streams {
            varint::put(&mut out, s.len() as u64);
        }
        for s in &streams {
            out.extend_from_slice(s);
        }
        Ok(out)
    }

    /// Parses and validates a delta; no length in it may exceed `max_len`, and
    /// nothing is allocated beyond what the validated lengths allow.
    pub fn decode(buf: &[u8], max_len: u64) -> Result<Delta> {
        let mut r = varint::Reader::new(buf);
        r.expect(MAGIC, "bsdiff")?;
        let old_len = r.get()?;
        let new_len = r.get_len("new length", max_len)? as u64;
        // A triple takes at least 3 bytes and a useful one adds at least one byte.
        let ctrl_max = 30 * (new_len + 1);
        let ctrl_len = r.get_len("control length", ctrl_max)?;
        let sizes = [r.get()?, r.get()?, r.get()?];
        let mut frames = Vec::with_capacity(3);
        for s in sizes {
            let n =
                usize::try_from(s).map_err(|_| Error::InvalidInput("stream too large".into()))?;
            frames.push(r.bytes(n)?);
        }
        if !r.is_empty() {
            return Err(Error::InvalidInput(
                "trailing bytes after the streams".into(),
            ));
        }

        let raw = decompress(frames[0], ctrl_len, "control")?;
        let mut cr = varint::Reader::new(&raw);
        let (mut add_total, mut copy_total) = (0u64, 0u64);
        let mut ctrl = Vec::new();
        while !cr.is_empty() {
            let c = Control {
                add: cr.get()?,
                copy: cr.get()?,
                seek: cr.get_signed()?,
            };
            add_total = add_total.saturating_add(c.add);
            copy_total = copy_total.saturating_add(c.copy);
            if add_total.saturating_add(copy_total) > new_len {
                return Err(Error::InvalidInput(
                    "control triples exceed the new length".into(),
                ));
            }
            ctrl.push(c);
        }
        if add_total + copy_total != new_len {
            return Err(Error::InvalidInput(format!(
                "control triples give {} bytes, header says {new_len}",
                add_total + copy_total
            )));
        }
        let diff = decompress(frames[1], add_total as usize, "diff")?;
        let extra = decompress(frames[2], copy_total as usize, "extra")?;
        Ok(Delta {
            old_len,
            new_len,
            ctrl,
            diff,
            extra,
        })
    }

    /// Rebuilds the new file from `old`.
    pub fn apply(&self, old: &[u8]) -> Result<Vec<u8>> {
        if old.len() as u64 != self.old_len {
            return Err(Error::InvalidInput(format!(
                "delta was made for a base of {} bytes, this base has {}",
                self.old_len,
                old.len()
            )));
        }
        let mut out = Vec::with_capacity(self.new_len as usize);
        let (mut pos, mut d, mut e) = (0i64, 0usize, 0usize);
        for c in &self.ctrl {
            let (add, copy) = (c.add as usize, c.copy as usize);
            let start = usize::try_from(pos)
                .ok()
                .filter(|&p| p.checked_add(add).is_some_and(|end| end <= old.len()))
                .ok_or_else(|| {
                    Error::InvalidInput(format!("control reads old[{pos}..+{add}] out of range"))
                })?;
            let src = &old[start..start + add];
            out.extend(
                src.iter()
                    .zip(&self.diff[d..d + add])
                    .map(|(o, x)| o.wrapping_add(*x)),
            );
            out.extend_from_slice(&self.extra[e..e + copy]);
            d += add;
            e += copy;
            pos = pos
                .checked_add(c.add as i64)
                .and_then(|p| p.checked_add(c.seek))
                .ok_or_else(|| Error::InvalidInput("control seek overflows".into()))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rejects_garbage() {
        let d = Delta {
            old_len: 3,
            new_len: 4,
            ctrl: vec![Control {
                add: 3,
                copy: 1,
                seek: 0,
            }],
            diff: vec![0, 1, 0],
            extra: vec![9],
        };
        let enc = d.encode(3).unwrap();
        assert_eq!(Delta::decode(&enc, 1 << 20).unwrap(), d);
        assert_eq!(d.apply(b"abc").unwrap(), b"acc\x09");
        assert!(d.apply(b"abcd").is_err());
        for cut in 0..enc.len() {
            assert!(
                Delta::decode(&enc[..cut], 1 << 20).is_err(),
                "prefix {cut} accepted"
            );
        }
        assert!(Delta::decode(&enc, 2).is_err());
    }

    #[test]
    fn apply_rejects_out_of_range_reads() {
        let d = Delta {
            old_len: 3,
            new_len: 2,
            ctrl: vec![
                Control {
                    add: 1,
                    copy: 0,
                    seek: 5,
                },
                Control {
                    add: 1,
                    copy: 0,
                    seek: 0,
                },
            ],
            diff: vec![0, 0],
            extra: vec![],
        };
        assert!(matches!(d.apply(b"abc"), Err(Error::InvalidInput(_))));
    }
}
