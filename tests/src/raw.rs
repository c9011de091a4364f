//! cdimg files made by hand, as an attacker would: blobs appended, then any
//! header at all (d4c's writer refuses invalid headers; readers must too).

use std::path::Path;

use d4c_host::digest::Digest;
use d4c_host::image::entry::{image_id, Compression, Data, Entry, Kind};
use d4c_host::image::format::{header_tail, CodecRef, Header, ImageKind, MAGIC};

/// A cdimg being made by hand: blobs appended, then any header at all.
pub struct Raw {
    body: Vec<u8>,
    /// The image config the header carries.
    pub config: String,
}

impl Default for Raw {
    fn default() -> Raw {
        Raw::new()
    }
}

impl Raw {
    /// An empty body: the magic only.
    pub fn new() -> Raw {
        Raw {
            body: MAGIC.to_vec(),
            config:
                r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                    .into(),
        }
    }

    /// Appends `data` as a stored (uncompressed) blob.
    pub fn blob(&mut self, data: &[u8]) -> (u64, u64) {
        let at = self.body.len() as u64;
        self.body.extend_from_slice(data);
        (at, data.len() as u64)
    }

    /// A file entry whose content is `data`, stored here.
    pub fn file(&mut self, path: &str, data: &[u8]) -> Entry {
        let (offset, length) = self.blob(data);
        let mut e = entry(path, Kind::File);
        e.size = Some(data.len() as u64);
        e.digest = Some(Digest::of(data));
        e.data = Some(Data::Full {
            offset,
            length,
            compression: Compression::None,
        });
        e
    }

    /// Writes the file with `entries` (sorted here, with a root added) as its
    /// tree; returns the image id.
    pub fn write(
        mut self,
        path: &Path,
        base: Option<Digest>,
        codecs: Vec<CodecRef>,
        mut entries: Vec<Entry>,
    ) -> Digest {
        entries.push(entry("", Kind::Dir));
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let header = Header {
            kind: if base.is_some() {
                ImageKind::Delta
            } else {
                ImageKind::Image
            },
            image_id: image_id(&entries),
            base_id: base,
            config: std::mem::take(&mut self.config),
            codecs,
            dicts: vec![],
            entries,
        };
        let json = serde_json::to_vec(&header).unwrap();
        let offset = self.body.len() as u64;
        self.body.extend(header_tail(&json, offset).unwrap());
        std::fs::write(path, &self.body).unwrap();
        header.image_id
    }
}

/// An entry of `kind` at `path` with default metadata.
pub fn entry(path: &str, kind: Kind) -> Entry {
    let mut e = Entry::dir(path);
    e.kind = kind;
    e
}

/// A symlink or hardlink entry at `path` to `target`.
pub fn link(path: &str, kind: Kind, target: &str) -> Entry {
    let mut e = entry(path, kind);
    e.link = Some(target.into());
    e
}

/// A block device entry (7, 0) at `path`.
pub fn device(path: &str) -> Entry {
    let mut e = entry(path, Kind::Block);
    e.rdev = Some((7, 0));
    e
}
