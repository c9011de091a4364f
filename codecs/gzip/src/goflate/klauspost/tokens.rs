//! klauspost's `tokens` (`token.go`): the tokens of one block with their
//! histograms, and its entropy estimate in float32, computed as Go does (no
//! fused multiply-add: Go's amd64 builds have none, Rust never fuses).

use super::super::huffman::{
    length_code, literal, match_token, offset_code, Token, LENGTH_EXTRA_BITS, MAX_STORE_BLOCK_SIZE,
    OFFSET_CODE_COUNT, OFFSET_EXTRA_BITS,
};

/// The end-of-block marker as a token (klauspost's `endBlockMarker`).
pub const EOB: Token = 256;

pub struct Tokens {
    /// Length codes + 1 (0 counts end-of-block markers).
    pub extra_hist: [u16; 32],
    pub off_hist: [u16; 32],
    pub lit_hist: [u16; 256],
    /// Go's `n`: tokens held (set without tokens for a tiny dictionary block).
    pub n: usize,
    pub tokens: Vec<Token>,
}

impl Tokens {
    pub fn new() -> Tokens {
        Tokens {
            extra_hist: [0; 32],
            off_hist: [0; 32],
            lit_hist: [0; 256],
            n: 0,
            tokens: Vec::with_capacity(MAX_STORE_BLOCK_SIZE + 1),
        }
    }

    pub fn reset(&mut self) {
        if self.n == 0 {
            return;
        }
        self.n = 0;
        self.tokens.clear();
        self.lit_hist = [0; 256];
        self.extra_hist = [0; 32];
        self.off_hist = [0; 32];
    }

    pub fn add_literals(&mut self, lits: &[u8]) {
        for &v in lits {
            self.tokens.push(literal(v));
            self.lit_hist[v as usize] = self.lit_hist[v as usize].wrapping_add(1);
        }
        self.n += lits.len();
    }

    /// A match of any length, cut into matches of at most 258.
    pub fn add_match_long(&mut self, mut xlength: i32, xoffset: u32) {
        let oc = offset_code(xoffset);
        while xlength > 0 {
            let mut xl = xlength;
            if xl > 258 {
                xl = if xl > 258 + 3 { 258 } else { 258 - 3 };
            }
            xlength -= xl;
            let xl = (xl - 3) as u32;
            let lc = length_code(xl) + 1;
            self.extra_hist[lc] = self.extra_hist[lc].wrapping_add(1);
            self.off_hist[oc] = self.off_hist[oc].wrapping_add(1);
            self.tokens.push(match_token(xl, xoffset));
            self.n += 1;
        }
    }

    pub fn add_eob(&mut self) {
        self.tokens.push(EOB);
        self.extra_hist[0] = self.extra_hist[0].wrapping_add(1);
        self.n += 1;
    }

    /// Go's `EstimatedBits`: Shannon's bound on the block's bits.
    pub fn estimated_bits(&self) -> i64 {
        let mut shannon = 0f32;
        let mut bits = 0i64;
        let mut matches = 0i64;
        let total = self.n;
        if total > 0 {
            let inv_total = 1.0f32 / total as f32;
            for &v in &self.lit_hist {
                if v > 0 {
                    let n = v as f32;
                    shannon += at_least_one(-fast_log2(n * inv_total)) * n;
                }
            }
            shannon += 15.0;
            for (i, &v) in self.extra_hist[1..30].iter().enumerate() {
                if v > 0 {
                    let n = v as f32;
                    shannon += at_least_one(-fast_log2(n * inv_total)) * n;
                    bits += i64::from(LENGTH_EXTRA_BITS[i]) * i64::from(v);
                    matches += i64::from(v);
                }
            }
        }
        if matches > 0 {
            let inv_total = 1.0f32 / matches as f32;
            for (i, &v) in self.off_hist[..OFFSET_CODE_COUNT].iter().enumerate() {
                if v > 0 {
                    let n = v as f32;
                    shannon += at_least_one(-fast_log2(n * inv_total)) * n;
                    bits += i64::from(OFFSET_EXTRA_BITS[i]) * i64::from(v);
                }
            }
        }
        shannon as i64 + bits
    }
}

fn at_least_one(v: f32) -> f32 {
    v.clamp(1.0, 15.0)
}

/// Go's `mFastLog2`: log2 by the exponent and a quadratic on the mantissa.
fn fast_log2(val: f32) -> f32 {
    let mut ux = val.to_bits() as i32;
    let mut log2 = (((ux >> 23) & 255) - 128) as f32;
    ux &= -0x7f80_0001;
    ux = ux.wrapping_add(127 << 23);
    let uval = f32::from_bits(ux as u32);
    // Go's constants, digit for digit: each rounds to the float32 Go uses.
    #[allow(clippy::excessive_precision)]
    {
        log2 += (-0.34484843f32 * uval + 2.02466578f32) * uval - 0.67487759f32;
    }
    log2
}
