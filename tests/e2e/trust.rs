//! Issue 12: untrusted repositories, pull requests and job payloads never reach
//! the host. Each test performs one attack from the issue with the real binaries
//! (and the real Docker engine where a build runs), and checks it is refused with
//! a message that names what was wrong, that the host is untouched and nothing
//! leaked, and that the server still answers an ordinary request within a second.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_protocol::{
    ArtifactDescriptor, ArtifactUploadTicket, CreateProject, Deployment,
    DeploymentStatus::{self, *},
};
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::agent::{world, world_with, AGENT};
use crate::support::*;

const SERVER: &str = env!("CARGO_BIN_EXE_kiln-server-e2e");

/// An ordinary request answers, and within a second.
async fn answers_within_a_second(base_url: &str) {
    let started = Instant::now();
    let reply = reqwest::Client::new()
        .get(format!("{base_url}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("the server still answers");
    assert_eq!(reply.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "an ordinary request took {:?}",
        started.elapsed()
    );
}

/// Pushes `sha` and waits for `build_failed`; returns the reason and the system log.
async fn fails(world: &World, agent: &AgentProcess, sha: &str) -> (String, String) {
    let deployment = world.push(sha).await;
    let failed = world.settle(&deployment.id, BuildFailed, agent).await;
    assert!(
        failed.artifacts.is_empty(),
        "a refused build uploads nothing: {:?}",
        failed.artifacts
    );
    let system = world.log(&deployment.id, "system").await;
    (failed.reason.unwrap_or_default(), system)
}

/// The agent refuses `job` from a lying control plane before git or the disk see it.
async fn refused_job(
    hostile: &HostileControlPlane,
    job: serde_json::Value,
    agent: &AgentProcess,
) -> String {
    let job_id = job["job_id"].as_str().unwrap().to_owned();
    hostile.hand_out(job);
    let report = hostile.final_report(&job_id, Duration::from_secs(30)).await;
    assert_eq!(report["status"], "build_failed", "{report}");
    assert!(
        !agent.dir.join("work").join(&job_id).exists(),
        "no workspace for a refused job"
    );
    report["reason"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn issue_12_git_argument_injection_is_refused_by_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(dir.path(), |config| {
        config.allow_local_repositories = false;
    })
    .await;
    let admin = cp.admin();
    let marker = dir.path().join("pwned");
    let project = |url: String| serde_json::json!({"name": "shop", "repository_url": url, "backend_path": "."});
    for url in [
        format!("--upload-pack=touch {};", marker.display()),
        format!("ext::sh -c touch% {}", marker.display()),
        "file:///srv/git/shop.git".to_owned(),
        "/srv/git/shop.git".to_owned(),
    ] {
        let message = admin
            .post_json("/api/v1/projects", &project(url.clone()))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
        assert!(message.contains("`repository_url`"), "{url}: {message}");
    }
    let created = admin.create_project("shop").await;
    let message = admin
        .send_json(
            Method::PATCH,
            &format!("/api/v1/projects/{}", created.id),
            &serde_json::json!({"repository_url": "--upload-pack=touch /tmp/x;"}),
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(message.contains("`repository_url`"), "{message}");
    admin
        .create_environment(&created, "Production", "main")
        .await;
    let message = admin
        .post_json(
            "/api/v1/events/push",
            &serde_json::json!({"repository": REPO, "branch": "main",
                "sha": format!("--upload-pack=touch {};", marker.display()),
                "author": "Mallory", "message": "m"}),
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(message.contains("`sha`"), "{message}");
    assert!(!marker.exists());
    answers_within_a_second(&cp.base_url()).await;
}

#[tokio::test]
async fn issue_12_git_argument_injection_in_a_job_is_refused_by_the_agent() {
    let Some(_docker) = docker().await else {
        return;
    };
    let image = build_image().await;
    let dir = tempfile::tempdir().unwrap();
    let hostile = HostileControlPlane::start().await;
    let agent = AgentProcess::start_registered(
        Path::new(AGENT),
        &hostile.base_url(),
        &dir.path().join("agent"),
        image,
        "allow_local_repositories = false",
    )
    .await;
    let marker = dir.path().join("pwned");
    let good_sha = "0123456789abcdef0123456789abcdef01234567";
    let injections = [
        (
            job(
                &format!("--upload-pack=touch {};", marker.display()),
                good_sha,
            ),
            "`repository_url`",
        ),
        (
            job(
                "https://git.example/shop.git",
                &format!("--upload-pack=touch {};", marker.display()),
            ),
            "`commit_sha`",
        ),
        (
            job(&format!("ext::touch%{}", marker.display()), good_sha),
            "transport helper",
        ),
        (job("file:///srv/git/shop.git", good_sha), "local path"),
    ];
    for (index, (mut payload, named)) in injections.into_iter().enumerate() {
        payload["job_id"] = format!("job_{index:032x}").into();
        let reason = refused_job(&hostile, payload, &agent).await;
        assert!(reason.contains(named), "{named}: {reason}");
        assert!(reason.starts_with("the agent refuses this job"), "{reason}");
    }
    assert!(!marker.exists(), "git ran a command from the job");
    assert!(
        containers_of_agent(&agent).await.is_empty(),
        "a refused job starts no container"
    );
}

#[tokio::test]
async fn issue_12_hostile_job_fields_never_become_host_paths() {
    let Some(_docker) = docker().await else {
        return;
    };
    let image = build_image().await;
    let dir = tempfile::tempdir().unwrap();
    let hostile = HostileControlPlane::start().await;
    let agent = AgentProcess::start_registered(
        Path::new(AGENT),
        &hostile.base_url(),
        &dir.path().join("agent"),
        image,
        "",
    )
    .await;
    // `../victim` from work_dir is this directory, beside it.
    let victim = agent.dir.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep"), "the operator's").unwrap();
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let mut traversal = job("https://git.example/shop.git", sha);
    traversal["job_id"] = "../victim".into();
    hostile.hand_out(traversal);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.log_text().contains("Refusing a job") {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        hostile.reports().is_empty(),
        "a job whose own id is malformed is not answered about"
    );

    let spoil = |index: u32, change: &dyn Fn(&mut serde_json::Value)| {
        let mut payload = job("https://git.example/shop.git", sha);
        payload["job_id"] = format!("job_{index:032x}").into();
        change(&mut payload);
        payload
    };
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            spoil(1, &|j| j["backend_path"] = "/etc".into()),
            "`backend_path`",
        ),
        (
            spoil(2, &|j| j["storefront_path"] = "../../state".into()),
            "`storefront_path`",
        ),
        (
            spoil(3, &|j| j["deployment_id"] = "dpl_../../x".into()),
            "`deployment_id`",
        ),
        (
            spoil(4, &|j| {
                j["env"] = (0..1001)
                    .map(|i| serde_json::json!({"name": format!("V{i}"), "value": "x"}))
                    .collect()
            }),
            "`env`",
        ),
        (
            spoil(5, &|j| j["repository_token"] = "t\r\nX-Injected: 1".into()),
            "`repository_token`",
        ),
        (
            spoil(6, &|j| {
                j["env"] = serde_json::json!([{"name": "A=B", "value": "x"}])
            }),
            "`env[0].name`",
        ),
    ];
    for (payload, named) in cases {
        let reason = refused_job(&hostile, payload, &agent).await;
        assert!(reason.contains(named), "{named}: {reason}");
    }
    assert_eq!(
        std::fs::read_to_string(victim.join("keep")).unwrap(),
        "the operator's",
        "the directory beside work_dir is untouched"
    );
    assert!(containers_of_agent(&agent).await.is_empty());
}

async fn containers_of_agent(agent: &AgentProcess) -> Vec<String> {
    let docker = docker().await.unwrap();
    let identity = std::fs::read_to_string(agent.dir.join("state/agent.json")).unwrap();
    let agent_id = serde_json::from_str::<serde_json::Value>(&identity).unwrap()["agent_id"]
        .as_str()
        .unwrap()
        .to_owned();
    crate::support::containers_labelled(&docker, vec![format!("kiln.agent={agent_id}")]).await
}

fn job(repository_url: &str, commit_sha: &str) -> serde_json::Value {
    crate::support::hostile::job(repository_url, commit_sha)
}

/// Adds a submodule entry pointing at `url` to the fixture repository and commits.
fn add_submodule(repo: &FixtureRepo, url: &str) -> String {
    let head = repo.head();
    let git = |args: &[&str]| {
        let output = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo.dir)
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}");
    };
    std::fs::write(
        repo.dir.join(".gitmodules"),
        format!("[submodule \"evil\"]\n\tpath = vendor/evil\n\turl = {url}\n"),
    )
    .unwrap();
    git(&["add", ".gitmodules"]);
    // A gitlink with no work tree behind it, as a pushed submodule looks.
    git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{head},vendor/evil"),
    ]);
    git(&[
        "-c",
        "user.name=Mallory",
        "-c",
        "user.email=mallory@example.com",
        "commit",
        "-q",
        "-m",
        "Add a submodule on another host",
    ]);
    repo.head()
}

