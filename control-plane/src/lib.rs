//! Kiln's reference control plane: projects, environments bound to branches,
//! deployments per push and per pull request, agents that claim jobs by long-poll,
//! logs and artifacts, git-host webhooks and status reports, the dashboard, and
//! the deploy step.
//!
//! `main.rs` only calls `cli::main`; everything else is here so tests run the
//! real server in-process on `127.0.0.1:0`.

// Every binary that serves (kiln-server, the tests' copy, the benchmarks) gets
// it: with many threads allocating per request, glibc's malloc cost the claim
// path 6–12% of its throughput.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod api;
mod artifacts;
pub mod cli;
pub mod connections;
mod dashboard;
mod db;
mod deployer;
mod dotenv;
mod drains;
mod error;
mod follows;
mod forge;
mod http;
mod leader;
mod logs;
mod metrics;
mod objects;
mod outbound;
mod registry;
mod retention;
mod secrets;
mod server;
mod signing;
mod state;
mod store;
mod sync;
mod verify;
mod webhooks;

pub use connections::ConnectionLimits;
pub use db::DbError;
pub use error::ApiError;
pub use objects::ObjectStoreConfig;
pub use server::{app, serve};
pub use state::{AppState, Config, StartError, Wait};
