//! Go's `BestSpeed` matcher (`deflatefast.go`): a Snappy-style single hash
//! probe per position over 64 KiB blocks, matching into the previous block.

use super::super::huffman::{literal, match_token, Token, MAX_STORE_BLOCK_SIZE};

const TABLE_BITS: u32 = 14;
const TABLE_SIZE: usize = 1 << TABLE_BITS;
const TABLE_MASK: u32 = TABLE_SIZE as u32 - 1;
const TABLE_SHIFT: u32 = 32 - TABLE_BITS;
const MAX_MATCH_OFFSET: i32 = 1 << 15;
const MAX_MATCH_LENGTH: i32 = 258;
const BUFFER_RESET: i32 = i32::MAX - MAX_STORE_BLOCK_SIZE as i32 * 2;
const INPUT_MARGIN: i32 = 16 - 1;
const MIN_NON_LITERAL_BLOCK_SIZE: usize = 1 + 1 + INPUT_MARGIN as usize;

fn load32(b: &[u8], i: i32) -> u32 {
    let i = i as usize;
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn load64(b: &[u8], i: i32) -> u64 {
    let i = i as usize;
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

fn hash(u: u32) -> u32 {
    u.wrapping_mul(0x1e35a7bd) >> TABLE_SHIFT
}

/// Where a run of matches left off: at the input's margin, or with the
/// search to go on one byte past `end` (whose 4 bytes are `value`).
enum After {
    End(i32),
    Search { end: i32, value: u32 },
}

#[derive(Clone, Copy, Default)]
struct Entry {
    val: u32,
    offset: i32,
}

/// Go's `deflateFast`.
pub struct Fast {
    table: Vec<Entry>,
    prev: Vec<u8>,
    cur: i32,
}

impl Fast {
    pub fn new() -> Fast {
        Fast {
            table: vec![Entry::default(); TABLE_SIZE],
            prev: Vec::with_capacity(MAX_STORE_BLOCK_SIZE),
            cur: MAX_STORE_BLOCK_SIZE as i32,
        }
    }

    /// Appends the tokens of one block to `dst`.
    pub fn encode(&mut self, dst: &mut Vec<Token>, src: &[u8]) {
        if self.cur >= BUFFER_RESET {
            self.shift_offsets();
        }
        if src.len() < MIN_NON_LITERAL_BLOCK_SIZE {
            self.cur += MAX_STORE_BLOCK_SIZE as i32;
            self.prev.clear();
            dst.extend(src.iter().map(|&b| literal(b)));
            return;
        }
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut next_emit = 0i32;
        let mut s = 0i32;
        let mut cv = load32(src, s);
        while let Some((at, candidate)) = self.find(src, s, cv, s_limit) {
            dst.extend(
                src[next_emit as usize..at as usize]
                    .iter()
                    .map(|&b| literal(b)),
            );
            match self.emit_matches(dst, src, at, candidate, s_limit) {
                After::End(end) => {
                    next_emit = end;
                    break;
                }
                After::Search { end, value } => {
                    next_emit = end;
                    s = end + 1;
                    cv = value;
                }
            }
        }
        if (next_emit as usize) < src.len() {
            dst.extend(src[next_emit as usize..].iter().map(|&b| literal(b)));
        }
        self.cur += src.len() as i32;
        self.prev.clear();
        self.prev.extend_from_slice(src);
    }

    /// Go's search loop: from `s` (holding `cv`), probing further apart the
    /// longer no match turns up, the first position whose table entry holds
    /// the same 4 bytes within reach, with that entry; `None` past `s_limit`.
    fn find(&mut self, src: &[u8], mut s: i32, mut cv: u32, s_limit: i32) -> Option<(i32, Entry)> {
        let mut next_hash = hash(cv);
        let mut skip = 32i32;
        let mut next_s = s;
        loop {
            s = next_s;
            let between = skip >> 5;
            next_s = s + between;
            skip += between;
            if next_s > s_limit {
                return None;
            }
            let candidate = self.table[(next_hash & TABLE_MASK) as usize];
            let now = load32(src, next_s);
            self.table[(next_hash & TABLE_MASK) as usize] = Entry {
                offset: s + self.cur,
                val: cv,
            };
            next_hash = hash(now);
            let offset = s - (candidate.offset - self.cur);
            if offset <= MAX_MATCH_OFFSET && cv == candidate.val {
                return Some((s, candidate));
            }
            cv = now;
        }
    }

    /// Emits the match at `s` and those that follow it back to back.
    fn emit_matches(
        &mut self,
        dst: &mut Vec<Token>,
        src: &[u8],
        mut s: i32,
        mut candidate: Entry,
        s_limit: i32,
    ) -> After {
        loop {
            s += 4;
            let t = candidate.offset - self.cur + 4;
            let l = self.match_len(s, t, src);
            dst.push(match_token((l + 4 - 3) as u32, (s - t - 1) as u32));
            s += l;
            if s >= s_limit {
                return After::End(s);
            }
            let mut x = load64(src, s - 1);
            let prev_hash = hash(x as u32);
            self.table[(prev_hash & TABLE_MASK) as usize] = Entry {
                offset: self.cur + s - 1,
                val: x as u32,
            };
            x >>= 8;
            let curr_hash = hash(x as u32);
            candidate = self.table[(curr_hash & TABLE_MASK) as usize];
            self.table[(curr_hash & TABLE_MASK) as usize] = Entry {
                offset: self.cur + s,
                val: x as u32,
            };
            let offset = s - (candidate.offset - self.cur);
            if offset > MAX_MATCH_OFFSET || x as u32 != candidate.val {
                return After::Search {
                    end: s,
                    value: (x >> 8) as u32,
                };
            }
        }
    }

    /// Length of the match at `s` with `t` (negative: in the previous block).
    fn match_len(&self, s: i32, t: i32, src: &[u8]) -> i32 {
        let s1 = ((s + MAX_MATCH_LENGTH - 4) as usize).min(src.len());
        let a = &src[s as usize..s1];
        if t >= 0 {
            let b = &src[t as usize..t as usize + a.len()];
            return common(a, b) as i32;
        }
        let tp = self.prev.len() as i32 + t;
        if tp < 0 {
            return 0;
        }
        let b = &self.prev[tp as usize..];
        let b = &b[..b.len().min(a.len())];
        let n = common(&a[..b.len()], b);
        if n < b.len() || s as usize + n == s1 {
            return n as i32;
        }
        let a = &src[s as usize + n..s1];
        (common(a, &src[..a.len()]) + n) as i32
    }

    /// Go's `reset`: forget the previous block (after a flush of a tiny one).
    pub fn reset(&mut self) {
        self.prev.clear();
        self.cur += MAX_MATCH_OFFSET;
        if self.cur >= BUFFER_RESET {
            self.shift_offsets();
        }
    }

    fn shift_offsets(&mut self) {
        if self.prev.is_empty() {
            self.table.fill(Entry::default());
        } else {
            for e in &mut self.table {
                e.offset = (e.offset - self.cur + MAX_MATCH_OFFSET + 1).max(0);
            }
        }
        self.cur = MAX_MATCH_OFFSET + 1;
    }
}

/// Length of the common prefix of `a` and `b`.
fn common(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
