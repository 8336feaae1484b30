//! Wire types of Kiln's `/api/v1`, shared by `kiln-agent` and `kiln-control-plane`.
//!
//! Data only: no I/O, no async runtime, no HTTP client. Every type here is part of the
//! public protocol. A field added after v1.0 gets `#[serde(default)]` and a note saying
//! when, so older peers keep parsing. Unknown fields are ignored (forward compatibility);
//! an unknown status or a missing required field is an error.

pub mod agent;
pub mod api;
pub mod error;
pub mod status;

pub use agent::*;
pub use api::*;
pub use error::*;
pub use status::*;

/// Every route of this protocol lives under this prefix.
pub const API_PREFIX: &str = "/api/v1";

/// Header carrying an artifact's lowercase hex sha256 on upload.
pub const SHA256_HEADER: &str = "x-kiln-sha256";
