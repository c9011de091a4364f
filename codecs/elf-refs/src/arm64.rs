//! AArch64 code: the immediates of `BL`/`B` (a 26-bit word offset) and `ADRP`
//! (a 21-bit page offset) are rewritten to the absolute word or page they
//! reach, as xz's ARM64 filter does. Instructions are aligned words and the
//! opcode bits are kept, so every word is rewritten (or not) on its own and
//! the inverse is exact.

use crate::layout::Direction;

/// The low `bits` of `v` as a signed number.
fn sign_extend(v: u32, bits: u32) -> i64 {
    let shift = 64 - bits;
    (((v as u64) << shift) as i64) >> shift
}

/// Rewrites the code in `code`, loaded at `vaddr`, to absolute references
/// (moved through the map) or back.
pub fn rewrite(code: &mut [u8], vaddr: u64, dir: Direction) {
    // Words are aligned to the address, not to the region's start in the file.
    let skip = (4 - (vaddr % 4) as usize) % 4;
    let Some(words) = code.get_mut(skip..) else {
        return;
    };
    let mut pc = vaddr.wrapping_add(skip as u64);
    for w in words.chunks_exact_mut(4) {
        let insn = u32::from_le_bytes((&*w).try_into().expect("4 bytes"));
        let out = if insn & 0x7C00_0000 == 0x1400_0000 {
            // B / BL: imm26, in words.
            let imm = match dir {
                Direction::Forward(map) => {
                    let target = pc.wrapping_add((sign_extend(insn, 26) << 2) as u64);
                    (map.apply(target) >> 2) as u32
                }
                Direction::Inverse => (insn & 0x03FF_FFFF).wrapping_sub((pc >> 2) as u32),
            };
            insn & !0x03FF_FFFF | imm & 0x03FF_FFFF
        } else if insn & 0x9F00_0000 == 0x9000_0000 {
            // ADRP: immhi (bits 5-23) : immlo (bits 29-30), in 4 KiB pages.
            let field = (insn >> 29 & 3) | (insn >> 3 & 0x001F_FFFC);
            let imm = match dir {
                Direction::Forward(map) => {
                    let page = (pc >> 12).wrapping_add(sign_extend(field, 21) as u64);
                    (map.apply(page << 12) >> 12) as u32
                }
                Direction::Inverse => field.wrapping_sub((pc >> 12) as u32),
            } & 0x001F_FFFF;
            insn & 0x9F00_001F | (imm & 3) << 29 | (imm >> 2) << 5
        } else {
            insn
        };
        w.copy_from_slice(&out.to_le_bytes());
        pc = pc.wrapping_add(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::AddressMap;

    const FORWARD: Direction = Direction::Forward(&AddressMap::EMPTY);

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn a_moved_branch_to_an_unmoved_target_reads_the_same() {
        // bl +16 at 0x1000, and bl +12 one word later: the same target.
        let a = words(&[0x9400_0004]);
        let b = words(&[0xD503_201F, 0x9400_0003]);
        let (mut ta, mut tb) = (a.clone(), b.clone());
        rewrite(&mut ta, 0x1000, FORWARD);
        rewrite(&mut tb, 0x1000, FORWARD);
        assert_eq!(ta, tb[4..]);
        // adrp x0, +1 page at 0x1000 and adrp x0, +0 pages at 0x2000.
        let (mut a, mut b) = (words(&[0xB000_0000]), words(&[0x9000_0000]));
        rewrite(&mut a, 0x1000, FORWARD);
        rewrite(&mut b, 0x2000, FORWARD);
        assert_eq!(a, b);
    }

    proptest::proptest! {
        #[test]
        fn rewrite_is_inverted_exactly(
            code in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            vaddr in proptest::num::u64::ANY,
        ) {
            let mut t = code.clone();
            rewrite(&mut t, vaddr, FORWARD);
            rewrite(&mut t, vaddr, Direction::Inverse);
            proptest::prop_assert_eq!(t, code);
        }
    }
}
