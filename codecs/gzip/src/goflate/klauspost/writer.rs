//! klauspost's block writer (`huffman_bit_writer.go` of klauspost/compress):
//! unlike Go's, it may leave a dynamic block open and go on with its tables
//! in the next call when that looks cheaper, and it picks between tables by
//! estimates of its own (a Shannon bound, a variance test for stored data).

use super::super::huffman::{
    write_tokens, Bits, Codegen, Encoder, END_BLOCK_MARKER, LENGTH_EXTRA_BITS, MAX_NUM_LIT,
    MAX_STORE_BLOCK_SIZE, OFFSET_CODE_COUNT, OFFSET_EXTRA_BITS,
};
use super::tokens::Tokens;

/// Blocks with fewer tokens may use the fixed tables.
const MAX_PREDEFINED_TOKENS: usize = 250;
/// A guess at a Huffman-only block's header, in bits.
const GUESS_HEADER_SIZE_BITS: i64 = 70 * 8;
/// Go's `math.MaxInt32`, the estimate of a table that cannot code the data.
const CANNOT: i64 = i32::MAX as i64;

/// The block being written: its input, its size stored (when it can be),
/// and whether it ends the stream or a flush.
struct Block<'a> {
    input: &'a [u8],
    stored: Option<i64>,
    eof: bool,
    sync: bool,
}

pub struct Writer {
    pub bits: Bits,
    last_huff_man: bool,
    literal_encoding: Encoder,
    tmp_lit_encoding: Encoder,
    offset_encoding: Encoder,
    codegen: Codegen,
    /// Bits of the header of the block left open, or 0.
    last_header: i64,
    log_new_table_penalty: u32,
    /// Literal/length counts (Go keeps 257 + 32).
    literal_freq: Vec<i32>,
    offset_freq: Vec<i32>,
    fixed_literal: Encoder,
    fixed_offset: Encoder,
    huff_offset: Encoder,
}

impl Writer {
    pub fn new(log_new_table_penalty: u32) -> Writer {
        Writer {
            bits: Bits::default(),
            last_huff_man: false,
            literal_encoding: Encoder::new(MAX_NUM_LIT),
            tmp_lit_encoding: Encoder::new(MAX_NUM_LIT),
            offset_encoding: Encoder::new(OFFSET_CODE_COUNT),
            codegen: Codegen::new(),
            last_header: 0,
            log_new_table_penalty,
            literal_freq: vec![0; 257 + 32],
            offset_freq: vec![0; 32],
            fixed_literal: Encoder::fixed_literal(),
            fixed_offset: Encoder::fixed_offset(),
            huff_offset: Encoder::huff_offset(),
        }
    }

    /// Ends the open block, if any.
    fn close_open_block(&mut self) {
        if self.last_header > 0 {
            self.bits
                .code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
        }
    }

    /// Go's `flush`: ends the open block and pads to a byte.
    pub fn flush(&mut self) {
        self.close_open_block();
        self.bits.align();
    }

    pub fn write_stored_header(&mut self, length: usize, eof: bool) {
        self.close_open_block();
        if length == 0 && eof {
            // An empty final block as a fixed block: 3 + 7 bits.
            self.write_fixed_header(eof);
            self.bits.put(0, 7);
            self.flush();
            return;
        }
        self.bits.put(eof.into(), 3);
        self.flush();
        self.bits.put(length as u32, 16);
        self.bits.put(!(length as u16) as u32, 16);
    }

    pub fn write_stored(&mut self, input: &[u8], eof: bool) {
        self.write_stored_header(input.len(), eof);
        self.bits.out.extend_from_slice(input);
    }

    fn write_fixed_header(&mut self, eof: bool) {
        self.close_open_block();
        self.bits.put(if eof { 3 } else { 2 }, 3);
    }

    /// Go's `canReuse`: whether the open block's tables code every symbol.
    fn can_reuse(&self, t: &Tokens) -> bool {
        let off = &self.offset_encoding.codes;
        let lit = &self.literal_encoding.codes;
        let missing = |hist: &[u16], codes: &[super::super::huffman::Hcode]| {
            hist.iter()
                .zip(codes)
                .any(|(&v, c)| v != 0 && *c == Default::default())
        };
        !(missing(&t.off_hist[..OFFSET_CODE_COUNT], off)
            || missing(&t.extra_hist[..MAX_NUM_LIT - 256], &lit[256..])
            || missing(&t.lit_hist, &lit[..256]))
    }

    fn extra_bit_size(&self) -> i64 {
        let lengths: i64 = self.literal_freq[257..MAX_NUM_LIT]
            .iter()
            .zip(LENGTH_EXTRA_BITS)
            .map(|(&n, e)| n as i64 * e as i64)
            .sum();
        let offsets: i64 = self.offset_freq[..OFFSET_CODE_COUNT]
            .iter()
            .zip(OFFSET_EXTRA_BITS)
            .map(|(&n, e)| n as i64 * e as i64)
            .sum();
        lengths + offsets
    }

