//! The `/api/v1` routes, by caller and resource: `jobs` (what agents call),
//! `fleet`, `projects` and `deployments` (what users call, with the admin
//! token), and the git hosts' webhooks (`crate::forge::hooks`). The operations they
//! share with the dashboard live with their feature: deploys in `deployer`,
//! log reading in `logs::read`, artifact serving in `artifacts`.

mod deployments;
mod fleet;
mod jobs;
mod projects;
mod provenance;
mod webhooks;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;
use kiln_protocol::API_PREFIX;

use crate::error::ApiError;
use crate::AppState;

/// Largest body of a route that reads JSON, unless it says otherwise below.
const BODY_LIMIT: usize = 64 << 10;
/// A status report carries the secret scan's findings.
const STATUS_LIMIT: usize = 1 << 20;
/// A log append: the agent sends at most `SHIP_CHUNK` (1 MiB); room to grow.
pub(crate) const LOG_APPEND_LIMIT: usize = 4 << 20;
/// A project's allowlists may hold a thousand entries.
const PROJECT_LIMIT: usize = 2 << 20;
/// A thousand variables of up to 64 KiB is more than anyone needs in one go.
const VARIABLES_LIMIT: usize = 8 << 20;
/// An event carries a commit message of up to 64 KiB.
const EVENT_LIMIT: usize = 256 << 10;
/// Webhook payloads: GitHub lists at most 20 commits in a push.
const HOOK_LIMIT: usize = 5 << 20;

fn limit(bytes: usize) -> DefaultBodyLimit {
    DefaultBodyLimit::max(bytes)
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/agents/register", post(fleet::register_agent))
        .route("/agents", get(fleet::list_agents))
        .route(
            "/agents/{agent_id}",
            get(fleet::get_agent_info)
                .patch(fleet::update_agent)
                .delete(fleet::revoke_agent),
        )
        .route(
            "/registration-tokens",
            post(fleet::create_registration_token).get(fleet::list_registration_tokens),
        )
        .route(
            "/registration-tokens/{token_id}",
            axum::routing::delete(fleet::revoke_registration_token),
        )
        .route("/agent/jobs/claim", post(jobs::claim_job))
        .route(
            "/agent/environments/removed",
            post(jobs::removed_environments),
        )
        .route("/agent/jobs/{job_id}/watch", post(jobs::watch_job))
        .route(
            "/agent/jobs/{job_id}/status",
            post(jobs::report_status).layer(limit(STATUS_LIMIT)),
        )
        .route(
            "/agent/jobs/{job_id}/logs/{stream}",
            put(jobs::append_log).layer(limit(LOG_APPEND_LIMIT)),
        )
        .route("/agent/jobs/{job_id}/artifacts", post(jobs::request_upload))
        .route(
            "/agent/jobs/{job_id}/artifacts/{name}",
            get(jobs::download_release),
        )
        .route(
            "/uploads/{token}",
            put(jobs::receive_upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/projects",
            post(projects::create_project)
                .layer(limit(PROJECT_LIMIT))
                .get(projects::list_projects),
        )
        .route(
            "/projects/{project_id}",
            get(projects::get_project)
                .patch(projects::update_project)
                .layer(limit(PROJECT_LIMIT)),
        )
        .route(
            "/projects/{project_id}/environments",
            post(projects::create_environment).get(projects::list_environments),
        )
        .route(
            "/environments/{environment_id}",
            get(projects::get_environment).patch(projects::update_environment),
        )
        .route(
            "/environments/{environment_id}/variables",
            get(projects::list_variables)
                .put(projects::set_variables)
                .layer(limit(VARIABLES_LIMIT)),
        )
        .route(
            "/environments/{environment_id}/variables/import",
            post(projects::import_variables).layer(limit(VARIABLES_LIMIT)),
        )
        .route(
            "/environments/{environment_id}/variables/export",
            get(projects::export_variables),
        )
        .route(
            "/environments/{environment_id}/log-drain",
            get(projects::get_log_drain)
                .put(projects::set_log_drain)
                .delete(projects::remove_log_drain),
        )
        .route(
            "/events/push",
            post(projects::push_event).layer(limit(EVENT_LIMIT)),
        )
        .route(
            "/hooks/github",
            post(crate::forge::hooks::github).layer(limit(HOOK_LIMIT)),
        )
        .route(
            "/hooks/gitlab",
            post(crate::forge::hooks::gitlab).layer(limit(HOOK_LIMIT)),
        )
        .route(
            "/hooks/gitea",
            post(crate::forge::hooks::gitea).layer(limit(HOOK_LIMIT)),
        )
        .route(
            "/projects/{project_id}/webhook-secret",
            post(projects::rotate_webhook_secret),
        )
        .route(
            "/projects/{project_id}/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route(
            "/projects/{project_id}/webhooks/{webhook_id}",
            delete(webhooks::delete),
        )
        .route(
            "/projects/{project_id}/webhooks/{webhook_id}/deliveries",
            get(webhooks::deliveries),
        )
        .route(
            "/projects/{project_id}/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
            post(webhooks::retry),
        )
        .route(
            "/events/pull_request",
            post(projects::pull_request_event).layer(limit(EVENT_LIMIT)),
        )
        .route("/deployments", get(deployments::list_deployments))
        .route(
            "/deployments/{deployment_id}",
            get(deployments::get_deployment),
        )
        .route(
            "/deployments/{deployment_id}/redeploy",
            post(deployments::redeploy),
        )
        .route(
            "/deployments/{deployment_id}/deploy",
            post(deployments::deploy),
        )
        .route(
            "/deployments/{deployment_id}/rollback",
            post(deployments::rollback),
        )
        .route(
            "/deployments/{deployment_id}/logs/{stream}",
            get(deployments::read_log),
        )
        .route(
            "/deployments/{deployment_id}/logs/runtime/filter",
            get(deployments::filter_runtime_log),
        )
        .route(
            "/deployments/{deployment_id}/artifacts/{name}",
            get(deployments::download_artifact),
        )
        .route(
            "/deployments/{deployment_id}/cancel",
            post(deployments::cancel),
        )
        .route(
            "/deployments/{deployment_id}/provenance",
            get(provenance::deployment),
        )
        .route("/provenance/keys", get(provenance::keys))
        .route("/provenance/keys/rotate", post(provenance::rotate))
        .route(
            "/agent/jobs/{job_id}/cache-entries",
            post(provenance::published),
        )
        .route(
            "/agent/jobs/{job_id}/cache/outputs/{component}/{key}",
            get(provenance::shared_output),
        )
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
