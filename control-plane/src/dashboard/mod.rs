//! The web dashboard, served by `kiln-server` itself: server-rendered pages
//! (`pages.rs`), sign-in with sessions and roles (`auth.rs`), the log viewer's
//! endpoints and live follow over Server-Sent Events (`logview.rs`), and the small
//! embedded script and stylesheet (`assets/`). No build step, no Node.
//!
//! Everything here answers people in a browser; `/api/v1` keeps its bearer
//! tokens and its JSON errors.

mod actions;
mod auth;
mod connect;
mod drains;
mod environments;
mod fleet;
mod logview;
mod pages;
mod pieces;
mod provenance;
mod variables;
mod webhooks;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use kiln_protocol::{DeploymentStatus, EnvironmentKind, UpdateEnvironment};
use serde::Deserialize;

use crate::http::PeerAddress;
use auth::Session;
pub use auth::{hash_password, SignInLimiter};
use pages::{DeploymentView, DeploymentsList, DeploymentsQuery};

use crate::error::ApiError;
use crate::http::sha256_hex;
use crate::store::{self, DeploymentFilter, Role};
use crate::AppState;

/// Rows per page of a deployments table.
const PER_PAGE: u32 = 50;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(projects))
        .route("/login", get(sign_in_form).post(sign_in))
        .route("/logout", post(sign_out))
        .route(
            "/projects/new",
            get(connect::new_project).post(connect::create_project),
        )
        .route("/projects/{id}/connect", get(connect::connect))
        .route(
            "/projects/{id}/webhooks",
            get(webhooks::page).post(webhooks::create),
        )
        .route(
            "/projects/{id}/webhooks/{webhook_id}/delete",
            post(webhooks::delete),
        )
        .route(
            "/projects/{id}/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
            post(webhooks::retry),
        )
        .route("/projects/{id}/connect/rotate", post(connect::rotate))
        .route("/projects/{id}", get(project))
        .route("/projects/{id}/deployments", get(project_deployments))
        .route(
            "/environments/new",
            get(environments::new_environment).post(environments::create_environment),
        )
        .route(
            "/environments/{id}/deploy-settings",
            post(environments::save_deploy),
        )
        .route("/environments/{id}/log-drain", post(drains::save))
        .route("/environments/{id}", get(environment))
        .route(
            "/environments/{id}/settings",
            get(environment_settings).post(save_environment_settings),
        )
        .route("/environments/{id}/variables", get(variables::page))
        .route(
            "/environments/{id}/variables/import",
            post(variables::import),
        )
        .route(
            "/environments/{id}/variables/export",
            get(variables::export),
        )
        .route(
            "/environments/{id}/variables/{name}/remove",
            post(variables::remove),
        )
        .route("/deployments/{id}", get(deployment))
        .route(
            "/deployments/{id}/provenance.json",
            get(provenance::download),
        )
        .route("/deployments/{id}/deploy", post(actions::deploy))
        .route("/deployments/{id}/redeploy", post(actions::redeploy))
        .route("/deployments/{id}/rollback", post(actions::rollback))
        .route("/deployments/{id}/cancel", post(actions::cancel))
        .route("/deployments/{id}/status", get(deployment_status))
        .route("/deployments/{id}/artifacts/{name}", get(artifact))
        .route(
            "/deployments/{id}/logs/runtime/filter",
            get(logview::runtime_filter),
        )
        .route("/deployments/{id}/logs/{stream}/raw", get(logview::raw))
        .route("/deployments/{id}/logs/{stream}/lines", get(logview::lines))
        .route(
            "/deployments/{id}/logs/{stream}/outline",
            get(logview::outline),
        )
        .route(
            "/deployments/{id}/logs/{stream}/search",
            get(logview::search),
        )
        .route(
            "/deployments/{id}/logs/{stream}/events",
            get(logview::events),
        )
        .route("/agents", get(fleet::agents))
        .route("/agents/registration-tokens", post(fleet::create_token))
        .route("/agents/{id}/{action}", post(fleet::act))
        .route("/static/app.js", get(script))
        .route("/static/app.css", get(stylesheet))
        .fallback(unknown_page)
        // Sign-in attempts are the dashboard's own business.
        .layer(axum::Extension(std::sync::Arc::new(
            SignInLimiter::default(),
        )))
        .with_state(state)
}

