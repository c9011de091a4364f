//! The image commands: convert, diff, patch, merge, extract, export, inspect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use d4c_host::digest::Digest;
use d4c_host::image::builder::{self, BuildOptions, OpenOptions, Platform, Source};
use d4c_host::image::chain::Chain;
use d4c_host::image::delta::diff::{self, CodecChoice, DiffOptions};
use d4c_host::image::delta::{merge, patch};
use d4c_host::image::entry::Data;
use d4c_host::image::format::Reader;
use d4c_host::image::{export, extract};
use serde::Serialize;

use crate::bar::Bar;
use crate::output::{human_bytes, print_json};
use crate::store_cmd;
use crate::{CodecArgs, CodecLimits};

/// All the cores this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// How many threads to use.
#[derive(Args)]
pub struct Jobs {
    /// Worker threads (compression, codec calls, rebuilding files).
    #[arg(long, default_value_t = default_threads())]
    pub threads: usize,
}

/// `d4c convert`.
#[derive(Args)]
pub struct ConvertArgs {
    /// OCI layout `DIR` or `DIR:TAG`, `docker-archive:FILE.tar[:TAG]`, or
    /// `docker://HOST/REPO:TAG` / `docker://HOST/REPO@sha256:DIGEST` (a registry).
    source: String,
    /// The cdimg to write [default: the local store, under the registry
    /// reference or --tag].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Store the image in the local store as NAME (`REGISTRY/REPO:TAG`).
    #[arg(short, long, value_name = "NAME", conflicts_with = "output")]
    tag: Option<String>,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// zstd level for file content (1..22).
    #[arg(long, default_value_t = 19)]
    level: i32,
    /// Keep no original image: no `verify`, and `export` writes one squashed
    /// layer; deltas are smaller where later layers replace earlier layers'
    /// files (their old content is otherwise kept to rebuild those layers).
    #[arg(long)]
    no_origin: bool,
    /// The platform to take from a multi-platform image, OS/ARCH[/VARIANT]
    /// [default: this machine's].
    #[arg(long, value_parser = Platform::parse)]
    platform: Option<Platform>,
    #[command(flatten)]
    jobs: Jobs,
    #[command(flatten)]
    conn: crate::update_cmd::Connection,
    #[command(flatten)]
    codecs: CodecLimits,
}

/// `d4c diff`.
#[derive(Args)]
pub struct DiffArgs {
    /// The old full image (a file, or a stored image's name).
    #[arg(long)]
    old: PathBuf,
    /// The new full image (a file, or a stored image's name).
    #[arg(long)]
    new: PathBuf,
    /// `auto`, a built-in name, a .wasm component, or a codec sha256.
    #[arg(long, default_value = "auto")]
    codec: String,
    /// Codec effort 1..22 (0: each codec's default, 19 for the built-ins; 12
    /// diffs several times faster for somewhat larger deltas, docs/BENCHMARKS.md).
    #[arg(long, default_value_t = 0)]
    level: u8,
    /// The delta to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Encode every file against its old version alone, without shared
    /// dictionaries (docs/FORMAT.md, "Dictionaries").
    #[arg(long)]
    no_dicts: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    jobs: Jobs,
    #[command(flatten)]
    codecs: CodecArgs,
}

/// `d4c patch`.
#[derive(Args)]
pub struct PatchArgs {
    /// The full image the delta applies to (a file, or a stored image's name).
    #[arg(long)]
    base: PathBuf,
    /// One or more deltas, applied in order.
    #[arg(long, required = true, num_args = 1..)]
    delta: Vec<PathBuf>,
    /// The full image to write.
    #[arg(short, long)]
    output: PathBuf,
    /// zstd level for rebuilt content.
    #[arg(long, default_value_t = 19)]
    level: i32,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    jobs: Jobs,
    #[command(flatten)]
    codecs: CodecArgs,
}

/// `d4c merge`.
#[derive(Args)]
pub struct MergeArgs {
    /// The delta v1→v2.
    #[arg(long)]
    lower: PathBuf,
    /// The delta v2→v3 (more may follow: v3→v4, ...).
    #[arg(long, required = true, num_args = 1..)]
    upper: Vec<PathBuf>,
    /// The delta v1→vN to write.
    #[arg(short, long)]
    output: PathBuf,
    /// zstd level for content rebuilt while merging.
    #[arg(long, default_value_t = 19)]
    level: i32,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    jobs: Jobs,
    #[command(flatten)]
    codecs: CodecArgs,
}

