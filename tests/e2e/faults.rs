//! Logs and artifacts under faults, with real processes: the control plane killed
//! and restarted, the network cut, a log flood, secrets in the output. The build
//! (`examples/medusa-shop`'s stand-in) writes the sha256 of the numbered lines it
//! printed into its artifact; the stored log must hash the same.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use kiln_protocol::{Deployment, DeploymentStatus};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use crate::agent::AGENT;
use crate::support::*;

const SERVER: &str = env!("CARGO_BIN_EXE_kiln-server-e2e");

/// A project on `api`'s control plane building `repo`, Production on `main`.
async fn project(api: &Api, repo: &FixtureRepo, variables: serde_json::Value) {
    api.repo_project("shop", &repo.url, variables).await;
}

/// A project whose build prints `lines` lines 10 ms apart, and an agent on
/// `control_plane` to build it: a build long enough to break things during.
async fn slow_build_and_agent(
    api: &Api,
    repo: &FixtureRepo,
    lines: u32,
    control_plane: &str,
    agent_dir: &Path,
    image: &str,
) -> AgentProcess {
    project(
        api,
        repo,
        serde_json::json!([
            {"name": "KILN_FIXTURE_LINES", "value": lines.to_string()},
            {"name": "KILN_FIXTURE_LINE_DELAY_MS", "value": "10"}
        ]),
    )
    .await;
    AgentProcess::start(Path::new(AGENT), control_plane, agent_dir, image, "").await
}

async fn push(api: &Api, repo: &FixtureRepo) -> String {
    api.push_repo(&repo.url, "main", &repo.head())
        .await
        .deployments[0]
        .id
        .clone()
}

/// Polls through outages (connection errors are retried) until the status.
async fn wait_for(
    base_url: impl Fn() -> String,
    id: &str,
    want: DeploymentStatus,
    limit: Duration,
    agent: &AgentProcess,
) -> Deployment {
    let started = Instant::now();
    loop {
        let client = reqwest::Client::new();
        let reply = client
            .get(format!("{}/api/v1/deployments/{id}", base_url()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await;
        if let Ok(reply) = reply {
            if reply.status() == StatusCode::OK {
                let deployment: Deployment = reply.json().await.unwrap();
                if deployment.status == want {
                    return deployment;
                }
                assert!(
                    matches!(
                        deployment.status,
                        DeploymentStatus::Queued | DeploymentStatus::Building
                    ),
                    "deployment ended {}: {:?}\nagent log:\n{}",
                    deployment.status,
                    deployment.reason,
                    agent.log_text()
                );
            }
        }
        assert!(
            started.elapsed() < limit,
            "deployment {id} not {want} after {limit:?}\nagent log:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_log(api: &Api, id: &str, needle: &str) {
    let started = Instant::now();
    while !api
        .get(&format!("/api/v1/deployments/{id}/logs/backend"))
        .await
        .text()
        .contains(needle)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{needle:?} never showed up in the log"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks the artifact against its descriptor and the stored log against what the
/// build printed; returns the number of numbered lines.
async fn verify(api: &Api, deployment: &Deployment) -> usize {
    let descriptor = &deployment.artifacts[0].descriptor;
    let artifact = api
        .get(&format!(
            "/api/v1/deployments/{}/artifacts/backend.tar.gz",
            deployment.id
        ))
        .await;
    assert_eq!(artifact.body.len() as u64, descriptor.size);
    assert_eq!(
        hex::encode(Sha256::digest(&artifact.body)),
        descriptor.sha256,
        "artifact checksum"
    );
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&artifact.body[..]));
    let mut printed = String::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some("printed.sha256") {
            entry.read_to_string(&mut printed).unwrap();
        }
    }
    let log = api
        .get(&format!(
            "/api/v1/deployments/{}/logs/backend",
            deployment.id
        ))
        .await;
    let mut hasher = Sha256::new();
    let mut lines = 0;
    for line in log.body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"fixture-line ") {
            hasher.update(line);
            lines += 1;
        }
    }
    assert_eq!(
        hex::encode(hasher.finalize()),
        printed.trim(),
        "the stored log differs from what the build printed"
    );
    lines
}

