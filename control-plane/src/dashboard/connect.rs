//! Making a project from the dashboard, and its Connect Git page: the
//! webhook URL to paste into GitHub, GitLab or Gitea, the secret (shown once,
//! when the project is made or the secret rotated), and the last delivery the
//! project saw with its answer. Each change is the store call its API route
//! makes (`POST /api/v1/projects`, `POST …/webhook-secret`), for an admin,
//! with the session's CSRF token.

use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use kiln_protocol::{CreateProject, GitHostKind, GitHostSettings, Project};
use maud::{html, Markup};
use serde::Deserialize;

use super::auth::Session;
use super::page_error;
use super::pages::Page;
use crate::error::ApiError;
use crate::store::{self, LastHook, Role};
use crate::AppState;

#[derive(Debug, Default, Deserialize)]
pub struct NewProjectForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    repository_url: String,
    #[serde(default)]
    backend_path: String,
    #[serde(default)]
    storefront_path: String,
    /// `""` (none), `github`, `gitlab` or `gitea`.
    #[serde(default)]
    git_host: String,
    #[serde(default)]
    git_host_api_url: String,
    #[serde(default)]
    git_host_token: String,
}

pub async fn new_project(session: Session) -> Response {
    if let Err(refused) = session.require(Role::Admin, "create a project") {
        return refused.into_response();
    }
    new_project_page(&session, &NewProjectForm::default(), None).into_response()
}

pub async fn create_project(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<NewProjectForm>,
) -> Response {
    if let Err(refused) = session.permit(&form.csrf, Role::Admin, "create a project") {
        return refused.into_response();
    }
    let git_host = match form.git_host.as_str() {
        "" => None,
        kind => Some(GitHostSettings {
            kind: match kind {
                "github" => GitHostKind::Github,
                "gitlab" => GitHostKind::Gitlab,
                _ => GitHostKind::Gitea,
            },
            api_url: form.git_host_api_url.trim().to_owned(),
            token: Some(form.git_host_token.trim().to_owned()).filter(|token| !token.is_empty()),
        }),
    };
    let new = CreateProject {
        backend_path: Some(form.backend_path.trim())
            .filter(|path| !path.is_empty())
            .unwrap_or(".")
            .to_owned(),
        storefront_path: Some(form.storefront_path.trim().to_owned())
            .filter(|path| !path.is_empty()),
        git_host,
        ..CreateProject::new(form.name.trim(), form.repository_url.trim())
    };
    let rules = state.project_rules();
    match state
        .db
        .call(move |conn| store::create_project(conn, new, rules))
        .await
    {
        Ok(project) => {
            tracing::info!(message = "Project created.", project_id = %project.id, by = %session.user.name);
            let secret = project.webhook_secret.clone();
            connect_page(&state, &session, &headers, project, secret, None).await
        }
        Err(error @ (ApiError::InvalidBody(_) | ApiError::Conflict(_))) => {
            new_project_page(&session, &form, Some(&format!("Not created: {error}")))
                .into_response()
        }
        Err(error) => page_error(Some(&session), error),
    }
}

pub async fn connect(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match state
        .db
        .call(move |conn| store::get_project(conn, &id))
        .await
    {
        Ok(project) => connect_page(&state, &session, &headers, project, None, None).await,
        Err(error) => page_error(Some(&session), error),
    }
}

#[derive(Deserialize)]
pub struct RotateForm {
    #[serde(default)]
    csrf: String,
}

pub async fn rotate(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<RotateForm>,
) -> Response {
    if let Err(refused) =
        session.permit(&form.csrf, Role::Admin, "rotate a project's webhook secret")
    {
        return refused.into_response();
    }
    match state
        .db
        .call(move |conn| store::rotate_webhook_secret(conn, &id))
        .await
    {
        Ok(project) => {
            tracing::info!(message = "Webhook secret rotated.", project_id = %project.id, by = %session.user.name);
            let secret = project.webhook_secret.clone();
            let notice = "A new secret: the old one no longer signs. Set this one on the git host's webhook now; it is not shown again.";
            connect_page(&state, &session, &headers, project, secret, Some(notice)).await
        }
        Err(error) => page_error(Some(&session), error),
    }
}

