//! A deployment's provenance on its page, in words (built from, by, in which
//! image, reused from which deployment, signed by which key, and whether the
//! signature holds against the server's keys), with the envelopes to download
//! for `kiln-server provenance verify`.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use kiln_protocol::provenance::{self as prov, DeploymentProvenance, PublicKey};
use maud::{html, Markup};

use super::auth::Session;
use crate::store;
use crate::AppState;

/// What the page shows of a deployment's provenance.
pub struct Shown {
    pub signed: DeploymentProvenance,
    pub keys: Vec<PublicKey>,
}

pub fn section(shown: Option<&Shown>) -> Markup {
    let Some(Shown { signed, keys }) = shown else {
        return html! {};
    };
    html! {
        section aria-labelledby="provenance" {
            h2 id="provenance" { "Provenance" }
            @if signed.envelopes.is_empty() {
                p.empty { "None: it is signed when a build succeeds." }
            }
            @for envelope in &signed.envelopes {
                (statement(envelope, keys))
            }
            @if !signed.envelopes.is_empty() {
                p {
                    a href={"/deployments/" (signed.deployment_id) "/provenance.json"} download { "Download the signed statements" }
                    " · check them with "
                    code { "kiln-server provenance verify FILE --keys KEYS" }
                    " (the keys: " a href="/api/v1/provenance/keys" { "/api/v1/provenance/keys" } ")."
                }
            }
        }
    }
}

fn statement(envelope: &prov::Envelope, keys: &[PublicKey]) -> Markup {
    let key_ids: Vec<&str> = envelope
        .signatures
        .iter()
        .map(|signature| signature.keyid.as_str())
        .collect();
    let statement = match prov::verify(envelope, keys) {
        Ok(statement) => statement,
        Err(error) => {
            return html! {
                div.provenance {
                    p.reason.bad role="alert" { "A statement does not verify: " (error.to_string()) }
                }
            }
        }
    };
    let definition = &statement.predicate.build_definition;
    let built = &definition.external_parameters;
    let run = &statement.predicate.run_details;
    let agent = &definition.internal_parameters.agent;
    html! {
        div.provenance {
            h3 {
                @for (n, subject) in statement.subject.iter().enumerate() {
                    @if n > 0 { ", " }
                    (subject.name.as_deref().unwrap_or("?"))
                }
            }
            dl.meta {
                dt { "Built from" }
                dd { code { (built.repository) } " at " code { (built.commit) } " (" (built.git_ref) ", " (built.trigger) ")" }
                dt { "Built by" }
                dd {
                    "agent " (agent["name"].as_str().unwrap_or("?")) " (" code { (agent["id"].as_str().unwrap_or("?")) } ")"
                    @if let Some(docker) = agent["host"]["docker_version"].as_str().filter(|v| !v.is_empty()) { ", " (docker) }
                    ", Kiln " (run.builder.version.get("kiln-agent").map(String::as_str).unwrap_or("?"))
                }
                @for image in &run.builder.builder_dependencies {
                    dt { (image.name.as_deref().unwrap_or("Image")) }
                    dd { code { (image.uri.as_deref().unwrap_or("?").trim_start_matches("docker-image:")) } " " code.sha256 { "sha256:" (image.digest.get("sha256").map(String::as_str).unwrap_or("?")) } }
                }
                dt { "Build cache" }
                dd {
                    @let restored: Vec<_> = statement.restored().collect();
                    @if restored.is_empty() { "Restored nothing." }
                    ul.restored {
                        @for entry in restored {
                            li { (restored_entry(entry)) }
                        }
                    }
                }
                dt { "Signed by" }
                dd { "key " @for id in &key_ids { code { (id) } " " } "— signature checked against this server's keys." }
            }
        }
    }
}

fn restored_entry(entry: &prov::ResourceDescriptor) -> Markup {
    let key = entry.annotation(prov::CACHE_KEY).unwrap_or("?");
    html! {
        (entry.annotation(prov::CACHE_KIND).unwrap_or("?")) " " code { (key.get(..12).unwrap_or(key)) } " "
        @match entry.annotation(prov::CACHE_PUBLISHED_BY_DEPLOYMENT) {
            Some(deployment) => {
                "reused from deployment " a href={"/deployments/" (deployment)} { (deployment) }
                " (" (entry.annotation(prov::CACHE_PUBLISHED_SCOPE).unwrap_or("?")) ")"
            }
            None => span.bad { "unverified: " (entry.annotation(prov::CACHE_UNVERIFIED).unwrap_or("no record")) }
        }
    }
}

/// `GET /deployments/{id}/provenance.json`: the envelopes, as the API answers.
pub async fn download(
    State(state): State<AppState>,
    _session: Session,
    Path(id): Path<String>,
) -> Response {
    let file_name = format!("{id}.provenance.json");
    match state
        .db
        .call(move |conn| store::deployment_provenance(conn, &id))
        .await
    {
        Ok(signed) => (
            [
                (header::CONTENT_TYPE, "application/json".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{file_name}\""),
                ),
            ],
            serde_json::to_string_pretty(&signed).unwrap_or_default(),
        )
            .into_response(),
        Err(error) => error.into_response(),
    }
}
