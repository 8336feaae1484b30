//! Making an environment from the dashboard, and its deploy settings (where
//! its releases run: agents with the deploy role, behind Caddy). Each change
//! is the store call its API route makes (`POST …/environments`, `PATCH
//! /api/v1/environments/{id}` with `"deploy"`), for an admin, with the
//! session's CSRF token.

use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Response};
use kiln_protocol::{CreateEnvironment, DeploySettings, Environment, Project, UpdateEnvironment};
use maud::{html, Markup};
use serde::Deserialize;

use super::auth::Session;
use super::pages::Page;
use super::{page_error, settings_page};
use crate::error::ApiError;
use crate::store::{self, Role};
use crate::AppState;

#[derive(Deserialize)]
pub struct NewQuery {
    project: String,
}

#[derive(Default, Deserialize)]
pub struct NewEnvironmentForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    branch: String,
    /// `on` when ticked.
    #[serde(default)]
    auto_deploy: Option<String>,
}

pub async fn new_environment(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<NewQuery>,
) -> Response {
    if let Err(refused) = session.require(Role::Admin, "create an environment") {
        return refused.into_response();
    }
    let form = NewEnvironmentForm {
        auto_deploy: Some("on".to_owned()),
        ..Default::default()
    };
    match state
        .db
        .call(move |conn| store::get_project(conn, &query.project))
        .await
    {
        Ok(project) => new_environment_page(&session, &project, &form, None).into_response(),
        Err(error) => page_error(Some(&session), error),
    }
}

pub async fn create_environment(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<NewQuery>,
    Form(form): Form<NewEnvironmentForm>,
) -> Response {
    if let Err(refused) = session.permit(&form.csrf, Role::Admin, "create an environment") {
        return refused.into_response();
    }
    let new = CreateEnvironment {
        name: form.name.trim().to_owned(),
        branch: form.branch.trim().to_owned(),
        auto_deploy: form.auto_deploy.as_deref() == Some("on"),
    };
    let project_id = query.project.clone();
    let created = state
        .db
        .call(move |conn| {
            let project = store::get_project(conn, &project_id)?;
            let made = store::create_environment(conn, &project_id, new);
            Ok::<_, ApiError>((project, made))
        })
        .await;
    match created {
        Ok((_, Ok(environment))) => {
            tracing::info!(message = "Environment created.", environment_id = %environment.id, by = %session.user.name);
            let notice = format!(
                "Created {}: the next push to {} builds here. Add its variables, and its deploy settings below to run it on your hosts.",
                environment.name, environment.branch
            );
            settings_page(&state, &session, environment.id, Some(&notice)).await
        }
        Ok((project, Err(error @ (ApiError::InvalidBody(_) | ApiError::Conflict(_))))) => {
            new_environment_page(
                &session,
                &project,
                &form,
                Some(&format!("Not created: {error}")),
            )
            .into_response()
        }
        Ok((_, Err(error))) | Err(error) => page_error(Some(&session), error),
    }
}

