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
        /// The built-in elf-refs, which takes bsdiff's place on ELF files.
        elf_refs: Codec,
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
            elf_refs,
            zstd_dict,
            gzip,
        } => {
            let mut out = Vec::with_capacity(3);
            if new_head.starts_with(GZIP_MAGIC) {
                out.push((gzip, level));
            }
            if old_size.max(new_size) <= AUTO_BOTH_LIMIT {
                // elf-refs runs bsdiff on the files as they are before it
                // rewrites them, and keeps the smaller: it never loses to bsdiff.
                let suffix = if new_head.starts_with(ELF_MAGIC) {
                    elf_refs
                } else {
                    bsdiff
                };
                out.push((suffix, level));
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
/// An ELF file: what elf-refs models.
const ELF_MAGIC: &[u8] = b"\x7fELF";

impl CodecChoice {
    /// The `auto` rule with the built-in codecs of `codecs`.
    pub fn auto(codecs: &crate::codec::Codecs) -> Result<CodecChoice> {
        Ok(CodecChoice::Auto {
            bsdiff: codecs.builtin("bsdiff")?,
            elf_refs: codecs.builtin("elf-refs")?,
            zstd_dict: codecs.builtin("zstd-dict")?,
            gzip: codecs.builtin("gzip")?,
        })
    }
}

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
    // The tree's entries, then the origin's content: diffed alike.
    let old_items: Vec<Entry> = old.header().items().cloned().collect();
    let old_digests: std::collections::HashSet<Digest> =
        old_items.iter().filter_map(|e| e.digest).collect();
    let similar = Similar::new(&old_items);

    let new_items: Vec<Entry> = new.header().items().cloned().collect();
    let new_entries = &new_items;
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
    // Files of the kinds that may share a dictionary (FORMAT.md, "Dictionaries").
    let kinds: HashMap<usize, dict::Kind> = match dict_codec {
        Some(_) => pool.install(|| classify(new, &plans, new_entries))?,
        None => HashMap::new(),
    };

    progress.start("diffing", work);
    let failures = std::sync::Mutex::new(Vec::new());
    let cx = Ctx {
        old,
        new,
        opts,
        failures: &failures,
    };
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
    let done: Vec<(usize, Result<(Outcome, bool)>)> = pool.install(|| {
        // One job per split: rayon otherwise hands each thread a long run of
        // jobs to do in sequence, and a thread with the big files ends alone.
        jobs.into_par_iter()
            .with_max_len(1)
            .map(|(i, plan)| {
                let e = &new_entries[i];
                let r = match plan {
                    Plan::Keep(d) => Ok((Outcome::Data(d), false)),
                    Plan::Copy => Ok((Outcome::Copy, false)),
                    Plan::Dup => Ok((Outcome::Dup, false)),
                    Plan::Encode(src) => {
                        let first = dict_codec.filter(|_| kinds.contains_key(&i));
                        let r = encode(cx, src, e, first)
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
    // Files that wait for a dictionary of their kind, with their plain outcome.
    let mut waiting: Vec<(usize, Outcome)> = Vec::new();
    for (i, r) in done {
        match r? {
            (outcome, true) => {
                waiting.push((i, outcome));
                // Until the second pass below decides.
                placed[i] = Some(Outcome::Copy);
            }
            (outcome, false) => placed[i] = Some(outcome),
        }
    }
    let mut outcomes: Vec<Outcome> = placed
        .into_iter()
        .map(|o| o.expect("every entry planned"))
        .collect();

    // A kind gets a dictionary only if its waiting files' plain deltas are large
    // enough for one to pay (dict::worth_training); the second pass encodes each
    // waiting file with its kind's dictionary or, for a kind without one, by the
    // codecs the first pass skipped.
    let mut plain_by_kind: HashMap<dict::Kind, u64> = HashMap::new();
    for (i, o) in &waiting {
        *plain_by_kind.entry(kinds[i]).or_default() += cost_of(o, &new_entries[*i]);
    }
    let (trained, dict_of_kind) = match dict_codec {
        Some(_) if !waiting.is_empty() => {
            pool.install(|| train_dicts(new, &kinds, new_entries, &plain_by_kind))?
        }
        _ => (Vec::new(), HashMap::new()),
    };
    // Entry index -> the dictionary it was encoded against.
    let offered: HashMap<usize, usize> = waiting
        .iter()
        .filter_map(|(i, _)| Some((*i, *dict_of_kind.get(&kinds[i])?)))
        .collect();
    let finished: Vec<(usize, Result<Outcome>)> = pool.install(|| {
        waiting
            .into_par_iter()
            .with_max_len(1)
            .map(|(i, prior)| {
                let e = &new_entries[i];
                let d = dict_codec.expect("waiting files have a dictionary codec");
                let how = match offered.get(&i) {
                    Some(&k) => DictUse::With(d, k, &trained[k].bytes[..]),
                    None => DictUse::Without(d),
                };
                let src = similar.source(e).expect("encoded files have a source");
                let r =
                    finish(cx, src, e, prior, how).with_context(|| format!("diffing {}", e.path));
                (i, r)
            })
            .collect()
    });
    for (i, r) in finished {
        outcomes[i] = r?;
    }

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
                let r = encode(cx, src, e, None)
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
        origin: None,
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
    let content = header.entries.split_off(new.header().entries.len());
    header.origin = new
        .header()
        .origin
        .as_ref()
        .map(|o| o.carried(content, &new.header().codecs, &mut header.codecs));
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

/// The kind of every file to be encoded that may share a dictionary (up to
/// [`dict::FILE_LIMIT`], by its first bytes), by entry index.
fn classify(new: &Reader, plans: &[Plan], entries: &[Entry]) -> Result<HashMap<usize, dict::Kind>> {
    plans
        .par_iter()
        .zip(entries.par_iter())
        .enumerate()
        .filter(|(_, (p, e))| matches!(p, Plan::Encode(_)) && e.file_size() <= dict::FILE_LIMIT)
        .map(|(i, (_, e))| {
            let mut head = [0u8; 4];
            let n = new.content_reader(e)?.read(&mut head)?;
            Ok(dict::classify(&head[..n]).map(|k| (i, k)))
        })
        .filter_map(Result::transpose)
        .collect()
}

/// What a file's outcome costs in the delta.
fn cost_of(o: &Outcome, e: &Entry) -> u64 {
    match o {
        Outcome::Delta { best, .. } => best.delta.len() as u64,
        _ => full_cost(e),
    }
}

/// What storing a file in full costs: its compressed blob in the new image.
fn full_cost(e: &Entry) -> u64 {
    match e.data {
        Some(Data::Full { length, .. }) => length,
        _ => 0,
    }
}

/// Trains one dictionary per kind on the new contents of all its files, for
/// the kinds whose waiting files' plain deltas (`plain`) make one worth it.
/// Returns the dictionaries and which one each kind got.
fn train_dicts(
    new: &Reader,
    kinds: &HashMap<usize, dict::Kind>,
    entries: &[Entry],
    plain: &HashMap<dict::Kind, u64>,
) -> Result<(Vec<Trained>, HashMap<dict::Kind, usize>)> {
    let mut by_kind: std::collections::BTreeMap<dict::Kind, Vec<usize>> = Default::default();
    for (&i, &k) in kinds {
        by_kind.entry(k).or_default().push(i);
    }
    let groups: Vec<(dict::Kind, Vec<usize>)> = by_kind
        .into_iter()
        .filter(|(k, members)| {
            let bytes: u64 = members.iter().map(|&i| entries[i].file_size()).sum();
            dict::worth_training(plain.get(k).copied().unwrap_or(0), bytes)
        })
        .map(|(k, mut members)| {
            // Training is deterministic for a given sample order.
            members.sort_unstable();
            (k, members)
        })
        .collect();
    let dicts: Vec<Option<Trained>> = groups
        .par_iter()
        .map(|(_, members)| -> Result<Option<Trained>> {
            let samples: Vec<Vec<u8>> = members
                .iter()
                .map(|&i| new.full_content(&entries[i]))
                .collect::<Result<_>>()?;
            let refs: Vec<&[u8]> = samples.iter().map(|s| &s[..]).collect();
            Ok(dict::train(&refs).and_then(|bytes| {
                let compressed = zstd::bulk::compress(&bytes, 19).ok()?;
                Some(Trained { bytes, compressed })
            }))
        })
        .collect::<Result<_>>()?;
    let mut trained = Vec::new();
    let mut of_kind = HashMap::new();
    for ((k, _), d) in groups.into_iter().zip(dicts) {
        if let Some(d) = d {
            of_kind.insert(k, trained.len());
            trained.push(d);
        }
    }
    Ok((trained, of_kind))
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

/// What every file's encoding shares: both images, the options, and the list of
/// codec failures to report.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    old: &'a Reader,
    new: &'a Reader,
    opts: &'a DiffOptions,
    failures: &'a std::sync::Mutex<Vec<String>>,
}

/// One file's encoding work: its contents and the codec calls on them.
struct FileJob<'a> {
    cx: Ctx<'a>,
    e: &'a Entry,
    old_bytes: Vec<u8>,
    new_bytes: Vec<u8>,
    /// The codecs to try, in order, each at its level.
    tries: Vec<(&'a Codec, u8)>,
    /// What storing the file in full costs.
    full_cost: u64,
    source: Digest,
    digest: Digest,
}

impl<'a> FileJob<'a> {
    /// Loads both contents, or None when no codec accepts the sizes.
    fn load(cx: Ctx<'a>, src: &'a Entry, e: &'a Entry) -> Result<Option<FileJob<'a>>> {
        let opts = cx.opts;
        let sizes = [src.file_size() as usize, e.file_size() as usize];
        if !auto_codecs(&opts.codec, src.file_size(), e.file_size(), &[], 0)
            .iter()
            .any(|(c, _)| c.accepts(&sizes))
        {
            return Ok(None);
        }
        let old_bytes = cx.old.full_content(src)?;
        let new_bytes = cx.new.full_content(e)?;
        let tries = auto_codecs(
            &opts.codec,
            src.file_size(),
            e.file_size(),
            &new_bytes,
            opts.level,
        )
        .into_iter()
        .filter(|(c, _)| c.accepts(&sizes))
        .collect();
        Ok(Some(FileJob {
            cx,
            e,
            old_bytes,
            new_bytes,
            tries,
            full_cost: full_cost(e),
            source: src.digest.expect("file"),
            digest: e.digest.expect("file"),
        }))
    }

    /// One codec call on `base`, patched back and checked. A codec that fails
    /// on one file (a cap reached, a trap, a delta that does not patch back)
    /// must not sink the whole diff: another candidate, or full storage, takes
    /// the file, and the failure is reported. A codec that answers
    /// `unsupported` does not apply to this file: no failure.
    fn attempt(&self, c: &Codec, base: &[u8], level: u8) -> Option<Vec<u8>> {
        let r = c.diff(base, &self.new_bytes, level).and_then(|delta| {
            // A delta that does not patch back is a codec bug; catch it here, not
            // on a user's machine. Patching costs little next to diffing.
            c.patch_checked(base, &delta, &self.digest).map(|_| delta)
        });
        match r {
            Ok(delta) => Some(delta),
            Err(err) if err.op == Op::Diff && err.kind == ErrorKind::Unsupported => None,
            Err(err) => {
                let mut f = self.cx.failures.lock().unwrap_or_else(|p| p.into_inner());
                f.push(format!("{}: {err}", self.e.path));
                None
            }
        }
    }

    /// Runs the tries `keep` selects against the old file alone, improving on
    /// `best`. A try whose delta ends the search (gzip's) runs first and alone;
    /// the others run in parallel, so that a diff dominated by one large file
    /// (node's 98 MB binary, tried at two levels) keeps both cores busy. The
    /// smallest delta wins, the earlier try on a tie, as if run in order.
    fn run(&self, keep: impl Fn(&Codec) -> bool + Sync, best: &mut Option<Encoded>) {
        let choice = &self.cx.opts.codec;
        let (first, rest): (Vec<_>, Vec<_>) = self
            .tries
            .iter()
            .filter(|(c, _)| keep(c))
            .partition(|(c, _)| final_under_auto(choice, c));
        for &&(c, level) in &first {
            if let Some(delta) = self.attempt(c, &self.old_bytes, level) {
                Self::keep_smaller(best, c, delta);
                return;
            }
        }
        let deltas: Vec<_> = rest
            .par_iter()
            .with_max_len(1)
            .map(|&&(c, level)| self.attempt(c, &self.old_bytes, level))
            .collect();
        for (&&(c, _), delta) in rest.iter().zip(deltas) {
            if let Some(delta) = delta {
                Self::keep_smaller(best, c, delta);
            }
        }
    }

    fn keep_smaller(best: &mut Option<Encoded>, c: &Codec, delta: Vec<u8>) {
        if best.as_ref().is_none_or(|b| delta.len() < b.delta.len()) {
            *best = Some(Encoded {
                codec: c.clone(),
                delta,
                dict: None,
            });
        }
    }

    /// What the file costs with `best`, or in full.
    fn cost(&self, best: &Option<Encoded>) -> u64 {
        best.as_ref().map_or(self.full_cost, |b| {
            (b.delta.len() as u64).min(self.full_cost)
        })
    }

    /// The outcome for `best` (a delta only if smaller than full storage).
    fn outcome(&self, best: Option<Encoded>, plain_cost: u64) -> Outcome {
        match best.filter(|b| (b.delta.len() as u64) < self.full_cost) {
            Some(best) => Outcome::Delta {
                source: self.source,
                digest: self.digest,
                best,
                plain_cost,
            },
            None => Outcome::Copy,
        }
    }
}

/// Encodes a file by every candidate codec, keeping the smallest delta; or, with
/// `dict_first` (a file of a kind that may get a shared dictionary), by that
/// dictionary codec alone first. Returns the outcome and whether the file waits
/// for a dictionary ([`finish`]): in dictionary mode a file whose plain delta is
/// at least 1/[`dict::MIN_CHANGE`] of its size stops there; the others (nearly
/// unchanged, nothing for a dictionary to add) go on to the remaining codecs.
fn encode(cx: Ctx, src: &Entry, e: &Entry, dict_first: Option<&Codec>) -> Result<(Outcome, bool)> {
    let Some(job) = FileJob::load(cx, src, e)? else {
        return Ok((Outcome::Copy, false));
    };
    let mut best = None;
    match dict_first {
        Some(d) => {
            job.run(|c| c.digest() == d.digest(), &mut best);
            if job.cost(&best) >= e.file_size() / dict::MIN_CHANGE {
                let cost = job.cost(&best);
                return Ok((job.outcome(best, cost), true));
            }
            job.run(|c| c.digest() != d.digest(), &mut best);
        }
        None => job.run(|_| true, &mut best),
    }
    let cost = job.cost(&best);
    Ok((job.outcome(best, cost), false))
}

/// Ends the encoding of a file that waited for a dictionary, from `prior` (its
/// plain delta by the dictionary codec alone): with the dictionary `dict` if its
/// kind got one, where the file keeps the smaller of the two (the remaining codecs
/// are not run: on the small binaries that get a dictionary bsdiff won too rarely
/// to pay for its call, debian bookworm -> trixie: 36 KB of 19 MB, 10 s of 40);
/// without one, by the remaining codecs.
fn finish(cx: Ctx, src: &Entry, e: &Entry, prior: Outcome, dict: DictUse) -> Result<Outcome> {
    // Both contents are read again: holding them for every waiting file through
    // the first pass would cost up to 2 MiB a file, for a decompression.
    let Some(job) = FileJob::load(cx, src, e)? else {
        return Ok(prior);
    };
    let mut best = match prior {
        Outcome::Delta { best, .. } => Some(best),
        _ => None,
    };
    let plain_cost = job.cost(&best);
    match dict {
        DictUse::With(c, k, bytes) => {
            let level = dict::level(cx.opts.level, e.file_size());
            if let Some(delta) = job.attempt(c, &dict::behind(bytes, &job.old_bytes), level) {
                if (delta.len() as u64) < plain_cost {
                    best = Some(Encoded {
                        codec: c.clone(),
                        delta,
                        dict: Some(k),
                    });
                }
            }
        }
        DictUse::Without(d) => job.run(|c| c.digest() != d.digest(), &mut best),
    }
    Ok(job.outcome(best, plain_cost))
}

/// How [`finish`] ends a file that waited for a dictionary.
#[derive(Clone, Copy)]
enum DictUse<'a> {
    /// Against trained dictionary `.1` (bytes `.2`) with codec `.0`.
    With(&'a Codec, usize, &'a [u8]),
    /// Its kind got no dictionary: the codecs other than `.0` (already run).
    Without(&'a Codec),
}
