//! Deploy benchmark, one run with real parts (Docker, Caddy, PostgreSQL, the
//! control plane and the agent), the example shop as the project:
//!
//! 1. push of a code-only change (warm build cache) → live, against the same
//!    push → awaiting_deployment with no deploy (its peer: the build alone);
//! 2. rollback → the old release serving through Caddy, against starting the
//!    same image by hand (`docker run` until its health check answers);
//! 3. failed requests through Caddy at 50 requests a second across each switch
//!    (a connection per request; see README on keep-alive);
//! 4. bytes the deploy host pulls from a real registry (Debian's
//!    `docker-registry`) per code-only deploy, against the release image's size.
//!
//! `cargo bench -p kiln-tests --bench deploy` (needs Docker, caddy, PostgreSQL).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_protocol::DeploymentStatus;
use kiln_tests::support::*;
use reqwest::Method;

const AGENT: &str = env!("CARGO_BIN_EXE_kiln-agent-e2e");
const HOST: &str = "api.bench.test";
const ROUNDS: usize = 5;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

async fn until(world: &World, id: &str, want: DeploymentStatus) -> f64 {
    let started = Instant::now();
    loop {
        let deployment = world.admin.deployment(id).await;
        if deployment.status == want {
            return started.elapsed().as_secs_f64();
        }
        use DeploymentStatus::*;
        if matches!(
            deployment.status,
            BuildFailed | BuildCanceled | DeployFailed
        ) {
            panic!("{id} ended {}: {:?}", deployment.status, deployment.reason);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pushes a commit writing `version` into the release; push → `want` seconds.
async fn push_version(world: &World, version: &str, want: DeploymentStatus) -> (String, f64) {
    let sha = world.repo.commit(version, |dir| {
        std::fs::write(dir.join("src/version.txt"), version).unwrap();
    });
    let started = Instant::now();
    let id = world.push(&sha).await.id;
    until(world, &id, want).await;
    (id, started.elapsed().as_secs_f64())
}

async fn set_auto_deploy(world: &World, on: bool) {
    let reply = world
        .admin
        .send_json(
            Method::PATCH,
            &format!("/api/v1/environments/{}", world.environment_id),
            &serde_json::json!({"auto_deploy": on}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

/// Requests at 50 a second through Caddy while `work` runs: (sent, failed).
async fn under_load<T>(port: u16, work: impl std::future::Future<Output = T>) -> (T, usize, usize) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let (mut sent, mut failed) = (0, 0);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.changed() => return (sent, failed),
            }
            sent += 1;
            let ok = client
                .get(format!("http://127.0.0.1:{port}/health"))
                .header("host", HOST)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .is_ok_and(|response| response.status() == 200);
            if !ok {
                failed += 1;
            }
        }
    });
    let result = work.await;
    let _ = stop.send(true);
    let (sent, failed) = load.await.unwrap();
    (result, sent, failed)
}

/// The bytes a deploy pulled, from its log's "Pulled release image …" line.
fn pulled_bytes(deploy_log: &str) -> f64 {
    let line = deploy_log
        .lines()
        .find(|line| line.contains("Pulled release image"))
        .unwrap_or_else(|| panic!("no pull in:\n{deploy_log}"));
    let before = line.split(" bytes;").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Starts `image` by hand as the deploy host would, until its health check
/// answers: the floor of a rollback.
async fn by_hand(image: &str, database_url: &str) -> f64 {
    let port = free_port();
    let started = Instant::now();
    let output = std::process::Command::new("docker")
        .args([
            "run",
            "-d",
            "--network",
            "host",
            "--init",
            "--cap-drop",
            "ALL",
            "--user",
            "10000:10000",
        ])
        .args([
            "-e",
            &format!("PORT={port}"),
            "-e",
            &format!("DATABASE_URL={database_url}"),
        ])
        .args(["-e", "NODE_ENV=production", image])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let id = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let client = reqwest::Client::new();
    loop {
        let ok = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200);
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &id])
        .output();
    took
}