#[tokio::test]
async fn control_plane_killed_mid_build_and_restarted_loses_nothing() {
    let Some(_docker) = docker().await else {
        return;
    };
    let image = build_image().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = FixtureRepo::new(dir.path());
    let mut server = ServerProcess::start(Path::new(SERVER), &dir.path().join("server")).await;
    let admin = server.admin();
    let agent = slow_build_and_agent(
        &admin,
        &repo,
        1500,
        &server.base_url(),
        &dir.path().join("agent"),
        image,
    )
    .await;
    let id = push(&admin, &repo).await;
    wait_for_log(&admin, &id, "fixture-line 000000100").await;

    server.kill().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    server.spawn().await;

    let url = server.base_url();
    let built = wait_for(
        || url.clone(),
        &id,
        DeploymentStatus::AwaitingDeployment,
        Duration::from_secs(120),
        &agent,
    )
    .await;
    assert_eq!(verify(&admin, &built).await, 1500);
    assert!(
        agent.log_text().contains("Log upload failed; retrying"),
        "the outage was felt and ridden out"
    );
}

#[tokio::test]
async fn network_cut_for_30_seconds_loses_nothing() {
    let Some(_docker) = docker().await else {
        return;
    };
    let image = build_image().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = FixtureRepo::new(dir.path());
    let cp = ControlPlane::start(&dir.path().join("server")).await;
    let admin = cp.admin();
    let proxy = TcpProxy::start(cp.addr).await;
    let agent = slow_build_and_agent(
        &admin,
        &repo,
        1000,
        &proxy.url(),
        &dir.path().join("agent"),
        image,
    )
    .await;
    let id = push(&admin, &repo).await;
    wait_for_log(&admin, &id, "fixture-line 000000100").await;

    proxy.cut();
    let cut_at = Instant::now();
    // The build finishes while the agent cannot reach the control plane.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = admin.deployment(&id).await;
    assert_eq!(
        during.status,
        DeploymentStatus::Building,
        "nothing is decided while the agent is cut off"
    );
    proxy.restore().await;

    let built = wait_for(
        || cp.base_url(),
        &id,
        DeploymentStatus::AwaitingDeployment,
        Duration::from_secs(120),
        &agent,
    )
    .await;
    eprintln!(
        "network cut: recovered {:.1?} after the cut began",
        cut_at.elapsed()
    );
    assert_eq!(verify(&admin, &built).await, 1000);
    assert_eq!(
        built.attempts,
        1,
        "the lease held through the outage; agent log:\n{}",
        agent.log_text()
    );
}

#[tokio::test]
async fn log_flood_of_200_mib_arrives_whole_and_agent_memory_stays_small() {
    let Some(_docker) = docker().await else {
        return;
    };
    let image = build_image().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = FixtureRepo::new(dir.path());
    // The server keeps as much of each stream as the agent sends.
    let cp = ControlPlane::start_with(&dir.path().join("server"), |config| {
        config.log_limit = 300 << 20;
    })
    .await;
    let admin = cp.admin();
    project(
        &admin,
        &repo,
        serde_json::json!([{"name": "KILN_FIXTURE_FLOOD_MB", "value": "200"}]),
    )
    .await;
    let agent = AgentProcess::start(
        Path::new(AGENT),
        &cp.base_url(),
        &dir.path().join("agent"),
        image,
        "log_limit = \"300MiB\"",
    )
    .await;
    let started = Instant::now();
    let id = push(&admin, &repo).await;
    let built = wait_for(
        || cp.base_url(),
        &id,
        DeploymentStatus::AwaitingDeployment,
        Duration::from_secs(300),
        &agent,
    )
    .await;
    let took = started.elapsed();
    let peak = agent.peak_rss_bytes();
    let lines = verify(&admin, &built).await;
    eprintln!(
        "log flood: {lines} lines (200 MiB) in {took:.1?}, agent peak RSS {} MiB",
        peak >> 20
    );
    assert!(lines > 2_000_000);
    assert!(
        peak < 64 << 20,
        "agent peak RSS {} MiB is over 64 MiB",
        peak >> 20
    );
}

