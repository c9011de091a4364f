//! Entries of an image's file tree, how their content is stored, and the image id.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hasher};

/// The type of a tree entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A further name of an earlier `File` entry (same inode).
    Hardlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A named pipe.
    Fifo,
}

/// How a regular file's content is stored in a cdimg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Data {
    /// Empty content; no blob.
    Inline,
    /// A blob holding the whole content.
    Full {
        /// Absolute offset of the blob in the file.
        offset: u64,
        /// Blob length.
        length: u64,
        /// How the blob is compressed.
        compression: Compression,
    },
    /// Delta only: the base image has content with the entry's digest.
    Same,
    /// Delta only: the base content with digest `source`, patched by `steps`.
    Delta {
        /// Digest of the base content the first step applies to.
        source: Digest,
        /// Codec deltas applied in order.
        steps: Vec<Step>,
    },
}

/// Blob compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as is.
    None,
    /// One zstd frame.
    Zstd,
}

/// One codec delta in a [`Data::Delta`] chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Index into the header's codec table.
    pub codec: u32,
    /// Absolute offset of the delta blob.
    pub offset: u64,
    /// Delta blob length.
    pub length: u64,
    /// sha256 of this step's output.
    pub digest: Digest,
    /// Index into the header's dictionary table: the codec's base input is that
    /// dictionary followed by the previous content (docs/FORMAT.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dict: Option<u32>,
}

/// One entry of the file tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path, `/`-separated; see [`escape_path`] for non-UTF-8 bytes.
    pub path: String,
    /// Entry type.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes (values base64 in JSON).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "xattr_b64"
    )]
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Content length (files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Content sha256 (files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Symlink target, or the path a hardlink shares its inode with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Device numbers (char and block devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<(u32, u32)>,
    /// How the content is stored (files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
}

impl Entry {
    /// A directory entry with default metadata (for parents a layer left implicit).
    pub fn dir(path: &str) -> Entry {
        Entry {
            path: path.to_string(),
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: BTreeMap::new(),
            size: None,
            digest: None,
            link: None,
            rdev: None,
            data: None,
        }
    }

    /// Content length of a file entry (0 for others).
    pub fn file_size(&self) -> u64 {
        self.size.unwrap_or(0)
    }
}

mod xattr_b64 {
    use std::collections::BTreeMap;

    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let e = base64::engine::general_purpose::STANDARD;
        m.iter()
            .map(|(k, v)| (k.clone(), e.encode(v)))
            .collect::<BTreeMap<_, _>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let e = base64::engine::general_purpose::STANDARD;
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                e.decode(v)
                    .map(|v| (k, v))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

/// Escapes a path's bytes: UTF-8 stays, other bytes become `\xNN`, `\` becomes `\\`.
pub fn escape_path(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The bytes a path escaped by [`escape_path`] stands for.
pub fn unescape_path(s: &str) -> Result<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') if i + 4 <= b.len() => {
                let h = std::str::from_utf8(&b[i + 2..i + 4])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => out.push(v),
                    None => bail!("bad escape in path {s:?}"),
                }
                i += 4;
            }
            _ => bail!("bad escape in path {s:?}"),
        }
    }
    Ok(out)
}

/// Whether `p` is a path a cdimg may name: empty (the root), or `/`-separated
/// components, escaped canonically (`escape_path(unescape_path(p)) == p`, so
/// no component can decode to `..` or hide a `/`), none of them empty, `.`,
/// `..`, or holding a NUL byte. Everything that turns a path into a file name
/// (extract, export, mount) relies on this.
pub fn valid_path(p: &str) -> bool {
    p.is_empty()
        || (canonical(p)
            && p.split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0')))
}

/// Whether `t` is a symlink target a cdimg may hold: non-empty, canonically
/// escaped, no NUL byte. It may be absolute or climb with `..`: it is data, and
/// nothing d4c writes ever resolves through it.
pub fn valid_link_target(t: &str) -> bool {
    !t.is_empty() && !t.contains('\0') && canonical(t)
}

/// Whether `k` is an extended attribute name a cdimg may hold: non-empty, no
/// NUL, and no `=` or newline, which would break a PAX record on export.
pub fn valid_xattr_name(k: &str) -> bool {
    !k.is_empty() && !k.contains(['\0', '=', '\n'])
}

/// Whether `s` is in the one form [`escape_path`] gives its bytes.
fn canonical(s: &str) -> bool {
    !s.contains('\\') || unescape_path(s).is_ok_and(|b| escape_path(&b) == s)
}

/// The canonical, storage-independent form of an entry that the image id hashes.
#[derive(Serialize)]
struct Canonical<'a> {
    path: &'a str,
    #[serde(rename = "type")]
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: BTreeMap<&'a str, String>,
    size: Option<u64>,
    digest: Option<Digest>,
    link: Option<&'a str>,
    rdev: Option<(u32, u32)>,
}

