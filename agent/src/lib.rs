//! `kiln-agent`: claims jobs from a control plane, builds Medusa apps in Docker,
//! ships logs and artifacts. `main.rs` turns errors into exit codes; everything
//! else lives here so tests drive the real code. Only `cli` (and the packer, for
//! the benchmarks) is public: the rest is the binary's own, so dead code shows.

mod backoff;
mod beneath;
mod cache;
mod caddy;
pub mod cli;
mod client;
mod config;
mod daemon;
mod deploy;
mod detect;
mod disk;
mod doctor;
mod env_vars;
mod executor;
mod facts;
mod job;
mod logs;
mod mask;
mod metrics;
mod package_manager;
mod pipeline;
/// The artifact packer, public for the benchmarks.
pub use pipeline::artifact;
mod repo_fs;
mod running;
mod runtime_logs;
mod scan;
mod state;
mod teardown;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// What the fuzz targets (`fuzz/`) drive, behind the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    pub use crate::detect::{detect, Detection};
}

/// Locks a mutex, taking over a poisoned one: every value behind these locks is
/// left consistent between statements, so a panic elsewhere does not spoil it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