/// `d4c extract`.
#[derive(Args)]
pub struct ExtractArgs {
    /// A full image, then deltas in order (files, or a stored image's name).
    #[arg(required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// The directory to create.
    #[arg(short, long)]
    output: PathBuf,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    jobs: Jobs,
    #[command(flatten)]
    codecs: CodecArgs,
}

/// `d4c export`.
#[derive(Args)]
pub struct ExportArgs {
    /// A full image, then deltas in order (files, or a stored image's name).
    #[arg(required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// The OCI image layout to write to, `DIR` or `DIR:TAG` (created if missing;
    /// other images in it are kept).
    #[arg(short, long)]
    output: String,
    /// Write the tree as one new layer, even for an image that keeps its
    /// original (which is otherwise written as it was, digests and all).
    #[arg(long)]
    squash: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    jobs: Jobs,
    #[command(flatten)]
    codecs: CodecArgs,
}

/// `d4c verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// A full image, then deltas in order (files, or a stored image's name).
    #[arg(required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// The manifest the image must be: a `sha256:` digest, or a manifest file.
    #[arg(long, value_name = "FILE|DIGEST")]
    manifest: Option<String>,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    jobs: Jobs,
    #[command(flatten)]
    codecs: CodecArgs,
}

/// `d4c inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// A cdimg (image or delta), or a stored image's name (its top file).
    image: PathBuf,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// List every regular file: size, how it is stored, bytes stored, codecs.
    #[arg(long)]
    files: bool,
}

/// What `convert --json` prints.
#[derive(Serialize)]
struct ConvertReport {
    /// The file written, or the stored image's name.
    output: String,
    stored: bool,
    image_id: Digest,
    entries: usize,
    bytes: u64,
    manifest: Option<Digest>,
    notes: Vec<String>,
}

pub fn convert(a: &ConvertArgs) -> Result<()> {
    let source = Source::parse(&a.source)?;
    let opts = BuildOptions {
        level: a.level,
        threads: a.jobs.threads,
        origin: !a.no_origin,
    };
    let open = OpenOptions {
        platform: a.platform.clone().unwrap_or_else(Platform::host),
        connect: a.conn.options(None),
    };
    let name = match (&a.output, &a.tag, &source) {
        (Some(_), _, _) => None,
        (None, Some(t), _) => Some(t.clone()),
        (None, None, Source::Registry(r)) => Some(r.to_string()),
        (None, None, _) => anyhow::bail!(
            "name the cdimg to write with -o, or the name to store it under with --tag"
        ),
    };
    let gzip = a.codecs.codecs()?.builtin("gzip")?;
    let c = match (&a.output, &name) {
        (Some(out), _) => builder::convert(&source, &open, out, opts, Some(&gzip), &Bar::new())?,
        (None, Some(n)) => {
            let store = store_cmd::open()?;
            let lock = store.lock()?;
            let tmp = store.blobs().scratch_path("convert");
            let c = builder::convert(&source, &open, &tmp, opts, Some(&gzip), &Bar::new())?;
            store_cmd::store_file(&store, &lock, n, vec![], &tmp, (c.image_id, c.manifest))?;
            c
        }
        (None, None) => unreachable!("checked above"),
    };
    let report = ConvertReport {
        output: match (&a.output, &name) {
            (Some(o), _) => o.display().to_string(),
            (None, n) => store_cmd::canonical(n.as_deref().unwrap_or_default())?,
        },
        stored: a.output.is_none(),
        image_id: c.image_id,
        entries: c.entries,
        bytes: c.bytes,
        manifest: c.manifest,
        notes: c.notes,
    };
    if a.json {
        return print_json(&report);
    }
    for n in &report.notes {
        eprintln!("d4c: note: {n}");
    }
    println!(
        "{}: image {} ({} entries, {}){}",
        report.output,
        c.image_id,
        c.entries,
        human_bytes(c.bytes),
        c.manifest
            .map(|m| format!(", original manifest {}", m.oci()))
            .unwrap_or_default()
    );
    Ok(())
}

/// What `diff --json` prints.
#[derive(Serialize)]
struct DiffReport {
    output: PathBuf,
    base_id: Digest,
    image_id: Digest,
    same: usize,
    delta: usize,
    full: usize,
    dicts: usize,
    dict_files: usize,
    codec_failures: Vec<String>,
    bytes: u64,
}

