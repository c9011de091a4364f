//! d4c's containerd integration: a proxy snapshotter serving d4c images through
//! the host library's lazy mount, and the containerd client behind `d4c load`.
//!
//! - [`api`]: containerd's snapshots API (generated).
//! - [`config`]: the configuration file.
//! - [`log`]: the log, by level.
//! - [`meta`]: snapshot metadata, persisted atomically.
//! - [`filter`]: containerd's filter syntax, for `List`.
//! - [`remote`]: images containerd's CRI plugin pulls, fetched as d4c updates.
//! - [`lower`]: their lower layers, filled in when another image needs them.
//! - [`snapshotter`]: the operations.
//! - [`mounts`]: the mount manager, the process serving d4c snapshots' FUSE
//!   mounts across restarts of the snapshotter.
//! - [`service`]: the gRPC service over them.
//! - [`load`]: `d4c load`, through containerd's content, images, leases and
//!   snapshots services.

pub mod api;
pub mod config;
pub mod filter;
pub mod load;
pub mod log;
pub mod lower;
pub mod meta;
pub mod mounts;
pub mod remote;
pub mod service;
pub mod snapshotter;
