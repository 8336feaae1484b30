//! Agent benchmark, one run, real parts (control plane on loopback, the agent
//! binary, Docker), reported as numbers and ratios against a peer run in the same go:
//!
//! 1. overhead: claim → `awaiting_deployment` through the agent with the build
//!    cache off (a redeploy with `"cache": false`, so nothing is reused), against
//!    the same `npm ci` + `npm run build` of the same commit run by hand with
//!    `docker run`; and, on its own line, a warm build (a new commit, the cache
//!    on: the install restored, the build run), which no hand-run matches;
//! 2. cancel latency: a newer push → the older build's container gone, p50/p95 over
//!    20 cancels; and newer push → the newer build's first log line, while the
//!    canceled build's workspace holds a large `node_modules` (30,000 files) that
//!    the agent removes after it has freed the build slot.
//!
//! `cargo bench -p kiln-tests --bench agent` (needs a Docker engine).

// Tests: a fixture that cannot be set up should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_protocol::{Deployment, DeploymentStatus};
use kiln_tests::support::*;

const AGENT: &str = env!("CARGO_BIN_EXE_kiln-agent-e2e");
const BUILDS: usize = 5;
const CANCELS: usize = 20;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// `npm ci` then `npm run build` in fresh containers, as a person would type it.
fn by_hand(image: &str, source: &Path, scratch: &Path) -> Duration {
    let _ = std::fs::remove_dir_all(scratch);
    let status = Command::new("cp")
        .arg("-r")
        .arg(source)
        .arg(scratch)
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(scratch.join(".git"));
    Command::new("chown")
        .args(["-R", "10000:10000"])
        .arg(scratch)
        .status()
        .unwrap();
    let started = Instant::now();
    for step in [&["npm", "ci"][..], &["npm", "run", "build"][..]] {
        let status = Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--user",
                "10000:10000",
                "-e",
                "HOME=/tmp",
                "-v",
            ])
            .arg(format!("{}:/kiln/src", scratch.display()))
            .args(["-w", "/kiln/src", image])
            .args(step)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{step:?} failed by hand");
    }
    started.elapsed()
}

async fn push(admin: &Api, repo: &FixtureRepo, branch: &str) -> Deployment {
    let outcome = admin.push_repo(&repo.url, branch, &repo.head()).await;
    outcome
        .deployments
        .into_iter()
        .next()
        .expect("a deployment")
}

