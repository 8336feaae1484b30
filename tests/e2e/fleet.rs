//! Issue 17, the fleet: registration tokens as objects (one-time, expiring,
//! revocable), agents listed with what they say of their hosts, paused, resumed
//! and revoked (over the API and with `kiln-server agents`), and jobs authorized
//! by labels so a pull request's preview never reaches a host that builds with
//! production secrets.

use std::time::{Duration, Instant};

use kiln_protocol::{
    AgentList, AgentState, CreateProject, CreateRegistrationToken, DeploymentStatus::*, HostFacts,
    PullRequestAction, PullRequestEvent, RegisterAgentRequest, RegisterAgentResponse,
    RegistrationTokenInfo, RegistrationTokenList,
};
use reqwest::{Method, StatusCode};

use crate::support::*;

const SERVER: &str = env!("CARGO_BIN_EXE_kiln-server-e2e");

/// Registers an agent with `token` in the header, as `kiln-agent register` does.
async fn register(cp: &ControlPlane, token: &str, name: &str, labels: &[&str]) -> Reply {
    let anonymous = cp.anonymous();
    anonymous
        .send(
            anonymous
                .request(Method::POST, "/api/v1/agents/register")
                .bearer_auth(token)
                .json(&RegisterAgentRequest {
                    registration_token: String::new(),
                    name: name.to_owned(),
                    labels: labels.iter().map(|label| label.to_string()).collect(),
                    facts: Some(HostFacts {
                        cores: 8,
                        memory_bytes: 32 << 30,
                        docker_version: "Docker 26.1.5 (API 1.45)".into(),
                        free_disk_bytes: 200 << 30,
                    }),
                }),
        )
        .await
}

async fn agent_api(cp: &ControlPlane, token: &str, name: &str, labels: &[&str]) -> (String, Api) {
    let registered: RegisterAgentResponse = register(cp, token, name, labels)
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    (registered.agent_id, cp.as_token(&registered.token))
}

async fn make_token(admin: &Api, request: CreateRegistrationToken) -> RegistrationTokenInfo {
    admin
        .post_json("/api/v1/registration-tokens", &request)
        .await
        .expect_json(StatusCode::CREATED)
        .await
}

async fn agents(admin: &Api) -> AgentList {
    admin
        .get("/api/v1/agents")
        .await
        .expect_json(StatusCode::OK)
        .await
}

#[tokio::test]
async fn issue_17_registration_tokens_are_one_time_expiring_or_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();

    let once = make_token(
        &admin,
        CreateRegistrationToken {
            name: Some("host 7".into()),
            one_time: true,
            expires_in_seconds: None,
            labels: Vec::new(),
        },
    )
    .await;
    let secret = once.token.clone().expect("shown when made");
    assert_eq!(
        register(&cp, &secret, "host-7", &[]).await.status,
        StatusCode::CREATED
    );
    let again = register(&cp, &secret, "host-7b", &[]).await;
    let message = again.expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(message.contains("was for one agent"), "{message}");

    // Listed without their secret.
    let listed: RegistrationTokenList = admin
        .get("/api/v1/registration-tokens")
        .await
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(listed.registration_tokens.len(), 1);
    assert!(listed.registration_tokens[0].token.is_none());
    assert!(listed.registration_tokens[0].used_at.is_some());

    let soon = make_token(
        &admin,
        CreateRegistrationToken {
            expires_in_seconds: Some(1),
            ..Default::default()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = register(&cp, soon.token.as_deref().unwrap(), "late", &[]).await;
    assert!(expired
        .expect_error(StatusCode::UNAUTHORIZED, "unauthorized")
        .contains("expired"));

    let many = make_token(&admin, CreateRegistrationToken::default()).await;
    let many_secret = many.token.clone().unwrap();
    assert_eq!(
        register(&cp, &many_secret, "a", &[]).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        register(&cp, &many_secret, "b", &[]).await.status,
        StatusCode::CREATED
    );
    admin
        .send(admin.request(
            Method::DELETE,
            &format!("/api/v1/registration-tokens/{}", many.id),
        ))
        .await
        .expect_json::<RegistrationTokenInfo>(StatusCode::OK)
        .await;
    let revoked = register(&cp, &many_secret, "c", &[]).await;
    assert!(revoked
        .expect_error(StatusCode::UNAUTHORIZED, "unauthorized")
        .contains("revoked"));

    // The bootstrap token keeps working; an unknown one names what to do.
    assert_eq!(
        register(&cp, REGISTRATION_TOKEN, "boot", &[]).await.status,
        StatusCode::CREATED
    );
    let unknown = register(&cp, "not-a-token", "x", &[]).await;
    assert!(unknown
        .expect_error(StatusCode::UNAUTHORIZED, "unauthorized")
        .contains("registration-tokens"));
    assert_eq!(agents(&admin).await.agents.len(), 4);
}

/// A control plane with project `shop` and its Production environment on
/// `main`; its data dir lives in the returned directory.
async fn shop_server() -> (tempfile::TempDir, std::path::PathBuf, ControlPlane, Api) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("server");
    let cp = ControlPlane::start(&data_dir).await;
    let admin = cp.admin();
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    (dir, data_dir, cp, admin)
}

