//! Images in the cdimg format (docs/FORMAT.md) and the engines over them.
//!
//! - [`entry`]: tree entries, content storage, the image id.
//! - [`format`]: reading and writing cdimg files.
//! - [`builder`]: `convert` from OCI layouts and docker archives.

pub mod builder;
pub mod chain;
pub mod delta;
pub mod entry;
pub mod export;
pub mod extract;
pub mod format;
