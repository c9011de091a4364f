//! The server's answer to a pull: plan over the repository's index with the
//! client's holdings (the same planner a registry client uses), then merge the
//! deltas on the path into one (D4C's server-side DeltaMerging), caching each
//! merged result so the next client with the same holdings gets it at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use d4c_host::codec::Codecs;
use d4c_host::digest::Digest;
use d4c_host::fsutil;
use d4c_host::image::delta::merge::merge;
use d4c_host::image::format::{ImageKind, Reader};
use d4c_host::progress::Silent;
use d4c_host::registry::artifact::{CompactRef, Item, Manifest, RepoIndex};
use d4c_host::update::compact;
use d4c_host::update::plan::{self, Holdings};
use d4c_host::update::protocol::{PullRequest, PullResponse};

use crate::store::Store;
use crate::ApiError;

/// Plans and merges for pulls.
pub struct Negotiator {
    store: Arc<Store>,
    codecs: Codecs,
    threads: usize,
    /// One merge per key at a time; others wait and then read the cache.
    merging: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
    /// Merges and compact encodings (and the codec loads they need) running
    /// now, against their bound: each can take a codec's memory cap.
    slots: Slots,
}

/// A counting bound on concurrent work, each taker waiting at most `wait`.
struct Slots {
    free: Mutex<usize>,
    freed: std::sync::Condvar,
    wait: std::time::Duration,
}

/// How long a request waits for a merge slot before it is told to come back.
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

struct Slot<'a>(&'a Slots);

impl Slots {
    fn new(n: usize, wait: std::time::Duration) -> Slots {
        Slots {
            free: Mutex::new(n.max(1)),
            freed: std::sync::Condvar::new(),
            wait,
        }
    }

    fn take(&self) -> Result<Slot<'_>, ApiError> {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let (mut free, _) = self
            .freed
            .wait_timeout_while(free, self.wait, |n| *n == 0)
            .unwrap_or_else(|e| e.into_inner());
        if *free == 0 {
            return Err(ApiError {
                status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                code: "TOOMANYREQUESTS",
                message: "every merge slot is busy; try again shortly".into(),
            });
        }
        *free -= 1;
        Ok(Slot(self))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

impl Negotiator {
    /// A negotiator over `store`, merging with `codecs` on `threads` threads,
    /// at most `max_merges` merges at a time.
    pub fn new(store: Arc<Store>, codecs: Codecs, threads: usize, max_merges: usize) -> Negotiator {
        Negotiator {
            store,
            codecs,
            threads,
            merging: Mutex::new(HashMap::new()),
            slots: Slots::new(max_merges, SLOT_WAIT),
        }
    }