pub fn diff(a: &DiffArgs) -> Result<()> {
    let codecs = a.codecs.codecs()?;
    let choice = if a.codec == "auto" {
        CodecChoice::auto(&codecs)?
    } else {
        CodecChoice::Fixed(codecs.resolve(&a.codec)?)
    };
    let old = Reader::open(&store_cmd::full_image(&a.codecs, &a.old)?)?;
    let new = Reader::open(&store_cmd::full_image(&a.codecs, &a.new)?)?;
    let opts = DiffOptions {
        codec: choice,
        level: a.level,
        threads: a.jobs.threads,
        dicts: !a.no_dicts,
    };
    let s = diff::diff(&old, &new, &opts, &a.output, &Bar::new())?;
    let r = DiffReport {
        output: a.output.clone(),
        base_id: old.header().image_id,
        image_id: new.header().image_id,
        same: s.same,
        delta: s.delta,
        full: s.full,
        dicts: s.dicts,
        dict_files: s.dict_files,
        codec_failures: s.codec_failures,
        bytes: s.bytes,
    };
    if a.json {
        return print_json(&r);
    }
    for f in &r.codec_failures {
        eprintln!("d4c: warning: codec failed on {f}; another codec or full storage took the file");
    }
    let dicts = match r.dicts {
        0 => String::new(),
        n => format!(
            ", {} against {n} shared dictionar{}",
            r.dict_files,
            if n == 1 { "y" } else { "ies" }
        ),
    };
    println!(
        "{}: delta {} -> {} ({} same, {} delta{dicts}, {} full; {})",
        r.output.display(),
        r.base_id.short(),
        r.image_id.short(),
        r.same,
        r.delta,
        r.full,
        human_bytes(r.bytes)
    );
    Ok(())
}

/// What `patch`, `extract` and `export --squash` print with `--json`.
#[derive(Serialize)]
struct Written {
    output: String,
    image_id: Digest,
    #[serde(flatten)]
    more: serde_json::Value,
}

pub fn patch(a: &PatchArgs) -> Result<()> {
    let codecs = a.codecs.codecs()?;
    let mut paths = store_cmd::expand(std::slice::from_ref(&a.base))?;
    paths.extend(a.delta.iter().cloned());
    let chain = Chain::open(&paths)?;
    let bytes = patch::materialize(
        &chain,
        &codecs,
        &a.output,
        a.level,
        a.jobs.threads,
        &Bar::new(),
    )?;
    if a.json {
        return print_json(&Written {
            output: a.output.display().to_string(),
            image_id: chain.top().image_id,
            more: serde_json::json!({ "bytes": bytes }),
        });
    }
    println!(
        "{}: image {} ({})",
        a.output.display(),
        chain.top().image_id,
        human_bytes(bytes)
    );
    Ok(())
}

/// What `merge --json` prints.
#[derive(Serialize)]
struct MergeReport {
    output: PathBuf,
    base_id: Option<Digest>,
    image_id: Digest,
    merged: usize,
    chained: usize,
    bytes: u64,
}

pub fn merge(a: &MergeArgs) -> Result<()> {
    let codecs = a.codecs.codecs()?;
    let mut lower = a.lower.clone();
    // Longer chains merge pairwise, left to right, through temporary files.
    let dir = a
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".d4c-merge-")
        .tempdir_in(dir)?;
    let base_id = Reader::open(&a.lower)?.header().base_id;
    let mut report = None;
    for (i, upper) in a.upper.iter().enumerate() {
        let last = i + 1 == a.upper.len();
        let out = if last {
            a.output.clone()
        } else {
            tmp.path().join(format!("step{i}.cdimg"))
        };
        let l = Reader::open(&lower)?;
        let u = Reader::open(upper)?;
        let s = merge::merge(&l, &u, &codecs, &out, a.level, a.jobs.threads, &Bar::new())?;
        report = Some(MergeReport {
            output: a.output.clone(),
            base_id,
            image_id: u.header().image_id,
            merged: s.merged,
            chained: s.chained,
            bytes: s.bytes,
        });
        lower = out;
    }
    let r = report.expect("clap: at least one --upper");
    if a.json {
        return print_json(&r);
    }
    println!(
        "{}: delta {} -> {} ({} merged by codec, {} kept as two steps; {})",
        r.output.display(),
        r.base_id.map(|d| d.short()).unwrap_or_default(),
        r.image_id.short(),
        r.merged,
        r.chained,
        human_bytes(r.bytes)
    );
    Ok(())
}