#[tokio::test]
async fn secrets_never_reach_the_stored_log_whole_split_or_base64() {
    let Some(_docker) = docker().await else {
        return;
    };
    let image = build_image().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = FixtureRepo::new(dir.path());
    let cp = ControlPlane::start(&dir.path().join("server")).await;
    let admin = cp.admin();
    let secret = "sk_live_kiln_0123456789abcdef";
    project(
        &admin,
        &repo,
        serde_json::json!([
            {"name": "KILN_FIXTURE_PRINT", "value": secret, "secret": true},
            {"name": "KILN_FIXTURE_PRINT_SPLIT", "value": "1"}
        ]),
    )
    .await;
    let agent = AgentProcess::start(
        Path::new(AGENT),
        &cp.base_url(),
        &dir.path().join("agent"),
        image,
        "",
    )
    .await;
    let id = push(&admin, &repo).await;
    wait_for(
        || cp.base_url(),
        &id,
        DeploymentStatus::AwaitingDeployment,
        Duration::from_secs(120),
        &agent,
    )
    .await;
    let backend = admin
        .get(&format!("/api/v1/deployments/{id}/logs/backend"))
        .await
        .text();
    assert!(backend.contains("whole: ***"), "{backend}");
    assert!(backend.contains("split: *** :split"), "{backend}");
    assert!(backend.contains("base64: ***"), "{backend}");
    let base64 = base64::engine::general_purpose::STANDARD.encode(secret);
    for stream in ["system", "backend", "storefront"] {
        for query in ["", "?timestamps=true"] {
            let text = admin
                .get(&format!("/api/v1/deployments/{id}/logs/{stream}{query}"))
                .await
                .text();
            assert!(
                !text.contains(secret) && !text.contains(&base64[..20]),
                "{stream} leaks the secret"
            );
        }
    }
    // Nor does the agent's own log.
    assert!(!agent.log_text().contains(secret));
}

