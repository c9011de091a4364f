//! `extract`: the root filesystem of a chain's top image, written to a directory
//! with modes, owners, links, devices, xattrs and mtimes, every file's digest
//! checked. The tree appears at the destination only when complete.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;

use super::chain::Chain;
use super::entry::{unescape_path, Entry, Kind};
use crate::codec::Codecs;
use crate::progress::Progress;

fn target(root: &Path, e: &Entry) -> Result<PathBuf> {
    let bytes = unescape_path(&e.path)?;
    Ok(if bytes.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(&bytes))
    })
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("path contains a NUL byte")
}

fn check(rc: libc::c_int, what: &str, p: &Path) -> Result<()> {
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("{what} {}: {err}", p.display());
    }
    Ok(())
}

/// Owner, mode, xattrs and mtime, in the order that keeps them (chmod after
/// chown, which clears setuid bits; mtime last).
fn set_metadata(p: &Path, e: &Entry) -> Result<()> {
    let c = cstr(p)?;
    // SAFETY: `c` is a valid NUL-terminated path for each call.
    unsafe {
        check(libc::lchown(c.as_ptr(), e.uid, e.gid), "chown", p)?;
        if e.kind != Kind::Symlink {
            check(libc::chmod(c.as_ptr(), e.mode as libc::mode_t), "chmod", p)?;
        }
        for (k, v) in &e.xattrs {
            let key = CString::new(k.as_bytes()).context("xattr name contains NUL")?;
            let rc = libc::lsetxattr(c.as_ptr(), key.as_ptr(), v.as_ptr().cast(), v.len(), 0);
            check(rc, &format!("setting xattr {k} on"), p)?;
        }
        let t = libc::timespec {
            tv_sec: e.mtime as libc::time_t,
            tv_nsec: 0,
        };
        let times = [t, t];
        check(
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            ),
            "setting mtime of",
            p,
        )?;
    }
    Ok(())
}

/// [`set_metadata`] for a regular file, through its descriptor.
fn set_file_metadata(f: &std::fs::File, p: &Path, e: &Entry) -> Result<()> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: `fd` is open for the duration of each call; pointers are valid.
    unsafe {
        check(libc::fchown(fd, e.uid, e.gid), "chown", p)?;
        check(libc::fchmod(fd, e.mode as libc::mode_t), "chmod", p)?;
        for (k, v) in &e.xattrs {
            let key = CString::new(k.as_bytes()).context("xattr name contains NUL")?;
            let rc = libc::fsetxattr(fd, key.as_ptr(), v.as_ptr().cast(), v.len(), 0);
            check(rc, &format!("setting xattr {k} on"), p)?;
        }
        let t = libc::timespec {
            tv_sec: e.mtime as libc::time_t,
            tv_nsec: 0,
        };
        check(libc::futimens(fd, [t, t].as_ptr()), "setting mtime of", p)?;
    }
    Ok(())
}

/// Extracts the chain's top image into `dest`, which must not exist.
pub fn extract(
    chain: &Chain,
    codecs: &Codecs,
    dest: &Path,
    threads: usize,
    progress: &dyn Progress,
) -> Result<()> {
    ensure!(!dest.exists(), "{} already exists", dest.display());
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".d4c-extract-")
        .tempdir_in(parent)?;
    let root = tmp.path();
    let entries = &chain.top().entries;

    for e in entries
        .iter()
        .filter(|e| e.kind == Kind::Dir && !e.path.is_empty())
    {
        let p = target(root, e)?;
        std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
    }
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
                let p = target(root, e)?;
                let f = std::fs::File::create(&p)
                    .with_context(|| format!("creating {}", p.display()))?;
                let mut content = chain
                    .open_content(codecs, e)
                    .with_context(|| format!("rebuilding {}", e.path))?;
                crate::fsutil::copy_sparse(&mut content, &f, e.file_size())
                    .with_context(|| format!("writing {}", p.display()))?;
                // A file's metadata through its open descriptor, here in the
                // parallel phase: no second path lookup, no serial pass over
                // thousands of small files.
                set_file_metadata(&f, &p, e)?;
                progress.advance(e.file_size());
                Ok(())
            })
    })?;
    progress.finish();
    for e in entries {
        let p = target(root, e)?;
        let c = cstr(&p)?;
        match e.kind {
            Kind::Symlink => {
                let t = unescape_path(e.link.as_deref().unwrap_or_default())?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&t), &p)
                    .with_context(|| format!("creating symlink {}", p.display()))?;
            }
            Kind::Hardlink => {
                let t = target(root, &Entry::dir(e.link.as_deref().unwrap_or_default()))?;
                std::fs::hard_link(&t, &p).with_context(|| format!("linking {}", p.display()))?;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let (maj, min) = e.rdev.unwrap_or((0, 0));
                let ty = match e.kind {
                    Kind::Char => libc::S_IFCHR,
                    Kind::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                // SAFETY: valid path; mknod has no other memory arguments.
                let rc = unsafe {
                    libc::mknod(
                        c.as_ptr(),
                        ty | e.mode as libc::mode_t,
                        libc::makedev(maj, min),
                    )
                };
                check(rc, "mknod", &p)?;
            }
            _ => {}
        }
    }
    // The rest's metadata last, children before parents, so directory mtimes
    // stay as set (regular files got theirs when written).
    for e in entries.iter().rev() {
        if !matches!(e.kind, Kind::Hardlink | Kind::File) {
            set_metadata(&target(root, e)?, e)?;
        }
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, dest)
        .with_context(|| format!("moving the tree into {}", dest.display()))?;
    crate::fsutil::sync_dir(parent)
}