#[tokio::test]
async fn issue_17_agents_are_listed_paused_resumed_and_revoked() {
    let (_dir, data_dir, cp, admin) = shop_server().await;
    let (first_id, first) = agent_api(&cp, REGISTRATION_TOKEN, "builder-1", &["linux"]).await;
    let (_, second) = agent_api(&cp, REGISTRATION_TOKEN, "builder-2", &["linux"]).await;

    // Listed, with what the agent said of its host.
    assert_eq!(first.claim(0).await, None);
    let listed = agents(&admin).await;
    let one = listed
        .agents
        .iter()
        .find(|agent| agent.id == first_id)
        .unwrap();
    assert_eq!(one.facts.as_ref().unwrap().cores, 8);
    assert_eq!(one.state, AgentState::Idle);
    assert!(one.last_contact_at.is_some());

    // Paused: claims are answered at once, and no job goes to it.
    admin.set_paused(&first_id, true).await;
    let deployment = admin.push("main", &sha(1)).await.deployments.remove(0);
    let started = Instant::now();
    let paused = first
        .post_json(
            "/api/v1/agent/jobs/claim",
            &kiln_protocol::ClaimRequest {
                wait_seconds: Some(10),
                facts: None,
                holding_back: None,
                roles: Vec::new(),
            },
        )
        .await;
    assert_eq!(paused.status, StatusCode::NO_CONTENT);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once"
    );
    assert_eq!(paused.headers["retry-after"], "10");
    assert_eq!(admin.deployment(&deployment.id).await.status, Queued);
    let one = agents(&admin)
        .await
        .agents
        .into_iter()
        .find(|agent| agent.id == first_id)
        .unwrap();
    assert_eq!((one.state, one.paused), (AgentState::Paused, true));

    // Resumed (with the command line, beside the running server): it builds.
    let resumed = std::process::Command::new(SERVER)
        .args(["agents", "resume", &first_id, "--data-dir"])
        .arg(&data_dir)
        .envs(database_env(&data_dir))
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let job = first.claim(5).await.expect("the job, after resuming");
    let busy = agents(&admin)
        .await
        .agents
        .into_iter()
        .find(|agent| agent.id == first_id)
        .unwrap();
    assert_eq!(busy.state, AgentState::Busy);
    assert_eq!(busy.running_jobs[0].job_id, job.job_id);

    // Listed by the command line too, as JSON.
    let listed = std::process::Command::new(SERVER)
        .args(["agents", "list", "--format", "json", "--data-dir"])
        .arg(&data_dir)
        .envs(database_env(&data_dir))
        .output()
        .unwrap();
    let listed: AgentList = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.agents.len(), 2);

    // Revoked: its next call is refused, and its job goes to another agent.
    let revoked = admin
        .send(admin.request(Method::DELETE, &format!("/api/v1/agents/{first_id}")))
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    let refused = first.report(&job, &update(AwaitingDeployment)).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let taken_over = second
        .claim(10)
        .await
        .expect("the revoked agent's job, queued again");
    assert_eq!(taken_over.deployment_id, deployment.id);
    assert_eq!(taken_over.attempt, 2);
    assert!(agents(&admin)
        .await
        .agents
        .iter()
        .all(|agent| agent.id != first_id));
}

/// A claim that says the agent is holding back (its disk is low).
async fn claim_holding_back(agent: &Api, reason: &str) -> Reply {
    agent
        .post_json(
            "/api/v1/agent/jobs/claim",
            &kiln_protocol::ClaimRequest {
                wait_seconds: Some(10),
                facts: None,
                holding_back: Some(reason.to_owned()),
                roles: Vec::new(),
            },
        )
        .await
}

