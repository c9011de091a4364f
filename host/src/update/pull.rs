//! `pull`: find the cheapest update from what the client holds, download it
//! (resumable; every blob checked against its digest), fetch and verify codec
//! components the client lacks if allowed, assemble one cdimg and check that it
//! yields the wanted image before it appears at the output path.
//!
//! From a registry the client plans and merges itself; from an update server it
//! sends its holdings and gets one delta the server merged. Deltas come in their
//! compact form (`update::compact`) where the repository has one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use super::attach;
use super::plan::{self, Holdings, Plan};
use super::protocol::{PullRequest, PullResponse, PULL_PATH};
use crate::codec::Codecs;
use crate::digest::Digest;
use crate::fsutil;
use crate::image::builder::Platform;
use crate::image::chain::Chain;
use crate::image::delta::{merge::merge, patch::materialize};
use crate::image::format::{ImageKind, Reader};
use crate::progress::Progress;
use crate::registry::artifact::{CodecItem, Item, Manifest, RepoIndex, CDIMG_TYPE};
use crate::registry::{self, Registry};

/// Largest codec component fetched.
const MAX_COMPONENT: u64 = 256 << 20;

/// Where updates come from.
pub enum Source<'a> {
    /// An OCI registry: the client reads the index and plans.
    Registry(&'a Registry),
    /// A d4c update server: it plans and merges.
    Server(&'a Registry),
}

/// What to pull and how.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Images the client holds, each a chain of files: a full image, then
    /// deltas.
    pub have: Vec<Vec<PathBuf>>,
    /// A held chain this long gets a full image written instead of one more
    /// delta (the image store caps its chains).
    pub max_chain: usize,
    /// Codec components the client holds.
    pub codecs: std::collections::HashSet<Digest>,
    /// Whether codecs it lacks may be fetched.
    pub fetch_codecs: bool,
    /// The cdimg to write.
    pub out: PathBuf,
    /// Write a full image even when a delta from a held image would do.
    pub full: bool,
    /// Plan only.
    pub dry_run: bool,
    /// Where downloads wait until used.
    pub downloads: PathBuf,
    /// zstd level for content rebuilt while assembling.
    pub level: i32,
    /// Threads for merging and patching.
    pub threads: usize,
    /// The platform to take where the tag is a multi-platform image.
    pub platform: Platform,
}

/// What a pull did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    /// The image pulled.
    pub target: Digest,
    /// The ordinary image manifest the pulled cdimgs were attached to, if the
    /// tag names one (the output rebuilds it, digests and all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
    /// The held image the update applies to (`None`: it starts from a full image).
    pub start: Option<Digest>,
    /// The file holding that image (the top of its chain).
    pub start_file: Option<PathBuf>,
    /// The full image and deltas downloaded, in order.
    pub path: Vec<Item>,
    /// Codec components fetched.
    pub codecs_fetched: Vec<CodecItem>,
    /// Bytes the plan downloads.
    pub bytes_planned: u64,
    /// Blob bytes actually received (less than planned when resuming).
    pub bytes_transferred: u64,
    /// Deltas the server merged into the one sent (0: none).
    pub merged_by_server: usize,
    /// Steps that came in the compact transfer encoding (`update::compact`).
    pub compact_steps: usize,
    /// Why a compact form was not used after all (then the plain delta was fetched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compact_fallback: Option<String>,
    /// What was written: a full image or a delta from `start`; none on a dry run.
    pub output: Option<ImageKind>,
}

