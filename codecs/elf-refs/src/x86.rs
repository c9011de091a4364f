//! x86-64 code: the 32-bit displacement of a `call`/`jmp`/`jcc rel32` or of a
//! RIP-relative operand is rewritten to the absolute address it reaches, so
//! that code moving by a few bytes leaves every reference to an unmoved target
//! unchanged (xz's BCJ filter does this for `call`/`jmp`; Courgette and Zucchini
//! model the same references from a disassembly).
//!
//! The rewrite must be undone exactly from the rewritten bytes alone. Three
//! rules make it so:
//! - A displacement is rewritten only if it lies in `S = [-2^bits, 2^bits)`,
//!   and the rewrite is a bijection of `S` (addition of the address modulo
//!   2^(bits+1)), so the inverse sees the same membership.
//! - After a rewrite the scan skips the displacement; the opcode bytes a match
//!   reads before its displacement are never another match's displacement
//!   (no three-byte pattern has `E8`/`E9` second).
//! - After a candidate left alone (displacement outside `S`), no rewrite may
//!   start until its displacement ends: its bytes must read the same to the
//!   inverse scan.

use crate::layout::Direction;

/// Where a pattern's displacement starts, by the bytes that precede it: a
/// [`Pattern`] for each first byte.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// Not the start of a modelled instruction.
    No,
    /// `E8`/`E9` rel32.
    Branch,
    /// `0F`: `jcc rel32` (`0F 8x`) or an SSE load/store with a RIP operand.
    TwoByte,
    /// A REX prefix: then an operand opcode and a RIP ModRM.
    Rex,
    /// An operand opcode, then a RIP ModRM.
    Op,
}

/// One-byte opcodes with a ModRM memory operand worth modelling: mov, lea, the
/// ALU ops, test, xchg, movsxd, the immediate groups and `FF` (call/jmp/push
/// through memory). None is `E8`/`E9`, `0F` or a REX byte.
const OPS: &[u8] = &[
    0x01, 0x03, 0x09, 0x0B, 0x11, 0x13, 0x19, 0x1B, 0x21, 0x23, 0x29, 0x2B, 0x31, 0x33, 0x39, 0x3B,
    0x63, 0x81, 0x83, 0x85, 0x87, 0x88, 0x89, 0x8A, 0x8B, 0x8D, 0xC6, 0xC7, 0xF6, 0xF7, 0xFF,
];

/// Second bytes after `0F` of SSE and movzx/movsx forms that take a ModRM
/// memory operand (movups/movsd, ucomis, and/or/xor/add/mul/sub/div, movd/q,
/// imul, movzx, movsx).
const SSE: &[u8] = &[
    0x10, 0x11, 0x12, 0x13, 0x16, 0x17, 0x28, 0x29, 0x2A, 0x2C, 0x2D, 0x2E, 0x2F, 0x51, 0x54, 0x55,
    0x56, 0x57, 0x58, 0x59, 0x5A, 0x5C, 0x5D, 0x5E, 0x5F, 0x6E, 0x6F, 0x7E, 0x7F, 0xAF, 0xB6, 0xB7,
    0xBE, 0xBF,
];

const fn first_bytes() -> [Pattern; 256] {
    let mut t = [Pattern::No; 256];
    t[0xE8] = Pattern::Branch;
    t[0xE9] = Pattern::Branch;
    t[0x0F] = Pattern::TwoByte;
    let mut b = 0x40;
    while b <= 0x4F {
        t[b] = Pattern::Rex;
        b += 1;
    }
    let mut i = 0;
    while i < OPS.len() {
        t[OPS[i] as usize] = Pattern::Op;
        i += 1;
    }
    t
}

const fn set(members: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < members.len() {
        t[members[i] as usize] = true;
        i += 1;
    }
    t
}

static FIRST: [Pattern; 256] = first_bytes();
static IS_OP: [bool; 256] = set(OPS);
static IS_SSE: [bool; 256] = set(SSE);

/// `mod = 00, r/m = 101`: a RIP-relative operand in 64-bit mode.
fn rip(modrm: u8) -> bool {
    modrm & 0xC7 == 0x05
}

