//! Build cache benchmark, one run on one machine: the pnpm monorepo written like
//! Medusa's official starter (`tests/accept/medusa-monorepo`: a real Medusa
//! backend and a Next.js storefront, from the npm registry) built through the
//! control plane and the agent
//!
//! 1. cold (an empty cache),
//! 2. warm, both apps changed and the lockfile not,
//! 3. warm, only the storefront changed,
//! 4. warm, only the backend changed,
//! 5. the same commit again (a redeploy),
//!
//! per step (restore, provide, install, build, pack) and in total, each warm one
//! as a ratio of the cold one, and the cache's size on disk.
//!
//! `cargo bench -p kiln-tests --bench cache` (Docker and the npm registry).

// Tests: a fixture that cannot be set up should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_protocol::{CreateProject, DeploymentStatus, PushEvent};
use kiln_tests::support::*;
use reqwest::StatusCode;

const AGENT: &str = env!("CARGO_BIN_EXE_kiln-agent-e2e");

/// Seconds a step took, from the system log's "`cmd` (storefront: build)
/// finished in 1.2s." lines and the restore lines' "in 1.2s". The backend's and
/// the storefront's steps overlap, so the total is less than their sum.
#[derive(Debug, Default, Clone)]
struct Steps {
    restore: f64,
    provide: f64,
    install: f64,
    backend_build: f64,
    storefront_build: f64,
    pack: f64,
    total: f64,
}

fn seconds_in(line: &str) -> f64 {
    line.rsplit(" in ")
        .next()
        .and_then(|tail| tail.split('s').next())
        .and_then(|number| number.trim().parse().ok())
        .unwrap_or(0.0)
}

fn steps(system: &str) -> Steps {
    let mut steps = Steps::default();
    for line in system.lines() {
        let text = line.split_once("] ").map_or(line, |(_, text)| text);
        if let Some((step, took)) = text.split_once(") finished in ") {
            let took = seconds_in(&format!(" in {}", took.trim_end_matches('.')));
            if step.ends_with("package-manager") {
                steps.provide += took;
            } else if step.ends_with("install") {
                steps.install += took;
            } else if step.ends_with("(storefront: build") {
                steps.storefront_build += took;
            } else if step.ends_with("(build") {
                steps.backend_build += took;
            }
        } else if text.starts_with("Restored ") {
            let head = text.split(')').next().unwrap_or(text);
            steps.restore += seconds_in(head.trim_end_matches(')'));
        } else if text.starts_with("Packed ") {
            steps.pack += seconds_in(text.trim_end_matches('.'));
        } else if let Some(rest) = text.strip_prefix("Build succeeded in ") {
            steps.total = rest
                .trim_end_matches('.')
                .trim_end_matches('s')
                .parse()
                .unwrap_or(0.0);
        }
    }
    steps
}

fn disk_usage(dir: &Path) -> u64 {
    let output = std::process::Command::new("du")
        .arg("-sb")
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .and_then(|bytes| bytes.parse().ok())
        .unwrap_or(0)
}