fn new_environment_page(
    session: &Session,
    project: &Project,
    form: &NewEnvironmentForm,
    problem: Option<&str>,
) -> Page {
    Page::new(
        format!("{} · New environment", project.name),
        session,
        html! {
            nav.crumbs aria-label="Breadcrumb" { a href="/" { "Projects" } " / " a href={"/projects/" (project.id)} { (project.name) } " / " span { "New environment" } }
            h1 { "New environment of " (project.name) }
            @if let Some(problem) = problem { p.problem role="alert" { (problem) } }
            form.new-environment method="post" action={"/environments/new?project=" (project.id)} {
                input type="hidden" name="csrf" value=(session.csrf);
                label for="name" { "Name" }
                input id="name" name="name" value=(form.name) required placeholder="Staging";
                label for="branch" { "Branch (a name or a glob such as " code { "release/*" } ")" }
                input id="branch" name="branch" value=(form.branch) required placeholder="develop";
                label.auto-deploy {
                    input type="checkbox" name="auto_deploy" checked[form.auto_deploy.as_deref() == Some("on")];
                    " Deploy each successful build (auto-deploy)"
                }
                button type="submit" { "Create environment" }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct DeployForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    agent_labels: String,
    #[serde(default)]
    backend_hostname: String,
    #[serde(default)]
    storefront_hostname: String,
    #[serde(default)]
    worker: Option<String>,
    #[serde(default)]
    health_path: String,
    #[serde(default)]
    health_timeout_seconds: String,
    #[serde(default)]
    releases_kept: String,
}

pub async fn save_deploy(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<DeployForm>,
) -> Response {
    if let Err(refused) = session.permit(
        &form.csrf,
        Role::Admin,
        "change where an environment deploys",
    ) {
        return refused.into_response();
    }
    let number = |field: &str, text: &str, default: u64| -> Result<u64, String> {
        match text.trim() {
            "" => Ok(default),
            text => text
                .parse()
                .map_err(|_| format!("deploy.{field}: {text:?} is not a whole number")),
        }
    };
    let optional = |text: &str| Some(text.trim().to_owned()).filter(|text| !text.is_empty());
    let settings = number("health_timeout_seconds", &form.health_timeout_seconds, 120).and_then(
        |health_timeout_seconds| {
            Ok(DeploySettings {
                agent_labels: form
                    .agent_labels
                    .split(',')
                    .map(str::trim)
                    .filter(|label| !label.is_empty())
                    .map(str::to_owned)
                    .collect(),
                backend_hostname: optional(&form.backend_hostname),
                storefront_hostname: optional(&form.storefront_hostname),
                worker: form.worker.as_deref() == Some("on"),
                health_path: optional(&form.health_path).unwrap_or_else(|| "/health".to_owned()),
                health_timeout_seconds,
                releases_kept: number("releases_kept", &form.releases_kept, 5)?
                    .min(u64::from(u32::MAX)) as u32,
            })
        },
    );
    let settings = match settings {
        Ok(settings) => settings,
        Err(why) => {
            return settings_page(&state, &session, id, Some(&format!("Not saved: {why}"))).await
        }
    };
    let environment_id = id.clone();
    let saved = state
        .db
        .call(move |conn| {
            store::update_environment(
                conn,
                &environment_id,
                UpdateEnvironment {
                    deploy: Some(settings),
                    require: None,
                    ..Default::default()
                },
            )
        })
        .await;
    match saved {
        Ok(environment) => {
            tracing::info!(message = "Deploy settings changed.", environment_id = %environment.id, by = %session.user.name);
            settings_page(
                &state,
                &session,
                id,
                Some("Saved: the next deploy runs on an agent with the deploy role and these labels."),
            )
            .await
        }
        Err(error @ ApiError::InvalidBody(_)) => {
            settings_page(&state, &session, id, Some(&format!("Not saved: {error}"))).await
        }
        Err(error) => page_error(Some(&session), error),
    }
}

/// The deploy settings on an environment's settings page: a form for an
/// admin, else what they are.
pub fn deploy_section(session: &Session, environment: &Environment) -> Markup {
    let current = environment.deploy.as_ref();
    let text = |value: Option<&String>| value.cloned().unwrap_or_default();
    html! {
        section aria-labelledby="deploy" {
            h2 id="deploy" { "Deploy to your hosts" }
            p.hint {
                "Releases run on agents with the deploy role ("
                code { "roles = [\"deploy\"]" } ") behind Caddy; the backend on its hostname (the admin at /app), a Next.js storefront on its own. "
                @if current.is_none() { "Not set: a deploy is the control plane's own step (the artifacts and the deploy hook)." }
            }
            @if session.user.role >= Role::Admin {
                form.deploy method="post" action={"/environments/" (environment.id) "/deploy-settings"} {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="backend_hostname" { "Backend hostname" }
                    input id="backend_hostname" name="backend_hostname" required value=(text(current.and_then(|d| d.backend_hostname.as_ref()))) placeholder="api.shop.example";
                    label for="storefront_hostname" { "Storefront hostname (optional)" }
                    input id="storefront_hostname" name="storefront_hostname" value=(text(current.and_then(|d| d.storefront_hostname.as_ref()))) placeholder="shop.example";
                    label for="agent_labels" { "Agent labels, comma-separated (a deploy host must carry all)" }
                    input id="agent_labels" name="agent_labels" value=(current.map(|d| d.agent_labels.join(", ")).unwrap_or_default());
                    label.worker {
                        input type="checkbox" name="worker" checked[current.is_some_and(|d| d.worker)];
                        " Run a worker beside the server (the config must read MEDUSA_WORKER_MODE)"
                    }
                    label for="health_path" { "Health check path" }
                    input id="health_path" name="health_path" value=(current.map(|d| d.health_path.clone()).unwrap_or_else(|| "/health".to_owned()));
                    label for="health_timeout_seconds" { "Health check timeout (seconds)" }
                    input id="health_timeout_seconds" name="health_timeout_seconds" inputmode="numeric" value=(current.map_or(120, |d| d.health_timeout_seconds));
                    label for="releases_kept" { "Releases each host keeps for rollbacks" }
                    input id="releases_kept" name="releases_kept" inputmode="numeric" value=(current.map_or(5, |d| d.releases_kept));
                    button type="submit" { "Save deploy settings" }
                }
            } @else if let Some(deploy) = current {
                p { "Backend on " code { (text(deploy.backend_hostname.as_ref())) } @if let Some(host) = &deploy.storefront_hostname { ", storefront on " code { (host) } } "." }
            }
        }
    }
}
