//! `diff`: two full images give a delta. Per file of the new image, in parallel:
//! content the old image has anywhere is `same`; a file with an old counterpart
//! (same path, or found by [`super::similar`]) becomes a codec delta if that is
//! smaller than storing it; anything else is copied as the new image's own
//! compressed blob, never recompressed.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use rayon::prelude::*;

use std::collections::HashMap;

use super::dict;
use super::similar::Similar;
use crate::codec::{Codec, ErrorKind, Op};
use crate::digest::Digest;
use crate::image::entry::{Data, Entry, Kind, Step};
use crate::image::format::{CodecRef, Dict, Header, ImageKind, Reader, Writer};
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
        /// The built-in gzip.
        gzip: Codec,
    },
}

/// Files up to this size try both built-ins under `auto` and keep the smaller
/// delta; larger ones use zstd-dict alone, whose time grows linearly where
/// bsdiff's suffix search does not.
pub const AUTO_BOTH_LIMIT: u64 = 16 << 20;

/// Files larger than this are encoded by zstd-dict at two levels under `auto`
/// (at the default level): beyond the strong levels' search window (a few MiB)
/// the old content is reached only through long-distance matches, and which
/// level parses those better varies from file to file. Node's 98 MB binary:
/// 20.12.1 -> 20.12.2, 2.29 MB at level 12 against 4.22 MB at 19; on the other
/// node pairs level 19 wins by 0.4-1.1 MB. Level 12 costs a tenth of 19's time.
pub const LARGE_FILE_LEVEL: u8 = 12;

/// The codecs `auto` tries, in order, for a file whose new content starts with
/// `new_head`, each with the level to ask for, given the level asked of the diff
/// (docs/ARCHITECTURE.md, "diff").
pub fn auto_codecs<'a>(
    choice: &'a CodecChoice,
    old_size: u64,
    new_size: u64,
    new_head: &[u8],
    level: u8,
) -> Vec<(&'a Codec, u8)> {
    match choice {
        CodecChoice::Fixed(c) => vec![(c, level)],
        CodecChoice::Auto {
            bsdiff,
            zstd_dict,
            gzip,
        } => {
            let mut out = Vec::with_capacity(3);
            if new_head.starts_with(GZIP_MAGIC) {
                out.push((gzip, level));
            }
            if old_size.max(new_size) <= AUTO_BOTH_LIMIT {
                out.push((bsdiff, level));
            } else if level == 0 {
                out.push((zstd_dict, LARGE_FILE_LEVEL));
            }
            out.push((zstd_dict, level));
            out
        }
    }
}

/// A gzip member with deflate: what the gzip codec may apply to.
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b, 8];

