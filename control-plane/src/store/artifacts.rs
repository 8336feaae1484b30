//! Artifacts and their upload tickets, and which job's logs a reader sees.

use crate::db::sql::{params, Connection, OptionalExtension};
use kiln_protocol::{ArtifactDescriptor, DeploymentStatus, StoredArtifact};

use super::rows::{get_deployment_in, job_in, owned_job, JobRow};
use super::values::now_ms;
use crate::error::ApiError;

pub fn artifact(
    conn: &mut Connection,
    deployment_id: &str,
    name: &str,
) -> Result<StoredArtifact, ApiError> {
    let deployment = get_deployment_in(conn, deployment_id)?;
    let artifact = deployment
        .artifacts
        .into_iter()
        .find(|artifact| artifact.descriptor.name == name)
        .ok_or_else(|| ApiError::not_found("artifact", format!("{deployment_id}/{name}")))?;
    if let Some(removed_at) = deployment.artifacts_removed_at {
        return Err(ApiError::Gone(format!(
            "artifact {name} of deployment {deployment_id} was deleted on {} by the server's retention policy (--artifact-retention-days); redeploy the deployment to build it again",
            removed_at.format("%Y-%m-%d %H:%M UTC")
        )));
    }
    Ok(artifact)
}

/// Refuses work on a job that no longer builds its deployment: artifacts are
/// accepted only between the claim and the final report, before the secret scan's
/// verdict can be acted on.
fn require_building(conn: &Connection, job: &JobRow) -> Result<(), ApiError> {
    let deployment = get_deployment_in(conn, &job.deployment_id)?;
    let holds_it = deployment.current_job_id.as_deref() == Some(job.id.as_str());
    if job.finished || !holds_it || deployment.status != DeploymentStatus::Building {
        return Err(ApiError::Conflict(format!(
            "job {} no longer builds deployment {} (it is {}); artifacts are accepted only while the job builds",
            job.id, deployment.id, deployment.status
        )));
    }
    Ok(())
}

pub fn create_upload_ticket(
    conn: &mut Connection,
    agent_id: &str,
    job_id: &str,
    descriptor: &ArtifactDescriptor,
    token_hash: &str,
    expires_at: i64,
) -> Result<(), ApiError> {
    let tx = conn.transaction()?;
    let job = owned_job(&tx, agent_id, job_id)?;
    require_building(&tx, &job)?;
    tx.execute(
        "INSERT INTO upload_tickets (token_hash, job_id, deployment_id, name, size, sha256, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            token_hash,
            job.id,
            job.deployment_id,
            descriptor.name,
            descriptor.size as i64,
            descriptor.sha256,
            expires_at
        ],
    )?;
    tx.commit()?;
    Ok(())
}

/// The artifact a job stored under `name`, if any.
pub fn stored_artifact(
    conn: &Connection,
    job_id: &str,
    name: &str,
) -> Result<Option<ArtifactDescriptor>, ApiError> {
    Ok(conn
        .query_row(
            "SELECT size, sha256 FROM artifacts WHERE job_id = ?1 AND name = ?2",
            params![job_id, name],
            |row| {
                Ok(ArtifactDescriptor {
                    name: name.to_owned(),
                    size: row.get::<_, i64>(0)? as u64,
                    sha256: row.get(1)?,
                })
            },
        )
        .optional()?)
}

#[derive(Debug, Clone)]
pub struct UploadTicket {
    pub job_id: String,
    pub deployment_id: String,
    pub descriptor: ArtifactDescriptor,
}

pub fn upload_ticket(conn: &mut Connection, token_hash: &str) -> Result<UploadTicket, ApiError> {
    let ticket = conn.query_row(
        "SELECT job_id, deployment_id, name, size, sha256 FROM upload_tickets WHERE token_hash = ?1 AND expires_at > ?2",
        params![token_hash, now_ms()],
        |row| {
            Ok(UploadTicket {
                job_id: row.get(0)?,
                deployment_id: row.get(1)?,
                descriptor: ArtifactDescriptor {
                    name: row.get(2)?,
                    size: row.get::<_, i64>(3)? as u64,
                    sha256: row.get(4)?,
                },
            })
        },
    )
    .optional()?
    .ok_or_else(|| {
        ApiError::Unauthorized(
            "upload URL unknown or expired; ask for a new one with POST /api/v1/agent/jobs/{job_id}/artifacts".to_owned(),
        )
    })?;
    require_building(conn, &job_in(conn, &ticket.job_id)?)?;
    Ok(ticket)
}