/// Pulls the image tagged `tag` from `source`.
pub fn pull(
    source: Source,
    tag: &str,
    opts: &PullOptions,
    codecs: &Codecs,
    progress: &dyn Progress,
) -> Result<PullReport> {
    let mut held: HashMap<Digest, Vec<PathBuf>> = HashMap::new();
    for chain in &opts.have {
        let first = chain.first().context("an empty chain of held images")?;
        ensure!(
            Reader::open(first)?.header().kind == ImageKind::Image,
            "{}: --have takes full images; this is a delta",
            first.display()
        );
        held.insert(Chain::open(chain)?.top().image_id, chain.clone());
    }
    let holdings = Holdings {
        images: held.keys().copied().collect(),
        codecs: opts.codecs.clone(),
        fetch_codecs: opts.fetch_codecs,
    };
    let mut subject = None;
    let (reg, plan, merged_by_server) = match source {
        Source::Registry(reg) => {
            let (target, index) = resolve(reg, tag, &opts.platform, &mut subject)?;
            (reg, plan::plan(&index, target, &holdings)?, 0)
        }
        Source::Server(reg) => {
            let req = PullRequest {
                repository: reg.reference().repository.clone(),
                tag: tag.to_string(),
                have: holdings.images.clone(),
                codecs: holdings.codecs.iter().copied().collect(),
                fetch_codecs: holdings.fetch_codecs,
            };
            let body = reg.post_json(PULL_PATH, &serde_json::to_vec(&req)?)?;
            let resp: PullResponse =
                serde_json::from_slice(&body).context("the update server's answer")?;
            check_server_plan(&resp.plan, &holdings)?;
            (reg, resp.plan, resp.merged_from)
        }
    };
    let mut report = PullReport {
        target: plan.target,
        subject,
        start: plan.start,
        start_file: plan
            .start
            .and_then(|s| held.get(&s).and_then(|c| c.last()).cloned()),
        path: plan.steps.clone(),
        codecs_fetched: plan.fetch.clone(),
        bytes_planned: plan.bytes,
        bytes_transferred: 0,
        merged_by_server,
        compact_steps: 0,
        compact_fallback: None,
        output: None,
    };
    if opts.dry_run {
        return Ok(report);
    }

    let before = reg.received();
    for c in &plan.fetch {
        fetch_codec(reg, codecs, c)?;
    }
    fsutil::create_dir_all(&opts.downloads)?;
    let mut blobs = Vec::new();
    // Each compact step is encoded against its base's tree: the held start's,
    // then each downloaded step's.
    let any_compact = plan.steps.iter().any(|s| s.compact.is_some());
    let mut base_header = match plan.start {
        Some(s) if any_compact => Some(Chain::open(&held[&s])?.top().clone()),
        _ => None,
    };
    for step in &plan.steps {
        let dest = opts.downloads.join(step.blob.hex());
        let rebuilt = match (&step.compact, &base_header) {
            (Some(c), Some(base)) if !dest.exists() && step.base_id == Some(base.image_id) => {
                let z = opts.downloads.join(c.blob.hex());
                let r = reg
                    .fetch_blob(&c.blob, c.size, &z, progress)
                    .and_then(|_| super::compact::decode(&z, base, &step.blob, &dest));
                let _ = std::fs::remove_file(&z);
                if let Err(e) = &r {
                    report.compact_fallback = Some(format!("{e:#}"));
                }
                r.is_ok()
            }
            _ => false,
        };
        if rebuilt {
            report.compact_steps += 1;
        } else {
            reg.fetch_blob(&step.blob, step.size, &dest, progress)?;
        }
        let r = Reader::open(&dest)?;
        let h = r.header();
        ensure!(
            h.kind == step.kind && h.image_id == step.image_id && h.base_id == step.base_id,
            "blob {:?} is not the {} the index says it is",
            step.blob,
            kind_word(step.kind)
        );
        if any_compact {
            base_header = Some(h.clone());
        }
        blobs.push((dest, step.blob, step.size));
    }
    report.bytes_transferred = reg.received() - before;

    let start = plan.start.map(|s| held[&s].as_slice());
    let kind = assemble(&plan, subject, start, &blobs, opts, codecs, progress)?;
    report.output = Some(kind);
    for (b, _, _) in &blobs {
        let _ = std::fs::remove_file(b);
    }
    Ok(report)
}

/// The image a tag names and the index to plan over: a d4c tag's image and
/// the repository's d4c index, or an ordinary image's (`subject` set to its
/// manifest) and the cdimgs attached to it.
fn resolve(
    reg: &Registry,
    tag: &str,
    platform: &Platform,
    subject: &mut Option<Digest>,
) -> Result<(Digest, RepoIndex)> {
    let r = reg.reference();
    let (data, _) = reg
        .get_manifest(tag)?
        .with_context(|| format!("tag {tag:?} not found in {}/{}", r.registry, r.repository))?;
    let m = Manifest::parse(&data).ok();
    if m.as_ref().and_then(|m| m.artifact_type.as_deref()) == Some(CDIMG_TYPE) {
        let target = m
            .expect("parsed")
            .image_id()
            .with_context(|| format!("{r}:{tag}"))?;
        let index = registry::read_index(reg)?
            .with_context(|| format!("{r} has no d4c index (push images with `d4c push`)"))?;
        return Ok((target, index));
    }
    let image = attach::image_manifest(reg, tag, platform)?;
    let attached = attach::discover(reg, &image)?.with_context(|| {
        format!(
            "{}/{}:{tag} is an ordinary image with no d4c artifacts attached \
             (attach them with `d4c push IMG.cdimg {}/{}:{tag} --attach`)",
            r.registry, r.repository, r.registry, r.repository
        )
    })?;
    *subject = Some(image);
    Ok((attached.target, attached.index))
}

/// A server's plan must respect what the client said.
fn check_server_plan(plan: &Plan, have: &Holdings) -> Result<()> {
    let fetched: Vec<Digest> = plan.fetch.iter().map(|c| c.digest).collect();
    for c in plan.codecs() {
        ensure!(
            have.codecs.contains(&c) || (have.fetch_codecs && fetched.contains(&c)),
            "the update server offered a delta in codec {c:?}, which this client refused"
        );
    }
    if let Some(s) = plan.start {
        ensure!(
            have.images.contains(&s),
            "the update server planned from image {}, which this client does not hold",
            s.short()
        );
    }
    let mut at = plan.start;
    for s in &plan.steps {
        ensure!(
            s.base_id == at || s.kind == ImageKind::Image,
            "the update server's path is broken"
        );
        at = Some(s.image_id);
    }
    ensure!(
        at == Some(plan.target),
        "the update server's path does not end at the target"
    );
    Ok(())
}

