//! An environment's variables on the dashboard: the table (a secret's value
//! is never shown), a `.env` paste or file to merge in, the export, and
//! removing one. Each change is the store call its API route makes, for an
//! admin, with the session's CSRF token.

use axum::extract::{Form, Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use kiln_protocol::{Environment, Project, VariableView};
use maud::html;
use serde::Deserialize;

use super::auth::Session;
use super::page_error;
use super::pages::Page;
use crate::error::ApiError;
use crate::store::{self, ImportFlags, Role};
use crate::AppState;

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    show(&state, &session, id, None).await
}

async fn show(state: &AppState, session: &Session, id: String, notice: Option<String>) -> Response {
    let found = state
        .db
        .call(move |conn| {
            let environment = store::get_environment(conn, &id)?;
            let project = store::get_project(conn, &environment.project_id)?;
            let variables = store::list_variables(conn, &id)?;
            Ok::<_, ApiError>((project, environment, variables))
        })
        .await;
    match found {
        Ok((project, environment, variables)) => variables_page(
            session,
            &project,
            &environment,
            &variables,
            notice.as_deref(),
        )
        .into_response(),
        Err(error) => page_error(Some(session), error),
    }
}

#[derive(Deserialize)]
pub struct ImportForm {
    #[serde(default)]
    csrf: String,
    text: String,
    /// `""` keeps each name's own flag (a new one's default), else `true` or
    /// `false` for every name imported.
    #[serde(default)]
    secret: String,
    #[serde(default)]
    build: String,
    #[serde(default)]
    runtime: String,
}

fn flag(value: &str) -> Option<bool> {
    match value {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

pub async fn import(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<ImportForm>,
) -> Response {
    if let Err(refused) =
        session.permit(&form.csrf, Role::Admin, "change an environment's variables")
    {
        return refused.into_response();
    }
    let flags = ImportFlags {
        secret: flag(&form.secret),
        build: flag(&form.build),
        runtime: flag(&form.runtime),
    };
    let environment_id = id.clone();
    let imported = state
        .db
        .call(move |conn| store::import_variables(conn, &environment_id, &form.text, flags))
        .await;
    let notice = match imported {
        Ok(outcome) => {
            tracing::info!(message = "Variables imported.", environment_id = %id, names = outcome.imported.len(), by = %session.user.name);
            let mut notice = format!(
                "Saved {} variable(s): {}.",
                outcome.imported.len(),
                outcome.imported.join(", ")
            );
            if !outcome.kept_secrets.is_empty() {
                notice.push_str(&format!(
                    " Kept the stored values of the secrets left empty: {}.",
                    outcome.kept_secrets.join(", ")
                ));
            }
            notice
        }
        Err(error @ ApiError::InvalidBody(_)) => format!("Not saved: {error}"),
        Err(error) => return page_error(Some(&session), error),
    };
    show(&state, &session, id, Some(notice)).await
}

#[derive(Deserialize)]
pub struct RemoveForm {
    #[serde(default)]
    csrf: String,
}

pub async fn remove(
    State(state): State<AppState>,
    session: Session,
    Path((id, name)): Path<(String, String)>,
    Form(form): Form<RemoveForm>,
) -> Response {
    if let Err(refused) =
        session.permit(&form.csrf, Role::Admin, "change an environment's variables")
    {
        return refused.into_response();
    }
    let (environment_id, variable) = (id.clone(), name.clone());
    match state
        .db
        .call(move |conn| store::remove_variable(conn, &environment_id, &variable))
        .await
    {
        Ok(()) => {
            tracing::info!(message = "Variable removed.", environment_id = %id, name = %name, by = %session.user.name);
            show(&state, &session, id, Some(format!("Removed {name}."))).await
        }
        Err(error) => page_error(Some(&session), error),
    }
}

/// The `.env` file of the API's export: secret values left empty.
pub async fn export(
    State(state): State<AppState>,
    _session: Session,
    Path(id): Path<String>,
) -> Response {
    let file_name = format!("{id}.env");
    match state
        .db
        .call(move |conn| store::export_variables(conn, &id))
        .await
    {
        Ok(text) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{file_name}\""),
                ),
            ],
            text,
        )
            .into_response(),
        Err(error) => page_error(None, error),
    }
}

fn flag_select(name: &str, label: &str, keep: &str) -> maud::Markup {
    html! {
        label for={"import-" (name)} { (label) }
        select id={"import-" (name)} name=(name) {
            option value="" selected { (keep) }
            option value="true" { "yes, for every name imported" }
            option value="false" { "no, for every name imported" }
        }
    }
}

fn variables_page(
    session: &Session,
    project: &Project,
    environment: &Environment,
    variables: &[VariableView],
    notice: Option<&str>,
) -> Page {
    let admin = session.user.role >= Role::Admin;
    let base = format!("/environments/{}/variables", environment.id);
    Page::new(
        format!("{} · Variables", environment.name),
        session,
        html! {
            (super::pieces::environment_heading(project, environment, "Variables"))
            @if let Some(notice) = notice { p.notice role="status" { (notice) } }
            section aria-labelledby="variables" {
                h2 id="variables" { "Variables" }
                p.hint {
                    "A build gets the variables marked build; the release's server, worker and storefront those marked runtime. "
                    "A secret's value is masked in every log and never shown back. "
                    a.export href={(base) "/export"} download { "Export .env" }
                    " (secret values left empty)"
                }
                @if variables.is_empty() {
                    p.empty { "No variables yet." @if admin { " Paste a .env below to add some." } }
                } @else {
                    table.variables {
                        thead { tr { th { "Name" } th { "Value" } th { "Build" } th { "Runtime" } @if admin { th { span.visually-hidden { "Actions" } } } } }
                        tbody {
                            @for variable in variables {
                                tr data-name=(variable.name) {
                                    td { code { (variable.name) } }
                                    td.value {
                                        @match &variable.value {
                                            Some(value) => code { (value) },
                                            None => span.secret { "secret · hidden" },
                                        }
                                    }
                                    td { (if variable.build { "yes" } else { "no" }) }
                                    td { (if variable.runtime { "yes" } else { "no" }) }
                                    @if admin {
                                        td {
                                            form method="post" action={(base) "/" (variable.name) "/remove"} {
                                                input type="hidden" name="csrf" value=(session.csrf);
                                                button.remove type="submit" aria-label={"Remove " (variable.name)} { "Remove" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if admin {
                section aria-labelledby="import" {
                    h2 id="import" { "Add or import" }
                    form.import method="post" action={(base) "/import"} {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="import-text" { "NAME=value lines, as in a .env file (names already here get the new value)" }
                        textarea id="import-text" name="text" rows="8" required placeholder="DATABASE_URL=postgres://…\nSTRIPE_API_KEY='sk_live_…'" {}
                        label for="import-file" { "or read a .env file into the box" }
                        input id="import-file" type="file" accept=".env,text/plain";
                        (flag_select("secret", "Secret", "as each name is (new: not secret)"))
                        (flag_select("build", "Given to builds", "as each name is (new: yes)"))
                        (flag_select("runtime", "Given to the release", "as each name is (new: yes)"))
                        p.hint { "An empty value for a stored secret keeps its value, so an export can be imported again. Nothing like $NAME is expanded." }
                        button type="submit" { "Save variables" }
                    }
                }
            } @else {
                p { "Changing variables needs the admin role; you are a " (session.user.role) "." }
            }
        },
    )
}