/// The offset of the displacement of an instruction modelled at `b[0]`, if any.
/// Reads only bytes before that offset.
fn displacement(b: &[u8]) -> Option<usize> {
    match FIRST[b[0] as usize] {
        Pattern::No => None,
        Pattern::Branch => Some(1),
        Pattern::TwoByte => {
            let op = *b.get(1)?;
            if op & 0xF0 == 0x80 {
                Some(2)
            } else if IS_SSE[op as usize] && rip(*b.get(2)?) {
                Some(3)
            } else {
                None
            }
        }
        Pattern::Rex => (IS_OP[*b.get(1)? as usize] && rip(*b.get(2)?)).then_some(3),
        Pattern::Op => rip(*b.get(1)?).then_some(2),
    }
}

/// `x` reduced modulo 2^(bits+1) into `[-2^bits, 2^bits)`.
fn fold(x: i64, bits: u8) -> i64 {
    let half = 1i64 << bits;
    (x + half).rem_euclid(half << 1) - half
}

/// Rewrites the code in `code`, loaded at `vaddr`, to absolute references
/// (moved through the map) or back.
pub fn rewrite(code: &mut [u8], vaddr: u64, bits: u8, dir: Direction) {
    let half = 1i64 << bits;
    let (mut i, mut quiet_until) = (0usize, 0usize);
    while i + 5 <= code.len() {
        let Some(at) = displacement(&code[i..]) else {
            i += 1;
            continue;
        };
        let end = i + at + 4;
        if end > code.len() {
            i += 1;
            continue;
        }
        let field: &mut [u8; 4] = (&mut code[i + at..end]).try_into().expect("4 bytes");
        let v = i64::from(i32::from_le_bytes(*field));
        if i < quiet_until || !(-half..half).contains(&v) {
            quiet_until = quiet_until.max(end);
            i += 1;
            continue;
        }
        // The address after the displacement: the next instruction's for
        // branches, a fixed point near it otherwise; the same form at the same
        // place gives the same value in both files, which is all that matters.
        let here = vaddr.wrapping_add(end as u64);
        let w = match dir {
            Direction::Forward(map) => map.apply(here.wrapping_add(v as u64)) as i64,
            Direction::Inverse => v.wrapping_sub(here as i64),
        };
        *field = (fold(w, bits) as i32).to_le_bytes();
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::AddressMap;

    fn roundtrip(code: &[u8], vaddr: u64, bits: u8) -> Vec<u8> {
        let mut t = code.to_vec();
        rewrite(&mut t, vaddr, bits, Direction::Forward(&AddressMap::EMPTY));
        let mut back = t.clone();
        rewrite(&mut back, vaddr, bits, Direction::Inverse);
        assert_eq!(back, code, "inverse of the rewrite");
        t
    }

    #[test]
    fn a_moved_call_to_an_unmoved_target_reads_the_same() {
        // call +0x100 at 0x1000 and, one byte later, call +0xff: same target.
        let a = [0xE8, 0x00, 0x01, 0x00, 0x00];
        let b = [0x90, 0xE8, 0xFF, 0x00, 0x00, 0x00];
        let ta = roundtrip(&a, 0x1000, 24);
        let tb = roundtrip(&b, 0x1000, 24);
        assert_eq!(ta, tb[1..]);
        // lea rax, [rip+0x10] likewise.
        let a = [0x48, 0x8D, 0x05, 0x10, 0, 0, 0];
        let b = [0x90, 0x48, 0x8D, 0x05, 0x0F, 0, 0, 0];
        assert_eq!(roundtrip(&a, 0x4000, 24), roundtrip(&b, 0x4000, 24)[1..]);
    }

    #[test]
    fn displacements_outside_the_window_stay() {
        let a = [0xE8, 0x00, 0x00, 0x00, 0x40];
        assert_eq!(roundtrip(&a, 0x1000, 24), a);
    }

    proptest::proptest! {
        /// Bytes dense in the modelled opcodes, at any address and width.
        #[test]
        fn rewrite_is_inverted_exactly(
            code in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(vec![0xE8u8, 0xE9, 0x0F, 0x48, 0x8B, 0x8D, 0x05, 0x15, 0x85, 0x10, 0x00, 0xFF]),
                    proptest::num::u8::ANY,
                ],
                0..300,
            ),
            vaddr in proptest::num::u64::ANY,
            bits in 16u8..=31,
        ) {
            roundtrip(&code, vaddr, bits);
        }
    }
}
