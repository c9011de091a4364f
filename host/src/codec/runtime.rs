//! The wasmtime engine, configured in one place.
//!
//! Every codec call gets a fresh store and instance with:
//! - a memory cap (a `ResourceLimiter` refuses growth past it),
//! - a time cap (epoch interruption: a ticker thread advances the epoch every
//!   [`TICK`]; measured here at ~7% overhead against ~23% for fuel),
//! - no capabilities: every import the component declares (WASI or other) is
//!   linked to a trap, so a codec cannot reach files, clocks, random numbers,
//!   the environment or the network.
//!
//! Compiled components are cached on disk, keyed by the component's sha256 and
//! the engine's compatibility hash, so loading a codec a second time takes
//! milliseconds instead of a compile.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Config, Engine, OptLevel, ResourceLimiter, Store};

use crate::digest::Digest;
use crate::fsutil;

/// How often the epoch advances; the granularity of the time cap.
pub const TICK: Duration = Duration::from_millis(10);

/// Caps applied to every codec call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest linear memory a call may use, in bytes.
    pub memory: u64,
    /// Longest a call may run.
    pub time: Duration,
}

impl Default for Limits {
    /// 3 GiB and 10 minutes: room for bsdiff's suffix array over a 256 MiB file,
    /// while a runaway codec is still stopped.
    fn default() -> Self {
        Limits {
            memory: 3 << 30,
            time: Duration::from_secs(600),
        }
    }
}

/// Per-store state: the memory limiter, which remembers whether it refused.
pub(crate) struct State {
    limiter: Limiter,
}

impl State {
    /// Whether the call hit the memory cap.
    pub(crate) fn memory_cap_hit(&self) -> bool {
        self.limiter.hit
    }
}

/// Caps a call's memories together, not one by one: a component with several
/// memories or instances gets the cap once. Counts of instances, memories and
/// tables are small (what a codec component needs, with room to spare).
struct Limiter {
    max_memory: usize,
    /// Bytes of linear memory the call holds, all memories together.
    used: usize,
    hit: bool,
}

/// Core instances, memories and tables one codec call may create.
const MAX_INSTANCES: usize = 32;
const MAX_MEMORIES: usize = 4;
const MAX_TABLES: usize = 16;
/// Elements one table may hold.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = (self.used - current.min(self.used)).saturating_add(desired);
        let ok = total <= self.max_memory;
        if ok {
            self.used = total;
        }
        self.hit |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

struct Inner {
    engine: Engine,
    limits: Limits,
    cache_dir: Option<PathBuf>,
    /// `DefaultHasher` of the engine's compatibility hash: part of cache keys.
    engine_key: String,
    stop: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The codec runtime: engine, caps and compile cache. Cheap to clone; share one.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl Runtime {
    /// A runtime with `limits`, caching compiled components in `cache_dir` (none if
    /// `None`).
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>) -> anyhow::Result<Runtime> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            // The same component must give the same bytes on every host: no
            // CPU-specific NaN bits or relaxed-SIMD results.
            .cranelift_nan_canonicalization(true)
            .relaxed_simd_deterministic(true)
            .parallel_compilation(true);
        let engine = Engine::new(&config)?;
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());

        let stop = Arc::new(AtomicBool::new(false));
        let (ticker_engine, ticker_stop) = (engine.weak(), stop.clone());
        std::thread::Builder::new()
            .name("d4c-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match ticker_engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                limits,
                cache_dir,
                engine_key,
                stop,
            }),
        })
    }

    /// The caps applied to each call.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// A fresh store with the caps armed.
    pub(crate) fn store(&self) -> Store<State> {
        let limits = self.inner.limits;
        let limiter = Limiter {
            max_memory: usize::try_from(limits.memory).unwrap_or(usize::MAX),
            used: 0,
            hit: false,
        };
        let mut store = Store::new(&self.inner.engine, State { limiter });
        store.limiter(|s| &mut s.limiter);
        let ticks = (limits.time.as_millis() / TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store
    }

    /// Compiles `bytes` (sha256 `digest`), or loads the compiled form from the cache.
    pub(crate) fn compile(&self, digest: &Digest, bytes: &[u8]) -> wasmtime::Result<Component> {
        let Some(dir) = &self.inner.cache_dir else {
            return Component::new(&self.inner.engine, bytes);
        };
        let path = dir.join(format!("{}-{}.cwasm", digest.hex(), self.inner.engine_key));
        if let Some(c) = self.load_cached(&path, digest) {
            return Ok(c);
        }
        let component = Component::new(&self.inner.engine, bytes)?;
        // A cache that cannot be written only costs time; never fail the load.
        let _ = self.store_cached(dir, &path, digest, &component);
        Ok(component)
    }

    /// The cached compiled form, if present, intact, made for this component
    /// and engine, and writable by nobody but this user. Loading it runs its
    /// native code, so anything less is recompiled instead: the file ends with
    /// the sha256 of its code, the component's digest and the engine key, so a
    /// file copied under another codec's name or torn by a crash is refused.
    fn load_cached(&self, path: &Path, digest: &Digest) -> Option<Component> {
        if !only_mine(path) || !only_mine(path.parent()?) {
            return None;
        }
        let data = std::fs::read(path).ok()?;
        let (code, sum) = data.split_at_checked(data.len().checked_sub(32)?)?;
        if self.seal(code, digest).0 != sum {
            return None;
        }
        // SAFETY: the file is d4c's own output for this engine configuration and
        // this component (checked above), and only this user could have written it.
        unsafe { Component::deserialize(&self.inner.engine, code) }.ok()
    }

    fn store_cached(
        &self,
        dir: &Path,
        path: &Path,
        digest: &Digest,
        component: &Component,
    ) -> anyhow::Result<()> {
        let mut code = component.serialize()?;
        let sum = self.seal(&code, digest);
        code.extend_from_slice(&sum.0);
        fsutil::create_private_dir(dir)?;
        fsutil::write_atomic(path, &code)
    }

    /// What binds compiled code to its component and engine.
    fn seal(&self, code: &[u8], digest: &Digest) -> Digest {
        let mut h = crate::digest::Hasher::default();
        h.update(code);
        h.update(&digest.0);
        h.update(self.inner.engine_key.as_bytes());
        h.finish()
    }
}

/// Whether `p` (not followed if a symlink) belongs to this user and no one
/// else may write to it.
fn only_mine(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| {
        !m.file_type().is_symlink()
            && m.uid() == rustix::process::geteuid().as_raw()
            && m.mode() & 0o022 == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cap_holds_for_all_memories_together() {
        let mut l = Limiter {
            max_memory: 3 << 30,
            used: 0,
            hit: false,
        };
        let gib = 1usize << 30;
        // One memory grows to 2 GiB in two steps.
        assert!(l.memory_growing(0, gib, None).unwrap());
        assert!(l.memory_growing(gib, 2 * gib, None).unwrap());
        // A second memory may have what is left, not a cap of its own.
        assert!(!l.memory_growing(0, 2 * gib, None).unwrap());
        assert!(l.hit);
        assert!(l.memory_growing(0, gib, None).unwrap());
        assert!(!l.memory_growing(gib, gib + 1, None).unwrap());
        assert_eq!(l.used, 3 * gib);
        assert!(l.memories() <= 4 && l.instances() <= 32 && l.tables() <= 16);
    }
}
