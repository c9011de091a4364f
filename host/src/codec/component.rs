//! A loaded codec component and its calls.

use std::sync::Arc;

use serde::Serialize;
use wasmtime::component::Linker;
use wasmtime::Store;

use super::error::{CodecError, ErrorKind, Op};
use super::runtime::{Runtime, State};
use crate::digest::Digest;

mod bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "delta-codec" });
}

use bindings::exports::d4c::codec::codec as api;
use bindings::{DeltaCodec, DeltaCodecPre};

/// What a codec says about itself (its `info`), checked at load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CodecInfo {
    /// Short lowercase name.
    pub name: String,
    /// Version string.
    pub version: String,
    /// Whether `merge` is implemented.
    pub merge: bool,
    /// Largest input in bytes.
    pub max_input: u64,
}

struct Inner {
    digest: Digest,
    info: CodecInfo,
    pre: DeltaCodecPre<State>,
    runtime: Runtime,
}

/// A loaded codec. Cheap to clone and safe to call from many threads: each call
/// instantiates the component afresh in its own capped store.
#[derive(Clone)]
pub struct Codec {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Codec({} {})",
            self.inner.info.name,
            self.inner.digest.short()
        )
    }
}

/// The first eight bytes of a component (a core module has version 1 instead).
const COMPONENT_HEADER: [u8; 8] = [0, b'a', b's', b'm', 0x0d, 0, 1, 0];
const MODULE_HEADER: [u8; 8] = [0, b'a', b's', b'm', 1, 0, 0, 0];

fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Codec {
    /// Loads a component: compiles it (or takes it from the cache), links every
    /// import to a trap, checks it exports `d4c:codec/codec@0.1.0`, and calls
    /// `info` under the caps.
    pub fn load(runtime: &Runtime, bytes: &[u8]) -> Result<Codec, CodecError> {
        let digest = Digest::of(bytes);
        let fail = |kind, message: String| CodecError {
            codec: "?".into(),
            digest,
            op: Op::Load,
            kind,
            message,
        };
        let not_codec = |m: String| fail(ErrorKind::NotACodec, m);
        match bytes.get(..8) {
            Some(h) if h == COMPONENT_HEADER => {}
            Some(h) if h == MODULE_HEADER => {
                return Err(not_codec(
                    "a core wasm module, not a component (build for wasm32-wasip2, or wrap it \
                     with `wasm-tools component new`)"
                        .into(),
                ))
            }
            _ => return Err(not_codec("not a WebAssembly component".into())),
        }
        let component = runtime
            .compile(&digest, bytes)
            .map_err(|e| not_codec(format!("does not compile: {}", one_line(&e))))?;
        let mut linker = Linker::<State>::new(runtime.engine());
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| not_codec(one_line(&e)))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(DeltaCodecPre::new)
            .map_err(|e| {
                not_codec(format!(
                    "does not export d4c:codec/codec@0.1.0: {}",
                    one_line(&e)
                ))
            })?;

        let mut loading = Codec {
            inner: Arc::new(Inner {
                digest,
                info: CodecInfo {
                    name: "?".into(),
                    version: String::new(),
                    merge: false,
                    max_input: 0,
                },
                pre,
                runtime: runtime.clone(),
            }),
        };
        let info = loading.call(Op::Load, |s, c| c.call_info(s).map(Ok))?;
        if !valid_name(&info.name) {
            return Err(not_codec(format!(
                "invalid codec name {:?} (want [a-z0-9-]{{1,32}})",
                info.name
            )));
        }
        if info.version.is_empty() || info.version.len() > 64 {
            return Err(not_codec(format!("invalid version {:?}", info.version)));
        }
        let inner = Arc::get_mut(&mut loading.inner).expect("not shared yet");
        inner.info = CodecInfo {
            name: info.name,
            version: info.version,
            merge: info.can_merge,
            max_input: info.max_input,
        };
        Ok(loading)
    }

    /// The sha256 of the component bytes: the codec's identity.
    pub fn digest(&self) -> Digest {
        self.inner.digest
    }

    /// What the codec reported about itself.
    pub fn info(&self) -> &CodecInfo {
        &self.inner.info
    }

    /// The codec's name.
    pub fn name(&self) -> &str {
        &self.inner.info.name
    }

    /// Whether inputs of these sizes are within the codec's `max-input` (and
    /// the 4 GiB a wasm32 list can hold).
    pub fn accepts(&self, sizes: &[usize]) -> bool {
        let max = self.inner.info.max_input.min(u32::MAX as u64);
        sizes.iter().all(|&s| s as u64 <= max)
    }

    /// `diff(old, new)` at `level` (0: the codec's default).
    pub fn diff(&self, old: &[u8], new: &[u8], level: u8) -> Result<Vec<u8>, CodecError> {
        self.check_sizes(Op::Diff, &[old.len(), new.len()])?;
        let options = api::DiffOptions { level };
        self.call(Op::Diff, |s, c| c.call_diff(s, old, new, options))
    }

    /// `patch(old, delta)`. The output is not checked: see [`Codec::patch_checked`].
    pub fn patch(&self, old: &[u8], delta: &[u8]) -> Result<Vec<u8>, CodecError> {
        self.check_sizes(Op::Patch, &[old.len(), delta.len()])?;
        self.call(Op::Patch, |s, c| c.call_patch(s, old, delta))
    }

    /// `patch(old, delta)`, with the output's sha256 required to be `expected`:
    /// a codec that returns wrong bytes is caught here, never passed on.
    pub fn patch_checked(
        &self,
        old: &[u8],
        delta: &[u8],
        expected: &Digest,
    ) -> Result<Vec<u8>, CodecError> {
        let out = self.patch(old, delta)?;
        let got = Digest::of(&out);
        if got != *expected {
            return Err(self.error(
                Op::Patch,
                ErrorKind::WrongOutput,
                format!(
                    "output has sha256 {}, expected {}",
                    got.short(),
                    expected.short()
                ),
            ));
        }
        Ok(out)
    }

    /// `merge(lower, upper)`; `Unsupported` if the codec cannot merge.
    pub fn merge(&self, lower: &[u8], upper: &[u8]) -> Result<Vec<u8>, CodecError> {
        if !self.inner.info.merge {
            return Err(self.error(
                Op::Merge,
                ErrorKind::Unsupported,
                "the codec does not merge".into(),
            ));
        }
        self.check_sizes(Op::Merge, &[lower.len(), upper.len()])?;
        self.call(Op::Merge, |s, c| c.call_merge(s, lower, upper))
    }

    fn check_sizes(&self, op: Op, sizes: &[usize]) -> Result<(), CodecError> {
        if self.accepts(sizes) {
            return Ok(());
        }
        let max = self.inner.info.max_input.min(u32::MAX as u64);
        Err(self.error(
            op,
            ErrorKind::TooLarge,
            format!("inputs of {sizes:?} bytes, the limit is {max}"),
        ))
    }

    fn error(&self, op: Op, kind: ErrorKind, message: String) -> CodecError {
        CodecError {
            codec: self.inner.info.name.clone(),
            digest: self.inner.digest,
            op,
            kind,
            message,
        }
    }

    /// Runs `f` on a fresh instance in a fresh capped store, and turns every way it
    /// can fail into a [`CodecError`].
    fn call<R>(
        &self,
        op: Op,
        f: impl FnOnce(&mut Store<State>, &api::Guest) -> wasmtime::Result<Result<R, api::CodecError>>,
    ) -> Result<R, CodecError> {
        let started = std::time::Instant::now();
        let result = self.call_unmetered(op, f);
        let (name, op) = (self.inner.info.name.as_str(), op.to_string());
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => e.kind.to_string(),
        };
        crate::metrics::inc("d4c_codec_calls_total", &[name, &op, &outcome]);
        crate::metrics::observe("d4c_codec_call_seconds", &[name, &op], started.elapsed());
        result
    }

    fn call_unmetered<R>(
        &self,
        op: Op,
        f: impl FnOnce(&mut Store<State>, &api::Guest) -> wasmtime::Result<Result<R, api::CodecError>>,
    ) -> Result<R, CodecError> {
        let mut store = self.inner.runtime.store();
        let result = self
            .inner
            .pre
            .instantiate(&mut store)
            .and_then(|inst: DeltaCodec| f(&mut store, inst.d4c_codec_codec()));
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let (kind, m) = match e {
                    api::CodecError::InvalidInput(m) => (ErrorKind::InvalidInput, m),
                    api::CodecError::TooLarge(m) => (ErrorKind::TooLarge, m),
                    api::CodecError::Unsupported(m) => (ErrorKind::Unsupported, m),
                    api::CodecError::Failed(m) => (ErrorKind::Failed, m),
                };
                Err(self.error(op, kind, truncate(&m)))
            }
            Err(e) => {
                let (kind, m) = if matches!(
                    e.downcast_ref::<wasmtime::Trap>(),
                    Some(wasmtime::Trap::Interrupt)
                ) {
                    let t = self.inner.runtime.limits().time;
                    (ErrorKind::Timeout, format!("stopped after {t:?}"))
                } else if store.data().memory_cap_hit() {
                    let cap = self.inner.runtime.limits().memory;
                    (
                        ErrorKind::OutOfMemory,
                        format!("tried to grow memory past {} MiB", cap >> 20),
                    )
                } else {
                    (ErrorKind::Trap, one_line(&e))
                };
                Err(self.error(op, kind, m))
            }
        }
    }
}

/// An error chain on one line, without wasm backtraces.
fn one_line(e: &wasmtime::Error) -> String {
    let parts: Vec<String> = e
        .chain()
        .filter_map(|c| c.to_string().lines().next().map(str::to_string))
        .filter(|l| !l.is_empty() && !l.ends_with("backtrace:"))
        .collect();
    truncate(&parts.join(": "))
}

fn truncate(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}
