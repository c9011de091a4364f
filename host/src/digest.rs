//! sha256 identities: of codec components, of file contents, of images.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// sha256 and length of everything `r` yields.
pub fn of_reader(r: &mut impl std::io::Read) -> std::io::Result<(Digest, u64)> {
    let mut w = HashWriter::new(std::io::sink());
    std::io::copy(r, &mut w)?;
    let (_, d, n) = w.finish();
    Ok((d, n))
}

/// sha256 and size of the file at `path`.
pub fn of_file(path: &std::path::Path) -> anyhow::Result<(Digest, u64)> {
    use anyhow::Context;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    of_reader(&mut f).with_context(|| format!("reading {}", path.display()))
}

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    /// Lowercase hex, 64 characters.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The OCI form, `sha256:<hex>`.
    pub fn oci(&self) -> String {
        format!("sha256:{}", self.hex())
    }

    /// The first 12 hex characters, for messages.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }
}

/// An incremental sha256, for content that arrives in pieces.
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

/// A reader that hashes what passes through it and, at end of input, fails with
/// `InvalidData` unless exactly `size` bytes with sha256 `digest` went by. So a
/// consumer that reads to the end never finishes on wrong content.
pub struct CheckedReader<R> {
    inner: R,
    hasher: Hasher,
    seen: u64,
    size: u64,
    digest: Digest,
    what: String,
}

impl<R> CheckedReader<R> {
    /// Wraps `inner`, whose content should be `size` bytes hashing to `digest`;
    /// `what` names the content in errors.
    pub fn new(inner: R, size: u64, digest: Digest, what: impl Into<String>) -> Self {
        CheckedReader {
            inner,
            hasher: Hasher::default(),
            seen: 0,
            size,
            digest,
            what: what.into(),
        }
    }

    fn fail(&self, why: String) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {why}", self.what),
        )
    }
}

impl<R: std::io::Read> std::io::Read for CheckedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        self.seen += n as u64;
        if self.seen > self.size {
            return Err(self.fail(format!("longer than its size {}", self.size)));
        }
        self.hasher.update(&buf[..n]);
        if n == 0 {
            if self.seen != self.size {
                return Err(self.fail(format!("{} bytes, expected {}", self.seen, self.size)));
            }
            let got = self.hasher.clone().finish();
            if got != self.digest {
                return Err(self.fail(format!(
                    "content has sha256 {}, expected {}",
                    got.short(),
                    self.digest.short()
                )));
            }
        }
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Hasher,
    len: u64,
}

impl<W> HashWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Hasher::default(),
            len: 0,
        }
    }

    /// The inner writer, the digest and the length of everything written.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, self.hasher.finish(), self.len)
    }
}

impl<W: std::io::Write> std::io::Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl FromStr for Digest {
    type Err = anyhow::Error;

    /// Accepts `<64 hex>` or `sha256:<64 hex>`.
    fn from_str(s: &str) -> anyhow::Result<Digest> {
        let h = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        if h.len() != 64 || hex::decode_to_slice(h, &mut out).is_err() {
            anyhow::bail!("not a sha256 digest: {s:?} (want 64 hex digits)");
        }
        Ok(Digest(out))
    }
}

thread_local! {
    static OCI_FORM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with digests serializing in their OCI form, `sha256:<hex>`, as
/// d4c's `--json` output writes them. Elsewhere (the cdimg header, the d4c
/// index, the update protocol) they serialize as bare hex, which the formats
/// fix; both forms deserialize.
pub fn in_oci_form<R>(f: impl FnOnce() -> R) -> R {
    let before = OCI_FORM.with(|c| c.replace(true));
    let r = f();
    OCI_FORM.with(|c| c.set(before));
    r
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match OCI_FORM.with(|c| c.get()) {
            true => s.serialize_str(&self.oci()),
            false => s.serialize_str(&self.hex()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.hex().parse::<Digest>().unwrap(), d);
        assert_eq!(d.oci().parse::<Digest>().unwrap(), d);
        assert!("abc".parse::<Digest>().is_err());
        let json = |d: &Digest| serde_json::to_string(d).unwrap();
        assert_eq!(json(&d), format!("\"{}\"", d.hex()));
        assert_eq!(in_oci_form(|| json(&d)), format!("\"{}\"", d.oci()));
        assert_eq!(json(&d), format!("\"{}\"", d.hex()));
        assert!("zz".repeat(32).parse::<Digest>().is_err());
        let mut h = Hasher::default();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), d);
    }

    fn read_all(r: impl std::io::Read) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        std::io::copy(&mut std::io::BufReader::with_capacity(2, r), &mut out)?;
        Ok(out)
    }

    #[test]
    fn checked_reader() {
        let d = Digest::of(b"abcdef");
        assert_eq!(
            read_all(CheckedReader::new(&b"abcdef"[..], 6, d, "x")).unwrap(),
            b"abcdef"
        );
        let e = read_all(CheckedReader::new(&b"abcdeg"[..], 6, d, "x")).unwrap_err();
        assert!(e.to_string().contains("sha256"), "{e}");
        assert!(read_all(CheckedReader::new(&b"abcde"[..], 6, d, "x")).is_err());
        assert!(read_all(CheckedReader::new(&b"abcdefg"[..], 6, d, "x")).is_err());
    }
}
