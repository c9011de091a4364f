//! The FUSE surface: a read-only file system over a [`Chain`], every request
//! answered from the header's tree, file contents from the chain, always checked
//! against the file's sha256 before the first byte is served.
//!
//! A file's content is loaded on its first read: an uncompressed blob is read in
//! place, a small stored file is decompressed into memory, and anything a codec
//! rebuilds (or any large file) is rebuilt once into the on-disk [`ContentCache`]. Loaded contents stay (within memory and descriptor
//! bounds, least recently used leaving first) so later reads cost one copy.
//! Opens are not sent to us at all (FUSE "no open"): the kernel keeps each
//! file's page cache, so warm reads never leave the kernel.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::cache::{ContentCache, Flights};
use super::tree::{self, Tree};
use crate::codec::Codecs;
use crate::digest::CheckedReader;
use crate::image::chain::{Chain, RawSource};
use crate::image::entry::{unescape_path, Compression, Data, Entry, Kind};

/// The image never changes under the mount: the kernel may cache for long.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// Stored (not codec-rebuilt) files up to this size are held in memory once
/// loaded; larger ones go through the on-disk cache.
const SMALL: u64 = 1 << 20;
/// Bounds on loaded contents kept for later reads.
const MEMORY_BUDGET: u64 = 256 << 20;
const FILE_BUDGET: usize = 512;

/// A file's content, checked, ready to serve reads from.
#[derive(Clone)]
enum Content {
    Empty,
    Memory(Arc<Vec<u8>>),
    /// `len` bytes at `offset` in `file`.
    File {
        file: Arc<File>,
        offset: u64,
        len: u64,
    },
}

/// Loaded contents by inode, with least-recently-used eviction.
#[derive(Default)]
struct Loaded {
    map: HashMap<u64, (Content, u64)>,
    clock: u64,
    memory: u64,
    files: usize,
}

impl Loaded {
    fn get(&mut self, ino: u64) -> Option<Content> {
        self.clock += 1;
        let clock = self.clock;
        self.map.get_mut(&ino).map(|(c, used)| {
            *used = clock;
            c.clone()
        })
    }

    fn insert(&mut self, ino: u64, c: Content) {
        self.clock += 1;
        match &c {
            Content::Memory(v) => self.memory += v.len() as u64,
            Content::File { .. } => self.files += 1,
            Content::Empty => {}
        }
        self.map.insert(ino, (c, self.clock));
        while self.memory > MEMORY_BUDGET || self.files > FILE_BUDGET {
            let Some(victim) = self
                .map
                .iter()
                .filter(|(i, (c, _))| **i != ino && !matches!(c, Content::Empty))
                .min_by_key(|(_, (_, used))| *used)
                .map(|(i, _)| *i)
            else {
                break;
            };
            match self.map.remove(&victim) {
                Some((Content::Memory(v), _)) => self.memory -= v.len() as u64,
                Some((Content::File { .. }, _)) => self.files -= 1,
                _ => {}
            }
        }
    }
}

/// The file system of one mounted chain.
pub struct ImageFs {
    chain: Arc<Chain>,
    codecs: Codecs,
    cache: Arc<ContentCache>,
    tree: Tree,
    /// Each layer's file, shared by the contents read in place.
    layer_files: Vec<Arc<File>>,
    loaded: Mutex<Loaded>,
    loading: Flights<u64>,
    /// Files whose rebuild failed, with why: a codec that failed (or ran out
    /// of time) on a file fails the same way again, so later reads get the
    /// error at once instead of another run up to the codec's time cap.
    failed: Mutex<std::collections::HashMap<u64, String>>,
}

