//! Writing a file tree strictly beneath one directory, whatever the names say.
//!
//! Every path is resolved from the directory's descriptor by `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` (or, on
//! kernels without it, one `openat(O_NOFOLLOW)` per component), and the last
//! component is created with an `*at` call that neither follows nor replaces a
//! link. So a symlink planted by an earlier entry, an absolute name or a `..`
//! can never lead a write out of the tree: the kernel refuses the lookup.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, Dev, FileType, Mode, OFlags, ResolveFlags, Timestamps};
use rustix::io::Errno;

/// What to set on a created entry.
#[derive(Debug, Clone)]
pub struct Meta<'a> {
    /// Owner and group, or None to leave them (an unprivileged extract).
    pub owner: Option<(u32, u32)>,
    /// Permission bits (`0o7777`); ignored for symlinks.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes.
    pub xattrs: &'a std::collections::BTreeMap<String, Vec<u8>>,
    /// Set only the `user.` ones (an ordinary user may set no others).
    pub user_xattrs_only: bool,
}

impl Meta<'_> {
    /// The extended attributes to set.
    fn xattrs(&self) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        self.xattrs
            .iter()
            .filter(|(k, _)| !self.user_xattrs_only || k.starts_with("user."))
    }
}

/// A directory that entries are created beneath.
pub struct Beneath {
    root: OwnedFd,
    /// For messages.
    path: PathBuf,
}

/// A relative path split into its parent directory (opened) and last name.
struct Slot<'p> {
    dir: OwnedFd,
    name: &'p OsStr,
}

impl Beneath {
    /// Opens the existing directory `path` (itself not through a symlink).
    pub fn open(path: &Path) -> Result<Beneath> {
        let root = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        )
        .with_context(|| format!("opening directory {}", path.display()))?;
        Ok(Beneath {
            root,
            path: path.to_path_buf(),
        })
    }

    /// Creates directory `rel` (its parent must exist), initially `0o700`.
    pub fn mkdir(&self, rel: &[u8]) -> Result<()> {
        let s = self.slot(rel)?;
        rustix::fs::mkdirat(&s.dir, s.name, Mode::from_raw_mode(0o700))
            .map_err(|e| self.err(e, "creating directory", rel))
    }

    /// Creates the regular file `rel`, which must not exist, for writing.
    pub fn create_file(&self, rel: &[u8]) -> Result<File> {
        let s = self.slot(rel)?;
        let fd = rustix::fs::openat(
            &s.dir,
            s.name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.err(e, "creating", rel))?;
        Ok(File::from(fd))
    }

    /// Creates the symlink `rel` pointing at `target` (never resolved here).
    pub fn symlink(&self, rel: &[u8], target: &[u8]) -> Result<()> {
        let s = self.slot(rel)?;
        rustix::fs::symlinkat(OsStr::from_bytes(target), &s.dir, s.name)
            .map_err(|e| self.err(e, "creating symlink", rel))
    }

    /// Makes `rel` a further name of the existing file `existing` (not of what a
    /// symlink there points to).
    pub fn hardlink(&self, rel: &[u8], existing: &[u8]) -> Result<()> {
        let from = self.slot(existing)?;
        let to = self.slot(rel)?;
        rustix::fs::linkat(&from.dir, from.name, &to.dir, to.name, AtFlags::empty())
            .map_err(|e| self.err(e, "linking", rel))
    }

    /// Creates a device node or FIFO `rel`.
    pub fn mknod(&self, rel: &[u8], kind: FileType, mode: u32, dev: Dev) -> Result<()> {
        let s = self.slot(rel)?;
        rustix::fs::mknodat(&s.dir, s.name, kind, Mode::from_raw_mode(mode), dev)
            .map_err(|e| self.err(e, "creating node", rel))
    }

    /// Sets the metadata of the directory `rel` (empty: the root itself).
    pub fn set_dir_meta(&self, rel: &[u8], meta: &Meta) -> Result<()> {
        let dir = if rel.is_empty() {
            self.root.try_clone()?
        } else {
            self.resolve(rel, OFlags::DIRECTORY | OFlags::RDONLY)?
        };
        set_fd_meta(dir.as_fd(), meta).map_err(|e| self.err(e, "setting metadata of", rel))
    }

    /// Sets the metadata of a symlink, device node or FIFO `rel` without
    /// following or opening it (opening a FIFO would block, a device would act).
    pub fn set_node_meta(&self, rel: &[u8], meta: &Meta, is_symlink: bool) -> Result<()> {
        let s = self.slot(rel)?;
        let e = |e| self.err(e, "setting metadata of", rel);
        if let Some((uid, gid)) = meta.owner {
            let (u, g) = uid_gid(uid, gid);
            rustix::fs::chownat(&s.dir, s.name, u, g, AtFlags::SYMLINK_NOFOLLOW).map_err(e)?;
        }
        if !is_symlink {
            // fchmodat cannot refuse to follow, but the name is the node just
            // created in a directory only this process writes to.
            rustix::fs::chmodat(
                &s.dir,
                s.name,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(e)?;
        }
        if meta.xattrs().next().is_some() {
            // lsetxattr through the parent's descriptor: no path outside the tree.
            let p = proc_path(&s.dir, s.name);
            for (k, v) in meta.xattrs() {
                rustix::fs::lsetxattr(&p, k.as_str(), v, rustix::fs::XattrFlags::empty())
                    .map_err(e)?;
            }
        }
        rustix::fs::utimensat(
            &s.dir,
            s.name,
            &times(meta.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(e)
    }

    /// The parent of `rel`, opened beneath the root, and `rel`'s last name.
    fn slot<'p>(&self, rel: &'p [u8]) -> Result<Slot<'p>> {
        self.check(rel)?;
        let (parent, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&b""[..], rel),
        };
        let dir = if parent.is_empty() {
            self.root.try_clone()?
        } else {
            self.resolve(parent, OFlags::DIRECTORY | OFlags::PATH)?
        };
        Ok(Slot {
            dir,
            name: OsStr::from_bytes(name),
        })
    }

    /// Opens `rel` beneath the root, following no symlink on the way.
    fn resolve(&self, rel: &[u8], flags: OFlags) -> Result<OwnedFd> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(
            &self.root,
            OsStr::from_bytes(rel),
            flags,
            Mode::empty(),
            resolve,
        ) {
            Err(Errno::NOSYS) => self.walk(rel, flags),
            r => r.map_err(|e| self.err(e, "opening", rel)),
        }
    }

    /// [`Beneath::resolve`] one component at a time, for kernels before 5.6.
    fn walk(&self, rel: &[u8], flags: OFlags) -> Result<OwnedFd> {
        self.check(rel)?;
        let mut dir = self.root.try_clone()?;
        let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let f = if last {
                flags
            } else {
                OFlags::DIRECTORY | OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC
            };
            dir = rustix::fs::openat(&dir, OsStr::from_bytes(part), f, Mode::empty())
                .map_err(|e| self.err(e, "opening", rel))?;
        }
        Ok(dir)
    }

    /// Refuses what is not a plain relative path: an empty, `.` or `..`
    /// component, a leading or doubled `/`, a NUL byte.
    fn check(&self, rel: &[u8]) -> Result<()> {
        let plain = !rel.contains(&0)
            && rel
                .split(|&b| b == b'/')
                .all(|c| !c.is_empty() && c != b"." && c != b"..");
        anyhow::ensure!(
            plain,
            "{}: {:?} is not a plain relative path",
            self.path.display(),
            String::from_utf8_lossy(rel)
        );
        Ok(())
    }

    fn err(&self, e: Errno, what: &str, rel: &[u8]) -> anyhow::Error {
        let hint = match e {
            Errno::XDEV | Errno::LOOP | Errno::NOTDIR => " (a link or non-directory on the way)",
            _ => "",
        };
        anyhow::anyhow!(
            "{what} {}/{}: {}{hint}",
            self.path.display(),
            String::from_utf8_lossy(rel),
            std::io::Error::from(e)
        )
    }
}

