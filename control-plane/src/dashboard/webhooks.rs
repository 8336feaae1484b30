//! A project's Webhooks tab: its outbound webhooks (made here with the secret
//! shown once, or deleted) and each one's delivery log, every attempt with its
//! answer, and a retry by hand. Each change is the store call its API route
//! makes (`POST /api/v1/projects/{id}/webhooks`, …`/retry`), for an admin, with
//! the session's CSRF token.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use kiln_protocol::{
    CreateWebhook, DeliveryState, Project, Webhook, WebhookDelivery, WEBHOOK_EVENTS,
};
use maud::{html, Markup};

use super::auth::Session;
use super::page_error;
use super::pages::Page;
use super::pieces::when;
use crate::error::ApiError;
use crate::store::{self, Role};
use crate::AppState;

/// What the page shows besides the stored webhooks.
#[derive(Default)]
struct Shown {
    notice: Option<String>,
    problem: Option<String>,
    /// A webhook just made, with its secret.
    made: Option<Webhook>,
}

impl Shown {
    fn notice(text: String) -> Shown {
        Shown {
            notice: Some(text),
            ..Shown::default()
        }
    }
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    Path(project_id): Path<String>,
) -> Response {
    render(&state, &session, project_id, Shown::default()).await
}

/// The form's fields; `events` comes once per ticked box.
fn form_fields(body: &[u8]) -> (String, String, Vec<String>) {
    let (mut csrf, mut url, mut events) = (String::new(), String::new(), Vec::new());
    for (key, value) in url::form_urlencoded::parse(body) {
        match key.as_ref() {
            "csrf" => csrf = value.into_owned(),
            "url" => url = value.trim().to_owned(),
            "events" => events.push(value.into_owned()),
            _ => {}
        }
    }
    (csrf, url, events)
}

