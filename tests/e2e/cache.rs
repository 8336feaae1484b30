//! Issue 18: the build cache, with the real agent in Docker on the example shop
//! (an npm backend at the root, an npm storefront in `storefront/`): a cold
//! build fills it; a commit that changes only the storefront reuses the backend's
//! output and restores the storefront's node_modules; a redeploy without cache
//! builds everything; a pull request's preview reads its base branch's entries
//! but cannot write them, even when its build tries; closing it drops its scope.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_protocol::{
    Deployment, DeploymentStatus::*, PullRequestAction, PullRequestEvent, RedeployRequest,
};

use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use crate::agent::world_with;
use crate::support::*;

/// Every file of the entries of `scope` (by the `scope` file each scope keeps),
/// with its content's hash: what a build of another scope must never change.
fn scope_files(cache_dir: &Path, scope: &str) -> BTreeMap<PathBuf, String> {
    let mut files = BTreeMap::new();
    let Ok(projects) = std::fs::read_dir(cache_dir) else {
        return files;
    };
    for project in projects.flatten() {
        let Ok(scopes) = std::fs::read_dir(project.path()) else {
            continue;
        };
        for dir in scopes.flatten() {
            if std::fs::read_to_string(dir.path().join("scope"))
                .ok()
                .as_deref()
                != Some(scope)
            {
                continue;
            }
            for entry in walk(&dir.path()) {
                if entry.file_name().is_some_and(|name| name == "used") {
                    continue;
                }
                if let Ok(bytes) = std::fs::read(&entry) {
                    files.insert(entry.clone(), hex::encode(Sha256::digest(&bytes)));
                }
            }
        }
    }
    files
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            found.extend(walk(&entry.path()));
        } else if kind.is_file() {
            found.push(entry.path());
        }
    }
    found
}

/// What the stand-in `next` printed of the Server Actions key it got: its
/// fingerprint and the key as the log shows it; `None` when it got none.
fn server_actions_key(storefront_log: &str) -> Option<(String, String)> {
    let line = storefront_log
        .lines()
        .find_map(|line| line.trim().strip_prefix("Server Actions key "))?;
    let (fingerprint, shown) = line.split_once(": ")?;
    Some((fingerprint.to_owned(), shown.to_owned()))
}

