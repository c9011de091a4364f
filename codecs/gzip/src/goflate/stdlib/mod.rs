//! Go's deflate compressor (`compress/flate`, as in Go 1.19; the stream a
//! level gives has not changed since Go 1.7): what docker, buildkit,
//! containerd and ko write through `compress/gzip`.
//!
//! Go's output depends on the level and the bytes alone, not on how the writes
//! were cut: the lazy matcher (levels 2-9) only works with 262 bytes of
//! lookahead until the end, and `BestSpeed` (1) on fixed 64 KiB blocks.

mod fast;
mod writer;

use super::huffman::{literal, match_token, Token, MAX_STORE_BLOCK_SIZE};
use writer::BlockWriter;

const WINDOW_SIZE: usize = 1 << 15;
const WINDOW_MASK: usize = WINDOW_SIZE - 1;
const MIN_MATCH_LENGTH: usize = 4;
const MAX_MATCH_LENGTH: usize = 258;
const MAX_FLATE_BLOCK_TOKENS: usize = 1 << 14;
const HASH_BITS: u32 = 17;
const HASH_SIZE: usize = 1 << HASH_BITS;
const HASH_MASK: u32 = HASH_SIZE as u32 - 1;
const MAX_HASH_OFFSET: i64 = 1 << 24;
const SKIP_NEVER: i64 = i32::MAX as i64;
const HASHMUL: u32 = 0x1e35a7bd;

/// Go's `levels` table for the lazy matcher: good, lazy, nice, chain, fastSkipHashing.
const LEVELS: [(i64, i64, i64, i64, i64); 10] = [
    (0, 0, 0, 0, 0),
    (0, 0, 0, 0, 0),
    (4, 0, 16, 8, 5),
    (4, 0, 32, 32, 6),
    (4, 4, 16, 16, SKIP_NEVER),
    (8, 16, 32, 32, SKIP_NEVER),
    (8, 16, 128, 128, SKIP_NEVER),
    (8, 32, 128, 256, SKIP_NEVER),
    (32, 128, 258, 1024, SKIP_NEVER),
    (32, 258, 258, 4096, SKIP_NEVER),
];

fn hash4(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]).wrapping_mul(HASHMUL) >> (32 - HASH_BITS)
}

/// Deflates `input` as Go's `flate.NewWriter(w, level)`, one `Write` and
/// `Close`, would; `level` is 0 to 9. Each run of finished output goes to
/// `sink`; returns false as soon as `sink` does.
pub fn deflate(level: u8, input: &[u8], mut sink: impl FnMut(&[u8]) -> bool) -> bool {
    let mut c = Compressor::new(level);
    let mut rest = input;
    while !rest.is_empty() {
        c.step();
        let n = c.fill(rest);
        rest = &rest[n..];
        if !c.drain(&mut sink) {
            return false;
        }
    }
    c.sync = true;
    c.step();
    c.w.write_stored_header(0, true);
    c.w.bits.align();
    c.drain(&mut sink)
}

/// Go's `compressor`, for one level.
struct Compressor {
    level: u8,
    good: i64,
    lazy: i64,
    nice: i64,
    chain: i64,
    fast_skip_hashing: i64,
    w: BlockWriter,
    sync: bool,
    window: Vec<u8>,
    window_end: usize,
    tokens: Vec<Token>,
    /// BestSpeed's matcher.
    fast: Option<fast::Fast>,
    lazy_state: Option<Box<Lazy>>,
}

/// The lazy matcher's state (Go keeps it in `compressor`).
struct Lazy {
    chain_head: i64,
    hash_head: Vec<u32>,
    hash_prev: Vec<u32>,
    hash_offset: i64,
    index: usize,
    /// Window index where the pending tokens start; Go's `math.MaxInt32`
    /// when the window slid past it.
    block_start: i64,
    byte_available: bool,
    length: usize,
    offset: usize,
    max_insert_index: usize,
}

impl Compressor {
    fn new(level: u8) -> Compressor {
        let (good, lazy, nice, chain, fast_skip_hashing) = LEVELS[level.min(9) as usize];
        let lazy_matcher = level >= 2;
        Compressor {
            level,
            good,
            lazy,
            nice,
            chain,
            fast_skip_hashing,
            w: BlockWriter::new(),
            sync: false,
            window: vec![
                0;
                if lazy_matcher {
                    2 * WINDOW_SIZE
                } else {
                    MAX_STORE_BLOCK_SIZE
                }
            ],
            window_end: 0,
            tokens: Vec::with_capacity(MAX_FLATE_BLOCK_TOKENS + 1),
            fast: (level == 1).then(fast::Fast::new),
            lazy_state: lazy_matcher.then(|| {
                Box::new(Lazy {
                    chain_head: -1,
                    hash_head: vec![0; HASH_SIZE],
                    hash_prev: vec![0; WINDOW_SIZE],
                    hash_offset: 1,
                    index: 0,
                    block_start: 0,
                    byte_available: false,
                    length: MIN_MATCH_LENGTH - 1,
                    offset: 0,
                    max_insert_index: 0,
                })
            }),
        }
    }

