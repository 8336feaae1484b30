//! `kiln-agent`: claims jobs from a control plane, builds Medusa apps in Docker,
//! ships logs and artifacts. `main.rs` turns errors into exit codes; everything
//! else lives here so tests drive the real code.

pub mod backoff;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod detect;
pub mod doctor;
pub mod executor;
pub mod logs;
pub mod mask;
pub mod metrics;
pub mod package_manager;
pub mod pipeline;
pub mod scan;
pub mod state;

#[cfg(test)]
mod testing;