#[tokio::test]
async fn issue_12_the_repository_token_never_reaches_another_host() {
    let Some(_docker) = docker().await else {
        return;
    };
    let image = build_image().await;
    let dir = tempfile::tempdir().unwrap();
    let token = "repo-token-s3cret-9f2c";
    let host = GitServer::start(&dir.path().join("host"), Some(token)).await;
    let elsewhere = GitServer::start(&dir.path().join("elsewhere"), None).await;
    let repo = FixtureRepo::new(&dir.path().join("work-tree"));
    let sha = add_submodule(&repo, &elsewhere.url("evil.git"));
    let url = host.publish(&repo.dir, "shop.git");

    let cp = ControlPlane::start_with(&dir.path().join("server"), |config| {
        config.allow_local_repositories = false;
    })
    .await;
    let admin = cp.admin();
    let project = admin
        .create_project_with(CreateProject {
            repository_token: Some(token.into()),
            ..CreateProject::new("shop", &url)
        })
        .await;
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

    // Submodules off (the default): the other host hears nothing.
    let first = admin
        .push_repo(&url, "main", &sha)
        .await
        .deployments
        .remove(0);
    let built = wait_for(&admin, &first.id, AwaitingDeployment, &agent).await;
    let system = admin
        .get(&format!("/api/v1/deployments/{}/logs/system", built.id))
        .await
        .text();
    assert!(system.contains("they are not cloned"), "{system}");
    assert!(
        elsewhere.requests().is_empty(),
        "{:?}",
        elsewhere.requests()
    );
    assert!(
        host.requests()
            .iter()
            .any(|request| request.authorization.is_some()),
        "the token was sent to the repository's own host"
    );

    // Submodules on: the other host is asked, without the token.
    admin
        .send_json(
            Method::PATCH,
            &format!("/api/v1/projects/{}", project.id),
            &serde_json::json!({"submodules": true}),
        )
        .await
        .expect_json::<kiln_protocol::Project>(StatusCode::OK)
        .await;
    let again = admin
        .post_json(
            &format!("/api/v1/deployments/{}/redeploy", built.id),
            &serde_json::json!({}),
        )
        .await
        .expect_json::<kiln_protocol::EventOutcome>(StatusCode::CREATED)
        .await
        .deployments
        .remove(0);
    let failed = wait_for(&admin, &again.id, BuildFailed, &agent).await;
    let reason = failed.reason.unwrap_or_default();
    assert!(reason.contains("submodule"), "{reason}");
    let asked = elsewhere.requests();
    assert!(
        !asked.is_empty(),
        "the submodule was fetched from the other host"
    );
    assert!(
        asked.iter().all(|request| request.authorization.is_none()),
        "the repository token travelled to another host: {asked:?}"
    );
    for id in [&first.id, &again.id] {
        for stream in ["system", "backend"] {
            let log = admin
                .get(&format!("/api/v1/deployments/{id}/logs/{stream}"))
                .await
                .text();
            assert!(!log.contains(token), "the token is in the {stream} log");
        }
    }
    answers_within_a_second(&cp.base_url()).await;
}

