//! The three status APIs, as each host spells them:
//!
//! | | commit status | comment | auth |
//! |---|---|---|---|
//! | GitHub | `POST /repos/{o}/{r}/statuses/{sha}` | `POST /repos/{o}/{r}/issues/{n}/comments`, `PATCH /repos/{o}/{r}/issues/comments/{id}` | `Authorization: Bearer` |
//! | GitLab | `POST /projects/{path}/statuses/{sha}` | `POST /projects/{path}/merge_requests/{iid}/notes`, `PUT …/notes/{id}` | `PRIVATE-TOKEN` |
//! | Gitea | as GitHub, under `/api/v1` | as GitHub | `Authorization: token` |

use std::time::Duration;

use kiln_protocol::GitHostKind;
use reqwest::{Method, StatusCode};

use crate::store::GitHostAccess;

/// What a commit status says, in GitHub's words (GitLab's are mapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitState {
    Pending,
    Success,
    Failure,
    /// Canceled.
    Error,
}

impl CommitState {
    fn word(self, kind: GitHostKind) -> &'static str {
        match (self, kind) {
            (CommitState::Pending, _) => "pending",
            (CommitState::Success, _) => "success",
            (CommitState::Failure, GitHostKind::Gitlab) => "failed",
            (CommitState::Failure, _) => "failure",
            (CommitState::Error, GitHostKind::Gitlab) => "canceled",
            (CommitState::Error, _) => "error",
        }
    }
}

/// One commit status.
#[derive(Debug, Clone)]
pub struct StatusReport<'a> {
    pub sha: &'a str,
    pub state: CommitState,
    /// `kiln/<environment>`.
    pub context: &'a str,
    /// One line, at most 140 characters (GitHub's limit).
    pub description: &'a str,
    pub target_url: Option<&'a str>,
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted; the host's answer (and, for a new comment, its id).
    Done { answer: String, id: Option<String> },
    /// Worth trying again later (the host was down, slow, or busy).
    Retry(String),
    /// Trying again will not help (a bad token, an unknown repository).
    GiveUp(String),
}

#[derive(Clone)]
pub struct GitHostClient {
    http: reqwest::Client,
    allow_private: bool,
}

/// Percent-encodes one path segment.
fn segment(text: &str) -> String {
    crate::http::percent_encode(text, b"")
}

/// What a refusal means for the person reading the delivery log.
fn refusal_hint(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => ": the git host refused the token; give the project a token with the right to post statuses (git_host.token)",
        404 => ": the git host knows no such repository or commit at git_host.api_url; check it and the repository URL",
        422 => ": the git host refused the report's content",
        _ => "; the server's log has the host's answer",
    }
}

/// The most of a git host's answer read; the rest is not needed.
const MAX_ANSWER: usize = 64 << 10;