#[tokio::test]
async fn issue_17_an_agent_holding_back_gets_no_job_and_the_fleet_sees_why() {
    let (_dir, data_dir, cp, admin) = shop_server().await;
    let (id, agent) = agent_api(&cp, REGISTRATION_TOKEN, "builder", &[]).await;
    let deployment = admin.push("main", &sha(1)).await.deployments.remove(0);
    let listed = |agents: AgentList| agents.agents.into_iter().find(|a| a.id == id).unwrap();

    // Answered at once, with when to ask again; the job waits for it.
    let reason =
        "only 1.2 GiB free under work_dir /var/lib/kiln-agent/work (min_free_disk is 2 GiB)";
    let started = Instant::now();
    let held = claim_holding_back(&agent, reason).await;
    assert_eq!(held.status, StatusCode::NO_CONTENT);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once"
    );
    assert_eq!(held.headers["retry-after"], "10");
    let waiting = admin.deployment(&deployment.id).await;
    assert_eq!(waiting.status, Queued);
    assert_eq!(
        waiting.waiting_for,
        Some(format!(
            "no agent that may build it is available: builder claims no jobs: {reason}"
        ))
    );
    let shown = listed(agents(&admin).await);
    assert_eq!(shown.holding_back.as_deref(), Some(reason));
    assert_eq!(shown.state, AgentState::Idle);
    let text = std::process::Command::new(SERVER)
        .args(["agents", "list", "--data-dir"])
        .arg(&data_dir)
        .envs(database_env(&data_dir))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains(reason));

    // A reason is one bounded line.
    for bad in ["two\nlines".to_owned(), "x".repeat(2000), String::new()] {
        let refused = claim_holding_back(&agent, &bad).await;
        assert!(refused
            .expect_error(StatusCode::BAD_REQUEST, "invalid_body")
            .contains("field `holding_back`"));
    }

    // A plain claim takes the job and clears the reason.
    let job = agent.claim(5).await.expect("the job, once it claims again");
    assert_eq!(job.deployment_id, deployment.id);
    assert_eq!(listed(agents(&admin).await).holding_back, None);
}

#[tokio::test]
async fn issue_17_a_preview_never_reaches_a_host_that_builds_production() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let project = admin
        .create_project_with(CreateProject {
            long_lived_agent_labels: vec!["trusted".into()],
            preview_agent_labels: vec!["previews".into()],
            ..CreateProject::new("shop", REPO)
        })
        .await;
    assert_eq!(project.long_lived_agent_labels, ["trusted"]);
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let (_, trusted) = agent_api(&cp, REGISTRATION_TOKEN, "prod-host", &["trusted"]).await;
    let (_, untrusted) = agent_api(&cp, REGISTRATION_TOKEN, "preview-host", &["previews"]).await;

    let preview = admin
        .post_json(
            "/api/v1/events/pull_request",
            &PullRequestEvent {
                repository: REPO.into(),
                number: 9,
                action: PullRequestAction::Opened,
                branch: "feature".into(),
                sha: sha(2),
                author: "Mallory".into(),
                message: "Preview".into(),
                people: Default::default(),
                base_branch: Some("main".into()),
            },
        )
        .await
        .expect_json::<kiln_protocol::EventOutcome>(StatusCode::CREATED)
        .await
        .deployments
        .remove(0);
    let production = admin.push("main", &sha(1)).await.deployments.remove(0);
    // The production host takes production's job and never the preview's.
    let job = trusted.claim(2).await.expect("production's job");
    assert_eq!(job.deployment_id, production.id);
    assert_eq!(
        trusted.claim(1).await,
        None,
        "the preview is not for this host"
    );
    let job = untrusted.claim(2).await.expect("the preview's job");
    assert_eq!(job.deployment_id, preview.id);
}