pub(crate) async fn wait_for(
    admin: &Api,
    id: &str,
    status: DeploymentStatus,
    agent: &AgentProcess,
) -> Deployment {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let deployment = admin.deployment(id).await;
        if deployment.status == status {
            return deployment;
        }
        let settled = !matches!(deployment.status, Queued | Building);
        assert!(
            !settled && Instant::now() < deadline,
            "deployment {id} is {} ({:?}), expected {status}\nagent log:\n{}",
            deployment.status,
            deployment.reason,
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn issue_12_a_build_that_links_its_output_root_to_the_host_gets_nothing_packed() {
    let Some(world) = world(serde_json::json!([])).await else {
        return;
    };
    let agent = world.agent("agent", "").await;
    // The agent's own state: its token is in there.
    let state = agent.dir.join("state");
    let token_file = std::fs::read_to_string(state.join("agent.json")).unwrap();
    world
        .admin
        .set_variables(
            &world.environment_id,
            serde_json::json!([{"name": "KILN_FIXTURE_SERVER_ROOT_LINK", "value": state.display().to_string()}]),
        )
        .await;
    let sha = world.repo.commit("link the output root", |dir| {
        std::fs::write(dir.join("ATTACK.md"), "root link").unwrap();
    });
    let (reason, system) = fails(&world, &agent, &sha).await;
    assert!(
        reason.starts_with("cannot package .medusa/server: .medusa/server is a symbolic link"),
        "{reason}"
    );
    let token: serde_json::Value = serde_json::from_str(&token_file).unwrap();
    assert!(!system.contains(token["token"].as_str().unwrap()));
    answers_within_a_second(&world.cp.base_url()).await;
}

#[tokio::test]
async fn issue_12_storefront_output_outside_the_app_is_refused() {
    let Some(world) = world_with(serde_json::json!([]), Some("storefront")).await else {
        return;
    };
    let agent = world.agent("agent", "").await;
    let state = agent.dir.join("state").display().to_string();
    let configs = [
        "module.exports = { distDir: '../../../../var/lib/kiln-agent/state' }\n".to_owned(),
        format!("// distDir: \"{state}\"\nmodule.exports = {{}}\n"),
    ];
    for config in configs {
        let sha = world.repo.commit("hostile distDir", |dir| {
            std::fs::write(dir.join("storefront/next.config.js"), &config).unwrap();
        });
        let (reason, _) = fails(&world, &agent, &sha).await;
        assert!(
            reason.starts_with("storefront: unsafe_output_dir:")
                && reason.contains("leaves the app"),
            "{config}: {reason}"
        );
    }
    // The build itself links its output to the host.
    world
        .admin
        .set_variables(
            &world.environment_id,
            serde_json::json!([{"name": "KILN_FIXTURE_STOREFRONT_OUTPUT_LINK", "value": state}]),
        )
        .await;
    let sha = world.repo.commit("linked output", |dir| {
        std::fs::remove_file(dir.join("storefront/next.config.js")).unwrap();
    });
    let (reason, _) = fails(&world, &agent, &sha).await;
    assert!(
        reason.starts_with("storefront: unsafe_output_dir:")
            && reason.contains("storefront/.next is a symbolic link"),
        "{reason}"
    );
    answers_within_a_second(&world.cp.base_url()).await;
}

#[tokio::test]
async fn issue_12_repository_files_are_read_only_inside_the_checkout() {
    let Some(world) = world_with(serde_json::json!([]), Some("storefront")).await else {
        return;
    };
    // A step blocked on a FIFO in its container ends at the step limit.
    let agent = world.agent("agent", "step_timeout = \"15s\"").await;
    let secret = "HOST-SECRET-4f1d-never-in-a-log";
    let host_file = world.root_dir().join("host-file");
    std::fs::write(&host_file, format!("{secret}\n")).unwrap();
    let sha = world.repo.commit(".nvmrc links to a host file", |dir| {
        std::os::unix::fs::symlink(&host_file, dir.join("storefront/.nvmrc")).unwrap();
    });
    let (reason, system) = fails(&world, &agent, &sha).await;
    assert!(
        reason.contains("storefront/.nvmrc links outside the repository"),
        "{reason}"
    );
    assert!(!reason.contains(secret) && !system.contains(secret));

    // A FIFO the backend's build puts where the storefront's package.json was:
    // the agent read the storefront's files before any build ran, so it never
    // opens it; only the storefront's own build, in its container, meets it.
    world
        .admin
        .set_variables(
            &world.environment_id,
            serde_json::json!([{"name": "KILN_FIXTURE_FIFO", "value": "storefront/package.json"}]),
        )
        .await;
    let sha = world.repo.commit("no link", |dir| {
        std::fs::remove_file(dir.join("storefront/.nvmrc")).unwrap();
    });
    let started = Instant::now();
    let (reason, system) = fails(&world, &agent, &sha).await;
    assert!(reason.starts_with("storefront: "), "{reason}");
    assert!(
        system.contains("Storefront: nextjs: dependency `next` in storefront/package.json"),
        "read before the build: {system}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    answers_within_a_second(&world.cp.base_url()).await;
}

#[tokio::test]
async fn issue_12_builds_on_the_default_network_cannot_reach_host_services() {
    let Some(world) = world(serde_json::json!([])).await else {
        return;
    };
    // `bridge`, the default (the test harness otherwise builds offline).
    let agent = world.agent("agent", "install_network = \"bridge\"").await;
    let control_plane = format!("{}/healthz", world.cp.base_url());
    world
        .admin
        .set_variables(
            &world.environment_id,
            serde_json::json!([{"name": "KILN_FIXTURE_FETCH", "value": control_plane}]),
        )
        .await;
    let sha = world.repo.commit("reach for the control plane", |dir| {
        std::fs::write(dir.join("ATTACK.md"), "fetch").unwrap();
    });
    let (reason, _) = fails(&world, &agent, &sha).await;
    assert_eq!(
        reason, "`npm run build` (build) exited with code 13",
        "13: the host's loopback was out of reach"
    );
    // What `host` gives away: the same build reaches it.
    drop(agent);
    let exposed = world.agent("exposed", "install_network = \"host\"").await;
    let sha = world.repo.commit("again, on host", |dir| {
        std::fs::write(dir.join("ATTACK.md"), "fetch on host").unwrap();
    });
    let (reason, _) = fails(&world, &exposed, &sha).await;
    assert_eq!(reason, "`npm run build` (build) exited with code 66");
}

#[tokio::test]
async fn issue_12_unauthenticated_registrations_never_make_the_server_buffer_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(Path::new(SERVER), &dir.path().join("data")).await;
    let url = format!("{}/api/v1/agents/register", server.base_url());
    let before = server.rss_bytes();
    let body = vec![b' '; 16 << 20];
    let client = reqwest::Client::new();
    let attempts = (0..8).map(|i| {
        let request = client.post(&url).body(body.clone());
        // Half with a wrong token in the header, half with none.
        let request = if i % 2 == 0 {
            request.bearer_auth("not-the-registration-token")
        } else {
            request
        };
        request.timeout(Duration::from_secs(10)).send()
    });
    // Refused before the body was read: 401 or 413, or the connection closed
    // under the client's feet while it was still sending.
    for reply in futures::future::join_all(attempts)
        .await
        .into_iter()
        .flatten()
    {
        assert!(
            reply.status() == StatusCode::UNAUTHORIZED
                || reply.status() == StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            reply.status()
        );
    }
    let grown = server.rss_bytes().saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "8 unauthenticated 16 MiB bodies grew the server by {} MiB",
        grown >> 20
    );
    answers_within_a_second(&server.base_url()).await;
}

#[tokio::test]
async fn issue_12_idle_and_half_open_connections_are_timed_out_and_capped() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        Path::new(SERVER),
        &dir.path().join("data"),
        &["--header-timeout-seconds", "1", "--max-connections", "24"],
        Some(64),
    )
    .await;
    let address = format!("127.0.0.1:{}", server.port);
    let mut held = Vec::new();
    for i in 0..200 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        if i % 2 == 0 {
            // Half a request head, never finished.
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n")
                .await
                .unwrap();
        }
        held.push(stream);
    }
    // The server closes every one of them itself: a read ends (EOF or reset).
    let deadline = Instant::now() + Duration::from_secs(30);
    for stream in &mut held {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buffer = [0u8; 512];
        let read = tokio::time::timeout(left, stream.read(&mut buffer)).await;
        assert!(
            read.is_ok(),
            "a connection was still open 30 s after the flood"
        );
    }
    drop(held);
    answers_within_a_second(&server.base_url()).await;
}

