//! Choosing what to download: the cheapest path, in bytes, from what a client
//! holds to the image it wants, over the graph whose edges are a repository's
//! full images (from nothing) and deltas (from their base). A delta is usable if
//! the client holds its codecs, or may fetch them (then their size counts, once
//! per codec: every subset of fetchable codecs is tried).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::image::format::ImageKind;
use crate::registry::artifact::{CodecItem, Item, RepoIndex};

/// Beyond this many fetchable codecs, only "none" and "all" are tried.
const MAX_SUBSET_CODECS: usize = 10;

/// What a client holds and accepts.
#[derive(Debug, Clone, Default)]
pub struct Holdings {
    /// Ids of the full images it holds.
    pub images: Vec<Digest>,
    /// Codec components it holds.
    pub codecs: HashSet<Digest>,
    /// Whether it may fetch codecs it lacks.
    pub fetch_codecs: bool,
}

/// A way to the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The image wanted.
    pub target: Digest,
    /// The held image the path starts from (`None`: it starts with a full image).
    pub start: Option<Digest>,
    /// Full image and deltas to download, in order.
    pub steps: Vec<Item>,
    /// Codec components to download.
    pub fetch: Vec<CodecItem>,
    /// Bytes of all of it (compact forms where there are).
    pub bytes: u64,
}

impl Plan {
    /// Every codec the path's deltas need.
    pub fn codecs(&self) -> BTreeSet<Digest> {
        self.steps
            .iter()
            .flat_map(|s| s.codecs.iter().copied())
            .collect()
    }
}

/// Finds the cheapest plan to `target`.
pub fn plan(index: &RepoIndex, target: Digest, have: &Holdings) -> Result<Plan> {
    if have.images.contains(&target) {
        return Ok(Plan {
            target,
            start: Some(target),
            steps: vec![],
            fetch: vec![],
            bytes: 0,
        });
    }
    let used: BTreeSet<Digest> = index
        .images
        .iter()
        .flat_map(|i| i.codecs.iter().copied())
        .filter(|c| !have.codecs.contains(c))
        .collect();
    let fetchable: Vec<&CodecItem> = if have.fetch_codecs {
        used.iter().filter_map(|c| index.codec(c)).collect()
    } else {
        vec![]
    };
    let subsets: Vec<Vec<&CodecItem>> = if fetchable.len() <= MAX_SUBSET_CODECS {
        (0u32..1 << fetchable.len())
            .map(|mask| {
                (0..fetchable.len())
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| fetchable[i])
                    .collect()
            })
            .collect()
    } else {
        vec![vec![], fetchable.clone()]
    };
    let mut best: Option<Plan> = None;
    for subset in subsets {
        let mut allowed = have.codecs.clone();
        allowed.extend(subset.iter().map(|c| c.digest));
        let Some((start, steps, cost)) = shortest(index, target, &have.images, &allowed) else {
            continue;
        };
        let needed: BTreeSet<Digest> = steps
            .iter()
            .flat_map(|s| s.codecs.iter().copied())
            .collect();
        let fetch: Vec<CodecItem> = subset
            .into_iter()
            .filter(|c| needed.contains(&c.digest))
            .cloned()
            .collect();
        let bytes = cost + fetch.iter().map(|c| c.size).sum::<u64>();
        let better = best
            .as_ref()
            .is_none_or(|b| (bytes, steps.len()) < (b.bytes, b.steps.len()));
        if better {
            best = Some(Plan {
                target,
                start,
                steps,
                fetch,
                bytes,
            });
        }
    }
    if let Some(p) = best {
        return Ok(p);
    }
    // Say why: is it the codecs, or is there no way at all?
    if !index.images.iter().any(|i| i.image_id == target) {
        bail!("image {} is not in the repository's index", target.short());
    }
    let all: HashSet<Digest> = have.codecs.iter().chain(used.iter()).copied().collect();
    if let Some((_, steps, _)) = shortest(index, target, &have.images, &all) {
        let lacking: Vec<String> = steps
            .iter()
            .flat_map(|s| s.codecs.iter())
            .filter(|c| !have.codecs.contains(c))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|c| match index.codec(c) {
                Some(item) => format!("{} ({:?})", item.name, c),
                None => format!("{c:?}, which the repository does not hold"),
            })
            .collect();
        bail!(
            "every way to image {} needs codecs you lack: {}; allow fetching codecs or add them with `d4c codec add`",
            target.short(),
            lacking.join(", ")
        );
    }
    bail!(
        "no way to image {}: the repository has no full image of it and no deltas from what you hold",
        target.short()
    )
}

