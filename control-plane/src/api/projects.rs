//! Projects, their environments and variables, the webhook secret, and events
//! pushed by hand (`/projects`, `/environments`, `/events`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use kiln_protocol::*;

use crate::error::ApiError;
use crate::http::answer;
use crate::http::{Admin, ApiBytes, ApiJson, ApiPath, ApiQuery};
use crate::store::{self};
use crate::AppState;

// ---------------------------------------------------------------- users

pub(super) async fn create_project(
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

pub(super) async fn list_projects(
    State(state): State<AppState>,
    _: Admin,
) -> Result<impl IntoResponse, ApiError> {
    let projects = state.db.call(store::list_projects).await?;
    Ok(Json(ProjectList { projects }))
}

pub(super) async fn get_project(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    answer(&state, move |conn| store::get_project(conn, &id)).await
}

pub(super) async fn create_environment(
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

pub(super) async fn list_environments(
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

pub(super) async fn get_environment(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    answer(&state, move |conn| store::get_environment(conn, &id)).await
}

pub(super) async fn update_project(
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
pub(super) async fn rotate_webhook_secret(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    answer(&state, move |conn| store::rotate_webhook_secret(conn, &id)).await
}

pub(super) async fn update_environment(
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

pub(super) async fn list_variables(
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

pub(super) async fn set_variables(
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

/// `POST /environments/{id}/variables/import`: a `.env` file
/// (`content-type: text/plain`) merged into the variables.
pub(super) async fn import_variables(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
    ApiQuery(flags): ApiQuery<store::ImportFlags>,
    headers: axum::http::HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<impl IntoResponse, ApiError> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("text/plain") {
        return Err(ApiError::invalid_field(
            "content-type",
            format!(
                "{content_type:?}: send the .env file as text/plain (curl --data-binary @.env -H 'content-type: text/plain')"
            ),
        ));
    }
    let text = String::from_utf8(body.to_vec()).map_err(|_| {
        ApiError::invalid_field("body", "is not UTF-8 text; send the .env file as it is")
    })?;
    answer(&state, move |conn| {
        store::import_variables(conn, &id, &text, flags)
    })
    .await
}

/// `GET /environments/{id}/variables/export`: the variables as a `.env`
/// file, secret values left empty.
pub(super) async fn export_variables(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let file_name = format!("{id}.env");
    let text = state
        .db
        .call(move |conn| store::export_variables(conn, &id))
        .await?;
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        text,
    ))
}

pub(super) async fn push_event(
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

pub(super) async fn pull_request_event(
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

pub(super) async fn get_log_drain(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    match state
        .db
        .call(move |conn| store::get_log_drain(conn, &id))
        .await?
    {
        Some(drain) => Ok(Json(drain).into_response()),
        None => Err(ApiError::not_found(
            "log drain of environment",
            "(none set; PUT one)",
        )),
    }
}

pub(super) async fn set_log_drain(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(drain): ApiJson<LogDrain>,
) -> Result<impl IntoResponse, ApiError> {
    answer(&state, move |conn| store::set_log_drain(conn, &id, drain)).await
}

pub(super) async fn remove_log_drain(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    state
        .db
        .call(move |conn| store::remove_log_drain(conn, &id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