    /// Hands the finished bytes to `sink`.
    fn drain(&mut self, sink: &mut impl FnMut(&[u8]) -> bool) -> bool {
        let ok = self.w.bits.out.is_empty() || sink(&self.w.bits.out);
        self.w.bits.out.clear();
        ok
    }

    fn step(&mut self) {
        match self.level {
            0 => self.store(),
            1 => self.enc_speed(),
            _ => self.deflate_lazy(),
        }
    }

    fn fill(&mut self, b: &[u8]) -> usize {
        if self.level >= 2 {
            self.slide_window();
        }
        let n = b.len().min(self.window.len() - self.window_end);
        self.window[self.window_end..self.window_end + n].copy_from_slice(&b[..n]);
        self.window_end += n;
        n
    }

    /// Go's `fillDeflate` before the copy: slides the window down by 32 KiB
    /// when the lookahead would run off its end.
    fn slide_window(&mut self) {
        let s = self.lazy_state.as_mut().expect("lazy level");
        if s.index < 2 * WINDOW_SIZE - (MIN_MATCH_LENGTH + MAX_MATCH_LENGTH) {
            return;
        }
        self.window.copy_within(WINDOW_SIZE.., 0);
        s.index -= WINDOW_SIZE;
        self.window_end -= WINDOW_SIZE;
        if s.block_start >= WINDOW_SIZE as i64 {
            s.block_start -= WINDOW_SIZE as i64;
        } else {
            s.block_start = i32::MAX as i64;
        }
        s.hash_offset += WINDOW_SIZE as i64;
        if s.hash_offset > MAX_HASH_OFFSET {
            let delta = s.hash_offset - 1;
            s.hash_offset -= delta;
            s.chain_head -= delta;
            for v in s.hash_prev.iter_mut().chain(s.hash_head.iter_mut()) {
                *v = if *v as i64 > delta {
                    (*v as i64 - delta) as u32
                } else {
                    0
                };
            }
        }
    }

    fn write_stored_block(&mut self, buf_end: usize) {
        self.w.write_stored_header(buf_end, false);
        self.w.bits.out.extend_from_slice(&self.window[..buf_end]);
    }

    /// Level 0: stored blocks of up to 64 KiB.
    fn store(&mut self) {
        if self.window_end > 0 && (self.window_end == MAX_STORE_BLOCK_SIZE || self.sync) {
            self.write_stored_block(self.window_end);
            self.window_end = 0;
        }
    }

    /// Go's `encSpeed`: one block per 64 KiB of input.
    fn enc_speed(&mut self) {
        let end = self.window_end;
        if end < MAX_STORE_BLOCK_SIZE {
            if !self.sync {
                return;
            }
            if end < 128 {
                match end {
                    0 => return,
                    1..=16 => self.write_stored_block(end),
                    _ => self.w.write_block_huff(false, &self.window[..end]),
                }
                self.window_end = 0;
                self.fast.as_mut().expect("level 1").reset();
                return;
            }
        }
        self.tokens.clear();
        let fast = self.fast.as_mut().expect("level 1");
        fast.encode(&mut self.tokens, &self.window[..end]);
        if self.tokens.len() > end - (end >> 4) {
            self.w.write_block_huff(false, &self.window[..end]);
        } else {
            self.w
                .write_block_dynamic(&self.tokens, false, &self.window[..end]);
        }
        self.window_end = 0;
    }

    fn insert_hash(s: &mut Lazy, window: &[u8], index: usize) -> u32 {
        let h = hash4(&window[index..index + MIN_MATCH_LENGTH]);
        let hh = &mut s.hash_head[(h & HASH_MASK) as usize];
        let previous = *hh;
        s.hash_prev[index & WINDOW_MASK] = previous;
        *hh = (index as i64 + s.hash_offset) as u32;
        previous
    }

    /// Go's `deflate`: lazy (or, at levels 2 and 3, greedy with skipped
    /// hashing) matching over the window.
    fn deflate_lazy(&mut self) {
        let mut s = self.lazy_state.take().expect("lazy level");
        self.deflate_window(&mut s);
        self.lazy_state = Some(s);
    }

    fn deflate_window(&mut self, s: &mut Lazy) {
        if self.window_end - s.index < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH && !self.sync {
            return;
        }
        s.max_insert_index = self.window_end.saturating_sub(MIN_MATCH_LENGTH - 1);
        loop {
            let lookahead = self.window_end - s.index;
            if lookahead < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH {
                if !self.sync {
                    break;
                }
                if lookahead == 0 {
                    self.finish_window(s);
                    break;
                }
            }
            let (prev_length, prev_offset) = self.search(s, lookahead);
            let skip_never = self.fast_skip_hashing == SKIP_NEVER;
            let emit_match = if skip_never {
                prev_length >= MIN_MATCH_LENGTH && s.length <= prev_length
            } else {
                s.length >= MIN_MATCH_LENGTH
            };
            if emit_match {
                self.emit_match(s, prev_length, prev_offset);
            } else {
                self.emit_literal(s);
            }
        }
    }

