//! Provenance: the public keys (anyone may fetch them to verify), a key
//! rotation, a deployment's signed statements, and the cache entries an agent
//! published, which later statements are checked against.

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use kiln_protocol::provenance::PublishedEntries;

use crate::error::ApiError;
use crate::http::{answer, Admin, Agent, ApiJson, ApiPath};
use crate::{store, AppState};

/// `GET /api/v1/provenance/keys`: public, as public keys are.
pub(super) async fn keys(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    answer(&state, store::provenance_keys).await
}

/// `POST /api/v1/provenance/keys/rotate`: a new key signs from now on; the
/// old one stays listed for verifying what it signed.
pub(super) async fn rotate(
    State(state): State<AppState>,
    _: Admin,
) -> Result<impl IntoResponse, ApiError> {
    let (old, new) = state
        .signing
        .rotate()
        .map_err(|error| ApiError::Conflict(error.to_string()))?;
    tracing::info!(message = "Provenance signing key rotated.", key_id = %kiln_protocol::provenance::key_id(&new.verifying_key()));
    answer(&state, move |conn| {
        store::rotate_key(conn, &old.verifying_key(), &new.verifying_key())
    })
    .await
}

/// `GET /api/v1/deployments/{id}/provenance`.
pub(super) async fn deployment(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    answer(&state, move |conn| store::deployment_provenance(conn, &id)).await
}

/// `POST /api/v1/agent/jobs/{job_id}/cache-entries`.
pub(super) async fn published(
    State(state): State<AppState>,
    Agent(agent): Agent,
    ApiPath(job_id): ApiPath<String>,
    ApiJson(published): ApiJson<PublishedEntries>,
) -> Result<impl IntoResponse, ApiError> {
    answer(&state, move |conn| {
        store::record_published(conn, &agent.id, &job_id, &published.entries)
            .map(|recorded| serde_json::json!({ "recorded": recorded }))
    })
    .await
}

/// `GET /api/v1/agent/jobs/{job_id}/cache/outputs/{component}/{key}`: an
/// output another host's build published, for a build that may read its
/// scope: the artifact, with whose it was.
pub(super) async fn shared_output(
    State(state): State<AppState>,
    Agent(agent): Agent,
    ApiPath((job_id, component, key)): ApiPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    let wanted = key.clone();
    let found = state
        .db
        .call(move |conn| store::shared_output(conn, &agent.id, &job_id, &component, &key))
        .await?
        .ok_or_else(|| ApiError::not_found("cache output", &wanted))?;
    let mut response = crate::artifacts::serve_artifact(
        &state.db,
        &state.artifacts,
        found.deployment_id,
        found.artifact,
    )
    .await?;
    for (name, value) in [
        (kiln_protocol::provenance::CACHE_JOB_HEADER, found.job_id),
        (kiln_protocol::provenance::CACHE_SCOPE_HEADER, found.scope),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    Ok(response)
}
