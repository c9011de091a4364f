//! `diff`: two full images give a delta. Per file of the new image, in parallel:
//! content the old image has anywhere is `same`; a file with an old counterpart
//! (same path, or found by [`super::similar`]) becomes a codec delta if that is
//! smaller than storing it; anything else is copied as the new image's own
//! compressed blob, never recompressed.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use rayon::prelude::*;

use super::similar::Similar;
use crate::codec::Codec;
use crate::digest::Digest;
use crate::image::entry::{Data, Entry, Kind, Step};
use crate::image::format::{CodecRef, Header, ImageKind, Reader, Writer};
use crate::progress::Progress;

/// Which codec encodes changed files.
#[derive(Clone, Debug)]
pub enum CodecChoice {
    /// One codec for every file (falls back to full storage where it cannot).
    Fixed(Codec),
    /// Per file, by the rule in [`auto_codecs`].
    Auto {
        /// The built-in bsdiff.
        bsdiff: Codec,
        /// The built-in zstd-dict.
        zstd_dict: Codec,
    },
}

/// Files up to this size try both built-ins under `auto` and keep the smaller
/// delta; larger ones use zstd-dict alone, whose time grows linearly where
/// bsdiff's suffix search does not.
pub const AUTO_BOTH_LIMIT: u64 = 16 << 20;

/// The codecs `auto` tries for a file of `size` bytes (docs/FORMAT.md).
pub fn auto_codecs(choice: &CodecChoice, old_size: u64, new_size: u64) -> Vec<&Codec> {
    match choice {
        CodecChoice::Fixed(c) => vec![c],
        CodecChoice::Auto { bsdiff, zstd_dict } => {
            if old_size.max(new_size) <= AUTO_BOTH_LIMIT {
                vec![bsdiff, zstd_dict]
            } else {
                vec![zstd_dict]
            }
        }
    }
}

/// Options for [`diff`].
#[derive(Clone, Debug)]
pub struct DiffOptions {
    /// The codec rule.
    pub codec: CodecChoice,
    /// Codec effort, 0 for each codec's default.
    pub level: u8,
    /// Worker threads.
    pub threads: usize,
}

/// What `diff` produced.
#[derive(Debug, Clone, Default)]
pub struct DiffSummary {
    /// Files by storage: same, delta, full (copied).
    pub same: usize,
    /// Files stored as codec deltas.
    pub delta: usize,
    /// Files stored in full.
    pub full: usize,
    /// Size of the delta file.
    pub bytes: u64,
}

enum Plan<'a> {
    Keep(Data),
    Copy,
    Encode(&'a Entry),
    /// Content another entry of the new image already carries: share its blob.
    Dup,
}

enum Outcome {
    Data(Data),
    Copy,
    Dup,
    Delta {
        source: Digest,
        codec: Codec,
        delta: Vec<u8>,
        digest: Digest,
    },
}

