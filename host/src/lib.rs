//! The d4c host library: everything the `d4c` CLI, the snapshotter and the update
//! server share. Data flows one way: callers → this library → codec components.
//!
//! - [`beneath`]: creating a file tree strictly beneath a directory.
//! - [`codec`]: loads codec components, runs them sandboxed under caps, keeps the
//!   local codec store.
//! - [`digest`]: sha256 identities.
//! - [`fsutil`]: atomic file writes.
//! - [`home`]: where d4c keeps its data on this machine.
//! - [`image`]: the cdimg format; convert, diff, patch, merge, extract, export;
//!   the local image store.
//! - [`log`]: the services' logs (`tracing`, text or JSON).
//! - [`metrics`]: Prometheus metrics and their `/metrics` endpoint.
//! - [`mount`]: the lazy FUSE file system over an image chain.
//! - [`notify`]: readiness for systemd's `Type=notify`.
//! - [`progress`]: progress reporting.
//! - [`registry`]: OCI registries: the client, and d4c artifacts in them.
//! - [`units`]: sizes as users write them.
//! - [`update`]: push, and pull of the cheapest update with codec negotiation.

pub mod beneath;
pub mod codec;
pub mod digest;
pub mod fsutil;
pub mod home;
pub mod image;
pub mod log;
pub mod metrics;
pub mod mount;
pub mod notify;
pub mod progress;
pub mod registry;
pub mod units;
pub mod update;