    /// Answers a pull request.
    pub fn pull(&self, req: &PullRequest) -> Result<PullResponse, ApiError> {
        let (data, _) = self
            .store
            .manifest(&req.repository, &req.tag)
            .map_err(ApiError::bad_request)?
            .ok_or_else(|| {
                ApiError::not_found(
                    "MANIFEST_UNKNOWN",
                    format!("tag {:?} not found in {}", req.tag, req.repository),
                )
            })?;
        let target = Manifest::parse(&data)
            .and_then(|m| m.image_id())
            .map_err(ApiError::bad_request)?;
        let index = self
            .store
            .index(&req.repository)
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError::not_found(
                    "NAME_UNKNOWN",
                    format!("{} has no d4c index", req.repository),
                )
            })?;
        let holdings = Holdings {
            images: req.have.clone(),
            codecs: req.codecs.iter().copied().collect::<HashSet<_>>(),
            fetch_codecs: req.fetch_codecs,
        };
        let mut plan = plan::plan(&index, target, &holdings).map_err(ApiError::no_path)?;
        let unmerged_bytes = plan.bytes;
        let first_delta = plan
            .steps
            .iter()
            .position(|s| s.kind == ImageKind::Delta)
            .unwrap_or(plan.steps.len());
        let deltas = plan.steps.len() - first_delta;
        let mut merged_from = 0;
        if deltas >= 2 {
            let merged = {
                let _slot = self.slots.take()?;
                self.merged(&plan.steps[first_delta..])
                    .map_err(ApiError::internal)?
            };
            let sum: u64 = plan.steps[first_delta..].iter().map(|s| s.size).sum();
            // Merging pays when the one delta is no larger than the ones it replaces.
            if merged.size <= sum {
                plan.steps.truncate(first_delta);
                plan.steps.push(merged);
                merged_from = deltas;
                plan.bytes = plan.steps.iter().map(|s| s.size).sum::<u64>()
                    + plan.fetch.iter().map(|c| c.size).sum::<u64>();
            }
        }
        // The one delta in its compact form against the client's start image,
        // unless it has one already (pushed with it).
        if let (Some(base), [only]) = (plan.start, plan.steps.as_mut_slice()) {
            if only.kind == ImageKind::Delta && only.compact.is_none() {
                let _slot = self.slots.take()?;
                only.compact = self
                    .compact(&index, base, only)
                    .map_err(ApiError::internal)?;
            }
        }
        plan.bytes = plan.steps.iter().map(|s| s.transfer_size()).sum::<u64>()
            + plan.fetch.iter().map(|c| c.size).sum::<u64>();
        count_saved(&index, target, plan.bytes);
        Ok(PullResponse {
            plan,
            merged_from,
            unmerged_bytes,
        })
    }

    /// `delta` in the compact encoding against image `base`, made once and cached;
    /// `None` if the repository has no cdimg of `base` or it would not be smaller.
    fn compact(&self, index: &RepoIndex, base: Digest, delta: &Item) -> Result<Option<CompactRef>> {
        let Some(of_base) = index.images.iter().find(|i| i.image_id == base) else {
            return Ok(None);
        };
        let key = Digest::of(format!("compact {:?} {:?}", delta.blob, base).as_bytes());
        let lock = self.merging.lock().unwrap().entry(key).or_default().clone();
        let _guard = lock.lock().unwrap();
        let cached = self.store.scratch_dir().join(format!("{}.json", key.hex()));
        if let Ok(text) = std::fs::read(&cached) {
            if let Ok(offer) = serde_json::from_slice::<Option<CompactRef>>(&text) {
                if offer
                    .as_ref()
                    .is_none_or(|o| self.store.blob_size(&o.blob) == Some(o.size))
                {
                    touch(&cached);
                    return Ok(offer);
                }
            }
        }
        let base_header = Reader::open(&self.store.blob_path(&of_base.blob))?
            .header()
            .clone();
        let tmp =
            self.store
                .scratch_dir()
                .join(format!("{}compact-{}", fsutil::TEMP_PREFIX, key.hex()));
        let size = compact::encode(
            &Reader::open(&self.store.blob_path(&delta.blob))?,
            &base_header,
            &tmp,
        )?;
        // Decoding costs the client little, so any real saving is worth it.
        let offer = if size + 1024 <= delta.size {
            let (digest, _) = d4c_host::digest::of_file(&tmp)?;
            let size = self.store.adopt_blob(&tmp, &digest)?;
            Some(CompactRef { blob: digest, size })
        } else {
            let _ = std::fs::remove_file(&tmp);
            None
        };
        fsutil::write_atomic(&cached, &serde_json::to_vec(&offer)?)?;
        Ok(offer)
    }

    /// The deltas `steps` merged into one, from the cache or made now.
    fn merged(&self, steps: &[Item]) -> Result<Item> {
        let (result, item) = match self.merge_or_reuse(steps) {
            Ok((item, reused)) => (if reused { "reused" } else { "made" }, Ok(item)),
            Err(e) => ("failed", Err(e)),
        };
        d4c_host::metrics::inc("d4c_serve_merges_total", &[result]);
        item
    }

    /// [`Negotiator::merged`]; says whether the merge cache had it.
    fn merge_or_reuse(&self, steps: &[Item]) -> Result<(Item, bool)> {
        let key = Digest::of(
            steps
                .iter()
                .map(|s| s.blob.hex())
                .collect::<Vec<_>>()
                .join(",")
                .as_bytes(),
        );
        let lock = self.merging.lock().unwrap().entry(key).or_default().clone();
        let _guard = lock.lock().unwrap();
        let cached = self.store.scratch_dir().join(format!("{}.json", key.hex()));
        if let Ok(text) = std::fs::read(&cached) {
            if let Ok(item) = serde_json::from_slice::<Item>(&text) {
                if self.store.blob_size(&item.blob) == Some(item.size) {
                    touch(&cached);
                    return Ok((item, true));
                }
            }
        }
        for s in steps {
            for c in &s.codecs {
                self.install_codec(c)?;
            }
        }
        let open = |s: &Item| Reader::open(&self.store.blob_path(&s.blob));
        let scratch = |i: usize| {
            self.store
                .scratch_dir()
                .join(format!("{}merge-{}-{i}", fsutil::TEMP_PREFIX, key.hex()))
        };
        let mut lower = self.store.blob_path(&steps[0].blob);
        let mut made = vec![];
        for (i, upper) in steps[1..].iter().enumerate() {
            let out = scratch(i);
            merge(
                &Reader::open(&lower)?,
                &open(upper)?,
                &self.codecs,
                &out,
                19,
                self.threads,
                &Silent,
            )
            .with_context(|| format!("merging {} deltas", steps.len()))?;
            made.push(out.clone());
            lower = out;
        }
        let header = Reader::open(&lower)?.header().clone();
        let (digest, _) = d4c_host::digest::of_file(&lower)?;
        let size = self.store.adopt_blob(&lower, &digest)?;
        for m in &made {
            let _ = std::fs::remove_file(m);
        }
        let item = Item {
            compact: None,
            kind: ImageKind::Delta,
            image_id: header.image_id,
            base_id: header.base_id,
            blob: digest,
            size,
            // Merged blobs are offered by the server only; no manifest names them.
            manifest: digest,
            codecs: header.codecs.iter().map(|c| c.sha256).collect(),
        };
        fsutil::write_atomic(&cached, &serde_json::to_vec(&item)?)?;
        Ok((item, false))
    }

    /// Makes a pushed codec component loadable by merges.
    fn install_codec(&self, digest: &Digest) -> Result<()> {
        if self.codecs.component_bytes(digest).is_ok() {
            return Ok(());
        }
        let bytes = self
            .store
            .blob_bytes(digest, 256 << 20)?
            .with_context(|| format!("codec {digest:?} was never pushed here"))?;
        self.codecs.store().put(&bytes)?;
        Ok(())
    }
}