/// Two replicas on one PostgreSQL (CI's PostgreSQL pass): exactly one leads
/// (lease reaper, git-host courier, deploy resumption), a push through one
/// wakes an agent's claim parked on the other, and when the leader stops the
/// other takes over.
#[tokio::test]
async fn issue_17_replicas_elect_one_leader_and_wake_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = test_database(&dir.path().join("shared")) else {
        return;
    };
    let replica = |name: &'static str| {
        let (dir, url) = (dir.path().join(name), url.clone());
        async move {
            ControlPlane::start_with(&dir, |config| {
                config.database_url = Some(url);
                // Only NOTIFY can wake the parked claim below in time.
                config.missed_wake_recheck = Duration::from_secs(600);
            })
            .await
        }
    };
    let (first, second) = (replica("first").await, replica("second").await);
    let leaders = |a: &ControlPlane, b: &ControlPlane| [a.is_leader(), b.is_leader()];
    let deadline = Instant::now() + Duration::from_secs(10);
    while leaders(&first, &second).iter().filter(|&&l| l).count() != 1 {
        assert!(Instant::now() < deadline, "no single leader emerged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            leaders(&first, &second).iter().filter(|&&l| l).count(),
            1,
            "one leader at a time"
        );
    }

    // An agent long-polls the second replica; the push lands on the first.
    let admin = first.admin();
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let agent = second.register_agent("builder", &[]).await;
    let claim = tokio::spawn(async move { agent.claim(25).await });
    second.until_parked(kiln_control_plane::Wait::Claim).await;
    let queued = admin.push("main", &sha(1)).await.deployments[0].id.clone();
    let job = claim.await.unwrap().expect("the parked claim got the job");
    assert_eq!(job.deployment_id, queued);

    // The leader stops; the other replica takes over.
    let (leader, follower) = if first.is_leader() {
        (first, second)
    } else {
        (second, first)
    };
    leader.stop().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !follower.is_leader() {
        assert!(Instant::now() < deadline, "the follower never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn issue_17_metrics_show_the_queue_and_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let address: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let cp = ControlPlane::start_with(dir.path(), |config| {
        config.metrics_listen = Some(address);
    })
    .await;
    let admin = cp.admin();
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let scrape = || async {
        let reply = reqwest::get(format!("http://{address}/metrics"))
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        crate::operate::parse_metrics(&reply.text().await.unwrap())
    };

    // On PostgreSQL the lone replica leads once its listener holds the lock.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cp.is_leader() {
        assert!(Instant::now() < deadline, "the lone replica never led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let empty = scrape().await;
    assert_eq!(empty["kiln_server_deployments{status=\"queued\"}"], 0.0);
    assert_eq!(empty["kiln_server_queue_oldest_seconds"], 0.0);
    assert_eq!(empty["kiln_server_agents{state=\"idle\"}"], 0.0);
    assert_eq!(empty["kiln_server_leader"], 1.0);

    let (agent_id, agent) = agent_api(&cp, REGISTRATION_TOKEN, "builder-1", &[]).await;
    // Heard from (an empty claim), then paused: a push waits in the queue.
    assert_eq!(agent.claim(0).await, None);
    admin.set_paused(&agent_id, true).await;
    admin.push("main", &sha(1)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let waiting = scrape().await;
    assert_eq!(waiting["kiln_server_deployments{status=\"queued\"}"], 1.0);
    assert_eq!(waiting["kiln_server_agents{state=\"paused\"}"], 1.0);
    let oldest = waiting["kiln_server_queue_oldest_seconds"];
    assert!((1.0..30.0).contains(&oldest), "{oldest}");

    admin.set_paused(&agent_id, false).await;
    agent.claim(5).await.unwrap();
    let building = scrape().await;
    assert_eq!(building["kiln_server_deployments{status=\"queued\"}"], 0.0);
    assert_eq!(
        building["kiln_server_deployments{status=\"building\"}"],
        1.0
    );
    assert_eq!(building["kiln_server_queue_oldest_seconds"], 0.0);
    assert_eq!(building["kiln_server_agents{state=\"busy\"}"], 1.0);
    assert_eq!(building["kiln_server_agents{state=\"paused\"}"], 0.0);
}

#[tokio::test]
async fn issue_28_an_agent_carries_only_the_labels_its_registration_token_grants() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    // A one-time token made for a preview host.
    let preview = make_token(
        &admin,
        CreateRegistrationToken {
            name: Some("preview host".into()),
            one_time: true,
            labels: vec!["preview".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(preview.labels, ["preview"]);
    let secret = preview.token.clone().unwrap();
    let refused = register(&cp, &secret, "sneaky", &["preview", "trusted"]).await;
    let message = refused.expect_error(StatusCode::FORBIDDEN, "forbidden");
    assert!(
        message.contains(&format!(
            "registration token {} grants the labels [preview], not trusted",
            preview.id
        )),
        "{message}"
    );
    // The refusal spent nothing: the token still registers what it grants.
    let (agent_id, _) = agent_api(&cp, &secret, "preview-1", &["preview"]).await;
    // A token made without labels grants none.
    let plain = make_token(&admin, CreateRegistrationToken::default()).await;
    register(&cp, plain.token.as_deref().unwrap(), "plain", &["trusted"])
        .await
        .expect_error(StatusCode::FORBIDDEN, "forbidden");
    // The server's own token is the operator's: any label.
    let (boot_id, _) = agent_api(&cp, REGISTRATION_TOKEN, "trusted-1", &["trusted"]).await;
    let listed = agents(&admin).await;
    let from = |id: &str| {
        listed
            .agents
            .iter()
            .find(|agent| agent.id == id)
            .and_then(|agent| agent.labels_from.clone())
            .unwrap()
    };
    assert_eq!(
        from(&agent_id),
        format!("registration token {}", preview.id)
    );
    assert!(from(&boot_id).contains("KILN_REGISTRATION_TOKEN"));
    assert_eq!(listed.agents.len(), 2, "{listed:?}");
    // `kiln-server agents` says the same.
    let output = std::process::Command::new(SERVER)
        .args(["agents", "list", "--data-dir"])
        .arg(dir.path())
        .envs(database_env(dir.path()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&format!("preview\tregistration token {}", preview.id)),
        "{text}"
    );
    crate::review::answers_within_a_second(&cp.base_url()).await;
}
