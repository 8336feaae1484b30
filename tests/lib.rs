//! Test plumbing shared by the end-to-end tests (`e2e/`) and the benchmarks
//! (`benches/`): a real control plane on loopback, the real agent binary, Docker,
//! and fixture repositories.

// Test plumbing: a fixture that cannot be set up should stop the test loudly.
#![allow(clippy::unwrap_used)]

pub mod support;
