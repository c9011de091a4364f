//! Go's deflate compressors, ported so the codec can rebuild what Go
//! programs write bit for bit: Go's own `compress/flate` ([`deflate`]) and
//! klauspost/compress under klauspost/pgzip ([`pgzip`]). Both are BSD
//! licensed (../../go/LICENSE, ../../go/LICENSE.klauspost).

mod huffman;
mod klauspost;
mod stdlib;

pub use klauspost::{pgzip, TAIL_SIZE as PGZIP_TAIL, WINDOW as PGZIP_WINDOW};
pub use stdlib::deflate;