pub fn record_artifact(
    conn: &mut Connection,
    token_hash: &str,
    ticket: &UploadTicket,
) -> Result<(), ApiError> {
    let tx = conn.transaction()?;
    // The ticket may have been revoked (with its agent) while its bytes came.
    let valid = tx
        .query_row(
            "SELECT 1 FROM upload_tickets WHERE token_hash = ?1",
            [token_hash],
            |_| Ok(()),
        )
        .optional()?;
    let stored_before = stored_artifact(&tx, &ticket.job_id, &ticket.descriptor.name)?;
    if valid.is_none() && stored_before.as_ref() != Some(&ticket.descriptor) {
        return Err(ApiError::Unauthorized(
            "upload URL unknown or expired (its agent was revoked, or it was used); ask for a new one with POST /api/v1/agent/jobs/{job_id}/artifacts".to_owned(),
        ));
    }
    let inserted = tx.execute(
        "INSERT INTO artifacts (deployment_id, job_id, name, size, sha256, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (job_id, name) DO NOTHING",
        params![
            ticket.deployment_id,
            ticket.job_id,
            ticket.descriptor.name,
            ticket.descriptor.size as i64,
            ticket.descriptor.sha256,
            now_ms()
        ],
    )?;
    // A stored artifact is never replaced; the same bytes again (a retry whose
    // answer was lost) are fine.
    if inserted == 0
        && stored_artifact(&tx, &ticket.job_id, &ticket.descriptor.name)?.as_ref()
            != Some(&ticket.descriptor)
    {
        return Err(ApiError::ArtifactExists {
            job_id: ticket.job_id.clone(),
            name: ticket.descriptor.name.clone(),
        });
    }
    tx.execute(
        "DELETE FROM upload_tickets WHERE token_hash = ?1",
        [token_hash],
    )?;
    tx.commit()?;
    Ok(())
}

/// The job whose logs a reader sees: the one named, or the deployment's latest
/// that writes `stream` (the deploy stream is a deploy job's, the others a
/// build's).
pub fn job_for_logs(
    conn: &mut Connection,
    deployment_id: &str,
    job_id: Option<&str>,
    stream: kiln_protocol::LogStream,
) -> Result<Option<JobRow>, ApiError> {
    get_deployment_in(conn, deployment_id)?;
    if let Some(job_id) = job_id {
        let job = job_in(conn, job_id)?;
        if job.deployment_id != deployment_id {
            return Err(ApiError::not_found(
                "job",
                format!("{deployment_id}/{job_id}"),
            ));
        }
        return Ok(Some(job));
    }
    let latest: Option<String> = conn
        .query_row(
            "SELECT id FROM jobs WHERE deployment_id = ?1 AND kind = ?2 ORDER BY attempt DESC LIMIT 1",
            params![
                deployment_id,
                if stream.of_deploy_job() {
                    "deploy"
                } else {
                    "build"
                }
            ],
            |row| row.get(0),
        )
        .optional()?;
    latest.map(|id| job_in(conn, &id)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{agent, claim_one, push, shop};

    fn descriptor(name: &str) -> ArtifactDescriptor {
        ArtifactDescriptor {
            name: name.into(),
            size: 3,
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn a_ticket_becomes_the_deployments_artifact() {
        let (mut conn, _, _) = shop(&[]);
        let deployment = push(&mut conn, "main", 1).remove(0);
        let builder = agent(&mut conn, &[]);
        let job = claim_one(&mut conn, &builder);
        let far = now_ms() + 60_000;
        create_upload_ticket(
            &mut conn,
            &builder.id,
            &job.job_id,
            &descriptor("backend.tar.gz"),
            "t1",
            far,
        )
        .unwrap();
        let stranger = agent(&mut conn, &[]);
        assert!(matches!(
            create_upload_ticket(
                &mut conn,
                &stranger.id,
                &job.job_id,
                &descriptor("x"),
                "t2",
                far
            ),
            Err(ApiError::Forbidden(_))
        ));
        let ticket = upload_ticket(&mut conn, "t1").unwrap();
        record_artifact(&mut conn, "t1", &ticket).unwrap();
        assert!(
            matches!(
                upload_ticket(&mut conn, "t1"),
                Err(ApiError::Unauthorized(_))
            ),
            "used once"
        );
        let stored = artifact(&mut conn, &deployment.id, "backend.tar.gz").unwrap();
        assert_eq!(
            (stored.job_id.as_str(), stored.descriptor.size),
            (job.job_id.as_str(), 3)
        );
        assert!(matches!(
            artifact(&mut conn, &deployment.id, "storefront.tar.gz"),
            Err(ApiError::NotFound { .. })
        ));
        let logs = job_for_logs(
            &mut conn,
            &deployment.id,
            None,
            kiln_protocol::LogStream::System,
        )
        .unwrap()
        .unwrap();
        assert_eq!(logs.id, job.job_id);
    }

    #[test]
    fn expired_tickets_are_refused() {
        let (mut conn, _, _) = shop(&[]);
        push(&mut conn, "main", 1);
        let builder = agent(&mut conn, &[]);
        let job = claim_one(&mut conn, &builder);
        create_upload_ticket(
            &mut conn,
            &builder.id,
            &job.job_id,
            &descriptor("b"),
            "old",
            now_ms() - 1,
        )
        .unwrap();
        assert!(matches!(
            upload_ticket(&mut conn, "old"),
            Err(ApiError::Unauthorized(_))
        ));
    }
}
