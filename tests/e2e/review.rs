//! Issue 28: the second review's attacks, each performed with the real binaries
//! (and the real Docker engine where a build runs), each shown refused with the
//! host untouched, nothing leaked, and the server still answering an ordinary
//! request within a second.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_protocol::DeploymentStatus::{self, *};

use crate::agent::{world, world_with};
use crate::support::*;

/// An ordinary request answers, and within a second.
pub(crate) async fn answers_within_a_second(base_url: &str) {
    let started = Instant::now();
    let reply = reqwest::Client::new()
        .get(format!("{base_url}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("the server still answers");
    assert_eq!(reply.status(), reqwest::StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "an ordinary request took {:?}",
        started.elapsed()
    );
}

/// Waits until the deployment has ended its build, however it ended.
async fn built(world: &World, id: &str, agent: &AgentProcess) -> kiln_protocol::Deployment {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let deployment = world.admin.deployment(id).await;
        if !matches!(deployment.status, Queued | Building) {
            return deployment;
        }
        assert!(
            Instant::now() < deadline,
            "deployment {id} never ended its build\nagent log:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything under `dir`, never following a link.
fn paths_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(at) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                pending.push(entry.path());
            }
            found.push(entry.path());
        }
    }
    found
}

/// Every regular file under `dir`, with its content, lossily.
fn contents_under(dir: &Path) -> Vec<(String, String)> {
    paths_under(dir)
        .into_iter()
        .filter(|path| std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_file()))
        .map(|path| {
            let text = std::fs::read(&path).unwrap_or_default();
            (
                path.display().to_string(),
                String::from_utf8_lossy(&text).into_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn issue_28_a_storefront_racing_the_backends_packer_gets_no_host_file_packed() {
    let Some(world) = world_with(serde_json::json!([]), Some("storefront")).await else {
        return;
    };
    let agent = world.agent("agent", "").await;
    let state = agent.dir.join("state");
    let identity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("agent.json")).unwrap()).unwrap();
    let token = identity["token"].as_str().unwrap().to_owned();
    // The backend's output leads with a file slow to pack and ends with zzz/;
    // the storefront, built beside it, swaps zzz for a link to the agent's state
    // while the packer would be reading the large file.
    world
        .admin
        .set_variables(
            &world.environment_id,
            serde_json::json!([
                {"name": "KILN_FIXTURE_BIG_FIRST_MB", "value": "48"},
                {"name": "KILN_FIXTURE_STOREFRONT_SWAP", "value": state.display().to_string()},
            ]),
        )
        .await;
    let deployment = world.push(&world.repo.head()).await;
    let failed = world.settle(&deployment.id, BuildFailed, &agent).await;
    let reason = failed.reason.unwrap_or_default();
    assert!(
        reason.starts_with("cannot package .medusa/server: symlink zzz points outside"),
        "{reason}"
    );
    assert!(failed.artifacts.is_empty(), "{:?}", failed.artifacts);
    let storefront = world.log(&deployment.id, "storefront").await;
    assert!(storefront.contains("swapped"), "the race ran: {storefront}");
    let system = world.log(&deployment.id, "system").await;
    assert!(
        system.contains("Backend: its build is done; its output is read once the other component's containers have ended too."),
        "{system}"
    );
    // Nothing of the agent's state left the host: no artifact, no log line.
    for (_, text) in contents_under(&agent.dir.join("work")) {
        assert!(!text.contains(&token), "the token reached the workspace");
    }
    assert!(!system.contains(&token));
    answers_within_a_second(&world.cp.base_url()).await;
}

#[tokio::test]
async fn issue_28_the_cache_harvest_never_takes_a_host_folder_a_build_linked() {
    let Some(world) = world(serde_json::json!([])).await else {
        return;
    };
    let agent = world.agent("agent", "").await;
    // A host folder only the agent can read, which the build links as ~/.npm.
    let host = world.root_dir().join("host-npm");
    std::fs::create_dir_all(host.join("_cacache")).unwrap();
    std::fs::write(host.join("_cacache/host-secret"), "root-only host file").unwrap();
    world
        .admin
        .set_variables(
            &world.environment_id,
            serde_json::json!([{"name": "KILN_FIXTURE_HOME_NPM_LINK", "value": host.display().to_string()}]),
        )
        .await;
    let deployment = world.push(&world.repo.head()).await;
    world
        .settle(&deployment.id, AwaitingDeployment, &agent)
        .await;
    agent.until_logged("Not caching the npm store: home/.npm is a symbolic link, and the agent never follows a link a build made.", 1)
    .await;
    assert_eq!(
        std::fs::read_to_string(host.join("_cacache/host-secret")).unwrap(),
        "root-only host file",
        "the host folder is where it was"
    );
    for (path, text) in contents_under(&agent.dir.join("cache")) {
        assert!(
            !text.contains("root-only host file"),
            "{path} is the host's"
        );
    }
    answers_within_a_second(&world.cp.base_url()).await;
}

#[tokio::test]
async fn issue_28_a_restore_never_writes_through_a_link_an_install_planted() {
    let Some(world) = world_with(serde_json::json!([]), Some("storefront")).await else {
        return;
    };
    let agent = world.agent("agent", "").await;
    // A cold build leaves .next/cache for the next.
    let cold = world.push(&world.repo.head()).await;
    world.settle(&cold.id, AwaitingDeployment, &agent).await;
    agent.until_logged("Cached storefront/.next/cache", 1).await;

    // The backend's install ends by putting a link to a host folder in place of
    // the checkout; the storefront's restore of .next/cache comes after it.
    // (Inside the container the same path is made on its /tmp and given the
    // checkout, so npm finishes the install through the link.)
    let host = world.root_dir().join("host-target");
    std::fs::create_dir_all(&host).unwrap();
    let sha = world.repo.commit("postinstall swaps the checkout", |dir| {
        let mut manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("package.json")).unwrap())
                .unwrap();
        manifest["scripts"]["postinstall"] = format!(
            "mkdir -p {host} && cp -a /kiln/src/. {host}/ && mv /kiln/src /kiln/src-moved && ln -s {host} /kiln/src",
            host = host.display()
        )
        .into();
        std::fs::write(
            dir.join("package.json"),
            serde_json::to_string_pretty(&manifest).unwrap(),
        )
        .unwrap();
    });
    let attack = world.push(&sha).await;
    let ended = built(&world, &attack.id, &agent).await;
    let system = world.log(&attack.id, "system").await;
    assert!(
        system.contains("Build cache: .next/cache not restored: src is a symbolic link, and the agent never follows a link a build made."),
        "{}: {system}",
        ended.status
    );
    let written = paths_under(&host);
    assert!(
        written.is_empty(),
        "the host folder was written: {written:?}"
    );
    assert_ne!(ended.status, DeploymentStatus::Live);
    answers_within_a_second(&world.cp.base_url()).await;
}

