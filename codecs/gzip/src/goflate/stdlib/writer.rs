//! Go's block writer (`huffman_bit_writer.go` of Go's library): how it picks
//! stored, fixed or dynamic blocks and lays out their bits. Every rule is
//! Go's, including its quirks, since one bit of difference is a different
//! stream.

use super::super::huffman::{
    length_code, offset_code, write_tokens, Bits, Codegen, Encoder, Token, END_BLOCK_MARKER,
    LENGTH_CODES_START, LENGTH_EXTRA_BITS, LENGTH_SHIFT, MATCH_TYPE, MAX_NUM_LIT,
    MAX_STORE_BLOCK_SIZE, OFFSET_CODE_COUNT, OFFSET_EXTRA_BITS, OFFSET_MASK,
};

/// Go's `huffmanBitWriter`.
pub struct BlockWriter {
    /// The bit stream written.
    pub bits: Bits,
    literal_freq: Vec<i32>,
    offset_freq: Vec<i32>,
    codegen: Codegen,
    literal_encoding: Encoder,
    offset_encoding: Encoder,
    fixed_literal: Encoder,
    fixed_offset: Encoder,
    /// The offset table of Huffman-only blocks: one code for offset 0.
    huff_offset: Encoder,
}

/// Which tables a block is written with.
#[derive(Clone, Copy, PartialEq)]
enum Tables {
    Fixed,
    Dynamic,
}

impl BlockWriter {
    /// A writer with nothing written.
    pub fn new() -> BlockWriter {
        BlockWriter {
            bits: Bits::default(),
            literal_freq: vec![0; MAX_NUM_LIT],
            offset_freq: vec![0; OFFSET_CODE_COUNT],
            codegen: Codegen::new(),
            literal_encoding: Encoder::new(MAX_NUM_LIT),
            offset_encoding: Encoder::new(OFFSET_CODE_COUNT),
            fixed_literal: Encoder::fixed_literal(),
            fixed_offset: Encoder::fixed_offset(),
            huff_offset: Encoder::huff_offset(),
        }
    }

    /// The table header for the current tables (the one-code offset table
    /// for Huffman-only blocks).
    fn generate_codegen(&mut self, num_literals: usize, num_offsets: usize, huff_only: bool) {
        let off = if huff_only {
            &self.huff_offset
        } else {
            &self.offset_encoding
        };
        self.codegen
            .generate(&self.literal_encoding, off, num_literals, num_offsets);
    }

    /// Bits of a dynamic block.
    fn dynamic_size(&self, huff_only: bool, extra_bits: i64) -> i64 {
        let off = if huff_only {
            &self.huff_offset
        } else {
            &self.offset_encoding
        };
        self.codegen.header_bits()
            + self.literal_encoding.bit_length(&self.literal_freq)
            + off.bit_length(&self.offset_freq)
            + extra_bits
    }

    fn fixed_size(&self, extra_bits: i64) -> i64 {
        3 + self.fixed_literal.bit_length(&self.literal_freq)
            + self.fixed_offset.bit_length(&self.offset_freq)
            + extra_bits
    }

    fn stored_size(input: Option<&[u8]>) -> Option<i64> {
        input
            .filter(|i| i.len() <= MAX_STORE_BLOCK_SIZE)
            .map(|i| (i.len() as i64 + 5) * 8)
    }

    /// A stored block's header (the data follows byte-aligned).
    pub fn write_stored_header(&mut self, length: usize, eof: bool) {
        self.bits.put(eof.into(), 3);
        self.bits.align();
        self.bits.put(length as u32, 16);
        self.bits.put(!(length as u16) as u32, 16);
    }

    fn write_stored(&mut self, input: &[u8], eof: bool) {
        self.write_stored_header(input.len(), eof);
        self.bits.out.extend_from_slice(input);
    }

    /// Go's `writeBlock`: the smallest of stored (when `input` is known and
    /// fits), fixed and dynamic, by Go's size estimates.
    pub fn write_block(&mut self, tokens: &[Token], eof: bool, input: Option<&[u8]>) {
        let (num_literals, num_offsets) = self.index_tokens(tokens);
        let stored = Self::stored_size(input);
        let mut extra_bits = 0i64;
        if stored.is_some() {
            for code in LENGTH_CODES_START + 8..num_literals {
                extra_bits += self.literal_freq[code] as i64
                    * LENGTH_EXTRA_BITS[code - LENGTH_CODES_START] as i64;
            }
            for (f, extra) in self.offset_freq[..num_offsets]
                .iter()
                .zip(OFFSET_EXTRA_BITS)
                .skip(4)
            {
                extra_bits += *f as i64 * extra as i64;
            }
        }
        let mut tables = Tables::Fixed;
        let mut size = self.fixed_size(extra_bits);
        self.generate_codegen(num_literals, num_offsets, false);
        let dynamic = self.dynamic_size(false, extra_bits);
        if dynamic < size {
            size = dynamic;
            tables = Tables::Dynamic;
        }
        if let (Some(s), Some(input)) = (stored, input) {
            if s < size {
                self.write_stored(input, eof);
                return;
            }
        }
        if tables == Tables::Fixed {
            self.bits.put(if eof { 3 } else { 2 }, 3);
        } else {
            self.codegen
                .write_header(&mut self.bits, num_literals, num_offsets, eof);
        }
        self.write_tokens(tokens, tables);
    }