/// Dijkstra from "nothing" and the held images; returns the start, the edges
/// and their total size.
fn shortest(
    index: &RepoIndex,
    target: Digest,
    held: &[Digest],
    codecs: &HashSet<Digest>,
) -> Option<(Option<Digest>, Vec<Item>, u64)> {
    // Node 0 is "nothing"; images get 1.. in the order met.
    let mut ids: HashMap<Digest, usize> = HashMap::new();
    let node = |d: Digest, ids: &mut HashMap<Digest, usize>| {
        let n = ids.len() + 1;
        *ids.entry(d).or_insert(n)
    };
    let mut out: Vec<Vec<(usize, usize)>> = vec![vec![]]; // node -> (to, item)
    for (k, item) in index.images.iter().enumerate() {
        if !item.codecs.iter().all(|c| codecs.contains(c)) {
            continue;
        }
        let from = match (item.kind, item.base_id) {
            (ImageKind::Image, _) => 0,
            (ImageKind::Delta, Some(b)) => node(b, &mut ids),
            (ImageKind::Delta, None) => continue,
        };
        let to = node(item.image_id, &mut ids);
        out.resize(ids.len() + 1, vec![]);
        out[from].push((to, k));
    }
    let goal = *ids.get(&target)?;
    let n = ids.len() + 1;
    let mut dist = vec![u64::MAX; n];
    let mut prev: Vec<Option<(usize, usize)>> = vec![None; n];
    let mut heap = BinaryHeap::new();
    dist[0] = 0;
    heap.push(Reverse((0u64, 0usize)));
    for h in held {
        if let Some(&i) = ids.get(h) {
            dist[i] = 0;
            heap.push(Reverse((0, i)));
        }
    }
    while let Some(Reverse((d, u))) = heap.pop() {
        if d > dist[u] {
            continue;
        }
        if u == goal {
            break;
        }
        for &(v, k) in out.get(u).into_iter().flatten() {
            let nd = d.saturating_add(index.images[k].transfer_size());
            if nd < dist[v] {
                dist[v] = nd;
                prev[v] = Some((u, k));
                heap.push(Reverse((nd, v)));
            }
        }
    }
    if dist[goal] == u64::MAX {
        return None;
    }
    let mut steps = vec![];
    let mut at = goal;
    while let Some((u, k)) = prev[at] {
        steps.push(index.images[k].clone());
        at = u;
    }
    steps.reverse();
    let start = match steps.first() {
        Some(s) if s.kind == ImageKind::Delta => s.base_id,
        _ => None,
    };
    Some((start, steps, dist[goal]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(b: u8) -> Digest {
        Digest([b; 32])
    }

    fn full(id: u8, size: u64) -> Item {
        Item {
            kind: ImageKind::Image,
            image_id: d(id),
            base_id: None,
            blob: d(100 + id),
            size,
            manifest: d(200 + id),
            codecs: vec![],
            compact: None,
        }
    }

    fn delta(base: u8, id: u8, size: u64, codec: u8) -> Item {
        Item {
            kind: ImageKind::Delta,
            image_id: d(id),
            base_id: Some(d(base)),
            blob: d(base * 10 + id),
            size,
            manifest: d(150 + id),
            codecs: vec![d(codec)],
            compact: None,
        }
    }

    fn codec(b: u8, size: u64) -> CodecItem {
        CodecItem {
            digest: d(b),
            name: format!("c{b}"),
            version: "1".into(),
            size,
            manifest: d(b + 1),
        }
    }

    fn index() -> RepoIndex {
        // v1 -> v2 -> v3 -> v4 by codec 50, plus v1 -> v4 by codec 60; full v1 and v4.
        let mut idx = RepoIndex::new();
        for i in [
            full(1, 1000),
            full(4, 1000),
            delta(1, 2, 10, 50),
            delta(2, 3, 10, 50),
            delta(3, 4, 10, 50),
            delta(1, 4, 5, 60),
        ] {
            idx.add_item(i);
        }
        idx.add_codec(codec(50, 100));
        idx.add_codec(codec(60, 500));
        idx
    }

    fn holding(images: &[u8], codecs: &[u8], fetch: bool) -> Holdings {
        Holdings {
            images: images.iter().map(|&b| d(b)).collect(),
            codecs: codecs.iter().map(|&b| d(b)).collect(),
            fetch_codecs: fetch,
        }
    }

    #[test]
    fn cheapest_path_over_deltas() {
        let idx = index();
        let p = plan(&idx, d(4), &holding(&[1], &[50, 60], false)).unwrap();
        assert_eq!(p.start, Some(d(1)));
        assert_eq!(p.bytes, 5);
        assert_eq!(p.steps.len(), 1);
        let p = plan(&idx, d(4), &holding(&[1], &[50], false)).unwrap();
        assert_eq!((p.bytes, p.steps.len()), (30, 3));
        assert!(p.fetch.is_empty());
        // Holding v2: two deltas.
        let p = plan(&idx, d(4), &holding(&[2], &[50], false)).unwrap();
        assert_eq!((p.start, p.bytes), (Some(d(2)), 20));
        // Holding nothing: the full image.
        let p = plan(&idx, d(4), &holding(&[], &[50], false)).unwrap();
        assert_eq!(
            (p.start, p.bytes, p.steps[0].kind),
            (None, 1000, ImageKind::Image)
        );
        // Holding the target: nothing to do.
        let p = plan(&idx, d(4), &holding(&[4], &[], false)).unwrap();
        assert_eq!((p.bytes, p.steps.len()), (0, 0));
    }

    #[test]
    fn compact_forms_count() {
        let mut idx = index();
        // The chain's deltas are 10 bytes each; with compact forms of 1 byte the
        // 5-byte direct delta loses.
        for i in idx.images.iter_mut() {
            if i.kind == ImageKind::Delta && i.size == 10 {
                i.compact = Some(crate::registry::artifact::CompactRef {
                    blob: d(99),
                    size: 1,
                });
            }
        }
        let p = plan(&idx, d(4), &holding(&[1], &[50, 60], false)).unwrap();
        assert_eq!((p.bytes, p.steps.len()), (3, 3));
    }

    #[test]
    fn codecs_are_negotiated() {
        let idx = index();
        // No codecs and no fetching: only the full image.
        let p = plan(&idx, d(4), &holding(&[1], &[], false)).unwrap();
        assert_eq!((p.bytes, p.steps[0].kind), (1000, ImageKind::Image));
        // Fetching allowed: codec 50 (100) + 30 beats codec 60 (500) + 5.
        let p = plan(&idx, d(4), &holding(&[1], &[], true)).unwrap();
        assert_eq!(p.bytes, 130);
        assert_eq!(
            p.fetch.iter().map(|c| c.digest).collect::<Vec<_>>(),
            vec![d(50)]
        );
        assert!(p.steps.iter().all(|s| s.codecs == vec![d(50)]));
        // Never a delta in a codec the client neither holds nor fetches.
        let p = plan(&idx, d(4), &holding(&[1], &[60], false)).unwrap();
        assert!(p.codecs().iter().all(|c| *c == d(60)));
    }

    #[test]
    fn explains_why_there_is_no_way() {
        let mut idx = index();
        idx.images.retain(|i| i.kind == ImageKind::Delta);
        let e = plan(&idx, d(4), &holding(&[1], &[], false))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("needs codecs you lack") && e.contains("c60"),
            "{e}"
        );
        let e = plan(&idx, d(4), &holding(&[], &[50], false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no way to image"), "{e}");
        let e = plan(&idx, d(9), &holding(&[1], &[50], false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not in the repository"), "{e}");
    }
}
