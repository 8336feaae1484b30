//! The `/api/v1` routes: agent endpoints under `/agent`, user endpoints beside them.

use std::pin::pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use chrono::Utc;
use kiln_protocol::{
    ArtifactDescriptor, ArtifactUploadTicket, ClaimRequest, CreateEnvironment, CreateProject,
    DeploymentList, EnvironmentList, JobStatusUpdate, LogAppendResponse, LogStream, ProjectList,
    PullRequestEvent, PushEvent, RegisterAgentRequest, RegisterAgentResponse, SetVariables,
    UpdateEnvironment, UpdateProject, VariableList, WatchRequest, API_PREFIX, SHA256_HEADER,
};
use rand::RngCore;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::time::Instant;

use crate::artifacts::validate_descriptor;
use crate::error::ApiError;
use crate::http::{
    registration_refused, sha256_hex, Admin, Agent, ApiBytes, ApiJson, ApiPath, ApiQuery,
    Registration,
};
use crate::logs::Stamper;
use crate::store::{self, DeploymentFilter};
use crate::{deployer, AppState, Wait};
use kiln_protocol::{parse_log_times, LOG_TIMES_HEADER};

/// Longest a claim or watch long-poll is held.
const MAX_LONG_POLL: Duration = Duration::from_secs(30);
const LOG_READ_CHUNK: usize = 64 * 1024;

/// Largest body of a route that reads JSON, unless it says otherwise below.
const BODY_LIMIT: usize = 64 << 10;
/// A status report carries the secret scan's findings.
const STATUS_LIMIT: usize = 1 << 20;
/// A log append: the agent sends at most `SHIP_CHUNK` (256 KiB); room to grow.
pub(crate) const LOG_APPEND_LIMIT: usize = 4 << 20;
/// A project's allowlists may hold a thousand entries.
const PROJECT_LIMIT: usize = 2 << 20;
/// A thousand variables of up to 64 KiB is more than anyone needs in one go.
const VARIABLES_LIMIT: usize = 8 << 20;
/// An event carries a commit message of up to 64 KiB.
const EVENT_LIMIT: usize = 256 << 10;
/// When a paused agent (or one holding back) should ask for a job again.
const PAUSED_RETRY_SECONDS: u64 = 10;
/// Webhook payloads: GitHub lists at most 20 commits in a push.
const HOOK_LIMIT: usize = 5 << 20;