#[tokio::test]
async fn issue_12_logs_are_capped_and_late_appends_come_only_from_the_jobs_agent() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(dir.path(), |config| config.log_limit = 1 << 20).await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder", &[]).await;
    let other = cp.register_agent("other", &[]).await;
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let deployment = admin.push("main", &sha(1)).await.deployments.remove(0);
    let job = agent.claim(5).await.unwrap();
    agent
        .report(&job, &update(AwaitingDeployment))
        .await
        .expect_json::<Deployment>(StatusCode::OK)
        .await;

    let append = |api: &Api, offset: u64, bytes: Vec<u8>| {
        let request = api
            .request(
                Method::PUT,
                &format!(
                    "/api/v1/agent/jobs/{}/logs/backend?offset={offset}",
                    job.job_id
                ),
            )
            .body(bytes);
        let api = api.clone();
        async move { api.send(request).await }
    };
    // Another agent may not write into this job's log, then or later.
    append(&other, 0, b"forged\n".to_vec())
        .await
        .expect_error(StatusCode::FORBIDDEN, "forbidden");
    // The job's own agent delivers late (a restarted agent's spool), up to the cap.
    let mut offset = 0;
    let refused = loop {
        let reply = append(&agent, offset, vec![b'x'; 256 << 10]).await;
        if reply.status != StatusCode::OK {
            break reply;
        }
        offset += 256 << 10;
        assert!(offset <= 2 << 20, "appends past the cap were accepted");
    };
    refused.expect_error(StatusCode::PAYLOAD_TOO_LARGE, "log_limit_exceeded");
    assert!(offset <= (1 << 20) + 4096, "stored {offset} bytes");
    append(&agent, offset, vec![b'x'; 16 << 20])
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    let message = append(&agent, 1 << 63, b"x".to_vec())
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_parameter");
    assert!(message.contains("2^63"), "{message}");
    admin
        .get(&format!(
            "/api/v1/deployments/{}/logs/backend?offset=9223372036854775808",
            deployment.id
        ))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_parameter");
    let stored = admin
        .get(&format!(
            "/api/v1/deployments/{}/logs/backend",
            deployment.id
        ))
        .await;
    assert_eq!(stored.body.len() as u64, offset);
    answers_within_a_second(&cp.base_url()).await;
}

