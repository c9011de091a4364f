//! The delta engines: [`diff`] two images, [`patch`] a chain into an image,
//! [`merge`] two deltas; [`similar`] pairs renamed files; [`dict`] trains the
//! shared dictionaries small files are encoded against.

pub mod dict;
pub mod diff;
pub mod merge;
pub mod patch;
pub mod similar;
