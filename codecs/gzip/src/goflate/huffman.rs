//! What Go's deflate writers share (`huffman_code.go` and the code-length
//! part of `huffman_bit_writer.go`, the same in Go's library and in
//! klauspost/compress): tokens, the code tables, Go's length-limited Huffman
//! codes, the run-length coded table header, an LSB-first bit stream.

/// Literal/length alphabet size (RFC 1951).
pub const MAX_NUM_LIT: usize = 286;
pub const OFFSET_CODE_COUNT: usize = 30;
pub const END_BLOCK_MARKER: usize = 256;
pub const LENGTH_CODES_START: usize = 257;
pub const CODEGEN_CODE_COUNT: usize = 19;
const BAD_CODE: u8 = 255;
/// Largest stored block.
pub const MAX_STORE_BLOCK_SIZE: usize = 65535;

/// Go's token: a literal byte, or a match of (length - 3, offset - 1).
pub type Token = u32;
pub const MATCH_TYPE: u32 = 1 << 30;
pub const LENGTH_SHIFT: u32 = 22;
pub const OFFSET_MASK: u32 = (1 << LENGTH_SHIFT) - 1;

/// A literal token.
pub fn literal(b: u8) -> Token {
    b.into()
}

/// A match token from the length and offset minus their bases (3 and 1).
pub fn match_token(xlength: u32, xoffset: u32) -> Token {
    MATCH_TYPE + (xlength << LENGTH_SHIFT) + xoffset
}

pub const LENGTH_EXTRA_BITS: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
pub const LENGTH_BASE: [u32; 29] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128,
    160, 192, 224, 255,
];
pub const OFFSET_EXTRA_BITS: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
pub const OFFSET_BASE: [u32; 30] = [
    0x000000, 0x000001, 0x000002, 0x000003, 0x000004, 0x000006, 0x000008, 0x00000c, 0x000010,
    0x000018, 0x000020, 0x000030, 0x000040, 0x000060, 0x000080, 0x0000c0, 0x000100, 0x000180,
    0x000200, 0x000300, 0x000400, 0x000600, 0x000800, 0x000c00, 0x001000, 0x001800, 0x002000,
    0x003000, 0x004000, 0x006000,
];
const CODEGEN_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// Go's `lengthCodes`: the length code (0..=28) of each match length minus 3.
const LENGTH_CODES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut x = 0;
    while x < 256 {
        let mut c = 0;
        while c + 1 < LENGTH_BASE.len() && LENGTH_BASE[c + 1] <= x as u32 {
            c += 1;
        }
        t[x] = c as u8;
        x += 1;
    }
    t
};

/// Go's `offsetCodes`: the offset code of each offset minus 1 below 256.
const OFFSET_CODES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut x = 0;
    while x < 256 {
        let mut c = 0;
        while c + 1 < 16 && OFFSET_BASE[c + 1] <= x as u32 {
            c += 1;
        }
        t[x] = c as u8;
        x += 1;
    }
    t
};

pub fn length_code(xlength: u32) -> usize {
    LENGTH_CODES[xlength as usize].into()
}

/// Go's `offsetCode`: the offset code (0..=29) of an offset minus 1.
pub fn offset_code(xoffset: u32) -> usize {
    let x = xoffset as usize;
    if x < 256 {
        OFFSET_CODES[x].into()
    } else if x >> 7 < 256 {
        usize::from(OFFSET_CODES[x >> 7]) + 14
    } else {
        usize::from(OFFSET_CODES[x >> 14]) + 28
    }
}

/// A code: its bits (reversed, as written) and length; all zero when unused.
#[derive(Clone, Copy, Default, PartialEq)]
pub struct Hcode {
    pub code: u16,
    pub len: u16,
}

#[derive(Clone, Copy)]
struct LiteralNode {
    literal: u16,
    freq: i32,
}

fn reverse_bits(number: u16, bit_length: u8) -> u16 {
    (number << (16 - bit_length as u32)).reverse_bits()
}

/// One Huffman code table and Go's way of building it.
#[derive(Clone)]
pub struct Encoder {
    pub codes: Vec<Hcode>,
}

impl Encoder {
    pub fn new(size: usize) -> Encoder {
        Encoder {
            codes: vec![Hcode::default(); size],
        }
    }