/// Writes the delta from `old` to `new` (both full images) at `out`.
pub fn diff(
    old: &Reader,
    new: &Reader,
    opts: &DiffOptions,
    out: &Path,
    progress: &dyn Progress,
) -> Result<DiffSummary> {
    for r in [old, new] {
        ensure!(
            r.header().kind == ImageKind::Image,
            "{} is a delta; diff takes two full images",
            r.path().display()
        );
    }
    let old_entries = &old.header().entries;
    let old_digests: std::collections::HashSet<Digest> =
        old_entries.iter().filter_map(|e| e.digest).collect();
    let similar = Similar::new(old_entries);

    let new_entries = &new.header().entries;
    let mut planned = std::collections::HashSet::new();
    let plans: Vec<Plan> = new_entries
        .iter()
        .map(|e| {
            let Some(digest) = e.digest else {
                return Plan::Keep(Data::Inline);
            };
            if e.file_size() == 0 {
                Plan::Keep(Data::Inline)
            } else if old_digests.contains(&digest) {
                Plan::Keep(Data::Same)
            } else if !planned.insert(digest) {
                Plan::Dup
            } else {
                similar.source(e).map_or(Plan::Copy, Plan::Encode)
            }
        })
        .collect();
    let work: u64 = plans
        .iter()
        .zip(new_entries)
        .filter(|(p, _)| matches!(p, Plan::Encode(_)))
        .map(|(_, e)| e.file_size())
        .sum();
    progress.start("diffing", work);

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .build()?;
    let outcomes: Vec<Result<Outcome>> = pool.install(|| {
        plans
            .into_par_iter()
            .zip(new_entries.par_iter())
            .map(|(plan, e)| match plan {
                Plan::Keep(d) => Ok(Outcome::Data(d)),
                Plan::Copy => Ok(Outcome::Copy),
                Plan::Dup => Ok(Outcome::Dup),
                Plan::Encode(src) => {
                    let r = encode(old, new, src, e, opts)
                        .with_context(|| format!("diffing {}", e.path));
                    progress.advance(e.file_size());
                    r
                }
            })
            .collect()
    });
    progress.finish();

    let mut header = Header {
        kind: ImageKind::Delta,
        image_id: new.header().image_id,
        base_id: Some(old.header().image_id),
        config: new.header().config.clone(),
        codecs: Vec::new(),
        entries: Vec::with_capacity(new_entries.len()),
    };
    let mut w = Writer::create(out)?;
    let mut summary = DiffSummary::default();
    let mut stored: std::collections::HashMap<Digest, Data> = std::collections::HashMap::new();
    for (e, outcome) in new_entries.iter().zip(outcomes) {
        let mut e = e.clone();
        if e.kind == Kind::File {
            let data = match outcome? {
                Outcome::Data(d) => d,
                Outcome::Dup => stored
                    .get(&e.digest.expect("file"))
                    .cloned()
                    .context("duplicate before its first")?,
                Outcome::Copy => copy_full(new, &e, &mut w)?,
                Outcome::Delta {
                    source,
                    codec,
                    delta,
                    digest,
                } => {
                    let idx = header.codec_index(codec_ref(&codec));
                    let offset = w.blob(&delta)?;
                    let step = Step {
                        codec: idx,
                        offset,
                        length: delta.len() as u64,
                        digest,
                    };
                    Data::Delta {
                        source,
                        steps: vec![step],
                    }
                }
            };
            stored.insert(e.digest.expect("file"), data.clone());
            match data {
                Data::Same => summary.same += 1,
                Data::Delta { .. } => summary.delta += 1,
                _ => summary.full += 1,
            }
            e.data = Some(data);
        }
        header.entries.push(e);
    }
    summary.bytes = w.finish(&header)?;
    Ok(summary)
}

/// The header's record of a codec.
pub fn codec_ref(c: &Codec) -> CodecRef {
    CodecRef {
        sha256: c.digest(),
        name: c.name().to_string(),
        version: c.info().version.clone(),
    }
}

/// Copies a file's compressed blob from `from` unchanged.
pub fn copy_full(from: &Reader, e: &Entry, w: &mut Writer) -> Result<Data> {
    match e.data.as_ref() {
        Some(Data::Full {
            offset,
            length,
            compression,
        }) => {
            let (at, n) = w.blob_from(&mut from.blob_reader(*offset, *length))?;
            ensure!(n == *length, "{}: short blob", e.path);
            Ok(Data::Full {
                offset: at,
                length: n,
                compression: *compression,
            })
        }
        Some(Data::Inline) => Ok(Data::Inline),
        _ => anyhow::bail!(
            "{}: not stored in full in {}",
            e.path,
            from.path().display()
        ),
    }
}

fn encode(
    old: &Reader,
    new: &Reader,
    src: &Entry,
    e: &Entry,
    opts: &DiffOptions,
) -> Result<Outcome> {
    let full_cost = match e.data {
        Some(Data::Full { length, .. }) => length,
        _ => 0,
    };
    let candidates: Vec<&Codec> = auto_codecs(&opts.codec, src.file_size(), e.file_size())
        .into_iter()
        .filter(|c| c.accepts(&[src.file_size() as usize, e.file_size() as usize]))
        .collect();
    if candidates.is_empty() {
        return Ok(Outcome::Copy);
    }
    let old_bytes = old.full_content(src)?;
    let new_bytes = new.full_content(e)?;
    let digest = e.digest.expect("file");
    let mut best: Option<(Codec, Vec<u8>)> = None;
    for c in candidates {
        let delta = c.diff(&old_bytes, &new_bytes, opts.level)?;
        if best.as_ref().is_none_or(|(_, b)| delta.len() < b.len()) {
            best = Some((c.clone(), delta));
        }
    }
    let (codec, delta) = best.expect("a candidate");
    if delta.len() as u64 >= full_cost {
        return Ok(Outcome::Copy);
    }
    // A delta that does not patch back is a codec bug; catch it here, not on a
    // user's machine. Patching costs little next to diffing.
    codec.patch_checked(&old_bytes, &delta, &digest)?;
    Ok(Outcome::Delta {
        source: src.digest.expect("file"),
        codec,
        delta,
        digest,
    })
}
