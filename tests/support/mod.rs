//! Shared test plumbing: a real control plane on loopback, the real agent binary,
//! Docker, and fixture repositories.

pub mod agent;
pub mod browser;
pub mod control_plane;
pub mod deploy_host;
pub mod docker;
pub mod git_server;
pub mod hook_receiver;
pub mod hostile;
pub mod loopback;
pub mod otlp;
pub mod proxy;
pub mod public_tree;
pub mod repo;
pub mod s3;
pub mod server;
pub mod status_host;
pub mod store_api;
pub mod world;

pub use agent::*;
pub use browser::*;
pub use control_plane::*;
pub use deploy_host::*;
pub use docker::*;
pub use git_server::*;
pub use hook_receiver::*;
pub use hostile::HostileControlPlane;
pub use otlp::*;
pub use proxy::*;
pub use repo::*;
pub use s3::*;
pub use server::*;
pub use status_host::*;
pub use store_api::*;
pub use world::World;