impl GitHostClient {
    /// `allow_private`: the server's `--allow-private-git-hosts`.
    pub fn new(allow_private: bool) -> Self {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("kiln-server/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none());
        if !allow_private {
            builder =
                builder.dns_resolver(std::sync::Arc::new(crate::outbound::PublicAddressesOnly {
                    flag: "--allow-private-git-hosts",
                }));
        }
        GitHostClient {
            http: builder.build().unwrap_or_default(),
            allow_private,
        }
    }

    /// `{api}/repos/acme/shop` (GitHub, Gitea) or `{api}/projects/acme%2Fshop` (GitLab).
    fn repository_base(host: &GitHostAccess, path: &str) -> String {
        let api = host.api_url.trim_end_matches('/');
        match host.kind {
            GitHostKind::Gitlab => format!("{api}/projects/{}", segment(path)),
            GitHostKind::Github | GitHostKind::Gitea => {
                let segments: Vec<String> = path.split('/').map(segment).collect();
                format!("{api}/repos/{}", segments.join("/"))
            }
        }
    }

    fn request(&self, host: &GitHostAccess, method: Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        let request = match host.kind {
            GitHostKind::Github => request
                .header("accept", "application/vnd.github+json")
                .header("x-github-api-version", "2022-11-28"),
            _ => request.header("accept", "application/json"),
        };
        match (&host.token, host.kind) {
            (None, _) => request,
            (Some(token), GitHostKind::Github) => request.bearer_auth(token),
            (Some(token), GitHostKind::Gitlab) => request.header("private-token", token),
            (Some(token), GitHostKind::Gitea) => {
                request.header("authorization", format!("token {token}"))
            }
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder, body: serde_json::Value) -> Delivery {
        let request = match request.json(&body).build() {
            Ok(request) => request,
            Err(error) => return Delivery::GiveUp(format!("cannot make the request: {error}")),
        };
        // A literal address is not resolved, so the resolver cannot refuse it;
        // one stored before the rule was, is refused here.
        let authority = request.url().authority().to_owned();
        if !self.allow_private && kiln_protocol::validate::host_is_private(&authority) {
            return Delivery::GiveUp(format!(
                "git_host.api_url names {authority}, a loopback, link-local or private address; statuses are not sent there unless the server runs with --allow-private-git-hosts"
            ));
        }
        let mut response = match self.http.execute(request).await {
            Ok(response) => response,
            Err(error) => return Delivery::Retry(format!("no answer: {error}")),
        };
        let status = response.status();
        let mut bytes = Vec::new();
        while bytes.len() < MAX_ANSWER {
            match response.chunk().await {
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status.is_success() {
            let id = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|value| match &value["id"] {
                    serde_json::Value::Number(id) => Some(id.to_string()),
                    serde_json::Value::String(id) => Some(id.clone()),
                    _ => None,
                });
            return Delivery::Done {
                answer: status.to_string(),
                id,
            };
        }
        // The answer's body is the host's (or whoever answers at api_url):
        // it goes to the operator's log, never to the dashboard's viewers.
        let said: String = text.chars().take(300).collect();
        tracing::warn!(message = "A git host refused a report.", %status, answer = %said);
        let answer = format!("{status}{}", refusal_hint(status));
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            Delivery::Retry(answer)
        } else {
            Delivery::GiveUp(answer)
        }
    }

    /// Posts a commit status on the repository at `path`.
    pub async fn post_status(
        &self,
        host: &GitHostAccess,
        path: &str,
        report: &StatusReport<'_>,
    ) -> Delivery {
        let url = format!(
            "{}/statuses/{}",
            Self::repository_base(host, path),
            segment(report.sha)
        );
        let mut body = serde_json::json!({
            "state": report.state.word(host.kind),
            "description": report.description,
        });
        // GitLab calls the context `name`.
        let context_key = if host.kind == GitHostKind::Gitlab {
            "name"
        } else {
            "context"
        };
        body[context_key] = report.context.into();
        if let Some(target) = report.target_url {
            body["target_url"] = target.into();
        }
        self.send(self.request(host, Method::POST, &url), body)
            .await
    }

    /// Writes the pull request's comment: a new one, or `existing` edited.
    pub async fn put_comment(
        &self,
        host: &GitHostAccess,
        path: &str,
        number: u64,
        existing: Option<&str>,
        body: &str,
    ) -> Delivery {
        let base = Self::repository_base(host, path);
        let (method, url) = match (host.kind, existing) {
            (GitHostKind::Gitlab, None) => (
                Method::POST,
                format!("{base}/merge_requests/{number}/notes"),
            ),
            (GitHostKind::Gitlab, Some(id)) => (
                Method::PUT,
                format!("{base}/merge_requests/{number}/notes/{}", segment(id)),
            ),
            (_, None) => (Method::POST, format!("{base}/issues/{number}/comments")),
            (_, Some(id)) => (
                Method::PATCH,
                format!("{base}/issues/comments/{}", segment(id)),
            ),
        };
        self.send(
            self.request(host, method, &url),
            serde_json::json!({ "body": body }),
        )
        .await
    }
}