    pub fn fixed_literal() -> Encoder {
        let mut h = Encoder::new(MAX_NUM_LIT);
        for ch in 0..MAX_NUM_LIT as u16 {
            let (bits, size) = match ch {
                0..=143 => (ch + 48, 8),
                144..=255 => (ch + 400 - 144, 9),
                256..=279 => (ch - 256, 7),
                _ => (ch + 192 - 280, 8),
            };
            h.codes[ch as usize] = Hcode {
                code: reverse_bits(bits, size as u8),
                len: size,
            };
        }
        h
    }

    pub fn fixed_offset() -> Encoder {
        let mut h = Encoder::new(OFFSET_CODE_COUNT);
        for (ch, c) in h.codes.iter_mut().enumerate() {
            *c = Hcode {
                code: reverse_bits(ch as u16, 5),
                len: 5,
            };
        }
        h
    }

    /// The offset table of Huffman-only blocks: one 1-bit code, offset 0's.
    pub fn huff_offset() -> Encoder {
        let mut h = Encoder::new(OFFSET_CODE_COUNT);
        let mut f = vec![0; OFFSET_CODE_COUNT];
        f[0] = 1;
        h.generate(&f, 15);
        h
    }

    pub fn bit_length(&self, freq: &[i32]) -> i64 {
        freq.iter()
            .zip(&self.codes)
            .filter(|(f, _)| **f != 0)
            .map(|(f, c)| *f as i64 * c.len as i64)
            .sum()
    }

    /// Go's `bitCounts`: the number of codes of each length for `list` (sorted
    /// by frequency, with a sentinel after it), lengths limited to `max_bits`.
    fn bit_counts(list: &[LiteralNode], mut max_bits: i32) -> Vec<i32> {
        #[derive(Clone, Copy, Default)]
        struct LevelInfo {
            level: i32,
            last_freq: i32,
            next_char_freq: i32,
            next_pair_freq: i32,
            needed: i32,
        }
        let n = list.len() as i32 - 1;
        if max_bits > n - 1 {
            max_bits = n - 1;
        }
        let mut levels = [LevelInfo::default(); 16];
        let mut leaf_counts = [[0i32; 16]; 16];
        for level in 1..=max_bits {
            levels[level as usize] = LevelInfo {
                level,
                last_freq: list[1].freq,
                next_char_freq: list[2].freq,
                next_pair_freq: list[0].freq.wrapping_add(list[1].freq),
                needed: 0,
            };
            leaf_counts[level as usize][level as usize] = 2;
            if level == 1 {
                levels[1].next_pair_freq = i32::MAX;
            }
        }
        levels[max_bits as usize].needed = 2 * n - 4;
        let mut level = max_bits as usize;
        loop {
            let l = levels[level];
            if l.next_pair_freq == i32::MAX && l.next_char_freq == i32::MAX {
                levels[level].needed = 0;
                levels[level + 1].next_pair_freq = i32::MAX;
                level += 1;
                continue;
            }
            let prev_freq = l.last_freq;
            if l.next_char_freq < l.next_pair_freq {
                let c = leaf_counts[level][level] + 1;
                levels[level].last_freq = l.next_char_freq;
                leaf_counts[level][level] = c;
                levels[level].next_char_freq = list[c as usize].freq;
            } else {
                levels[level].last_freq = l.next_pair_freq;
                let (lower, upper) = leaf_counts.split_at_mut(level);
                upper[0][..level].copy_from_slice(&lower[level - 1][..level]);
                levels[l.level as usize - 1].needed = 2;
            }
            levels[level].needed -= 1;
            if levels[level].needed == 0 {
                if levels[level].level == max_bits {
                    break;
                }
                levels[level + 1].next_pair_freq = prev_freq.wrapping_add(levels[level].last_freq);
                level += 1;
            } else {
                while levels[level - 1].needed > 0 {
                    level -= 1;
                }
            }
        }
        let counts = &leaf_counts[max_bits as usize];
        let mut bit_count = vec![0i32; max_bits as usize + 1];
        for (bits, level) in (1..=max_bits as usize).zip((1..=max_bits as usize).rev()) {
            bit_count[bits] = counts[level] - counts[level - 1];
        }
        bit_count
    }

