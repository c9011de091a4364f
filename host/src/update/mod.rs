//! Moving images between machines: `push` to a registry or update server, and
//! `pull` of the cheapest update from what a client holds, with codec
//! negotiation (docs/ARCHITECTURE.md, "Push and pull").
//!
//! - [`plan`]: the cheapest path over the delta graph, codecs included.
//! - [`compact`]: a delta's header sent against the client's base tree.
//! - [`push`]: a cdimg and its codecs become artifacts, and the index lists them.
//! - [`pull`]: plan, download (resumable, checked), assemble, verify.
//! - [`attach`]: cdimgs attached to an ordinary image (OCI referrers).
//! - [`protocol`]: the update server's one request beyond the registry API.

pub mod attach;
pub mod compact;
pub mod plan;
pub mod protocol;
pub mod pull;
pub mod push;
