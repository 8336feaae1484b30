//! The buttons of a deployment's page: deploy, redeploy, roll back and
//! cancel, each role-checked and CSRF-protected, each the same store call as
//! its API route.

use axum::extract::{Form, Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::Session;
use super::pages;
use super::CsrfForm;
use crate::error::ApiError;
use crate::store::{self, Role};
use crate::AppState;

/// Runs a deployer's action on a deployment and shows where it led.
async fn act(
    state: &AppState,
    session: &Session,
    csrf: &str,
    action: &str,
    run: impl std::future::Future<Output = Result<String, ApiError>>,
) -> Response {
    if let Err(refused) = session.permit(csrf, Role::Deployer, action) {
        return refused.into_response();
    }
    match run.await {
        Ok(shown) => {
            state.announce_queue_change();
            Redirect::to(&format!("/deployments/{shown}")).into_response()
        }
        Err(ApiError::NotFound { kind, id }) => {
            pages::not_found(Some(session), &format!("{kind} {id}"))
        }
        Err(error) => pages::refused(session, &format!("Could not {action}: {error}")),
    }
}

#[derive(Deserialize)]
pub(super) struct DeployForm {
    #[serde(default)]
    csrf: String,
    /// `yes` when the deployer ticked that an older commit is meant.
    #[serde(default)]
    older: Option<String>,
}

pub(super) async fn deploy(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<DeployForm>,
) -> Response {
    let meant_older = form.older.as_deref() == Some("yes");
    let run = async {
        // One click must not silently take an environment back to an older commit.
        let asked = id.clone();
        let live_newer = state
            .db
            .call(move |conn| {
                let deployment = store::get_deployment(conn, &asked)?;
                store::live_newer_than(conn, &deployment)
            })
            .await?;
        if let (Some(live), false) = (live_newer, meant_older) {
            return Err(ApiError::Conflict(format!(
                "deployment {} is live and newer than this one; tick \"take it back to this older commit\" to deploy this one anyway",
                live.id
            )));
        }
        tracing::info!(message = "Deploy from the dashboard.", deployment_id = %id, by = %session.user.name);
        crate::deployer::start_deploy(&state, id.clone()).await?;
        Ok(id.clone())
    };
    act(&state, &session, &form.csrf, "deploy", run).await
}

#[derive(Deserialize)]
pub(super) struct RollbackForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn rollback(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<RollbackForm>,
) -> Response {
    let run = async {
        let asked = id.clone();
        tracing::info!(message = "Rollback from the dashboard.", deployment_id = %id, by = %session.user.name);
        state
            .db
            .call(move |conn| store::begin_rollback(conn, &asked))
            .await?;
        Ok(id.clone())
    };
    act(&state, &session, &form.csrf, "roll back", run).await
}

#[derive(Deserialize)]
pub(super) struct RedeployForm {
    #[serde(default)]
    csrf: String,
    /// `off` when "without cache" is ticked.
    #[serde(default)]
    cache: Option<String>,
}

pub(super) async fn redeploy(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<RedeployForm>,
) -> Response {
    let original = id.clone();
    let use_cache = form.cache.as_deref() != Some("off");
    let run = async {
        let outcome = state
            .db
            .call(move |conn| store::redeploy(conn, &original, use_cache))
            .await?;
        tracing::info!(message = "Redeploy from the dashboard.", deployment_id = %id, by = %session.user.name);
        Ok(outcome
            .deployments
            .first()
            .map_or(id.clone(), |deployment| deployment.id.clone()))
    };
    act(&state, &session, &form.csrf, "redeploy", run).await
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (target, by) = (id.clone(), session.user.name.clone());
    let run = async {
        state
            .db
            .call(move |conn| store::cancel_deployment(conn, &target, &by))
            .await?;
        Ok(id.clone())
    };
    act(&state, &session, &form.csrf, "cancel a build", run).await
}
