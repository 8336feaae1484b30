//! The dashboard's pages, rendered on the server (maud): everything reads
//! without JavaScript; `app.js` adds the live log viewer and live statuses. A
//! status is always a word beside its colour, never the colour alone.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::DateTime;
use kiln_protocol::{
    ComponentStatus, Deployment, DeploymentStatus, Environment, EnvironmentKind, LogStream, Project,
};
use maud::{html, Markup, DOCTYPE};

use super::auth::Session;
pub use super::pieces::*;
use crate::store::DeliveryView;

/// A page: its title, its body and the person looking.
pub struct Page {
    pub title: String,
    pub status: StatusCode,
    pub session: Option<Session>,
    pub body: Markup,
}

impl Page {
    pub fn new(title: impl Into<String>, session: &Session, body: Markup) -> Page {
        Page {
            title: title.into(),
            status: StatusCode::OK,
            session: Some(session.clone()),
            body,
        }
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let markup = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.title) " · Kiln" }
                    link rel="stylesheet" href="/static/app.css";
                    script src="/static/app.js" defer {}
                }
                body {
                    header.top {
                        a.brand href="/" { "Kiln" }
                        @if let Some(session) = &self.session {
                            nav aria-label="Main" {
                                a href="/" { "Projects" }
                                a href="/agents" { "Agents" }
                            }
                            div.who {
                                span { (session.user.name) " · " (session.user.role) }
                                form method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                    main id="main" { (self.body) }
                }
            }
        };
        (
            self.status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; img-src 'self' https: data:; frame-ancestors 'none'",
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            markup.into_string(),
        )
            .into_response()
    }
}

/// A 403 page saying why.
impl IntoResponse for super::auth::Refusal {
    fn into_response(self) -> Response {
        refused(&self.session, &self.why)
    }
}

pub fn refused(session: &Session, why: &str) -> Response {
    let mut page = Page::new(
        "Not allowed",
        session,
        html! {
            h1 { "Not allowed" }
            p.problem role="alert" { (why) }
            p { a href="/" { "Projects" } }
        },
    );
    page.status = StatusCode::FORBIDDEN;
    page.into_response()
}

/// A 404 page naming what was not found.
pub fn not_found(session: Option<&Session>, what: &str) -> Response {
    Page {
        title: "Not found".into(),
        status: StatusCode::NOT_FOUND,
        session: session.cloned(),
        body: html! {
            h1 { "Not found" }
            p.problem { (what) " does not exist, or no longer does." }
            p { a href="/" { "Projects" } }
        },
    }
    .into_response()
}

pub fn sign_in(next: &str, form_token: &str, problem: Option<&str>) -> Page {
    Page {
        title: "Sign in".into(),
        status: if problem.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        },
        session: None,
        body: html! {
            h1 { "Sign in to Kiln" }
            @if let Some(problem) = problem {
                p.problem role="alert" { (problem) }
            }
            form.signin method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                input type="hidden" name="form_token" value=(form_token);
                label for="username" { "User name" }
                input id="username" name="username" autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input id="password" name="password" type="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
            p.hint { "Accounts are made on the server: " code { "kiln-server users add NAME --role viewer" } }
        },
    }
}

// ------------------------------------------------------------------ pages

pub fn projects(session: &Session, projects: &[(Project, usize)]) -> Page {
    Page::new(
        "Projects",
        session,
        html! {
            h1 { "Projects" }
            @if !projects.is_empty() && session.user.role >= crate::store::Role::Admin {
                p { a.create href="/projects/new" { "New project" } }
            }
            @if projects.is_empty() {
                @if session.user.role >= crate::store::Role::Admin {
                    p.empty { "No projects yet. " a.create href="/projects/new" { "Create the first project" } ": its repository, where the backend and storefront are, and its git host." }
                } @else {
                    p.empty { "No projects yet. An admin creates them; you are a " (session.user.role) "." }
                }
            } @else {
                ul.cards {
                    @for (project, environments) in projects {
                        li.card {
                            h2 { a href={"/projects/" (project.id)} { (project.name) } }
                            p { code { (project.repository_url) } }
                            p { (environments) " environment(s)" }
                        }
                    }
                }
            }
        },
    )
}

