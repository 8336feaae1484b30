//! The fleet, for admins: agents registered, listed, paused and revoked, and
//! the registration tokens that let them in (`/agents`, `/registration-tokens`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use kiln_protocol::*;

use crate::error::ApiError;
use crate::http::random_token;
use crate::http::{registration_refused, sha256_hex, Admin, ApiJson, ApiPath, Registration};
use crate::store::{self};
use crate::AppState;

// ---------------------------------------------------------------- agents

pub(super) async fn register_agent(
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

pub(super) async fn list_agents(
    State(state): State<AppState>,
    _: Admin,
) -> Result<impl IntoResponse, ApiError> {
    let agents = state.db.call(store::list_agents).await?;
    Ok(Json(kiln_protocol::AgentList {
        agents: agents.iter().map(store::AgentView::info).collect(),
    }))
}

pub(super) async fn get_agent_info(
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

pub(super) async fn update_agent(
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

pub(super) async fn revoke_agent(
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

pub(super) async fn create_registration_token(
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

pub(super) async fn list_registration_tokens(
    State(state): State<AppState>,
    _: Admin,
) -> Result<impl IntoResponse, ApiError> {
    let tokens = state.db.call(store::list_registration_tokens).await?;
    Ok(Json(kiln_protocol::RegistrationTokenList {
        registration_tokens: tokens,
    }))
}

pub(super) async fn revoke_registration_token(
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