async fn wait_for(admin: &Api, id: &str, want: DeploymentStatus) -> Deployment {
    loop {
        let deployment = admin.deployment(id).await;
        if deployment.status == want {
            return deployment;
        }
        assert!(
            matches!(
                deployment.status,
                DeploymentStatus::Queued | DeploymentStatus::Building
            ),
            "deployment {id} ended {}: {:?}",
            deployment.status,
            deployment.reason
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    let Some(docker) = docker().await else {
        eprintln!("the agent benchmark needs a Docker engine");
        return;
    };
    let image = build_image().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = FixtureRepo::new(dir.path());
    let cp = ControlPlane::start(&dir.path().join("server")).await;
    let admin = cp.admin();
    let (project, _) = admin
        .repo_project("bench", &repo.url, serde_json::json!([]))
        .await;
    let slow = admin.create_environment(&project, "Slow", "slow").await;
    admin
        .set_variables(
            &slow.id,
            serde_json::json!([
                {"name": "KILN_FIXTURE_SLEEP", "value": "600"},
                {"name": "KILN_FIXTURE_FILES", "value": "30000"},
            ]),
        )
        .await;
    let agent = AgentProcess::start(
        Path::new(AGENT),
        &cp.base_url(),
        &dir.path().join("agent"),
        image,
        "cancel_grace = \"10s\"",
    )
    .await;

    // 1. Overhead, interleaved so both see the same machine state. Each round
    // through the agent is a redeploy without the cache: with it, rounds after
    // the first would reuse the first's output and measure nothing.
    let first = push(&admin, &repo, "main").await;
    wait_for(&admin, &first.id, DeploymentStatus::AwaitingDeployment).await;
    let (mut through_agent, mut manual, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..BUILDS {
        let outcome: kiln_protocol::EventOutcome = admin
            .post_json(
                &format!("/api/v1/deployments/{}/redeploy", first.id),
                &serde_json::json!({"cache": false}),
            )
            .await
            .expect_json(reqwest::StatusCode::CREATED)
            .await;
        let built = wait_for(
            &admin,
            &outcome.deployments[0].id,
            DeploymentStatus::AwaitingDeployment,
        )
        .await;
        let claimed_to_built = building_seconds(&built);
        let hand = by_hand(
            image,
            &repo.dir,
            &dir.path().join(format!("by-hand-{round}")),
        )
        .as_secs_f64();
        // Warm: a new commit, the cache on.
        let sha = repo.commit(&format!("warm round {round}"), |dir| {
            std::fs::write(
                dir.join("src/warm.js"),
                format!("module.exports = {round}\n"),
            )
            .unwrap();
        });
        let pushed = admin
            .push_repo(&repo.url, "main", &sha)
            .await
            .deployments
            .remove(0);
        let warmed = wait_for(&admin, &pushed.id, DeploymentStatus::AwaitingDeployment).await;
        let warm_seconds = building_seconds(&warmed);
        eprintln!(
            "round {round}: agent without cache {claimed_to_built:.2}s, by hand {hand:.2}s, warm {warm_seconds:.2}s"
        );
        through_agent.push(claimed_to_built);
        manual.push(hand);
        warm.push(warm_seconds);
    }
    let (agent_median, hand_median) = (median(&mut through_agent), median(&mut manual));
    let warm_median = median(&mut warm);

    // 2. Cancel latency: each push on `slow` cancels the build before it.
    let (mut latencies, mut next_logs) = (Vec::new(), Vec::new());
    let mut running = push(&admin, &repo, "slow").await;
    for _ in 0..CANCELS {
        let job_id = loop {
            let deployment = admin.deployment(&running.id).await;
            let log = admin
                .get(&format!("/api/v1/deployments/{}/logs/backend", running.id))
                .await
                .text();
            if let (Some(job_id), true) = (
                deployment.current_job_id.clone(),
                log.contains("still compiling"),
            ) {
                break job_id;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let pushed = Instant::now();
        let next = push(&admin, &repo, "slow").await;
        while !containers_of_job(&docker, &job_id).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(pushed.elapsed().as_secs_f64() * 1000.0);
        // The newer build's first log line: its slot is free once the old
        // build has reported, not once its workspace is gone.
        loop {
            let system = admin
                .get(&format!("/api/v1/deployments/{}/logs/system", next.id))
                .await
                .text();
            if !system.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        next_logs.push(pushed.elapsed().as_secs_f64() * 1000.0);
        running = next;
    }
    let p50 = percentile(&mut latencies, 0.50);
    let p95 = percentile(&mut latencies, 0.95);
    let (next_p50, next_p95) = (
        percentile(&mut next_logs, 0.50),
        percentile(&mut next_logs, 0.95),
    );
    drop(agent);

    println!();
    println!("agent overhead ({BUILDS} builds of examples/medusa-shop, medians)");
    println!("  claim → awaiting_deployment, cache off        : {agent_median:.2} s");
    println!("  npm ci + npm run build by hand (docker run)    : {hand_median:.2} s");
    println!(
        "  overhead                                       : {:+.2} s ({:.2}× by hand)",
        agent_median - hand_median,
        agent_median / hand_median
    );
    println!(
        "  warm (a new commit, the cache on)              : {warm_median:.2} s ({:.2}× by hand)",
        warm_median / hand_median
    );
    println!("cancel latency (newer push → old container gone, {CANCELS} cancels)");
    println!(
        "  p50 {p50:.0} ms, p95 {p95:.0} ms, max {:.0} ms",
        latencies.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "newer push → the newer build's first log line, the canceled workspace holding 30,000 files"
    );
    println!(
        "  p50 {next_p50:.0} ms, p95 {next_p95:.0} ms (goal: p95 < 2000 ms), max {:.0} ms",
        next_logs.iter().cloned().fold(0.0, f64::max)
    );
}

/// Seconds from `building` to `awaiting_deployment` of a built deployment.
fn building_seconds(built: &Deployment) -> f64 {
    let at = |status| {
        built
            .transitions
            .iter()
            .rev()
            .find(|t| t.status == status)
            .unwrap()
            .at
    };
    (at(DeploymentStatus::AwaitingDeployment) - at(DeploymentStatus::Building)).num_milliseconds()
        as f64
        / 1000.0
}
