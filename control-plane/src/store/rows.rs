//! Rows read back as the model's values: a deployment (with its history and
//! artifacts), a job, an artifact. Below every table's module, so each reads
//! what the others wrote without importing them.

use kiln_protocol::{ArtifactDescriptor, Deployment, StoredArtifact, Transition};

use super::values::{parse_component, parse_status, time};
use crate::db::sql::{Connection, OptionalExtension, Params, Row};
use crate::error::ApiError;

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    pub deployment_id: String,
    pub agent_id: String,
    pub finished: bool,
}

pub(super) fn job_in(conn: &Connection, job_id: &str) -> Result<JobRow, ApiError> {
    conn.query_row(
        "SELECT id, deployment_id, agent_id, finished_at IS NOT NULL FROM jobs WHERE id = ?1",
        [job_id],
        |row| {
            Ok(JobRow {
                id: row.get(0)?,
                deployment_id: row.get(1)?,
                agent_id: row.get(2)?,
                finished: row.get(3)?,
            })
        },
    )
    .optional()?
    .ok_or_else(|| ApiError::not_found("job", job_id))
}

/// The job, if it belongs to this agent.
pub(super) fn owned_job(
    conn: &Connection,
    agent_id: &str,
    job_id: &str,
) -> Result<JobRow, ApiError> {
    let job = job_in(conn, job_id)?;
    if job.agent_id != agent_id {
        return Err(ApiError::Forbidden(format!(
            "job {job_id} belongs to another agent"
        )));
    }
    Ok(job)
}

pub(super) fn deployment_from_row(row: &Row) -> crate::db::sql::Result<Deployment> {
    let detail: Option<String> = row.get("detail")?;
    Ok(Deployment {
        id: row.get("id")?,
        project_id: row.get("project_id")?,
        environment_id: row.get("environment_id")?,
        commit_sha: row.get("commit_sha")?,
        branch: row.get("branch")?,
        author: row.get("author")?,
        author_avatar: row.get("author_avatar")?,
        author_login: row.get("author_login")?,
        pusher: row.get("pusher")?,
        use_cache: row.get("use_cache")?,
        message: row.get("message")?,
        status: parse_status(&row.get::<_, String>("status")?)?,
        backend_status: parse_component(&row.get::<_, String>("backend_status")?),
        storefront_status: parse_component(&row.get::<_, String>("storefront_status")?),
        reason: row.get("reason")?,
        detail: detail.and_then(|text| serde_json::from_str(&text).ok()),
        redeploy_of: row.get("redeploy_of")?,
        attempts: row.get("attempts")?,
        current_job_id: row.get("current_job_id")?,
        agent_id: row.get("agent_id")?,
        created_at: time(row.get("created_at")?),
        updated_at: time(row.get("updated_at")?),
        transitions: Vec::new(),
        artifacts: Vec::new(),
        artifacts_removed_at: row.get::<_, Option<i64>>("artifacts_removed_at")?.map(time),
        waiting_for: None,
    })
}

pub(super) fn with_history(
    conn: &Connection,
    mut deployment: Deployment,
) -> Result<Deployment, ApiError> {
    // Both in one round trip (with any deferred writes before them).
    let [transitions, artifacts] = conn.query_together([
        (
            "SELECT status, at, reason FROM transitions WHERE deployment_id = ?1 ORDER BY seq",
            [&deployment.id].values(),
        ),
        (ARTIFACTS_OF, [&deployment.id].values()),
    ])?;
    deployment.transitions = transitions
        .iter()
        .map(|row| {
            Ok(Transition {
                status: parse_status(&row.get::<_, String>(0)?)?,
                at: time(row.get(1)?),
                reason: row.get(2)?,
            })
        })
        .collect::<Result<_, crate::db::sql::Error>>()?;
    deployment.artifacts = artifacts
        .iter()
        .map(artifact_from_row)
        .collect::<Result<_, _>>()?;
    Ok(deployment)
}

pub(super) fn get_deployment_in(conn: &Connection, id: &str) -> Result<Deployment, ApiError> {
    with_history(conn, deployment_row_in(conn, id)?)
}

/// The deployment without its transitions and artifacts (left empty): one
/// query, for the agents' hot paths.
pub(super) fn deployment_row_in(conn: &Connection, id: &str) -> Result<Deployment, ApiError> {
    conn.query_row(
        "SELECT * FROM deployments WHERE id = ?1",
        [id],
        deployment_from_row,
    )
    .optional()?
    .ok_or_else(|| ApiError::not_found("deployment", id))
}

/// The artifacts of the build job that last held deployment `?1` (deploy
/// jobs make none).
pub(super) const ARTIFACTS_OF: &str =
    "SELECT a.name, a.size, a.sha256, a.job_id, a.created_at FROM artifacts a
     WHERE a.deployment_id = ?1
       AND a.job_id = (SELECT j.id FROM jobs j WHERE j.deployment_id = ?1 AND j.kind = 'build'
                       ORDER BY j.attempt DESC LIMIT 1)
     ORDER BY a.name";

pub(super) fn artifact_from_row(row: &Row) -> Result<StoredArtifact, crate::db::sql::Error> {
    Ok(StoredArtifact {
        descriptor: ArtifactDescriptor {
            name: row.get(0)?,
            size: row.get::<_, i64>(1)? as u64,
            sha256: row.get(2)?,
        },
        job_id: row.get(3)?,
        created_at: time(row.get(4)?),
    })
}
