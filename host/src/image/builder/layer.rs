//! Applying OCI layers (tar streams) in order to an in-memory tree, as a container
//! runtime would: `.wh.` whiteouts delete, `.wh..wh..opq` makes a directory opaque
//! to lower layers, hardlinks share an inode, parents appear implicitly.
//! Entries that would escape the root are rejected with the entry named.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{bail, Context, Result};
use tar::EntryType;

use crate::digest::Digest;
use crate::image::entry::{escape_path, Entry, Kind};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

struct Node {
    entry: Entry,
    /// Files only: entries with the same inode are hardlinks of each other.
    inode: u64,
    /// The layer that last wrote this path.
    layer: usize,
}

/// Receives each regular file's content as the layers are read; returns its digest.
pub trait ContentSink {
    /// Consumes `size` bytes from `r`, stores them, returns their sha256.
    fn store(&mut self, r: &mut dyn Read, size: u64) -> Result<Digest>;

    /// Like [`ContentSink::store`] for a sparse file, whose content (holes
    /// filled with zeros) is not the bytes the tar stream holds for it.
    fn store_sparse(&mut self, r: &mut dyn Read, size: u64) -> Result<Digest> {
        self.store(r, size)
    }

    /// Told the tree path of the file whose content comes next.
    fn next_path(&mut self, _path: &str) {}
}

/// The tree being built from layers.
pub struct TreeBuilder {
    nodes: BTreeMap<String, Node>,
    next_inode: u64,
    layer: usize,
}

impl Default for TreeBuilder {
    fn default() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            String::new(),
            Node {
                entry: Entry::dir(""),
                inode: 0,
                layer: 0,
            },
        );
        TreeBuilder {
            nodes,
            next_inode: 1,
            layer: 0,
        }
    }
}

