//! Webhooks from git hosts: `POST /api/v1/hooks/{github,gitlab,gitea}`.
//!
//! A delivery is checked before anything is recorded: its signature (GitHub and
//! Gitea: `X-Hub-Signature-256`, HMAC-SHA256 of the raw body; GitLab:
//! `X-Gitlab-Token`) against the webhook secret of each project building the
//! payload's repository (by `validate::repository_key` of its clone, SSH and web
//! URLs). Then, in one transaction with the deployments it queues, its delivery
//! id is recorded with the answer, so a redelivery gets the first answer again
//! and queues nothing. The handler only writes to the database: it answers in
//! milliseconds, well within GitHub's 10 s.

mod event;
mod github;
mod gitlab;

use event::{HookEvent, Parsed};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use kiln_protocol::PullRequestAction;
use serde_json::json;
use sha2::Sha256;

use crate::error::ApiError;
use crate::http::{sha256_hex, ApiBytes};
use crate::store;
use crate::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host {
    Github,
    Gitlab,
    Gitea,
}

impl Host {
    fn name(self) -> &'static str {
        match self {
            Host::Github => "github",
            Host::Gitlab => "gitlab",
            Host::Gitea => "gitea",
        }
    }
}

/// What a delivery presents to prove it knows the secret.
#[derive(Debug, Clone)]
enum Proof {
    /// An HMAC-SHA256 of the body.
    Hmac(Vec<u8>),
    /// The secret itself (GitLab).
    Token(String),
}

fn header_text<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
}

fn proof(host: Host, headers: &HeaderMap) -> Result<Proof, ApiError> {
    let missing = |name: &str| {
        ApiError::Unauthorized(format!(
            "the webhook has no {name} header; set the project's webhook secret as the webhook's secret on the git host"
        ))
    };
    match host {
        Host::Gitlab => header_text(headers, &["x-gitlab-token"])
            .map(|token| Proof::Token(token.to_owned()))
            .ok_or_else(|| missing("X-Gitlab-Token")),
        Host::Github | Host::Gitea => {
            let hex_mac = match header_text(headers, &["x-hub-signature-256"]) {
                Some(value) => value.strip_prefix("sha256=").unwrap_or_default(),
                // Older Gitea and Forgejo name it their own way, without the prefix.
                None => header_text(headers, &["x-gitea-signature", "x-forgejo-signature"])
                    .filter(|_| host == Host::Gitea)
                    .ok_or_else(|| missing("X-Hub-Signature-256"))?,
            };
            match hex::decode(hex_mac) {
                Ok(mac) if mac.len() == 32 => Ok(Proof::Hmac(mac)),
                _ => Err(ApiError::Unauthorized(
                    "the webhook's X-Hub-Signature-256 is not `sha256=` and a hex HMAC-SHA256"
                        .to_owned(),
                )),
            }
        }
    }
}

/// Whether `proof` shows knowledge of `secret` for `body`, in constant time.
fn verify(proof: &Proof, secret: &str, body: &[u8]) -> bool {
    match proof {
        Proof::Hmac(mac) => {
            let Ok(mut expected) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
                return false;
            };
            expected.update(body);
            expected.verify_slice(mac).is_ok()
        }
        // Hashes compared, so the time taken says nothing of the secret.
        Proof::Token(token) => sha256_hex(token.as_bytes()) == sha256_hex(secret.as_bytes()),
    }
}

fn event_name(host: Host, headers: &HeaderMap) -> Result<String, ApiError> {
    let names: &[&str] = match host {
        Host::Github => &["x-github-event"],
        Host::Gitlab => &["x-gitlab-event"],
        Host::Gitea => &["x-gitea-event", "x-forgejo-event", "x-github-event"],
    };
    header_text(headers, names)
        .filter(|name| !name.is_empty() && name.len() <= 100)
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::InvalidParameter(format!(
                "the webhook has no {} header saying which event it is",
                names[0]
            ))
        })
}

fn delivery_id(host: Host, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let names: &[&str] = match host {
        Host::Github => &["x-github-delivery"],
        Host::Gitlab => &["x-gitlab-event-uuid", "x-gitlab-webhook-uuid"],
        Host::Gitea => &[
            "x-gitea-delivery",
            "x-forgejo-delivery",
            "x-github-delivery",
        ],
    };
    match header_text(headers, names) {
        None | Some("") => Ok(None),
        Some(id) if id.len() <= 200 && !id.chars().any(char::is_control) => {
            Ok(Some(format!("{}:{id}", host.name())))
        }
        Some(_) => Err(ApiError::InvalidParameter(format!(
            "the webhook's {} header is not a delivery id",
            names[0]
        ))),
    }
}

