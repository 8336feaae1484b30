//! Deployments for users: listed, read, redeployed, deployed, canceled, their
//! logs and artifacts (`/deployments`).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_protocol::*;
use serde::Deserialize;

use super::jobs::check_offset;
use crate::artifacts::serve_artifact;
use crate::deployer::start_deploy;
use crate::error::ApiError;
use crate::http::answer;
use crate::http::{Admin, ApiJson, ApiPath, ApiQuery};
use crate::logs::read::{log_body, LogQuery};
use crate::store::{self, DeploymentFilter};
use crate::AppState;

#[derive(Debug, Deserialize)]
pub(super) struct DeploymentQuery {
    project: Option<String>,
    environment: Option<String>,
    limit: Option<u32>,
}

pub(super) async fn list_deployments(
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

pub(super) async fn get_deployment(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    answer(&state, move |conn| {
        store::get_deployment_explained(conn, &id)
    })
    .await
}

pub(super) async fn redeploy(
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

pub(super) async fn deploy(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let deployment = start_deploy(&state, id).await?;
    Ok((StatusCode::ACCEPTED, Json(deployment)))
}

/// `POST /deployments/{id}/rollback`: a release that was live runs again,
/// with no build and no migrations; the answer names the newer deployments
/// whose migrations stay applied (`migrations_ahead`).
pub(super) async fn rollback(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let started = state
        .db
        .call(move |conn| store::begin_rollback(conn, &id))
        .await?;
    state.announce_queue_change();
    Ok((StatusCode::ACCEPTED, Json(started)))
}

pub(super) async fn cancel(
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

pub(super) async fn read_log(
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

pub(super) async fn filter_runtime_log(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(deployment_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<crate::logs::filter::FilterQuery>,
) -> Result<Response, ApiError> {
    crate::logs::filter::filtered(&state, deployment_id, query).await
}

pub(super) async fn download_artifact(
    State(state): State<AppState>,
    _: Admin,
    ApiPath((deployment_id, name)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    serve_artifact(&state.db, &state.artifacts, deployment_id, name).await
}