    fn fixed_size(&self, extra_bits: i64) -> i64 {
        3 + self.fixed_literal.bit_length(&self.literal_freq)
            + self.fixed_offset.bit_length(&self.offset_freq)
            + extra_bits
    }

    fn reuse_size(&self) -> i64 {
        self.literal_encoding.bit_length(&self.literal_freq)
            + self.offset_encoding.bit_length(&self.offset_freq)
    }

    /// Go's `indexTokens`: the counts from the histograms, and how many codes
    /// the header sends (all when the block may stay open: `filled`).
    fn index_tokens(&mut self, t: &Tokens, filled: bool) -> (usize, usize) {
        for (f, &h) in self
            .literal_freq
            .iter_mut()
            .zip(t.lit_hist.iter().chain(&t.extra_hist))
        {
            *f = h.into();
        }
        for (f, &h) in self.offset_freq.iter_mut().zip(&t.off_hist) {
            *f = h.into();
        }
        if t.n == 0 {
            return (0, 0);
        }
        if filled {
            return (MAX_NUM_LIT, OFFSET_CODE_COUNT);
        }
        let mut num_literals = self.literal_freq.len();
        while self.literal_freq[num_literals - 1] == 0 {
            num_literals -= 1;
        }
        let mut num_offsets = self.offset_freq.len();
        while num_offsets > 0 && self.offset_freq[num_offsets - 1] == 0 {
            num_offsets -= 1;
        }
        if num_offsets == 0 {
            self.offset_freq[0] = 1;
            num_offsets = 1;
        }
        (num_literals, num_offsets)
    }

    /// The block in the fixed tables (the end-of-block code too when not
    /// already a token).
    fn write_fixed(&mut self, tokens: &mut Tokens, eof: bool, sync: bool) {
        self.write_fixed_header(eof);
        if !sync {
            tokens.add_eob();
        }
        write_tokens(
            &mut self.bits,
            &tokens.tokens,
            &self.fixed_literal,
            &self.fixed_offset,
        );
    }

    /// Go's `writeBlockDynamic`: the tokens in the open block's tables when
    /// that is estimated cheaper than new ones, else in new dynamic tables
    /// (the block left open unless `sync` or `eof`), or fixed or stored when
    /// smaller.
    pub fn write_block_dynamic(
        &mut self,
        tokens: &mut Tokens,
        eof: bool,
        input: &[u8],
        sync: bool,
    ) {
        let sync = sync || eof;
        if sync {
            tokens.add_eob();
        }
        if self.last_header > 0 && (self.last_huff_man || eof || !self.can_reuse(tokens)) {
            self.close_open_block();
            self.last_huff_man = false;
        }
        let (num_literals, num_offsets) = self.index_tokens(tokens, !sync);
        let stored = (input.len() <= MAX_STORE_BLOCK_SIZE).then(|| (input.len() as i64 + 5) * 8);
        let block = Block {
            input,
            stored,
            eof,
            sync,
        };
        let extra_bits = if stored.is_some() || self.last_header > 0 {
            self.extra_bit_size()
        } else {
            0
        };
        if self.last_header > 0 {
            let size = self.reuse_or_new_size(tokens, extra_bits);
            let fixed_wins = self.fixed_size(extra_bits) + 7 < size;
            if self.written_fixed_or_stored(tokens, &block, fixed_wins, size, size) {
                return;
            }
        }
        if self.last_header == 0 {
            let size = self.new_tables(num_literals, num_offsets) + extra_bits;
            let fixed = self.fixed_size(extra_bits);
            if self.written_fixed_or_stored(tokens, &block, fixed <= size, fixed, size) {
                return;
            }
            self.codegen
                .write_header(&mut self.bits, num_literals, num_offsets, eof);
            if !sync {
                self.last_header = self.codegen.header_bits();
            }
            self.last_huff_man = false;
        }
        if sync {
            self.last_header = 0;
        }
        write_tokens(
            &mut self.bits,
            &tokens.tokens,
            &self.literal_encoding,
            &self.offset_encoding,
        );
    }

    /// The bits of the tokens in the open block's tables, or (ending that
    /// block) Go's estimate for new tables when that is less.
    fn reuse_or_new_size(&mut self, tokens: &Tokens, extra_bits: i64) -> i64 {
        let mut new_size = self.last_header + tokens.estimated_bits();
        new_size += self.literal_encoding.codes[END_BLOCK_MARKER].len as i64
            + (new_size >> self.log_new_table_penalty);
        let reuse_size = self.reuse_size() + extra_bits;
        if new_size < reuse_size {
            self.close_open_block();
            new_size
        } else {
            reuse_size
        }
    }

