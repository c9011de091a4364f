//! cdimg files made by hand, as an attacker would: blobs appended, then any
//! header at all (d4c's writer refuses invalid headers; readers must too).

use std::path::Path;

use d4c_host::digest::Digest;
use d4c_host::image::entry::{image_id, Compression, Data, Entry, Kind, Step};
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
            image_id: image_id(&entries, None),
            base_id: base,
            config: std::mem::take(&mut self.config),
            codecs,
            dicts: vec![],
            entries,
            origin: None,
        };
        let json = serde_json::to_vec(&header).unwrap();
        let offset = self.body.len() as u64;
        self.body.extend(header_tail(&json, offset, MAGIC).unwrap());
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

/// The built-in codec `name` of the `d4c` binary `bin`, as a header names it.
pub fn builtin_codec(bin: &Path, name: &str) -> CodecRef {
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .args(["codec", "list", "--json"])
        .env("D4C_HOME", home.path())
        .output()
        .unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let c = list.iter().find(|c| c["name"] == name).unwrap();
    CodecRef {
        sha256: c["sha256"].as_str().unwrap().parse().unwrap(),
        name: name.into(),
        version: c["version"].as_str().unwrap().into(),
    }
}

/// A chain whose middle delta claims a 1 TiB file: `v1.cdimg` (a full image
/// with `f`), `d1.cdimg` (`f` stored in full, 4 bytes that claim 1 TiB) and
/// `d2.cdimg` (`f` as a `codec` step from that content), in `dir`.
pub fn huge_claim_chain(dir: &Path, codec: CodecRef) {
    let mut r = Raw::new();
    let f = r.file("f", b"hello world\n");
    let v1 = r.write(&dir.join("v1.cdimg"), None, vec![], vec![f]);
    let mut r = Raw::new();
    let mut f = r.file("f", b"tiny");
    let huge = Digest::of(b"a terabyte");
    f.size = Some(1 << 40);
    f.digest = Some(huge);
    let v2 = r.write(&dir.join("d1.cdimg"), Some(v1), vec![], vec![f]);
    let mut r = Raw::new();
    let (offset, length) = r.blob(b"not really a codec delta");
    let out = Digest::of(b"x");
    let mut f = entry("f", Kind::File);
    f.size = Some(1);
    f.digest = Some(out);
    f.data = Some(Data::Delta {
        source: huge,
        steps: vec![Step {
            codec: 0,
            offset,
            length,
            digest: out,
            dict: None,
        }],
    });
    r.write(&dir.join("d2.cdimg"), Some(v2), vec![codec], vec![f]);
}