async fn build(
    admin: &Api,
    repo: &FixtureRepo,
    sha: &str,
    agent: &AgentProcess,
    builds: usize,
) -> (Steps, String) {
    let outcome: kiln_protocol::EventOutcome = admin
        .post_json(
            "/api/v1/events/push",
            &PushEvent {
                repository: repo.url.clone(),
                branch: "main".into(),
                sha: sha.to_owned(),
                author: "Ada".into(),
                message: "bench".into(),
                people: Default::default(),
            },
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    let id = outcome.deployments[0].id.clone();
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let deployment = admin.deployment(&id).await;
        match deployment.status {
            DeploymentStatus::AwaitingDeployment => break,
            DeploymentStatus::Queued | DeploymentStatus::Building => {}
            other => panic!(
                "build ended {other}: {:?}\n{}",
                deployment.reason,
                agent.log_text()
            ),
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let system = admin
        .get(&format!("/api/v1/deployments/{id}/logs/system"))
        .await
        .text();
    let storefront = admin
        .get(&format!("/api/v1/deployments/{id}/logs/storefront"))
        .await
        .text();
    // What the build left goes into the cache after it reports: wait until the
    // agent's log has been quiet for 3 s.
    let deadline = Instant::now() + Duration::from_secs(300);
    while agent.log_text().matches("Build ended.").count() < builds {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut seen = agent.log_text().len();
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = agent.log_text().len();
        if now == seen {
            break;
        }
        seen = now;
    }
    (
        steps(&system),
        format!("{system}\n--- storefront ---\n{storefront}"),
    )
}

fn ratio(warm: f64, cold: f64) -> String {
    if cold <= 0.0 {
        "—".to_owned()
    } else {
        format!("{:.0}%", warm / cold * 100.0)
    }
}

#[tokio::main]
async fn main() {
    if docker().await.is_none() {
        eprintln!("the cache benchmark needs a Docker engine");
        return;
    }
    let image = build_image().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, _store) = stand_in_store_api().await;
    let repo = FixtureRepo::of(
        &dir.path().join("repo"),
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("accept/medusa-monorepo"),
    );
    let cp = ControlPlane::start(&dir.path().join("server")).await;
    let admin = cp.admin();
    let project = admin
        .create_project_with(CreateProject::new("medusa", &repo.url))
        .await;
    let environment = admin
        .create_environment(&project, "Production", "main")
        .await;
    admin
        .set_variables(
            &environment.id,
            serde_json::json!([
                {"name": "MEDUSA_BACKEND_URL", "value": format!("http://127.0.0.1:{port}")},
                {"name": "NEXT_PUBLIC_MEDUSA_PUBLISHABLE_KEY", "value": format!("pk_{}", "0a1b2c3d".repeat(8))},
            ]),
        )
        .await;
    let agent = AgentProcess::start(
        Path::new(AGENT),
        &cp.base_url(),
        &dir.path().join("agent"),
        image,
        "install_network = \"bridge\"\nbuild_network = \"host\"\nextra_ca_certs = \"/etc/ssl/certs/ca-certificates.crt\"\nmemory = \"6GiB\"\njob_timeout = \"30m\"",
    )
    .await;

    let (cold, cold_log) = build(&admin, &repo, &repo.head(), &agent, 1).await;
    let both = repo.commit("Touch both apps", |dir| {
        std::fs::write(
            dir.join("apps/backend/src/touched.ts"),
            "export const touched = 1\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("apps/storefront/src/touched.ts"),
            "export const touched = 1\n",
        )
        .unwrap();
    });
    let (warm, warm_log) = build(&admin, &repo, &both, &agent, 2).await;
    let storefront_only = repo.commit("Storefront copy", |dir| {
        std::fs::write(
            dir.join("apps/storefront/src/copy.ts"),
            "export const copy = 'new'\n",
        )
        .unwrap();
    });
    let (front, front_log) = build(&admin, &repo, &storefront_only, &agent, 3).await;
    let backend_only = repo.commit("Backend route", |dir| {
        std::fs::write(
            dir.join("apps/backend/src/route.ts"),
            "export const route = 'new'\n",
        )
        .unwrap();
    });
    let (back, back_log) = build(&admin, &repo, &backend_only, &agent, 4).await;
    let (same, same_log) = build(&admin, &repo, &backend_only, &agent, 5).await;
    let cache_bytes = disk_usage(&dir.path().join("agent/cache"));

    if std::env::var_os("KILN_BENCH_VERBOSE").is_some() {
        for (name, log) in [
            ("cold", &cold_log),
            ("warm", &warm_log),
            ("storefront only", &front_log),
            ("backend only", &back_log),
            ("same commit", &same_log),
        ] {
            println!("=== {name} ===\n{log}");
        }
        println!("=== agent ===\n{}", agent.log_text());
    }
    println!();
    println!(
        "build cache: pnpm monorepo (Medusa backend + Next.js storefront), seconds and % of cold"
    );
    println!(
        "{:<18} {:>9} {:>16} {:>18} {:>16} {:>16}",
        "step", "cold", "warm (both)", "storefront only", "backend only", "same commit"
    );
    type Column = fn(&Steps) -> f64;
    let rows: [(&str, Column); 7] = [
        ("restore", |s| s.restore),
        ("provide pnpm", |s| s.provide),
        ("install", |s| s.install),
        ("backend build", |s| s.backend_build),
        ("storefront build", |s| s.storefront_build),
        ("pack", |s| s.pack),
        ("total", |s| s.total),
    ];
    for (name, get) in rows {
        let c = get(&cold);
        let cell = |s: &Steps| format!("{:>6.1} {:>5}", get(s), ratio(get(s), c));
        println!(
            "{name:<18} {c:>9.1} {:>16} {:>18} {:>16} {:>16}",
            cell(&warm),
            cell(&front),
            cell(&back),
            cell(&same)
        );
    }
    println!(
        "cache on disk after the five builds: {:.0} MiB",
        cache_bytes as f64 / (1 << 20) as f64
    );
    let next_cache = warm_log.contains("Restored apps/storefront/.next/cache");
    println!("Next.js cache restored for the warm build: {next_cache}");
}
