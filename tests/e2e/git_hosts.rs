//! Issue 16: git hosts. Signed webhooks in from GitHub, GitLab and Gitea
//! (payloads from `control-plane/src/forge/hooks/testdata`), commit statuses and
//! preview comments out to a recording stand-in of the host's API
//! (`support/status_host.rs`), through the outbox: in order, retried while the
//! host fails, and across a control-plane restart.

use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use kiln_protocol::{
    ComponentStatus, CreateProject, Deployment, DeploymentStatus::*, Environment, GitHostKind,
    GitHostSettings, Project,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::agent::AGENT;
use crate::support::*;
use crate::trust::wait_for;

const SERVER: &str = env!("CARGO_BIN_EXE_kiln-server-e2e");
const PUBLIC_URL: &str = "https://kiln.example.com";

fn fixture(path: &str) -> Value {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../control-plane/src/forge/hooks/testdata")
        .join(path);
    serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap()
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends a webhook as a git host would; returns the status and the JSON answer.
async fn deliver(
    base: &str,
    host: &str,
    headers: &[(&str, String)],
    body: &Value,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/api/v1/hooks/{host}"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn github_headers(
    event: &str,
    delivery: &str,
    secret: &str,
    body: &Value,
) -> Vec<(&'static str, String)> {
    vec![
        ("x-github-event", event.to_owned()),
        ("x-github-delivery", delivery.to_owned()),
        (
            "x-hub-signature-256",
            sign(secret, &serde_json::to_vec(body).unwrap()),
        ),
    ]
}

fn git_host(kind: GitHostKind, host: &StatusHost) -> Option<GitHostSettings> {
    Some(GitHostSettings {
        kind,
        api_url: host.api_url(),
        token: Some("host-token-7c1e".into()),
    })
}

fn states(calls: &[HostCall], path_part: &str) -> Vec<String> {
    calls
        .iter()
        .filter(|call| call.status == 201 && call.path.contains(path_part))
        .map(|call| call.body["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn issue_16_a_signed_github_push_builds_a_private_repository_and_reports_its_statuses() {
    let Some(_docker) = docker().await else {
        return;
    };
    let image = build_image().await;
    let dir = tempfile::tempdir().unwrap();
    let token = "repo-token-s3cret-41aa";
    let git = GitServer::start(&dir.path().join("git"), Some(token)).await;
    let repo = FixtureRepo::new(&dir.path().join("work-tree"));
    let url = git.publish(&repo.dir, "shop.git");
    let host = StatusHost::start().await;
    let cp = ControlPlane::start_with(&dir.path().join("server"), |config| {
        config.allow_local_repositories = false;
        config.public_url = Some(PUBLIC_URL.into());
        config.git_host_retry = Duration::from_millis(100);
    })
    .await;
    let admin = cp.admin();
    let project: Project = admin
        .create_project_with(CreateProject {
            repository_token: Some(token.into()),
            git_host: git_host(GitHostKind::Github, &host),
            ..CreateProject::new("shop", &url)
        })
        .await;
    let secret = project
        .webhook_secret
        .clone()
        .expect("the secret, shown once");
    assert_eq!(secret.len(), 64);
    let shown: Project = admin
        .get(&format!("/api/v1/projects/{}", project.id))
        .await
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(shown.webhook_secret, None, "never shown again");
    assert!(!admin
        .get(&format!("/api/v1/projects/{}", project.id))
        .await
        .text()
        .contains("host-token-7c1e"));
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let agent = AgentProcess::start(
        Path::new(AGENT),
        &cp.base_url(),
        &dir.path().join("agent"),
        image,
        "allow_local_repositories = false",
    )
    .await;

    // GitHub's own example push, aimed at this repository and commit.
    let sha = repo.head();
    let mut push = fixture("github/push-new-branch.json");
    push["ref"] = "refs/heads/main".into();
    push["after"] = sha.clone().into();
    push["head_commit"]["id"] = sha.clone().into();
    push["repository"]["clone_url"] = url.clone().into();
    let base = cp.base_url();

    // Unsigned, wrongly signed, or for a repository no project builds: refused, nothing queued.
    let (status, answer) =
        deliver(&base, "github", &[("x-github-event", "push".into())], &push).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    let (status, answer) = deliver(
        &base,
        "github",
        &github_headers("push", "d-0", "not the secret", &push),
        &push,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    // Issue 28: the answer names no project.
    assert!(!answer.to_string().contains("shop"), "{answer}");
    let wrongly_signed = answer;
    let mut elsewhere = push.clone();
    for key in [
        "clone_url",
        "ssh_url",
        "html_url",
        "git_url",
        "svn_url",
        "url",
    ] {
        elsewhere["repository"][key] = "https://github.com/someone/else.git".into();
    }
    let (status, answer) = deliver(
        &base,
        "github",
        &github_headers("push", "d-1", &secret, &elsewhere),
        &elsewhere,
    )
    .await;
    // The same answer for a repository no project builds: an unsigned caller
    // cannot tell which repositories Kiln builds.
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(answer, wrongly_signed);
    let listed: kiln_protocol::DeploymentList = admin
        .get("/api/v1/deployments")
        .await
        .expect_json(StatusCode::OK)
        .await;
    assert!(listed.deployments.is_empty());

    // Signed: a deployment with GitHub's author, login, avatar and pusher.
    let headers = github_headers(
        "push",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        &secret,
        &push,
    );
    let started = std::time::Instant::now();
    let (status, first_answer) = deliver(&base, "github", &headers, &push).await;
    let answered_in = started.elapsed();
    assert_eq!(status, StatusCode::CREATED, "{first_answer}");
    assert!(
        answered_in < Duration::from_secs(2),
        "answered in {answered_in:?}"
    );
    let deployment: Deployment =
        serde_json::from_value(first_answer["deployments"][0].clone()).unwrap();
    assert_eq!(deployment.commit_sha, sha);
    assert_eq!(deployment.message, "Initial commit");
    assert_eq!(deployment.author_login.as_deref(), Some("Codertocat"));
    assert_eq!(deployment.pusher.as_deref(), Some("Codertocat"));
    assert!(deployment
        .author_avatar
        .as_deref()
        .unwrap()
        .starts_with("https://avatars"));

    // A redelivery gets the first answer and queues nothing.
    let (status, again) = deliver(&base, "github", &headers, &push).await;
    assert_eq!((status, &again), (StatusCode::CREATED, &first_answer));

    // The real agent clones the private repository and builds it.
    wait_for(&admin, &deployment.id, AwaitingDeployment, &agent).await;
    let listed: kiln_protocol::DeploymentList = admin
        .get("/api/v1/deployments")
        .await
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(listed.deployments.len(), 1, "the redelivery queued nothing");

    // Statuses on the commit: pending (queued), pending (building), success; in order.
    let calls = host
        .until("the success status", |calls| {
            states(calls, "/statuses/").last().map(String::as_str) == Some("success")
        })
        .await;
    assert_eq!(
        states(&calls, "/statuses/"),
        ["pending", "pending", "success"]
    );
    let success = calls
        .iter()
        .rfind(|call| call.path.contains("/statuses/"))
        .unwrap();
    assert_eq!(success.method, "POST");
    let repo_path = url
        .trim_start_matches("http://")
        .split_once('/')
        .unwrap()
        .1
        .trim_end_matches(".git");
    assert_eq!(
        success.path,
        format!("/api/repos/{repo_path}/statuses/{sha}")
    );
    assert_eq!(success.auth.as_deref(), Some("Bearer host-token-7c1e"));
    assert_eq!(success.body["context"], "kiln/Production");
    assert_eq!(success.body["description"], "Awaiting deployment");
    assert_eq!(
        success.body["target_url"],
        format!("{PUBLIC_URL}/deployments/{}", deployment.id)
    );

    // Tags and deleted branches are answered with why they do nothing.
    let tag = fixture("github/push-tag.json");
    let mut tag = tag;
    tag["repository"]["clone_url"] = url.clone().into();
    let (status, answer) = deliver(
        &base,
        "github",
        &github_headers("push", "d-tag", &secret, &tag),
        &tag,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap()
            .contains("refs/tags/simple-tag"),
        "{answer}"
    );
    let mut ping = fixture("github/ping.json");
    ping["repository"]["clone_url"] = url.clone().into();
    let (status, _) = deliver(
        &base,
        "github",
        &github_headers("ping", "d-ping", &secret, &ping),
        &ping,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // A rotated secret: the old one no longer signs.
    let rotated: Project = admin
        .post_json(
            &format!("/api/v1/projects/{}/webhook-secret", project.id),
            &json!({}),
        )
        .await
        .expect_json(StatusCode::OK)
        .await;
    let new_secret = rotated.webhook_secret.unwrap();
    assert_ne!(new_secret, secret);
    let (status, _) = deliver(
        &base,
        "github",
        &github_headers("ping", "d-old", &secret, &ping),
        &ping,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = deliver(
        &base,
        "github",
        &github_headers("ping", "d-new", &new_secret, &ping),
        &ping,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// A fake agent building whatever is queued to `status`.
async fn build_next(agent: &Api, status: kiln_protocol::DeploymentStatus) -> kiln_protocol::Job {
    let job = agent.claim(5).await.expect("a job");
    let mut building = update(Building);
    building.backend = Some(ComponentStatus::Building);
    agent
        .report(&job, &building)
        .await
        .expect_json::<Deployment>(StatusCode::OK)
        .await;
    agent
        .append_log(
            &job.job_id,
            "backend",
            0,
            "> medusa build\nerror: Build failed on purpose\n",
        )
        .await;
    let mut done = update(status);
    if status == BuildFailed {
        done.backend = Some(ComponentStatus::Failed);
        done.reason = Some("backend: `npm run build` (build) exited with code 1".into());
    } else {
        done.backend = Some(ComponentStatus::Succeeded);
    }
    done.storefront = Some(ComponentStatus::Skipped);
    agent
        .report(&job, &done)
        .await
        .expect_json::<Deployment>(StatusCode::OK)
        .await;
    job
}

#[tokio::test]
async fn issue_16_gitlab_statuses_wait_out_a_failing_host_and_a_restart_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let host = StatusHost::start().await;
    let mut server = ServerProcess::start_with(
        Path::new(SERVER),
        &dir.path().join("server"),
        &["--public-url", PUBLIC_URL, "--git-host-retry-ms", "100"],
        None,
    )
    .await;
    let admin = server.admin();
    let repository = "http://example.com/mike/diaspora.git";
    let project: Project = admin
        .create_project_with(CreateProject {
            git_host: git_host(GitHostKind::Gitlab, &host),
            ..CreateProject::new("diaspora", repository)
        })
        .await;
    let secret = project.webhook_secret.clone().unwrap();
    admin
        .create_environment(&project, "Staging", "new-feature")
        .await;
    let registered: kiln_protocol::RegisterAgentResponse = Api::new(server.base_url(), None)
        .send_json(
            reqwest::Method::POST,
            "/api/v1/agents/register",
            &kiln_protocol::RegisterAgentRequest {
                registration_token: REGISTRATION_TOKEN.into(),
                name: "fake".into(),
                labels: vec![],
                facts: None,
            },
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    let agent = Api::new(server.base_url(), Some(&registered.token));

    // The host is down from the start.
    host.fail(true);
    let push = fixture("gitlab/push.json");
    let headers = vec![
        ("x-gitlab-event", "Push Hook".to_owned()),
        ("x-gitlab-token", secret.clone()),
        (
            "x-gitlab-event-uuid",
            "13792a34-cac6-4fda-95a8-c58e00a3954e".to_owned(),
        ),
    ];
    let (status, answer) = deliver(&server.base_url(), "gitlab", &headers, &push).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (status, _) = deliver(
        &server.base_url(),
        "gitlab",
        &[
            ("x-gitlab-event", "Push Hook".to_owned()),
            ("x-gitlab-token", "wrong".to_owned()),
        ],
        &push,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let job = build_next(&agent, BuildFailed).await;
    host.until("a few refused attempts", |calls| calls.len() >= 3)
        .await;
    assert!(host.accepted("/statuses/").is_empty());

    // The page says the host has not taken it yet.
    // (The dashboard shows the last delivery: checked in its own test below.)

    // Killed while the host is down; the host comes back; the server starts again.
    server.kill().await;
    host.fail(false);
    server.spawn().await;
    let sha = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7";
    let calls = host
        .until("the failure delivered after the restart", |calls| {
            states(calls, "/statuses/").len() >= 3
        })
        .await;
    assert_eq!(
        states(&calls, "/statuses/"),
        ["pending", "pending", "failed"],
        "GitLab's words, in order"
    );
    let failed = calls.iter().rfind(|call| call.status == 201).unwrap();
    assert_eq!(
        failed.path,
        format!("/api/projects/mike%2Fdiaspora/statuses/{sha}")
    );
    assert_eq!(failed.auth.as_deref(), Some("host-token-7c1e"));
    assert_eq!(failed.body["name"], "kiln/Staging");
    assert_eq!(
        failed.body["description"],
        "backend: `npm run build` (build) exited with code 1"
    );
    assert_eq!(
        failed.body["target_url"],
        format!("{PUBLIC_URL}/deployments/{}#backend-L2", job.deployment_id),
        "the page, at the failing log line"
    );
    // Nothing more is sent once all is delivered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(host.accepted("/statuses/").len(), 3);

    // A branch deletion and a merge request edit without commits build nothing.
    let deleted = fixture("gitlab/push-branch-deleted.json");
    let headers = vec![
        ("x-gitlab-event", "Push Hook".to_owned()),
        ("x-gitlab-token", secret.clone()),
    ];
    let (status, answer) = deliver(&server.base_url(), "gitlab", &headers, &deleted).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert!(answer["ignored"].as_str().unwrap().contains("deleted"));
}

#[tokio::test]
async fn issue_16_a_gitea_pull_request_gets_a_preview_and_one_comment_edited_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let host = StatusHost::start().await;
    let cp = ControlPlane::start_with(&dir.path().join("server"), |config| {
        config.public_url = Some(PUBLIC_URL.into());
        config.git_host_retry = Duration::from_millis(100);
    })
    .await;
    let admin = cp.admin();
    let project: Project = admin
        .create_project_with(CreateProject {
            git_host: git_host(GitHostKind::Gitea, &host),
            ..CreateProject::new("webhooks", "https://gitea.example.com/gitea/webhooks.git")
        })
        .await;
    let secret = project.webhook_secret.clone().unwrap();
    let agent = cp.register_agent("fake", &[]).await;
    let gitea_headers = |event: &str, delivery: &str, body: &Value| {
        vec![
            ("x-gitea-event", event.to_owned()),
            ("x-gitea-delivery", delivery.to_owned()),
            (
                "x-hub-signature-256",
                sign(&secret, &serde_json::to_vec(body).unwrap()),
            ),
        ]
    };

    // Opened: a preview environment, built.
    let opened = fixture("gitea/pull_request-opened.json");
    let (status, answer) = deliver(
        &cp.base_url(),
        "gitea",
        &gitea_headers("pull_request", "g-1", &opened),
        &opened,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let environments: Vec<Environment> = admin
        .get(&format!("/api/v1/projects/{}/environments", project.id))
        .await
        .expect_json::<kiln_protocol::EnvironmentList>(StatusCode::OK)
        .await
        .environments;
    let preview = environments
        .iter()
        .find(|e| e.name == "pr-3")
        .expect("the preview");
    assert_eq!(preview.pull_request, Some(3));
    let first = build_next(&agent, AwaitingDeployment).await;
    host.until("the preview's comment", |calls| {
        calls.iter().any(|call| call.path.contains("comments"))
    })
    .await;

    // Synchronized (Gitea's word): the new head builds on the same preview.
    let synced = fixture("gitea/pull_request-synchronized.json");
    let (status, answer) = deliver(
        &cp.base_url(),
        "gitea",
        &gitea_headers("pull_request", "g-2", &synced),
        &synced,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let second: Deployment = serde_json::from_value(answer["deployments"][0].clone()).unwrap();
    assert_eq!(second.environment_id, preview.id);
    assert_eq!(
        second.commit_sha,
        "c0ffee4224043ba2feb48d137756c8a9331c449a"
    );

    // Closed: its build canceled, the preview gone.
    let closed = fixture("gitea/pull_request-closed.json");
    let (status, answer) = deliver(
        &cp.base_url(),
        "gitea",
        &gitea_headers("pull_request", "g-3", &closed),
        &closed,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(admin.deployment(&second.id).await.status, BuildCanceled);
    let environments = admin
        .get(&format!("/api/v1/projects/{}/environments", project.id))
        .await
        .expect_json::<kiln_protocol::EnvironmentList>(StatusCode::OK)
        .await
        .environments;
    assert!(
        environments.iter().all(|e| e.name != "pr-3"),
        "the preview is removed"
    );

    // One comment, made once and then edited in place, ending with the cancel.
    let calls = host
        .until("the comment's last edit", |calls| {
            calls
                .iter()
                .rev()
                .find(|call| call.path.contains("comments"))
                .is_some_and(|call| {
                    call.body["body"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("Build canceled")
                })
        })
        .await;
    let comments: Vec<&HostCall> = calls
        .iter()
        .filter(|call| call.path.contains("comments"))
        .collect();
    assert_eq!(comments[0].method, "POST");
    assert_eq!(
        comments[0].path,
        "/api/repos/gitea/webhooks/issues/3/comments"
    );
    assert_eq!(comments[0].auth.as_deref(), Some("token host-token-7c1e"));
    let id = serde_json::json!(
        1000 + calls
            .iter()
            .position(|call| call.path.contains("comments"))
            .unwrap() as u64
    );
    for edit in &comments[1..] {
        assert_eq!(edit.method, "PATCH");
        assert_eq!(
            edit.path,
            format!("/api/repos/gitea/webhooks/issues/comments/{id}")
        );
    }
    // News of the first deployment arriving after the second exists is not
    // sent: the comment shows the preview's newest deployment.
    assert!(comments.len() >= 2);
    assert!(comments
        .iter()
        .skip_while(|call| !call.body["body"].as_str().unwrap().contains("c0ffee4"))
        .all(|call| call.body["body"].as_str().unwrap().contains("c0ffee4")));
    let body = comments.last().unwrap().body["body"].as_str().unwrap();
    assert!(
        body.contains("pr-3") && body.contains(&format!("{PUBLIC_URL}/deployments/{}", second.id)),
        "{body}"
    );
    // Statuses for both heads, under the preview's context.
    let statuses = host.accepted("/statuses/");
    assert!(statuses
        .iter()
        .all(|call| call.body["context"] == "kiln/pr-3"));
    assert!(statuses
        .iter()
        .any(|call| call.path.ends_with(&first.commit_sha) && call.body["state"] == "success"));
    assert!(
        statuses.iter().any(|call| call.body["state"] == "error"),
        "the cancel"
    );

    // The deployment's page says how its last status fared.
    let (client, cookie) = viewer_session(
        Path::new(SERVER),
        &dir.path().join("server"),
        &cp.base_url(),
        "vic",
        "a viewer's password",
    )
    .await;
    let page = page_text(
        &client,
        &format!("{}/deployments/{}", cp.base_url(), first.deployment_id),
        &cookie,
    )
    .await;
    assert!(
        page.contains("Gitea status") && page.contains("live delivered (201 Created)"),
        "{page}"
    );
}

#[tokio::test]
async fn issue_28_a_replayed_push_acts_once_and_never_takes_production_back() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let url = "https://github.com/acme/shop.git";
    let project = admin
        .create_project_with(CreateProject::new("shop", url))
        .await;
    let secret = project.webhook_secret.clone().unwrap();
    let production = admin
        .create_environment(&project, "Production", "main")
        .await;
    let agent = cp.register_agent("builder", &[]).await;
    let base = cp.base_url();
    let push_of = |sha: &str, forced: bool| {
        let mut push = fixture("github/push-new-branch.json");
        push["ref"] = "refs/heads/main".into();
        push["after"] = sha.into();
        push["head_commit"]["id"] = sha.into();
        push["repository"]["clone_url"] = url.into();
        push["forced"] = forced.into();
        push
    };
    // No delivery id: signed, but the id is not covered by the signature.
    let headers = |body: &Value| {
        vec![
            ("x-github-event", "push".to_owned()),
            (
                "x-hub-signature-256",
                sign(&secret, &serde_json::to_vec(body).unwrap()),
            ),
        ]
    };
    let old = push_of(&sha(1), false);
    let (status, first) = deliver(&base, "github", &headers(&old), &old).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    // The same signed body, again, under new delivery ids or none: one deployment.
    for delivery in [None, Some("a-new-id"), Some("another")] {
        let mut with = headers(&old);
        with.extend(delivery.map(|id| ("x-github-delivery", id.to_owned())));
        let (status, again) = deliver(&base, "github", &with, &old).await;
        assert_eq!((status, &again), (StatusCode::CREATED, &first));
    }
    let old_id = first["deployments"][0]["id"].as_str().unwrap().to_owned();
    agent.build_next().await;
    admin.deploy(&old_id).await;
    admin.wait_for_status(&old_id, Live).await;

    // A newer commit goes live.
    let new = push_of(&sha(2), false);
    let (status, answer) = deliver(&base, "github", &headers(&new), &new).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let new_id = answer["deployments"][0]["id"].as_str().unwrap().to_owned();
    agent.build_next().await;
    admin.deploy(&new_id).await;
    admin.wait_for_status(&new_id, Live).await;

    // The old push, replayed with a body changed only where it is not signed
    // over (there is none), or pushed again as a new delivery of that commit:
    // it never takes production back; a push the host marks forced may.
    let mut replay = push_of(&sha(1), false);
    replay["compare"] = "https://github.com/acme/shop/compare/replayed".into();
    let (status, answer) = deliver(&base, "github", &headers(&replay), &replay).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap()
            .contains("environment Production is live on a later deployment"),
        "{answer}"
    );
    assert_eq!(
        admin.deployment(&new_id).await.status,
        Live,
        "production stays where it was"
    );
    let forced = push_of(&sha(1), true);
    let (status, answer) = deliver(&base, "github", &headers(&forced), &forced).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(
        answer["deployments"][0]["environment_id"],
        production.id.as_str()
    );
    crate::review::answers_within_a_second(&base).await;
}

#[tokio::test]
async fn issue_28_what_a_git_host_answers_is_never_shown_to_viewers() {
    let dir = tempfile::tempdir().unwrap();
    let host = StatusHost::start().await;
    host.fail(true);
    let cp = ControlPlane::start_with(dir.path(), |config| {
        config.git_host_retry = Duration::from_millis(50);
    })
    .await;
    let admin = cp.admin();
    let project = admin
        .create_project_with(CreateProject {
            git_host: git_host(GitHostKind::Github, &host),
            ..CreateProject::new("shop", "https://github.com/acme/shop.git")
        })
        .await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let deployment = admin
        .push_repo("https://github.com/acme/shop.git", "main", &sha(1))
        .await
        .deployments
        .remove(0);
    host.until("a refused report", |calls| calls.len() >= 2)
        .await;
    let (client, cookie) = viewer_session(
        Path::new(SERVER),
        dir.path(),
        &cp.base_url(),
        "vic",
        "a viewer's password",
    )
    .await;
    let page = page_text(
        &client,
        &format!("{}/deployments/{}", cp.base_url(), deployment.id),
        &cookie,
    )
    .await;
    assert!(page.contains("500 Internal Server Error"), "{page}");
    assert!(
        !page.contains("the host is down for the test"),
        "the host's own words reached a viewer: {page}"
    );
    crate::review::answers_within_a_second(&cp.base_url()).await;
}

#[tokio::test]
async fn issue_32_a_project_made_in_the_browser_is_connected_by_a_signed_webhook_and_builds() {
    if !browser_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("server");
    let cp = ControlPlane::start(&data_dir).await;
    add_user(
        Path::new(SERVER),
        &data_dir,
        "ada",
        "admin",
        "correct horse battery",
    );
    let site = cp.base_url();
    let browser = Browser::start().await;
    browser.goto(&format!("{site}/login")).await;
    browser.sign_in("ada", "correct horse battery").await;

    // The empty state leads to the form.
    browser.click_to_load("p.empty a.create").await;
    assert_eq!(browser.path().await, "/projects/new");
    let repository = "https://github.com/acme/shop.git";
    browser.fill("#name", "shop").await;
    browser.fill("#repository_url", repository).await;
    browser.fill("#storefront_path", "storefront").await;
    browser
        .click_to_load("form.new-project button[type=submit]")
        .await;
    // Connect Git: the URL to paste and the secret, shown this once.
    let secret = browser.text("code.webhook-secret").await;
    assert!(secret.len() >= 32, "{secret}");
    let urls: Vec<String> = {
        let mut urls = Vec::new();
        for element in browser.find_all("code.hook-url").await {
            urls.push(element.text().await.unwrap());
        }
        urls
    };
    assert_eq!(urls[0], format!("{site}/api/v1/hooks/github"), "{urls:?}");
    assert!(browser
        .text("p.last-delivery")
        .await
        .contains("None has arrived yet"));
    let listed = cp.admin().get("/api/v1/projects").await.text();
    let project: kiln_protocol::Project = serde_json::from_value(
        serde_json::from_str::<Value>(&listed).unwrap()["projects"][0].clone(),
    )
    .unwrap();
    assert_eq!(
        (project.name.as_str(), project.storefront_path.as_deref()),
        ("shop", Some("storefront"))
    );
    cp.admin()
        .create_environment(&project, "Production", "main")
        .await;

    // A delivery signed with another secret is refused, and the page says why.
    let sha = "3f786850e387550fdab836ed7e6dc881de23001b";
    let mut push = fixture("github/push-new-branch.json");
    push["ref"] = "refs/heads/main".into();
    push["after"] = sha.into();
    push["head_commit"]["id"] = sha.into();
    push["repository"]["clone_url"] = repository.into();
    let (status, _) = deliver(
        &site,
        "github",
        &github_headers("push", "d-1", "not the secret", &push),
        &push,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    browser
        .goto(&format!("{site}/projects/{}/connect", project.id))
        .await;
    let last = browser.text("p.last-delivery").await;
    assert!(
        last.contains("answered 401")
            && last.contains("matches none of this project's webhook secrets"),
        "{last}"
    );
    // The page shows no secret again.
    assert!(browser.find_all("code.webhook-secret").await.is_empty());

    // Signed with the secret, the push builds.
    let (status, answer) = deliver(
        &site,
        "github",
        &github_headers("push", "d-2", &secret, &push),
        &push,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["deployments"][0]["commit_sha"], sha);
    browser
        .goto(&format!("{site}/projects/{}/connect", project.id))
        .await;
    let last = browser.text("p.last-delivery").await;
    assert!(last.contains("a push event, answered 201"), "{last}");

    // Rotated, the new secret is shown once and the old one signs no more.
    browser.click_to_load("button.rotate").await;
    let rotated = browser.text("code.webhook-secret").await;
    assert_ne!(rotated, secret);
    let (status, _) = deliver(
        &site,
        "github",
        &github_headers("push", "d-3", &secret, &push),
        &push,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    browser.screenshot("connect-git").await;
    browser.close().await;
}
