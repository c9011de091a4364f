//! Errors from codec calls, naming the codec and the operation.

use std::fmt;

use crate::digest::Digest;

/// The codec operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Loading: compiling, linking, checking the exported interface, `info`.
    Load,
    /// `diff`.
    Diff,
    /// `patch`.
    Patch,
    /// `merge`.
    Merge,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Load => "load",
            Op::Diff => "diff",
            Op::Patch => "patch",
            Op::Merge => "merge",
        })
    }
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The codec rejected its input (`invalid-input`).
    InvalidInput,
    /// An input is larger than the codec accepts (`too-large`, or `max-input`).
    TooLarge,
    /// The codec does not implement the operation (`unsupported`).
    Unsupported,
    /// The codec reported another failure (`failed`).
    Failed,
    /// The call ran past the time cap.
    Timeout,
    /// The call tried to grow memory past the memory cap.
    OutOfMemory,
    /// The component trapped (a bug in it, or a call to a forbidden import).
    Trap,
    /// The bytes are not a component exporting `d4c:codec/codec`, or its info is invalid.
    NotACodec,
    /// `patch` produced bytes whose digest is not the expected one.
    WrongOutput,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::TooLarge => "input too large",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Failed => "failed",
            ErrorKind::Timeout => "time limit exceeded",
            ErrorKind::OutOfMemory => "memory limit exceeded",
            ErrorKind::Trap => "trapped",
            ErrorKind::NotACodec => "not a d4c codec",
            ErrorKind::WrongOutput => "wrong output",
        })
    }
}

/// A failed codec call: which codec, which operation, what kind, and details.
#[derive(Debug, Clone)]
pub struct CodecError {
    /// The codec's name ("?" if it failed before its info was known).
    pub codec: String,
    /// The component's sha256.
    pub digest: Digest,
    /// The operation.
    pub op: Op,
    /// The kind of failure.
    pub kind: ErrorKind,
    /// Details, one line.
    pub message: String,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.codec == "?" {
            write!(
                f,
                "component (sha256 {}) {}: {}",
                self.digest.short(),
                self.op,
                self.kind
            )?;
        } else {
            write!(
                f,
                "codec {} (sha256 {}) {}: {}",
                self.codec,
                self.digest.short(),
                self.op,
                self.kind
            )?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for CodecError {}
