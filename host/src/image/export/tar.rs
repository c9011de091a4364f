//! The layer tar of an export: one entry per tree entry, in tree order (parents
//! before children, a hardlink after the file it names), metadata exactly as in
//! the tree, so the same tree always gives the same bytes.
//!
//! Headers are ustar; what ustar cannot hold (long or non-UTF-8 names, xattrs,
//! sizes of 8 GiB and more, times before 1970) goes in a PAX extended header, as
//! Go's archive/tar (containerd, umoci) writes and reads it.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};
use tar::{EntryType, Header};

use crate::image::entry::{unescape_path, Entry, Kind};

/// Writes tree entries as a tar stream.
pub struct TarWriter<W: Write> {
    builder: tar::Builder<W>,
}

impl<W: Write> TarWriter<W> {
    /// Starts a tar stream on `out`.
    pub fn new(out: W) -> Self {
        TarWriter {
            builder: tar::Builder::new(out),
        }
    }

    /// Appends `e`; `content` supplies a regular file's bytes.
    pub fn append(&mut self, e: &Entry, content: Option<&mut dyn Read>) -> Result<()> {
        self.append_inner(e, content)
            .with_context(|| format!("writing {} to the layer", display(&e.path)))
    }

    fn append_inner(&mut self, e: &Entry, content: Option<&mut dyn Read>) -> Result<()> {
        let mut name = if e.path.is_empty() {
            b".".to_vec()
        } else {
            unescape_path(&e.path)?
        };
        if e.kind == Kind::Dir {
            name.push(b'/');
        }
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut h = Header::new_ustar();
        h.set_entry_type(match e.kind {
            Kind::File => EntryType::Regular,
            Kind::Dir => EntryType::Directory,
            Kind::Symlink => EntryType::Symlink,
            Kind::Hardlink => EntryType::Link,
            Kind::Char => EntryType::Char,
            Kind::Block => EntryType::Block,
            Kind::Fifo => EntryType::Fifo,
        });
        h.set_mode(e.mode);
        h.set_uid(e.uid.into());
        h.set_gid(e.gid.into());
        h.set_mtime(e.mtime.max(0) as u64);
        if e.mtime < 0 {
            pax.push(("mtime".into(), e.mtime.to_string().into_bytes()));
        }
        let size = if e.kind == Kind::File {
            e.file_size()
        } else {
            0
        };
        h.set_size(size);
        if size >= 8 << 30 {
            pax.push(("size".into(), size.to_string().into_bytes()));
        }
        if let Some((maj, min)) = e.rdev {
            h.set_device_major(maj)?;
            h.set_device_minor(min)?;
        }
        if !set_name(&mut h, &name) {
            pax.push(("path".into(), name.clone()));
        }
        if let Some(link) = &e.link {
            let target = unescape_path(link)?;
            let fits = target.len() <= 100
                && std::str::from_utf8(&target).is_ok()
                && h.set_link_name(OsStr::from_bytes(&target)).is_ok();
            if !fits {
                pax.push(("linkpath".into(), target));
            }
        }
        for (k, v) in &e.xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        if !pax.is_empty() {
            self.builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        h.set_cksum();
        match content {
            Some(r) => {
                let mut counted = r.take(size + 1);
                self.builder.append(&h, &mut counted)?;
                anyhow::ensure!(counted.limit() == 1, "content is not {size} bytes long");
            }
            None => self.builder.append(&h, std::io::empty())?,
        }
        Ok(())
    }

    /// Ends the archive; returns the writer.
    pub fn finish(self) -> Result<W> {
        Ok(self.builder.into_inner()?)
    }
}

/// Puts `name` in the ustar name and prefix fields if it fits there as UTF-8;
/// otherwise leaves a truncated, valid name for readers without PAX and returns
/// false (the caller adds a PAX `path`).
fn set_name(h: &mut Header, name: &[u8]) -> bool {
    if std::str::from_utf8(name).is_ok() && name.len() <= 255 {
        let ustar = h.as_ustar_mut().expect("ustar header");
        if name.len() <= 100 {
            ustar.name[..name.len()].copy_from_slice(name);
            return true;
        }
        // Split at a '/' so that prefix <= 155 and the rest <= 100 bytes.
        let split = name
            .iter()
            .enumerate()
            .filter(|(i, &b)| b == b'/' && *i <= 155 && name.len() - i - 1 <= 100)
            .map(|(i, _)| i)
            .next();
        if let Some(i) = split {
            if i > 0 && i + 1 < name.len() {
                ustar.prefix[..i].copy_from_slice(&name[..i]);
                ustar.name[..name.len() - i - 1].copy_from_slice(&name[i + 1..]);
                return true;
            }
        }
    }
    let keep = name.len().min(99);
    let cut = std::str::from_utf8(&name[..keep])
        .map(|s| s.len())
        .unwrap_or_else(|e| e.valid_up_to());
    let ustar = h.as_ustar_mut().expect("ustar header");
    ustar.name[..cut].copy_from_slice(&name[..cut]);
    false
}

fn display(path: &str) -> &str {
    if path.is_empty() {
        "/"
    } else {
        path
    }
}
