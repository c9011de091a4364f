//! `patch`: a chain (a full image and deltas) becomes one full image. Content that
//! is a full blob somewhere in the chain is copied as is; content that needs a
//! codec is rebuilt (in parallel), checked and compressed.

use std::path::Path;

use anyhow::Result;
use rayon::prelude::*;

use crate::codec::Codecs;
use crate::image::chain::{Chain, RawSource};
use crate::image::entry::{Data, Kind};
use crate::image::format::{self, Header, ImageKind, Writer};
use crate::progress::Progress;

/// Rebuilt content, compressed, and how.
type Compressed = (Vec<u8>, crate::image::entry::Compression);

/// Writes the full image that `chain` yields to `out`; `level` compresses rebuilt
/// content. Returns the file size.
pub fn materialize(
    chain: &Chain,
    codecs: &Codecs,
    out: &Path,
    level: i32,
    threads: usize,
    progress: &dyn Progress,
) -> Result<u64> {
    let top = chain.top();
    // The tree's entries, then the origin's content: stored alike.
    let items: Vec<&crate::image::entry::Entry> = top.items().collect();
    let rebuild: u64 = items
        .iter()
        .filter(|e| chain.raw_source(e).is_none())
        .map(|e| e.file_size())
        .sum();
    progress.start("patching", rebuild);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()?;
    // Rebuilt content, compressed, for the entries that need a codec.
    let rebuilt: Vec<Option<Result<Compressed>>> = pool.install(|| {
        items
            .par_iter()
            .with_max_len(1)
            .map(|e| {
                if e.kind != Kind::File || chain.raw_source(e).is_some() {
                    return None;
                }
                let r = chain
                    .content(codecs, e)
                    .and_then(|c| format::compress(&c, level));
                progress.advance(e.file_size());
                Some(r)
            })
            .collect()
    });
    progress.finish();

    let mut w = Writer::create(out)?;
    let mut entries = Vec::with_capacity(items.len());
    let mut done: std::collections::HashMap<crate::digest::Digest, Data> = Default::default();
    for (e, rebuilt) in items.iter().zip(rebuilt) {
        let mut e = (*e).clone();
        if e.kind == Kind::File {
            let digest = e.digest.expect("file");
            let data = if let Some(d) = done.get(&digest) {
                d.clone()
            } else {
                let d = match (rebuilt, chain.raw_source(&e)) {
                    (Some(r), _) => {
                        let (bytes, compression) = r?;
                        let offset = w.blob(&bytes)?;
                        Data::Full {
                            offset,
                            length: bytes.len() as u64,
                            compression,
                        }
                    }
                    (None, Some(RawSource::Blob(reader, src))) => {
                        super::diff::copy_full(reader, src, &mut w)?
                    }
                    (None, _) => Data::Inline,
                };
                done.insert(digest, d.clone());
                d
            };
            e.data = Some(data);
        }
        entries.push(e);
    }
    let content = entries.split_off(top.entries.len());
    let header = Header {
        kind: ImageKind::Image,
        image_id: top.image_id,
        base_id: None,
        config: top.config.clone(),
        codecs: Vec::new(),
        dicts: Vec::new(),
        entries,
        origin: None,
    };
    let mut header = header;
    header.origin = top
        .origin
        .as_ref()
        .map(|o| o.carried(content, &top.codecs, &mut header.codecs));
    w.finish(&header)
}