    fn assign(&mut self, bit_count: &[i32], mut list: &[LiteralNode]) {
        let mut code = 0u16;
        for (n, &bits) in bit_count.iter().enumerate() {
            code <<= 1;
            if n == 0 || bits == 0 {
                continue;
            }
            let (rest, chunk) = list.split_at(list.len() - bits as usize);
            let mut chunk = chunk.to_vec();
            chunk.sort_by_key(|c| c.literal);
            for node in chunk {
                self.codes[node.literal as usize] = Hcode {
                    code: reverse_bits(code, n as u8),
                    len: n as u16,
                };
                code += 1;
            }
            list = rest;
        }
    }

    /// Go's `generate`: code lengths for `freq`, at most `max_bits` long.
    pub fn generate(&mut self, freq: &[i32], max_bits: i32) {
        let mut list = Vec::with_capacity(freq.len() + 1);
        for (i, &f) in freq.iter().enumerate() {
            if f != 0 {
                list.push(LiteralNode {
                    literal: i as u16,
                    freq: f,
                });
            } else {
                self.codes[i] = Hcode::default();
            }
        }
        if list.len() <= 2 {
            for (i, node) in list.iter().enumerate() {
                self.codes[node.literal as usize] = Hcode {
                    code: i as u16,
                    len: 1,
                };
            }
            return;
        }
        list.sort_by_key(|n| (n.freq, n.literal));
        let count = list.len();
        list.push(LiteralNode {
            literal: u16::MAX,
            freq: i32::MAX,
        });
        let bit_count = Self::bit_counts(&list, max_bits);
        self.assign(&bit_count, &list[..count]);
    }
}

/// Writes a repeat code and its extra value at `out` in the code lengths,
/// over lengths already read (the output never overtakes the input).
fn put_repeat(cg: &mut [u8], out: &mut usize, freq: &mut [i32], code: u8, extra: i32) {
    cg[*out] = code;
    cg[*out + 1] = extra as u8;
    *out += 2;
    freq[code as usize] += 1;
}

/// The table header of a dynamic block: the code lengths of both tables,
/// run-length coded (RFC 1951 3.2.7), and the code that codes them.
pub struct Codegen {
    /// The run-length codes, each repeat code followed by its extra value,
    /// ended by [`BAD_CODE`].
    codes: Vec<u8>,
    /// How often each code-length code occurs.
    pub freq: [i32; CODEGEN_CODE_COUNT],
    /// The code of the code-length codes (at most 7 bits).
    encoding: Encoder,
    /// How many code-length code lengths the header sends.
    count: usize,
}

impl Codegen {
    pub fn new() -> Codegen {
        Codegen {
            codes: vec![0; MAX_NUM_LIT + OFFSET_CODE_COUNT + 1],
            freq: [0; CODEGEN_CODE_COUNT],
            encoding: Encoder::new(CODEGEN_CODE_COUNT),
            count: 0,
        }
    }

    /// Go's `generateCodegen` and the code-length code for it.
    pub fn generate(
        &mut self,
        lit: &Encoder,
        off: &Encoder,
        num_literals: usize,
        num_offsets: usize,
    ) {
        self.freq = [0; CODEGEN_CODE_COUNT];
        let cg = &mut self.codes;
        let lengths = lit.codes[..num_literals]
            .iter()
            .chain(&off.codes[..num_offsets]);
        for (c, code) in cg.iter_mut().zip(lengths) {
            *c = code.len as u8;
        }
        cg[num_literals + num_offsets] = BAD_CODE;
        let freq = &mut self.freq;
        let mut size = cg[0];
        let mut count: i32 = 1;
        let mut out = 0usize;
        let mut input = 1usize;
        while size != BAD_CODE {
            let next = cg[input];
            input += 1;
            if next == size {
                count += 1;
                continue;
            }
            if size != 0 {
                cg[out] = size;
                out += 1;
                freq[size as usize] += 1;
                count -= 1;
                while count >= 3 {
                    let n = count.min(6);
                    put_repeat(cg, &mut out, freq, 16, n - 3);
                    count -= n;
                }
            } else {
                while count >= 11 {
                    let n = count.min(138);
                    put_repeat(cg, &mut out, freq, 18, n - 11);
                    count -= n;
                }
                if count >= 3 {
                    put_repeat(cg, &mut out, freq, 17, count - 3);
                    count = 0;
                }
            }
            count -= 1;
            while count >= 0 {
                cg[out] = size;
                out += 1;
                freq[size as usize] += 1;
                count -= 1;
            }
            size = next;
            count = 1;
        }
        cg[out] = BAD_CODE;
        self.encoding.generate(&self.freq, 7);
        self.count = CODEGEN_CODE_COUNT;
        while self.count > 4 && self.freq[CODEGEN_ORDER[self.count - 1]] == 0 {
            self.count -= 1;
        }
    }

