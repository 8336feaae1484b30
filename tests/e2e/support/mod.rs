//! Shared test plumbing: a real control plane on loopback, and an HTTP client.

pub mod control_plane;

pub use control_plane::*;