fn artifact_sha(deployment: &Deployment, name: &str) -> String {
    deployment
        .artifacts
        .iter()
        .find(|artifact| artifact.descriptor.name == name)
        .map(|artifact| artifact.descriptor.sha256.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn issue_18_warm_builds_restore_and_reuse_and_previews_never_write_their_base() {
    let Some(world) = world_with(serde_json::json!([]), Some("storefront")).await else {
        return;
    };
    let agent = world.agent("agent", "").await;
    let cache_dir = world.root_dir().join("agent/cache");

    // Cold: nothing to restore; everything is installed, built and then kept.
    let cold = world.push(&world.repo.head()).await;
    let cold = world.settle(&cold.id, AwaitingDeployment, &agent).await;
    let system = world.log(&cold.id, "system").await;
    assert!(
        system.contains("Build cache: scope branch:main"),
        "{system}"
    );
    assert!(
        system.contains("no node_modules for . with key"),
        "{system}"
    );
    assert!(!system.contains("Restored node_modules"), "{system}");
    agent.until_logged("Cached the storefront output", 1).await;
    assert!(
        agent.log_text().contains("Cached node_modules of ."),
        "{}",
        agent.log_text()
    );

    // Only the storefront changes: the backend is reused, the storefront's
    // dependencies restored, its build run.
    let sha = world.repo.commit("Storefront copy", |dir| {
        std::fs::write(dir.join("storefront/copy.txt"), "new copy").unwrap();
    });
    let warm = world.push(&sha).await;
    let warm = world.settle(&warm.id, AwaitingDeployment, &agent).await;
    let system = world.log(&warm.id, "system").await;
    assert!(
        system.contains(&format!(
            "Reused the backend built by job {}",
            cold.current_job_id.clone().unwrap()
        )),
        "{system}"
    );
    assert!(
        system.contains("Restored node_modules of storefront"),
        "{system}"
    );
    assert!(system.contains("the install is skipped"), "{system}");
    assert!(
        !system.contains("Running `npm ci` (install)"),
        "no backend install: {system}"
    );
    assert!(
        !system.contains("Running `npm ci` (storefront: install)"),
        "{system}"
    );
    assert!(
        system.contains("(storefront: build)"),
        "the storefront did build: {system}"
    );
    assert_eq!(
        artifact_sha(&warm, "backend.tar.gz"),
        artifact_sha(&cold, "backend.tar.gz")
    );
    agent.until_logged("Cached the storefront output", 2).await;
    // Both builds of main got main's one Server Actions key (so Next.js's
    // webpack cache holds), masked in the log.
    let (main_key, shown) = server_actions_key(&world.log(&cold.id, "storefront").await)
        .expect("the cold build got a key");
    assert_eq!(shown, "***");
    let (warm_key, _) = server_actions_key(&world.log(&warm.id, "storefront").await)
        .expect("the warm build got a key");
    assert_eq!(warm_key, main_key);

    // A redeploy without cache builds everything afresh and keeps nothing.
    let redeploy: kiln_protocol::EventOutcome = world
        .admin
        .post_json(
            &format!("/api/v1/deployments/{}/redeploy", warm.id),
            &RedeployRequest { cache: Some(false) },
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    let fresh = world
        .settle(&redeploy.deployments[0].id, AwaitingDeployment, &agent)
        .await;
    let system = world.log(&fresh.id, "system").await;
    assert!(
        system.contains("Build cache: off for this build."),
        "{system}"
    );
    assert!(system.contains("Running `npm ci` (install)"), "{system}");
    assert!(
        !system.contains("Reused") && !system.contains("Restored"),
        "{system}"
    );
    let storefront = world.log(&fresh.id, "storefront").await;
    assert!(
        storefront.contains("Server Actions key: none given"),
        "{storefront}"
    );

    // A pull request whose build tries to spoil node_modules for everyone.
    let main_before = scope_files(&cache_dir, "branch:main");
    assert!(!main_before.is_empty());
    let feature = world.repo.commit("Try to poison the cache", |dir| {
        std::fs::write(dir.join("poison-node-modules"), "yes").unwrap();
    });
    let outcome: kiln_protocol::EventOutcome = world
        .admin
        .post_json(
            "/api/v1/events/pull_request",
            &PullRequestEvent {
                repository: world.repo.url.clone(),
                number: 5,
                action: PullRequestAction::Opened,
                branch: "feature".into(),
                sha: feature.clone(),
                author: "Mallory".into(),
                message: "Totally harmless".into(),
                people: Default::default(),
                base_branch: Some("main".into()),
            },
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    // Previews deploy themselves once built.
    let preview = world
        .admin
        .wait_for_status_in(&outcome.deployments[0].id, &[Live])
        .await;
    let system = world.log(&preview.id, "system").await;
    assert!(
        system.contains("Build cache: scope pr:5 (reads pr:5, then branch:main; writes only pr:5)"),
        "{system}"
    );
    assert!(
        system.contains(
            "Restored node_modules of . from branch:main's (read-only for this build) cache"
        ),
        "{system}"
    );
    let backend = world.log(&preview.id, "backend").await;
    assert!(
        backend.contains("poison: refused"),
        "the restored files are read-only: {backend}"
    );
    // Main's Server Actions key is a secret the preview never gets.
    let (preview_key, shown) = server_actions_key(&world.log(&preview.id, "storefront").await)
        .expect("the preview got a key");
    assert_ne!(preview_key, main_key);
    assert_eq!(shown, "***");
    agent.until_logged("Cached the storefront output", 3).await;
    assert_eq!(
        scope_files(&cache_dir, "branch:main"),
        main_before,
        "the preview changed nothing of main's cache"
    );
    assert!(
        !scope_files(&cache_dir, "pr:5").is_empty(),
        "the preview keeps its own"
    );

    // Closed: the next build of the project drops the preview's scope.
    let closed = world
        .admin
        .post_json(
            "/api/v1/events/pull_request",
            &PullRequestEvent {
                repository: world.repo.url.clone(),
                number: 5,
                action: PullRequestAction::Closed,
                branch: "feature".into(),
                sha: feature,
                author: "Mallory".into(),
                message: "Totally harmless".into(),
                people: Default::default(),
                base_branch: Some("main".into()),
            },
        )
        .await;
    assert_eq!(closed.status, StatusCode::CREATED, "{}", closed.text());
    let next = world.repo.commit("Backend change", |dir| {
        std::fs::write(dir.join("src/touched.js"), "module.exports = 1\n").unwrap();
    });
    let next = world.push(&next).await;
    let next = world.settle(&next.id, AwaitingDeployment, &agent).await;
    let system = world.log(&next.id, "system").await;
    assert!(
        system.contains("of closed pull requests (pr:5)"),
        "{system}"
    );
    assert!(scope_files(&cache_dir, "pr:5").is_empty());
    // A backend change rebuilds the backend, its node_modules restored.
    assert!(!system.contains("Reused the backend"), "{system}");
    assert!(
        system.contains("Restored node_modules of . from branch:main's cache"),
        "{system}"
    );
}

/// Issue 33: `kiln-agent build` on a developer's machine reuses a component's
/// output when its files are unchanged since an earlier local build, as a
/// push does: the second run builds nothing; a change to the storefront alone
/// rebuilds the storefront alone.
#[tokio::test]
async fn issue_33_a_second_local_build_of_unchanged_trees_builds_nothing() {
    let Some(_docker) = docker().await else {
        return;
    };
    let image = build_image().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = FixtureRepo::with_storefront(&dir.path().join("repo"));
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "work_dir = {:?}\nstate_dir = {:?}\nbuild_image = {image:?}\ninstall_network = \"none\"\n",
            dir.path().join("work"),
            dir.path().join("state"),
        ),
    )
    .unwrap();
    let build = |round: &str| {
        let output = std::process::Command::new(crate::agent::AGENT)
            .arg("--config")
            .arg(&config)
            .arg("build")
            .arg(&repo.dir)
            .arg("--out")
            .arg(dir.path().join(round))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{text}");
        text
    };
    let cold = build("cold");
    assert!(!cold.contains("Reused the"), "{cold}");
    let again = build("again");
    for component in ["backend", "storefront"] {
        assert!(
            again.contains(&format!("Reused the {component} built by job local-")),
            "{component} not reused: {again}"
        );
    }
    assert!(
        !again.contains("Running `npm run build` (build)"),
        "{again}"
    );
    // The artifacts are the same bytes.
    for name in ["backend.tar.gz", "storefront.tar.gz"] {
        assert_eq!(
            std::fs::read(dir.path().join("cold").join(name)).unwrap(),
            std::fs::read(dir.path().join("again").join(name)).unwrap(),
            "{name}"
        );
    }
    // Only the storefront changed: the backend's output is reused.
    std::fs::write(repo.dir.join("storefront/CHANGED"), "yes\n").unwrap();
    let storefront_only = build("storefront-only");
    assert!(
        storefront_only.contains("Reused the backend built by job local-")
            && !storefront_only.contains("Reused the storefront"),
        "{storefront_only}"
    );
}

/// Issue 33 §3, for component outputs: a new host whose cache is empty reuses
/// the output another host built from the same trees, through the control
/// plane's grant (the artifact it already keeps, held to its recorded
/// sha256), and the build's provenance names the deployment that built it.
#[tokio::test]
async fn issue_33_a_new_host_reuses_an_output_another_host_built_through_the_control_plane() {
    let Some(world) = world_with(serde_json::json!([]), None).await else {
        return;
    };
    let first_host = world.agent("first-host", "").await;
    let built = world.push(&world.repo.head()).await;
    let built = world
        .settle(&built.id, AwaitingDeployment, &first_host)
        .await;
    first_host
        .until_logged("Cache entries recorded by the control plane.", 1)
        .await;
    drop(first_host);

    // The same trees in a new commit, on a host that never built anything.
    let new_host = world.agent("new-host", "").await;
    let sha = world.repo.commit("Nothing but a new commit", |_| {});
    let reused = world.push(&sha).await;
    let reused = world
        .settle(&reused.id, AwaitingDeployment, &new_host)
        .await;
    let system = world.log(&reused.id, "system").await;
    let built_by = built.current_job_id.clone().unwrap();
    assert!(
        system.contains(&format!("Reused the backend built by job {built_by}"))
            && system.contains("another host, through the control plane (branch:main's cache"),
        "{system}"
    );
    assert!(
        !system.contains("Running `npm run build` (build)"),
        "{system}"
    );
    assert_eq!(
        artifact_sha(&reused, "backend.tar.gz"),
        artifact_sha(&built, "backend.tar.gz")
    );
    let signed: kiln_protocol::provenance::DeploymentProvenance = world
        .admin
        .get(&format!("/api/v1/deployments/{}/provenance", reused.id))
        .await
        .expect_json(StatusCode::OK)
        .await;
    let keys: kiln_protocol::provenance::PublicKeys = world
        .admin
        .get("/api/v1/provenance/keys")
        .await
        .expect_json(StatusCode::OK)
        .await;
    let statement = kiln_protocol::provenance::verify(&signed.envelopes[0], &keys.keys).unwrap();
    let outputs: Vec<_> = statement
        .restored()
        .filter(|entry| entry.annotation(kiln_protocol::provenance::CACHE_KIND) == Some("output"))
        .collect();
    assert_eq!(outputs.len(), 1, "{statement:?}");
    assert_eq!(
        outputs[0].annotation(kiln_protocol::provenance::CACHE_PUBLISHED_BY_DEPLOYMENT),
        Some(built.id.as_str())
    );
}
