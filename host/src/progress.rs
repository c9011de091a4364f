//! Progress reporting from long operations to whoever shows it (a terminal bar
//! in the CLI, nothing in tests).

/// Receives progress of a long operation. Implementations must be cheap: calls
/// come from worker threads, once per file.
pub trait Progress: Sync {
    /// A phase begins, with `total` units of work (bytes or files).
    fn start(&self, _phase: &str, _total: u64) {}
    /// `n` more units are done.
    fn advance(&self, _n: u64) {}
    /// The phase is over.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