impl ImageFs {
    /// A file system for `chain`, rebuilding contents into `cache`.
    pub fn new(chain: Arc<Chain>, codecs: Codecs, cache: Arc<ContentCache>) -> Result<ImageFs> {
        let tree = Tree::new(chain.top())?;
        let layer_files = chain
            .layers()
            .iter()
            .map(|r| r.file().try_clone().map(Arc::new))
            .collect::<std::io::Result<_>>()?;
        Ok(ImageFs {
            chain,
            codecs,
            cache,
            tree,
            layer_files,
            loaded: Mutex::default(),
            failed: Mutex::default(),
            loading: Flights::default(),
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

    /// The checked content of inode `ino`, loading it on first use (once, however
    /// many readers ask at the same time).
    fn content(&self, ino: u64, e: &Entry) -> Result<Content> {
        if let Some(c) = self.loaded.lock().expect("lock").get(ino) {
            return Ok(c);
        }
        if let Some(why) = self.failed.lock().expect("lock").get(&ino) {
            anyhow::bail!("{why} (failed before; not tried again)");
        }
        self.loading.run(ino, || {
            if let Some(c) = self.loaded.lock().expect("lock").get(ino) {
                return Ok(c);
            }
            if let Some(why) = self.failed.lock().expect("lock").get(&ino) {
                anyhow::bail!("{why} (failed before; not tried again)");
            }
            match self.load(e) {
                Ok(c) => {
                    self.loaded.lock().expect("lock").insert(ino, c.clone());
                    Ok(c)
                }
                Err(err) => {
                    let why = format!("{err:#}");
                    self.failed.lock().expect("lock").insert(ino, why);
                    Err(err)
                }
            }
        })
    }

    fn load(&self, e: &Entry) -> Result<Content> {
        let size = e.file_size();
        let digest = e.digest.context("not a regular file")?;
        if size == 0 {
            return Ok(Content::Empty);
        }
        let raw = self.chain.raw_source(e);
        if let Some(RawSource::Blob(reader, src)) = &raw {
            if let Some(Data::Full {
                offset,
                length,
                compression: Compression::None,
            }) = src.data
            {
                let reader = *reader;
                // Stored as is: check it once, then serve it in place.
                let mut check =
                    CheckedReader::new(reader.blob_reader(offset, length), size, digest, "");
                std::io::copy(&mut check, &mut std::io::sink())
                    .with_context(|| format!("{}: stored content", reader.path().display()))?;
                let layer = self
                    .chain
                    .layers()
                    .iter()
                    .position(|r| std::ptr::eq(r, reader))
                    .expect("a layer of the chain");
                return Ok(Content::File {
                    file: self.layer_files[layer].clone(),
                    offset,
                    len: size,
                });
            }
        }
        // Small files that only need decompressing are held in memory (cheap to
        // redo); anything a codec rebuilds goes to the disk cache.
        if size <= SMALL && raw.is_some() {
            let mut data = Vec::with_capacity(size as usize);
            self.chain
                .open_content(&self.codecs, e)?
                .read_to_end(&mut data)?;
            return Ok(Content::Memory(Arc::new(data)));
        }
        let file = self.cache.get(digest, size, || {
            self.chain.open_content_unchecked(&self.codecs, e)
        })?;
        Ok(Content::File {
            file: Arc::new(file),
            offset: 0,
            len: size,
        })
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
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        use fuser::InitFlags as F;
        // Lookups in one directory may run in parallel (the tree is immutable),
        // symlink targets may be cached; both only if the kernel offers them.
        for flag in [F::FUSE_PARALLEL_DIROPS, F::FUSE_CACHE_SYMLINKS] {
            let _ = config.add_capabilities(flag);
        }
        // More readahead requests in flight than the default 12.
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

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

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // "Not implemented" makes the kernel stop sending opens and releases and
        // keep page caches across opens: contents never change. (The mount is
        // read-only, so the VFS refuses writers before they reach us.)
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let Some((_, e)) = self.entry(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if e.kind != Kind::File {
            return reply.error(Errno::EINVAL);
        }
        let content = match self.content(ino.0, e) {
            Ok(c) => c,
            Err(err) => {
                // The one place a reader learns why: the log names the file.
                eprintln!("d4c mount: EIO for /{}: {err:#}", e.path);
                return reply.error(Errno::EIO);
            }
        };
        let want = |len: u64| {
            let start = offset.min(len);
            (start, (len - start).min(size as u64) as usize)
        };
        match content {
            Content::Empty => reply.data(&[]),
            Content::Memory(v) => {
                let (start, n) = want(v.len() as u64);
                reply.data(&v[start as usize..start as usize + n]);
            }
            Content::File {
                file,
                offset: base,
                len,
            } => {
                let (start, n) = want(len);
                let mut buf = vec![0u8; n];
                match file.read_exact_at(&mut buf, base + start) {
                    Ok(()) => reply.data(&buf),
                    Err(err) => {
                        eprintln!("d4c mount: EIO reading /{}: {err}", e.path);
                        reply.error(Errno::EIO);
                    }
                }
            }
        }
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