async fn ticket(agent: &Api, job_id: &str, data: &[u8]) -> Reply {
    agent
        .post_json(
            &format!("/api/v1/agent/jobs/{job_id}/artifacts"),
            &ArtifactDescriptor {
                name: "backend.tar.gz".into(),
                size: data.len() as u64,
                sha256: hex::encode(Sha256::digest(data)),
            },
        )
        .await
}

#[tokio::test]
async fn issue_12_artifacts_are_taken_only_while_building_and_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder", &[]).await;
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let deployment = admin.push("main", &sha(1)).await.deployments.remove(0);
    let job = agent.claim(5).await.unwrap();
    let scanned = b"what the secret scan passed".to_vec();
    let swapped = b"what a build swapped in later".to_vec();
    let upload = |ticket: ArtifactUploadTicket, bytes: Vec<u8>| {
        agent.send(agent.request(Method::PUT, &ticket.upload_url).body(bytes))
    };
    let first: ArtifactUploadTicket = ticket(&agent, &job.job_id, &scanned)
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    assert_eq!(
        upload(first, scanned.clone()).await.status,
        StatusCode::CREATED
    );
    // The same bytes again (a retry whose answer was lost) are fine.
    let retry: ArtifactUploadTicket = ticket(&agent, &job.job_id, &scanned)
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    assert_eq!(
        upload(retry, scanned.clone()).await.status,
        StatusCode::CREATED
    );
    // Other bytes under the same name are refused.
    let other: ArtifactUploadTicket = ticket(&agent, &job.job_id, &swapped)
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    upload(other, swapped.clone())
        .await
        .expect_error(StatusCode::CONFLICT, "artifact_exists");
    // A ticket taken while building, used once the build is reported done.
    let late: ArtifactUploadTicket = ticket(&agent, &job.job_id, &swapped)
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    agent
        .report(&job, &update(AwaitingDeployment))
        .await
        .expect_json::<Deployment>(StatusCode::OK)
        .await;
    upload(late, swapped.clone())
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
    let message = ticket(&agent, &job.job_id, &swapped)
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
    assert!(message.contains("only while the job builds"), "{message}");
    let download = admin
        .get(&format!(
            "/api/v1/deployments/{}/artifacts/backend.tar.gz",
            deployment.id
        ))
        .await;
    assert_eq!(
        download.body, scanned,
        "the scanned artifact is what deploys"
    );
    answers_within_a_second(&cp.base_url()).await;
}

