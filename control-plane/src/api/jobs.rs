//! What agents call (`/agent/jobs/…`, `/uploads/…`): claim and watch by
//! long-poll, status reports, log appends, artifact upload tickets and uploads.
//! Kept apart from the user-facing routes, as only agents' tokens reach it.
use std::pin::pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use kiln_protocol::*;
use serde::Deserialize;
use tokio::time::Instant;

use crate::artifacts::validate_descriptor;
use crate::deployer::start_deploy;
use crate::http::random_token;
use kiln_protocol::{parse_log_times, LOG_TIMES_HEADER};

/// Longest a claim or watch long-poll is held.
const MAX_LONG_POLL: Duration = Duration::from_secs(30);
/// When a paused agent (or one holding back) should ask for a job again.
const PAUSED_RETRY_SECONDS: u64 = 10;
use crate::error::ApiError;
use crate::http::{sha256_hex, Agent, ApiBytes, ApiJson, ApiPath, ApiQuery};
use crate::store::{self};
use crate::{AppState, Wait};

pub(super) async fn claim_job(
    State(state): State<AppState>,
    Agent(agent): Agent,
    ApiJson(request): ApiJson<ClaimRequest>,
) -> Result<Response, ApiError> {
    let wait = request
        .wait_seconds
        .map(Duration::from_secs)
        .unwrap_or(MAX_LONG_POLL)
        .min(MAX_LONG_POLL);
    let deadline = Instant::now() + wait;
    if let Some(facts) = request.facts {
        let agent_id = agent.id.clone();
        state
            .db
            .call(move |conn| store::record_facts(conn, &agent_id, &facts))
            .await?;
    }
    let holding_back = request.holding_back;
    if holding_back.is_some() || agent.holding_back.is_some() {
        let claimer = agent.clone();
        let reason = holding_back.clone();
        state
            .db
            .call(move |conn| store::record_holding_back(conn, &claimer, reason.as_deref()))
            .await?;
    }
    if agent.paused || holding_back.is_some() {
        // Nothing now, and no reason to hold the request.
        return Ok((
            StatusCode::NO_CONTENT,
            [(
                axum::http::header::RETRY_AFTER,
                PAUSED_RETRY_SECONDS.to_string(),
            )],
        )
            .into_response());
    }
    loop {
        // Register for the wake-up before looking, so a job queued in between
        // still wakes this request.
        let mut queued = pin!(state.jobs_queued.notified());
        queued.as_mut().enable();
        let policy = state.job_policy();
        let claimer = agent.clone();
        let roles = if request.roles.is_empty() {
            vec![kiln_protocol::Role::Build]
        } else {
            request.roles.clone()
        };
        let job = state
            .db
            .call(move |conn| store::claim_for_roles(conn, &claimer, &roles, policy))
            .await?;
        if let Some(mut job) = job {
            if let Some(registry) = &state.config.registry {
                let reference =
                    kiln_protocol::release_reference(registry, &job.project_id, &job.deployment_id);
                match &mut job.deploy {
                    Some(deploy) => {
                        if let Some(storefront) = &mut deploy.storefront {
                            storefront.reference =
                                Some(kiln_protocol::storefront_reference(&reference));
                        }
                        deploy.backend.reference = Some(reference);
                    }
                    None if job.release_image => job.release_reference = Some(reference),
                    None => {}
                }
            }
            tracing::info!(message = "Job claimed.", job_id = %job.job_id, deployment_id = %job.deployment_id, agent_id = %agent.id);
            state.announce_change();
            return Ok(Json(job).into_response());
        }
        let _parked = state.park(Wait::Claim);
        tokio::select! {
            _ = queued => {}
            _ = state.replicas.missed_wake_recheck() => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(StatusCode::NO_CONTENT.into_response()),
            _ = state.shutdown.cancelled() => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

/// `GET /agent/jobs/{job_id}/artifacts/{name}`: a deploy job's release image,
/// for the deploy host that holds the job, and for it alone.
pub(super) async fn download_release(
    State(state): State<AppState>,
    Agent(agent): Agent,
    ApiPath((job_id, name)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let agent_id = agent.id.clone();
    let deployment_id = state
        .db
        .call(move |conn| store::release_download(conn, &agent_id, &job_id))
        .await?;
    crate::artifacts::serve_artifact(&state.db, &state.artifacts, deployment_id, name).await
}

/// `POST /agent/environments/removed`: which of the environments a deploy
/// host runs releases of are gone, for it to stop them.
pub(super) async fn removed_environments(
    State(state): State<AppState>,
    Agent(_agent): Agent,
    ApiJson(asked): ApiJson<kiln_protocol::RemovedEnvironments>,
) -> Result<impl IntoResponse, ApiError> {
    if asked.environment_ids.len() > kiln_protocol::MAX_ENVIRONMENTS_ASKED {
        return Err(ApiError::InvalidParameter(format!(
            "environment_ids: at most {} at a time",
            kiln_protocol::MAX_ENVIRONMENTS_ASKED
        )));
    }
    let removed = state
        .db
        .call(move |conn| store::removed_environments(conn, &asked.environment_ids))
        .await?;
    Ok(Json(kiln_protocol::RemovedEnvironments {
        environment_ids: removed,
    }))
}

pub(super) async fn watch_job(
    State(state): State<AppState>,
    Agent(agent): Agent,
    ApiPath(job_id): ApiPath<String>,
    ApiJson(request): ApiJson<WatchRequest>,
) -> Result<Response, ApiError> {
    let policy = state.job_policy();
    // Hold at most half a lease, so the next watch renews it in time.
    let hold = request
        .wait_seconds
        .map(Duration::from_secs)
        .unwrap_or(MAX_LONG_POLL)
        .min(MAX_LONG_POLL)
        .min(Duration::from_millis(policy.lease_ms as u64 / 2));
    let deadline = Instant::now() + hold;
    let mut first = true;
    loop {
        let mut changed = pin!(state.changes.notified());
        changed.as_mut().enable();
        let (agent_id, id) = (agent.id.clone(), job_id.clone());
        // Only the first look renews the lease; later looks only check for a cancel.
        let renew = std::mem::replace(&mut first, false);
        let control = state
            .db
            .call(move |conn| store::watch(conn, &agent_id, &id, policy, renew))
            .await?;
        if control.directive == kiln_protocol::JobDirective::Cancel {
            return Ok(Json(control).into_response());
        }
        let _parked = state.park(Wait::Watch);
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(Json(control).into_response()),
            _ = state.shutdown.cancelled() => return Ok(Json(control).into_response()),
        }
    }
}

pub(super) async fn report_status(
    State(state): State<AppState>,
    Agent(agent): Agent,
    ApiPath(job_id): ApiPath<String>,
    ApiJson(update): ApiJson<JobStatusUpdate>,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(record) = &update.build {
        store::check_build_record(record)?;
    }
    let id = job_id.clone();
    let signing_state = state.clone();
    let applied = state
        .db
        .call(move |conn| {
            store::report_status(conn, &signing_state.signing, &agent.id, &id, update)
        })
        .await?;
    state.announce_change();
    // A job that ended sends its drains its last lines, whole or not.
    for stream in LogStream::ALL {
        state.drains.mark((job_id.clone(), stream));
    }
    if applied.deployment.status == DeploymentStatus::AwaitingDeployment
        && state.config.registry.is_some()
    {
        tokio::spawn(crate::registry::attach_release_provenance(
            state.clone(),
            applied.deployment.id.clone(),
        ));
    }
    if applied.start_deploy {
        start_deploy(&state, applied.deployment.id.clone()).await?;
    }
    Ok(Json(applied.deployment))
}

#[derive(Debug, Deserialize)]
pub(super) struct LogOffset {
    offset: u64,
}

/// A log offset is a file length: at most 2^63 - 1.
pub(super) fn check_offset(offset: u64) -> Result<u64, ApiError> {
    if offset > i64::MAX as u64 {
        return Err(ApiError::InvalidParameter(format!(
            "offset {offset} is past the end of any log (offsets are below 2^63)"
        )));
    }
    Ok(offset)
}

pub(super) async fn append_log(
    State(state): State<AppState>,
    Agent(agent): Agent,
    ApiPath((job_id, stream)): ApiPath<(String, LogStream)>,
    ApiQuery(LogOffset { offset }): ApiQuery<LogOffset>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<impl IntoResponse, ApiError> {
    let offset = check_offset(offset)?;
    let marks = match headers.get(LOG_TIMES_HEADER) {
        None => Vec::new(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(parse_log_times)
            .ok_or_else(|| {
                ApiError::InvalidParameter(format!(
                    "header {LOG_TIMES_HEADER} must be comma-separated offset:unix_millis pairs"
                ))
            })?,
    };
    let (agent_id, id) = (agent.id.clone(), job_id.clone());
    // Appends stay open after the job ends, for the job's own agent only and
    // within the stream's limit: a restarted agent delivers its spool late.
    state
        .db
        .call(move |conn| store::owned_job_for(conn, &agent_id, &id))
        .await?;
    let next_offset = state
        .logs
        .append(&job_id, stream, offset, body, &marks)
        .await?;
    if state.logs.is_shared() {
        crate::db::replicas::broadcast(&state.db, &state.replicas, crate::db::replicas::Wake::Logs);
    }
    state.drains.mark((job_id.clone(), stream));
    Ok(Json(LogAppendResponse {
        stream,
        next_offset,
    }))
}

pub(super) async fn request_upload(
    State(state): State<AppState>,
    Agent(agent): Agent,
    ApiPath(job_id): ApiPath<String>,
    ApiJson(descriptor): ApiJson<ArtifactDescriptor>,
) -> Result<impl IntoResponse, ApiError> {
    validate_descriptor(&descriptor, state.config.max_artifact_bytes)?;
    let token = random_token();
    let hash = sha256_hex(token.as_bytes());
    let expires_at = Utc::now() + chrono::Duration::hours(1);
    let name = descriptor.name.clone();
    state
        .db
        .call(move |conn| {
            store::create_upload_ticket(
                conn,
                &agent.id,
                &job_id,
                &descriptor,
                &hash,
                expires_at.timestamp_millis(),
            )
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ArtifactUploadTicket {
            name,
            upload_url: format!("{API_PREFIX}/uploads/{token}"),
            expires_at,
        }),
    ))
}

pub(super) async fn receive_upload(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let hash = sha256_hex(token.as_bytes());
    let lookup = hash.clone();
    let ticket = state
        .db
        .call(move |conn| store::upload_ticket(conn, &lookup))
        .await?;
    let declared = &ticket.descriptor;
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if length != declared.size {
            return Err(ApiError::ArtifactSize {
                name: declared.name.clone(),
                declared: declared.size,
                received: length,
            });
        }
    }
    if let Some(sha) = headers.get(SHA256_HEADER).and_then(|v| v.to_str().ok()) {
        if sha != declared.sha256 {
            return Err(ApiError::ArtifactChecksum {
                name: declared.name.clone(),
                declared: declared.sha256.clone(),
                actual: format!("{sha} (per the {SHA256_HEADER} header)"),
            });
        }
    }
    state
        .artifacts
        .receive(&ticket.deployment_id, &ticket.job_id, declared, body)
        .await?;
    let descriptor = ticket.descriptor.clone();
    state
        .db
        .call(move |conn| store::record_artifact(conn, &hash, &ticket))
        .await?;
    tracing::info!(message = "Artifact stored.", name = %descriptor.name, size = descriptor.size);
    Ok((StatusCode::CREATED, Json(descriptor)))
}
