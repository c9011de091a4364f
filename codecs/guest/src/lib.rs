//! The guest side of the d4c codec interface (`wit/codec.wit`), for codecs in Rust.
//!
//! A codec implements [`Codec`] and calls [`export_codec!`]; built for
//! `wasm32-wasip2` as a `cdylib` it becomes a component the d4c host loads. Built
//! natively the same crate is a plain library, which is how the benchmarks compare
//! wasm against native code.

pub mod varint;

/// Bindings generated from `wit/codec.wit` (wasm only).
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "delta-codec",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "d4c_codec_guest::bindings",
    });
}

/// A failure a codec reports as a value (mirrors `codec-error` in the WIT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An argument is malformed: a corrupt delta, or a delta for other bytes.
    InvalidInput(String),
    /// An input exceeds what the codec handles.
    TooLarge(String),
    /// The operation is not implemented.
    Unsupported(String),
    /// Anything else.
    Failed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Error::TooLarge(m) => write!(f, "too large: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand for codec results.
pub type Result<T> = std::result::Result<T, Error>;

/// The effort a zstd-based codec uses for `level`: `default` for 0, else at
/// most 22 (zstd's strongest).
pub fn effort(level: u8, default: u8) -> u8 {
    if level == 0 {
        default
    } else {
        level.min(22)
    }
}

/// A delta codec. See docs/CODECS.md for the contract every method must keep.
pub trait Codec {
    /// Short lowercase name, `[a-z0-9-]{1,32}`.
    const NAME: &'static str;
    /// Codec version (semver); bump it when the delta format changes.
    const VERSION: &'static str;
    /// Largest input (old, new or rebuilt output) in bytes.
    const MAX_INPUT: u64;
    /// Whether [`Codec::merge`] is implemented.
    const CAN_MERGE: bool = false;

    /// Encodes `new` relative to `old`; `level` 0 means the codec's default.
    fn diff(old: &[u8], new: &[u8], level: u8) -> Result<Vec<u8>>;
    /// Rebuilds `new` from `old` and `delta`.
    fn patch(old: &[u8], delta: &[u8]) -> Result<Vec<u8>>;
    /// Composes delta(v1→v2) and delta(v2→v3) into delta(v1→v3).
    fn merge(_lower: &[u8], _upper: &[u8]) -> Result<Vec<u8>> {
        Err(Error::Unsupported(format!(
            "codec {} cannot merge",
            Self::NAME
        )))
    }

    /// Checks both inputs of [`Codec::diff`] against [`Codec::MAX_INPUT`].
    fn check_inputs(old: &[u8], new: &[u8]) -> Result<()> {
        Self::check_size("old", old.len())?;
        Self::check_size("new", new.len())
    }

    /// Checks an input length against [`Codec::MAX_INPUT`].
    fn check_size(what: &str, len: usize) -> Result<()> {
        if len as u64 > Self::MAX_INPUT {
            return Err(Error::TooLarge(format!(
                "{what} is {len} bytes; {} accepts at most {}",
                Self::NAME,
                Self::MAX_INPUT
            )));
        }
        Ok(())
    }
}

/// Exports a [`Codec`] implementation as the component's `d4c:codec/codec`
/// interface. Does nothing when not compiling for wasm.
#[macro_export]
macro_rules! export_codec {
    ($codec:ident) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::bindings::exports::d4c::codec::codec as api;

            fn to_wit(e: $crate::Error) -> api::CodecError {
                match e {
                    $crate::Error::InvalidInput(m) => api::CodecError::InvalidInput(m),
                    $crate::Error::TooLarge(m) => api::CodecError::TooLarge(m),
                    $crate::Error::Unsupported(m) => api::CodecError::Unsupported(m),
                    $crate::Error::Failed(m) => api::CodecError::Failed(m),
                }
            }

            impl api::Guest for $codec {
                fn info() -> api::CodecInfo {
                    api::CodecInfo {
                        name: <$codec as $crate::Codec>::NAME.into(),
                        version: <$codec as $crate::Codec>::VERSION.into(),
                        can_merge: <$codec as $crate::Codec>::CAN_MERGE,
                        max_input: <$codec as $crate::Codec>::MAX_INPUT,
                    }
                }
                fn diff(
                    old: Vec<u8>,
                    new: Vec<u8>,
                    options: api::DiffOptions,
                ) -> ::core::result::Result<Vec<u8>, api::CodecError> {
                    <$codec as $crate::Codec>::diff(&old, &new, options.level).map_err(to_wit)
                }
                fn patch(
                    old: Vec<u8>,
                    delta: Vec<u8>,
                ) -> ::core::result::Result<Vec<u8>, api::CodecError> {
                    <$codec as $crate::Codec>::patch(&old, &delta).map_err(to_wit)
                }
                fn merge(
                    lower: Vec<u8>,
                    upper: Vec<u8>,
                ) -> ::core::result::Result<Vec<u8>, api::CodecError> {
                    <$codec as $crate::Codec>::merge(&lower, &upper).map_err(to_wit)
                }
            }

    $crate::bindings::export_bindings!($codec with_types_in $crate::bindings);
        };
    };
}