/// Owner, mode, xattrs and mtime of an open file or directory, in the order that
/// keeps them (chmod after chown, which clears setuid bits; mtime last).
pub fn set_fd_meta(fd: BorrowedFd, meta: &Meta) -> Result<(), Errno> {
    if let Some((uid, gid)) = meta.owner {
        let (u, g) = uid_gid(uid, gid);
        rustix::fs::fchown(fd, u, g)?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
    for (k, v) in meta.xattrs() {
        rustix::fs::fsetxattr(fd, k.as_str(), v, rustix::fs::XattrFlags::empty())?;
    }
    rustix::fs::futimens(fd, &times(meta.mtime))
}

fn uid_gid(uid: u32, gid: u32) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    (
        Some(rustix::fs::Uid::from_raw_unchecked(uid)),
        Some(rustix::fs::Gid::from_raw_unchecked(gid)),
    )
}

fn times(mtime: i64) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// `/proc/self/fd/N/NAME`: `name` in the directory `dir`, for the calls that
/// take only a path (lsetxattr), without a path outside the tree.
fn proc_path(dir: &OwnedFd, name: &OsStr) -> PathBuf {
    use std::os::fd::AsRawFd;
    Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_written_through_a_planted_link() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let b = Beneath::open(root.path()).unwrap();
        b.symlink(b"out", outside.path().as_os_str().as_bytes())
            .unwrap();
        b.symlink(b"up", b"..").unwrap();
        for p in [&b"out/x"[..], b"up/x", b"../x", b"/x"] {
            assert!(b.create_file(p).is_err(), "{p:?}");
            assert!(b.mkdir(p).is_err(), "{p:?}");
            assert!(b.symlink(p, b"t").is_err(), "{p:?}");
        }
        // Through the link itself, as the last name: refused, not followed.
        assert!(b.create_file(b"out").is_err());
        std::fs::write(outside.path().join("f"), b"secret").unwrap();
        b.symlink(b"lf", outside.path().join("f").as_os_str().as_bytes())
            .unwrap();
        b.hardlink(b"hl", b"lf").unwrap();
        // The hardlink names the symlink, not the file outside.
        assert!(std::fs::symlink_metadata(root.path().join("hl"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    }
}
