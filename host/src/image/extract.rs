//! `extract`: the root filesystem of a chain's top image, written to a directory
//! with modes, owners, links, devices, xattrs and mtimes, every file's digest
//! checked. The tree appears at the destination only when complete.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use rayon::prelude::*;
use rustix::fs::FileType;

use super::chain::Chain;
use super::entry::{unescape_path, Entry, Kind};
use crate::beneath::{set_fd_meta, Beneath, Meta};
use crate::codec::Codecs;
use crate::progress::Progress;

/// What an extract could not reproduce as the image says (an unprivileged one).
#[derive(Debug, Default)]
pub struct Extracted {
    /// Device nodes left out: only root may create them.
    pub devices_skipped: Vec<String>,
    /// Whether owners were kept (root only; otherwise the files are the
    /// caller's, with setuid and setgid bits cleared as tar does, and only
    /// `user.` extended attributes set).
    pub owners_kept: bool,
}

/// How entries' metadata is applied: as the image says for root; otherwise the
/// caller's own files without setuid/setgid bits or the extended attributes
/// only root may set (`security.`, `trusted.`).
#[derive(Clone, Copy)]
struct Policy {
    root: bool,
}

impl Policy {
    fn meta<'e>(&self, e: &'e Entry) -> Meta<'e> {
        Meta {
            owner: self.root.then_some((e.uid, e.gid)),
            mode: if self.root { e.mode } else { e.mode & !0o6000 },
            mtime: e.mtime,
            xattrs: &e.xattrs,
            user_xattrs_only: !self.root,
        }
    }
}

/// The name of `e` relative to the tree's root, as bytes (valid by the header's
/// validation: no empty, `.` or `..` component, no `/` or NUL inside one).
fn name(e: &Entry) -> Result<Vec<u8>> {
    unescape_path(&e.path)
}

/// Extracts the chain's top image into `dest`, which must not exist. Every
/// entry is created beneath a fresh private directory ([`Beneath`]), renamed
/// to `dest` when complete.
pub fn extract(
    chain: &Chain,
    codecs: &Codecs,
    dest: &Path,
    threads: usize,
    progress: &dyn Progress,
) -> Result<Extracted> {
    ensure!(!dest.exists(), "{} already exists", dest.display());
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Mode 0700 (tempfile's default): no other user can reach the tree, or
    // race it, until it is complete.
    let tmp = tempfile::Builder::new()
        .prefix(".d4c-extract-")
        .tempdir_in(parent)?;
    let root = Beneath::open(tmp.path())?;
    let policy = Policy {
        root: rustix::process::geteuid().is_root(),
    };
    let entries = &chain.top().entries;
    for e in entries
        .iter()
        .filter(|e| e.kind == Kind::Dir && !e.path.is_empty())
    {
        root.mkdir(&name(e)?)?;
    }
    write_files(chain, codecs, &root, policy, threads, progress)?;
    let devices_skipped = write_links_and_nodes(&root, policy, entries)?;
    // The rest's metadata last, children before parents, so directory mtimes
    // stay as set (regular files got theirs when written).
    for e in entries.iter().rev() {
        let meta = policy.meta(e);
        match e.kind {
            Kind::Dir => root.set_dir_meta(&name(e)?, &meta)?,
            Kind::Symlink => root.set_node_meta(&name(e)?, &meta, true)?,
            Kind::Char | Kind::Block if !policy.root => {}
            Kind::Char | Kind::Block | Kind::Fifo => root.set_node_meta(&name(e)?, &meta, false)?,
            Kind::File | Kind::Hardlink => {}
        }
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, dest)
        .with_context(|| format!("moving the tree into {}", dest.display()))?;
    crate::fsutil::sync_dir(parent)?;
    Ok(Extracted {
        devices_skipped,
        owners_kept: policy.root,
    })
}

/// Every regular file, rebuilt, checked and written with its metadata.
fn write_files(
    chain: &Chain,
    codecs: &Codecs,
    root: &Beneath,
    policy: Policy,
    threads: usize,
    progress: &dyn Progress,
) -> Result<()> {
    let entries = &chain.top().entries;
    let total: u64 = entries.iter().map(|e| e.file_size()).sum();
    progress.start("extracting", total);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()?;
    // Largest files first, one per work item: in path order a big file late in
    // the tree (node's 98 MB `usr/local/bin/node`) starts when the rest is
    // nearly done and ends alone, and rayon otherwise hands each thread a long
    // run of entries.
    let mut files: Vec<&Entry> = entries.iter().filter(|e| e.kind == Kind::File).collect();
    files.sort_by_key(|e| std::cmp::Reverse(e.file_size()));
    pool.install(|| {
        files
            .par_iter()
            .with_max_len(1)
            .try_for_each(|e| -> Result<()> {
                let f = root.create_file(&name(e)?)?;
                let mut content = chain
                    .open_content(codecs, e)
                    .with_context(|| format!("rebuilding {}", e.path))?;
                crate::fsutil::copy_sparse(&mut content, &f, e.file_size())
                    .with_context(|| format!("writing {}", e.path))?;
                // A file's metadata through its open descriptor, here in the
                // parallel phase: no second path lookup, no serial pass over
                // thousands of small files.
                set_fd_meta(std::os::fd::AsFd::as_fd(&f), &policy.meta(e))
                    .map_err(std::io::Error::from)
                    .with_context(|| format!("setting metadata of {}", e.path))?;
                progress.advance(e.file_size());
                Ok(())
            })
    })?;
    progress.finish();
    Ok(())
}

/// Symlinks, hardlinks, device nodes and FIFOs; returns the devices left out
/// (unprivileged).
fn write_links_and_nodes(root: &Beneath, policy: Policy, entries: &[Entry]) -> Result<Vec<String>> {
    let mut skipped = Vec::new();
    for e in entries {
        match e.kind {
            Kind::Symlink => root.symlink(
                &name(e)?,
                &unescape_path(e.link.as_deref().unwrap_or_default())?,
            )?,
            Kind::Hardlink => root.hardlink(
                &name(e)?,
                &unescape_path(e.link.as_deref().unwrap_or_default())?,
            )?,
            Kind::Char | Kind::Block if !policy.root => skipped.push(e.path.clone()),
            Kind::Char | Kind::Block | Kind::Fifo => {
                let (maj, min) = e.rdev.unwrap_or((0, 0));
                let ty = match e.kind {
                    Kind::Char => FileType::CharacterDevice,
                    Kind::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                root.mknod(&name(e)?, ty, 0o600, rustix::fs::makedev(maj, min))?;
            }
            Kind::File | Kind::Dir => {}
        }
    }
    Ok(skipped)
}