/// A store answer, or the page that says what went wrong.
fn page_error(session: Option<&Session>, error: ApiError) -> Response {
    match error {
        ApiError::NotFound { kind, id } => pages::not_found(session, &format!("{kind} {id}")),
        other => other.into_response(),
    }
}

async fn unknown_page(session: Option<Session>, uri: axum::http::Uri) -> Response {
    pages::not_found(session.as_ref(), &format!("the page {}", uri.path()))
}

// ------------------------------------------------------------------ assets

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("assets/app.js"),
    )
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("assets/app.css"),
    )
}

// ------------------------------------------------------------------ sign-in

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// The sign-in form, with a fresh token that its cookie carries too: a form
/// another site posts has the one but not the other (login CSRF).
fn sign_in_form_page(
    state: &AppState,
    headers: &HeaderMap,
    next: &str,
    problem: Option<&str>,
    status: Option<StatusCode>,
) -> Response {
    let form_token = crate::http::random_token();
    let mut page = pages::sign_in(next, &form_token, problem);
    if let Some(status) = status {
        page.status = status;
    }
    let cookie = auth::sign_in_cookie(&form_token, auth::over_tls(state, headers));
    ([(header::SET_COOKIE, cookie)], page).into_response()
}

async fn sign_in_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<NextQuery>,
) -> Response {
    sign_in_form_page(
        &state,
        &headers,
        &auth::safe_next(query.next.as_deref()),
        None,
        None,
    )
}

#[derive(Deserialize)]
struct SignInForm {
    username: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    form_token: String,
}

async fn sign_in(
    State(state): State<AppState>,
    axum::Extension(sign_ins): axum::Extension<std::sync::Arc<SignInLimiter>>,
    PeerAddress(address): PeerAddress,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    let next = auth::safe_next(form.next.as_deref());
    let cookie_token = auth::cookie(&headers, auth::SIGN_IN_COOKIE).unwrap_or_default();
    let same_form = !form.form_token.is_empty()
        // Hashes compared, as `check_csrf` does: the time says nothing of either.
        && sha256_hex(cookie_token.as_bytes()) == sha256_hex(form.form_token.as_bytes());
    if !same_form {
        return sign_in_form_page(
            &state,
            &headers,
            &next,
            Some("This sign-in form was not the one this browser was given (or it expired); sign in again here."),
            Some(StatusCode::FORBIDDEN),
        );
    }
    let user = form.username.trim().to_owned();
    if let Err(wait) = sign_ins.begin(&user, address) {
        return sign_in_form_page(
            &state,
            &headers,
            &next,
            Some(&format!(
                "Too many sign-in attempts for this user from this address, or from this address; try again in {} minute(s).",
                wait.as_secs().div_ceil(60)
            )),
            Some(StatusCode::TOO_MANY_REQUESTS),
        );
    }
    let Some(_turn) = sign_ins.hash_turn().await else {
        return sign_in_form_page(
            &state,
            &headers,
            &next,
            Some("The server is busy checking other sign-ins; try again in a moment."),
            Some(StatusCode::TOO_MANY_REQUESTS),
        );
    };
    let lookup = user.clone();
    let found = match state
        .db
        .call(move |conn| store::user_with_hash(conn, &lookup))
        .await
    {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    let password = form.password;
    let (user_row, verified) = tokio::task::spawn_blocking(move || match found {
        Some((user, hash)) => {
            let ok = auth::verify_password(&password, &hash);
            (Some(user), ok)
        }
        None => {
            // As slow as a real check, so a name's existence does not show.
            auth::verify_password(&password, auth::decoy_hash());
            (None, false)
        }
    })
    .await
    .unwrap_or((None, false));
    let Some(user_row) = user_row.filter(|_| verified) else {
        tracing::warn!(message = "A dashboard sign-in failed.", user = %validate_shown(&user), address = ?address);
        return sign_in_form_page(
            &state,
            &headers,
            &next,
            Some("That user name and password do not match."),
            Some(StatusCode::UNAUTHORIZED),
        );
    };
    sign_ins.succeeded(&user, address);
    let token = crate::http::random_token();
    let csrf = crate::http::random_token();
    let hash = sha256_hex(token.as_bytes());
    let expires = store::now_ms() + auth::SESSION_LIFETIME.as_millis() as i64;
    let name = user_row.name.clone();
    if let Err(error) = state
        .db
        .call(move |conn| store::create_session(conn, &hash, &name, &csrf, expires))
        .await
    {
        return error.into_response();
    }
    tracing::info!(message = "Signed in to the dashboard.", user = %user_row.name, role = %user_row.role);
    let cookie = auth::session_cookie(
        &token,
        auth::over_tls(&state, &headers),
        auth::SESSION_LIFETIME,
    );
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, next)],
    )
        .into_response()
}