pub fn project(
    session: &Session,
    project: &Project,
    cards: &[(Environment, Option<Deployment>)],
) -> Page {
    Page::new(
        project.name.clone(),
        session,
        html! {
            nav.crumbs aria-label="Breadcrumb" { a href="/" { "Projects" } " / " span { (project.name) } }
            h1 { (project.name) }
            (super::pieces::project_tabs(project, "Environments"))
            @if session.user.role >= crate::store::Role::Admin {
                p { a.create href={"/environments/new?project=" (project.id)} { "New environment" } }
            }
            ul.cards {
                @for (environment, current) in cards {
                    li.card.environment {
                        h2 { a href={"/environments/" (environment.id)} { (environment.name) } }
                        p { (environment_kind(environment)) " · branch " code { (environment.branch) } }
                        @if let Some(deployment) = current {
                            p.current {
                                @if deployment.status == DeploymentStatus::Live { "Live: " } @else { "Nothing live yet; latest: " }
                                (status_badge(deployment.status)) " "
                                a href={"/deployments/" (deployment.id)} {
                                    code { (short_sha(&deployment.commit_sha)) } " " (first_line(&deployment.message))
                                }
                            }
                            @if deployment.status == DeploymentStatus::Live { (live_links(environment)) }
                        } @else {
                            p.empty { "No deployment yet." }
                        }
                    }
                }
            }
        },
    )
}

/// What the Deployments tab was asked for, kept in its URL.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct DeploymentsQuery {
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub page: Option<u32>,
}

impl DeploymentsQuery {
    fn with_page(&self, page: u32) -> String {
        let mut pairs = Vec::new();
        for (key, value) in [
            ("environment", &self.environment),
            ("branch", &self.branch),
            ("status", &self.status),
            ("q", &self.q),
        ] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                pairs.push(format!("{key}={}", super::auth::url_encode(value)));
            }
        }
        pairs.push(format!("page={page}"));
        format!("?{}", pairs.join("&"))
    }
}

pub struct DeploymentsList<'a> {
    pub deployments: &'a [Deployment],
    pub environments: &'a [Environment],
    pub branches: &'a [String],
    pub query: &'a DeploymentsQuery,
    pub total: u64,
    pub page: u32,
    pub per_page: u32,
    /// What in the query could not be applied, and why.
    pub problem: Option<&'a str>,
}

pub fn project_deployments(session: &Session, project: &Project, list: DeploymentsList) -> Page {
    let query = list.query;
    let selected = |value: &Option<String>, option: &str| value.as_deref() == Some(option);
    let first = u64::from(list.page) * u64::from(list.per_page);
    let shown_to = first + list.deployments.len() as u64;
    Page::new(
        format!("{} · Deployments", project.name),
        session,
        html! {
            nav.crumbs aria-label="Breadcrumb" { a href="/" { "Projects" } " / " a href={"/projects/" (project.id)} { (project.name) } }
            h1 { (project.name) }
            (super::pieces::project_tabs(project, "Deployments"))
            @if let Some(problem) = list.problem { p.problem role="alert" { (problem) } }
            form.filters method="get" role="search" {
                label { "Environment "
                    select name="environment" {
                        option value="" { "All" }
                        @for environment in list.environments {
                            option value=(environment.id) selected[selected(&query.environment, &environment.id)] { (environment.name) }
                        }
                    }
                }
                label { "Branch "
                    select name="branch" {
                        option value="" { "All" }
                        @for branch in list.branches {
                            option value=(branch) selected[selected(&query.branch, branch)] { (branch) }
                        }
                    }
                }
                label { "Status "
                    select name="status" {
                        option value="" { "All" }
                        @for status in DeploymentStatus::ALL {
                            option value=(status.as_str()) selected[selected(&query.status, status.as_str())] { (status.label()) }
                        }
                    }
                }
                label { "Search "
                    input type="search" name="q" placeholder="sha, message or author" value=[query.q.as_deref()];
                }
                button type="submit" { "Filter" }
            }
            p.count { @if list.total == 0 { "No deployments" } @else { "Deployments " (first + 1) "–" (shown_to) " of " (list.total) } }
            (deployments_table(list.deployments, list.environments))
            nav.pages aria-label="Pages" {
                @if list.page > 0 { a rel="prev" href=(query.with_page(list.page - 1)) { "← Newer" } }
                @if shown_to < list.total { a rel="next" href=(query.with_page(list.page + 1)) { "Older →" } }
            }
        },
    )
}