#[tokio::test]
async fn issue_28_a_stored_token_never_follows_a_changed_url_and_private_hosts_are_refused() {
    use kiln_protocol::{CreateProject, GitHostKind, GitHostSettings, Project};
    use reqwest::{Method, StatusCode};
    let dir = tempfile::tempdir().unwrap();
    // As a server is by default: no git host on its own network.
    let cp = ControlPlane::start_with(dir.path(), |config| {
        config.allow_private_git_hosts = false;
    })
    .await;
    let admin = cp.admin();
    let project = admin
        .create_project_with(CreateProject {
            repository_token: Some("repo-token-for-acme".into()),
            git_host: Some(GitHostSettings {
                kind: GitHostKind::Github,
                api_url: "https://api.github.com".into(),
                token: Some("host-token-for-github".into()),
            }),
            ..CreateProject::new("shop", "https://github.com/acme/shop.git")
        })
        .await;
    let patch = |body: serde_json::Value| {
        let admin = &admin;
        let path = format!("/api/v1/projects/{}", project.id);
        async move { admin.send_json(Method::PATCH, &path, &body).await }
    };
    // The host moves, the token does not follow.
    for moved in [
        serde_json::json!({"git_host": {"kind": "github", "api_url": "https://evil.example/api"}}),
        serde_json::json!({"git_host": {"kind": "gitea", "api_url": "https://api.github.com"}}),
    ] {
        let message = patch(moved.clone())
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
        assert!(message.contains("git_host.token"), "{moved}: {message}");
    }
    let message =
        patch(serde_json::json!({"repository_url": "https://evil.example/acme/shop.git"}))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(message.contains("repository_token"), "{message}");
    // Nothing changed.
    let kept: Project = admin
        .get(&format!("/api/v1/projects/{}", project.id))
        .await
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(kept.repository_url, "https://github.com/acme/shop.git");
    assert_eq!(kept.git_host.unwrap().api_url, "https://api.github.com");
    // With the token given again, or the same host, a change is fine.
    patch(serde_json::json!({"repository_url": "https://github.com/acme/shop2.git", "repository_token": "new-repo-token"}))
        .await
        .expect_json::<Project>(StatusCode::OK)
        .await;
    patch(
        serde_json::json!({"git_host": {"kind": "github", "api_url": "https://api.github.com/"}}),
    )
    .await
    .expect_json::<Project>(StatusCode::OK)
    .await;

    // A host on this machine or its network, or a URL with a query or
    // fragment that would steer the path: refused, naming the way out.
    for (api_url, expected) in [
        ("http://127.0.0.1:9/", "--allow-private-git-hosts"),
        (
            "http://169.254.169.254/latest/meta-data",
            "--allow-private-git-hosts",
        ),
        ("http://localhost:8080", "--allow-private-git-hosts"),
        ("http://[::1]/", "--allow-private-git-hosts"),
        ("http://10.1.2.3/api", "--allow-private-git-hosts"),
        ("https://api.github.com/x?y=", "query or fragment"),
        ("https://api.github.com/#x", "query or fragment"),
    ] {
        let message = patch(
            serde_json::json!({"git_host": {"kind": "github", "api_url": api_url, "token": "t"}}),
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
        assert!(message.contains(expected), "{api_url}: {message}");
    }
    answers_within_a_second(&cp.base_url()).await;
}

/// A `shop` project with a Production environment whose first push an agent
/// named `agent_name` has claimed: that agent, the deployment and its job.
async fn claimed_build(
    cp: &ControlPlane,
    agent_name: &str,
) -> (Api, kiln_protocol::Deployment, kiln_protocol::Job) {
    let admin = cp.admin();
    let agent = cp.register_agent(agent_name, &[]).await;
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let deployment = admin.push("main", &sha(1)).await.deployments.remove(0);
    let job = agent.claim(5).await.unwrap();
    (agent, deployment, job)
}

/// A control plane with one dashboard account, `ada`.
async fn with_account(dir: &Path) -> ControlPlane {
    let cp = ControlPlane::start(dir).await;
    add_user(
        Path::new(env!("CARGO_BIN_EXE_kiln-server-e2e")),
        dir,
        "ada",
        "admin",
        "ada's long password",
    );
    cp
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn issue_28_sign_in_counts_before_hashing_bounds_hashes_and_locks_out_only_the_guesser() {
    use reqwest::StatusCode;
    let dir = tempfile::tempdir().unwrap();
    let cp = with_account(dir.path()).await;
    let base = cp.base_url();
    let client = no_redirects();
    // A burst of 41 attempts at once, the right password last: at most the
    // limit is ever checked, so the right one is refused with the rest.
    let mut burst = Vec::new();
    for n in 0..41 {
        let (client, base) = (client.clone(), base.clone());
        let password = if n == 40 {
            "ada's long password"
        } else {
            "guess"
        };
        burst.push(tokio::spawn(async move {
            sign_in_over_http(&client, &base, "ada", password, None)
                .await
                .status()
        }));
    }
    let mut statuses = Vec::new();
    for attempt in burst {
        statuses.push(attempt.await.unwrap());
    }
    let checked = statuses
        .iter()
        .filter(|status| **status != StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(
        checked <= 5,
        "{checked} attempts were checked: {statuses:?}"
    );
    assert_ne!(statuses[40], StatusCode::SEE_OTHER, "{statuses:?}");
    // The guesser is locked out; ada, from her own address, is not.
    let from = |last: u8| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap()
    };
    let hers = sign_in_over_http(&from(3), &base, "ada", "ada's long password", None).await;
    assert_eq!(hers.status(), StatusCode::SEE_OTHER);

    // 64 sign-ins at once from 16 addresses: hashes run a few at a time, the
    // rest wait or are told to come back, and the API keeps answering.
    let mut flood = Vec::new();
    for n in 0..64u8 {
        let (client, base) = (from(10 + n % 16), base.clone());
        flood.push(tokio::spawn(async move {
            sign_in_over_http(&client, &base, &format!("user{n}"), "guess", None)
                .await
                .status()
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    answers_within_a_second(&base).await;
    for attempt in flood {
        let status = attempt.await.unwrap();
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(&status),
            "{status}"
        );
    }
    answers_within_a_second(&base).await;
}

#[tokio::test]
async fn issue_28_sign_in_needs_its_own_form_and_returns_only_to_this_site() {
    use reqwest::StatusCode;
    let dir = tempfile::tempdir().unwrap();
    let cp = with_account(dir.path()).await;
    let base = cp.base_url();
    let client = no_redirects();
    // Another site's form: no cookie, or a token that is not the cookie's.
    let forged = client
        .post(format!("{base}/login"))
        .form(&[("username", "ada"), ("password", "ada's long password")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(forged.headers().get("location").is_none());
    let (cookie, _) = sign_in_form(&client, &base).await;
    let mismatched = client
        .post(format!("{base}/login"))
        .header("cookie", cookie)
        .form(&[
            ("username", "ada"),
            ("password", "ada's long password"),
            ("form_token", "not-the-cookie's"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(mismatched.status(), StatusCode::FORBIDDEN);

    // `next` as a browser would read it: a tab, newline or backslash that it
    // drops or turns into `/` never leads off the site.
    for hostile in [
        "/\t/evil.example",
        "/\n/evil.example",
        "/\\evil.example",
        "//evil.example",
        "https://evil.example/",
    ] {
        let signed_in =
            sign_in_over_http(&client, &base, "ada", "ada's long password", Some(hostile)).await;
        assert_eq!(signed_in.status(), StatusCode::SEE_OTHER, "{hostile:?}");
        assert_eq!(signed_in.headers()["location"], "/", "{hostile:?}");
    }
    let home = sign_in_over_http(
        &client,
        &base,
        "ada",
        "ada's long password",
        Some("/agents"),
    )
    .await;
    assert_eq!(home.headers()["location"], "/agents");
    answers_within_a_second(&base).await;
}

#[tokio::test]
async fn issue_28_revoking_an_agent_voids_its_upload_urls_at_once() {
    use kiln_protocol::{ArtifactDescriptor, ArtifactUploadTicket};
    use reqwest::{Method, StatusCode};
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let (agent, deployment, job) = claimed_build(&cp, "lost-host").await;
    let bytes = b"an artifact from a host that was lost".to_vec();
    let path = format!("/api/v1/agent/jobs/{}/artifacts", job.job_id);
    let descriptor = ArtifactDescriptor {
        name: "backend.tar.gz".into(),
        size: bytes.len() as u64,
        sha256: hex::encode(sha2::Sha256::digest(&bytes)),
    };
    let ticket = |_: &[u8]| agent.post_json(&path, &descriptor);
    let handed: ArtifactUploadTicket = ticket(&bytes).await.expect_json(StatusCode::CREATED).await;
    let agents: kiln_protocol::AgentList = admin
        .get("/api/v1/agents")
        .await
        .expect_json(StatusCode::OK)
        .await;
    let agent_id = agents.agents[0].id.clone();
    admin
        .send(admin.request(Method::DELETE, &format!("/api/v1/agents/{agent_id}")))
        .await;
    // The job still holds the deployment (its lease not yet reaped), but the
    // URL it was given is void, and no new one is given.
    let upload = agent
        .send(
            agent
                .request(Method::PUT, &handed.upload_url)
                .body(bytes.clone()),
        )
        .await;
    let message = upload.expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        message.contains("upload URL unknown or expired"),
        "{message}"
    );
    assert_eq!(ticket(&bytes).await.status, StatusCode::UNAUTHORIZED);
    let shown = admin.deployment(&deployment.id).await;
    assert!(shown.artifacts.is_empty(), "{:?}", shown.artifacts);
    answers_within_a_second(&cp.base_url()).await;
}

#[tokio::test]
async fn issue_28_the_repository_token_follows_no_redirect() {
    use kiln_protocol::CreateProject;
    let Some(_docker) = docker().await else {
        return;
    };
    let image = build_image().await;
    let dir = tempfile::tempdir().unwrap();
    let token = "repo-token-redirect-5d1a";
    // Where the redirect leads: a host that records what it is sent.
    let elsewhere = GitServer::start(&dir.path().join("elsewhere"), None).await;
    let repo = FixtureRepo::new(&dir.path().join("work-tree"));
    elsewhere.publish(&repo.dir, "shop.git");
    let moved = GitServer::redirecting(
        &dir.path().join("moved"),
        &format!("http://{}", elsewhere.addr),
    )
    .await;
    let url = moved.url("shop.git");

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
        std::path::Path::new(crate::agent::AGENT),
        &cp.base_url(),
        &dir.path().join("agent"),
        image,
        "allow_local_repositories = false",
    )
    .await;
    let deployment = admin
        .push_repo(&url, "main", &repo.head())
        .await
        .deployments
        .remove(0);
    let failed = admin
        .wait_for_status_in(&deployment.id, &[BuildFailed, AwaitingDeployment])
        .await;
    assert_eq!(failed.status, BuildFailed, "{:?}", failed.reason);
    let reason = failed.reason.unwrap_or_default();
    assert!(
        reason.contains("the repository URL redirects"),
        "{reason}\n{}",
        agent.log_text()
    );
    assert!(!moved.requests().is_empty(), "the first host was asked");
    let leaked: Vec<_> = elsewhere
        .requests()
        .into_iter()
        .filter(|request| request.authorization.is_some())
        .collect();
    assert!(
        leaked.is_empty(),
        "the token followed the redirect: {leaked:?}"
    );
    answers_within_a_second(&cp.base_url()).await;
}

#[tokio::test]
async fn issue_28_a_follow_of_a_deployment_canceled_before_its_build_ends() {
    use reqwest::StatusCode;
    let dir = tempfile::tempdir().unwrap();
    let cp = with_account(dir.path()).await;
    let admin = cp.admin();
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    // No agent: the first push is canceled by the second while still queued.
    let first = admin.push("main", &sha(1)).await.deployments.remove(0);
    admin.push("main", &sha(2)).await;
    admin.wait_for_status(&first.id, BuildCanceled).await;
    let followed = tokio::time::timeout(
        Duration::from_secs(10),
        admin.get(&format!(
            "/api/v1/deployments/{}/logs/system?follow=true",
            first.id
        )),
    )
    .await
    .expect("the API follow ends");
    assert_eq!(followed.status, StatusCode::OK);
    // The dashboard's live stream ends too, with `end`.
    let client = no_redirects();
    let cookie = session_cookie(&client, &cp.base_url()).await;
    let events = tokio::time::timeout(
        Duration::from_secs(10),
        page_text(
            &client,
            &format!(
                "{}/deployments/{}/logs/system/events",
                cp.base_url(),
                first.id
            ),
            &cookie,
        ),
    )
    .await
    .expect("the dashboard follow ends");
    assert!(events.contains("event: end"), "{events}");
    answers_within_a_second(&cp.base_url()).await;
}

#[tokio::test]
async fn issue_28_one_viewer_holds_a_share_of_follows_and_one_client_a_share_of_connections() {
    use reqwest::StatusCode;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let (agent, deployment, job) = claimed_build(&cp, "builder").await;
    agent
        .report(&job, &update(Building))
        .await
        .expect_json::<kiln_protocol::Deployment>(StatusCode::OK)
        .await;
    // One viewer opens 24 follows of a build that goes on: 16 are served, the
    // rest told at once why not, and the agent's calls go on answering.
    let client = reqwest::Client::new();
    let mut follows = Vec::new();
    for _ in 0..24 {
        let response = client
            .get(format!(
                "{}/api/v1/deployments/{}/logs/system?follow=true",
                cp.base_url(),
                deployment.id
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        follows.push(response);
    }
    let statuses: Vec<StatusCode> = follows.iter().map(|response| response.status()).collect();
    let served = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(served, 16, "{statuses:?}");
    let refused = follows.pop().unwrap().text().await.unwrap();
    assert!(
        refused.contains("follows 16 live logs already"),
        "{refused}"
    );
    let started = Instant::now();
    agent
        .report(&job, &update(Building))
        .await
        .expect_json::<kiln_protocol::Deployment>(StatusCode::OK)
        .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(follows);
    answers_within_a_second(&cp.base_url()).await;

    // A server of 10 connections, 4 per client: a client that holds idle and
    // half-open connections gets 4, and everyone else is answered.
    let server = ServerProcess::start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_kiln-server-e2e")),
        &dir.path().join("small"),
        &[
            "--max-connections",
            "10",
            "--max-connections-per-client",
            "4",
            "--header-timeout-seconds",
            "30",
        ],
        None,
    )
    .await;
    let mut held = Vec::new();
    for i in 0..20 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(([127, 0, 0, 2], 0).into()).unwrap();
        let mut stream = socket
            .connect(([127, 0, 0, 1], server.port).into())
            .await
            .unwrap();
        if i % 2 == 0 {
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\n").await;
        }
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut answered = 0;
    for _ in 0..10 {
        let reply = reqwest::Client::new()
            .get(format!("{}/healthz", server.base_url()))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if reply.is_ok_and(|reply| reply.status() == StatusCode::OK) {
            answered += 1;
        }
    }
    assert_eq!(answered, 10, "other clients' requests answered");
    drop(held);
}

/// Ada's session cookie (`name=value`), signed in over HTTP.
async fn session_cookie(client: &reqwest::Client, base: &str) -> String {
    dashboard_session(client, base, "ada", "ada's long password").await
}

#[tokio::test]
async fn issue_28_windows_of_long_lines_are_bounded_in_bytes_and_taken_a_few_at_a_time() {
    use reqwest::StatusCode;
    let dir = tempfile::tempdir().unwrap();
    let cp = with_account(dir.path()).await;
    let (agent, deployment, job) = claimed_build(&cp, "builder").await;
    // 160 lines of 256 KiB: 40 MiB of log a build could print.
    let line = format!("{}\n", "y".repeat(256 << 10));
    let mut log = Vec::new();
    for _ in 0..160 {
        log.extend_from_slice(line.as_bytes());
    }
    let mut offset = 0u64;
    for piece in log.chunks(1 << 20) {
        let reply = agent
            .append_log(&job.job_id, "backend", offset, piece.to_vec())
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        offset += piece.len() as u64;
    }
    let client = no_redirects();
    let cookie = session_cookie(&client, &cp.base_url()).await;
    // 12 windows of 2,000 lines at once.
    let mut windows = Vec::new();
    for _ in 0..12 {
        let (client, cookie) = (client.clone(), cookie.clone());
        let url = format!(
            "{}/deployments/{}/logs/backend/lines?from=0&count=2000",
            cp.base_url(),
            deployment.id
        );
        windows.push(tokio::spawn(async move {
            let reply = client
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), StatusCode::OK);
            reply.bytes().await.unwrap().len()
        }));
    }
    answers_within_a_second(&cp.base_url()).await;
    for window in windows {
        let bytes = window.await.unwrap();
        assert!(bytes < 2 << 20, "a window of {bytes} bytes");
    }
    // Each answer is whole lines of the log from the first asked: the viewer
    // asks on from where one ended.
    let window: serde_json::Value = client
        .get(format!(
            "{}/deployments/{}/logs/backend/lines?from=3&count=2000",
            cp.base_url(),
            deployment.id
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(window["first"], 3);
    assert_eq!(window["total"], 160);
    let lines = window["lines"].as_array().unwrap();
    assert!((1..=16).contains(&lines.len()), "{}", lines.len());
    answers_within_a_second(&cp.base_url()).await;
}

#[tokio::test]
async fn issue_28_the_agent_reads_no_more_of_an_answer_than_a_job_needs() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = HostileControlPlane::start().await;
    let agent = AgentProcess::start_registered(
        std::path::Path::new(crate::agent::AGENT),
        &hostile.base_url(),
        &dir.path().join("agent"),
        "kiln/node:never-used",
        "",
    )
    .await;
    // A job of 40 MiB: a real one is a few KiB.
    let mut job = crate::support::hostile::job(
        "https://github.com/acme/shop.git",
        "0123456789abcdef0123456789abcdef01234567",
    );
    job["message"] = "m".repeat(40 << 20).into();
    hostile.hand_out(job);
    agent
        .until_logged("the answer is longer than 16777216 bytes", 1)
        .await;
    // Refused, not buffered: the agent is alive and still asking.
    assert!(
        agent.log_text().contains("job payload"),
        "{}",
        agent.log_text()
    );
}

#[tokio::test]
async fn issue_28_raw_logs_are_never_sniffed_and_far_offsets_answer_whole() {
    use reqwest::StatusCode;
    let dir = tempfile::tempdir().unwrap();
    let cp = with_account(dir.path()).await;
    let admin = cp.admin();
    let (agent, deployment, job) = claimed_build(&cp, "builder").await;
    let html = b"<html><script>alert(document.cookie)</script>\n".to_vec();
    agent.append_log(&job.job_id, "backend", 0, html).await;
    let client = no_redirects();
    let cookie = session_cookie(&client, &cp.base_url()).await;
    let raw = client
        .get(format!(
            "{}/deployments/{}/logs/backend/raw",
            cp.base_url(),
            deployment.id
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::OK);
    assert_eq!(raw.headers()["x-content-type-options"], "nosniff");
    let api = admin
        .get(&format!(
            "/api/v1/deployments/{}/logs/backend",
            deployment.id
        ))
        .await;
    assert_eq!(api.headers["x-content-type-options"], "nosniff");
    // Offsets far past the end (and past the largest file a disk holds) are
    // an empty answer, whole, not a connection dropped after its status.
    for offset in [1u64 << 45, 1 << 50, (1 << 62) + 12345] {
        let reply = client
            .get(format!(
                "{}/api/v1/deployments/{}/logs/backend?offset={offset}",
                cp.base_url(),
                deployment.id
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK, "{offset}");
        assert_eq!(reply.bytes().await.expect("a whole answer").len(), 0);
    }
    answers_within_a_second(&cp.base_url()).await;
}