#[tokio::test]
async fn issue_12_concurrent_deploys_of_one_environment_take_turns() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder", &[]).await;
    let project = admin.create_project("shop").await;
    let environment = admin
        .create_environment(&project, "Production", "main")
        .await;
    let mut built = Vec::new();
    for n in 0..75 {
        let deployment = admin.push("main", &sha(n + 1)).await.deployments.remove(0);
        let job = agent.claim(5).await.unwrap();
        agent
            .report(&job, &update(AwaitingDeployment))
            .await
            .expect_json::<Deployment>(StatusCode::OK)
            .await;
        built.push(deployment.id);
    }
    let deploys = built.iter().map(|id| {
        let (admin, path) = (admin.clone(), format!("/api/v1/deployments/{id}/deploy"));
        async move { admin.post_json(&path, &serde_json::json!({})).await }
    });
    for reply in futures::future::join_all(deploys).await {
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    }
    // Every deploy has ended once none is left deploying; then read them all again,
    // since a deploy that ended live may have been replaced since.
    for id in &built {
        admin
            .wait_for_status_in(id, &[Live, Ready, DeployFailed])
            .await;
    }
    let mut settled = Vec::new();
    for id in &built {
        settled.push(admin.deployment(id).await);
    }
    let failed: Vec<_> = settled
        .iter()
        .filter(|d| d.status == DeployFailed)
        .map(|d| d.reason.clone())
        .collect();
    assert!(failed.is_empty(), "deploys failed spuriously: {failed:?}");
    let live: Vec<_> = settled.iter().filter(|d| d.status == Live).collect();
    assert_eq!(live.len(), 1);
    let current = std::fs::read_link(
        dir.path()
            .join("releases")
            .join(&environment.id)
            .join("current"),
    )
    .unwrap();
    assert!(
        current.ends_with(&live[0].id),
        "current points at {}, while {} is live",
        current.display(),
        live[0].id
    );
}