/// Whether a delta from `c` ends `auto`'s search: the gzip codec's, which sees
/// the uncompressed content, is smaller than any byte-level delta of a deflate
/// stream, so the other codecs are not run.
fn final_under_auto(choice: &CodecChoice, c: &Codec) -> bool {
    matches!(choice, CodecChoice::Auto { gzip, .. } if gzip.digest() == c.digest())
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
    /// Whether small files may be encoded against shared dictionaries
    /// ([`super::dict`]); only with the built-in zstd-dict among the codecs.
    pub dicts: bool,
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
    /// Shared dictionaries stored.
    pub dicts: usize,
    /// Files encoded against a shared dictionary.
    pub dict_files: usize,
    /// Codec calls that failed (hit a cap, trapped, or did not patch back); the
    /// file was then encoded by another candidate or stored in full.
    pub codec_failures: Vec<String>,
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

/// One codec's delta for a file, possibly against a trained dictionary.
struct Encoded {
    codec: Codec,
    delta: Vec<u8>,
    /// Index into the trained dictionaries.
    dict: Option<usize>,
}

enum Outcome {
    Data(Data),
    Copy,
    Dup,
    Delta {
        source: Digest,
        digest: Digest,
        best: Encoded,
        /// Bytes the file costs without a dictionary (as far as tried).
        plain_cost: u64,
    },
}

/// A file's outcome, and the trained dictionary it was encoded against, if any
/// (to encode it again should that dictionary be dropped).
type Encoding = (Outcome, Option<usize>);

/// A trained dictionary, raw and as stored.
struct Trained {
    bytes: Vec<u8>,
    compressed: Vec<u8>,
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

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .build()?;
    let dict_codec = if opts.dicts {
        dict_codec(&opts.codec)
    } else {
        None
    };
    let (trained, kinds) = match dict_codec {
        Some(_) => pool.install(|| train_dicts(new, &plans, new_entries))?,
        None => (Vec::new(), HashMap::new()),
    };

    progress.start("diffing", work);
    let failures = std::sync::Mutex::new(Vec::new());
    // Largest files first, so that no long codec call starts last and runs alone.
    let mut order: Vec<usize> = (0..plans.len()).collect();
    order.sort_by_key(|&i| match plans[i] {
        Plan::Encode(_) => std::cmp::Reverse(new_entries[i].file_size()),
        _ => std::cmp::Reverse(0),
    });
    let mut slots: Vec<Option<Plan>> = plans.into_iter().map(Some).collect();
    let jobs: Vec<(usize, Plan)> = order
        .iter()
        .map(|&i| (i, slots[i].take().expect("each index once")))
        .collect();
    let done: Vec<(usize, Result<Encoding>)> = pool.install(|| {
        // One job per split: rayon otherwise hands each thread a long run of
        // jobs to do in sequence, and a thread with the big files ends alone.
        jobs.into_par_iter()
            .with_max_len(1)
            .map(|(i, plan)| {
                let e = &new_entries[i];
                let r = match plan {
                    Plan::Keep(d) => Ok((Outcome::Data(d), None)),
                    Plan::Copy => Ok((Outcome::Copy, None)),
                    Plan::Dup => Ok((Outcome::Dup, None)),
                    Plan::Encode(src) => {
                        let dict = match (dict_codec, kinds.get(&i)) {
                            (Some(c), Some(&k)) => Some((c, k, &trained[k].bytes[..])),
                            _ => None,
                        };
                        let r = encode(old, new, src, e, opts, dict, &failures)
                            .with_context(|| format!("diffing {}", e.path));
                        progress.advance(e.file_size());
                        r
                    }
                };
                (i, r)
            })
            .collect()
    });
    progress.finish();
    let mut placed: Vec<Option<Outcome>> = (0..new_entries.len()).map(|_| None).collect();
    // Entry index -> the dictionary it was encoded against (when not nearly unchanged).
    let mut offered: HashMap<usize, usize> = HashMap::new();
    for (i, r) in done {
        let (outcome, dict) = r?;
        placed[i] = Some(outcome);
        if let Some(k) = dict {
            offered.insert(i, k);
        }
    }
    let mut outcomes: Vec<Outcome> = placed
        .into_iter()
        .map(|o| o.expect("every entry planned"))
        .collect();

    // A dictionary stays only if the files using it saved more than it costs;
    // otherwise they go back to their best plain encoding.
    let mut saved = vec![0i64; trained.len()];
    for o in &outcomes {
        if let Outcome::Delta {
            best:
                Encoded {
                    dict: Some(k),
                    delta,
                    ..
                },
            plain_cost,
            ..
        } = o
        {
            saved[*k] += *plain_cost as i64 - delta.len() as i64;
        }
    }
    let keep: Vec<bool> = saved
        .iter()
        .zip(&trained)
        .map(|(s, t)| *s > t.compressed.len() as i64)
        .collect();
    // Every file that was offered a dropped dictionary is encoded again, not only
    // those whose best used it: in dictionary mode the other codecs were not run.
    let redo: Vec<usize> = offered
        .iter()
        .filter(|(_, k)| !keep[**k])
        .map(|(i, _)| *i)
        .collect();
    let redone: Vec<(usize, Result<Outcome>)> = pool.install(|| {
        redo.into_par_iter()
            .with_max_len(1)
            .map(|i| {
                let e = &new_entries[i];
                let src = similar.source(e).expect("encoded files have a source");
                let r = encode(old, new, src, e, opts, None, &failures)
                    .map(|(outcome, _)| outcome)
                    .with_context(|| format!("diffing {}", e.path));
                (i, r)
            })
            .collect()
    });
    for (i, r) in redone {
        outcomes[i] = r?;
    }

    let mut header = Header {
        kind: ImageKind::Delta,
        image_id: new.header().image_id,
        base_id: Some(old.header().image_id),
        config: new.header().config.clone(),
        codecs: Vec::new(),
        dicts: Vec::new(),
        entries: Vec::with_capacity(new_entries.len()),
    };
    let mut w = Writer::create(out)?;
    let mut summary = DiffSummary::default();
    // Trained dictionary → index in the header, for those kept and used.
    let mut dict_index: HashMap<usize, u32> = HashMap::new();
    let mut stored: HashMap<Digest, Data> = HashMap::new();
    for (e, outcome) in new_entries.iter().zip(outcomes) {
        let mut e = e.clone();
        if e.kind == Kind::File {
            let data = match outcome {
                Outcome::Data(d) => d,
                Outcome::Dup => stored
                    .get(&e.digest.expect("file"))
                    .cloned()
                    .context("duplicate before its first")?,
                Outcome::Copy => copy_full(new, &e, &mut w)?,
                Outcome::Delta {
                    source,
                    digest,
                    best,
                    ..
                } => {
                    let dict = match best.dict {
                        None => None,
                        Some(k) => {
                            summary.dict_files += 1;
                            Some(stored_dict(
                                k,
                                &trained,
                                &mut dict_index,
                                &mut header,
                                &mut w,
                            )?)
                        }
                    };
                    let idx = header.codec_index(codec_ref(&best.codec));
                    let offset = w.blob(&best.delta)?;
                    let step = Step {
                        codec: idx,
                        offset,
                        length: best.delta.len() as u64,
                        digest,
                        dict,
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
    summary.dicts = header.dicts.len();
    summary.codec_failures = failures.into_inner().unwrap_or_default();
    summary.bytes = w.finish(&header)?;
    Ok(summary)
}

/// The header index of trained dictionary `k`, writing its blob the first time a
/// kept file uses it (a dictionary no file ended up using is never written).
fn stored_dict(
    k: usize,
    trained: &[Trained],
    written: &mut HashMap<usize, u32>,
    header: &mut Header,
    w: &mut Writer,
) -> Result<u32> {
    if let Some(&i) = written.get(&k) {
        return Ok(i);
    }
    let t = &trained[k];
    let offset = w.blob(&t.compressed)?;
    header.dicts.push(Dict {
        offset,
        length: t.compressed.len() as u64,
        size: t.bytes.len() as u64,
        digest: Digest::of(&t.bytes),
    });
    let i = (header.dicts.len() - 1) as u32;
    written.insert(k, i);
    Ok(i)
}

/// The codec that encodes against shared dictionaries: the built-in zstd-dict,
/// if the rule uses it (a dictionary only lengthens its base; for suffix-array
/// codecs such as bsdiff it would cost far more time than it saves).
fn dict_codec(choice: &CodecChoice) -> Option<&Codec> {
    match choice {
        CodecChoice::Auto { zstd_dict, .. } => Some(zstd_dict),
        CodecChoice::Fixed(c) if c.name() == "zstd-dict" => Some(c),
        CodecChoice::Fixed(_) => None,
    }
}

/// Trains one dictionary per kind of small file to be encoded, on the new
/// contents. Returns the dictionaries and, per entry index, which one it may use.
fn train_dicts(
    new: &Reader,
    plans: &[Plan],
    entries: &[Entry],
) -> Result<(Vec<Trained>, HashMap<usize, usize>)> {
    let candidates: Vec<(usize, dict::Kind, Vec<u8>)> = plans
        .par_iter()
        .zip(entries.par_iter())
        .enumerate()
        .filter(|(_, (p, e))| matches!(p, Plan::Encode(_)) && e.file_size() <= dict::FILE_LIMIT)
        .map(|(i, (_, e))| {
            let bytes = new.full_content(e)?;
            Ok(dict::classify(&bytes).map(|k| (i, k, bytes)))
        })
        .filter_map(Result::transpose)
        .collect::<Result<_>>()?;
    let mut by_kind: std::collections::BTreeMap<dict::Kind, Vec<usize>> = Default::default();
    for (n, (_, k, _)) in candidates.iter().enumerate() {
        by_kind.entry(*k).or_default().push(n);
    }
    let groups: Vec<Vec<usize>> = by_kind.into_values().collect();
    let dicts: Vec<Option<Trained>> = groups
        .par_iter()
        .map(|members| {
            let samples: Vec<&[u8]> = members.iter().map(|&n| &candidates[n].2[..]).collect();
            let bytes = dict::train(&samples)?;
            let compressed = zstd::bulk::compress(&bytes, 19).ok()?;
            Some(Trained { bytes, compressed })
        })
        .collect();
    let mut trained = Vec::new();
    let mut kinds = HashMap::new();
    for (members, d) in groups.into_iter().zip(dicts) {
        if let Some(d) = d {
            for n in members {
                kinds.insert(candidates[n].0, trained.len());
            }
            trained.push(d);
        }
    }
    Ok((trained, kinds))
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
    dict: Option<(&Codec, usize, &[u8])>,
    failures: &std::sync::Mutex<Vec<String>>,
) -> Result<Encoding> {
    let full_cost = match e.data {
        Some(Data::Full { length, .. }) => length,
        _ => 0,
    };
    let sizes = [src.file_size() as usize, e.file_size() as usize];
    if !auto_codecs(&opts.codec, src.file_size(), e.file_size(), &[], 0)
        .iter()
        .any(|(c, _)| c.accepts(&sizes))
    {
        return Ok((Outcome::Copy, None));
    }
    let old_bytes = old.full_content(src)?;
    let new_bytes = new.full_content(e)?;
    let candidates: Vec<(&Codec, u8)> = auto_codecs(
        &opts.codec,
        src.file_size(),
        e.file_size(),
        &new_bytes,
        opts.level,
    )
    .into_iter()
    .filter(|(c, _)| c.accepts(&sizes))
    .collect();
    let digest = e.digest.expect("file");
    // A codec that fails on one file (a cap reached, a trap, a delta that does
    // not patch back) must not sink the whole diff: another candidate, or full
    // storage, takes the file, and the failure is reported. A codec that
    // answers `unsupported` does not apply to this file: no failure.
    let attempt = |c: &Codec, base: &[u8], level: u8| -> Option<Vec<u8>> {
        let r = c.diff(base, &new_bytes, level).and_then(|delta| {
            // A delta that does not patch back is a codec bug; catch it here, not
            // on a user's machine. Patching costs little next to diffing.
            c.patch_checked(base, &delta, &digest).map(|_| delta)
        });
        match r {
            Ok(delta) => Some(delta),
            Err(err) if err.op == Op::Diff && err.kind == ErrorKind::Unsupported => None,
            Err(err) => {
                let mut f = failures.lock().unwrap_or_else(|p| p.into_inner());
                f.push(format!("{}: {err}", e.path));
                None
            }
        }
    };
    // In dictionary mode the dictionary codec runs first, without the dictionary.
    // A file that its plain delta shows as nearly unchanged gains next to nothing
    // from a dictionary and goes on as without one; the others are encoded with
    // the dictionary and skip the remaining codecs: on the small binaries that
    // get one, bsdiff won too rarely to pay for its call (debian bookworm ->
    // trixie: 36 KB of 19 MB, 10 s of 40). Should the dictionary not pay
    // overall, `diff` encodes those files again without it.
    type Tries<'c> = Vec<(&'c Codec, u8)>;
    let (first, rest): (Tries, Tries) = match dict {
        Some((d, ..)) => candidates
            .into_iter()
            .partition(|(c, _)| c.digest() == d.digest()),
        None => (candidates, Vec::new()),
    };
    let run = |tries: &[(&Codec, u8)], best: &mut Option<Encoded>| {
        for &(c, level) in tries {
            if let Some(delta) = attempt(c, &old_bytes, level) {
                if best.as_ref().is_none_or(|b| delta.len() < b.delta.len()) {
                    *best = Some(Encoded {
                        codec: c.clone(),
                        delta,
                        dict: None,
                    });
                }
                if final_under_auto(&opts.codec, c) {
                    break;
                }
            }
        }
    };
    let mut plain: Option<Encoded> = None;
    run(&first, &mut plain);
    let changed = |p: &Option<Encoded>| p.as_ref().map_or(full_cost, |p| p.delta.len() as u64);
    let offered = dict.filter(|_| changed(&plain) >= e.file_size() / dict::MIN_CHANGE);
    if offered.is_none() {
        run(&rest, &mut plain);
    }
    let plain = plain.filter(|p| (p.delta.len() as u64) < full_cost);
    let plain_cost = changed(&plain);
    let with_dict = offered.and_then(|(c, k, bytes)| {
        let level = dict::level(opts.level, e.file_size());
        let delta = attempt(c, &dict::behind(bytes, &old_bytes), level)?;
        ((delta.len() as u64) < plain_cost).then(|| Encoded {
            codec: c.clone(),
            delta,
            dict: Some(k),
        })
    });
    let source = src.digest.expect("file");
    let outcome = match with_dict.or(plain) {
        Some(best) => Outcome::Delta {
            source,
            digest,
            best,
            plain_cost,
        },
        None => Outcome::Copy,
    };
    Ok((outcome, offered.map(|(_, k, _)| k)))
}