pub fn extract(a: &ExtractArgs) -> Result<()> {
    let codecs = a.codecs.codecs()?;
    let chain = Chain::open(&store_cmd::expand(&a.images)?)?;
    let done = extract::extract(&chain, &codecs, &a.output, a.jobs.threads, &Bar::new())?;
    if a.json {
        return print_json(&Written {
            output: a.output.display().to_string(),
            image_id: chain.top().image_id,
            more: serde_json::json!({
                "entries": chain.top().entries.len(),
                "owners_kept": done.owners_kept,
                "devices_skipped": done.devices_skipped,
            }),
        });
    }
    if !done.owners_kept {
        eprintln!(
            "d4c: warning: not root: files are yours, setuid and setgid bits cleared, only user.* xattrs set"
        );
    }
    if let Some(first) = done.devices_skipped.first() {
        eprintln!(
            "d4c: warning: not root: {} device node(s) left out ({first}, ...)",
            done.devices_skipped.len()
        );
    }
    println!(
        "{}: image {} ({} entries)",
        a.output.display(),
        chain.top().image_id,
        chain.top().entries.len()
    );
    Ok(())
}

pub fn export(a: &ExportArgs) -> Result<()> {
    let codecs = a.codecs.codecs()?;
    let chain = Chain::open(&store_cmd::expand(&a.images)?)?;
    let (dir, tag) = export::parse_target(&a.output)?;
    let target = format!(
        "{}{}",
        dir.display(),
        tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default()
    );
    if chain.top().origin.is_some() && !a.squash {
        let s =
            export::original::export_original(&chain, &codecs, &dir, tag.as_deref(), &Bar::new())?;
        if a.json {
            return print_json(&Written {
                output: target,
                image_id: chain.top().image_id,
                more: serde_json::json!({
                    "manifest": s.manifest.oci(),
                    "original_manifest": s.original.oci(),
                    "identical": s.identical(),
                    "config": s.config.oci(),
                    "layers": s.layers.iter().map(|(d, why)| serde_json::json!({
                        "digest": d.oci(), "differs": why,
                    })).collect::<Vec<_>>(),
                }),
            });
        }
        for (i, (d, why)) in s.layers.iter().enumerate() {
            if let Some(why) = why {
                eprintln!("d4c: note: layer {} is {}: {why}", i + 1, d.oci());
            }
        }
        if s.identical() {
            println!(
                "{target}: the original image, manifest {} (config {})",
                s.manifest.oci(),
                s.config.oci()
            );
        } else {
            println!(
                "{target}: manifest {} instead of the original {}: layer blobs differ (above); config {} and every diff_id are the original's",
                s.manifest.oci(),
                s.original.oci(),
                s.config.oci()
            );
        }
        return Ok(());
    }
    if chain.top().origin.is_none() && !a.squash && !a.json {
        eprintln!("d4c: note: the image keeps no original (converted by an older d4c or from a docker archive): written as one layer");
    }
    let s = export::export(
        &chain,
        &codecs,
        &dir,
        tag.as_deref(),
        a.jobs.threads,
        &Bar::new(),
    )?;
    if a.json {
        return print_json(&Written {
            output: target,
            image_id: chain.top().image_id,
            more: serde_json::json!({
                "manifest": s.manifest.oci(),
                "layers": [{"digest": s.layer.oci(), "diff_id": s.diff_id.oci(), "size": s.layer_size}],
            }),
        });
    }
    println!(
        "{target}: manifest {}, layer {} ({})",
        s.manifest.oci(),
        s.layer.oci(),
        human_bytes(s.layer_size)
    );
    Ok(())
}

#[derive(Serialize)]
struct VerifyReport {
    manifest: String,
    config: String,
    diff_ids: Vec<String>,
    tar_bytes: u64,
    seconds: f64,
}

/// The manifest digest `--manifest` names: a digest, or a file's sha256.
fn expected_manifest(s: &str) -> Result<Digest> {
    if let Ok(d) = s.parse::<Digest>() {
        return Ok(d);
    }
    let bytes = std::fs::read(s).map_err(|e| {
        anyhow::anyhow!("--manifest {s:?} is neither a sha256 digest nor a readable file: {e}")
    })?;
    Ok(Digest::of(&bytes))
}

