//! Composition of two bsdiff deltas without their base (D4C's DeltaMerging).
//!
//! `lower` turns v1 into v2, `upper` turns v2 into v3. Every byte of v2 is either
//! `v1[p] + d12` (an add part of lower) or a literal of lower's extra stream. Every
//! byte of v3 is `v2[q] + d23` or a literal of upper. Substituting the first into
//! the second gives every byte of v3 as `v1[p] + (d12 + d23)` or as a literal
//! (`e12 + d23`, or upper's own literal), which is again a bsdiff delta.

use crate::delta::{Control, Delta};
use d4c_codec_guest::{Error, Result};

/// A run of v2 described by `lower`.
#[derive(Clone, Copy)]
struct Segment {
    /// Start in v2.
    start: u64,
    len: u64,
    source: Source,
}

#[derive(Clone, Copy)]
enum Source {
    /// v1 position and offset into lower's diff stream.
    Add { old: u64, diff: usize },
    /// Offset into lower's extra stream.
    Copy { extra: usize },
}

/// Lays out v2 as segments, in order, without gaps.
fn segments(lower: &Delta) -> Vec<Segment> {
    let mut segs = Vec::with_capacity(lower.ctrl.len() * 2);
    let (mut at, mut old, mut d, mut e) = (0u64, 0i64, 0usize, 0usize);
    for c in &lower.ctrl {
        if c.add > 0 {
            let source = Source::Add {
                old: old as u64,
                diff: d,
            };
            segs.push(Segment {
                start: at,
                len: c.add,
                source,
            });
        }
        at += c.add;
        d += c.add as usize;
        if c.copy > 0 {
            segs.push(Segment {
                start: at,
                len: c.copy,
                source: Source::Copy { extra: e },
            });
        }
        at += c.copy;
        e += c.copy as usize;
        old += c.add as i64 + c.seek;
    }
    segs
}

/// Accumulates (add from v1 | literal) pieces into control triples.
struct Builder {
    out: Delta,
    add: u64,
    copy: u64,
    /// The old position the patcher will be at after the current triple's add part.
    old_after: i64,
}

impl Builder {
    fn add(&mut self, old: u64, diff: impl Iterator<Item = u8>) {
        let before = self.out.diff.len();
        self.out.diff.extend(diff);
        let len = (self.out.diff.len() - before) as u64;
        if self.copy == 0 && old as i64 == self.old_after {
            self.add += len;
        } else {
            let seek = old as i64 - self.old_after;
            self.out.ctrl.push(Control {
                add: self.add,
                copy: self.copy,
                seek,
            });
            self.add = len;
            self.copy = 0;
        }
        self.old_after = old as i64 + len as i64;
    }

    fn literal(&mut self, bytes: impl Iterator<Item = u8>) {
        let before = self.out.extra.len();
        self.out.extra.extend(bytes);
        self.copy += (self.out.extra.len() - before) as u64;
    }

    fn finish(mut self) -> Delta {
        if self.add + self.copy > 0 {
            self.out.ctrl.push(Control {
                add: self.add,
                copy: self.copy,
                seek: 0,
            });
        }
        self.out
    }
}

/// Returns a delta from lower's base to upper's result.
pub fn merge(lower: &Delta, upper: &Delta) -> Result<Delta> {
    if upper.old_len != lower.new_len {
        return Err(Error::InvalidInput(format!(
            "upper delta applies to {} bytes but lower delta produces {}",
            upper.old_len, lower.new_len
        )));
    }
    let segs = segments(lower);
    let mut b = Builder {
        out: Delta {
            old_len: lower.old_len,
            new_len: upper.new_len,
            ..Delta::default()
        },
        add: 0,
        copy: 0,
        old_after: 0,
    };
    let (mut v2pos, mut d, mut e) = (0i64, 0usize, 0usize);
    for c in &upper.ctrl {
        // The add part reads v2[v2pos..v2pos + add]; resolve it through lower.
        let start = u64::try_from(v2pos)
            .ok()
            .filter(|&p| p.checked_add(c.add).is_some_and(|end| end <= lower.new_len))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "upper delta reads v2[{v2pos}..+{}] out of range",
                    c.add
                ))
            })?;
        let mut p = start;
        let end = start + c.add;
        let mut i = segs.partition_point(|s| s.start + s.len <= p);
        while p < end {
            let s = segs[i];
            let off = p - s.start;
            let n = (s.len - off).min(end - p);
            let d23 = &upper.diff[d..d + n as usize];
            match s.source {
                Source::Add { old, diff } => {
                    let d12 = &lower.diff[diff + off as usize..][..n as usize];
                    b.add(
                        old + off,
                        d12.iter().zip(d23).map(|(x, y)| x.wrapping_add(*y)),
                    );
                }
                Source::Copy { extra } => {
                    let e12 = &lower.extra[extra + off as usize..][..n as usize];
                    b.literal(e12.iter().zip(d23).map(|(x, y)| x.wrapping_add(*y)));
                }
            }
            d += n as usize;
            p += n;
            i += 1;
        }
        let copy = c.copy as usize;
        b.literal(upper.extra[e..e + copy].iter().copied());
        e += copy;
        v2pos = v2pos
            .checked_add(c.add as i64)
            .and_then(|p| p.checked_add(c.seek))
            .ok_or_else(|| Error::InvalidInput("control seek overflows".into()))?;
    }
    Ok(b.finish())
}
