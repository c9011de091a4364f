//! klauspost's level 5 matcher (`level5.go`, `fast_encoder.go`): a 4-byte
//! hash table and a 7-byte hash table of two entries each, over a history of
//! up to five 64 KiB blocks.

use super::super::huffman::MAX_STORE_BLOCK_SIZE;
use super::tokens::Tokens;

const TABLE_BITS: u32 = 15;
const TABLE_SIZE: usize = 1 << TABLE_BITS;
const MAX_MATCH_OFFSET: i32 = 1 << 15;
const MAX_MATCH_LENGTH: i32 = 258;
const ALLOC_HISTORY: usize = MAX_STORE_BLOCK_SIZE * 5;
const BUFFER_RESET: i32 =
    ((1u32 << 31) - ALLOC_HISTORY as u32 - MAX_STORE_BLOCK_SIZE as u32 - 1) as i32;
const PRIME4: u32 = 2654435761;
const PRIME7: u64 = 58295818150454627;
const INPUT_MARGIN: i32 = 12 - 1;
const MIN_NON_LITERAL_BLOCK_SIZE: usize = 1 + 1 + INPUT_MARGIN as usize;

fn hash4(u: u64) -> usize {
    ((u as u32).wrapping_mul(PRIME4) >> (32 - TABLE_BITS)) as usize
}

fn hash7(u: u64) -> usize {
    ((u << 8).wrapping_mul(PRIME7) >> (64 - TABLE_BITS)) as usize
}

