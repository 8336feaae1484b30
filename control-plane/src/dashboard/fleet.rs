//! The fleet on the dashboard: the agents with their state, pausing,
//! resuming and revoking them, and making a registration token (shown once,
//! with the command to run on the host). Each change is the store call its
//! API route makes, for an admin, with the session's CSRF token.

use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use kiln_protocol::{CreateRegistrationToken, RegistrationTokenInfo};
use maud::html;
use serde::Deserialize;

use super::auth::Session;
use super::page_error;
use super::pages::Page;
use super::pieces::when_millis;
use crate::store::{self, AgentView, Role};
use crate::AppState;

pub async fn agents(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
) -> Response {
    show(&state, &session, &headers, None, None).await
}

async fn show(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    notice: Option<&str>,
    created: Option<&RegistrationTokenInfo>,
) -> Response {
    let server = super::connect::public_base(state, headers);
    match state.db.call(store::list_agents).await {
        Ok(agents) => agents_page(session, &agents, notice, created, &server).into_response(),
        Err(error) => page_error(Some(session), error),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Pauses, resumes or revokes an agent.
pub async fn act(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) =
        session.permit(&form.csrf, Role::Admin, "pause, resume or revoke an agent")
    {
        return refused.into_response();
    }
    let agent_id = id.clone();
    let done = match action.as_str() {
        "pause" | "resume" => {
            let paused = action == "pause";
            state
                .db
                .call(move |conn| store::set_paused(conn, &agent_id, paused))
                .await
                .map(|agent| {
                    if paused {
                        format!(
                            "Paused {}: it finishes what it runs and claims nothing more.",
                            agent.name
                        )
                    } else {
                        format!("Resumed {}: it claims jobs again.", agent.name)
                    }
                })
        }
        "revoke" => state
            .db
            .call(move |conn| store::revoke_agent(conn, &agent_id))
            .await
            .map(|requeued| {
                state.announce_queue_change();
                format!(
                    "Revoked {id}: its token no longer works{}.",
                    if requeued.is_empty() {
                        String::new()
                    } else {
                        format!("; its jobs ({}) go to other agents", requeued.join(", "))
                    }
                )
            }),
        _ => return super::pages::not_found(Some(&session), &format!("the action {action}")),
    };
    match done {
        Ok(notice) => {
            tracing::info!(message = "Agent changed from the dashboard.", agent_id = %id, %action, by = %session.user.name);
            show(&state, &session, &headers, Some(&notice), None).await
        }
        Err(error) => page_error(Some(&session), error),
    }
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: String,
    #[serde(default)]
    one_time: Option<String>,
    #[serde(default)]
    expires_in_hours: String,
}

pub async fn create_token(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Response {
    if let Err(refused) = session.permit(&form.csrf, Role::Admin, "make a registration token") {
        return refused.into_response();
    }
    let hours = match form.expires_in_hours.trim() {
        "" => None,
        text => match text.parse::<u64>() {
            Ok(hours) if hours > 0 => Some(hours),
            _ => {
                let notice = format!("Not made: {text:?} is not a number of hours; leave it empty for a token that does not expire");
                return show(&state, &session, &headers, Some(&notice), None).await;
            }
        },
    };
    let request = CreateRegistrationToken {
        name: Some(form.name.trim().to_owned()).filter(|name| !name.is_empty()),
        one_time: form.one_time.as_deref() == Some("on"),
        expires_in_seconds: hours.map(|hours| hours.saturating_mul(3600)),
        labels: form
            .labels
            .split(',')
            .map(str::trim)
            .filter(|label| !label.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    let token = crate::http::random_token();
    let hash = crate::http::sha256_hex(token.as_bytes());
    match state
        .db
        .call(move |conn| store::create_registration_token(conn, request, &token, &hash))
        .await
    {
        Ok(created) => {
            tracing::info!(message = "Registration token made from the dashboard.", token_id = %created.id, by = %session.user.name);
            show(&state, &session, &headers, None, Some(&created)).await
        }
        Err(error @ crate::error::ApiError::InvalidBody(_)) => {
            let notice = format!("Not made: {error}");
            show(&state, &session, &headers, Some(&notice), None).await
        }
        Err(error) => page_error(Some(&session), error),
    }
}

fn agent_state(agent: &AgentView) -> (&'static str, &'static str) {
    use kiln_protocol::AgentState::*;
    let state = agent.state();
    let class = match state {
        Idle => "ok",
        Busy => "busy",
        Paused => "done",
        Offline => "off",
    };
    (state.as_str(), class)
}

fn host_facts(agent: &AgentView) -> String {
    match &agent.facts {
        Some(facts) => format!(
            "{} cores, {} memory, {} free; {}",
            facts.cores,
            crate::store::bytes_text(facts.memory_bytes),
            crate::store::bytes_text(facts.free_disk_bytes),
            if facts.docker_version.is_empty() {
                "Docker ?"
            } else {
                &facts.docker_version
            }
        ),
        None => "—".to_owned(),
    }
}

fn agents_page(
    session: &Session,
    agents: &[AgentView],
    notice: Option<&str>,
    created: Option<&RegistrationTokenInfo>,
    server: &str,
) -> Page {
    let admin = session.user.role >= Role::Admin;
    Page::new(
        "Agents",
        session,
        html! {
            h1 { "Agents" }
            @if let Some(notice) = notice { p.notice role="status" { (notice) } }
            @if let Some(created) = created {
                section.registration-token aria-labelledby="token" {
                    h2 id="token" { "Registration token" }
                    p.secret-once { "Copy it now: it is shown this once. On the build or deploy host:" }
                    pre { code.register { "kiln-agent register --server " (server) " --token " (created.token.as_deref().unwrap_or_default()) @if !created.labels.is_empty() { " --labels " (created.labels.join(",")) } } }
                }
            }
            @if agents.is_empty() {
                p.empty { "No agents yet. " @if admin { "Make a registration token below, then run " code { "kiln-agent register" } " on the host." } @else { "An admin registers them." } }
            } @else {
                table.agents {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Labels" } th scope="col" { "Version" }
                        th scope="col" { "State" } th scope="col" { "Last contact" } th scope="col" { "Running" }
                        th scope="col" { "Host" } th scope="col" { "Registered" }
                        @if admin { th scope="col" { span.visually-hidden { "Actions" } } }
                    } }
                    tbody {
                        @for agent in agents {
                            @let (state, class) = agent_state(agent);
                            tr {
                                td data-label="Name" { (agent.name) br; small { code { (agent.id) } } }
                                td data-label="Labels" { @for label in &agent.labels { span.label { (label) } " " } }
                                td data-label="Version" { (agent.version.as_deref().unwrap_or("—")) }
                                td data-label="State" {
                                    span class={"badge " (class)} { (state) }
                                    @if let Some(reason) = &agent.holding_back {
                                        br; small.holding-back { "Claims no jobs: " (reason) }
                                    }
                                }
                                td data-label="Last contact" { @match agent.last_seen_at { Some(at) => (when_millis(at)), None => "never" } }
                                td data-label="Running" {
                                    @if agent.running.is_empty() { "—" }
                                    @for job in &agent.running {
                                        a href={"/deployments/" (job.deployment_id)} { (job.deployment_id) } " "
                                    }
                                }
                                td data-label="Host" { (host_facts(agent)) }
                                td data-label="Registered" { (when_millis(agent.created_at)) }
                                @if admin {
                                    td.actions {
                                        @let (action, label) = if agent.paused { ("resume", "Resume") } else { ("pause", "Pause") };
                                        form method="post" action={"/agents/" (agent.id) "/" (action)} {
                                            input type="hidden" name="csrf" value=(session.csrf);
                                            button class=(action) type="submit" { (label) }
                                        }
                                        // As a rollback asks: a box to tick, with or without script.
                                        form method="post" action={"/agents/" (agent.id) "/revoke"} title="It stops at once; its running jobs go to other agents, and it must register again." {
                                            input type="hidden" name="csrf" value=(session.csrf);
                                            label.for-good { input type="checkbox" name="for_good" value="yes" required; " for good" }
                                            " "
                                            button.revoke type="submit" { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if admin {
                section aria-labelledby="new-token" {
                    h2 id="new-token" { "Register an agent" }
                    form.registration-token method="post" action="/agents/registration-tokens" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="token-name" { "What it is for" }
                        input id="token-name" name="name" placeholder="build host 7";
                        label for="token-labels" { "Labels it grants, comma-separated (an agent may carry no others)" }
                        input id="token-labels" name="labels" placeholder="linux, edge";
                        label.one-time { input type="checkbox" name="one_time" checked; " One agent, then no more" }
                        label for="token-hours" { "Expires after (hours; empty: never)" }
                        input id="token-hours" name="expires_in_hours" inputmode="numeric" value="24";
                        button type="submit" { "Make a registration token" }
                    }
                }
            }
        },
    )
}