    /// At the end of the input: the byte held back, then the pending block.
    fn finish_window(&mut self, s: &mut Lazy) {
        if s.byte_available {
            self.tokens.push(literal(self.window[s.index - 1]));
            s.byte_available = false;
        }
        if !self.tokens.is_empty() {
            self.write_block_at(s, s.index);
        }
    }

    /// Hashes the position and looks for a match there (the lazy levels only
    /// while the previous match is short); returns the previous match.
    fn search(&mut self, s: &mut Lazy, lookahead: usize) -> (usize, usize) {
        let skip_never = self.fast_skip_hashing == SKIP_NEVER;
        if s.index < s.max_insert_index {
            s.chain_head = Self::insert_hash(s, &self.window, s.index) as i64;
        }
        let prev = (s.length, s.offset);
        s.length = MIN_MATCH_LENGTH - 1;
        s.offset = 0;
        let min_index = s.index.saturating_sub(WINDOW_SIZE) as i64;
        let head = s.chain_head - s.hash_offset;
        if head >= min_index
            && (!skip_never && lookahead > MIN_MATCH_LENGTH - 1
                || skip_never && lookahead > prev.0 && (prev.0 as i64) < self.lazy)
        {
            if let Some((l, o)) = self.find_match(s, s.index, head, lookahead) {
                s.length = l;
                s.offset = o;
            }
        }
        prev
    }

    /// Emits a match (the previous one, at the lazy levels) and moves past
    /// it, hashing what it covers unless it is long at levels 2 and 3.
    fn emit_match(&mut self, s: &mut Lazy, prev_length: usize, prev_offset: usize) {
        let skip_never = self.fast_skip_hashing == SKIP_NEVER;
        let (l, o) = if skip_never {
            (prev_length, prev_offset)
        } else {
            (s.length, s.offset)
        };
        self.tokens
            .push(match_token((l - 3) as u32, (o - 1) as u32));
        if s.length as i64 <= self.fast_skip_hashing {
            let new_index = if skip_never {
                s.index + prev_length - 1
            } else {
                s.index + s.length
            };
            let mut index = s.index + 1;
            while index < new_index {
                if index < s.max_insert_index {
                    Self::insert_hash(s, &self.window, index);
                }
                index += 1;
            }
            s.index = index;
            if skip_never {
                s.byte_available = false;
                s.length = MIN_MATCH_LENGTH - 1;
            }
        } else {
            s.index += s.length;
        }
        if self.tokens.len() == MAX_FLATE_BLOCK_TOKENS {
            self.write_block_at(s, s.index);
        }
    }

    /// Emits a literal (the byte held back, at the lazy levels) and moves on.
    fn emit_literal(&mut self, s: &mut Lazy) {
        let skip_never = self.fast_skip_hashing == SKIP_NEVER;
        if !skip_never || s.byte_available {
            let i = if skip_never { s.index - 1 } else { s.index };
            self.tokens.push(literal(self.window[i]));
            if self.tokens.len() == MAX_FLATE_BLOCK_TOKENS {
                self.write_block_at(s, i + 1);
            }
        }
        s.index += 1;
        if skip_never {
            s.byte_available = true;
        }
    }

    /// Go's `writeBlock`: the pending tokens as one block ending at `index`,
    /// with the input they cover when the window still holds it.
    fn write_block_at(&mut self, s: &mut Lazy, index: usize) {
        if index > 0 {
            let input = (s.block_start <= index as i64).then_some(s.block_start as usize..index);
            s.block_start = index as i64;
            self.w
                .write_block(&self.tokens, false, input.map(|r| &self.window[r]));
        }
        self.tokens.clear();
    }

    /// Go's `findMatch`: the longest match at `pos` along the hash chain from
    /// `prev_head`, as (length, offset).
    fn find_match(
        &self,
        s: &Lazy,
        pos: usize,
        prev_head: i64,
        lookahead: usize,
    ) -> Option<(usize, usize)> {
        let min_match_look = MAX_MATCH_LENGTH.min(lookahead);
        let win = &self.window[..pos + min_match_look];
        let nice = (win.len() - pos).min(self.nice as usize);
        let mut tries = self.chain;
        let mut length = MIN_MATCH_LENGTH - 1;
        if length as i64 >= self.good {
            tries >>= 2;
        }
        let mut w_end = win[pos + length];
        let w_pos = &win[pos..];
        let min_index = pos as i64 - WINDOW_SIZE as i64;
        let mut found = None;
        let mut i = prev_head;
        while tries > 0 {
            let iu = i as usize;
            if w_end == win[iu + length] {
                let n = common(&win[iu..iu + min_match_look], &w_pos[..min_match_look]);
                if n > length && (n > MIN_MATCH_LENGTH || pos - iu <= 4096) {
                    length = n;
                    found = Some((n, pos - iu));
                    if n >= nice {
                        break;
                    }
                    w_end = win[pos + n];
                }
            }
            if i == min_index {
                break;
            }
            i = s.hash_prev[iu & WINDOW_MASK] as i64 - s.hash_offset;
            if i < min_index || i < 0 {
                break;
            }
            tries -= 1;
        }
        found
    }
}

/// Length of the common prefix of `a` and `b`.
fn common(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