    /// Go's `headerSize`: the bits of a dynamic block's header.
    pub fn header_bits(&self) -> i64 {
        let f = &self.freq;
        3 + 5
            + 5
            + 4
            + 3 * self.count as i64
            + self.encoding.bit_length(f)
            + f[16] as i64 * 2
            + f[17] as i64 * 3
            + f[18] as i64 * 7
    }

    /// Go's `writeDynamicHeader`.
    pub fn write_header(&self, b: &mut Bits, num_literals: usize, num_offsets: usize, eof: bool) {
        b.put(if eof { 5 } else { 4 }, 3);
        b.put((num_literals - 257) as u32, 5);
        b.put((num_offsets - 1) as u32, 5);
        b.put((self.count - 4) as u32, 4);
        for &o in &CODEGEN_ORDER[..self.count] {
            b.put(self.encoding.codes[o].len.into(), 3);
        }
        let mut i = 0;
        loop {
            let word = self.codes[i];
            i += 1;
            if word == BAD_CODE {
                break;
            }
            b.code(self.encoding.codes[word as usize]);
            let extra = match word {
                16 => 2,
                17 => 3,
                18 => 7,
                _ => continue,
            };
            b.put(self.codes[i].into(), extra);
            i += 1;
        }
    }
}

/// An LSB-first bit stream into a byte vector.
#[derive(Default)]
pub struct Bits {
    bits: u64,
    nbits: u32,
    /// Whole bytes written so far (the caller drains them).
    pub out: Vec<u8>,
}

impl Bits {
    pub fn put(&mut self, value: u32, nb: u32) {
        self.bits |= (value as u64) << self.nbits;
        self.nbits += nb;
        while self.nbits >= 8 {
            self.out.push(self.bits as u8);
            self.bits >>= 8;
            self.nbits -= 8;
        }
    }

    pub fn code(&mut self, c: Hcode) {
        self.put(c.code.into(), c.len.into());
    }

    /// Pads to a byte boundary with zero bits (Go's `flush`).
    pub fn align(&mut self) {
        if self.nbits > 0 {
            self.out.push(self.bits as u8);
        }
        self.bits = 0;
        self.nbits = 0;
    }
}

/// Writes `tokens` with the codes `lit` and `off` (an end-of-block token is
/// the literal code 256).
pub fn write_tokens(b: &mut Bits, tokens: &[Token], lit: &Encoder, off: &Encoder) {
    for &t in tokens {
        if t < MATCH_TYPE {
            b.code(lit.codes[t as usize]);
            continue;
        }
        let len = (t - MATCH_TYPE) >> LENGTH_SHIFT;
        let lc = length_code(len);
        b.code(lit.codes[lc + LENGTH_CODES_START]);
        if LENGTH_EXTRA_BITS[lc] > 0 {
            b.put(len - LENGTH_BASE[lc], LENGTH_EXTRA_BITS[lc].into());
        }
        let offset = t & OFFSET_MASK;
        let oc = offset_code(offset);
        b.code(off.codes[oc]);
        if OFFSET_EXTRA_BITS[oc] > 0 {
            b.put(offset - OFFSET_BASE[oc], OFFSET_EXTRA_BITS[oc].into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_tables_match_go() {
        // Go's lengthCodes and offsetCodes at their edges.
        assert_eq!(length_code(0), 0);
        assert_eq!(length_code(8), 8);
        assert_eq!(length_code(9), 8);
        assert_eq!(length_code(254), 27);
        assert_eq!(length_code(255), 28);
        assert_eq!(offset_code(3), 3);
        assert_eq!(offset_code(4), 4);
        assert_eq!(offset_code(255), 15);
        assert_eq!(offset_code(256), 16);
        assert_eq!(offset_code(32767), 29);
    }
}