pub fn environment(
    session: &Session,
    project: &Project,
    environment: &Environment,
    deployments: &[Deployment],
) -> Page {
    Page::new(
        environment.name.clone(),
        session,
        html! {
            nav.crumbs aria-label="Breadcrumb" { a href="/" { "Projects" } " / " a href={"/projects/" (project.id)} { (project.name) } " / " span { (environment.name) } }
            h1 { (environment.name) }
            p { (environment_kind(environment)) " · branch " code { (environment.branch) } }
            (super::pieces::environment_tabs(environment, "Deployments"))
            (deployments_table(deployments, std::slice::from_ref(environment)))
        },
    )
}

pub fn environment_settings(
    session: &Session,
    project: &Project,
    environment: &Environment,
    notice: Option<&str>,
    deploy_section: Markup,
) -> Page {
    Page::new(
        format!("{} · Settings", environment.name),
        session,
        html! {
            (super::pieces::environment_heading(project, environment, "Settings"))
            section aria-labelledby="rules" {
                h2 id="rules" { "Deployment rules" }
                @if let Some(notice) = notice { p.notice role="status" { (notice) } }
                @match environment.kind {
                    EnvironmentKind::Preview => p {
                        "A preview environment follows its pull request's branch ("
                        code { (environment.branch) } "); its branch cannot be changed."
                    },
                    EnvironmentKind::LongLived if session.user.role < crate::store::Role::Admin => p {
                        "Branch " code { (environment.branch) } "; auto-deploy "
                        (if environment.auto_deploy { "on" } else { "off" })
                        ". Changing the deployment rules needs the admin role; you are a " (session.user.role) "."
                    },
                    EnvironmentKind::LongLived => form.rules method="post" action={"/environments/" (environment.id) "/settings"} {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="branch" { "Branch (a name or a glob such as " code { "release/*" } ")" }
                        input id="branch" name="branch" value=(environment.branch) required;
                        label.auto-deploy {
                            input type="checkbox" name="auto_deploy" checked[environment.auto_deploy];
                            " Deploy each successful build (auto-deploy); otherwise a build waits at Awaiting deployment for Deploy"
                        }
                        p.hint { "Takes effect for the next push." }
                        button type="submit" { "Save" }
                    },
                }
            }
            (deploy_section)
        },
    )
}

pub struct DeploymentView<'a> {
    pub deployment: &'a Deployment,
    pub project: &'a Project,
    pub environment: Option<&'a Environment>,
    /// The environment's other deployments, for the switcher.
    pub siblings: &'a [Deployment],
    /// The last commit status sent to the git host about it.
    pub delivery: Option<&'a DeliveryView>,
    /// The environment's live deployment, when it is newer than this one.
    pub live_newer: Option<&'a Deployment>,
    /// Set when this deployment can be rolled back to: the newer deployments
    /// whose migrations a rollback leaves applied.
    pub rollback: Option<&'a [String]>,
    /// Whether a deploy host ran a deploy of it (its deploy log).
    pub deployed_by_agent: bool,
    pub provenance: Option<&'a super::provenance::Shown>,
}

/// Links to what a live environment serves, where its deploys run on agents.
fn live_links(environment: &Environment) -> Markup {
    let Some(deploy) = &environment.deploy else {
        return html! {};
    };
    html! {
        p.live-links {
            @if let Some(host) = &deploy.storefront_hostname {
                a href={"//" (host) "/"} rel="noopener noreferrer" { "Visit storefront ↗" } " "
            }
            @if let Some(host) = &deploy.backend_hostname {
                a href={"//" (host) "/app"} rel="noopener noreferrer" { "Open admin at /app ↗" }
            }
        }
    }
}

fn action_form(session: &Session, deployment: &Deployment, action: &str, label: &str) -> Markup {
    action_form_asking(session, deployment, action, label, false)
}

/// The form of an action; `older` asks the deployer to confirm that an older
/// commit than the live one is meant.
fn action_form_asking(
    session: &Session,
    deployment: &Deployment,
    action: &str,
    label: &str,
    older: bool,
) -> Markup {
    // A button its user may not press is not shown; the server refuses it anyway.
    if session.user.role < crate::store::Role::Deployer {
        return html! {
            span.hint.role-needed { (label) " needs the deployer role; you are a " (session.user.role) "." }
        };
    }
    html! {
        form.action method="post" action={"/deployments/" (deployment.id) "/" (action)} {
            input type="hidden" name="csrf" value=(session.csrf);
            @if older {
                label.older {
                    input type="checkbox" name="older" value="yes" required;
                    " take it back to this older commit"
                }
                " "
            }
            button type="submit" class=(action) { (label) }
            @if action == "redeploy" {
                " "
                label.nocache {
                    input type="checkbox" name="cache" value="off";
                    " without cache"
                }
            }
        }
    }
}

