//! `merge`: deltas v1→v2 and v2→v3 become one delta v1→v3, without v1. Per file
//! of v3: content v2 took from v1 stays a reference; two codec deltas in a row
//! are merged by the codec where it can and where that is smaller, and otherwise
//! kept as two steps applied in order, so the result is always correct.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use rayon::prelude::*;

use super::diff::{codec_ref, copy_full};
use crate::codec::Codecs;
use crate::digest::Digest;
use crate::image::chain::apply_step;
use crate::image::entry::{Compression, Data, Entry, Kind, Step};
use crate::image::format::{self, Header, ImageKind, Reader, Writer};
use crate::progress::Progress;

/// Where a merged step's blob comes from.
enum StepFrom<'a> {
    Lower(&'a Step),
    Upper(&'a Step),
    New {
        codec: crate::codec::Codec,
        delta: Vec<u8>,
        digest: Digest,
    },
}

enum Merged<'a> {
    Data(Data),
    Full(&'a Reader, &'a Entry),
    Steps(Digest, Vec<StepFrom<'a>>),
    Rebuilt(Vec<u8>, Compression),
}

/// What `merge` produced.
#[derive(Debug, Clone, Default)]
pub struct MergeSummary {
    /// File pairs combined by a codec's merge.
    pub merged: usize,
    /// File pairs kept as two steps.
    pub chained: usize,
    /// Size of the written delta.
    pub bytes: u64,
}

fn index_by_digest(h: &Header) -> HashMap<Digest, &Entry> {
    let mut m: HashMap<Digest, &Entry> = HashMap::new();
    for e in h.items() {
        if let Some(d) = e.digest {
            // Prefer the cheapest way to have the content.
            let rank = |e: &Entry| match e.data {
                Some(Data::Same | Data::Inline) => 0,
                Some(Data::Full { .. }) => 1,
                _ => 2,
            };
            if m.get(&d).is_none_or(|o| rank(e) < rank(o)) {
                m.insert(d, e);
            }
        }
    }
    m
}

/// Writes the delta lower's base → upper's image to `out`.
pub fn merge(
    lower: &Reader,
    upper: &Reader,
    codecs: &Codecs,
    out: &Path,
    level: i32,
    threads: usize,
    progress: &dyn Progress,
) -> Result<MergeSummary> {
    let (lh, uh) = (lower.header(), upper.header());
    ensure!(
        lh.kind == ImageKind::Delta,
        "{} is not a delta",
        lower.path().display()
    );
    ensure!(
        uh.kind == ImageKind::Delta,
        "{} is not a delta",
        upper.path().display()
    );
    ensure!(
        uh.base_id == Some(lh.image_id),
        "{} applies to image {}, but {} yields image {}",
        upper.path().display(),
        uh.base_id.map(|d| d.short()).unwrap_or_default(),
        lower.path().display(),
        lh.image_id.short()
    );
    let lower_by = index_by_digest(lh);
    let find = |d: &Digest| {
        lower_by
            .get(d)
            .copied()
            .with_context(|| format!("content {} is not in the lower delta", d.short()))
    };

    // The tree's entries, then the origin's content: merged alike.
    let items: Vec<&Entry> = uh.items().collect();
    progress.start("merging", items.len() as u64);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()?;
    let plans: Vec<Result<Option<Merged>>> = pool.install(|| {
        items
            .par_iter()
            .with_max_len(1)
            .map(|&e| {
                progress.advance(1);
                if e.kind != Kind::File {
                    return Ok(None);
                }
                let digest = e.digest.expect("file");
                let m = match e.data.as_ref().expect("file data") {
                    Data::Inline => Merged::Data(Data::Inline),
                    Data::Full { .. } => Merged::Full(upper, e),
                    Data::Same => {
                        let l = find(&digest)?;
                        match l.data.as_ref().expect("file data") {
                            Data::Inline => Merged::Data(Data::Inline),
                            Data::Same => Merged::Data(Data::Same),
                            Data::Full { .. } => Merged::Full(lower, l),
                            Data::Delta { source, steps } => {
                                Merged::Steps(*source, steps.iter().map(StepFrom::Lower).collect())
                            }
                        }
                    }
                    Data::Delta { source, steps } => {
                        let l = find(source)?;
                        match l.data.as_ref().expect("file data") {
                            Data::Same => {
                                Merged::Steps(*source, steps.iter().map(StepFrom::Upper).collect())
                            }
                            Data::Inline | Data::Full { .. } => {
                                // v2's content travels in full in the lower delta: rebuild
                                // v3's now and store it, since v1 cannot provide it.
                                let mut data = if l.file_size() == 0 {
                                    Vec::new()
                                } else {
                                    lower.full_content(l)?
                                };
                                for s in steps {
                                    data = apply_step(upper, codecs, s, data)?;
                                }
                                let (bytes, comp) = format::compress(&data, level)?;
                                Merged::Rebuilt(bytes, comp)
                            }
                            Data::Delta {
                                source: s1,
                                steps: lower_steps,
                            } => compose(lower, upper, codecs, *s1, lower_steps, steps)?,
                        }
                    }
                };
                Ok(Some(m))
            })
            .collect()
    });
    progress.finish();

    let mut header = Header {
        kind: ImageKind::Delta,
        image_id: uh.image_id,
        base_id: lh.base_id,
        config: uh.config.clone(),
        codecs: Vec::new(),
        dicts: Vec::new(),
        entries: Vec::with_capacity(items.len()),
        origin: None,
    };
    let mut summary = MergeSummary::default();
    let mut w = Writer::create(out)?;
    // Entries with equal content share one blob, as in the inputs.
    let mut stored: HashMap<Digest, Data> = HashMap::new();
    for (e, plan) in items.iter().zip(plans) {
        let mut e = (*e).clone();
        if let Some(d) = e.digest.and_then(|d| stored.get(&d)) {
            e.data = Some(d.clone());
            header.entries.push(e);
            continue;
        }
        if let Some(plan) = plan.with_context(|| format!("merging {}", e.path))? {
            e.data = Some(match plan {
                Merged::Data(d) => d,
                Merged::Full(r, src) => copy_full(r, src, &mut w)?,
                Merged::Rebuilt(bytes, compression) => {
                    let offset = w.blob(&bytes)?;
                    Data::Full {
                        offset,
                        length: bytes.len() as u64,
                        compression,
                    }
                }
                Merged::Steps(source, parts) => {
                    let mut steps = Vec::with_capacity(parts.len());
                    let has_lower = parts.iter().any(|p| matches!(p, StepFrom::Lower(_)));
                    let has_upper = parts.iter().any(|p| matches!(p, StepFrom::Upper(_)));
                    if has_lower && has_upper {
                        summary.chained += 1;
                    }
                    for p in parts {
                        steps.push(match p {
                            StepFrom::Lower(s) => copy_step(lower, s, &mut header, &mut w)?,
                            StepFrom::Upper(s) => copy_step(upper, s, &mut header, &mut w)?,
                            StepFrom::New {
                                codec,
                                delta,
                                digest,
                            } => {
                                summary.merged += 1;
                                let idx = header.codec_index(codec_ref(&codec));
                                let offset = w.blob(&delta)?;
                                Step {
                                    codec: idx,
                                    offset,
                                    length: delta.len() as u64,
                                    digest,
                                    dict: None,
                                }
                            }
                        });
                    }
                    Data::Delta { source, steps }
                }
            });
            if let (Some(d), Some(data)) = (e.digest, &e.data) {
                stored.insert(d, data.clone());
            }
        }
        header.entries.push(e);
    }
    let content = header.entries.split_off(uh.entries.len());
    header.origin = uh
        .origin
        .as_ref()
        .map(|o| o.carried(content, &uh.codecs, &mut header.codecs));
    summary.bytes = w.finish(&header)?;
    Ok(summary)
}

fn copy_step(from: &Reader, s: &Step, header: &mut Header, w: &mut Writer) -> Result<Step> {
    let idx = header.codec_index(from.header().codecs[s.codec as usize].clone());
    let dict = match s.dict {
        Some(i) => Some(copy_dict(from, i, header, w)?),
        None => None,
    };
    let (offset, length) = w.blob_from(&mut from.blob_reader(s.offset, s.length))?;
    Ok(Step {
        codec: idx,
        offset,
        length,
        digest: s.digest,
        dict,
    })
}

/// The index in `header` of `from`'s dictionary `i`, copying its blob the first
/// time (both inputs may carry the same dictionary; it is stored once).
fn copy_dict(from: &Reader, i: u32, header: &mut Header, w: &mut Writer) -> Result<u32> {
    let d = &from.header().dicts[i as usize];
    if let Some(j) = header.dict_index(&d.digest) {
        return Ok(j);
    }
    let (offset, length) = w.blob_from(&mut from.blob_reader(d.offset, d.length))?;
    header.dicts.push(format::Dict {
        offset,
        length,
        ..d.clone()
    });
    Ok((header.dicts.len() - 1) as u32)
}

/// Two consecutive single-step deltas in the same mergeable codec become one step
/// when the merged delta is no larger than the two; otherwise both are kept.
fn compose<'a>(
    lower: &'a Reader,
    upper: &'a Reader,
    codecs: &Codecs,
    source: Digest,
    lower_steps: &'a [Step],
    upper_steps: &'a [Step],
) -> Result<Merged<'a>> {
    let chained = || {
        let parts = lower_steps
            .iter()
            .map(StepFrom::Lower)
            .chain(upper_steps.iter().map(StepFrom::Upper))
            .collect();
        Ok(Merged::Steps(source, parts))
    };
    let ([l], [u]) = (lower_steps, upper_steps) else {
        return chained();
    };
    // A codec merge assumes the upper step's base is the lower step's output; a
    // dictionary in front of either breaks that.
    if l.dict.is_some() || u.dict.is_some() {
        return chained();
    }
    let (lc, uc) = (
        &lower.header().codecs[l.codec as usize],
        &upper.header().codecs[u.codec as usize],
    );
    if lc.sha256 != uc.sha256 {
        return chained();
    }
    let codec = codecs.get(&lc.sha256, &lc.name)?;
    if !codec.info().merge {
        return chained();
    }
    let (ld, ud) = (
        lower.blob(l.offset, l.length)?,
        upper.blob(u.offset, u.length)?,
    );
    match codec.merge(&ld, &ud) {
        Ok(delta) if delta.len() <= ld.len() + ud.len() => Ok(Merged::Steps(
            source,
            vec![StepFrom::New {
                codec,
                delta,
                digest: u.digest,
            }],
        )),
        // A codec that declines (or errs) leaves the pair as two steps: still correct.
        _ => chained(),
    }
}