pub async fn create(
    State(state): State<AppState>,
    session: Session,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Response {
    let (csrf, url, events) = form_fields(&body);
    if let Err(refused) = session.permit(&csrf, Role::Admin, "add a webhook") {
        return refused.into_response();
    }
    let secret = crate::secrets::random_token();
    let project = project_id.clone();
    let made = state
        .db
        .call(move |conn| {
            store::create_webhook(conn, &project, CreateWebhook { url, events }, &secret)
        })
        .await;
    let shown = match made {
        Ok(webhook) => {
            tracing::info!(message = "Webhook added.", project_id = %project_id, webhook_id = %webhook.id, by = %session.user.name);
            Shown {
                made: Some(webhook),
                ..Shown::default()
            }
        }
        Err(error @ (ApiError::InvalidBody(_) | ApiError::InvalidParameter(_))) => Shown {
            problem: Some(format!("Not added: {error}")),
            ..Shown::default()
        },
        Err(error) => return page_error(Some(&session), error),
    };
    render(&state, &session, project_id, shown).await
}

pub async fn delete(
    State(state): State<AppState>,
    session: Session,
    Path((project_id, webhook_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (csrf, _, _) = form_fields(&body);
    if let Err(refused) = session.permit(&csrf, Role::Admin, "delete a webhook") {
        return refused.into_response();
    }
    let (project, webhook) = (project_id.clone(), webhook_id.clone());
    if let Err(error) = state
        .db
        .call(move |conn| store::delete_webhook(conn, &project, &webhook))
        .await
    {
        return page_error(Some(&session), error);
    }
    tracing::info!(message = "Webhook deleted.", project_id = %project_id, webhook_id = %webhook_id, by = %session.user.name);
    let notice = format!("Webhook {webhook_id} deleted; nothing more is sent to it.");
    render(&state, &session, project_id, Shown::notice(notice)).await
}

pub async fn retry(
    State(state): State<AppState>,
    session: Session,
    Path((project_id, webhook_id, delivery_id)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let (csrf, _, _) = form_fields(&body);
    if let Err(refused) = session.permit(&csrf, Role::Admin, "retry a webhook delivery") {
        return refused.into_response();
    }
    let project = project_id.clone();
    match state
        .db
        .call(move |conn| store::retry_webhook_delivery(conn, &project, &webhook_id, &delivery_id))
        .await
    {
        Ok(delivery) => {
            state.announce_change();
            let notice = format!(
                "Delivery {} ({}) goes out again now; reload to see its answer.",
                delivery.id, delivery.event
            );
            render(&state, &session, project_id, Shown::notice(notice)).await
        }
        Err(error) => page_error(Some(&session), error),
    }
}

async fn render(state: &AppState, session: &Session, project_id: String, shown: Shown) -> Response {
    let loaded = state
        .db
        .call(move |conn| {
            let project = store::get_project(conn, &project_id)?;
            let webhooks = store::list_webhooks(conn, &project_id)?;
            let mut logs = Vec::new();
            for webhook in webhooks {
                let deliveries = store::list_webhook_deliveries(conn, &project_id, &webhook.id)?;
                logs.push((webhook, deliveries));
            }
            Ok::<_, ApiError>((project, logs))
        })
        .await;
    match loaded {
        Ok((project, logs)) => webhooks_page(session, &project, &logs, &shown).into_response(),
        Err(error) => page_error(Some(session), error),
    }
}

/// A webhook's URL as a non-admin sees it: chat webhooks carry their secret in
/// the path, so only the scheme and host.
fn shown_url(url: &str, admin: bool) -> String {
    if admin {
        return url.to_owned();
    }
    match reqwest::Url::parse(url) {
        Ok(parsed) => format!(
            "{}://{}/…",
            parsed.scheme(),
            parsed.host_str().unwrap_or("?")
        ),
        Err(_) => "…".to_owned(),
    }
}

fn webhooks_page(
    session: &Session,
    project: &Project,
    logs: &[(Webhook, Vec<WebhookDelivery>)],
    shown: &Shown,
) -> Page {
    let admin = session.user.role >= Role::Admin;
    let base = format!("/projects/{}/webhooks", project.id);
    Page::new(
        format!("{} · Webhooks", project.name),
        session,
        html! {
            nav.crumbs aria-label="Breadcrumb" { a href="/" { "Projects" } " / " a href={"/projects/" (project.id)} { (project.name) } " / " span { "Webhooks" } }
            h1 { (project.name) }
            (super::pieces::project_tabs(project, "Webhooks"))
            @if let Some(notice) = &shown.notice { p.notice role="status" { (notice) } }
            @if let Some(problem) = &shown.problem { p.problem role="alert" { (problem) } }
            @if let Some(made) = &shown.made {
                section.made aria-labelledby="made" {
                    h2 id="made" { "Webhook added" }
                    p.secret-once { "Its signing secret, shown this once: copy it to the receiver now." }
                    p { code.webhook-secret { (made.secret.as_deref().unwrap_or_default()) } }
                    p.hint { "Each delivery is a POST of JSON with " code { "X-Kiln-Signature: t=<unix>,v1=<hex>" } ", the HMAC-SHA256 of " code { "<t>.<body>" } " with this secret. Check it, and that t is recent, before trusting the body." }
                }
            }
            p { "Kiln POSTs each event to the URL, signed; a 2xx within 10 s counts, anything else is tried again with growing waits for 24 hours. Events: " code { (WEBHOOK_EVENTS.join(", ")) } "." }
            @if logs.is_empty() {
                p.empty { "No webhooks yet." }
            }
            @for (webhook, deliveries) in logs {
                section.webhook aria-labelledby={"hook-" (webhook.id)} {
                    h2 id={"hook-" (webhook.id)} { code { (shown_url(&webhook.url, admin)) } }
                    p { "Events: " (webhook.events.join(", ")) ". Added " (when(webhook.created_at)) "." }
                    @if admin {
                        form.delete method="post" action={(base) "/" (webhook.id) "/delete"} {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Delete" }
                        }
                    }
                    (delivery_log(session, &base, webhook, deliveries))
                }
            }
            @if admin {
                section aria-labelledby="new-webhook" {
                    h2 id="new-webhook" { "Add a webhook" }
                    form.new-webhook method="post" action=(base) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="webhook-url" { "URL (http or https)" }
                        input id="webhook-url" name="url" type="url" required placeholder="https://hooks.example.com/kiln";
                        fieldset {
                            legend { "Events" }
                            @for event in WEBHOOK_EVENTS {
                                label { input type="checkbox" name="events" value=(event) checked; " " code { (event) } }
                            }
                        }
                        button type="submit" { "Add webhook" }
                    }
                }
            }
        },
    )
}

fn delivery_log(
    session: &Session,
    base: &str,
    webhook: &Webhook,
    deliveries: &[WebhookDelivery],
) -> Markup {
    let admin = session.user.role >= Role::Admin;
    html! {
        @if deliveries.is_empty() {
            p.empty { "No deliveries yet: the next event it asks for sends one." }
        } @else {
            table.deliveries {
                caption.visually-hidden { "Deliveries, newest first" }
                thead { tr { th { "Event" } th { "Deployment" } th { "State" } th { "Attempts" } @if admin { th { span.visually-hidden { "Retry" } } } } }
                tbody {
                    @for delivery in deliveries {
                        tr data-delivery=(delivery.id) {
                            td data-label="Event" { code { (delivery.event) } br; small { (when(delivery.created_at)) } }
                            td data-label="Deployment" { a href={"/deployments/" (delivery.deployment_id)} { (delivery.deployment_id) } }
                            td data-label="State" { (state_badge(delivery)) }
                            td data-label="Attempts" {
                                @if delivery.attempts.is_empty() { "none yet" }
                                ol.attempts {
                                    @for attempt in &delivery.attempts {
                                        li {
                                            (when(attempt.at)) " · "
                                            @match attempt.status {
                                                Some(status) => span.answer.(if (200..300).contains(&status) { "ok" } else { "bad" }) { (status) },
                                                None => span.answer.bad { "no answer" },
                                            }
                                            " · " (attempt.took_ms) " ms"
                                            @if !attempt.answer.is_empty() { br; small.answer-text { (attempt.answer) } }
                                        }
                                    }
                                }
                            }
                            @if admin {
                                td.actions {
                                    form method="post" action={(base) "/" (webhook.id) "/deliveries/" (delivery.id) "/retry"} {
                                        input type="hidden" name="csrf" value=(session.csrf);
                                        button.retry type="submit" { "Retry" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn state_badge(delivery: &WebhookDelivery) -> Markup {
    let (class, text) = match delivery.state {
        DeliveryState::Delivered => ("ok", "delivered".to_owned()),
        DeliveryState::Failed => ("bad", "failed: no 2xx in 24 h".to_owned()),
        DeliveryState::Pending => (
            "busy",
            match delivery.next_attempt_at {
                Some(at) => format!("next try {}", at.format("%H:%M:%S UTC")),
                None => "pending".to_owned(),
            },
        ),
    };
    html! { span class={"badge " (class)} { (text) } }
}
