//! A project's outbound webhooks and their delivery log
//! (`/projects/{id}/webhooks…`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use kiln_protocol::{CreateWebhook, WebhookDeliveryList, WebhookList};

use crate::error::ApiError;
use crate::http::{answer, Admin, ApiJson, ApiPath};
use crate::secrets::random_token;
use crate::store;
use crate::AppState;

pub(super) async fn create(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(project_id): ApiPath<String>,
    ApiJson(request): ApiJson<CreateWebhook>,
) -> Result<impl IntoResponse, ApiError> {
    let secret = random_token();
    let webhook = state
        .db
        .call(move |conn| store::create_webhook(conn, &project_id, request, &secret))
        .await?;
    Ok((StatusCode::CREATED, Json(webhook)))
}

pub(super) async fn list(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(project_id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    answer(&state, move |conn| {
        Ok(WebhookList {
            webhooks: store::list_webhooks(conn, &project_id)?,
        })
    })
    .await
}

pub(super) async fn delete(
    State(state): State<AppState>,
    _: Admin,
    ApiPath((project_id, webhook_id)): ApiPath<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    state
        .db
        .call(move |conn| store::delete_webhook(conn, &project_id, &webhook_id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn deliveries(
    State(state): State<AppState>,
    _: Admin,
    ApiPath((project_id, webhook_id)): ApiPath<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    answer(&state, move |conn| {
        Ok(WebhookDeliveryList {
            deliveries: store::list_webhook_deliveries(conn, &project_id, &webhook_id)?,
        })
    })
    .await
}

pub(super) async fn retry(
    State(state): State<AppState>,
    _: Admin,
    ApiPath((project_id, webhook_id, delivery_id)): ApiPath<(String, String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let delivery = state
        .db
        .call(move |conn| {
            store::retry_webhook_delivery(conn, &project_id, &webhook_id, &delivery_id)
        })
        .await?;
    // The courier waits on changes; wake it (on the leader too).
    state.announce_change();
    Ok((StatusCode::ACCEPTED, Json(delivery)))
}