/// Where git hosts reach this server: `--public-url`, else the address the
/// browser used.
pub(super) fn public_base(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.config.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

async fn connect_page(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    project: Project,
    secret: Option<String>,
    notice: Option<&str>,
) -> Response {
    let id = project.id.clone();
    let last = match state.db.call(move |conn| store::last_hook(conn, &id)).await {
        Ok(last) => last,
        Err(error) => return page_error(Some(session), error),
    };
    let base = public_base(state, headers);
    let hosts = [
        ("GitHub", "github", "Settings → Webhooks → Add webhook: Payload URL, content type application/json, the secret, events Pushes and Pull requests."),
        ("GitLab", "gitlab", "Settings → Webhooks: URL, the secret as Secret token, triggers Push events and Merge request events."),
        ("Gitea", "gitea", "Settings → Webhooks → Add webhook → Gitea: Target URL, content type application/json, the secret, events Push and Pull request."),
    ];
    Page::new(
        format!("{} · Connect Git", project.name),
        session,
        html! {
            nav.crumbs aria-label="Breadcrumb" { a href="/" { "Projects" } " / " a href={"/projects/" (project.id)} { (project.name) } " / " span { "Connect Git" } }
            h1 { "Connect " (project.name) " to its git host" }
            @if let Some(notice) = notice { p.notice role="status" { (notice) } }
            p { "Each push to " code { (project.repository_url) } " and each pull request then builds here. Add a webhook on the repository:" }
            table.hooks {
                thead { tr { th { "Git host" } th { "Webhook URL" } th { "Where" } } }
                tbody {
                    @for (name, path, where_) in hosts {
                        tr { td { (name) } td { code.hook-url { (base) "/api/v1/hooks/" (path) } } td { (where_) } }
                    }
                }
            }
            section aria-labelledby="secret" {
                h2 id="secret" { "Webhook secret" }
                @match &secret {
                    Some(secret) => {
                        p.secret-once { "Copy it now: it is shown this once." }
                        p { code.webhook-secret { (secret) } }
                    }
                    None => p { "The secret was shown when it was made. Lost it? Rotate it and set the new one on the git host." },
                }
                @if session.user.role >= Role::Admin {
                    form method="post" action={"/projects/" (project.id) "/connect/rotate"} {
                        input type="hidden" name="csrf" value=(session.csrf);
                        button.rotate type="submit" { "Rotate the secret" }
                    }
                }
            }
            section aria-labelledby="delivery" {
                h2 id="delivery" { "Last delivery" }
                (last_delivery(last.as_ref()))
            }
        },
    )
    .into_response()
}

fn last_delivery(last: Option<&LastHook>) -> Markup {
    let Some(last) = last else {
        return html! { p.last-delivery { "None has arrived yet. Once the webhook is saved, the git host sends a ping; it shows here." } };
    };
    let fine = (200..300).contains(&last.status);
    html! {
        p.last-delivery.(if fine { "ok" } else { "bad" }) {
            (super::pieces::when_millis(last.at_ms)) ": a " code { (last.event) } " event, answered " (last.status) ". "
            (last.answer)
        }
    }
}

fn new_project_page(session: &Session, form: &NewProjectForm, problem: Option<&str>) -> Page {
    let host = form.git_host.as_str();
    Page::new(
        "New project",
        session,
        html! {
            nav.crumbs aria-label="Breadcrumb" { a href="/" { "Projects" } " / " span { "New project" } }
            h1 { "New project" }
            @if let Some(problem) = problem { p.problem role="alert" { (problem) } }
            form.new-project method="post" action="/projects/new" {
                input type="hidden" name="csrf" value=(session.csrf);
                label for="name" { "Name" }
                input id="name" name="name" value=(form.name) required;
                label for="repository_url" { "Repository URL (https, or ssh for a private one)" }
                input id="repository_url" name="repository_url" value=(form.repository_url) required placeholder="https://github.com/acme/shop.git";
                label for="backend_path" { "Backend folder (where medusa-config is; . for the root)" }
                input id="backend_path" name="backend_path" value=(if form.backend_path.is_empty() { "." } else { form.backend_path.as_str() });
                label for="storefront_path" { "Storefront folder (empty: found by itself)" }
                input id="storefront_path" name="storefront_path" value=(form.storefront_path);
                label for="git_host" { "Git host, for commit statuses and preview comments" }
                select id="git_host" name="git_host" {
                    option value="" selected[host.is_empty()] { "none" }
                    option value="github" selected[host == "github"] { "GitHub" }
                    option value="gitlab" selected[host == "gitlab"] { "GitLab" }
                    option value="gitea" selected[host == "gitea"] { "Gitea" }
                }
                label for="git_host_api_url" { "Its API URL (https://api.github.com, https://gitlab.example.com/api/v4, …)" }
                input id="git_host_api_url" name="git_host_api_url" value=(form.git_host_api_url);
                label for="git_host_token" { "A token that may post commit statuses (never shown back)" }
                input id="git_host_token" name="git_host_token" type="password" autocomplete="off";
                button type="submit" { "Create project" }
            }
        },
    )
}
