//! The deployment model on SQLite or PostgreSQL (`crate::db::sql`): projects, environments, deployments, agents,
//! jobs, deploys and artifacts, one module each.
//!
//! Each public function is one transaction. Every status change goes through
//! `deployments::set_status`, which asks `kiln_protocol::check_transition` and
//! records the transition. No HTTP and no async here: handlers call these through
//! `Db::call`.

mod agent_deploys;
mod agents;
mod artifacts;
mod deployments;
mod deploys;
mod fleet;
mod jobs;
mod lifecycle;
mod log_chunks;
mod log_drains;
mod outbox;
mod projects;
mod provenance;
mod registration_tokens;
mod retention;
mod rows;
mod users;
pub(crate) mod values;
mod variables;
mod webhooks;

pub use agent_deploys::{begin_rollback, migrations_ahead, release_download, removed_environments};
pub use agents::*;
pub use artifacts::*;
pub use deployments::*;
pub use deploys::*;
pub use fleet::*;
pub use jobs::*;
pub use log_chunks::*;
pub use log_drains::*;
pub use outbox::*;
pub use projects::*;
pub use provenance::{
    check_build_record, deployment_provenance, provenance_keys, record_published, register_key,
    release_provenance, rotate_key, shared_output,
};
pub use registration_tokens::*;
pub use retention::*;
pub use users::*;
pub use variables::*;
pub use webhooks::*;

pub use values::{bytes_text, now_ms};

#[cfg(test)]
mod testing;
