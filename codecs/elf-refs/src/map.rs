//! The address map: where the old file's code and data went in the new file,
//! as a sorted list of breakpoints `(old address, shift)`. An old address takes
//! the shift of the last breakpoint at or below it (none: no shift). Before
//! the inner coder sees the old file, every reference in it is moved through
//! the map, so a reference whose target moved reads as it does in the new file
//! (Courgette's and Zucchini's address alignment, from a first bsdiff pass
//! instead of a disassembly).

use d4c_codec_bsdiff::delta::Delta;
use d4c_codec_guest::{varint, Error, Result};

/// Most breakpoints a stored map may have.
const MAX_POINTS: u64 = 1 << 20;
/// Matches shorter than this say little about where code went.
const MIN_MATCH: u64 = 64;

/// A byte range of the file loaded at an address (a `PT_LOAD` segment).
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Start in the file.
    pub offset: u64,
    /// Bytes present in the file.
    pub len: u64,
    /// Address of the first byte.
    pub vaddr: u64,
    /// Bytes in memory (the file's, then zeros).
    pub mem_len: u64,
}

fn address(loads: &[Load], offset: u64) -> Option<(u64, u64)> {
    loads
        .iter()
        .find(|l| offset >= l.offset && offset - l.offset < l.len)
        .map(|l| (l.vaddr + (offset - l.offset), l.offset + l.len - offset))
}

/// See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressMap {
    points: Vec<(u64, i64)>,
}

impl AddressMap {
    /// The map that moves nothing.
    pub const EMPTY: AddressMap = AddressMap { points: Vec::new() };

    /// The map a bsdiff delta between the two files implies: each add part
    /// long enough is a stretch of old bytes found again at a new place.
    pub fn from_matches(delta: &Delta, old: &[Load], new: &[Load]) -> AddressMap {
        let mut moves = Vec::new();
        let (mut at_new, mut at_old) = (0u64, 0i64);
        for c in &delta.ctrl {
            if c.add >= MIN_MATCH {
                let from = address(old, at_old as u64);
                let to = address(new, at_new);
                if let (Some((va_old, room_old)), Some((va_new, room_new))) = (from, to) {
                    if room_old.min(room_new) >= MIN_MATCH {
                        moves.push((va_old, va_new.wrapping_sub(va_old) as i64));
                    }
                }
            }
            at_new += c.add + c.copy;
            at_old = at_old.wrapping_add(c.add as i64).wrapping_add(c.seek);
        }
        moves.sort_unstable();
        let mut points: Vec<(u64, i64)> = Vec::new();
        for (va, shift) in moves {
            let last = points.last().map_or(0, |p| p.1);
            if shift != last && points.last().is_none_or(|p| p.0 != va) {
                points.push((va, shift));
            }
        }
        AddressMap { points }
    }

    /// Whether the map moves nothing.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Where old address `a` went.
    pub fn apply(&self, a: u64) -> u64 {
        match self.points.partition_point(|p| p.0 <= a) {
            0 => a,
            i => a.wrapping_add(self.points[i - 1].1 as u64),
        }
    }

    /// Appends the map to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        varint::put(out, self.points.len() as u64);
        let (mut va, mut shift) = (0u64, 0i64);
        for &(v, s) in &self.points {
            varint::put(out, v - va);
            varint::put_signed(out, s.wrapping_sub(shift));
            (va, shift) = (v, s);
        }
    }

    /// Reads a map; breakpoints must ascend.
    pub fn decode(r: &mut varint::Reader) -> Result<AddressMap> {
        let count = r.get_len("map size", MAX_POINTS)?;
        let mut points = Vec::with_capacity(count);
        let (mut va, mut shift) = (0u64, 0i64);
        for i in 0..count {
            let gap = r.get()?;
            if i > 0 && gap == 0 {
                return Err(Error::InvalidInput("map: breakpoints do not ascend".into()));
            }
            va = va
                .checked_add(gap)
                .ok_or_else(|| Error::InvalidInput("map: address overflows".into()))?;
            shift = shift.wrapping_add(r.get_signed()?);
            points.push((va, shift));
        }
        Ok(AddressMap { points })
    }
}
