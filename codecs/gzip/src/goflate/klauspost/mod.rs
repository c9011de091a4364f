//! klauspost/pgzip 1.2.5 over klauspost/compress 1.15.12 (what Debian's umoci
//! and skopeo are built with), at pgzip's default level: flate level 5.
//!
//! pgzip cuts the input into blocks of a fixed size (1 MiB by default, umoci
//! asks for 256 KiB) and deflates each apart with a fresh compressor primed
//! with the last 16 KiB of the block before, ending it with a sync flush; the
//! last block is also closed. The blocks' output is concatenated in order, so
//! the stream depends on the block size and the bytes, not on the threads.

mod level5;
mod tokens;
mod writer;

use super::huffman::MAX_STORE_BLOCK_SIZE;
use level5::Level5;
use tokens::Tokens;
use writer::Writer;

/// The dictionary each block gets from the block before; pgzip's blocks are
/// larger.
pub const TAIL_SIZE: usize = 16384;
/// The input klauspost's fast levels encode at a time: blocks end only there.
pub const WINDOW: usize = MAX_STORE_BLOCK_SIZE;
/// klauspost's table penalty for levels 1-6.
const LOG_NEW_TABLE_PENALTY: u32 = 7;

/// Deflates `input` as `pgzip.NewWriter` with `SetConcurrency(block_size,
/// …)`, one `Write` and `Close`, would (without the gzip header and trailer).
/// Each run of finished output goes to `sink`; returns false as soon as
/// `sink` does.
pub fn pgzip(block_size: usize, input: &[u8], mut sink: impl FnMut(&[u8]) -> bool) -> bool {
    let mut blocks: Vec<&[u8]> = input.chunks(block_size).collect();
    // Close compresses what is buffered: nothing, after a full last block.
    if input.len().is_multiple_of(block_size) {
        blocks.push(&[]);
    }
    let mut tail: &[u8] = &[];
    for (i, block) in blocks.iter().enumerate() {
        let mut c = Compressor::new(tail);
        c.write(block);
        c.sync_flush();
        if i + 1 == blocks.len() {
            c.close();
        }
        if !sink(&c.w.bits.out) {
            return false;
        }
        tail = if block.len() > TAIL_SIZE {
            &block[block.len() - TAIL_SIZE..]
        } else {
            &[]
        };
    }
    true
}

/// klauspost's `compressor` at a fast level, as a pgzip block gets it from
/// its pool (`NewWriterDict(w, level, nil)`, then `ResetDict(dst, tail)`).
struct Compressor {
    w: Writer,
    fast: Level5,
    window: Vec<u8>,
    tokens: Tokens,
    sync: bool,
}

impl Compressor {
    fn new(dict: &[u8]) -> Compressor {
        let mut c = Compressor {
            w: Writer::new(LOG_NEW_TABLE_PENALTY),
            fast: Level5::new(),
            window: Vec::with_capacity(MAX_STORE_BLOCK_SIZE),
            tokens: Tokens::new(),
            sync: false,
        };
        c.fill_window(&[]);
        c.fast.reset();
        c.fill_window(dict);
        c
    }

    /// `fillWindow`: the matcher sees the dictionary; nothing is written.
    fn fill_window(&mut self, dict: &[u8]) {
        let dict = &dict[dict.len().saturating_sub(1 << 15)..];
        self.fast.encode(&mut self.tokens, dict);
        self.tokens.reset();
    }

    fn write(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if self.window.len() == MAX_STORE_BLOCK_SIZE || self.sync {
                self.store_fast();
            }
            let n = b.len().min(MAX_STORE_BLOCK_SIZE - self.window.len());
            self.window.extend_from_slice(&b[..n]);
            b = &b[n..];
        }
    }

    /// `storeFast`: encodes a full window (any window when flushing).
    fn store_fast(&mut self) {
        let end = self.window.len();
        if end < MAX_STORE_BLOCK_SIZE {
            if !self.sync {
                return;
            }
            if end < 128 {
                match end {
                    0 => return,
                    1..=32 => self.w.write_stored(&self.window, false),
                    _ => self.w.write_block_huff(false, &self.window, true),
                }
                self.tokens.reset();
                self.window.clear();
                self.fast.reset();
                return;
            }
        }
        self.fast.encode(&mut self.tokens, &self.window);
        if self.tokens.n == 0 {
            self.w.write_stored(&self.window, false);
        } else if self.tokens.n > end - (end >> 4) {
            self.w.write_block_huff(false, &self.window, self.sync);
        } else {
            self.w
                .write_block_dynamic(&mut self.tokens, false, &self.window, self.sync);
        }
        self.tokens.reset();
        self.window.clear();
    }

    /// `syncFlush`: everything written so far, then an empty stored block.
    fn sync_flush(&mut self) {
        self.sync = true;
        self.store_fast();
        self.w.write_stored_header(0, false);
        self.w.flush();
        self.sync = false;
    }

    /// `close`: an empty final block.
    fn close(&mut self) {
        self.sync = true;
        self.store_fast();
        self.w.write_stored_header(0, true);
        self.w.flush();
    }
}