/// Normalises a tar path: drops leading `/` and `./`, empty and `.` components;
/// rejects `..`.
fn normalize(raw: &[u8]) -> Result<String> {
    let s = escape_path(raw);
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => bail!("entry {s:?} escapes the root (has a '..' component)"),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn parent_of(p: &str) -> &str {
    p.rfind('/').map_or("", |i| &p[..i])
}

fn pax_number(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    s.split('.').next()?.parse().ok()
}

impl TreeBuilder {
    /// Applies one layer's tar stream (already decompressed).
    pub fn apply_layer(&mut self, tar_stream: impl Read, sink: &mut dyn ContentSink) -> Result<()> {
        self.layer += 1;
        let mut archive = tar::Archive::new(tar_stream);
        for item in archive.entries().context("reading the layer tar")? {
            let mut te = item.context("reading a tar entry")?;
            let raw_path = te.path_bytes().into_owned();
            let path = normalize(&raw_path)?;
            self.apply_entry(&mut te, path, sink)
                .with_context(|| format!("entry {:?}", escape_path(&raw_path)))?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        te: &mut tar::Entry<'_, R>,
        path: String,
        sink: &mut dyn ContentSink,
    ) -> Result<()> {
        let name = path.rsplit('/').next().unwrap_or_default();
        let parent = parent_of(&path).to_string();
        if name == OPAQUE {
            self.check_parents(&path)?;
            let layer = self.layer;
            self.remove_children(&parent, |n| n.layer < layer);
            return Ok(());
        }
        if let Some(target) = name.strip_prefix(WHITEOUT) {
            self.check_parents(&path)?;
            let victim = if parent.is_empty() {
                target.to_string()
            } else {
                format!("{parent}/{target}")
            };
            self.remove(&victim);
            return Ok(());
        }

        let header = te.header().clone();
        let mut xattrs = BTreeMap::new();
        let (mut uid, mut gid) = (header.uid()? as u32, header.gid()? as u32);
        let mut mtime = header.mtime().unwrap_or(0) as i64;
        if let Some(pax) = te.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let key = ext.key().unwrap_or_default();
                if let Some(x) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(x.to_string(), ext.value_bytes().to_vec());
                } else if key == "mtime" {
                    mtime = pax_number(ext.value_bytes()).unwrap_or(mtime);
                } else if key == "uid" {
                    uid = pax_number(ext.value_bytes()).unwrap_or(uid as i64) as u32;
                } else if key == "gid" {
                    gid = pax_number(ext.value_bytes()).unwrap_or(gid as i64) as u32;
                }
            }
        }
        let mut entry = Entry::dir(&path);
        entry.mode = header.mode()? & 0o7777;
        entry.uid = uid;
        entry.gid = gid;
        entry.mtime = mtime;
        entry.xattrs = xattrs;

        let mut inode = 0;
        match header.entry_type() {
            EntryType::Directory => entry.kind = Kind::Dir,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = te.size();
                sink.next_path(&path);
                let digest = if header.entry_type() == EntryType::GNUSparse {
                    sink.store_sparse(te, size)?
                } else {
                    sink.store(te, size)?
                };
                entry.kind = Kind::File;
                entry.size = Some(size);
                entry.digest = Some(digest);
                inode = self.new_inode();
            }
            EntryType::Symlink => {
                entry.kind = Kind::Symlink;
                let target = te.link_name_bytes().context("symlink without a target")?;
                entry.link = Some(escape_path(&target));
            }
            EntryType::Link => {
                let target =
                    normalize(&te.link_name_bytes().context("hardlink without a target")?)?;
                let t = match self.nodes.get(&target) {
                    Some(n) if n.entry.kind == Kind::File => n,
                    Some(_) => bail!("hardlink to {target:?}, which is not a regular file"),
                    None => bail!("hardlink to {target:?}, which does not exist"),
                };
                // A hardlink is another name of the target's inode: same content and
                // metadata.
                let mut e = t.entry.clone();
                e.path = path.clone();
                inode = t.inode;
                entry = e;
            }
            EntryType::Char | EntryType::Block => {
                entry.kind = if header.entry_type() == EntryType::Char {
                    Kind::Char
                } else {
                    Kind::Block
                };
                entry.rdev = Some((
                    header.device_major()?.unwrap_or(0),
                    header.device_minor()?.unwrap_or(0),
                ));
            }
            EntryType::Fifo => entry.kind = Kind::Fifo,
            other => bail!("unsupported tar entry type {other:?}"),
        }
        if path.is_empty() {
            if entry.kind != Kind::Dir {
                bail!("the root must be a directory");
            }
            let layer = self.layer;
            let root = self.nodes.get_mut("").expect("root");
            root.entry = Entry {
                path: String::new(),
                ..entry
            };
            root.layer = layer;
            return Ok(());
        }
        self.check_parents(&path)?;
        self.ensure_parents(&path);
        match self.nodes.get(&path) {
            // A directory over a directory keeps the children.
            Some(old) if old.entry.kind == Kind::Dir && entry.kind == Kind::Dir => {}
            Some(_) => self.remove(&path),
            None => {}
        }
        let layer = self.layer;
        self.nodes.insert(
            path,
            Node {
                entry,
                inode,
                layer,
            },
        );
        Ok(())
    }

    /// The content digest of the regular file (or hardlink to one) at `path`
    /// in the tree as it stands.
    pub fn file_digest(&self, path: &str) -> Option<Digest> {
        let n = self.nodes.get(path)?;
        (n.entry.kind == Kind::File).then_some(n.entry.digest?)
    }

    fn new_inode(&mut self) -> u64 {
        self.next_inode += 1;
        self.next_inode
    }

    /// Rejects a path whose existing parent components are not directories
    /// (e.g. `a/b` when `a` is a symlink: writing it would follow the link).
    fn check_parents(&self, path: &str) -> Result<()> {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let prefix = &path[..at + i];
            if let Some(n) = self.nodes.get(prefix) {
                if n.entry.kind != Kind::Dir {
                    bail!(
                        "path goes through {prefix:?}, which is a {:?}, not a directory",
                        n.entry.kind
                    );
                }
            }
            at += i + 1;
        }
        Ok(())
    }

    fn ensure_parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let prefix = &path[..at + i];
            if !self.nodes.contains_key(prefix) {
                let layer = self.layer;
                self.nodes.insert(
                    prefix.to_string(),
                    Node {
                        entry: Entry::dir(prefix),
                        inode: 0,
                        layer,
                    },
                );
            }
            at += i + 1;
        }
    }

    /// Removes `path` and everything below it.
    fn remove(&mut self, path: &str) {
        self.nodes.remove(path);
        self.remove_children(path, |_| true);
    }

    fn remove_children(&mut self, dir: &str, pred: impl Fn(&Node) -> bool) {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let doomed: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, n)| !k.is_empty() && pred(n))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }

    /// The final tree, sorted: the first name of each inode is a `File`, later
    /// names are `Hardlink`s to it. File entries have no `data` yet.
    pub fn finish(self) -> Vec<Entry> {
        let mut first_name: std::collections::HashMap<u64, String> = Default::default();
        let mut out = Vec::with_capacity(self.nodes.len());
        for (path, node) in self.nodes {
            let mut e = node.entry;
            if e.kind == Kind::File {
                match first_name.get(&node.inode) {
                    Some(first) => {
                        e = Entry {
                            kind: Kind::Hardlink,
                            link: Some(first.clone()),
                            size: None,
                            digest: None,
                            ..e
                        };
                    }
                    None => {
                        first_name.insert(node.inode, path.clone());
                    }
                }
            }
            e.path = path;
            out.push(e);
        }
        out
    }
}