fn validate_shown(text: &str) -> String {
    kiln_protocol::validate::shorten(text)
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = session.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    if let Some(token) = auth::cookie(&headers, auth::SESSION_COOKIE) {
        let hash = sha256_hex(token.as_bytes());
        let _ = state
            .db
            .call(move |conn| store::end_session(conn, &hash))
            .await;
    }
    let cookie = auth::session_cookie(
        "",
        auth::over_tls(&state, &headers),
        std::time::Duration::ZERO,
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/login".to_owned()),
        ],
    )
        .into_response()
}

// ------------------------------------------------------------------ pages

async fn projects(State(state): State<AppState>, session: Session) -> Response {
    let listed = state
        .db
        .call(|conn| {
            let projects = store::list_projects(conn)?;
            projects
                .into_iter()
                .map(|project| {
                    let environments = store::list_environments(conn, &project.id)?.len();
                    Ok((project, environments))
                })
                .collect::<Result<Vec<_>, ApiError>>()
        })
        .await;
    match listed {
        Ok(projects) => pages::projects(&session, &projects).into_response(),
        Err(error) => page_error(Some(&session), error),
    }
}

async fn project(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let found = state
        .db
        .call(move |conn| {
            let project = store::get_project(conn, &id)?;
            let cards = store::list_environments(conn, &id)?
                .into_iter()
                .map(|environment| {
                    let current = store::current_deployment(conn, &environment.id)?;
                    Ok((environment, current))
                })
                .collect::<Result<Vec<_>, ApiError>>()?;
            Ok::<_, ApiError>((project, cards))
        })
        .await;
    match found {
        Ok((project, cards)) => pages::project(&session, &project, &cards).into_response(),
        Err(error) => page_error(Some(&session), error),
    }
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

async fn project_deployments(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(query): Query<DeploymentsQuery>,
) -> Response {
    let page = query.page.unwrap_or(0).min(100_000);
    // A status the link names that is none: said on the page, not ignored.
    let asked = non_empty(&query.status);
    let status = asked
        .as_deref()
        .and_then(|status| status.parse::<DeploymentStatus>().ok());
    let problem = match (&asked, status) {
        (Some(asked), None) => Some(format!(
            "“{asked}” is not a deployment status, so no status filter is applied; choose one from the list."
        )),
        _ => None,
    };
    let filter = DeploymentFilter {
        project_id: Some(id.clone()),
        environment_id: non_empty(&query.environment),
        branch: non_empty(&query.branch),
        status,
        commit_prefix: non_empty(&query.q),
        limit: PER_PAGE,
        offset: page * PER_PAGE,
    };
    let found = state
        .db
        .call(move |conn| {
            let project = store::get_project(conn, &id)?;
            let environments = store::list_environments(conn, &id)?;
            let branches = store::deployment_branches(conn, &id)?;
            let total = store::count_deployments(conn, &filter)?;
            let deployments = store::list_deployments(conn, filter)?;
            Ok::<_, ApiError>((project, environments, branches, total, deployments))
        })
        .await;
    match found {
        Ok((project, environments, branches, total, deployments)) => pages::project_deployments(
            &session,
            &project,
            DeploymentsList {
                deployments: &deployments,
                environments: &environments,
                branches: &branches,
                query: &query,
                total,
                page,
                per_page: PER_PAGE,
                problem: problem.as_deref(),
            },
        )
        .into_response(),
        Err(error) => page_error(Some(&session), error),
    }
}

async fn environment(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let found = state
        .db
        .call(move |conn| {
            let environment = store::get_environment(conn, &id)?;
            let project = store::get_project(conn, &environment.project_id)?;
            let deployments = store::list_deployments(
                conn,
                DeploymentFilter {
                    environment_id: Some(id),
                    limit: PER_PAGE,
                    ..Default::default()
                },
            )?;
            Ok::<_, ApiError>((project, environment, deployments))
        })
        .await;
    match found {
        Ok((project, environment, deployments)) => {
            pages::environment(&session, &project, &environment, &deployments).into_response()
        }
        Err(error) => page_error(Some(&session), error),
    }
}

async fn environment_settings(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    settings_page(&state, &session, id, None).await
}

async fn settings_page(
    state: &AppState,
    session: &Session,
    id: String,
    notice: Option<&str>,
) -> Response {
    let found = state
        .db
        .call(move |conn| {
            let environment = store::get_environment(conn, &id)?;
            let project = store::get_project(conn, &environment.project_id)?;
            let drain = store::get_log_drain(conn, &id)?;
            Ok::<_, ApiError>((project, environment, drain))
        })
        .await;
    match found {
        Ok((project, environment, drain)) => {
            let sections = maud::html! {
                (environments::deploy_section(session, &environment))
                (drains::drain_section(session, &environment, drain.as_ref()))
            };
            pages::environment_settings(session, &project, &environment, notice, sections)
                .into_response()
        }
        Err(error) => page_error(Some(session), error),
    }
}

#[derive(Deserialize)]
struct SettingsForm {
    #[serde(default)]
    csrf: String,
    branch: String,
    /// `on` when "Deploy each successful build" is ticked (absent when not).
    #[serde(default)]
    auto_deploy: Option<String>,
}

async fn save_environment_settings(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<SettingsForm>,
) -> Response {
    if let Err(refused) = session.permit(
        &form.csrf,
        Role::Admin,
        "change an environment's deployment rules",
    ) {
        return refused.into_response();
    }
    let branch = form.branch.trim().to_owned();
    let auto_deploy = form.auto_deploy.as_deref() == Some("on");
    let environment_id = id.clone();
    let saved = state
        .db
        .call(move |conn| {
            let environment = store::get_environment(conn, &environment_id)?;
            if environment.kind == EnvironmentKind::Preview {
                return Err(ApiError::Conflict(
                    "a preview environment follows its pull request's branch".to_owned(),
                ));
            }
            store::update_environment(
                conn,
                &environment_id,
                UpdateEnvironment {
                    branch: Some(branch),
                    auto_deploy: Some(auto_deploy),
                    deploy: None,
                    require: None,
                },
            )
        })
        .await;
    match saved {
        Ok(environment) => {
            tracing::info!(message = "Deployment rule changed.", environment_id = %environment.id, branch = %environment.branch, auto_deploy = environment.auto_deploy, by = %session.user.name);
            let notice = if environment.auto_deploy {
                format!(
                    "Saved: the next push to {} builds here and deploys when the build succeeds.",
                    environment.branch
                )
            } else {
                format!(
                    "Saved: the next push to {} builds here; its build waits for Deploy.",
                    environment.branch
                )
            };
            settings_page(&state, &session, id, Some(&notice)).await
        }
        Err(error @ (ApiError::InvalidBody(_) | ApiError::Conflict(_))) => {
            settings_page(&state, &session, id, Some(&format!("Not saved: {error}"))).await
        }
        Err(error) => page_error(Some(&session), error),
    }
}

async fn deployment(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let found = state
        .db
        .call(move |conn| {
            let deployment = store::get_deployment_explained(conn, &id)?;
            let project = store::get_project(conn, &deployment.project_id)?;
            let environment = store::get_environment(conn, &deployment.environment_id).ok();
            let siblings = store::list_deployments(
                conn,
                DeploymentFilter {
                    environment_id: Some(deployment.environment_id.clone()),
                    limit: 20,
                    ..Default::default()
                },
            )?;
            let delivery = store::last_delivery(conn, &deployment.id)?;
            let live_newer = store::live_newer_than(conn, &deployment)?;
            let deploys_to_agents = environment.as_ref().is_some_and(|e| e.deploy.is_some());
            let rollback = (deployment.status == kiln_protocol::DeploymentStatus::Ready
                && deploys_to_agents
                && deployment.artifacts_removed_at.is_none())
            .then(|| store::migrations_ahead(conn, &deployment.id))
            .transpose()?;
            let deployed_by_agent =
                store::job_for_logs(conn, &deployment.id, None, kiln_protocol::LogStream::Deploy)?
                    .is_some();
            let provenance = provenance::Shown {
                signed: store::deployment_provenance(conn, &deployment.id)?,
                keys: store::provenance_keys(conn)?.keys,
            };
            Ok::<_, ApiError>((
                deployment,
                project,
                environment,
                siblings,
                delivery,
                (live_newer, rollback, deployed_by_agent, provenance),
            ))
        })
        .await;
    match found {
        Ok((
            deployment,
            project,
            environment,
            siblings,
            delivery,
            (live_newer, rollback, deployed_by_agent, provenance),
        )) => pages::deployment(
            &session,
            DeploymentView {
                deployment: &deployment,
                project: &project,
                environment: environment.as_ref(),
                siblings: &siblings,
                delivery: delivery.as_ref(),
                live_newer: live_newer.as_ref(),
                rollback: rollback.as_deref(),
                deployed_by_agent,
                provenance: Some(&provenance),
            },
        )
        .into_response(),
        Err(error) => page_error(Some(&session), error),
    }
}

/// The status of a deployment, for the page to keep its badge current.
async fn deployment_status(
    State(state): State<AppState>,
    _session: Session,
    Path(id): Path<String>,
) -> Response {
    match state
        .db
        .call(move |conn| store::get_deployment(conn, &id))
        .await
    {
        Ok(deployment) => axum::Json(serde_json::json!({
            "status": deployment.status,
            "label": deployment.status.label(),
            "backend": deployment.backend_status,
            "storefront": deployment.storefront_status,
            "reason": deployment.reason,
        }))
        .into_response(),
        Err(error) => error.into_response(),
    }
}

async fn artifact(
    State(state): State<AppState>,
    session: Session,
    Path((id, name)): Path<(String, String)>,
) -> Response {
    match crate::artifacts::serve_artifact(&state.db, &state.artifacts, id, name).await {
        Ok(response) => response,
        Err(error) => page_error(Some(&session), error),
    }
}

impl axum::extract::OptionalFromRequestParts<AppState> for Session {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(
            <Session as axum::extract::FromRequestParts<AppState>>::from_request_parts(
                parts, state,
            )
            .await
            .ok(),
        )
    }
}
