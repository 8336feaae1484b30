//! GitHub's webhook payloads, and Gitea's and Forgejo's, which copy them:
//! `push` and `pull_request` (Gitea says `synchronized` where GitHub says
//! `synchronize`), `ping`. Every field is optional here; what an event needs
//! and lacks is a clear error.

use kiln_protocol::{EventPeople, PullRequestAction, PullRequestEvent, PushEvent};
use serde::Deserialize;

use super::event::{branch_of, is_zero_sha, parse_json, HookError, HookEvent, Parsed};

#[derive(Debug, Deserialize, Default)]
struct User {
    login: Option<String>,
    /// Gitea's `pusher` has `username`; GitHub's commit authors too.
    username: Option<String>,
    name: Option<String>,
    avatar_url: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct Repository {
    clone_url: Option<String>,
    ssh_url: Option<String>,
    html_url: Option<String>,
    git_url: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct Commit {
    id: Option<String>,
    message: Option<String>,
    author: Option<User>,
}

#[derive(Debug, Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    reference: Option<String>,
    after: Option<String>,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    forced: bool,
    head_commit: Option<Commit>,
    #[serde(default)]
    commits: Vec<Commit>,
    pusher: Option<User>,
    sender: Option<User>,
    repository: Option<Repository>,
}

#[derive(Debug, Deserialize, Default)]
struct Head {
    #[serde(rename = "ref")]
    reference: Option<String>,
    sha: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct PullRequest {
    number: Option<u64>,
    title: Option<String>,
    user: Option<User>,
    head: Option<Head>,
    base: Option<Head>,
}

#[derive(Debug, Deserialize)]
struct PullRequestPayload {
    action: Option<String>,
    number: Option<u64>,
    pull_request: Option<PullRequest>,
    repository: Option<Repository>,
    sender: Option<User>,
}

#[derive(Debug, Deserialize)]
struct AnyPayload {
    repository: Option<Repository>,
}

fn repository_urls(repository: Option<&Repository>) -> Vec<String> {
    let Some(repository) = repository else {
        return Vec::new();
    };
    [
        &repository.clone_url,
        &repository.ssh_url,
        &repository.html_url,
        &repository.git_url,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect()
}

/// A `push`, `pull_request` or `ping` event as GitHub (or, `gitea` set, Gitea or
/// Forgejo) sends it.
pub fn parse(event: &str, body: &[u8], gitea: bool) -> Result<Parsed, HookError> {
    match event {
        "ping" => {
            let payload: AnyPayload = parse_json(body)?;
            Ok(Parsed {
                repository_urls: repository_urls(payload.repository.as_ref()),
                event: HookEvent::Ping,
            })
        }
        "push" => push(parse_json(body)?),
        "pull_request" => pull_request(parse_json(body)?, gitea),
        other => {
            let payload: AnyPayload = parse_json(body)?;
            Ok(Parsed {
                repository_urls: repository_urls(payload.repository.as_ref()),
                event: HookEvent::Ignored(format!(
                    "{other} events do not deploy; Kiln acts on push and pull_request"
                )),
            })
        }
    }
}

fn push(payload: Push) -> Result<Parsed, HookError> {
    let repository_urls = repository_urls(payload.repository.as_ref());
    let repository = repository_urls.first().cloned().ok_or_else(|| {
        HookError::Payload("the push names no repository (`repository.clone_url`)".into())
    })?;
    let reference = payload.reference.unwrap_or_default();
    let after = payload.after.unwrap_or_default();
    let ignored = |reason: String| {
        Ok(Parsed {
            repository_urls: repository_urls.clone(),
            event: HookEvent::Ignored(reason),
        })
    };
    let Some(branch) = branch_of(&reference) else {
        return ignored(format!(
            "{reference} is not a branch; tags and other refs do not deploy"
        ));
    };
    if payload.deleted || is_zero_sha(&after) {
        return ignored(format!("branch {branch} was deleted; nothing to build"));
    }
    // The head commit, or (Gitea without one) the push's commit with that id.
    let head = payload.head_commit.or_else(|| {
        payload
            .commits
            .into_iter()
            .find(|commit| commit.id.as_deref() == Some(after.as_str()))
    });
    let head = head.unwrap_or_default();
    let author = head.author.unwrap_or_default();
    let sender = payload.sender.unwrap_or_default();
    let login = author.username.clone().or_else(|| author.login.clone());
    // The sender's picture is the author's when they are the same person.
    let avatar = sender
        .avatar_url
        .filter(|_| login.is_some() && sender.login == login);
    let pusher = payload
        .pusher
        .and_then(|pusher| pusher.login.or(pusher.username).or(pusher.name));
    Ok(Parsed {
        event: HookEvent::Push {
            forced: payload.forced,
            push: PushEvent {
                repository,
                branch: branch.to_owned(),
                sha: after,
                author: author
                    .name
                    .or_else(|| login.clone())
                    .unwrap_or_else(|| "unknown".to_owned()),
                message: head.message.unwrap_or_default(),
                people: EventPeople {
                    author_login: login,
                    author_avatar: avatar,
                    pusher,
                },
            },
        },
        repository_urls,
    })
}

fn pull_request(payload: PullRequestPayload, gitea: bool) -> Result<Parsed, HookError> {
    let repository_urls = repository_urls(payload.repository.as_ref());
    let repository = repository_urls.first().cloned().ok_or_else(|| {
        HookError::Payload("the pull request names no repository (`repository.clone_url`)".into())
    })?;
    let action_word = payload.action.unwrap_or_default();
    let action = match action_word.as_str() {
        "opened" => PullRequestAction::Opened,
        "reopened" => PullRequestAction::Reopened,
        "synchronize" => PullRequestAction::Synchronize,
        "synchronized" if gitea => PullRequestAction::Synchronize,
        "closed" => PullRequestAction::Closed,
        other => {
            return Ok(Parsed {
                repository_urls,
                event: HookEvent::Ignored(format!(
                    "pull request action {other:?} does not deploy; opened, reopened, synchronize and closed do"
                )),
            })
        }
    };
    let pull = payload.pull_request.unwrap_or_default();
    let number = payload
        .number
        .or(pull.number)
        .ok_or_else(|| HookError::Payload("the pull request event has no `number`".into()))?;
    let head = pull.head.unwrap_or_default();
    let (Some(branch), Some(sha)) = (head.reference, head.sha) else {
        return Err(HookError::Payload(
            "the pull request has no `pull_request.head.ref` and `.sha`".into(),
        ));
    };
    let base_branch = pull.base.and_then(|base| base.reference);
    let user = pull.user.or(payload.sender).unwrap_or_default();
    let login = user.login.or(user.username);
    let title = pull.title.unwrap_or_default();
    Ok(Parsed {
        event: HookEvent::PullRequest(PullRequestEvent {
            repository,
            number,
            action,
            branch,
            sha,
            author: user
                .name
                .filter(|name| !name.is_empty())
                .or_else(|| login.clone())
                .unwrap_or_else(|| "unknown".to_owned()),
            message: format!("{title} (#{number})"),
            people: EventPeople {
                author_login: login,
                author_avatar: user.avatar_url,
                pusher: None,
            },
            base_branch,
        }),
        repository_urls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> &'static [u8] {
        match name {
            "push-new-branch" => include_bytes!("testdata/github/push-new-branch.json"),
            "push-tag" => include_bytes!("testdata/github/push-tag.json"),
            "push-tag-deleted" => include_bytes!("testdata/github/push-tag-deleted.json"),
            "pull_request-opened" => include_bytes!("testdata/github/pull_request-opened.json"),
            "pull_request-synchronize" => {
                include_bytes!("testdata/github/pull_request-synchronize.json")
            }
            "pull_request-reopened" => include_bytes!("testdata/github/pull_request-reopened.json"),
            "pull_request-closed" => include_bytes!("testdata/github/pull_request-closed.json"),
            "ping" => include_bytes!("testdata/github/ping.json"),
            _ => unreachable!("{name}"),
        }
    }

    #[test]
    fn a_push_to_a_new_branch_deploys_its_head() {
        let parsed = parse("push", fixture("push-new-branch"), false).unwrap();
        assert!(parsed
            .repository_urls
            .contains(&"git@github.com:Codertocat/Hello-World.git".to_owned()));
        let HookEvent::Push { push, .. } = parsed.event else {
            panic!("{:?}", parsed.event)
        };
        assert_eq!(push.branch, "master");
        assert_eq!(push.sha, "6113728f27ae82c7b1a177c8d03f9e96e0adf246");
        assert_eq!(push.message, "Initial commit");
        assert_eq!(push.author, "Codertocat");
        assert_eq!(push.people.author_login.as_deref(), Some("Codertocat"));
        assert_eq!(
            push.people.author_avatar.as_deref(),
            Some("https://avatars1.githubusercontent.com/u/21031067?v=4")
        );
        assert_eq!(push.people.pusher.as_deref(), Some("Codertocat"));
    }

    #[test]
    fn tags_and_deletions_are_ignored_with_a_reason() {
        for name in ["push-tag", "push-tag-deleted"] {
            let parsed = parse("push", fixture(name), false).unwrap();
            let HookEvent::Ignored(reason) = parsed.event else {
                panic!("{name}: {:?}", parsed.event)
            };
            assert!(reason.contains("refs/tags/simple-tag"), "{reason}");
        }
        // A branch deletion, as GitHub documents it.
        let mut deleted: serde_json::Value =
            serde_json::from_slice(fixture("push-new-branch")).unwrap();
        deleted["deleted"] = true.into();
        deleted["created"] = false.into();
        deleted["after"] = "0000000000000000000000000000000000000000".into();
        deleted["head_commit"] = serde_json::Value::Null;
        let parsed = parse("push", &serde_json::to_vec(&deleted).unwrap(), false).unwrap();
        assert_eq!(
            parsed.event,
            HookEvent::Ignored("branch master was deleted; nothing to build".into())
        );
    }

    #[test]
    fn pull_request_actions_map_to_previews() {
        for (name, action) in [
            ("pull_request-opened", PullRequestAction::Opened),
            ("pull_request-synchronize", PullRequestAction::Synchronize),
            ("pull_request-reopened", PullRequestAction::Reopened),
            ("pull_request-closed", PullRequestAction::Closed),
        ] {
            let HookEvent::PullRequest(event) =
                parse("pull_request", fixture(name), false).unwrap().event
            else {
                panic!("{name}")
            };
            assert_eq!(event.action, action, "{name}");
            assert_eq!(event.number, 2);
            assert_eq!(event.branch, "changes");
            assert_eq!(event.sha.len(), 40);
            assert_eq!(event.people.author_login.as_deref(), Some("Codertocat"));
            assert!(event.message.ends_with("(#2)"), "{}", event.message);
            assert_eq!(event.base_branch.as_deref(), Some("master"));
        }
        // Gitea's spelling is Gitea's only.
        let mut gitea: serde_json::Value =
            serde_json::from_slice(fixture("pull_request-synchronize")).unwrap();
        gitea["action"] = "synchronized".into();
        let body = serde_json::to_vec(&gitea).unwrap();
        assert!(matches!(
            parse("pull_request", &body, true).unwrap().event,
            HookEvent::PullRequest(PullRequestEvent {
                action: PullRequestAction::Synchronize,
                ..
            })
        ));
        assert!(matches!(
            parse("pull_request", &body, false).unwrap().event,
            HookEvent::Ignored(_)
        ));
    }

    #[test]
    fn ping_answers() {
        assert_eq!(
            parse("ping", fixture("ping"), false).unwrap().event,
            HookEvent::Ping
        );
    }

    #[test]
    fn hostile_payloads_are_refused_not_panicked_on() {
        for body in [&b"{"[..], b"[]", b"null", b"{\"ref\": 5}", b"\xff\xfe"] {
            assert!(
                parse("push", body, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(parse(
            "push",
            b"{\"ref\":\"refs/heads/main\",\"after\":\"abc\"}",
            false
        )
        .is_err());
    }
}
