//! The inode table of a mounted image: stable inode numbers (the entry at index
//! `i` of the header is inode `i + 1`, so the root is 1), a hardlink sharing the inode of
//! the file it names, and each directory's children by name.

use std::collections::HashMap;

use anyhow::{Context, Result};

use crate::image::entry::{unescape_path, Entry, Kind};
use crate::image::format::Header;

/// The root's inode number.
pub const ROOT: u64 = 1;

/// One inode: the entry that carries its metadata, and what hangs off it.
#[derive(Debug)]
pub struct Node {
    /// Index of the entry in the header (the first name of a hardlinked file).
    pub entry: usize,
    /// The parent directory's inode (the root's parent is itself).
    pub parent: u64,
    /// Names that refer to this inode.
    pub nlink: u32,
    /// Directories: children in tree order, as (name, inode).
    pub children: Vec<(Vec<u8>, u64)>,
    /// Directories: children by name (index into `children`).
    pub by_name: HashMap<Vec<u8>, usize>,
}

/// All inodes of an image.
#[derive(Debug)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    /// Builds the table from a (validated) header.
    pub fn new(header: &Header) -> Result<Tree> {
        let entries = &header.entries;
        // Inode of every path, hardlinks resolved to their target's inode.
        let mut ino_of: HashMap<&str, u64> = HashMap::with_capacity(entries.len());
        let mut nodes: Vec<Node> = Vec::with_capacity(entries.len() + 1);
        for (i, e) in entries.iter().enumerate() {
            let ino = i as u64 + 1;
            let own = match e.kind {
                Kind::Hardlink => {
                    let target = e.link.as_deref().context("hardlink without target")?;
                    *ino_of
                        .get(target)
                        .with_context(|| format!("{}: hardlink to unknown {target}", e.path))?
                }
                _ => ino,
            };
            ino_of.insert(&e.path, own);
            nodes.push(Node {
                entry: i,
                parent: ROOT,
                nlink: if e.kind == Kind::Dir { 2 } else { 1 },
                children: Vec::new(),
                by_name: HashMap::new(),
            });
        }
        let mut tree = Tree { nodes };
        anyhow::ensure!(
            entries
                .first()
                .is_some_and(|e| e.path.is_empty() && e.kind == Kind::Dir),
            "the tree has no root directory"
        );
        for e in entries.iter().skip(1) {
            let own = ino_of[e.path.as_str()];
            let (parent_path, name) = match e.path.rsplit_once('/') {
                Some((p, n)) => (p, n),
                None => ("", e.path.as_str()),
            };
            let parent = *ino_of
                .get(parent_path)
                .with_context(|| format!("{}: no parent directory", e.path))?;
            let name = unescape_path(name)?;
            let p = tree.slot(parent);
            p.by_name.insert(name.clone(), p.children.len());
            p.children.push((name, own));
            if e.kind == Kind::Dir {
                p.nlink += 1;
                tree.slot(own).parent = parent;
            } else if e.kind == Kind::Hardlink {
                tree.slot(own).nlink += 1;
            }
        }
        Ok(tree)
    }

    fn slot(&mut self, ino: u64) -> &mut Node {
        &mut self.nodes[(ino - 1) as usize]
    }

    /// The node of inode `ino`, if there is one.
    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(usize::try_from(ino).ok()?.checked_sub(1)?)
    }

    /// The inode of `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let p = self.get(parent)?;
        p.by_name.get(name).map(|&i| p.children[i].1)
    }

    /// The number of inodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no inodes (never, for a valid image).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// The entry of a node.
pub fn entry<'a>(header: &'a Header, node: &Node) -> &'a Entry {
    &header.entries[node.entry]
}