fn load32(b: &[u8], i: i32) -> u32 {
    let i = i as usize;
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

fn load64(b: &[u8], i: i32) -> u64 {
    let i = i as usize;
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

/// Length of the common prefix of `a` and `b`.
fn match_len(a: &[u8], b: &[u8]) -> i32 {
    a.iter().zip(b).take_while(|(x, y)| x == y).count() as i32
}

#[derive(Clone, Copy, Default)]
struct Pair {
    cur: i32,
    prev: i32,
}

impl Pair {
    fn push(&mut self, offset: i32) {
        self.prev = self.cur;
        self.cur = offset;
    }
}

/// A position probed: it and the next one, with the 4 bytes at each.
struct Probe {
    s: i32,
    next_s: i32,
    cv: u32,
    next: u32,
}

/// A match found: its start, source and length (0: not yet measured), and
/// where the search would have probed next.
#[derive(Clone, Copy)]
struct Found {
    s: i32,
    t: i32,
    l: i32,
    next_s: i32,
}

/// `fastEncL5` with its `fastGen` history.
pub struct Level5 {
    hist: Vec<u8>,
    cur: i32,
    table: Vec<i32>,
    b_table: Vec<Pair>,
}

impl Level5 {
    /// A matcher as `NewWriter` makes it.
    pub fn new() -> Level5 {
        Level5 {
            hist: Vec::new(),
            cur: MAX_STORE_BLOCK_SIZE as i32,
            table: vec![0; TABLE_SIZE],
            b_table: vec![Pair::default(); TABLE_SIZE],
        }
    }

    /// `fastGen.Reset`: the history is forgotten; offsets move on past it.
    pub fn reset(&mut self) {
        if self.cur <= BUFFER_RESET {
            self.cur += MAX_MATCH_OFFSET + self.hist.len() as i32;
        }
        self.hist.clear();
    }

    /// `fastGen.addBlock`: appends `src` to the history, keeping the last
    /// 32 KiB when the history is full; returns where `src` starts.
    fn add_block(&mut self, src: &[u8]) -> i32 {
        // Go's history has room for ALLOC_HISTORY bytes from its first reset
        // on, which comes before any block is encoded.
        if self.hist.len() + src.len() > ALLOC_HISTORY {
            let offset = self.hist.len() - MAX_MATCH_OFFSET as usize;
            self.hist.copy_within(offset.., 0);
            self.cur += offset as i32;
            self.hist.truncate(MAX_MATCH_OFFSET as usize);
        }
        let s = self.hist.len() as i32;
        self.hist.extend_from_slice(src);
        s
    }

    fn shift_offsets(&mut self) {
        if self.hist.is_empty() {
            self.table.fill(0);
            self.b_table.fill(Pair::default());
            self.cur = MAX_MATCH_OFFSET;
            return;
        }
        let min_off = self.cur + self.hist.len() as i32 - MAX_MATCH_OFFSET;
        let cur = self.cur;
        let shift = |v: i32| {
            if v <= min_off {
                0
            } else {
                v - cur + MAX_MATCH_OFFSET
            }
        };
        for v in &mut self.table {
            *v = shift(*v);
        }
        for p in &mut self.b_table {
            if p.cur <= min_off {
                *p = Pair::default();
            } else {
                p.cur = shift(p.cur);
                p.prev = shift(p.prev);
            }
        }
        self.cur = MAX_MATCH_OFFSET;
    }

    /// `fastEncL5.Encode`: appends the tokens of `block` to `dst`.
    pub fn encode(&mut self, dst: &mut Tokens, block: &[u8]) {
        if self.cur >= BUFFER_RESET {
            self.shift_offsets();
        }
        let mut s = self.add_block(block);
        if block.len() < MIN_NON_LITERAL_BLOCK_SIZE {
            dst.n = block.len();
            return;
        }
        let src = std::mem::take(&mut self.hist);
        let mut next_emit = s;
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut cv = load64(&src, s);
        while let Some(m) = self.find_match(&src, s, next_emit, s_limit, cv) {
            let (start, t, l) = self.improve(&src, m, next_emit, s_limit);
            if next_emit < start {
                dst.add_literals(&src[next_emit as usize..start as usize]);
            }
            dst.add_match_long(l, (start - t - 1) as u32);
            s = start + l;
            next_emit = s;
            if m.next_s >= s {
                s = m.next_s + 1;
            }
            if s >= s_limit {
                break;
            }
            self.index_match(&src, s, l);
            let x = load64(&src, s - 1);
            let o = self.cur + s - 1;
            self.table[hash4(x)] = o;
            self.b_table[hash7(x)].push(o);
            cv = x >> 8;
        }
        if (next_emit as usize) < src.len() && dst.n > 0 {
            dst.add_literals(&src[next_emit as usize..]);
        }
        self.hist = src;
    }

    /// Go's search loop: from `s`, probing further apart the longer no match
    /// turns up, the first position whose candidates match 4 bytes; `None`
    /// when the search passes `s_limit`.
    fn find_match(
        &mut self,
        src: &[u8],
        mut s: i32,
        next_emit: i32,
        s_limit: i32,
        mut cv: u64,
    ) -> Option<Found> {
        let mut next_s = s;
        loop {
            let hash_s = hash4(cv);
            let hash_l = hash7(cv);
            s = next_s;
            next_s = s + 1 + ((s - next_emit) >> 6);
            if next_s > s_limit {
                return None;
            }
            let s_candidate = self.table[hash_s];
            let l_candidate = self.b_table[hash_l];
            let next = load64(src, next_s);
            let entry = s + self.cur;
            self.table[hash_s] = entry;
            self.b_table[hash_l].push(entry);
            let at = Probe {
                s,
                next_s,
                cv: cv as u32,
                next: next as u32,
            };
            if let Some((t, l)) = self.long_candidates(src, &at, l_candidate, next) {
                return Some(Found { s, t, l, next_s });
            }
            if let Some(found) = self.short_candidate(src, &at, s_candidate, next) {
                return Some(found);
            }
            cv = next;
        }
    }

    /// The 7-byte table's two candidates at `at.s`: a match as (t, length),
    /// the length 0 when it is left to measure.
    fn long_candidates(
        &mut self,
        src: &[u8],
        at: &Probe,
        l: Pair,
        next: u64,
    ) -> Option<(i32, i32)> {
        let (s, cur) = (at.s, self.cur);
        let matches = |t: i32| s - t < MAX_MATCH_OFFSET && at.cv == load32(src, t);
        let t = l.cur - cur;
        if s - t < MAX_MATCH_OFFSET {
            if at.cv == load32(src, t) {
                self.index_next(at.next_s, next);
                let t2 = l.prev - cur;
                if matches(t2) {
                    let ml = self.match_len(s + 4, t + 4, src) + 4;
                    let ml1 = self.match_len(s + 4, t2 + 4, src) + 4;
                    return Some(if ml1 > ml { (t2, ml1) } else { (t, ml) });
                }
                return Some((t, 0));
            }
            let t = l.prev - cur;
            if matches(t) {
                self.index_next(at.next_s, next);
                return Some((t, 0));
            }
        }
        None
    }

    /// The 4-byte table's candidate at `at.s`, and whether the 7-byte table
    /// has a longer match one position on.
    fn short_candidate(
        &mut self,
        src: &[u8],
        at: &Probe,
        candidate: i32,
        next: u64,
    ) -> Option<Found> {
        let (s, next_s, cur) = (at.s, at.next_s, self.cur);
        let t = candidate - cur;
        if !(s - t < MAX_MATCH_OFFSET && at.cv == load32(src, t)) {
            return None;
        }
        let l = self.match_len(s + 4, t + 4, src) + 4;
        let long = self.b_table[hash7(next)];
        self.index_next(next_s, next);
        let found = Found { s, t, l, next_s };
        let t2 = long.cur - cur;
        if next_s - t2 >= MAX_MATCH_OFFSET {
            return Some(found);
        }
        for t2 in [t2, long.prev - cur] {
            if next_s - t2 < MAX_MATCH_OFFSET && load32(src, t2) == at.next {
                let ml = self.match_len(next_s + 4, t2 + 4, src) + 4;
                if ml > l {
                    return Some(Found {
                        s: next_s,
                        t: t2,
                        l: ml,
                        next_s,
                    });
                }
            }
        }
        Some(found)
    }

    /// Enters `next_s` in both tables (`next` is the input there).
    fn index_next(&mut self, next_s: i32, next: u64) {
        self.table[hash4(next)] = next_s + self.cur;
        self.b_table[hash7(next)].push(next_s + self.cur);
    }

    /// Measures a match left unmeasured, extends one of the full length,
    /// tries a longer one two bytes in and extends it backwards; returns its
    /// (start, source, length).
    fn improve(&self, src: &[u8], m: Found, next_emit: i32, s_limit: i32) -> (i32, i32, i32) {
        let Found {
            mut s,
            mut t,
            mut l,
            ..
        } = m;
        if l == 0 {
            l = match_len(&src[(s + 4) as usize..], &src[(t + 4) as usize..]) + 4;
        } else if l == MAX_MATCH_LENGTH {
            l += match_len(&src[(s + l) as usize..], &src[(t + l) as usize..]);
        }
        let s_at = s + l;
        if l < 30 && s_at < s_limit {
            let e_long = self.b_table[hash7(load64(src, s_at))].cur;
            let t2 = e_long - self.cur - l + 2;
            let s2 = s + 2;
            let off = s2 - t2;
            if t2 >= 0 && off < MAX_MATCH_OFFSET && off > 0 {
                let l2 = match_len(&src[s2 as usize..], &src[t2 as usize..]);
                if l2 > l {
                    (s, t, l) = (s2, t2, l2);
                }
            }
        }
        while t > 0 && s > next_emit && src[(t - 1) as usize] == src[(s - 1) as usize] {
            s -= 1;
            t -= 1;
            l += 1;
        }
        (s, t, l)
    }

    /// Indexes the positions a match covered (level 5's pattern).
    fn index_match(&mut self, src: &[u8], s: i32, l: i32) {
        let mut i = s - l + 1;
        if i >= s - 1 {
            return;
        }
        let mut cv = load64(src, i);
        let mut t = i + self.cur;
        self.table[hash4(cv)] = t;
        self.b_table[hash7(cv)].push(t);
        cv >>= 8;
        t += 1;
        self.b_table[hash7(cv)].push(t);
        cv >>= 8;
        t += 1;
        self.table[hash4(cv)] = t;
        i += 4;
        while i < s - 1 {
            let cv = load64(src, i);
            let t = i + self.cur;
            self.b_table[hash7(cv)].push(t);
            self.table[hash4(cv >> 8)] = t + 1;
            i += 3;
        }
    }

    /// `fastGen.matchlen`: at most 254 bytes from `s` against `t`.
    fn match_len(&self, s: i32, t: i32, src: &[u8]) -> i32 {
        let s1 = ((s + MAX_MATCH_LENGTH - 4) as usize).min(src.len());
        match_len(&src[s as usize..s1], &src[t as usize..])
    }
}
