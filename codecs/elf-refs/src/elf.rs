//! Just enough ELF to find what [`crate::layout`] rewrites: the machine, the
//! executable sections, the sections holding addresses (relocations, symbols,
//! the GOT, initialised data) and the loaded segments. Every offset is checked; a file that is not a 64-bit little-endian
//! ELF for a known machine, or whose tables do not fit, yields no layout.

use crate::layout::{Arch, Layout, Region, RegionKind};
use crate::map::Load;

const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
const SHT_PROGBITS: u32 = 1;
/// Section types whose records hold addresses: symbol tables, RELA, dynamic,
/// init and fini arrays.
const SHT_ADDRESSES: &[u32] = &[2, 4, 6, 11, 14, 15];
const SHF_WRITE: u64 = 1;
const SHF_ALLOC: u64 = 2;
const SHF_EXECINSTR: u64 = 4;
const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
/// Sizes of an `Elf64_Shdr` and an `Elf64_Phdr`.
const SHDR: usize = 64;
const PHDR: usize = 56;
/// More sections than this (or extended numbering) and the file is treated as
/// having none: real binaries have tens.
const MAX_SECTIONS: usize = 4096;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A table of `count` records of `size` bytes at `offset`, if it fits in `b`.
fn table(b: &[u8], offset: u64, count: u16, entsize: u16, size: usize) -> Option<Vec<&[u8]>> {
    let (offset, count) = (usize::try_from(offset).ok()?, usize::from(count));
    if usize::from(entsize) != size || count > MAX_SECTIONS {
        return None;
    }
    let end = offset.checked_add(count.checked_mul(size)?)?;
    Some(b.get(offset..end)?.chunks_exact(size).collect())
}

/// What the codec needs of one ELF file.
pub struct Elf {
    /// What is rewritten.
    pub layout: Layout,
    /// The loaded segments, to turn file offsets into addresses.
    pub loads: Vec<Load>,
}

/// The model of `file`, or `None` when it is not an ELF this codec knows.
pub fn parse(file: &[u8]) -> Option<Elf> {
    if file.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let arch = match u16_at(file, 18)? {
        EM_X86_64 => Arch::X86_64,
        EM_AARCH64 => Arch::Aarch64,
        _ => return None,
    };
    let phdrs = table(
        file,
        u64_at(file, 32)?,
        u16_at(file, 56)?,
        u16_at(file, 54)?,
        PHDR,
    )?;
    let loads: Vec<Load> = phdrs.iter().filter_map(|p| load(p)).collect();
    let bits = address_bits(&loads);
    let shdrs = table(
        file,
        u64_at(file, 40)?,
        u16_at(file, 60)?,
        u16_at(file, 58)?,
        SHDR,
    )
    .unwrap_or_default();
    let mut regions: Vec<Region> = shdrs.iter().filter_map(|s| section_region(s)).collect();
    if !regions.iter().any(|r| r.kind == RegionKind::Code) {
        // No section headers (stripped of them): the executable segments.
        regions.extend(phdrs.iter().filter_map(|p| segment_region(p)));
    }
    let regions = fitting(regions, file.len() as u64);
    // Data words are taken for addresses only from the first code byte on:
    // below it small integers abound.
    let lo = regions
        .iter()
        .filter(|r| r.kind == RegionKind::Code)
        .map(|r| r.vaddr)
        .min()?;
    let hi = loads
        .iter()
        .map(|l| l.vaddr.saturating_add(l.mem_len))
        .max()?;
    Some(Elf {
        layout: Layout {
            arch,
            bits,
            targets: lo..hi,
            regions,
        },
        loads,
    })
}

fn load(p: &[u8]) -> Option<Load> {
    if u32_at(p, 0)? != PT_LOAD {
        return None;
    }
    Some(Load {
        offset: u64_at(p, 8)?,
        vaddr: u64_at(p, 16)?,
        len: u64_at(p, 32)?,
        mem_len: u64_at(p, 40)?,
    })
}

/// The smallest power of two covering the loaded address span (every code
/// reference's displacement fits in it), at least 2^16, at most 2^31.
fn address_bits(loads: &[Load]) -> u8 {
    let lo = loads.iter().map(|l| l.vaddr).min().unwrap_or(0);
    let hi = loads
        .iter()
        .map(|l| l.vaddr.saturating_add(l.mem_len))
        .max()
        .unwrap_or(0);
    let span = hi.saturating_sub(lo).max(1);
    (64 - (span - 1).leading_zeros()).clamp(16, 31) as u8
}

fn section_region(s: &[u8]) -> Option<Region> {
    let (kind, flags) = (u32_at(s, 4)?, u64_at(s, 8)?);
    let (vaddr, offset, len) = (u64_at(s, 16)?, u64_at(s, 24)?, u64_at(s, 32)?);
    let code = SHF_ALLOC | SHF_EXECINSTR;
    let kind = if kind == SHT_PROGBITS && flags & code == code {
        RegionKind::Code
    } else if SHT_ADDRESSES.contains(&kind)
        || (kind == SHT_PROGBITS && flags & (SHF_ALLOC | SHF_WRITE) == SHF_ALLOC | SHF_WRITE)
    {
        RegionKind::Data
    } else {
        return None;
    };
    Some(Region {
        kind,
        offset,
        len,
        vaddr,
    })
}

fn segment_region(p: &[u8]) -> Option<Region> {
    if u32_at(p, 0)? != PT_LOAD || u32_at(p, 4)? & PF_X == 0 {
        return None;
    }
    Some(Region {
        kind: RegionKind::Code,
        offset: u64_at(p, 8)?,
        vaddr: u64_at(p, 16)?,
        len: u64_at(p, 32)?,
    })
}

/// The non-empty regions inside a file of `size` bytes, sorted, without
/// overlaps (a later region overlapping an earlier one is dropped).
fn fitting(mut regions: Vec<Region>, size: u64) -> Vec<Region> {
    regions.retain(|r| r.len > 0 && r.offset.checked_add(r.len).is_some_and(|end| end <= size));
    regions.sort_by_key(|r| (r.offset, r.len));
    let mut out: Vec<Region> = Vec::with_capacity(regions.len());
    for r in regions {
        if out.last().is_none_or(|p| p.offset + p.len <= r.offset) {
            out.push(r);
        }
    }
    out
}
