//! Codecs: WebAssembly components that implement `wit/codec.wit`.
//!
//! - [`Runtime`]: the one place the wasmtime engine is configured: caps on memory
//!   and time for every call, no WASI capabilities, compiled components cached on
//!   disk.
//! - [`Codec`]: a loaded component, identified by the sha256 of its bytes, callable
//!   from many threads at once; every call runs in a fresh instance.
//! - [`CodecStore`]: components kept on disk by sha256.
//! - [`Codecs`]: finds a codec by name, digest or path, among the built-ins and the
//!   store, loading each once.

mod builtin;
mod component;
mod error;
mod runtime;
mod store;

pub use builtin::{builtin_components, retired_components, BuiltinComponent};
pub use component::{Codec, CodecInfo};
pub use error::{CodecError, ErrorKind, Op};
pub use runtime::{Limits, Runtime};
pub use store::{CodecOrigin, CodecStore, Codecs};