pub async fn github(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<Response, ApiError> {
    receive(&state, Host::Github, &headers, body).await
}

pub async fn gitlab(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<Response, ApiError> {
    receive(&state, Host::Gitlab, &headers, body).await
}

pub async fn gitea(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<Response, ApiError> {
    receive(&state, Host::Gitea, &headers, body).await
}

async fn receive(
    state: &AppState,
    host: Host,
    headers: &HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let proof = proof(host, headers)?;
    let event = event_name(host, headers)?;
    let delivery = delivery_id(host, headers)?;
    let parsed = match host {
        Host::Github => github::parse(&event, &body, false),
        Host::Gitea => github::parse(&event, &body, true),
        Host::Gitlab => gitlab::parse(&event, &body),
    }
    .map_err(|error| ApiError::InvalidBody(format!("{event} payload: {error}")))?;
    // The delivery id is not signed, and may be left out: the signed body's
    // hash names a delivery too, so the same signed push acts once.
    let mut deliveries: Vec<String> = delivery.into_iter().collect();
    deliveries.push(format!("{}:body:{}", host.name(), sha256_hex(&body)));
    let mut keys: Vec<String> = parsed
        .repository_urls
        .iter()
        .map(|url| kiln_protocol::validate::repository_key(url))
        .collect();
    keys.sort();
    keys.dedup();
    let (status, answer, replayed) = state
        .db
        .call(move |conn| answer(conn, &event, &parsed, &keys, &proof, &body, &deliveries))
        .await?;
    if !replayed {
        state.announce_queue_change();
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    Ok((status, [(header::CONTENT_TYPE, "application/json")], answer).into_response())
}

/// Finds the projects whose secret signed the delivery and acts on it once;
/// returns the status, the JSON answer and whether it was a redelivery.
fn answer(
    conn: &mut crate::db::sql::Connection,
    event: &str,
    parsed: &Parsed,
    keys: &[String],
    proof: &Proof,
    body: &[u8],
    deliveries: &[String],
) -> Result<(u16, String, bool), ApiError> {
    // One answer whether no project builds the repository or none's secret
    // signed it: an unsigned caller learns nothing of which projects exist.
    // The detail goes to the server's log.
    let refused = || {
        ApiError::Unauthorized(
            "the webhook's signature matches the webhook secret of no project building this repository; set the project's webhook secret (shown when it was made, or anew with POST /api/v1/projects/{id}/webhook-secret) as the webhook's secret on the git host, and check the project's repository URL".to_owned(),
        )
    };
    let candidates = store::projects_with_secrets(conn, keys)?;
    if candidates.is_empty() {
        tracing::warn!(
            message = "A webhook named a repository no project builds.",
            repository = %parsed.repository_urls.first().map(String::as_str).unwrap_or("(none named)")
        );
        return Err(refused());
    }
    let names: Vec<String> = candidates
        .iter()
        .map(|(project, _)| project.name.clone())
        .collect();
    let candidate_ids: Vec<String> = candidates
        .iter()
        .map(|(project, _)| project.id.clone())
        .collect();
    let verified: Vec<kiln_protocol::Project> = candidates
        .into_iter()
        .filter(|(_, secret)| {
            secret
                .as_deref()
                .is_some_and(|secret| verify(proof, secret, body))
        })
        .map(|(project, _)| project)
        .collect();
    if verified.is_empty() {
        tracing::warn!(
            message = "A webhook's signature matched no project's secret.",
            projects = %names.join(", ")
        );
        // Its Connect Git page says so: the secret on the git host is wrong.
        store::record_last_hook(
            conn,
            &candidate_ids,
            event,
            401,
            "refused: its signature matches none of this project's webhook secrets; set the project's secret as the webhook's secret on the git host",
        )?;
        return Err(refused());
    }
    let verified_ids: Vec<String> = verified.iter().map(|project| project.id.clone()).collect();
    for key in deliveries {
        if let Some((status, answer)) = store::hook_answer(conn, key)? {
            store::record_last_hook(
                conn,
                &verified_ids,
                event,
                status,
                &format!("a redelivery, answered as the first time: {answer}"),
            )?;
            return Ok((status, answer, true));
        }
    }
    // A push locks the rows it changes (as `store::on_push`); a pull request
    // opens and closes environments, so it runs alone.
    let tx = match parsed.event {
        HookEvent::Push { .. } => conn.transaction_shared()?,
        _ => conn.transaction()?,
    };
    let (status, answer) = match &parsed.event {
        HookEvent::Ping => (
            200,
            json!({ "message": format!("Kiln is listening for project {}", names.join(", ")) }),
        ),
        HookEvent::Ignored(reason) => (202, json!({ "ignored": reason })),
        HookEvent::Push { push, forced } => {
            let outcome = store::push_to(&tx, &verified, push, !forced)?;
            if outcome.deployments.is_empty() {
                let ignored = if outcome.ignored.is_empty() {
                    format!("no environment follows branch {}", push.branch)
                } else {
                    outcome.ignored.join("; ")
                };
                (
                    202,
                    json!({
                        "ignored": ignored,
                        "deployments": [],
                        "canceled": [],
                    }),
                )
            } else {
                (201, serde_json::to_value(&outcome).unwrap_or_default())
            }
        }
        HookEvent::PullRequest(event) => {
            let outcome = store::pull_request_to(&tx, &verified, event)?;
            let status = if event.action == PullRequestAction::Closed {
                200
            } else {
                201
            };
            (status, serde_json::to_value(&outcome).unwrap_or_default())
        }
    };
    let answer = answer.to_string();
    for key in deliveries {
        store::record_hook_answer(&tx, key, status, &answer)?;
    }
    store::record_last_hook(&tx, &verified_ids, event, status, &answer)?;
    tx.commit()?;
    Ok((status, answer, false))
}

#[cfg(test)]
mod tests {
    use super::event::{branch_of, is_zero_sha};
    use super::*;

    #[test]
    fn githubs_documented_signature_verifies_and_a_flipped_byte_does_not() {
        // From GitHub's "Validating webhook deliveries".
        let secret = "It's a Secret to Everybody";
        let body = b"Hello, World!";
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
                .parse()
                .unwrap(),
        );
        let presented = proof(Host::Github, &headers).unwrap();
        assert!(verify(&presented, secret, body));
        assert!(!verify(&presented, secret, b"Hello, World?"));
        assert!(!verify(&presented, "another secret", body));
        let mut flipped = headers.clone();
        flipped.insert(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e16"
                .parse()
                .unwrap(),
        );
        assert!(!verify(
            &proof(Host::Github, &flipped).unwrap(),
            secret,
            body
        ));
    }

    #[test]
    fn a_missing_or_malformed_signature_is_refused() {
        let headers = HeaderMap::new();
        for host in [Host::Github, Host::Gitea, Host::Gitlab] {
            assert!(matches!(
                proof(host, &headers),
                Err(ApiError::Unauthorized(_))
            ));
        }
        let mut headers = HeaderMap::new();
        headers.insert("x-hub-signature-256", "sha1=abc".parse().unwrap());
        assert!(matches!(
            proof(Host::Github, &headers),
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[test]
    fn gitlab_tokens_compare_whole() {
        let presented = Proof::Token("s3cret".into());
        assert!(verify(&presented, "s3cret", b"anything"));
        assert!(!verify(&presented, "s3cre", b"anything"));
    }

    #[test]
    fn gitea_payloads_read_like_githubs() {
        let push = include_bytes!("testdata/gitea/push.json");
        let HookEvent::Push { push, .. } = github::parse("push", push, true).unwrap().event else {
            panic!("a push")
        };
        assert_eq!(push.branch, "develop");
        assert_eq!(push.sha, "bffeb74224043ba2feb48d137756c8a9331c449a");
        assert_eq!(push.people.pusher.as_deref(), Some("gitea"));
        assert_eq!(
            push.people.author_avatar.as_deref(),
            Some("https://gitea.example.com/avatars/1")
        );
        let deleted = include_bytes!("testdata/gitea/push-branch-deleted.json");
        assert!(matches!(
            github::parse("push", deleted, true).unwrap().event,
            HookEvent::Ignored(_)
        ));
        for (file, action) in [
            (
                &include_bytes!("testdata/gitea/pull_request-opened.json")[..],
                PullRequestAction::Opened,
            ),
            (
                include_bytes!("testdata/gitea/pull_request-synchronized.json"),
                PullRequestAction::Synchronize,
            ),
            (
                include_bytes!("testdata/gitea/pull_request-closed.json"),
                PullRequestAction::Closed,
            ),
        ] {
            let HookEvent::PullRequest(event) =
                github::parse("pull_request", file, true).unwrap().event
            else {
                panic!("{action:?}")
            };
            assert_eq!(
                (event.action, event.number, event.branch.as_str()),
                (action, 3, "storefront")
            );
        }
    }

    #[test]
    fn refs_name_branches_and_zeros_name_deletions() {
        assert_eq!(branch_of("refs/heads/feature/x"), Some("feature/x"));
        assert_eq!(branch_of("refs/tags/v1"), None);
        assert!(is_zero_sha("0000000000000000000000000000000000000000"));
        assert!(!is_zero_sha(""));
    }
}