#[tokio::main]
async fn main() {
    let postgres = Postgres::start();
    let registry = Registry::start().await;
    let variables =
        serde_json::json!([{"name": "DATABASE_URL", "value": postgres.url, "secret": true}]);
    let address = registry.address.clone();
    let world = World::new_with(Path::new(AGENT), variables, None, |config| {
        config.registry = Some(address)
    })
    .await
    .expect("the deploy benchmark needs Docker");
    let _containers = ReleaseContainers {
        environment_id: world.environment_id.clone(),
    };
    let caddy = CaddyProcess::start();
    let reply = world
        .admin
        .send_json(
            Method::PATCH,
            &format!("/api/v1/environments/{}", world.environment_id),
            &serde_json::json!({"deploy": {"backend_hostname": HOST, "health_timeout_seconds": 60}}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let _agent = world
        .agent(
            "agent",
            &format!(
                "roles = [\"build\", \"deploy\"]\ncaddy_admin_url = \"{}\"\ncaddy_listen = \"127.0.0.1:{}\"\ndeploy_network = \"host\"\n",
                caddy.admin, caddy.listen
            ),
        )
        .await;
    // Warm: the first build fills the cache and the dependency layer.
    set_auto_deploy(&world, true).await;
    let (first, cold) = push_version(&world, "v0", DeploymentStatus::Live).await;
    println!("cold push → live: {cold:.2} s");
    if std::env::var_os("KILN_BENCH_DEBUG").is_some() {
        println!(
            "{}\n{}",
            world.log(&first, "system").await,
            world.log(&first, "deploy").await
        );
    }

    let (mut to_live, mut built_only) = (Vec::new(), Vec::new());
    let (mut sent, mut failed) = (0, 0);
    let (mut moved, mut artifact_sizes) = (Vec::new(), Vec::new());
    let mut last = first.clone();
    for round in 1..=ROUNDS {
        set_auto_deploy(&world, false).await;
        let (_, build) = push_version(
            &world,
            &format!("b{round}"),
            DeploymentStatus::AwaitingDeployment,
        )
        .await;
        built_only.push(build);
        set_auto_deploy(&world, true).await;
        let ((id, live), s, f) = under_load(
            caddy.listen,
            push_version(&world, &format!("v{round}"), DeploymentStatus::Live),
        )
        .await;
        to_live.push(live);
        sent += s;
        failed += f;
        let deployment = world.admin.deployment(&id).await;
        let release = deployment
            .artifacts
            .iter()
            .find(|a| a.descriptor.name == kiln_protocol::BACKEND_RELEASE)
            .unwrap();
        artifact_sizes.push(release.descriptor.size as f64);
        moved.push(pulled_bytes(&world.log(&id, "deploy").await));
        last = id;
    }
    // The release image's size on the host, and how much of it the code is.
    let image = format!("kiln-release/{}:{last}", world.environment_id);
    let history = std::process::Command::new("docker")
        .args(["history", "--no-trunc", "--format", "{{.Size}}", &image])
        .output()
        .unwrap();
    let inspect = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Size}}", &image])
        .output()
        .unwrap();
    let image_size: u64 = String::from_utf8_lossy(&inspect.stdout)
        .trim()
        .parse()
        .unwrap();
    let layers = String::from_utf8_lossy(&history.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();

    let mut rollbacks = Vec::new();
    let mut floors = Vec::new();
    let mut targets = [first.clone(), last.clone()];
    for _ in 0..ROUNDS {
        let target = targets[0].clone();
        let ((), s, f) = under_load(caddy.listen, async {
            let started = Instant::now();
            let reply = world
                .admin
                .send_json(
                    Method::POST,
                    &format!("/api/v1/deployments/{target}/rollback"),
                    &serde_json::json!({}),
                )
                .await;
            assert_eq!(reply.status, 202, "{}", reply.text());
            until(&world, &target, DeploymentStatus::Live).await;
            rollbacks.push(started.elapsed().as_secs_f64());
        })
        .await;
        sent += s;
        failed += f;
        floors.push(
            by_hand(
                &format!("kiln-release/{}:{target}", world.environment_id),
                &postgres.url,
            )
            .await,
        );
        targets.swap(0, 1);
    }

    let (live, build) = (median(to_live), median(built_only));
    println!("code-only push → live: {live:.2} s p50; push → built alone: {build:.2} s p50; ratio {:.2}×", live / build);
    let (rollback, floor) = (median(rollbacks), median(floors));
    println!("rollback → old release serving: {rollback:.2} s p50 (goal < 5 s); docker run to healthy by hand: {floor:.2} s p50; ratio {:.2}×", rollback / floor);
    println!(
        "failed requests at 50/s across {} switches: {failed} of {sent} (goal 0)",
        ROUNDS * 2
    );
    let moved = median(moved);
    println!(
        "bytes moved per code-only deploy (pulled from the registry): {moved:.0} against the image's {image_size} bytes: {:.3} % (goal ≤ 10 %); the release artifact, which a deploy host without a registry loads whole, is {:.0} bytes; the code layer is {layers}",
        100.0 * moved / image_size as f64,
        median(artifact_sizes)
    );
}