#[tokio::test]
async fn issue_12_stored_strings_are_bounded_and_hook_output_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(dir.path(), |config| {
        config.deploy_hook = Some(
            "head -c 50000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo 'the end' >&2; exit 3"
                .to_owned(),
        );
    })
    .await;
    let admin = cp.admin();
    let message = admin
        .post_json(
            "/api/v1/projects",
            &serde_json::json!({"name": "n".repeat(101), "repository_url": REPO}),
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(message.contains("`name`"), "{message}");
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let push = |message: String| {
        let admin = admin.clone();
        let event = serde_json::json!({"repository": REPO, "branch": "main", "sha": sha(1),
            "author": "Ada", "message": message});
        async move { admin.post_json("/api/v1/events/push", &event).await }
    };
    let message = push("m".repeat(100 << 10))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(message.contains("`message`"), "{message}");
    push("m".repeat(16 << 20))
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    let branch = admin
        .post_json(
            "/api/v1/events/push",
            &serde_json::json!({"repository": REPO, "branch": "b".repeat(300), "sha": sha(1),
                "author": "Ada", "message": "m"}),
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(branch.contains("`branch`"), "{branch}");

    // A deploy hook that prints 50 MB: its last line is the reason.
    let agent = cp.register_agent("builder", &[]).await;
    let deployment = push("Add cart".to_owned())
        .await
        .expect_json::<kiln_protocol::EventOutcome>(StatusCode::CREATED)
        .await
        .deployments
        .remove(0);
    agent.build_next().await;
    admin.deploy(&deployment.id).await;
    let failed = admin
        .wait_for_status_in(&deployment.id, &[DeployFailed, Live])
        .await;
    assert_eq!(
        failed.reason.as_deref(),
        Some("deploy hook exited with status 3: the end")
    );
    answers_within_a_second(&cp.base_url()).await;
}
