//! A hostile layer tar through the tree builder `convert` uses: an error or a
//! tree that validates, never a panic, never an entry outside the root.
#![no_main]

use std::io::Read;

use d4c_host::digest::{Digest, Hasher};
use d4c_host::image::builder::layer::{ContentSink, TreeBuilder};
use d4c_host::image::entry::valid_path;
use libfuzzer_sys::fuzz_target;

/// Hashes content without storing it.
struct Discard;

impl ContentSink for Discard {
    fn store(&mut self, r: &mut dyn Read, size: u64) -> anyhow::Result<Digest> {
        let mut h = Hasher::default();
        let mut buf = [0u8; 8192];
        let mut left = size;
        while left > 0 {
            let n = r.read(&mut buf[..left.min(8192) as usize])?;
            anyhow::ensure!(n > 0, "short content");
            h.update(&buf[..n]);
            left -= n as u64;
        }
        Ok(h.finish())
    }
}

fuzz_target!(|data: &[u8]| {
    // Two layers: the input as the first, and again as the second (whiteouts and
    // replacements then act on a tree that has entries).
    let mut tb = TreeBuilder::default();
    if tb.apply_layer(data, &mut Discard).is_err() {
        return;
    }
    if tb.apply_layer(data, &mut Discard).is_err() {
        return;
    }
    for e in tb.finish() {
        assert!(valid_path(&e.path), "{:?}", e.path);
    }
});