/// Downloads a codec component, checks its digest, stores and loads it.
pub fn fetch_codec(reg: &Registry, codecs: &Codecs, c: &CodecItem) -> Result<()> {
    let bytes = reg
        .fetch_blob_bytes(&c.digest, MAX_COMPONENT.min(c.size))
        .with_context(|| format!("fetching codec {}", c.name))?;
    let stored = codecs.store().put(&bytes)?;
    ensure!(stored == c.digest, "codec {} changed in flight", c.name);
    codecs.get(&c.digest, &c.name).with_context(|| {
        format!(
            "codec {} ({:?}) from {} is not a usable component",
            c.name,
            c.digest,
            reg.reference()
        )
    })?;
    Ok(())
}

/// Writes the output from the downloads: one delta from the held image (merged
/// if the path has several), or a full image. Checked before it is renamed
/// into place.
fn assemble(
    plan: &Plan,
    subject: Option<Digest>,
    start: Option<&[PathBuf]>,
    blobs: &[(PathBuf, Digest, u64)],
    opts: &PullOptions,
    codecs: &Codecs,
    progress: &dyn Progress,
) -> Result<ImageKind> {
    let out = &opts.out;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a file path", out.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = |what: &str| {
        dir.join(format!(
            "{}pull-{}-{what}-{name}",
            fsutil::TEMP_PREFIX,
            std::process::id()
        ))
    };
    let result = tmp("out");
    let mut scratch = vec![];
    let start = start.unwrap_or_default();
    let want_full = opts.full || start.is_empty() || start.len() >= opts.max_chain;
    let r = (|| -> Result<()> {
        if let ([src], true) = (start, blobs.is_empty()) {
            // The client holds the target already, as one file.
            std::fs::copy(src, &result).with_context(|| format!("copying {}", src.display()))?;
        } else if want_full && blobs.len() == 1 && start.is_empty() {
            place(&blobs[0], &result)?;
        } else if want_full || blobs.is_empty() {
            let mut chain = start.to_vec();
            chain.extend(blobs.iter().map(|(p, _, _)| p.clone()));
            let chain = Chain::open(&chain)?;
            materialize(&chain, codecs, &result, opts.level, opts.threads, progress)?;
        } else if blobs.len() == 1 {
            place(&blobs[0], &result)?;
        } else {
            let mut lower = blobs[0].0.clone();
            for (i, (upper, _, _)) in blobs[1..].iter().enumerate() {
                let next = if i + 2 == blobs.len() {
                    result.clone()
                } else {
                    let t = tmp(&format!("merge{i}"));
                    scratch.push(t.clone());
                    t
                };
                merge(
                    &Reader::open(&lower)?,
                    &Reader::open(upper)?,
                    codecs,
                    &next,
                    opts.level,
                    opts.threads,
                    progress,
                )?;
                lower = next;
            }
        }
        Ok(())
    })();
    for s in &scratch {
        let _ = std::fs::remove_file(s);
    }
    let check = r.and_then(|()| {
        let h = Reader::open(&result)?.header().clone();
        ensure!(
            h.image_id == plan.target,
            "the pulled update yields image {}, not {}",
            h.image_id.short(),
            plan.target.short()
        );
        if let Some(s) = subject {
            ensure!(
                h.origin.as_ref().map(|o| o.manifest_digest()) == Some(s),
                "the pulled update does not rebuild image manifest {}",
                s.oci()
            );
        }
        let full = h.kind == ImageKind::Image;
        if !full {
            ensure!(
                h.base_id == plan.start,
                "the pulled delta applies to the wrong image"
            );
        }
        Ok(h.kind)
    });
    match check {
        Ok(kind) => {
            std::fs::rename(&result, out)
                .with_context(|| format!("renaming into {}", out.display()))?;
            fsutil::sync_dir(&dir)?;
            Ok(kind)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&result);
            Err(e)
        }
    }
}

/// Puts the download `(from, digest, size)` at `to`: a link to the file
/// `fetch_blob` just checked, or, on another file system, a copy checked while
/// it is written.
fn place((from, digest, size): &(PathBuf, Digest, u64), to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    let mut f = fsutil::AtomicFile::create(to)?;
    let mut src = std::fs::File::open(from)?;
    let mut out = crate::digest::HashWriter::new(f.file());
    std::io::copy(&mut src, &mut out)?;
    let (_, got, n) = out.finish();
    ensure!(
        got == *digest && n == *size,
        "{}: the downloaded blob changed on disk ({n} bytes, sha256 {}; want {size} bytes, {})",
        from.display(),
        got.short(),
        digest.short()
    );
    f.commit()
}

fn kind_word(k: ImageKind) -> &'static str {
    match k {
        ImageKind::Image => "full image",
        ImageKind::Delta => "delta",
    }
}