/// Issue 17: two `kiln-server` replicas on one PostgreSQL and one S3 bucket
/// behind a balancer; the agent's calls land on either. One is SIGKILLed
/// mid-build: the agent's long-polls and appends go on through the other, the
/// build reaches `awaiting_deployment`, and the log read back through the
/// survivor is byte-exact. Runs in CI's PostgreSQL pass (`moto_server` for S3).
#[tokio::test]
async fn replicas_one_killed_mid_build_lose_nothing() {
    let required = std::env::var("KILN_REQUIRE_REPLICAS").is_ok();
    let dir = tempfile::tempdir().unwrap();
    let (Some(database_url), Some(bucket)) = (
        test_database(&dir.path().join("shared")),
        TestBucket::create().await,
    ) else {
        assert!(
            !required,
            "KILN_REQUIRE_REPLICAS needs KILN_TEST_DATABASE_URL and KILN_TEST_S3_ENDPOINT"
        );
        return;
    };
    let Some(_docker) = docker().await else {
        return;
    };
    let image = build_image().await;
    let repo = FixtureRepo::new(dir.path());
    let mut envs = bucket.server_env();
    envs.push(("KILN_DATABASE_URL".to_owned(), database_url));
    envs.push((
        "KILN_LOG_COMPACTION_DELAY_SECONDS".to_owned(),
        "1".to_owned(),
    ));
    let mut first =
        ServerProcess::start_with_env(Path::new(SERVER), &dir.path().join("first"), envs.clone())
            .await;
    let second =
        ServerProcess::start_with_env(Path::new(SERVER), &dir.path().join("second"), envs.clone())
            .await;
    let balancer = TcpProxy::balance(
        [&first, &second]
            .iter()
            .map(|server| format!("127.0.0.1:{}", server.port).parse().unwrap())
            .collect(),
    )
    .await;
    let (via_first, via_second) = (first.admin(), second.admin());
    let agent = slow_build_and_agent(
        &via_first,
        &repo,
        1500,
        &balancer.url(),
        &dir.path().join("agent"),
        image,
    )
    .await;
    let id = push(&via_second, &repo).await;
    // Both replicas see the log as it grows, whichever took each append.
    wait_for_log(&via_first, &id, "fixture-line 000000100").await;
    wait_for_log(&via_second, &id, "fixture-line 000000100").await;

    first.kill().await;

    let survivor = second.base_url();
    let built = wait_for(
        || survivor.clone(),
        &id,
        DeploymentStatus::AwaitingDeployment,
        Duration::from_secs(180),
        &agent,
    )
    .await;
    assert_eq!(verify(&via_second, &built).await, 1500);
    let keys = bucket.keys().await;
    assert!(
        keys.iter()
            .any(|key| key.starts_with(&format!("kiln/artifacts/{id}/"))),
        "the artifact is in the object store: {keys:?}"
    );
    assert!(
        keys.iter().any(|key| key.starts_with("kiln/logs/")),
        "the log is in the object store"
    );

    // The ended job's log, one object per append while it ran, becomes one
    // object per stream; a replica that never saw it reads it byte-exact.
    let started = Instant::now();
    loop {
        let keys = bucket.keys().await;
        let streams: HashSet<_> = keys
            .iter()
            .filter(|key| key.starts_with("kiln/logs/"))
            .map(|key| key.rsplit_once('/').unwrap().0)
            .collect();
        let log_keys: Vec<_> = keys
            .iter()
            .filter(|key| key.starts_with("kiln/logs/"))
            .collect();
        if log_keys.len() == streams.len() {
            assert!(
                log_keys.iter().any(|key| key.contains("-compacted-")),
                "the backend's log, of many appends, was compacted: {log_keys:?}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the log was not compacted: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let third =
        ServerProcess::start_with_env(Path::new(SERVER), &dir.path().join("third"), envs).await;
    assert_eq!(verify(&third.admin(), &built).await, 1500);
}

/// Where the deploy hook of a replica test notes its runs (a file `runs`) and
/// finds the test's word (files the test writes).
struct HookRuns(PathBuf);

impl HookRuns {
    fn new(dir: &Path) -> HookRuns {
        let runs = dir.join("runs");
        std::fs::create_dir(&runs).unwrap();
        HookRuns(runs)
    }

    /// The replicas' environment: the database, and a deploy hook running
    /// `script` in this directory.
    fn envs(&self, database_url: String, script: &str) -> Vec<(String, String)> {
        vec![
            ("KILN_DATABASE_URL".to_owned(), database_url),
            (
                "KILN_DEPLOY_HOOK".to_owned(),
                format!("cd '{}' && {script}", self.0.display()),
            ),
        ]
    }

    fn noted(&self) -> String {
        std::fs::read_to_string(self.0.join("runs")).unwrap_or_default()
    }

    /// Waits until the hook has touched `word` (`first`: its first run began).
    async fn until_touched(&self, word: &str) {
        let started = Instant::now();
        while !self.0.join(word).exists() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the hook never touched {word}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn say(&self, word: &str) {
        std::fs::write(self.0.join(word), "").unwrap();
    }
}

/// A project with a Production environment on `main`.
async fn production(admin: &Api) {
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
}

/// Issue 17: two replicas on one PostgreSQL; the one running a deploy hook is
/// SIGKILLed. While it lived, it held the deploy and the leader left it alone;
/// once its hold lapses, the leader runs the deploy again and it goes live.
/// Runs in CI's PostgreSQL pass.
#[tokio::test]
async fn replicas_one_killed_mid_deploy_has_it_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let Some(database_url) = test_database(&dir.path().join("shared")) else {
        return;
    };
    let runs = HookRuns::new(dir.path());
    // Each run of the hook notes where it releases; the first then waits until
    // the test ends, as a hook does whose server died under it.
    let mut envs = runs.envs(
        database_url,
        "echo \"$KILN_RELEASE_DIR\" >> runs; [ -e first ] && exit 0; touch first; \
         while [ ! -e done ]; do sleep 0.1; done; touch ended",
    );
    envs.push(("KILN_LEASE_SECONDS".to_owned(), "2".to_owned()));
    // The second leads (it would take the deploy over) before the first starts.
    let second =
        ServerProcess::start_with_env(Path::new(SERVER), &dir.path().join("second"), envs.clone())
            .await;
    let started = Instant::now();
    while !std::fs::read_to_string(dir.path().join("second.log"))
        .unwrap_or_default()
        .contains("now runs the singleton work")
    {
        assert!(started.elapsed() < Duration::from_secs(10), "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut first =
        ServerProcess::start_with_env(Path::new(SERVER), &dir.path().join("first"), envs).await;
    let (via_first, via_second) = (first.admin(), second.admin());
    production(&via_first).await;
    let deployment = via_first.push("main", &sha(1)).await.deployments.remove(0);
    let agent = first.register_agent("builder", &[]).await;
    agent.build_next().await;
    via_first.deploy(&deployment.id).await;
    runs.until_touched("first").await;
    // Three leases on, the first replica still holds its deploy.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ran = runs.noted();
    assert_eq!(ran.lines().count(), 1, "the deploy ran twice: {ran}");
    assert_eq!(
        via_second.deployment(&deployment.id).await.status,
        DeploymentStatus::Deploying
    );

    first.kill().await;
    let live = via_second
        .wait_for_status_in(&deployment.id, &[DeploymentStatus::Live])
        .await;
    runs.say("done");
    // The killed replica's hook outlives it: let it end before its directory goes.
    runs.until_touched("ended").await;
    let ran = runs.noted();
    let releases: Vec<&str> = ran.lines().collect();
    assert_eq!(releases.len(), 2, "{ran}");
    assert!(releases[0].starts_with(&dir.path().join("first").display().to_string()));
    assert!(releases[1].starts_with(&dir.path().join("second").display().to_string()));
    assert!(live.reason.is_none(), "{:?}", live.reason);
}

/// Two replicas on one PostgreSQL deploy one environment, each a different
/// deployment: the one begun second waits for the first to end, though another
/// replica runs it, and ends live. Runs in CI's PostgreSQL pass.
#[tokio::test]
async fn replicas_deploying_one_environment_take_turns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(database_url) = test_database(&dir.path().join("shared")) else {
        return;
    };
    let runs = HookRuns::new(dir.path());
    // The first run of the hook waits for the test's word.
    let envs = runs.envs(
        database_url,
        "echo \"start $KILN_DEPLOYMENT_ID\" >> runs; \
         if [ ! -e first ]; then touch first; while [ ! -e go ]; do sleep 0.1; done; fi; \
         echo \"end $KILN_DEPLOYMENT_ID\" >> runs",
    );
    let first =
        ServerProcess::start_with_env(Path::new(SERVER), &dir.path().join("first"), envs.clone())
            .await;
    let second =
        ServerProcess::start_with_env(Path::new(SERVER), &dir.path().join("second"), envs).await;
    let (via_first, via_second) = (first.admin(), second.admin());
    production(&via_first).await;
    let agent = first.register_agent("builder", &[]).await;
    let older = via_first.push("main", &sha(1)).await.deployments.remove(0);
    agent.build_next().await;
    let newer = via_first.push("main", &sha(2)).await.deployments.remove(0);
    agent.build_next().await;

    via_first.deploy(&older.id).await;
    runs.until_touched("first").await;
    via_second.deploy(&newer.id).await;
    // The newer waits on the other replica while the older runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(runs.noted(), format!("start {}\n", older.id));

    runs.say("go");
    via_second
        .wait_for_status_in(&newer.id, &[DeploymentStatus::Live])
        .await;
    assert_eq!(
        runs.noted(),
        format!(
            "start {0}\nend {0}\nstart {1}\nend {1}\n",
            older.id, newer.id
        )
    );
    let replaced = via_first.deployment(&older.id).await;
    assert_eq!(replaced.status, DeploymentStatus::Ready);
}