/// Counts a planned pull's bytes, and those it saves against the target's
/// full cdimg where the repository has one.
fn count_saved(index: &RepoIndex, target: Digest, planned: u64) {
    d4c_host::metrics::add("d4c_serve_pull_bytes_planned_total", &[], planned);
    let full = index
        .images
        .iter()
        .find(|i| i.kind == ImageKind::Image && i.image_id == target);
    if let Some(full) = full {
        let saved = full.size.saturating_sub(planned);
        d4c_host::metrics::add("d4c_serve_pull_bytes_saved_total", &[], saved);
    }
}

/// Marks a cached merge result as asked for now (garbage collection keeps
/// what was asked for within its time to live).
fn touch(path: &std::path::Path) {
    let _ = std::fs::File::open(path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_slots_bound_concurrent_work() {
        let slots = Slots::new(2, std::time::Duration::from_millis(50));
        let a = slots.take().unwrap();
        let _b = slots.take().unwrap();
        let e = slots.take().err().unwrap();
        assert_eq!(e.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        drop(a);
        assert!(slots.take().is_ok());
        // A waiter gets the slot freed while it waits.
        let slots = std::sync::Arc::new(Slots::new(1, std::time::Duration::from_secs(10)));
        let held = slots.take().unwrap();
        let waiter = {
            let slots = slots.clone();
            std::thread::spawn(move || slots.take().is_ok())
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(held);
        assert!(waiter.join().unwrap());
    }
}
