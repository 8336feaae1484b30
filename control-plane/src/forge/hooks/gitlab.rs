//! GitLab's webhook payloads (`X-Gitlab-Event`): `Push Hook`, `Tag Push Hook`,
//! `Merge Request Hook` (actions `open`, `reopen`, `update`, `close`, `merge`)
//! and the test hook GitLab's settings page sends (a `Push Hook`).

use kiln_protocol::{EventPeople, PullRequestAction, PullRequestEvent, PushEvent};
use serde::Deserialize;

use super::event::{branch_of, is_zero_sha, parse_json, HookError, HookEvent, Parsed};

#[derive(Debug, Deserialize, Default)]
struct Project {
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
    web_url: Option<String>,
    http_url: Option<String>,
    ssh_url: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct Author {
    name: Option<String>,
    email: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct Commit {
    id: Option<String>,
    message: Option<String>,
    author: Option<Author>,
}

#[derive(Debug, Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    reference: Option<String>,
    after: Option<String>,
    checkout_sha: Option<String>,
    user_name: Option<String>,
    user_username: Option<String>,
    user_email: Option<String>,
    user_avatar: Option<String>,
    project: Option<Project>,
    #[serde(default)]
    commits: Vec<Commit>,
}

#[derive(Debug, Deserialize, Default)]
struct User {
    name: Option<String>,
    username: Option<String>,
    avatar_url: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct MergeRequest {
    iid: Option<u64>,
    title: Option<String>,
    source_branch: Option<String>,
    target_branch: Option<String>,
    action: Option<String>,
    /// Present on `update` when new commits came.
    oldrev: Option<String>,
    last_commit: Option<Commit>,
}

#[derive(Debug, Deserialize)]
struct MergeRequestPayload {
    user: Option<User>,
    project: Option<Project>,
    object_attributes: Option<MergeRequest>,
}

#[derive(Debug, Deserialize)]
struct AnyPayload {
    project: Option<Project>,
}

fn repository_urls(project: Option<&Project>) -> Vec<String> {
    let Some(project) = project else {
        return Vec::new();
    };
    [
        &project.git_http_url,
        &project.git_ssh_url,
        &project.web_url,
        &project.http_url,
        &project.ssh_url,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect()
}

pub fn parse(event: &str, body: &[u8]) -> Result<Parsed, HookError> {
    match event {
        "Push Hook" => push(parse_json(body)?),
        "Merge Request Hook" => merge_request(parse_json(body)?),
        other => {
            let payload: AnyPayload = parse_json(body)?;
            let reason = if other == "Tag Push Hook" {
                "tag pushes do not deploy; branch pushes do".to_owned()
            } else {
                format!(
                    "{other} events do not deploy; Kiln acts on Push Hook and Merge Request Hook"
                )
            };
            Ok(Parsed {
                repository_urls: repository_urls(payload.project.as_ref()),
                event: HookEvent::Ignored(reason),
            })
        }
    }
}

fn first_repository(urls: &[String], what: &str) -> Result<String, HookError> {
    urls.first().cloned().ok_or_else(|| {
        HookError::Payload(format!(
            "the {what} names no project (`project.git_http_url`)"
        ))
    })
}

fn push(payload: Push) -> Result<Parsed, HookError> {
    let repository_urls = repository_urls(payload.project.as_ref());
    let repository = first_repository(&repository_urls, "push")?;
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
    if is_zero_sha(&after) {
        return ignored(format!("branch {branch} was deleted; nothing to build"));
    }
    let sha = payload.checkout_sha.unwrap_or(after);
    let head = payload
        .commits
        .into_iter()
        .find(|commit| commit.id.as_deref() == Some(sha.as_str()))
        .unwrap_or_default();
    let author = head.author.unwrap_or_default();
    // The pusher's login and picture are the author's when the emails agree.
    let same_person = author.email.is_some() && author.email == payload.user_email;
    Ok(Parsed {
        event: HookEvent::Push {
            forced: false,
            push: PushEvent {
                repository,
                branch: branch.to_owned(),
                sha,
                author: author
                    .name
                    .or_else(|| payload.user_name.clone())
                    .unwrap_or_else(|| "unknown".to_owned()),
                message: head.message.unwrap_or_default(),
                people: EventPeople {
                    author_login: payload.user_username.clone().filter(|_| same_person),
                    author_avatar: payload.user_avatar.filter(|_| same_person),
                    pusher: payload.user_username,
                },
            },
        },
        repository_urls,
    })
}

fn merge_request(payload: MergeRequestPayload) -> Result<Parsed, HookError> {
    let repository_urls = repository_urls(payload.project.as_ref());
    let repository = first_repository(&repository_urls, "merge request")?;
    let request = payload.object_attributes.unwrap_or_default();
    let action_word = request.action.clone().unwrap_or_default();
    let ignored = |reason: String| {
        Ok(Parsed {
            repository_urls: repository_urls.clone(),
            event: HookEvent::Ignored(reason),
        })
    };
    let action = match action_word.as_str() {
        "open" => PullRequestAction::Opened,
        "reopen" => PullRequestAction::Reopened,
        "update" if request.oldrev.is_some() => PullRequestAction::Synchronize,
        "update" => return ignored("merge request updated without new commits".to_owned()),
        "close" | "merge" => PullRequestAction::Closed,
        other => {
            return ignored(format!(
                "merge request action {other:?} does not deploy; open, reopen, update, close and merge do"
            ))
        }
    };
    let number = request.iid.ok_or_else(|| {
        HookError::Payload("the merge request has no `object_attributes.iid`".into())
    })?;
    let commit = request.last_commit.unwrap_or_default();
    let (Some(branch), Some(sha)) = (request.source_branch, commit.id) else {
        return Err(HookError::Payload(
            "the merge request has no `source_branch` and `last_commit.id`".into(),
        ));
    };
    let user = payload.user.unwrap_or_default();
    let title = request.title.unwrap_or_default();
    Ok(Parsed {
        event: HookEvent::PullRequest(PullRequestEvent {
            repository,
            number,
            action,
            branch,
            sha,
            author: user
                .name
                .clone()
                .or_else(|| user.username.clone())
                .unwrap_or_else(|| "unknown".to_owned()),
            message: format!("{title} (!{number})"),
            people: EventPeople {
                author_login: user.username,
                author_avatar: user.avatar_url,
                pusher: None,
            },
            base_branch: request.target_branch,
        }),
        repository_urls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUSH: &[u8] = include_bytes!("testdata/gitlab/push.json");
    const PUSH_DELETED: &[u8] = include_bytes!("testdata/gitlab/push-branch-deleted.json");
    const MR_OPEN: &[u8] = include_bytes!("testdata/gitlab/merge_request-open.json");
    const MR_UPDATE: &[u8] = include_bytes!("testdata/gitlab/merge_request-update.json");
    const MR_CLOSE: &[u8] = include_bytes!("testdata/gitlab/merge_request-close.json");

    #[test]
    fn a_push_deploys_its_checkout_sha() {
        let parsed = parse("Push Hook", PUSH).unwrap();
        assert!(parsed
            .repository_urls
            .contains(&"git@example.com:mike/diaspora.git".to_owned()));
        let HookEvent::Push { push, .. } = parsed.event else {
            panic!("{:?}", parsed.event)
        };
        assert_eq!(push.branch, "new-feature");
        assert_eq!(push.sha, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
        assert_eq!(push.message, "fixed readme");
        assert_eq!(push.author, "John Smith");
        assert_eq!(push.people.pusher.as_deref(), Some("jsmith"));
        assert_eq!(push.people.author_login.as_deref(), Some("jsmith"));
    }

    #[test]
    fn deletions_and_tags_are_ignored() {
        assert_eq!(
            parse("Push Hook", PUSH_DELETED).unwrap().event,
            HookEvent::Ignored("branch new-feature was deleted; nothing to build".into())
        );
        assert!(matches!(
            parse("Tag Push Hook", PUSH).unwrap().event,
            HookEvent::Ignored(_)
        ));
    }

    #[test]
    fn merge_requests_map_to_previews() {
        for (body, action) in [
            (MR_OPEN, PullRequestAction::Opened),
            (MR_UPDATE, PullRequestAction::Synchronize),
            (MR_CLOSE, PullRequestAction::Closed),
        ] {
            let HookEvent::PullRequest(event) = parse("Merge Request Hook", body).unwrap().event
            else {
                panic!("{action:?}")
            };
            assert_eq!(event.action, action);
            assert_eq!(event.number, 1);
            assert_eq!(event.branch, "ms-viewport");
            assert_eq!(event.people.author_login.as_deref(), Some("root"));
        }
        // An update with no new commits (a title edit) does not build.
        let mut edited: serde_json::Value = serde_json::from_slice(MR_UPDATE).unwrap();
        edited["object_attributes"]
            .as_object_mut()
            .unwrap()
            .remove("oldrev");
        let body = serde_json::to_vec(&edited).unwrap();
        assert!(matches!(
            parse("Merge Request Hook", &body).unwrap().event,
            HookEvent::Ignored(_)
        ));
    }
}
