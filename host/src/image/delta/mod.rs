//! The delta engines: [`diff`] two images, [`patch`] a chain into an image,
//! [`merge`] two deltas; [`similar`] pairs renamed files.

pub mod diff;
pub mod merge;
pub mod patch;
pub mod similar;