/// The image id: sha256 over the canonical lines of every entry, in order,
/// then, for an image that keeps its origin, one line naming the original
/// manifest (the same tree from another image is another image).
pub fn image_id(entries: &[Entry], manifest: Option<&Digest>) -> Digest {
    let mut h = Hasher::default();
    canonical_lines(entries, |line| h.update(line));
    if let Some(m) = manifest {
        h.update(format!("origin {}\n", m.oci()).as_bytes());
    }
    h.finish()
}

/// The canonical lines the image id hashes, concatenated: the same bytes for
/// every cdimg that yields the image (used as a shared dictionary).
pub fn canonical_tree(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    canonical_lines(entries, |line| out.extend_from_slice(line));
    out
}

fn canonical_lines(entries: &[Entry], mut emit: impl FnMut(&[u8])) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    for e in entries {
        let c = Canonical {
            path: &e.path,
            kind: e.kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            xattrs: e
                .xattrs
                .iter()
                .map(|(k, v)| (k.as_str(), b64.encode(v)))
                .collect(),
            size: e.size,
            digest: e.digest,
            link: e.link.as_deref(),
            rdev: e.rdev,
        };
        emit(serde_json::to_string(&c).expect("serialisable").as_bytes());
        emit(b"\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        for p in [
            &b"usr/bin/ls"[..],
            b"odd\xff\xfename",
            b"back\\slash",
            "caf\u{e9}".as_bytes(),
            b"\\x41",
        ] {
            assert_eq!(unescape_path(&escape_path(p)).unwrap(), p);
        }
        assert!(unescape_path("bad\\q").is_err());
        assert!(unescape_path("bad\\x4").is_err());
    }

    #[test]
    fn only_canonical_contained_paths_are_valid() {
        for ok in [
            "",
            "etc",
            "usr/bin/ls",
            "odd\\xff",
            "back\\\\slash",
            "..a/b..",
            ".hidden",
        ] {
            assert!(valid_path(ok), "{ok:?}");
        }
        for bad in [
            "/etc",
            "etc/",
            "a//b",
            ".",
            "..",
            "a/../b",
            "a/./b",
            // escapes that decode to what a plain name may not be
            "\\x2e\\x2e/etc",
            "a\\x2fb",
            "\\x2e",
            "nul\\x00",
            // a valid UTF-8 byte escaped, a bad escape, a literal NUL
            "\\x41",
            "bad\\q",
            "nul\0byte",
        ] {
            assert!(!valid_path(bad), "{bad:?}");
        }
        assert!(valid_link_target("/etc/shadow") && valid_link_target("../../x"));
        assert!(!valid_link_target("") && !valid_link_target("a\0b"));
        assert!(!valid_link_target("\\x2f"));
        assert!(valid_xattr_name("user.x") && !valid_xattr_name("a=b"));
    }

    #[test]
    fn id_ignores_storage_but_not_metadata() {
        let mut e = Entry::dir("etc");
        let a = image_id(std::slice::from_ref(&e), None);
        e.data = Some(Data::Same);
        assert_eq!(image_id(std::slice::from_ref(&e), None), a);
        e.mode = 0o700;
        assert_ne!(image_id(std::slice::from_ref(&e), None), a);
    }
}
