//! Issue 7: builds that attack the host. Each ends `build_failed` with a reason that
//! names the limit (or, for a symlink out of `.medusa/server`, the artifact refused);
//! afterwards the host is untouched, the job's containers and workspace are gone,
//! and the same agent takes the next job. Also a build that fills the host's disk
//! (under `work_dir`), and a host whose disk is already low, which claims nothing
//! until it has room. The log flood is in `faults.rs`.

use std::path::Path;

use kiln_protocol::DeploymentStatus::{AwaitingDeployment, BuildFailed};

use crate::agent::world;
use crate::support::*;
use kiln_agent::testing::SmallDisk;

/// Pushes a commit with `variables` on the environment and waits for `build_failed`;
/// returns the reason and the system log, after checking the job left nothing.
async fn attack(
    world: &World,
    agent: &AgentProcess,
    environment: &str,
    variables: serde_json::Value,
) -> (String, String) {
    world
        .admin
        .set_variables(environment, variables.clone())
        .await;
    let sha = world.repo.commit(&format!("attack {variables}"), |dir| {
        std::fs::write(dir.join("ATTACK.md"), variables.to_string()).unwrap();
    });
    let deployment = world.push(&sha).await;
    let failed = world.settle(&deployment.id, BuildFailed, agent).await;
    let job_id = failed.current_job_id.clone().unwrap();
    assert!(
        containers_of_job(&world.docker, &job_id).await.is_empty(),
        "containers of {job_id} left behind"
    );
    // The workspace goes right after the final report.
    let workspace = agent.dir.join("work").join(&job_id);
    for _ in 0..50 {
        if !workspace.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        !workspace.exists(),
        "workspace {} left behind",
        workspace.display()
    );
    let system = world.log(&deployment.id, "system").await;
    (failed.reason.unwrap_or_default(), system)
}

/// Clears the attack's variables and builds the next commit to `awaiting_deployment`.
async fn builds_an_ordinary_job(world: &World, agent: &AgentProcess, environment: &str) {
    world
        .admin
        .set_variables(environment, serde_json::json!([]))
        .await;
    let sha = world.repo.commit("ordinary", |dir| {
        std::fs::write(dir.join("ATTACK.md"), "none").unwrap();
    });
    let deployment = world.push(&sha).await;
    world
        .settle(&deployment.id, AwaitingDeployment, agent)
        .await;
}

#[tokio::test]
async fn hostile_builds_are_stopped_with_the_limit_named_and_the_agent_goes_on() {
    let Some(world) = world(serde_json::json!([])).await else {
        return;
    };
    let agent = world
        .agent(
            "agent",
            "memory = \"256MiB\"\npids = 64\nworkspace_limit = \"64MiB\"\nstep_timeout = \"10s\"\n",
        )
        .await;
    let environment = world.environment_id.clone();

    let (reason, _) = attack(
        &world,
        &agent,
        &environment,
        serde_json::json!([{"name": "KILN_FIXTURE_FORK_BOMB", "value": "1"}]),
    )
    .await;
    assert_eq!(reason, "process limit reached (64) during `npm run build`");

    let (reason, _) = attack(
        &world,
        &agent,
        &environment,
        serde_json::json!([{"name": "KILN_FIXTURE_OOM", "value": "1"}]),
    )
    .await;
    assert_eq!(
        reason,
        "`npm run build` (build) ran out of memory (limit 256 MiB); raise the agent's `memory` setting (KILN_MEMORY) or make the build use less"
    );

    let (reason, _) = attack(
        &world,
        &agent,
        &environment,
        serde_json::json!([{"name": "KILN_FIXTURE_LOOP", "value": "1"}]),
    )
    .await;
    assert_eq!(
        reason,
        "timed out after 10s (the step limit) during `npm run build`"
    );

    let (reason, _) = attack(
        &world,
        &agent,
        &environment,
        serde_json::json!([{"name": "KILN_FIXTURE_WRITE_MB", "value": "10240"}]),
    )
    .await;
    assert_eq!(reason, "workspace exceeded 64 MiB during `npm run build`");

    let token = agent.dir.join("state/agent.json");
    assert!(token.exists());
    let targets = format!("/var/run/docker.sock:/run/docker.sock:{}", token.display());
    let (reason, _) = attack(
        &world,
        &agent,
        &environment,
        serde_json::json!([{"name": "KILN_FIXTURE_ESCAPE", "value": targets}]),
    )
    .await;
    assert_eq!(
        reason, "`npm run build` (build) exited with code 13",
        "13 means every write outside the workspace and every look at the socket and token was refused"
    );
    for path in [
        "/kiln-escape",
        "/etc/kiln-escape",
        "/usr/local/bin/kiln-escape",
    ] {
        assert!(!Path::new(path).exists(), "{path} was written on the host");
    }

    let (reason, _) = attack(
        &world,
        &agent,
        &environment,
        serde_json::json!([{"name": "KILN_FIXTURE_SERVER_LINK", "value": "/etc/passwd"}]),
    )
    .await;
    assert!(
        reason.starts_with("cannot package .medusa/server: symlink")
            && reason.contains("/etc/passwd"),
        "{reason}"
    );

    // And the same agent builds the next, ordinary job.
    builds_an_ordinary_job(&world, &agent, &environment).await;
}

