//! The FUSE surface: a read-only file system over a [`Chain`], every request
//! answered from the header's tree, file contents from the chain (an
//! uncompressed blob read in place, anything else rebuilt once into the
//! [`ContentCache`]), always checked against the file's sha256 first.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyXattr, Request,
};

use super::cache::ContentCache;
use super::tree::{self, Tree};
use crate::codec::Codecs;
use crate::digest::CheckedReader;
use crate::image::chain::{Chain, RawSource};
use crate::image::entry::{unescape_path, Compression, Data, Entry, Kind};

/// The image never changes under the mount: the kernel may cache for long.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// An open file: `len` bytes at `offset` in `file` (none for empty content).
struct Handle {
    file: Option<Arc<File>>,
    offset: u64,
    len: u64,
}

/// The file system of one mounted chain.
pub struct ImageFs {
    chain: Arc<Chain>,
    codecs: Codecs,
    cache: Arc<ContentCache>,
    tree: Tree,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Uncompressed blobs (layer, offset) whose content was checked once.
    verified: Mutex<HashSet<(usize, u64)>>,
}

impl ImageFs {
    /// A file system for `chain`, rebuilding contents into `cache`.
    pub fn new(chain: Arc<Chain>, codecs: Codecs, cache: Arc<ContentCache>) -> Result<ImageFs> {
        let tree = Tree::new(chain.top())?;
        Ok(ImageFs {
            chain,
            codecs,
            cache,
            tree,
            handles: Mutex::default(),
            next_fh: AtomicU64::new(1),
            verified: Mutex::default(),
        })
    }

    fn entry(&self, ino: INodeNo) -> Option<(&tree::Node, &Entry)> {
        let node = self.tree.get(ino.0)?;
        Some((node, tree::entry(self.chain.top(), node)))
    }