    /// New dynamic tables for the counts; returns their bits with the header.
    fn new_tables(&mut self, num_literals: usize, num_offsets: usize) -> i64 {
        self.literal_freq[END_BLOCK_MARKER] = 1;
        self.literal_encoding
            .generate(&self.literal_freq[..MAX_NUM_LIT], 15);
        self.offset_encoding
            .generate(&self.offset_freq[..OFFSET_CODE_COUNT], 15);
        self.codegen.generate(
            &self.literal_encoding,
            &self.offset_encoding,
            num_literals,
            num_offsets,
        );
        self.codegen.header_bits() + self.reuse_size()
    }

    /// Go's shortcuts for a block: when it is small and the fixed tables win,
    /// stored if that fits in `stored_limit` bits, else fixed; otherwise
    /// stored if that fits in `size`. Returns whether it wrote the block.
    fn written_fixed_or_stored(
        &mut self,
        tokens: &mut Tokens,
        block: &Block,
        fixed_wins: bool,
        stored_limit: i64,
        size: i64,
    ) -> bool {
        let fits = |limit: i64| block.stored.is_some_and(|s| s <= limit);
        if tokens.n < MAX_PREDEFINED_TOKENS && fixed_wins {
            if fits(stored_limit) {
                self.write_stored(block.input, block.eof);
            } else {
                self.write_fixed(tokens, block.eof, block.sync);
            }
            return true;
        }
        if fits(size) {
            self.write_stored(block.input, block.eof);
            return true;
        }
        false
    }

    /// Go's `writeBlockHuff`: literals only (the block left open unless
    /// `eof` or `sync`), or stored for data that looks random.
    pub fn write_block_huff(&mut self, eof: bool, input: &[u8], sync: bool) {
        self.literal_freq.fill(0);
        if !self.last_huff_man {
            self.offset_freq.fill(0);
        }
        for &b in input {
            self.literal_freq[b as usize] += 1;
        }
        let stored = (input.len() <= MAX_STORE_BLOCK_SIZE).then_some((input.len() as i64 + 5) * 8);
        if stored.is_some()
            && input.len() > 1024
            && looks_random(&self.literal_freq[..256], input.len())
        {
            self.write_stored(input, eof);
            return;
        }
        self.literal_freq[END_BLOCK_MARKER] = 1;
        let (num_literals, num_offsets) = (END_BLOCK_MARKER + 1, 1);
        self.tmp_lit_encoding
            .generate(&self.literal_freq[..num_literals], 15);
        let mut est_bits =
            can_reuse_bits(&self.tmp_lit_encoding, &self.literal_freq[..num_literals]);
        if est_bits < CANNOT {
            est_bits += self.last_header;
            if self.last_header == 0 {
                est_bits += GUESS_HEADER_SIZE_BITS;
            }
            est_bits += est_bits >> self.log_new_table_penalty;
        }
        if stored.is_some_and(|s| s <= est_bits) {
            self.write_stored(input, eof);
            return;
        }
        if self.last_header > 0 {
            let reuse = can_reuse_bits(&self.literal_encoding, &self.literal_freq[..256]);
            if est_bits < reuse {
                self.close_open_block();
            }
        }
        if self.last_header == 0 {
            std::mem::swap(&mut self.literal_encoding, &mut self.tmp_lit_encoding);
            self.codegen.generate(
                &self.literal_encoding,
                &self.huff_offset,
                num_literals,
                num_offsets,
            );
            self.codegen
                .write_header(&mut self.bits, num_literals, num_offsets, eof);
            self.last_huff_man = true;
            self.last_header = self.codegen.header_bits();
        }
        for &b in input {
            self.bits.code(self.literal_encoding.codes[b as usize]);
        }
        if eof || sync {
            self.bits
                .code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
            self.last_huff_man = false;
        }
    }
}

/// Go's test for data a Huffman code cannot shrink: the byte counts' squared
/// deviation from flat stays under twice the length.
fn looks_random(freq: &[i32], len: usize) -> bool {
    let avg = len as f64 / 256.0;
    let max = (len * 2) as f64;
    let mut abs = 0f64;
    for &v in freq {
        let diff = v as f64 - avg;
        abs += diff * diff;
        if abs > max {
            break;
        }
    }
    abs < max
}

/// Go's `canReuseBits`: the bits `freq` takes in `enc`, or [`CANNOT`] when
/// `enc` lacks a code for one of its symbols.
fn can_reuse_bits(enc: &Encoder, freq: &[i32]) -> i64 {
    let mut total = 0;
    for (&f, c) in freq.iter().zip(&enc.codes) {
        if f != 0 {
            if *c == Default::default() {
                return CANNOT;
            }
            total += f as i64 * c.len as i64;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_end_of_block_token_is_the_literal_code_256() {
        assert_eq!(super::super::tokens::EOB as usize, super::END_BLOCK_MARKER);
    }
}