#[tokio::test]
async fn a_build_that_fills_the_host_disk_is_told_so_and_the_agent_goes_on() {
    let Some(world) = world(serde_json::json!([])).await else {
        return;
    };
    // The agent's work_dir on a 32 MiB disk, far below the 10 GiB workspace cap;
    // claiming whatever is free, as an operator who turned the guard off.
    let Some(_disk) = SmallDisk::mount(&world.root_dir().join("agent/work"), "32m") else {
        return;
    };
    let agent = world.agent("agent", "min_free_disk = \"0\"\n").await;
    let environment = world.environment_id.clone();

    let (reason, _) = attack(
        &world,
        &agent,
        &environment,
        serde_json::json!([{"name": "KILN_FIXTURE_WRITE_MB", "value": "64"}]),
    )
    .await;
    let full_disk = format!(
        "free under work_dir {}); free space there or move work_dir to a larger disk",
        agent.dir.join("work").display()
    );
    assert!(
        reason.starts_with("the build host's disk is full during `npm run build` (")
            && reason.ends_with(&full_disk),
        "{reason}"
    );

    // A disk already full when the job comes: the clone fails, and says why.
    let filler = agent.dir.join("work/filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=64"])
        .arg(format!("of={}", filler.display()))
        .output();
    let (reason, _) = attack(
        &world,
        &agent,
        &environment,
        serde_json::json!([{"name": "KILN_FIXTURE_LINES", "value": "1"}]),
    )
    .await;
    assert!(
        reason.contains("; the build host's disk is full (") && reason.ends_with(&full_disk),
        "{reason}"
    );
    std::fs::remove_file(&filler).unwrap();

    // The failed job's workspace is gone, so the next build has room again.
    builds_an_ordinary_job(&world, &agent, &environment).await;
}

#[tokio::test]
async fn a_host_whose_disk_is_low_claims_no_job_until_it_has_room() {
    let Some(world) = world(serde_json::json!([])).await else {
        return;
    };
    let work = world.root_dir().join("agent/work");
    let Some(_disk) = SmallDisk::mount(&work, "32m") else {
        return;
    };
    // About 4 MiB of the 32 left, below the agent's 16 MiB floor.
    let filler = work.join("filler");
    let filled = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=28"])
        .arg(format!("of={}", filler.display()))
        .output()
        .unwrap();
    assert!(filled.status.success());
    let port = free_port();
    let agent = world
        .agent(
            "agent",
            &format!("min_free_disk = \"16MiB\"\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
        )
        .await;
    let holding_back_metric = || async move {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix("kiln_agent_holding_back "))
            .map(str::to_owned)
    };
    let sha = world.repo.commit("while the disk is low", |dir| {
        std::fs::write(dir.join("ATTACK.md"), "none").unwrap();
    });
    let deployment = world.push(&sha).await;

    // The fleet sees why the agent takes nothing, and the job waits for room.
    let holding_back = || async {
        let agents: kiln_protocol::AgentList = world
            .admin
            .get("/api/v1/agents")
            .await
            .expect_json(reqwest::StatusCode::OK)
            .await;
        agents.agents[0].holding_back.clone()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let reason = loop {
        if let Some(reason) = holding_back().await {
            break reason;
        }
        assert!(std::time::Instant::now() < deadline, "{}", agent.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let said = format!(
        " free under work_dir {} (min_free_disk is 16 MiB); free space there",
        work.display()
    );
    assert!(
        reason.starts_with("only ") && reason.contains(&said),
        "{reason}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        world.admin.deployment(&deployment.id).await.status,
        kiln_protocol::DeploymentStatus::Queued
    );
    assert!(agent
        .log_text()
        .contains("Claiming no jobs: the disk is low."));
    assert_eq!(holding_back_metric().await.as_deref(), Some("1"));

    // Room again: the agent claims within its retry and builds; the reason goes.
    std::fs::remove_file(&filler).unwrap();
    world
        .settle(&deployment.id, AwaitingDeployment, &agent)
        .await;
    assert_eq!(holding_back().await, None);
    assert_eq!(holding_back_metric().await.as_deref(), Some("0"));
}
