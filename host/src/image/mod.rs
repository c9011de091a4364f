//! Images in the cdimg format (docs/FORMAT.md) and the engines over them.
//!
//! - [`entry`]: tree entries, content storage, the image id.
//! - [`format`](mod@format): reading and writing cdimg files.
//! - [`builder`]: `convert` from OCI layouts and docker archives.
//! - [`origin`]: provenance, the original image rebuilt and verified.
//! - [`store`]: the local image store, names for chains of cdimg files.

pub mod builder;
pub mod chain;
pub mod delta;
pub mod entry;
pub mod export;
pub mod extract;
pub mod format;
pub mod origin;
pub mod store;
