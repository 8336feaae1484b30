//! Opt-in acceptance on a real Medusa v2 backend (`tests/accept/medusa-backend`),
//! installed from the npm registry with its real `@medusajs/cli`. Off unless
//! `KILN_ACCEPT_MEDUSA=1`: it needs the registry and takes minutes.
//!
//! The same project is built by hand on the host (`npm ci && npm run build`) and
//! through the real agent and control plane; both `.medusa/server` file lists must
//! match.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_protocol::{CreateProject, DeploymentStatus, PushEvent};
use reqwest::StatusCode;

use crate::agent::AGENT;
use crate::support::*;

fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("accept/medusa-backend")
}

fn run(dir: &Path, command: &[&str]) -> Duration {
    let started = Instant::now();
    let status = std::process::Command::new(command[0])
        .args(&command[1..])
        .current_dir(dir)
        .env("MEDUSA_DISABLE_TELEMETRY", "true")
        .status()
        .unwrap();
    assert!(status.success(), "{command:?} failed in {}", dir.display());
    started.elapsed()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = walk(dir)
        .into_iter()
        .map(|path| path.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    files.sort();
    files
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            found.extend(walk(&entry.path()));
        } else {
            found.push(entry.path());
        }
    }
    found
}

fn files_in_archive(bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut files: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| !entry.header().entry_type().is_dir())
        .map(|entry| entry.path().unwrap().display().to_string())
        .collect();
    files.sort();
    files
}

/// Vite names admin assets `<name>-<8-character content hash>.<ext>`; the hash of a
/// bundle changes with the directory it was built in, so lists compare without it.
fn without_content_hash(path: &str) -> String {
    let Some(name) = path.strip_prefix("public/admin/assets/") else {
        return path.to_owned();
    };
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    match stem
        .len()
        .checked_sub(9)
        .map(|cut| (&stem[..cut], &stem[cut..]))
    {
        Some((base, hash)) if hash.starts_with('-') => {
            format!("public/admin/assets/{base}-#.{ext}")
        }
        _ => path.to_owned(),
    }
}

fn comparable(files: &[String]) -> Vec<String> {
    let mut names: Vec<String> = files.iter().map(|f| without_content_hash(f)).collect();
    names.sort();
    names
}

#[test]
fn content_hashes_are_ignored_and_nothing_else() {
    assert_eq!(
        without_content_hash("public/admin/assets/Trans-DeX-hjPS.js"),
        "public/admin/assets/Trans-#.js"
    );
    assert_eq!(
        without_content_hash("public/admin/assets/alert-CqgO4QCM.js"),
        "public/admin/assets/alert-#.js"
    );
    assert_eq!(
        without_content_hash("public/admin/index.html"),
        "public/admin/index.html"
    );
    assert_eq!(
        without_content_hash("src/api/store/custom/route.js"),
        "src/api/store/custom/route.js"
    );
}

#[tokio::test]
async fn real_medusa_backend_builds_like_by_hand() {
    if std::env::var_os("KILN_ACCEPT_MEDUSA").is_none() {
        eprintln!(
            "skip: set KILN_ACCEPT_MEDUSA=1 to build a real Medusa backend from the npm registry"
        );
        return;
    }
    let docker = docker().await.expect("the acceptance test needs Docker");
    let image = build_image().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_bundle = std::env::var("KILN_ACCEPT_CA_BUNDLE")
        .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into());

    // By hand, on the host.
    let by_hand = dir.path().join("by-hand");
    FixtureRepo::of(&by_hand, &project_dir());
    let source = by_hand.join("repo");
    let install = run(&source, &["npm", "ci", "--no-audit", "--no-fund"]);
    let build = run(&source, &["npm", "run", "build"]);
    let expected = files_under(&source.join(".medusa/server"));
    eprintln!(
        "by hand: npm ci {install:.1?}, npm run build {build:.1?}, {} files in .medusa/server",
        expected.len()
    );

    // Through the agent and the control plane.
    let repo = FixtureRepo::of(&dir.path().join("agent-repo"), &project_dir());
    let cp = ControlPlane::start(&dir.path().join("server")).await;
    let admin = cp.admin();
    let project = admin
        .create_project_with(CreateProject {
            name: "medusa".into(),
            repository_url: repo.url.clone(),
            backend_path: ".".into(),
            storefront_path: None,
            agent_labels: vec![],
            repository_token: None,
            secret_scan: Default::default(),
            submodules: false,
        })
        .await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let extra = format!(
        "install_network = \"host\"\nbuild_network = \"none\"\nextra_ca_certs = {ca_bundle:?}\nmemory = \"6GiB\"\njob_timeout = \"30m\""
    );
    let agent = AgentProcess::start(
        Path::new(AGENT),
        &cp.base_url(),
        &dir.path().join("agent"),
        image,
        &extra,
    )
    .await;
    let pushed = Instant::now();
    let outcome: kiln_protocol::EventOutcome = admin
        .post_json(
            "/api/v1/events/push",
            &PushEvent {
                repository: repo.url.clone(),
                branch: "main".into(),
                sha: repo.head(),
                author: "Ada".into(),
                message: "accept".into(),
            },
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    let id = outcome.deployments[0].id.clone();
    let deployment = loop {
        let deployment = admin.deployment(&id).await;
        match deployment.status {
            DeploymentStatus::AwaitingDeployment => break deployment,
            DeploymentStatus::Queued | DeploymentStatus::Building => {}
            other => panic!(
                "deployment ended {other}: {:?}\n{}\n{}",
                deployment.reason,
                admin
                    .get(&format!("/api/v1/deployments/{id}/logs/system"))
                    .await
                    .text(),
                agent.log_text()
            ),
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(1800),
            "the build took over 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let at = |status| {
        deployment
            .transitions
            .iter()
            .find(|t| t.status == status)
            .map(|t| t.at)
            .unwrap()
    };
    let claim_to_built = at(DeploymentStatus::AwaitingDeployment) - at(DeploymentStatus::Building);
    eprintln!("through the agent: push to awaiting_deployment {:.1?}, claim to awaiting_deployment {:.1}s", pushed.elapsed(), claim_to_built.num_milliseconds() as f64 / 1000.0);
    eprintln!(
        "system log:\n{}",
        admin
            .get(&format!("/api/v1/deployments/{id}/logs/system"))
            .await
            .text()
    );

    let artifact = admin
        .get(&format!(
            "/api/v1/deployments/{id}/artifacts/backend.tar.gz"
        ))
        .await;
    assert_eq!(artifact.status, StatusCode::OK);
    let built = files_in_archive(&artifact.body);
    eprintln!(
        "artifact: {} bytes, {} entries",
        artifact.body.len(),
        built.len()
    );
    assert_eq!(built.len(), expected.len(), "file counts differ");
    assert_eq!(
        comparable(&built),
        comparable(&expected),
        ".medusa/server differs between the agent's build and the build by hand"
    );
    assert!(
        containers_of_job(&docker, deployment.current_job_id.as_deref().unwrap())
            .await
            .is_empty()
    );
}
