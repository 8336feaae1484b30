//! The whole loop with real parts: control plane on loopback, the `kiln-agent`
//! binary, Docker, a git repository. Push → claim → clone → build in a container →
//! `awaiting_deployment` with the artifact, or a failure a person understands.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_protocol::{CreateProject, DeploymentStatus::*};
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use crate::support::*;

pub const AGENT: &str = env!("CARGO_BIN_EXE_kiln-agent-e2e");

/// A control plane with one project (the fixture repo) and a Production
/// environment on `main` carrying `variables`; `None` when Docker is absent.
pub(crate) async fn world(variables: serde_json::Value) -> Option<World> {
    World::new(Path::new(AGENT), variables, None).await
}

/// Like `world`, with the project's storefront path set.
pub(crate) async fn world_with(
    variables: serde_json::Value,
    storefront_path: Option<&str>,
) -> Option<World> {
    World::new(Path::new(AGENT), variables, storefront_path).await
}

fn untar(bytes: &[u8]) -> Vec<(String, String)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut files = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            files.push((entry.path().unwrap().display().to_string(), text));
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn backend_builds_to_awaiting_deployment_with_its_artifact() {
    let Some(world) = world(serde_json::json!([{"name": "JWT_SECRET", "value": "jwt-secret-value-123", "secret": true}])).await else { return };
    let agent = world.agent("agent", "").await;
    let deployment = world.push(&world.repo.head()).await;
    let built = world
        .settle(&deployment.id, AwaitingDeployment, &agent)
        .await;
    assert_eq!(
        built.backend_status,
        kiln_protocol::ComponentStatus::Succeeded
    );
    // The agent told the control plane what its host is (issue 17).
    let fleet: kiln_protocol::AgentList = world
        .admin
        .get("/api/v1/agents")
        .await
        .expect_json(StatusCode::OK)
        .await;
    let facts = fleet.agents[0].facts.clone().expect("host facts");
    assert!(
        facts.cores >= 1 && facts.memory_bytes > 0 && facts.free_disk_bytes > 0,
        "{facts:?}"
    );
    assert!(facts.docker_version.starts_with("Docker "), "{facts:?}");
    assert!(fleet.agents[0]
        .version
        .as_deref()
        .unwrap_or_default()
        .starts_with("kiln-agent/"));

    let artifact = &built.artifacts[0].descriptor;
    assert_eq!(artifact.name, "backend.tar.gz");
    let download = world
        .admin
        .get(&format!(
            "/api/v1/deployments/{}/artifacts/backend.tar.gz",
            deployment.id
        ))
        .await;
    assert_eq!(download.body.len() as u64, artifact.size);
    assert_eq!(hex::encode(Sha256::digest(&download.body)), artifact.sha256);
    let files: Vec<String> = untar(&download.body)
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    assert_eq!(
        files,
        [
            "medusa-config.js",
            "package-lock.json",
            "package.json",
            "printed.sha256",
            "public/admin/assets/index.js",
            "public/admin/index.html",
            "src/api/health/route.js",
            "tools/medusa-stand-in/medusa.js",
            "tools/medusa-stand-in/package.json"
        ]
    );

    let backend = world.log(&deployment.id, "backend").await;
    assert!(
        backend.contains("Backend build completed successfully"),
        "{backend}"
    );
    assert!(
        backend.contains("added 1 package"),
        "the install ran: {backend}"
    );
    let system = world.log(&deployment.id, "system").await;
    assert!(
        system.contains("Checked out") && system.contains("Uploaded backend.tar.gz"),
        "{system}"
    );
    assert!(world.log(&deployment.id, "storefront").await.is_empty());

    let job_id = built.current_job_id.unwrap();
    assert!(
        containers_of_job(&world.docker, &job_id).await.is_empty(),
        "containers are removed"
    );
    // Both go right after the final report, which the test may see first.
    let workspace = agent.dir.join("work").join(&job_id);
    let spool = agent.dir.join("state/spool").join(&job_id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (workspace.exists() || spool.exists()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!workspace.exists(), "the workspace is removed");
    assert!(!spool.exists(), "the delivered spool is removed");
}

#[tokio::test]
async fn build_script_without_medusa_build_fails_early() {
    let Some(world) = world(serde_json::json!([])).await else {
        return;
    };
    let agent = world.agent("agent", "").await;
    let sha = world.repo.commit("tsc only", |dir| {
        let package = std::fs::read_to_string(dir.join("package.json")).unwrap();
        std::fs::write(
            dir.join("package.json"),
            package.replace("\"medusa build\"", "\"tsc -p .\""),
        )
        .unwrap();
    });
    let deployment = world.push(&sha).await;
    let failed = world.settle(&deployment.id, BuildFailed, &agent).await;
    let reason = failed.reason.unwrap();
    assert!(
        reason.contains("does not run `medusa build`") && reason.contains("tsc -p ."),
        "{reason}"
    );
    assert!(
        world.log(&deployment.id, "backend").await.is_empty(),
        "nothing was installed or built"
    );
}

#[tokio::test]
async fn failing_build_reports_its_exit_code() {
    let Some(world) = world(serde_json::json!([{"name": "KILN_FIXTURE_EXIT", "value": "3"}])).await
    else {
        return;
    };
    let agent = world.agent("agent", "").await;
    let deployment = world.push(&world.repo.head()).await;
    let failed = world.settle(&deployment.id, BuildFailed, &agent).await;
    assert_eq!(
        failed.reason.as_deref(),
        Some("`npm run build` (build) exited with code 3")
    );
    assert_eq!(
        failed.backend_status,
        kiln_protocol::ComponentStatus::Failed
    );
    assert!(world
        .log(&deployment.id, "backend")
        .await
        .contains("Build failed on purpose"));
}

#[tokio::test]
async fn out_of_memory_build_says_so() {
    let Some(world) = world(serde_json::json!([{"name": "KILN_FIXTURE_OOM", "value": "1"}])).await
    else {
        return;
    };
    let agent = world.agent("agent", "memory = \"256MiB\"").await;
    let deployment = world.push(&world.repo.head()).await;
    let failed = world.settle(&deployment.id, BuildFailed, &agent).await;
    assert_eq!(
        failed.reason.as_deref(),
        Some("`npm run build` (build) ran out of memory (limit 256 MiB); raise the agent's `memory` setting (KILN_MEMORY) or make the build use less")
    );
}

#[tokio::test]
async fn newer_commit_cancels_the_running_build_and_its_container_goes() {
    let Some(world) =
        world(serde_json::json!([{"name": "KILN_FIXTURE_SLEEP", "value": "120"}])).await
    else {
        return;
    };
    let agent = world.agent("agent", "").await;
    let first = world.push(&world.repo.head()).await;
    let building = world.wait_until_building(&first.id).await;
    let job_id = building.current_job_id.unwrap();
    assert_eq!(containers_of_job(&world.docker, &job_id).await.len(), 1);

    let pushed = Instant::now();
    let newer = world.repo.commit("newer", |_| {});
    let second = world.push(&newer).await;
    loop {
        if containers_of_job(&world.docker, &job_id).await.is_empty() {
            break;
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(20),
            "the old container is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "cancel: newer push to old container gone in {:?}",
        pushed.elapsed()
    );
    let canceled = world.admin.deployment(&first.id).await;
    assert_eq!(canceled.status, BuildCanceled);
    assert!(canceled.reason.unwrap().contains(&second.id));
    // The agent is free again: it picks up the newer commit.
    let next = world.admin.deployment(&second.id).await;
    assert!(
        matches!(next.status, Queued | Building),
        "{:?}",
        next.status
    );
    let system = wait_for_text(&world, &first.id, "system", "Build canceled").await;
    assert!(system.contains("Build canceled"), "{system}");
    drop(agent);
}

async fn wait_for_text(world: &World, id: &str, stream: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = world.log(id, stream).await;
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sigterm_lets_the_build_finish_within_grace_then_cancels_it() {
    let Some(world) =
        world(serde_json::json!([{"name": "KILN_FIXTURE_SLEEP", "value": "120"}])).await
    else {
        return;
    };
    let mut agent = world.agent("agent", "").await;
    let deployment = world.push(&world.repo.head()).await;
    let building = world.wait_until_building(&deployment.id).await;
    let job_id = building.current_job_id.unwrap();
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "the agent exits cleanly: {status:?}\n{}",
        agent.log_text()
    );
    let canceled = world.admin.deployment(&deployment.id).await;
    assert_eq!(canceled.status, BuildCanceled, "{:?}", canceled.reason);
    assert_eq!(
        canceled.reason.as_deref(),
        Some("the agent was stopped before the build finished")
    );
    assert!(containers_of_job(&world.docker, &job_id).await.is_empty());
    assert!(world
        .log(&deployment.id, "system")
        .await
        .contains("Build canceled"));
}

#[tokio::test]
async fn restarted_agent_cleans_up_after_a_killed_one() {
    let Some(world) =
        world(serde_json::json!([{"name": "KILN_FIXTURE_SLEEP", "value": "120"}])).await
    else {
        return;
    };
    let mut agent = world.agent("agent", "").await;
    let deployment = world.push(&world.repo.head()).await;
    let building = world.wait_until_building(&deployment.id).await;
    let job_id = building.current_job_id.unwrap();
    agent.signal(Signal::SIGKILL);
    agent.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        containers_of_job(&world.docker, &job_id).await.len(),
        1,
        "SIGKILL leaves the container"
    );

    agent.spawn();
    let lost = world.settle(&deployment.id, BuildFailed, &agent).await;
    assert_eq!(
        lost.reason.as_deref(),
        Some("agent lost: the agent restarted while the build ran")
    );
    assert!(
        containers_of_job(&world.docker, &job_id).await.is_empty(),
        "the orphan is removed"
    );
    let system = world.log(&deployment.id, "system").await;
    assert!(
        system.contains("The agent restarted while this build ran"),
        "{system}"
    );
    let backend = world.log(&deployment.id, "backend").await;
    assert!(
        backend.contains("still compiling"),
        "spooled output before the kill is delivered: {backend}"
    );
}

#[tokio::test]
async fn missing_commit_and_bad_repository_fail_with_a_clear_reason() {
    let Some(world) = world(serde_json::json!([])).await else {
        return;
    };
    let agent = world.agent("agent", "").await;
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let deployment = world.push(missing).await;
    let failed = world.settle(&deployment.id, BuildFailed, &agent).await;
    assert_eq!(
        failed.reason.as_deref(),
        Some(
            format!(
                "commit {missing} not found in {}; was it force-pushed away?",
                world.repo.url
            )
            .as_str()
        )
    );

    let project = world
        .admin
        .create_project_with(CreateProject::new("ghost", "file:///nonexistent/ghost.git"))
        .await;
    world
        .admin
        .create_environment(&project, "Production", "main")
        .await;
    let outcome: kiln_protocol::EventOutcome = world
        .admin
        .post_json(
            "/api/v1/events/push",
            &serde_json::json!({"repository": "file:///nonexistent/ghost.git", "branch": "main", "sha": missing, "author": "a", "message": "m"}),
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    let failed = world
        .settle(&outcome.deployments[0].id, BuildFailed, &agent)
        .await;
    let reason = failed.reason.unwrap();
    assert!(
        reason.starts_with("cannot fetch file:///nonexistent/ghost.git:"),
        "{reason}"
    );
}

#[tokio::test]
async fn rejected_token_stops_the_daemon_with_a_message_to_re_register() {
    let Some(world) = world(serde_json::json!([])).await else {
        return;
    };
    let mut agent = world.agent("agent", "").await;
    agent.signal(Signal::SIGKILL);
    agent.wait_exit(Duration::from_secs(10)).await;
    let identity = agent.dir.join("state/agent.json");
    let text = std::fs::read_to_string(&identity).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["token"] = "revoked-token".into();
    std::fs::write(&identity, value.to_string()).unwrap();
    agent.spawn();
    let status = agent.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let log = agent.log_text();
    assert!(
        log.contains("re-register with `kiln-agent register`"),
        "{log}"
    );
}

#[tokio::test]
async fn concurrency_builds_jobs_side_by_side_in_separate_workspaces() {
    let Some(world) =
        world(serde_json::json!([{"name": "KILN_FIXTURE_SLEEP", "value": "20"}])).await
    else {
        return;
    };
    let project: kiln_protocol::Project = world
        .admin
        .get("/api/v1/projects")
        .await
        .expect_json::<kiln_protocol::ProjectList>(StatusCode::OK)
        .await
        .projects
        .remove(0);
    let staging = world
        .admin
        .create_environment(&project, "Staging", "main")
        .await;
    world
        .admin
        .set_variables(
            &staging.id,
            serde_json::json!([{"name": "KILN_FIXTURE_SLEEP", "value": "20"}]),
        )
        .await;
    let agent = world.agent("agent", "concurrency = 2").await;
    // One push, two environments on `main`: two jobs.
    let outcome = world
        .admin
        .push_repo(&world.repo.url, "main", &world.repo.head())
        .await;
    assert_eq!(outcome.deployments.len(), 2);
    let first = world.wait_until_building(&outcome.deployments[0].id).await;
    let second = world.wait_until_building(&outcome.deployments[1].id).await;
    let (a, b) = (
        first.current_job_id.unwrap(),
        second.current_job_id.unwrap(),
    );
    assert_eq!(containers_of_job(&world.docker, &a).await.len(), 1);
    assert_eq!(containers_of_job(&world.docker, &b).await.len(), 1);
    assert!(agent.dir.join("work").join(&a).is_dir() && agent.dir.join("work").join(&b).is_dir());
}

#[tokio::test]
async fn storefront_builds_beside_the_backend_as_a_second_artifact() {
    let variables = serde_json::json!([{"name": "NEXT_PUBLIC_MEDUSA_BACKEND_URL", "value": "https://api.shop.example"}]);
    let Some(world) = world_with(variables, Some("storefront")).await else {
        return;
    };
    let agent = world.agent("agent", "").await;
    let deployment = world.push(&world.repo.head()).await;
    let built = world
        .settle(&deployment.id, AwaitingDeployment, &agent)
        .await;
    assert_eq!(
        built.backend_status,
        kiln_protocol::ComponentStatus::Succeeded
    );
    assert_eq!(
        built.storefront_status,
        kiln_protocol::ComponentStatus::Succeeded
    );
    let names: Vec<&str> = built
        .artifacts
        .iter()
        .map(|a| a.descriptor.name.as_str())
        .collect();
    assert_eq!(names, ["backend.tar.gz", "storefront.tar.gz"]);
    let download = world
        .admin
        .get(&format!(
            "/api/v1/deployments/{}/artifacts/storefront.tar.gz",
            deployment.id
        ))
        .await;
    let files = untar(&download.body);
    let paths: Vec<&str> = files.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(
        paths,
        ["BUILD_ID", "server/app/index.html", "static/chunks/app.js"],
        "the build cache stays out"
    );
    assert!(
        files[1].1.contains("https://api.shop.example"),
        "the job's environment reached the build"
    );
    let storefront = world.log(&deployment.id, "storefront").await;
    assert!(storefront.contains("Compiled successfully"), "{storefront}");
    let system = world.log(&deployment.id, "system").await;
    assert!(
        system.contains("nextjs: dependency `next` in storefront/package.json")
            && system.contains("Storefront: builds with Node 20.")
            && system.contains(">=20 (engines.node in storefront/package.json) asks for it."),
        "{system}"
    );
}

/// Where each of `steps` is first said in the system log (returned too) of a
/// build of the fixture with a storefront, its backend build sleeping
/// `backend_seconds`, by an agent with `overrides`; `None` without Docker.
async fn where_steps_are_said<const N: usize>(
    backend_seconds: u32,
    overrides: &str,
    steps: [&str; N],
) -> Option<([usize; N], String)> {
    let variables =
        serde_json::json!([{"name": "KILN_FIXTURE_SLEEP", "value": backend_seconds.to_string()}]);
    let world = world_with(variables, Some("storefront")).await?;
    let agent = world.agent("agent", overrides).await;
    let deployment = world.push(&world.repo.head()).await;
    world
        .settle(&deployment.id, AwaitingDeployment, &agent)
        .await;
    let system = world.log(&deployment.id, "system").await;
    let at = steps.map(|text| {
        system
            .find(text)
            .unwrap_or_else(|| panic!("{text:?} not in:\n{system}"))
    });
    Some((at, system))
}

/// Issue 18: the components build side by side; the storefront installs once
/// the backend's install is behind it. The backend's build sleeps 30 s: on a
/// loaded host the storefront's install and stand-in build took 18 s of the 8
/// it once had.
#[tokio::test]
async fn storefront_builds_while_the_backend_builds() {
    let Some(([backend_installed, storefront_started, storefront_built, backend_built], system)) =
        where_steps_are_said(
            30,
            "",
            [
                "(install) finished in",
                "(storefront: build).",
                "(storefront: build) finished in",
                "(build) finished in",
            ],
        )
        .await
    else {
        return;
    };
    assert!(
        backend_installed < storefront_started && storefront_built < backend_built,
        "{system}"
    );
}

/// `components_side_by_side = false`: a host with room for one container builds
/// the storefront after the backend.
#[tokio::test]
async fn components_build_one_after_the_other_when_the_operator_says_so() {
    let Some(([backend_built, storefront_started], system)) = where_steps_are_said(
        2,
        "components_side_by_side = false",
        ["(build) finished in", "(storefront: build)."],
    )
    .await
    else {
        return;
    };
    assert!(backend_built < storefront_started, "{system}");
}

/// The backend runs to its end beside a storefront that failed, so the
/// deployment shows how both fared.
#[tokio::test]
async fn failing_storefront_fails_the_deployment_saying_it_was_the_storefront() {
    let variables = serde_json::json!([
        {"name": "KILN_FIXTURE_STOREFRONT_EXIT", "value": "4"},
        {"name": "KILN_FIXTURE_SLEEP", "value": "3"},
    ]);
    let Some(world) = world_with(variables, Some("storefront")).await else {
        return;
    };
    let agent = world.agent("agent", "").await;
    let deployment = world.push(&world.repo.head()).await;
    let failed = world.settle(&deployment.id, BuildFailed, &agent).await;
    assert_eq!(
        failed.reason.as_deref(),
        Some("storefront: `npx --no-install next build` (build) exited with code 4")
    );
    assert_eq!(
        failed.backend_status,
        kiln_protocol::ComponentStatus::Succeeded
    );
    assert_eq!(
        failed.storefront_status,
        kiln_protocol::ComponentStatus::Failed
    );
}

/// Issue 6: a secret copied into the public admin bundle fails the build, naming the
/// variable and the file, without printing the value; `warn` lets it through.
#[tokio::test]
async fn secret_in_the_public_folder_fails_the_build_with_the_finding_in_the_log() {
    let value = "sk_live_51NzQ3bKc8Jv2LmXpT4rWq9YdE6uA0sHg";
    let Some(world) = world(serde_json::json!([
        {"name": "STRIPE_API_KEY", "value": value, "secret": true},
        {"name": "KILN_FIXTURE_LEAK_ENV", "value": "STRIPE_API_KEY"},
    ]))
    .await
    else {
        return;
    };
    let agent = world.agent("agent", "").await;
    let deployment = world.push(&world.repo.head()).await;
    let failed = world.settle(&deployment.id, BuildFailed, &agent).await;
    let reason = failed.reason.clone().unwrap();
    assert!(
        reason.starts_with("secrets found in .medusa/server/public"),
        "{reason}"
    );
    let system = world.log(&deployment.id, "system").await;
    assert!(system.contains("admin/assets/config.js"), "{system}");
    assert!(system.contains("job-secret"), "{system}");
    assert!(system.contains("STRIPE_API_KEY"), "{system}");
    assert!(system.contains("stripe-secret-key"), "{system}");
    assert!(
        !system.contains(value),
        "the finding must not print the secret"
    );
    let detail = failed
        .detail
        .clone()
        .expect("findings in the status detail");
    let findings = detail["secret_scan"]["findings"].as_array().unwrap();
    assert!(findings
        .iter()
        .all(|f| f["path"] == "admin/assets/config.js"));
    assert!(!detail.to_string().contains(value));
    assert!(failed.artifacts.is_empty(), "nothing public is uploaded");

    // The project accepts findings as warnings: the next build goes through.
    world
        .admin
        .send_json(
            reqwest::Method::PATCH,
            &format!("/api/v1/projects/{}", world.project_id),
            &serde_json::json!({"secret_scan": {"mode": "warn"}}),
        )
        .await
        .expect_json::<kiln_protocol::Project>(reqwest::StatusCode::OK)
        .await;
    world
        .admin
        .send_json(
            reqwest::Method::PATCH,
            "/api/v1/projects/prj_unknown",
            &serde_json::json!({"secret_scan": {"mode": "warn"}}),
        )
        .await
        .expect_error(reqwest::StatusCode::NOT_FOUND, "not_found");
    let again = world.repo.commit("Again", |dir| {
        std::fs::write(dir.join("NOTES.md"), "again\n").unwrap();
    });
    let deployment = world.push(&again).await;
    world
        .settle(&deployment.id, AwaitingDeployment, &agent)
        .await;
    let system = world.log(&deployment.id, "system").await;
    assert!(system.contains("mode is `warn`"), "{system}");
    assert!(!system.contains(value));
}

#[test]
fn issue_30_detect_describes_a_backend_alone_and_says_it_has_no_storefront() {
    // medusa-starter-default's shape: a backend at the root, nothing else.
    let dir = tempfile::tempdir().unwrap();
    let example = example_shop();
    for name in ["package.json", "package-lock.json", "medusa-config.js"] {
        std::fs::copy(example.join(name), dir.path().join(name)).unwrap();
    }
    let detect = |format: &str| {
        std::process::Command::new(AGENT)
            .args(["detect", "--format", format])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let text = detect("text");
    let shown = String::from_utf8_lossy(&text.stdout);
    assert!(text.status.success(), "{shown}");
    assert!(
        shown.contains("backend in .: npm, install `npm ci` in ., build `npm run build`"),
        "{shown}"
    );
    assert!(shown.contains("no storefront"), "{shown}");
    let json = detect("json");
    assert!(json.status.success());
    let described: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(described["backend"]["build"], "npm run build");
    assert_eq!(described["storefront"], serde_json::Value::Null);
}

#[tokio::test]
async fn issue_30_sibling_backend_and_storefront_folders_build_with_no_paths_set() {
    // Medusa's B2B starter's shape: `backend/` and `storefront/`, each with its
    // own lockfile, and no package.json at the root; the project sets no paths.
    let Some(world) = world(serde_json::json!([])).await else {
        return;
    };
    let siblings = world.repo.commit("Siblings", |dir| {
        let backend = dir.join("backend");
        std::fs::create_dir(&backend).unwrap();
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name();
            if name != ".git" && name != "backend" {
                std::fs::rename(dir.join(&name), backend.join(&name)).unwrap();
            }
        }
        copy_dir(
            &example_shop().join("storefront"),
            &dir.join("storefront"),
            &[],
        );
    });
    let agent = world.agent("agent", "").await;
    let deployment = world.push(&siblings).await;
    let built = world
        .settle(&deployment.id, AwaitingDeployment, &agent)
        .await;
    let names: Vec<&str> = built
        .artifacts
        .iter()
        .map(|a| a.descriptor.name.as_str())
        .collect();
    assert_eq!(names, ["backend.tar.gz", "storefront.tar.gz"]);
    let system = world.log(&deployment.id, "system").await;
    assert!(
        system.contains("Medusa, file `medusa-config.js` in backend/package.json"),
        "{system}"
    );
    assert!(
        system.contains("nextjs: dependency `next` in storefront/package.json"),
        "{system}"
    );
}

#[tokio::test]
async fn issue_30_each_component_builds_with_the_node_its_repository_asks_for() {
    let Some(world) = world(serde_json::json!([])).await else {
        return;
    };
    let node_22 = node_image(22).await;
    let ask = |range: &'static str| {
        move |dir: &Path| {
            let path = dir.join("package.json");
            let mut package: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            package["engines"]["node"] = range.into();
            std::fs::write(&path, package.to_string()).unwrap();
        }
    };
    let agent = world
        .agent(
            "agent",
            &format!(
                "node_images = {{ \"20\" = {:?}, \"22\" = {node_22:?} }}",
                world.image
            ),
        )
        .await;

    // Node 22, as engines.node asks.
    let on_22 = world.repo.commit("Node 22", ask("22.x"));
    let deployment = world.push(&on_22).await;
    world
        .settle(&deployment.id, AwaitingDeployment, &agent)
        .await;
    let system = world.log(&deployment.id, "system").await;
    assert!(
        system.contains("Backend: builds with Node 22.")
            && system.contains(&format!(
                "of {node_22}: 22.x (engines.node in package.json) asks for it."
            )),
        "{system}"
    );
    let backend = world.log(&deployment.id, "backend").await;
    assert!(backend.contains("Starting build on Node v22."), "{backend}");

    // A range no image has fails before anything installs, saying what to do.
    let on_24 = world.repo.commit("Node 24", ask(">=24"));
    let deployment = world.push(&on_24).await;
    let failed = world.settle(&deployment.id, BuildFailed, &agent).await;
    let reason = failed.reason.unwrap();
    for said in [
        "node_version_unavailable",
        ">=24 (engines.node in package.json)",
        &format!("{} (Node 20)", world.image),
        &format!("{node_22} (Node 22)"),
        "build-local.sh --node 24",
        "or change engines.node",
    ] {
        assert!(reason.contains(said), "{said:?} in {reason}");
    }
    assert!(
        world.log(&deployment.id, "backend").await.is_empty(),
        "nothing was installed"
    );
}

#[tokio::test]
async fn issue_30_failures_say_the_fix_first_and_the_line_that_shows_the_cause() {
    // A Medusa config that throws at load for a variable the build lacks.
    let Some(world) = world(serde_json::json!([
        {"name": "KILN_FIXTURE_PRINT", "value": "error:   Environment variable for DATABASE_URL is not set"},
        {"name": "KILN_FIXTURE_EXIT", "value": "1"},
    ]))
    .await
    else {
        return;
    };
    let agent = world.agent("agent", "").await;
    let deployment = world.push(&world.repo.head()).await;
    let failed = world.settle(&deployment.id, BuildFailed, &agent).await;
    let reason = failed.reason.unwrap();
    assert!(
        reason.starts_with("the build needs the variable DATABASE_URL, which its environment does not have; add DATABASE_URL to the environment's variables")
            && reason.contains("(`npm run build` (build) exited with code 1; the log says: ")
            && reason.ends_with("error:   Environment variable for DATABASE_URL is not set)"),
        "{reason}"
    );

    // `medusa build` that finishes without the admin (medusajs/medusa#12245).
    world
        .admin
        .set_variables(
            &world.environment_id,
            serde_json::json!([{"name": "KILN_FIXTURE_NO_ADMIN", "value": "1"}]),
        )
        .await;
    let again = world.repo.commit("No admin", |_| {});
    let deployment = world.push(&again).await;
    let failed = world.settle(&deployment.id, BuildFailed, &agent).await;
    let reason = failed.reason.unwrap();
    assert!(
        reason.starts_with("admin_missing: `medusa build` finished without the admin")
            && reason.contains("medusajs/medusa#12245")
            && reason.contains("admin: { disable: true }"),
        "{reason}"
    );
    assert!(failed.artifacts.is_empty());
}

#[tokio::test]
async fn issue_30_a_canceled_builds_slot_is_free_before_its_workspace_is_removed() {
    // A build that leaves a large node_modules, then goes on building.
    let Some(world) = world(serde_json::json!([
        {"name": "KILN_FIXTURE_FILES", "value": "30000"},
        {"name": "KILN_FIXTURE_SLEEP", "value": "120"},
    ]))
    .await
    else {
        return;
    };
    let agent = world.agent("agent", "").await;
    let first = world.push(&world.repo.head()).await;
    let building = world.wait_until_building(&first.id).await;
    let old_job = building.current_job_id.unwrap();
    assert!(world
        .log(&first.id, "backend")
        .await
        .contains("wrote 30000 files"));
    let newer = world.repo.commit("newer", |_| {});
    let second = world.push(&newer).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = loop {
        let log = agent.log_text();
        let removed = log
            .lines()
            .any(|line| line.contains("Workspace removed.") && line.contains(&old_job));
        let claimed = log
            .lines()
            .any(|line| line.contains("Job claimed.") && line.contains(&second.id));
        if removed && claimed {
            break log;
        }
        assert!(Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The newer commit was claimed before the old workspace was gone: with one
    // build slot, the slot went before the removal.
    let claimed = log
        .lines()
        .position(|line| line.contains("Job claimed.") && line.contains(&second.id))
        .expect("the newer job was claimed");
    let removed = log
        .lines()
        .position(|line| line.contains("Workspace removed.") && line.contains(&old_job))
        .unwrap();
    assert!(claimed < removed, "{log}");
}
