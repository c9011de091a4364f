//! A template for writing a d4c codec in Rust. Copy this crate, rename it, and
//! replace the algorithm. Build with
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2 -p d4c-codec-template
//! d4c codec test target/wasm32-wasip2/release/d4c_codec_template.wasm OLD NEW
//! ```
//!
//! The algorithm here is deliberately simple: the delta is the length of the
//! prefix and suffix `new` shares with `old`, plus the bytes in between. It keeps
//! the whole contract of docs/CODECS.md: deterministic, errors as values, input
//! validated before anything is allocated.

use d4c_codec_guest::{varint, Codec, Error, Result};

const MAGIC: &[u8; 8] = b"D4CTMPL1";

/// The template codec.
pub struct Template;

struct Delta<'a> {
    old_len: u64,
    prefix: usize,
    suffix: usize,
    middle: &'a [u8],
}

fn encode(old_len: u64, prefix: usize, suffix: usize, middle: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + middle.len());
    out.extend_from_slice(MAGIC);
    varint::put(&mut out, old_len);
    varint::put(&mut out, prefix as u64);
    varint::put(&mut out, suffix as u64);
    out.extend_from_slice(middle);
    out
}

fn decode(delta: &[u8]) -> Result<Delta<'_>> {
    let mut r = varint::Reader::new(delta);
    r.expect(MAGIC, "template")?;
    let old_len = r.get()?;
    let prefix = r.get_len("prefix", old_len)?;
    let suffix = r.get_len("suffix", old_len)?;
    if prefix as u64 + suffix as u64 > old_len {
        return Err(Error::InvalidInput("prefix and suffix overlap".into()));
    }
    Ok(Delta {
        old_len,
        prefix,
        suffix,
        middle: r.rest(),
    })
}

impl Codec for Template {
    const NAME: &'static str = "template";
    const VERSION: &'static str = "0.1.0";
    const MAX_INPUT: u64 = 1 << 30;

    fn diff(old: &[u8], new: &[u8], _level: u8) -> Result<Vec<u8>> {
        Self::check_size("old", old.len())?;
        Self::check_size("new", new.len())?;
        let max = old.len().min(new.len());
        let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
        let suffix = old[prefix..]
            .iter()
            .rev()
            .zip(new[prefix..].iter().rev())
            .take(max - prefix)
            .take_while(|(a, b)| a == b)
            .count();
        Ok(encode(
            old.len() as u64,
            prefix,
            suffix,
            &new[prefix..new.len() - suffix],
        ))
    }

    fn patch(old: &[u8], delta: &[u8]) -> Result<Vec<u8>> {
        let d = decode(delta)?;
        if d.old_len != old.len() as u64 {
            return Err(Error::InvalidInput(format!(
                "delta is for a base of {} bytes, this one has {}",
                d.old_len,
                old.len()
            )));
        }
        Self::check_size("output", d.prefix + d.middle.len() + d.suffix)?;
        let mut out = Vec::with_capacity(d.prefix + d.middle.len() + d.suffix);
        out.extend_from_slice(&old[..d.prefix]);
        out.extend_from_slice(d.middle);
        out.extend_from_slice(&old[old.len() - d.suffix..]);
        Ok(out)
    }
    // `merge` is left to the trait's default, which answers `unsupported`.
}

d4c_codec_guest::export_codec!(Template);