pub fn deployment(session: &Session, view: DeploymentView) -> Page {
    let DeploymentView {
        deployment,
        project,
        environment,
        siblings,
        delivery,
        live_newer,
        rollback,
        deployed_by_agent,
        provenance,
    } = view;
    let environment_name = environment.map_or("(removed environment)", |e| e.name.as_str());
    let commit_link = commit_url(&project.repository_url, &deployment.commit_sha);
    let streams: Vec<LogStream> = LogStream::ALL
        .into_iter()
        // The deploy and runtime streams are a deploy job's: shown once one ran.
        .filter(|stream| !stream.of_deploy_job() || deployed_by_agent)
        .filter(|stream| {
            *stream != LogStream::Storefront
                || deployment.storefront_status != ComponentStatus::Skipped
        })
        .collect();
    let failed = matches!(
        deployment.status,
        DeploymentStatus::BuildFailed | DeploymentStatus::DeployFailed
    );
    Page::new(
        format!(
            "{} · {}",
            first_line(&deployment.message),
            short_sha(&deployment.commit_sha)
        ),
        session,
        html! {
                    nav.crumbs aria-label="Breadcrumb" {
                        a href="/" { "Projects" } " / "
                        a href={"/projects/" (project.id)} { (project.name) } " / "
                        @if let Some(environment) = environment {
                            a href={"/environments/" (environment.id)} { (environment.name) }
                        } @else { span { (environment_name) } }
                    }
                    details.switcher {
                        summary {
                            h1 {
                                span.message { (first_line(&deployment.message)) } " "
                                code.sha { (short_sha(&deployment.commit_sha)) }
                            }
                            span.hint { "Other deployments of " (environment_name) " ▾" }
                        }
                        ul {
                            @for other in siblings {
                                li {
                                    @if other.id == deployment.id {
                                        span aria-current="page" { code { (short_sha(&other.commit_sha)) } " " (first_line(&other.message)) " " (status_badge(other.status)) }
                                    } @else {
                                        a href={"/deployments/" (other.id)} { code { (short_sha(&other.commit_sha)) } " " (first_line(&other.message)) " " (status_badge(other.status)) }
                                    }
                                }
                            }
                        }
                    }
                    @if let Some(url) = &commit_link {
                        p { a.commit href=(url) rel="noopener noreferrer" { "View commit " (short_sha(&deployment.commit_sha)) " ↗" } }
                    }
        div id="summary" {
                        div.statusbar {
                            span id="deployment-status" data-deployment=(deployment.id) { (status_badge(deployment.status)) }
                            @match deployment.status {
                                DeploymentStatus::AwaitingDeployment => (action_form_asking(session, deployment, "deploy", "Deploy", live_newer.is_some())),
                                DeploymentStatus::Queued | DeploymentStatus::Building => (action_form(session, deployment, "cancel", "Cancel")),
                                _ => (action_form(session, deployment, "redeploy", "Redeploy")),
                            }
                            @if rollback.is_some() { (action_form(session, deployment, "rollback", "Roll back to this")) }
                        }
                        @if let Some(ahead) = rollback.filter(|ahead| !ahead.is_empty()) {
                            p.migrations-ahead role="note" {
                                "Rolling back starts this release again with no build and no migrations; the database keeps the migrations of "
                                @for (n, id) in ahead.iter().enumerate() {
                                    @if n > 0 { ", " }
                                    a href={"/deployments/" (id)} { (id) }
                                }
                                "."
                            }
                        }
                        @if deployment.status == DeploymentStatus::Live {
                            @if let Some(environment) = environment { (live_links(environment)) }
                        }
                        @if let (DeploymentStatus::AwaitingDeployment, Some(live)) = (deployment.status, live_newer) {
                            p.superseded role="status" {
                                "Superseded: deployment " a href={"/deployments/" (live.id)} { (short_sha(&live.commit_sha)) }
                                ", newer, is live. Deploying this one takes " (environment_name) " back to an older commit."
                            }
                        }
                        @if let Some(reason) = &deployment.reason {
                            p class={"reason " @if failed { "bad" }} role=[failed.then_some("alert")] { (reason) }
                        }
                        @if let Some(waiting) = &deployment.waiting_for {
                            p.reason.waiting { "Not started: " (waiting) }
                        }
                        dl.meta {
                            dt { "Author" }
                            dd.author {
                                @if let Some(avatar) = &deployment.author_avatar {
                                    img.avatar src=(avatar) alt="" width="20" height="20" title=(deployment.author);
                                    " "
                                }
                                (deployment.author)
                                @if let Some(login) = &deployment.author_login {
                                    @if login != &deployment.author { " (@" (login) ")" }
                                }
                            }
                            @if let Some(pusher) = &deployment.pusher {
                                dt { "Pushed by" } dd { (pusher) }
                            }
                            dt { "Branch" } dd { code { (deployment.branch) } }
                            dt { "Environment" } dd { (environment_name) }
                            dt { "Components" } dd {
                                (component_badge("Backend", deployment.backend_status)) " "
                                (component_badge("Storefront", deployment.storefront_status))
                            }
                            dt { "Created" } dd { (when(deployment.created_at)) }
                            dt { "Build time" }
                            // While it builds, the page counts on from when it began.
                            @let started = building_since(deployment);
                            dd.build-time
                                data-started=[started]
                                data-now=[started.map(|_| chrono::Utc::now().timestamp_millis())]
                            { (build_duration(deployment).unwrap_or_else(|| "—".to_owned())) }
                            @if let (Some(delivery), Some(host)) = (delivery, &project.git_host) {
                        dt { (host.kind.label()) " status" }
                        dd.delivery { (delivery_text(delivery)) }
                    }
                    @if let Some(of) = &deployment.redeploy_of {
                                dt { "Redeploy of" } dd { a href={"/deployments/" (of)} { (of) } }
                            }
                        }
                        section aria-labelledby="timeline" {
                            h2 id="timeline" { "Timeline" }
                            ol.timeline {
                                @for transition in &deployment.transitions {
                                    li {
                                        (when(transition.at)) " " (status_badge(transition.status))
                                        @if let Some(reason) = &transition.reason { " — " span.reason-text { (reason) } }
                                    }
                                }
                            }
                        }
                        section aria-labelledby="artifacts" {
                            h2 id="artifacts" { "Artifacts" }
                            @if let Some(removed_at) = deployment.artifacts_removed_at {
                                p.removed { "Deleted " (when(removed_at)) " by the server's retention policy. Redeploy to build them again." }
                            }
                            @if deployment.artifacts.is_empty() {
                                p.empty { "None." }
                            } @else {
                                table.artifacts {
                                    thead { tr { th scope="col" { "Name" } th scope="col" { "Size" } th scope="col" { "sha256" } } }
                                    tbody {
                                        @for artifact in &deployment.artifacts {
                                            tr {
                                                td {
                                                    @if deployment.artifacts_removed_at.is_some() {
                                                        (artifact.descriptor.name)
                                                    } @else {
                                                        a href={"/deployments/" (deployment.id) "/artifacts/" (artifact.descriptor.name)} download { (artifact.descriptor.name) }
                                                    }
                                                }
                                                td title={(artifact.descriptor.size) " bytes"} { (crate::store::bytes_text(artifact.descriptor.size)) }
                                                td { code.sha256 { (artifact.descriptor.sha256) } }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        (super::provenance::section(provenance))
                    }
                    section.activity aria-labelledby="activity" {
                        h2 id="activity" { "Activity" }
                        nav.tabs.streams aria-label="Logs" {
                            @for stream in &streams {
                                a href={"#" (stream.as_str())} data-stream=(stream.as_str()) { (stream_title(*stream)) }
                            }
                        }
                        @for stream in &streams {
                            section.logview id={"log-" (stream.as_str())} data-deployment=(deployment.id) data-stream=(stream.as_str()) aria-label={(stream_title(*stream)) " log"} {
                                h3 { (stream_title(*stream)) " log" }
                                p.raw-links {
                                    a.raw href={"/deployments/" (deployment.id) "/logs/" (stream.as_str()) "/raw"} { "Raw log" }
                                    " · "
                                    a.plain href={"/deployments/" (deployment.id) "/logs/" (stream.as_str()) "/raw?plain=true"} { "Plain text" }
                                }
                            }
                        }
                    }
                },
    )
}

/// How the last commit status fared: delivered, waiting to be retried, or given up.
fn delivery_text(delivery: &DeliveryView) -> String {
    let answer = delivery.result.as_deref().unwrap_or("");
    match (delivery.delivered, delivery.done, delivery.attempts) {
        (true, _, _) => format!("{} delivered ({answer})", delivery.status),
        (false, false, 0) => format!("{} waiting to be sent", delivery.status),
        (false, false, tries) => {
            let at = DateTime::from_timestamp_millis(delivery.next_attempt_at)
                .map(|at| at.format("%H:%M:%S UTC").to_string())
                .unwrap_or_default();
            format!(
                "{} not delivered after {tries} tries ({answer}); next try at {at}",
                delivery.status
            )
        }
        (false, true, tries) => format!(
            "{} not delivered; gave up after {tries} tries: {answer}",
            delivery.status
        ),
    }
}

fn stream_title(stream: LogStream) -> &'static str {
    match stream {
        LogStream::System => "System",
        LogStream::Backend => "Backend",
        LogStream::Storefront => "Storefront",
        LogStream::Deploy => "Deploy",
        LogStream::Runtime => "Runtime",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_pages_on_known_hosts() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            commit_url("https://github.com/acme/shop.git", sha).unwrap(),
            format!("https://github.com/acme/shop/commit/{sha}")
        );
        assert_eq!(
            commit_url("git@gitlab.example.com:acme/shop.git", sha).unwrap(),
            format!("https://gitlab.example.com/acme/shop/-/commit/{sha}")
        );
        assert_eq!(
            commit_url("https://x-access-token:t@git.example/acme/shop", sha).unwrap(),
            format!("https://git.example/acme/shop/commit/{sha}")
        );
        assert_eq!(commit_url("file:///srv/shop", sha), None);
        assert_eq!(commit_url("http://127.0.0.1:9/shop.git", sha), None);
    }

    #[test]
    fn a_deployment_whose_artifacts_retention_deleted_says_so_and_links_none() {
        let mut deployment: Deployment = serde_json::from_value(serde_json::json!({
            "id": "dpl_1", "project_id": "prj_1", "environment_id": "env_1",
            "commit_sha": "0123456789abcdef0123456789abcdef01234567", "branch": "main",
            "author": "Ada", "message": "m", "status": "ready", "backend_status": "succeeded",
            "storefront_status": "skipped", "attempts": 1,
            "created_at": "2026-11-01T10:00:00Z", "updated_at": "2026-11-01T10:05:00Z",
            "artifacts": [{"name": "backend.tar.gz", "size": 2_621_440, "sha256": "ab", "job_id": "job_1",
                           "created_at": "2026-11-01T10:04:00Z"}],
        }))
        .unwrap();
        let project: Project = serde_json::from_value(serde_json::json!({
            "id": "prj_1", "name": "shop", "repository_url": "https://git.example/acme/shop.git",
            "backend_path": ".", "created_at": "2026-11-01T09:00:00Z",
        }))
        .unwrap();
        let session = Session {
            user: crate::store::User {
                name: "ada".into(),
                role: crate::store::Role::Viewer,
                created_at: 0,
            },
            csrf: "token".into(),
        };
        let render = |shown: &Deployment| {
            super::deployment(
                &session,
                DeploymentView {
                    deployment: shown,
                    project: &project,
                    environment: None,
                    siblings: &[],
                    delivery: None,
                    live_newer: None,
                    rollback: None,
                    deployed_by_agent: false,
                    provenance: None,
                },
            )
            .body
            .into_string()
        };
        let link = "href=\"/deployments/dpl_1/artifacts/backend.tar.gz\"";
        let kept = render(&deployment);
        assert!(kept.contains(link) && !kept.contains("retention"), "{kept}");
        // Sizes for people, the exact count on hover.
        assert!(kept.contains("title=\"2621440 bytes\">2.5 MiB<"), "{kept}");
        // A viewer gets no Redeploy button, but why.
        assert!(
            !kept.contains("class=\"redeploy\"")
                && kept.contains("Redeploy needs the deployer role; you are a viewer."),
            "{kept}"
        );

        deployment.artifacts_removed_at = Some("2026-12-01T10:05:00Z".parse().unwrap());
        let removed = render(&deployment);
        assert!(!removed.contains(link), "{removed}");
        assert!(
            removed.contains("2026-12-01 10:05:00 UTC")
                && removed.contains("retention policy")
                && removed.contains("backend.tar.gz"),
            "{removed}"
        );
    }

    #[test]
    fn durations_read_like_a_person_says_them() {
        assert_eq!(span_text(5), "5s");
        assert_eq!(span_text(83), "1m 23s");
        assert_eq!(span_text(3720), "1h 2m");
    }
}