    fn attr(&self, ino: u64, node: &tree::Node, e: &Entry) -> FileAttr {
        let size = match e.kind {
            Kind::File | Kind::Hardlink => e.file_size(),
            Kind::Symlink => e
                .link
                .as_deref()
                .map(|l| unescape_path(l).map(|b| b.len()).unwrap_or(0))
                .unwrap_or(0) as u64,
            // What most file systems report; some tools expect non-zero.
            Kind::Dir => 4096,
            _ => 0,
        };
        let mtime = if e.mtime >= 0 {
            UNIX_EPOCH + Duration::from_secs(e.mtime as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(e.mtime.unsigned_abs())
        };
        let (maj, min) = e.rdev.unwrap_or((0, 0));
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: file_type(e.kind),
            perm: (e.mode & 0o7777) as u16,
            nlink: node.nlink,
            uid: e.uid,
            gid: e.gid,
            rdev: libc::makedev(maj, min) as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Where the content of `e` can be read, checked: an uncompressed blob in
    /// place, or the cache (rebuilding it there on first use).
    fn open_content(&self, e: &Entry) -> Result<Handle> {
        let size = e.file_size();
        let digest = e.digest.context("not a regular file")?;
        if size == 0 {
            return Ok(Handle {
                file: None,
                offset: 0,
                len: 0,
            });
        }
        if let Some(RawSource::Blob(reader, src)) = self.chain.raw_source(e) {
            if let Some(Data::Full {
                offset,
                length,
                compression: Compression::None,
            }) = src.data
            {
                let layer = self.layer_index(reader);
                let key = (layer, offset);
                if !self.verified.lock().expect("lock").contains(&key) {
                    let mut check =
                        CheckedReader::new(reader.blob_reader(offset, length), size, digest, "");
                    std::io::copy(&mut check, &mut std::io::sink())
                        .with_context(|| format!("{}: stored content", reader.path().display()))?;
                    self.verified.lock().expect("lock").insert(key);
                }
                return Ok(Handle {
                    file: Some(Arc::new(reader.file().try_clone()?)),
                    offset,
                    len: size,
                });
            }
        }
        let file = self
            .cache
            .get(digest, size, || self.chain.open_content(&self.codecs, e))?;
        Ok(Handle {
            file: Some(Arc::new(file)),
            offset: 0,
            len: size,
        })
    }

    fn layer_index(&self, reader: &crate::image::format::Reader) -> usize {
        self.chain
            .layers()
            .iter()
            .position(|r| std::ptr::eq(r, reader))
            .unwrap_or(usize::MAX)
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File | Kind::Hardlink => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Char => FileType::CharDevice,
        Kind::Block => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
    }
}

/// Answers an xattr request for a value (or a name list) of `data`.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if (size as usize) < data.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for ImageFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.tree.lookup(parent.0, name.as_bytes()) {
            Some(ino) => {
                let (node, e) = self.entry(INodeNo(ino)).expect("child inode exists");
                reply.entry(&TTL, &self.attr(ino, node, e), Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.entry(ino) {
            Some((node, e)) => reply.attr(&TTL, &self.attr(ino.0, node, e)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.entry(ino) {
            Some((_, e)) if e.kind == Kind::Symlink => {
                match unescape_path(e.link.as_deref().unwrap_or_default()) {
                    Ok(target) => reply.data(&target),
                    Err(_) => reply.error(Errno::EIO),
                }
            }
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let Some((_, e)) = self.entry(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if e.kind != Kind::File {
            return reply.error(Errno::EINVAL);
        }
        match self.open_content(e) {
            Ok(h) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.handles.lock().expect("lock").insert(fh, h);
                // Contents never change: let the kernel keep its page cache.
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Err(err) => {
                // The one place a reader learns why: the log names the file.
                eprintln!("d4c mount: EIO for /{}: {err:#}", e.path);
                reply.error(Errno::EIO);
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let (file, base, len) = {
            let handles = self.handles.lock().expect("lock");
            let Some(h) = handles.get(&fh.0) else {
                return reply.error(Errno::EBADF);
            };
            (h.file.clone(), h.offset, h.len)
        };
        if offset >= len {
            return reply.data(&[]);
        }
        let n = (len - offset).min(size as u64) as usize;
        let Some(file) = file else {
            return reply.data(&[]);
        };
        let mut buf = vec![0u8; n];
        match file.read_exact_at(&mut buf, base + offset) {
            Ok(()) => reply.data(&buf),
            Err(err) => {
                eprintln!("d4c mount: EIO reading inode {}: {err}", _ino.0);
                reply.error(Errno::EIO);
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.handles.lock().expect("lock").remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.entry(ino) {
            Some((_, e)) if e.kind == Kind::Dir => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(node) = self.tree.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (node.parent, FileType::Directory, OsStr::new("..")),
        ];
        let children = node.children.iter().map(|(name, child)| {
            let e = tree::entry(self.chain.top(), self.tree.get(*child).expect("child"));
            (*child, file_type(e.kind), OsStr::from_bytes(name))
        });
        for (i, (child, kind, name)) in dots
            .into_iter()
            .chain(children)
            .enumerate()
            .skip(offset as usize)
        {
            // The offset given back is that of the next entry.
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let bytes: u64 = self.chain.top().entries.iter().map(|e| e.file_size()).sum();
        reply.statfs(
            bytes.div_ceil(4096),
            0,
            0,
            self.tree.len() as u64,
            0,
            4096,
            255,
            4096,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some((_, e)) = self.entry(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match name.to_str().and_then(|n| e.xattrs.get(n)) {
            Some(v) => reply_xattr(reply, size, v),
            None => reply.error(Errno::NO_XATTR),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some((_, e)) = self.entry(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let mut names = Vec::new();
        for k in e.xattrs.keys() {
            names.extend_from_slice(k.as_bytes());
            names.push(0);
        }
        reply_xattr(reply, size, &names);
    }

    fn access(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mask: fuser::AccessFlags,
        reply: fuser::ReplyEmpty,
    ) {
        // Permissions are checked by the kernel (default_permissions).
        match self.entry(ino) {
            Some(_) => reply.ok(),
            None => reply.error(Errno::ENOENT),
        }
    }
}
