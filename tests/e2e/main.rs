//! All end-to-end tests, one binary, one module per area. Each test starts the
//! real servers it needs on loopback; see `support`.

// Tests: a fixture that cannot be set up should stop the test loudly.
#![allow(clippy::unwrap_used)]

mod accept;
mod agent;
mod cache;
mod control_plane;
mod dashboard;
mod deploy;
mod faults;
mod fleet;
mod git_hosts;
mod operate;
mod outbound;
mod provenance;
mod readme;
mod review;
mod sandbox;
mod scan;
mod trust;

pub use kiln_tests::support;
