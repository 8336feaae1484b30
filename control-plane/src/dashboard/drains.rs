//! An environment's log drain on its settings page: where its build and runtime
//! logs also go (an OpenTelemetry collector over OTLP/HTTP), set or removed by
//! an admin; header values are kept but never shown back. Each change is the
//! store call `PUT`/`DELETE /api/v1/environments/{id}/log-drain` makes.

use axum::extract::{Form, Path, State};
use axum::response::{IntoResponse, Response};
use kiln_protocol::{Environment, LogDrain, LogDrainInfo};
use maud::{html, Markup};
use serde::Deserialize;

use super::auth::Session;
use super::settings_page;
use crate::error::ApiError;
use crate::store::{self, Role};
use crate::AppState;

#[derive(Debug, Deserialize)]
pub struct DrainForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    otlp_endpoint: String,
    #[serde(default)]
    header_name: String,
    #[serde(default)]
    header_value: String,
    /// `on` to remove the drain.
    #[serde(default)]
    remove: Option<String>,
}

pub async fn save(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<DrainForm>,
) -> Response {
    if let Err(refused) =
        session.permit(&form.csrf, Role::Admin, "change an environment's log drain")
    {
        return refused.into_response();
    }
    let environment_id = id.clone();
    let saved = state
        .db
        .call(move |conn| {
            if form.remove.as_deref() == Some("on") {
                store::remove_log_drain(conn, &environment_id)?;
                return Ok("Log drain removed: logs go nowhere else now.");
            }
            // Headers are not shown back: a form without a header keeps them.
            let mut headers = store::log_drain_of(conn, &environment_id)?
                .map(|drain| drain.headers)
                .unwrap_or_default();
            let name = form.header_name.trim();
            if !name.is_empty() {
                headers.insert(name.to_owned(), form.header_value.trim().to_owned());
            }
            let drain = LogDrain {
                otlp_endpoint: form.otlp_endpoint.trim().to_owned(),
                headers,
            };
            store::set_log_drain(conn, &environment_id, drain)?;
            Ok::<_, ApiError>("Log drain saved: this environment's logs go to the collector from their next line.")
        })
        .await;
    match saved {
        Ok(notice) => {
            tracing::info!(message = "Log drain changed.", environment_id = %id, by = %session.user.name);
            settings_page(&state, &session, id, Some(notice)).await
        }
        Err(error) => {
            settings_page(&state, &session, id, Some(&format!("Not saved: {error}"))).await
        }
    }
}

/// The log drain on an environment's settings page: a form for an admin, else
/// where the logs go.
pub fn drain_section(
    session: &Session,
    environment: &Environment,
    drain: Option<&LogDrainInfo>,
) -> Markup {
    html! {
        section aria-labelledby="log-drain" {
            h2 id="log-drain" { "Log drain" }
            p.hint {
                "Build and runtime logs also go to an OpenTelemetry collector (OTLP/HTTP, JSON, to "
                code { "<endpoint>/v1/logs" } "), as " code { "service.name" } " "
                code { "medusa-server" } ", " code { "medusa-worker" } ", " code { "medusa-db-migration" } " or "
                code { "storefront" } ", " code { "service.version" } " the commit."
            }
            @match drain {
                Some(drain) => p.drain-now { "Sending to " code { (drain.otlp_endpoint) } @if !drain.header_names.is_empty() { " with " (drain.header_names.join(", ")) " (values not shown)" } "." },
                None => p.drain-now { "None: logs stay here." },
            }
            @if session.user.role >= Role::Admin {
                form.drain method="post" action={"/environments/" (environment.id) "/log-drain"} {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="otlp_endpoint" { "Collector endpoint" }
                    input id="otlp_endpoint" name="otlp_endpoint" type="url" value=(drain.map(|d| d.otlp_endpoint.as_str()).unwrap_or_default()) placeholder="https://otel.example.com:4318";
                    label for="header_name" { "A header to send (optional; empty keeps those set)" }
                    input id="header_name" name="header_name" placeholder="Authorization";
                    label for="header_value" { "Its value (never shown back)" }
                    input id="header_value" name="header_value" type="password" autocomplete="off";
                    @if drain.is_some() {
                        label.remove { input type="checkbox" name="remove"; " Remove the drain" }
                    }
                    button type="submit" { "Save log drain" }
                }
            }
        }
    }
}