pub fn verify(a: &VerifyArgs) -> Result<()> {
    let expected = a.manifest.as_deref().map(expected_manifest).transpose()?;
    let codecs = a.codecs.codecs()?;
    let chain = Chain::open(&store_cmd::expand(&a.images)?)?;
    let t = std::time::Instant::now();
    let v = d4c_host::image::origin::rebuild::verify(
        &chain,
        &codecs,
        expected.as_ref(),
        a.jobs.threads,
        &Bar::new(),
    )?;
    let seconds = t.elapsed().as_secs_f64();
    let d = &v.described;
    if a.json {
        return print_json(&VerifyReport {
            manifest: d.manifest.oci(),
            config: d.config.oci(),
            diff_ids: d.layers.iter().map(|l| l.diff_id.oci()).collect(),
            tar_bytes: v.tar_bytes,
            seconds,
        });
    }
    println!(
        "verified: manifest {}, config {}, {} layers ({} of tar in {seconds:.1} s)",
        d.manifest.oci(),
        d.config.oci(),
        d.layers.len(),
        human_bytes(v.tar_bytes)
    );
    Ok(())
}

#[derive(Serialize, Default)]
struct Files {
    full: usize,
    same: usize,
    delta: usize,
}

#[derive(Serialize)]
struct CodecUse {
    name: String,
    version: String,
    sha256: Digest,
    files: usize,
    bytes: u64,
}

#[derive(Serialize)]
struct DictUse {
    sha256: Digest,
    /// Dictionary length.
    size: u64,
    /// Bytes its blob takes.
    bytes: u64,
    /// Codec steps that use it.
    files: usize,
}

#[derive(Serialize)]
struct Inspect {
    kind: d4c_host::image::format::ImageKind,
    image_id: Digest,
    base_id: Option<Digest>,
    bytes: u64,
    entries: usize,
    content_bytes: u64,
    files: Files,
    codecs: Vec<CodecUse>,
    dicts: Vec<DictUse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_list: Option<Vec<FileInfo>>,
    /// The original image, when the file keeps it.
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<OriginInfo>,
}

#[derive(Serialize)]
struct OriginInfo {
    manifest: String,
    config: String,
    layers: Vec<OriginLayerInfo>,
    /// Content kept beyond the tree (records, recipes, replaced files).
    content: usize,
    /// Bytes the origin's content blobs and header take in this file.
    bytes: u64,
}

#[derive(Serialize)]
struct OriginLayerInfo {
    digest: String,
    diff_id: String,
    media_type: String,
    size: u64,
    /// Whether a recipe rebuilds the blob bit for bit.
    recipe: bool,
}

/// The original image's lines of `inspect`.
fn print_origin(o: &OriginInfo) {
    println!("  manifest  {} (original)", o.manifest);
    println!("  config    {}", o.config);
    for (i, l) in o.layers.iter().enumerate() {
        println!(
            "  layer {:<3} {} diff_id {}{}",
            i + 1,
            l.digest,
            l.diff_id,
            if l.recipe {
                ""
            } else {
                " (blob not reproduced)"
            }
        );
    }
    println!(
        "  origin    {} content items, {} in this file",
        o.content,
        human_bytes(o.bytes)
    );
}

fn origin_info(r: &Reader) -> Result<Option<OriginInfo>> {
    let h = r.header();
    let Some(o) = &h.origin else {
        return Ok(None);
    };
    let d = o.describe(&h.config)?;
    // Its part of the header JSON (before compression).
    let header_cost = serde_json::to_vec(o)?.len();
    let blobs: u64 = o
        .content
        .iter()
        .map(|e| match &e.data {
            Some(Data::Full { length, .. }) => *length,
            Some(Data::Delta { steps, .. }) => steps.iter().map(|s| s.length).sum(),
            _ => 0,
        })
        .sum();
    Ok(Some(OriginInfo {
        manifest: d.manifest.oci(),
        config: d.config.oci(),
        layers: d
            .layers
            .iter()
            .zip(&o.layers)
            .map(|(l, ol)| OriginLayerInfo {
                digest: l.digest.oci(),
                diff_id: l.diff_id.oci(),
                media_type: l.media_type.clone(),
                size: l.size,
                recipe: ol.recipe.is_some(),
            })
            .collect(),
        content: o.content.len(),
        bytes: blobs + header_cost as u64,
    }))
}

#[derive(Serialize)]
struct FileInfo {
    path: String,
    size: u64,
    /// full, inline, same or delta.
    storage: &'static str,
    /// Bytes this file's blobs take in this cdimg.
    stored: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    codecs: Vec<String>,
}

