//! `mount`: a read-only FUSE file system serving the image a chain yields,
//! rebuilding each file on its first read ([`fs`]), with rebuilt contents kept
//! in a size-bounded on-disk cache ([`cache`]) and stable inodes ([`tree`]).
//! The CLI and the snapshotter both mount through [`mount`].

pub mod cache;
pub mod fs;
pub mod tree;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use fuser::{Config, MountOption, Session, SessionACL};

use self::cache::ContentCache;
use self::fs::ImageFs;
use crate::codec::Codecs;
use crate::image::chain::Chain;

/// The source d4c mounts show in /proc/mounts starts with this.
pub const SOURCE_PREFIX: &str = "d4c:";

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Threads serving requests (rebuilds block only the thread doing them).
    pub threads: usize,
    /// Honour setuid bits and device nodes (`suid,dev`). Off, a root mount is
    /// `nosuid,nodev`: every local user may read it, so an image's setuid-root
    /// binary or block device must not act for them. Containers need it on.
    pub suid_dev: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            threads: 8,
            suid_dev: false,
        }
    }
}

/// A live mount; unmounted by [`Mount::unmount`] or when dropped.
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
}

/// Mounts the image `chain` yields at `mountpoint` (an existing directory). A
/// stale d4c mount left there by a killed process is cleaned up first.
pub fn mount(
    chain: Chain,
    codecs: Codecs,
    cache: Arc<ContentCache>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<Mount> {
    let mountpoint = absolute(mountpoint)?;
    clean_stale(&mountpoint)?;
    anyhow::ensure!(
        mountpoint.is_dir(),
        "mount point {} is not a directory",
        mountpoint.display()
    );
    let id = chain.top().image_id.short();
    let fs = ImageFs::new(Arc::new(chain), codecs, cache)?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("{SOURCE_PREFIX}{id}")),
        MountOption::Subtype("d4c".into()),
        // The kernel checks permissions against the modes and owners we report.
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::Exec,
    ];
    // Root mounts: any user may read (containers run as any uid); setuid
    // bits and devices act only when asked for (the snapshotter's mounts).
    if rustix::process::geteuid().is_root() {
        config.acl = SessionACL::All;
    }
    config.mount_options.extend(if opts.suid_dev {
        [MountOption::Dev, MountOption::Suid]
    } else {
        [MountOption::NoDev, MountOption::NoSuid]
    });
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let session = Session::new(fs, &mountpoint, &config)
        .with_context(|| format!("mounting at {}", mountpoint.display()))?
        .spawn()?;
    Ok(Mount {
        session: Some(session),
        mountpoint,
    })
}

impl Mount {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Whether the file system stopped serving (unmounted from outside).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Unmounts (lazily if the mount is busy) and waits for the serving threads.
    pub fn unmount(mut self) -> Result<()> {
        let session = self.session.take().expect("live until unmounted");
        if !session.guard.is_finished() {
            if let Err(e) = unmount(&self.mountpoint) {
                // Unless someone else unmounted it meanwhile, detach it lazily.
                if is_mounted(&self.mountpoint)?.is_some() {
                    eprintln!("d4c: {e:#}; detaching it lazily");
                    umount2(&self.mountpoint, libc::MNT_DETACH)?;
                }
            }
        }
        session
            .join()
            .with_context(|| format!("serving {}", self.mountpoint.display()))
    }

    /// Waits until the file system is unmounted from outside.
    pub fn join(mut self) -> Result<()> {
        let session = self.session.take().expect("live until unmounted");
        session
            .join()
            .with_context(|| format!("serving {}", self.mountpoint.display()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = umount2(&self.mountpoint, libc::MNT_DETACH);
            let _ = s.join();
        }
    }
}

/// `path` made absolute without touching the last component (a stale FUSE
/// mount point cannot even be stat'ed).
fn absolute(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("bad mount point {}", path.display()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = parent
        .canonicalize()
        .with_context(|| format!("mount point {}", path.display()))?;
    Ok(parent.join(name))
}

/// What is mounted at `path` (absolute), if anything, as (file system type,
/// source), from /proc/self/mountinfo (the last mount there wins).
pub fn is_mounted(path: &Path) -> Result<Option<(String, String)>> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let want = path.as_os_str().as_bytes();
    let mut found = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() > sep + 2 && fields.len() > 4 && unescape_mountinfo(fields[4]) == want {
            let source = String::from_utf8_lossy(&unescape_mountinfo(fields[sep + 2])).into_owned();
            found = Some((fields[sep + 1].to_string(), source));
        }
    }
    Ok(found)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Cleans up a d4c mount at `path` whose process died (the kernel answers
/// ENOTCONN, or ECONNABORTED on newer kernels); refuses a live one. Returns
/// whether it cleaned one.
pub fn clean_stale(path: &Path) -> Result<bool> {
    match is_mounted(path)? {
        Some((fstype, source))
            if fstype.starts_with("fuse") && source.starts_with(SOURCE_PREFIX) => {}
        _ => return Ok(false),
    }
    match std::fs::metadata(path) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) => {
            umount2(path, libc::MNT_DETACH)?;
            eprintln!("d4c: cleaned up a stale mount at {}", path.display());
            Ok(true)
        }
        _ => bail!(
            "{} is already a live d4c mount (d4c umount {} first)",
            path.display(),
            path.display()
        ),
    }
}

/// Unmounts the file system at `path`.
pub fn unmount(path: &Path) -> Result<()> {
    let path = absolute(path)?;
    if is_mounted(&path)?.is_none() {
        bail!("{} is not a mount point", path.display());
    }
    umount2(&path, 0)
}

fn umount2(path: &Path, flags: libc::c_int) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).context("path contains NUL")?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        let err = std::io::Error::last_os_error();
        bail!("unmounting {}: {err}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes() {
        assert_eq!(super::unescape_mountinfo(r"/a\040b\134c"), b"/a b\\c");
        assert_eq!(super::unescape_mountinfo(r"/x\0"), b"/x\\0");
    }
}
