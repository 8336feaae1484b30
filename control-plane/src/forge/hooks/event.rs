//! What a webhook delivery says, once read: the event (push, pull request,
//! ignored with a reason, ping) and the repository's URLs, with the small
//! readers every host's payloads share.

use kiln_protocol::{PullRequestEvent, PushEvent};

/// What a delivery asks Kiln to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEvent {
    /// `forced`: the host marked it as rewriting the branch (GitHub and Gitea
    /// say so; GitLab does not), so it may take an environment back.
    Push {
        push: PushEvent,
        forced: bool,
    },
    PullRequest(PullRequestEvent),
    /// Answered 202 with the reason (a tag, a deleted branch, another event).
    Ignored(String),
    Ping,
}

/// A payload read: the repository's URLs as the host gave them, and the event.
#[derive(Debug)]
pub struct Parsed {
    pub repository_urls: Vec<String>,
    pub event: HookEvent,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{0}")]
    Payload(String),
}

/// A payload read as `T`; what is not the JSON a webhook sends is refused.
pub(super) fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, HookError> {
    serde_json::from_slice(body)
        .map_err(|error| HookError::Payload(format!("not the JSON a webhook sends: {error}")))
}

/// `main` from `refs/heads/main`; `None` for tags and other refs.
pub(super) fn branch_of(reference: &str) -> Option<&str> {
    reference
        .strip_prefix("refs/heads/")
        .filter(|branch| !branch.is_empty())
}

/// `0000…`: what hosts send as the new commit of a deleted branch.
pub(super) fn is_zero_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}
