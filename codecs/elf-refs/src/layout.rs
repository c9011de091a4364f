//! What the codec rewrites in one file: its machine, the regions holding code
//! or addresses, and the width of its address space. A layout is found in the
//! file when diffing ([`crate::elf::parse`]) and stored in the delta, so that
//! patching never parses the (possibly hostile) file again.
//!
//! The new file's code is rewritten so that it can be restored exactly
//! ([`Layout::forward`], [`Layout::inverse`]); the old file's is rewritten
//! through the [`AddressMap`] as well, and its data words too, which needs no
//! inverse: the patcher only rewrites the old file, the same way.

use std::ops::Range;

use d4c_codec_guest::{varint, Error, Result};

use crate::map::AddressMap;
use crate::{arm64, x86};

/// The instruction set of the code regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// No code model: the file is not an ELF this codec knows.
    None = 0,
    /// x86-64: rel32 branches and RIP-relative operands.
    X86_64 = 1,
    /// AArch64: BL/B and ADRP.
    Aarch64 = 2,
}

/// What a region holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Machine code of the layout's [`Arch`].
    Code = 0,
    /// Records that hold addresses as aligned 64-bit words (relocations,
    /// symbols, the GOT, pointer tables).
    Data = 1,
}

/// A byte range of the file and the address it is loaded at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// What the bytes are.
    pub kind: RegionKind,
    /// Start in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Virtual address of the first byte.
    pub vaddr: u64,
}

/// The rewrite of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Instruction set of the code regions.
    pub arch: Arch,
    /// x86-64 displacements are compared modulo 2^(bits+1) ([`crate::x86`]).
    pub bits: u8,
    /// Data words in this range are taken for addresses.
    pub targets: Range<u64>,
    /// Sorted, non-overlapping regions inside the file.
    pub regions: Vec<Region>,
}

/// Most regions a stored layout may list (ELF files have tens).
const MAX_REGIONS: u64 = 4096;

/// Which way a code region is rewritten.
#[derive(Clone, Copy)]
pub enum Direction<'a> {
    /// To absolute targets, moved through the map.
    Forward(&'a AddressMap),
    /// Back from absolute targets (identity map).
    Inverse,
}

impl Layout {
    /// The identity layout: nothing is rewritten.
    pub fn none() -> Layout {
        Layout {
            arch: Arch::None,
            bits: 0,
            targets: 0..0,
            regions: Vec::new(),
        }
    }

    /// Rewrites the new file in place to the form the inner coder sees.
    pub fn forward(&self, file: &mut [u8]) {
        self.code(file, Direction::Forward(&AddressMap::EMPTY));
    }

    /// Undoes [`Layout::forward`].
    pub fn inverse(&self, file: &mut [u8]) {
        self.code(file, Direction::Inverse);
    }

    /// Rewrites the old file in place: its code as [`Layout::forward`] does,
    /// then every address in it (code targets and data words) through `map`.
    pub fn forward_old(&self, file: &mut [u8], map: &AddressMap) {
        self.code(file, Direction::Forward(map));
        if map.is_empty() {
            return;
        }
        for r in self.regions.iter().filter(|r| r.kind == RegionKind::Data) {
            let skip = ((8 - r.vaddr % 8) % 8) as usize;
            let bytes = &mut file[r.offset as usize..(r.offset + r.len) as usize];
            let Some(words) = bytes.get_mut(skip..) else {
                continue;
            };
            for w in words.chunks_exact_mut(8) {
                let v = u64::from_le_bytes((&*w).try_into().expect("8 bytes"));
                if self.targets.contains(&v) {
                    w.copy_from_slice(&map.apply(v).to_le_bytes());
                }
            }
        }
    }

    fn code(&self, file: &mut [u8], dir: Direction) {
        for r in self.regions.iter().filter(|r| r.kind == RegionKind::Code) {
            let bytes = &mut file[r.offset as usize..(r.offset + r.len) as usize];
            match self.arch {
                Arch::X86_64 => x86::rewrite(bytes, r.vaddr, self.bits, dir),
                Arch::Aarch64 => arm64::rewrite(bytes, r.vaddr, dir),
                Arch::None => {}
            }
        }
    }

    /// Appends the layout to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        varint::put(out, self.arch as u64);
        varint::put(out, self.bits.into());
        varint::put(out, self.targets.start);
        varint::put(out, self.targets.end);
        varint::put(out, self.regions.len() as u64);
        for r in &self.regions {
            varint::put(out, r.kind as u64);
            varint::put(out, r.offset);
            varint::put(out, r.len);
            varint::put(out, r.vaddr);
        }
    }

    /// Reads a layout, refusing regions that overlap or are out of order
    /// (whether they fit the file is checked against its length later,
    /// [`Layout::fits`]).
    pub fn decode(r: &mut varint::Reader) -> Result<Layout> {
        let bad = |m: &str| Error::InvalidInput(format!("layout: {m}"));
        let arch = match r.get()? {
            0 => Arch::None,
            1 => Arch::X86_64,
            2 => Arch::Aarch64,
            a => return Err(bad(&format!("unknown machine {a}"))),
        };
        let bits = u8::try_from(r.get()?)
            .ok()
            .filter(|b| (16..=31).contains(b) || (*b == 0 && arch != Arch::X86_64))
            .ok_or_else(|| bad("address width"))?;
        let targets = r.get()?..r.get()?;
        let count = r.get_len("region count", MAX_REGIONS)?;
        let mut regions = Vec::with_capacity(count);
        let mut end = 0u64;
        for _ in 0..count {
            let kind = match r.get()? {
                0 => RegionKind::Code,
                1 => RegionKind::Data,
                k => return Err(bad(&format!("unknown region kind {k}"))),
            };
            let (offset, len, vaddr) = (r.get()?, r.get()?, r.get()?);
            if offset < end {
                return Err(bad("regions overlap or are out of order"));
            }
            end = offset
                .checked_add(len)
                .ok_or_else(|| bad("region end overflows"))?;
            regions.push(Region {
                kind,
                offset,
                len,
                vaddr,
            });
        }
        Ok(Layout {
            arch,
            bits,
            targets,
            regions,
        })
    }

    /// Whether every region lies in a file of `size` bytes.
    pub fn fits(&self, size: u64) -> bool {
        self.regions.last().is_none_or(|r| r.offset + r.len <= size)
    }
}