fn limit(bytes: usize) -> DefaultBodyLimit {
    DefaultBodyLimit::max(bytes)
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/agents/register", post(register_agent))
        .route("/agents", get(list_agents))
        .route(
            "/agents/{agent_id}",
            get(get_agent_info).patch(update_agent).delete(revoke_agent),
        )
        .route(
            "/registration-tokens",
            post(create_registration_token).get(list_registration_tokens),
        )
        .route(
            "/registration-tokens/{token_id}",
            axum::routing::delete(revoke_registration_token),
        )
        .route("/agent/jobs/claim", post(claim_job))
        .route("/agent/jobs/{job_id}/watch", post(watch_job))
        .route(
            "/agent/jobs/{job_id}/status",
            post(report_status).layer(limit(STATUS_LIMIT)),
        )
        .route(
            "/agent/jobs/{job_id}/logs/{stream}",
            put(append_log).layer(limit(LOG_APPEND_LIMIT)),
        )
        .route("/agent/jobs/{job_id}/artifacts", post(request_upload))
        .route(
            "/uploads/{token}",
            put(receive_upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/projects",
            post(create_project)
                .layer(limit(PROJECT_LIMIT))
                .get(list_projects),
        )
        .route(
            "/projects/{project_id}",
            get(get_project)
                .patch(update_project)
                .layer(limit(PROJECT_LIMIT)),
        )
        .route(
            "/projects/{project_id}/environments",
            post(create_environment).get(list_environments),
        )
        .route(
            "/environments/{environment_id}",
            get(get_environment).patch(update_environment),
        )
        .route(
            "/environments/{environment_id}/variables",
            get(list_variables)
                .put(set_variables)
                .layer(limit(VARIABLES_LIMIT)),
        )
        .route("/events/push", post(push_event).layer(limit(EVENT_LIMIT)))
        .route(
            "/hooks/github",
            post(crate::hooks::github).layer(limit(HOOK_LIMIT)),
        )
        .route(
            "/hooks/gitlab",
            post(crate::hooks::gitlab).layer(limit(HOOK_LIMIT)),
        )
        .route(
            "/hooks/gitea",
            post(crate::hooks::gitea).layer(limit(HOOK_LIMIT)),
        )
        .route(
            "/projects/{project_id}/webhook-secret",
            post(rotate_webhook_secret),
        )
        .route(
            "/events/pull_request",
            post(pull_request_event).layer(limit(EVENT_LIMIT)),
        )
        .route("/deployments", get(list_deployments))
        .route("/deployments/{deployment_id}", get(get_deployment))
        .route("/deployments/{deployment_id}/redeploy", post(redeploy))
        .route("/deployments/{deployment_id}/deploy", post(deploy))
        .route("/deployments/{deployment_id}/logs/{stream}", get(read_log))
        .route(
            "/deployments/{deployment_id}/artifacts/{name}",
            get(download_artifact),
        )
        .route("/deployments/{deployment_id}/cancel", post(cancel))
        .method_not_allowed_fallback(|| async {
            ApiError::InvalidParameter("method not allowed on this route".to_owned())
        })
        .fallback(|| async { ApiError::not_found("route", "(see README.md for the API)") })
        .layer(limit(BODY_LIMIT));
    // Paths outside the API are the dashboard's, and so is the 404 for them.
    Router::new()
        .nest(API_PREFIX, api)
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

/// Runs one store operation and answers with its value as JSON.
async fn answer<T, F>(state: &AppState, operation: F) -> Result<Json<T>, ApiError>
where
    T: serde::Serialize + Send + 'static,
    F: FnOnce(&mut crate::sql::Connection) -> Result<T, ApiError> + Send + 'static,
{
    Ok(Json(state.db.call(operation).await?))
}

pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

// ---------------------------------------------------------------- agents

async fn register_agent(
    State(state): State<AppState>,
    registration: Registration,
    ApiJson(request): ApiJson<RegisterAgentRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let auth = match registration {
        Registration::Verified(auth) => auth,
        Registration::InBody => crate::http::registration_auth(&state, &request.registration_token)
            .await
            .map_err(|_| registration_refused())?,
    };
    store::check_agent_fields(&request.name, &request.labels)?;
    let token = random_token();
    let hash = sha256_hex(token.as_bytes());
    let agent_id = state
        .db
        .call(move |conn| {
            store::register_agent_with(
                conn,
                &request.name,
                &request.labels,
                &hash,
                request.facts.as_ref(),
                &auth,
            )
        })
        .await?;
    tracing::info!(message = "Agent registered.", %agent_id);
    Ok((
        StatusCode::CREATED,
        Json(RegisterAgentResponse { agent_id, token }),
    ))
}

async fn list_agents(
    State(state): State<AppState>,
    _: Admin,
) -> Result<impl IntoResponse, ApiError> {
    let agents = state.db.call(store::list_agents).await?;
    Ok(Json(kiln_protocol::AgentList {
        agents: agents.iter().map(store::AgentView::info).collect(),
    }))
}

async fn get_agent_info(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = state
        .db
        .call(move |conn| store::get_agent(conn, &id))
        .await?;
    Ok(Json(agent.info()))
}

async fn update_agent(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(update): ApiJson<kiln_protocol::UpdateAgent>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = state
        .db
        .call(move |conn| match update.paused {
            Some(paused) => store::set_paused(conn, &id, paused),
            None => store::get_agent(conn, &id),
        })
        .await?;
    tracing::info!(message = "Agent updated.", agent_id = %agent.id, paused = agent.paused);
    Ok(Json(agent.info()))
}

async fn revoke_agent(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let agent_id = id.clone();
    let requeued = state
        .db
        .call(move |conn| store::revoke_agent(conn, &id))
        .await?;
    tracing::warn!(message = "Agent revoked.", %agent_id, running = ?requeued);
    // The reaper hands its jobs out again on its next round.
    state.announce_queue_change();
    Ok(StatusCode::NO_CONTENT)
}

async fn create_registration_token(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(request): ApiJson<kiln_protocol::CreateRegistrationToken>,
) -> Result<impl IntoResponse, ApiError> {
    let token = random_token();
    let hash = sha256_hex(token.as_bytes());
    let created = state
        .db
        .call(move |conn| store::create_registration_token(conn, request, &token, &hash))
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn list_registration_tokens(
    State(state): State<AppState>,
    _: Admin,
) -> Result<impl IntoResponse, ApiError> {
    let tokens = state.db.call(store::list_registration_tokens).await?;
    Ok(Json(kiln_protocol::RegistrationTokenList {
        registration_tokens: tokens,
    }))
}

async fn revoke_registration_token(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let revoked = state
        .db
        .call(move |conn| store::revoke_registration_token(conn, &id))
        .await?;
    Ok(Json(revoked))
}

async fn claim_job(
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
        let job = state
            .db
            .call(move |conn| store::claim(conn, &claimer, policy))
            .await?;
        if let Some(job) = job {
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

async fn watch_job(
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

async fn report_status(
    State(state): State<AppState>,
    Agent(agent): Agent,
    ApiPath(job_id): ApiPath<String>,
    ApiJson(update): ApiJson<JobStatusUpdate>,
) -> Result<impl IntoResponse, ApiError> {
    let applied = state
        .db
        .call(move |conn| store::report_status(conn, &agent.id, &job_id, update))
        .await?;
    state.announce_change();
    if applied.start_deploy {
        start_deploy(&state, applied.deployment.id.clone()).await?;
    }
    Ok(Json(applied.deployment))
}

#[derive(Debug, Deserialize)]
struct LogOffset {
    offset: u64,
}

/// A log offset is a file length: at most 2^63 - 1.
fn check_offset(offset: u64) -> Result<u64, ApiError> {
    if offset > i64::MAX as u64 {
        return Err(ApiError::InvalidParameter(format!(
            "offset {offset} is past the end of any log (offsets are below 2^63)"
        )));
    }
    Ok(offset)
}

async fn append_log(
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
        crate::replicas::broadcast(&state, crate::replicas::Wake::Logs);
    }
    Ok(Json(LogAppendResponse {
        stream,
        next_offset,
    }))
}

async fn request_upload(
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

async fn receive_upload(
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

// ---------------------------------------------------------------- users

async fn create_project(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(new): ApiJson<CreateProject>,
) -> Result<impl IntoResponse, ApiError> {
    let rules = state.project_rules();
    let project = state
        .db
        .call(move |conn| store::create_project(conn, new, rules))
        .await?;
    Ok((StatusCode::CREATED, Json(project)))
}

async fn list_projects(
    State(state): State<AppState>,
    _: Admin,
) -> Result<impl IntoResponse, ApiError> {
    let projects = state.db.call(store::list_projects).await?;
    Ok(Json(ProjectList { projects }))
}

async fn get_project(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    answer(&state, move |conn| store::get_project(conn, &id)).await
}

async fn create_environment(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(project_id): ApiPath<String>,
    ApiJson(new): ApiJson<CreateEnvironment>,
) -> Result<impl IntoResponse, ApiError> {
    let environment = state
        .db
        .call(move |conn| store::create_environment(conn, &project_id, new))
        .await?;
    Ok((StatusCode::CREATED, Json(environment)))
}

async fn list_environments(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(project_id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let environments = state
        .db
        .call(move |conn| store::list_environments(conn, &project_id))
        .await?;
    Ok(Json(EnvironmentList { environments }))
}

async fn get_environment(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    answer(&state, move |conn| store::get_environment(conn, &id)).await
}

async fn update_project(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(update): ApiJson<UpdateProject>,
) -> Result<impl IntoResponse, ApiError> {
    let rules = state.project_rules();
    answer(&state, move |conn| {
        store::update_project(conn, &id, update, rules)
    })
    .await
}

/// A new webhook secret for the project, shown in this answer only.
async fn rotate_webhook_secret(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    answer(&state, move |conn| store::rotate_webhook_secret(conn, &id)).await
}

async fn update_environment(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(update): ApiJson<UpdateEnvironment>,
) -> Result<impl IntoResponse, ApiError> {
    answer(&state, move |conn| {
        store::update_environment(conn, &id, update)
    })
    .await
}

async fn list_variables(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let variables = state
        .db
        .call(move |conn| store::list_variables(conn, &id))
        .await?;
    Ok(Json(VariableList { variables }))
}

async fn set_variables(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(set): ApiJson<SetVariables>,
) -> Result<impl IntoResponse, ApiError> {
    let variables = state
        .db
        .call(move |conn| store::set_variables(conn, &id, set.variables))
        .await?;
    Ok(Json(VariableList { variables }))
}

async fn push_event(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(push): ApiJson<PushEvent>,
) -> Result<impl IntoResponse, ApiError> {
    let outcome = state
        .db
        .call(move |conn| store::on_push(conn, push))
        .await?;
    state.announce_queue_change();
    Ok((StatusCode::CREATED, Json(outcome)))
}

async fn pull_request_event(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(event): ApiJson<PullRequestEvent>,
) -> Result<impl IntoResponse, ApiError> {
    let outcome = state
        .db
        .call(move |conn| store::on_pull_request(conn, event))
        .await?;
    state.announce_queue_change();
    Ok((StatusCode::CREATED, Json(outcome)))
}

#[derive(Debug, Deserialize)]
struct DeploymentQuery {
    project: Option<String>,
    environment: Option<String>,
    limit: Option<u32>,
}

async fn list_deployments(
    State(state): State<AppState>,
    _: Admin,
    ApiQuery(query): ApiQuery<DeploymentQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let filter = DeploymentFilter {
        project_id: query.project,
        environment_id: query.environment,
        limit: query.limit.unwrap_or(50).clamp(1, 500),
        ..Default::default()
    };
    let deployments = state
        .db
        .call(move |conn| store::list_deployments(conn, filter))
        .await?;
    Ok(Json(DeploymentList { deployments }))
}

async fn get_deployment(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    answer(&state, move |conn| {
        store::get_deployment_explained(conn, &id)
    })
    .await
}

async fn redeploy(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<kiln_protocol::RedeployRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let use_cache = request.cache.unwrap_or(true);
    let outcome = state
        .db
        .call(move |conn| store::redeploy(conn, &id, use_cache))
        .await?;
    state.announce_queue_change();
    Ok((StatusCode::CREATED, Json(outcome)))
}

async fn deploy(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let deployment = start_deploy(&state, id).await?;
    Ok((StatusCode::ACCEPTED, Json(deployment)))
}

async fn cancel(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let deployment = state
        .db
        .call(move |conn| store::cancel_deployment(conn, &id, "the API (admin token)"))
        .await?;
    state.announce_queue_change();
    Ok(Json(deployment))
}

pub(crate) async fn start_deploy(
    state: &AppState,
    id: String,
) -> Result<kiln_protocol::Deployment, ApiError> {
    let (deployment_id, deployer) = (id.clone(), state.replicas.id().to_owned());
    let lease_ms = state.config.lease.as_millis() as i64;
    let deployment = state
        .db
        .call(move |conn| store::begin_deploy(conn, &deployment_id, &deployer, lease_ms))
        .await?;
    state.announce_change();
    tokio::spawn(deployer::run(state.clone(), id));
    Ok(deployment)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LogQuery {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    follow: bool,
    /// Prefix each line with the time it was written.
    #[serde(default)]
    timestamps: bool,
    job: Option<String>,
}

async fn read_log(
    State(state): State<AppState>,
    _: Admin,
    peer: crate::http::PeerAddress,
    ApiPath((deployment_id, stream)): ApiPath<(String, LogStream)>,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    check_offset(query.offset)?;
    let body = log_body(&state, deployment_id, stream, query, peer.0).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// A deployment's log stream as a body: from an offset, followed live or not.
pub(crate) async fn log_body(
    state: &AppState,
    deployment_id: String,
    stream: LogStream,
    query: LogQuery,
    client: Option<std::net::IpAddr>,
) -> Result<Body, ApiError> {
    let slot = match query.follow {
        true => Some(state.follows.take(client)?),
        false => None,
    };
    let (id, job) = (deployment_id.clone(), query.job.clone());
    let job = state
        .db
        .call(move |conn| store::job_for_logs(conn, &id, job.as_deref()))
        .await?;
    let reader = LogReader {
        state: state.clone(),
        deployment_id,
        job_id: job.map(|job| job.id),
        stream,
        offset: query.offset,
        follow: query.follow,
        looked_after_end: false,
        stamper: query.timestamps.then(|| Stamper::new(Vec::new())),
        _slot: slot,
    };
    Ok(Body::from_stream(futures::stream::unfold(
        reader,
        |mut reader| async move {
            match reader.next_chunk().await {
                Ok(Some(bytes)) => Some((Ok::<_, std::io::Error>(bytes), reader)),
                Ok(None) => None,
                Err(error) => Some((Err(std::io::Error::other(error.to_string())), reader)),
            }
        },
    )))
}

/// Reads one log stream from an offset, and with `follow` waits for more until the
/// job has ended and everything it sent has been read.
struct LogReader {
    state: AppState,
    deployment_id: String,
    job_id: Option<String>,
    stream: LogStream,
    offset: u64,
    follow: bool,
    looked_after_end: bool,
    stamper: Option<Stamper>,
    /// A follow's slot, held while its body is read.
    _slot: Option<crate::follows::FollowSlot>,
}

impl LogReader {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            let mut appended = pin!(self.state.logs.appended.notified());
            appended.as_mut().enable();
            let mut changed = pin!(self.state.changes.notified());
            changed.as_mut().enable();
            if self.job_id.is_none() {
                let id = self.deployment_id.clone();
                self.job_id = self
                    .state
                    .db
                    .call(move |conn| store::job_for_logs(conn, &id, None))
                    .await?
                    .map(|job| job.id);
            }
            if let Some(job_id) = &self.job_id {
                self.state.logs.pull(job_id, self.stream).await?;
                let chunk =
                    read_at(&self.state.logs.path(job_id, self.stream), self.offset).await?;
                if !chunk.is_empty() {
                    let start = self.offset;
                    self.offset += chunk.len() as u64;
                    if let Some(stamper) = &mut self.stamper {
                        // Marks arrive with the bytes, so they are read as fresh.
                        stamper.set_marks(self.state.logs.marks(job_id, self.stream).await);
                        return Ok(Some(Bytes::from(stamper.stamp_chunk(start, &chunk))));
                    }
                    return Ok(Some(chunk));
                }
            }
            if !self.follow || self.looked_after_end {
                return Ok(None);
            }
            if log_ended(&self.state, &self.deployment_id, self.job_id.as_deref()).await? {
                // One more read: bytes may have landed between the read and the check.
                self.looked_after_end = true;
                continue;
            }
            let _parked = self.state.park(Wait::Follow);
            tokio::select! {
                _ = appended => {}
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.state.shutdown.cancelled() => return Ok(None),
            }
        }
    }
}

/// Whether a deployment's log can grow no more: its job has ended, or, never
/// claimed, the deployment ended without a build (canceled while queued).
pub(crate) async fn log_ended(
    state: &AppState,
    deployment_id: &str,
    job_id: Option<&str>,
) -> Result<bool, ApiError> {
    let Some(job_id) = job_id.map(str::to_owned) else {
        let id = deployment_id.to_owned();
        let deployment = state
            .db
            .call(move |conn| store::get_deployment(conn, &id))
            .await?;
        return Ok(!deployment.status.is_build_pending());
    };
    let job = state
        .db
        .call(move |conn| store::get_job(conn, &job_id))
        .await?;
    Ok(job.finished)
}

async fn read_at(path: &std::path::Path, offset: u64) -> Result<Bytes, ApiError> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Bytes::new()),
        Err(e) => return Err(e.into()),
    };
    // Past the end there is nothing yet; a seek there may fail (past the file
    // system's largest file) after the answer's status went out.
    if offset >= file.metadata().await?.len() {
        return Ok(Bytes::new());
    }
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = Vec::with_capacity(LOG_READ_CHUNK);
    (&mut file)
        .take(LOG_READ_CHUNK as u64)
        .read_to_end(&mut buf)
        .await?;
    Ok(Bytes::from(buf))
}

async fn download_artifact(
    State(state): State<AppState>,
    _: Admin,
    ApiPath((deployment_id, name)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    serve_artifact(&state, deployment_id, name).await
}

/// A stored artifact's bytes, with its size and sha256 in the headers.
pub(crate) async fn serve_artifact(
    state: &AppState,
    deployment_id: String,
    name: String,
) -> Result<Response, ApiError> {
    let (id, artifact_name) = (deployment_id.clone(), name.clone());
    let artifact = state
        .db
        .call(move |conn| store::artifact(conn, &id, &artifact_name))
        .await?;
    let path = state
        .artifacts
        .local(&deployment_id, &artifact.job_id, &name)
        .await?;
    let file = tokio::fs::File::open(&path).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, artifact.descriptor.size.to_string()),
            (
                header::HeaderName::from_static(SHA256_HEADER),
                artifact.descriptor.sha256.clone(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}
