//! LEB128 varints, the integer encoding of the built-in codecs' delta headers.

use crate::{Error, Result};

/// Appends `v` as an unsigned LEB128 varint.
pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a signed value, zigzag-encoded so small magnitudes stay short.
pub fn put_signed(out: &mut Vec<u8>, v: i64) {
    put(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// A cursor over a byte slice that reads varints and raw bytes, failing with
/// [`Error::InvalidInput`] on truncation or overlong encodings.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Reads an unsigned LEB128 varint.
    pub fn get(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| Error::InvalidInput("truncated varint".into()))?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                break;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::InvalidInput("varint overflows 64 bits".into()))
    }

    /// Reads a zigzag-encoded signed varint.
    pub fn get_signed(&mut self) -> Result<i64> {
        let u = self.get()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// Reads a varint that must fit in `usize` and be at most `max`.
    pub fn get_len(&mut self, what: &str, max: u64) -> Result<usize> {
        let v = self.get()?;
        if v > max {
            return Err(Error::InvalidInput(format!(
                "{what} {v} exceeds limit {max}"
            )));
        }
        usize::try_from(v).map_err(|_| Error::InvalidInput(format!("{what} {v} too large")))
    }

    /// Takes the next `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| Error::InvalidInput("truncated delta".into()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Requires the next bytes to equal `magic`.
    pub fn expect(&mut self, magic: &[u8], what: &str) -> Result<()> {
        if self.bytes(magic.len()).ok() != Some(magic) {
            return Err(Error::InvalidInput(format!(
                "not a {what} delta (bad magic)"
            )));
        }
        Ok(())
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let vals = [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX];
        let mut buf = Vec::new();
        for &v in &vals {
            put(&mut buf, v);
        }
        for &s in &[0i64, -1, 1, i64::MIN, i64::MAX, -300] {
            put_signed(&mut buf, s);
        }
        let mut r = Reader::new(&buf);
        for &v in &vals {
            assert_eq!(r.get().unwrap(), v);
        }
        for &s in &[0i64, -1, 1, i64::MIN, i64::MAX, -300] {
            assert_eq!(r.get_signed().unwrap(), s);
        }
        assert!(r.is_empty());
    }

    #[test]
    fn rejects_truncated_and_overlong() {
        assert!(Reader::new(&[0x80]).get().is_err());
        assert!(Reader::new(&[0xff; 11]).get().is_err());
        assert!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
                .get()
                .is_err()
        );
    }
}