    /// Go's `writeBlockDynamic`: dynamic tables, or stored when that is not
    /// 1/16 larger.
    pub fn write_block_dynamic(&mut self, tokens: &[Token], eof: bool, input: &[u8]) {
        let (num_literals, num_offsets) = self.index_tokens(tokens);
        if self.dynamic_header_or_stored(num_literals, num_offsets, false, eof, input) {
            self.write_tokens(tokens, Tables::Dynamic);
        }
    }

    /// Writes `input` as a stored block when that is not 1/16 larger than
    /// the dynamic block (returning false), else the dynamic block's header.
    fn dynamic_header_or_stored(
        &mut self,
        num_literals: usize,
        num_offsets: usize,
        huff_only: bool,
        eof: bool,
        input: &[u8],
    ) -> bool {
        self.generate_codegen(num_literals, num_offsets, huff_only);
        let size = self.dynamic_size(huff_only, 0);
        if let Some(s) = Self::stored_size(Some(input)) {
            if s < size + (size >> 4) {
                self.write_stored(input, eof);
                return false;
            }
        }
        self.codegen
            .write_header(&mut self.bits, num_literals, num_offsets, eof);
        true
    }

    /// Counts symbols (the end-of-block marker included) and builds the
    /// dynamic tables; returns the counts of literal and offset codes sent.
    fn index_tokens(&mut self, tokens: &[Token]) -> (usize, usize) {
        self.literal_freq.fill(0);
        self.offset_freq.fill(0);
        for &t in tokens {
            if t < MATCH_TYPE {
                self.literal_freq[t as usize] += 1;
            } else {
                let len = (t - MATCH_TYPE) >> LENGTH_SHIFT;
                self.literal_freq[LENGTH_CODES_START + length_code(len)] += 1;
                self.offset_freq[offset_code(t & OFFSET_MASK)] += 1;
            }
        }
        self.literal_freq[END_BLOCK_MARKER] += 1;
        let mut num_literals = MAX_NUM_LIT;
        while self.literal_freq[num_literals - 1] == 0 {
            num_literals -= 1;
        }
        let mut num_offsets = OFFSET_CODE_COUNT;
        while num_offsets > 0 && self.offset_freq[num_offsets - 1] == 0 {
            num_offsets -= 1;
        }
        if num_offsets == 0 {
            self.offset_freq[0] = 1;
            num_offsets = 1;
        }
        self.literal_encoding.generate(&self.literal_freq, 15);
        self.offset_encoding.generate(&self.offset_freq, 15);
        (num_literals, num_offsets)
    }

    /// The tokens and the end-of-block code, with `tables`.
    fn write_tokens(&mut self, tokens: &[Token], tables: Tables) {
        let (lit, off) = match tables {
            Tables::Fixed => (&self.fixed_literal, &self.fixed_offset),
            Tables::Dynamic => (&self.literal_encoding, &self.offset_encoding),
        };
        write_tokens(&mut self.bits, tokens, lit, off);
        self.bits.code(lit.codes[END_BLOCK_MARKER]);
    }

    /// Go's `writeBlockHuff`: literals only, or stored when that is not 1/16
    /// larger.
    pub fn write_block_huff(&mut self, eof: bool, input: &[u8]) {
        self.literal_freq.fill(0);
        for &b in input {
            self.literal_freq[b as usize] += 1;
        }
        self.literal_freq[END_BLOCK_MARKER] = 1;
        // Go sets the first offset count and leaves the rest as they were;
        // they weigh nothing, having no code in the one-code offset table.
        self.offset_freq[0] = 1;
        let (num_literals, num_offsets) = (END_BLOCK_MARKER + 1, 1);
        self.literal_encoding.generate(&self.literal_freq, 15);
        if !self.dynamic_header_or_stored(num_literals, num_offsets, true, eof, input) {
            return;
        }
        for &b in input {
            self.bits.code(self.literal_encoding.codes[b as usize]);
        }
        self.bits
            .code(self.literal_encoding.codes[END_BLOCK_MARKER]);
    }
}