fn file_info(
    h: &d4c_host::image::format::Header,
    e: &d4c_host::image::entry::Entry,
) -> Option<FileInfo> {
    let (storage, stored, codecs) = match e.data.as_ref()? {
        Data::Full { length, .. } => ("full", *length, Vec::new()),
        Data::Inline => ("inline", 0, Vec::new()),
        Data::Same => ("same", 0, Vec::new()),
        Data::Delta { steps, .. } => (
            "delta",
            steps.iter().map(|s| s.length).sum(),
            steps
                .iter()
                .map(|s| h.codecs[s.codec as usize].name.clone())
                .collect(),
        ),
    };
    Some(FileInfo {
        path: e.path.clone(),
        size: e.file_size(),
        storage,
        stored,
        codecs,
    })
}

pub fn inspect(a: &InspectArgs) -> Result<()> {
    let path = store_cmd::expand(std::slice::from_ref(&a.image))?
        .pop()
        .expect("one argument, one or more files");
    let r = Reader::open(&path)?;
    let report = inspect_report(&r, a.files)?;
    if a.json {
        return print_json(&report);
    }
    print_report(&a.image, &report);
    Ok(())
}

/// What `inspect` reports of an open image (`files`: with every file).
fn inspect_report(r: &Reader, files_listed: bool) -> Result<Inspect> {
    let h = r.header();
    let mut files = Files::default();
    let mut uses: BTreeMap<usize, (usize, u64)> = BTreeMap::new();
    let mut dict_files = vec![0usize; h.dicts.len()];
    for e in &h.entries {
        match &e.data {
            Some(Data::Full { .. } | Data::Inline) => files.full += 1,
            Some(Data::Same) => files.same += 1,
            Some(Data::Delta { steps, .. }) => {
                files.delta += 1;
                for s in steps {
                    let u = uses.entry(s.codec as usize).or_default();
                    u.0 += 1;
                    u.1 += s.length;
                    if let Some(d) = s.dict {
                        dict_files[d as usize] += 1;
                    }
                }
            }
            None => {}
        }
    }
    let codecs = h
        .codecs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (files, bytes) = uses.get(&i).copied().unwrap_or_default();
            CodecUse {
                name: c.name.clone(),
                version: c.version.clone(),
                sha256: c.sha256,
                files,
                bytes,
            }
        })
        .collect();
    let report = Inspect {
        kind: h.kind,
        image_id: h.image_id,
        base_id: h.base_id,
        bytes: r.len(),
        entries: h.entries.len(),
        content_bytes: h.entries.iter().map(|e| e.file_size()).sum(),
        files,
        codecs,
        dicts: h
            .dicts
            .iter()
            .zip(dict_files)
            .map(|(d, files)| DictUse {
                sha256: d.digest,
                size: d.size,
                bytes: d.length,
                files,
            })
            .collect(),
        file_list: files_listed.then(|| h.entries.iter().filter_map(|e| file_info(h, e)).collect()),
        origin: origin_info(r)?,
    };
    Ok(report)
}

/// `inspect`'s human-readable form.
fn print_report(image: &Path, report: &Inspect) {
    println!("{}", image.display());
    println!("  kind      {:?}", report.kind);
    println!("  image id  {}", report.image_id);
    if let Some(b) = report.base_id {
        println!("  base id   {b}");
    }
    println!(
        "  size      {} ({} bytes)",
        human_bytes(report.bytes),
        report.bytes
    );
    println!(
        "  entries   {} ({} of file content)",
        report.entries,
        human_bytes(report.content_bytes)
    );
    println!(
        "  files     {} full, {} same, {} delta",
        report.files.full, report.files.same, report.files.delta
    );
    if let Some(o) = &report.origin {
        print_origin(o);
    }
    for c in &report.codecs {
        println!(
            "  codec     {} {} {}: {} files, {}",
            c.name,
            c.version,
            c.sha256,
            c.files,
            human_bytes(c.bytes)
        );
    }
    for d in &report.dicts {
        println!(
            "  dict      {}: {} in {}, used by {} files",
            d.sha256,
            human_bytes(d.size),
            human_bytes(d.bytes),
            d.files
        );
    }
    for f in report.file_list.iter().flatten() {
        println!(
            "  {:<6} {:>10} {:>10} {} {}",
            f.storage,
            f.size,
            f.stored,
            f.path,
            f.codecs.join(",")
        );
    }
}
