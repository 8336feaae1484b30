//! Acceptance on real Medusa projects installed from the npm registry, with
//! their real `@medusajs/cli` and Next.js:
//!
//! - `tests/accept/medusa-backend`, an npm backend written like Medusa's default
//!   starter, and the same backend on yarn 4 with a committed `yarnPath`: each built
//!   by hand on the host and through the real agent and control plane, with the same
//!   `.medusa/server` file list. Opt-in (`KILN_ACCEPT_MEDUSA=1`): minutes each.
//! - `tests/accept/medusa-monorepo`, a pnpm 10 workspace written like Medusa's
//!   official starter (`apps/backend`, `apps/storefront` on Next.js 15), built
//!   through Kiln with no backend or storefront path set; its storefront asks a
//!   stand-in Store API at build time. Runs with `KILN_ACCEPT_MONOREPO=1` (CI sets
//!   it) or `KILN_ACCEPT_MEDUSA=1`.
//! - Medusa's B2B starter's shape: the backend in `backend/` asking for Node 22,
//!   the Next.js storefront in `storefront/`, each with its own npm lockfile, and
//!   no package.json at the root (`tests/accept/medusa-siblings` holds the
//!   storefront's own package.json and lockfile). Runs with `KILN_ACCEPT_SIBLINGS=1` (CI sets it) or
//!   `KILN_ACCEPT_MEDUSA=1`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_protocol::{CreateProject, Deployment, DeploymentStatus, PushEvent};
use reqwest::StatusCode;

use crate::agent::AGENT;
use crate::support::*;

fn accept_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("accept")
        .join(name)
}

fn ca_bundle() -> String {
    std::env::var("KILN_ACCEPT_CA_BUNDLE")
        .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into())
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

/// A project of `repo` built through a control plane and an agent (with the
/// registry reachable, and the host's loopback from the build step where the
/// storefront needs the stand-in Store API); returns the built deployment and the
/// control plane to read it from.
async fn build_through_kiln(
    dir: &Path,
    repo: &FixtureRepo,
    variables: serde_json::Value,
    agent_settings: &str,
) -> (Deployment, ControlPlane, AgentProcess) {
    let image = build_image().await;
    let cp = ControlPlane::start(&dir.join("server")).await;
    let admin = cp.admin();
    let project = admin
        .create_project_with(CreateProject {
            // Nothing set: Kiln finds the backend and the storefront itself.
            backend_path: ".".into(),
            ..CreateProject::new("medusa", &repo.url)
        })
        .await;
    let environment = admin
        .create_environment(&project, "Production", "main")
        .await;
    admin.set_variables(&environment.id, variables).await;
    let extra = format!(
        "install_network = \"bridge\"\nbuild_network = \"host\"\nextra_ca_certs = {:?}\nmemory = \"6GiB\"\njob_timeout = \"30m\"\n{agent_settings}",
        ca_bundle()
    );
    let agent = AgentProcess::start(
        Path::new(AGENT),
        &cp.base_url(),
        &dir.join("agent"),
        image,
        &extra,
    )
    .await;
    let deployment = push_and_build(&admin, repo, &repo.head(), &agent).await;
    (deployment, cp, agent)
}

/// Pushes `sha` to `main` and waits for its build; prints how long it took and
/// its system log.
async fn push_and_build(
    admin: &Api,
    repo: &FixtureRepo,
    sha: &str,
    agent: &AgentProcess,
) -> Deployment {
    let pushed = Instant::now();
    let outcome: kiln_protocol::EventOutcome = admin
        .post_json(
            "/api/v1/events/push",
            &PushEvent {
                repository: repo.url.clone(),
                branch: "main".into(),
                sha: sha.to_owned(),
                author: "Ada".into(),
                message: "accept".into(),
                people: Default::default(),
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
                "deployment ended {other}: {:?}\n{}\nstorefront log (its end):\n{}\n{}",
                deployment.reason,
                admin
                    .get(&format!("/api/v1/deployments/{id}/logs/system"))
                    .await
                    .text(),
                {
                    let log = admin
                        .get(&format!("/api/v1/deployments/{id}/logs/storefront"))
                        .await
                        .text();
                    let lines: Vec<&str> = log.lines().collect();
                    lines[lines.len().saturating_sub(40)..].join("\n")
                },
                agent.log_text()
            ),
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(1800),
            "the build took over 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "through the agent: push to awaiting_deployment {:.1?}\nsystem log:\n{}",
        pushed.elapsed(),
        admin
            .get(&format!("/api/v1/deployments/{id}/logs/system"))
            .await
            .text()
    );
    deployment
}

/// Waits until the agent has published what the last build left in the cache.
async fn until_cached(agent: &AgentProcess, builds: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while agent
        .log_text()
        .matches("Cached the storefront output")
        .count()
        < builds
    {
        assert!(
            Instant::now() < deadline,
            "nothing cached:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn artifact_files(cp: &ControlPlane, id: &str, name: &str) -> Vec<String> {
    let artifact = cp
        .admin()
        .get(&format!("/api/v1/deployments/{id}/artifacts/{name}"))
        .await;
    assert_eq!(artifact.status, StatusCode::OK, "{name}");
    files_in_archive(&artifact.body)
}

fn opted_in(variable: &str) -> bool {
    std::env::var_os(variable).is_some()
}

#[tokio::test]
async fn real_medusa_backend_builds_like_by_hand() {
    if !opted_in("KILN_ACCEPT_MEDUSA") {
        eprintln!(
            "skip: set KILN_ACCEPT_MEDUSA=1 to build a real Medusa backend from the npm registry"
        );
        return;
    }
    let docker = docker().await.expect("the acceptance test needs Docker");
    let dir = tempfile::tempdir().unwrap();
    let by_hand = dir.path().join("by-hand");
    FixtureRepo::of(&by_hand, &accept_dir("medusa-backend"));
    let source = by_hand.join("repo");
    let install = run(&source, &["npm", "ci", "--no-audit", "--no-fund"]);
    let build = run(&source, &["npm", "run", "build"]);
    let expected = files_under(&source.join(".medusa/server"));
    eprintln!(
        "by hand: npm ci {install:.1?}, npm run build {build:.1?}, {} files in .medusa/server",
        expected.len()
    );
    let repo = FixtureRepo::of(
        &dir.path().join("agent-repo"),
        &accept_dir("medusa-backend"),
    );
    let (deployment, cp, _agent) =
        build_through_kiln(dir.path(), &repo, serde_json::json!([]), "").await;
    let built = artifact_files(&cp, &deployment.id, "backend.tar.gz").await;
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

/// The npm backend as a yarn 4 project with its release committed (`yarnPath`),
/// as `medusa-starter-default` is: the lockfile is made once on the host.
fn yarn_berry_project(dir: &Path) -> PathBuf {
    let project = dir.join("berry-project");
    FixtureRepo::of(&project, &accept_dir("medusa-backend"));
    let source = project.join("repo");
    std::fs::remove_dir_all(source.join(".git")).unwrap();
    std::fs::remove_file(source.join("package-lock.json")).unwrap();
    let releases = source.join(".yarn/releases");
    std::fs::create_dir_all(&releases).unwrap();
    let packed = std::process::Command::new("npm")
        .args(["pack", "--silent", "@yarnpkg/cli-dist@4.12.0"])
        .current_dir(&releases)
        .output()
        .unwrap();
    assert!(packed.status.success(), "npm pack @yarnpkg/cli-dist");
    run(&releases, &["tar", "-xzf", "yarnpkg-cli-dist-4.12.0.tgz"]);
    std::fs::rename(
        releases.join("package/bin/yarn.js"),
        releases.join("yarn-4.12.0.cjs"),
    )
    .unwrap();
    std::fs::remove_dir_all(releases.join("package")).unwrap();
    std::fs::remove_file(releases.join("yarnpkg-cli-dist-4.12.0.tgz")).unwrap();
    std::fs::write(
        source.join(".yarnrc.yml"),
        "nodeLinker: node-modules\nyarnPath: .yarn/releases/yarn-4.12.0.cjs\n",
    )
    .unwrap();
    let package_json = source.join("package.json");
    let mut package: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&package_json).unwrap()).unwrap();
    package["packageManager"] = "yarn@4.12.0".into();
    std::fs::write(
        &package_json,
        serde_json::to_string_pretty(&package).unwrap(),
    )
    .unwrap();
    run(
        &source,
        &[
            "node",
            ".yarn/releases/yarn-4.12.0.cjs",
            "install",
            "--mode=update-lockfile",
        ],
    );
    source
}

#[tokio::test]
async fn real_medusa_backend_on_yarn_berry_with_yarn_path_builds_like_by_hand() {
    if !opted_in("KILN_ACCEPT_MEDUSA") {
        eprintln!("skip: set KILN_ACCEPT_MEDUSA=1 to build a real Medusa backend on yarn 4");
        return;
    }
    docker().await.expect("the acceptance test needs Docker");
    let dir = tempfile::tempdir().unwrap();
    let project = yarn_berry_project(dir.path());
    let by_hand = dir.path().join("by-hand");
    FixtureRepo::of(&by_hand, &project);
    let source = by_hand.join("repo");
    let install = run(
        &source,
        &[
            "node",
            ".yarn/releases/yarn-4.12.0.cjs",
            "install",
            "--immutable",
        ],
    );
    let build = run(
        &source,
        &["node", ".yarn/releases/yarn-4.12.0.cjs", "run", "build"],
    );
    let expected = files_under(&source.join(".medusa/server"));
    eprintln!(
        "by hand: yarn install {install:.1?}, yarn run build {build:.1?}, {} files",
        expected.len()
    );
    let repo = FixtureRepo::of(&dir.path().join("agent-repo"), &project);
    let (deployment, cp, _agent) =
        build_through_kiln(dir.path(), &repo, serde_json::json!([]), "").await;
    let system = cp
        .admin()
        .get(&format!(
            "/api/v1/deployments/{}/logs/system",
            deployment.id
        ))
        .await
        .text();
    assert!(
        system.contains("install `node .yarn/releases/yarn-4.12.0.cjs install --immutable`"),
        "{system}"
    );
    let built = artifact_files(&cp, &deployment.id, "backend.tar.gz").await;
    assert_eq!(comparable(&built), comparable(&expected));
}

/// A stand-in for the Medusa Store API on this host's loopback: every list is
/// empty, so a storefront's `generateStaticParams` render nothing but build.
#[tokio::test]
async fn issue_14_the_official_pnpm_monorepo_starter_builds_backend_and_storefront() {
    if !opted_in("KILN_ACCEPT_MONOREPO") && !opted_in("KILN_ACCEPT_MEDUSA") {
        eprintln!("skip: set KILN_ACCEPT_MONOREPO=1 to build a real pnpm Medusa monorepo from the npm registry");
        return;
    }
    let docker = docker().await.expect("the acceptance test needs Docker");
    let dir = tempfile::tempdir().unwrap();
    let (port, _store) = stand_in_store_api().await;
    let repo = FixtureRepo::of(&dir.path().join("repo"), &accept_dir("medusa-monorepo"));
    let (deployment, cp, agent) = build_through_kiln(
        dir.path(),
        &repo,
        serde_json::json!([
            {"name": "MEDUSA_BACKEND_URL", "value": format!("http://127.0.0.1:{port}")},
            {"name": "NEXT_PUBLIC_MEDUSA_PUBLISHABLE_KEY", "value": format!("pk_{}", "0a1b2c3d".repeat(8))},
        ]),
        "",
    )
    .await;
    let system = cp
        .admin()
        .get(&format!(
            "/api/v1/deployments/{}/logs/system",
            deployment.id
        ))
        .await
        .text();
    for expected in [
        "Backend: backend: Medusa, dependency `@medusajs/framework` in apps/backend/package.json",
        "Running `provide pnpm@10.11.1` (package-manager).",
        "install `pnpm install --frozen-lockfile` in .",
        "Storefront: the install in . the backend ran covers it.",
        "Running `pnpm exec next build` (storefront: build).",
    ] {
        assert!(system.contains(expected), "{expected:?} not in:\n{system}");
    }
    assert_eq!(
        system
            .matches("Running `pnpm install --frozen-lockfile`")
            .count(),
        1,
        "one install at the workspace root"
    );
    let backend = artifact_files(&cp, &deployment.id, "backend.tar.gz").await;
    assert!(
        backend.len() > 300,
        "{} files in .medusa/server",
        backend.len()
    );
    assert!(backend.contains(&"public/admin/index.html".to_owned()));
    let storefront = artifact_files(&cp, &deployment.id, "storefront.tar.gz").await;
    assert!(
        storefront.contains(&"BUILD_ID".to_owned()),
        "{storefront:?}"
    );
    assert!(!storefront.iter().any(|path| path.starts_with("cache/")));
    assert!(
        containers_of_job(&docker, deployment.current_job_id.as_deref().unwrap())
            .await
            .is_empty()
    );

    // Issue 18: warm, a real Medusa backend and Next.js storefront build on
    // restored, read-only node_modules; a storefront-only change reuses the backend.
    until_cached(&agent, 1).await;
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
    let warm = push_and_build(&cp.admin(), &repo, &both, &agent).await;
    let system = system_log(&cp, &warm.id).await;
    for expected in [
        "Restored node_modules of . from branch:main's cache",
        "the install is skipped",
        "Restored pnpm@10.11.1 from branch:main's cache",
        "Restored apps/storefront/.next/cache",
    ] {
        assert!(
            system.contains(expected),
            "{expected:?} not in:\n{system}\nagent log:\n{}",
            agent.log_text()
        );
    }
    assert!(!system.contains("(install)"), "{system}");
    until_cached(&agent, 2).await;
    let storefront_only = repo.commit("Storefront copy", |dir| {
        std::fs::write(
            dir.join("apps/storefront/src/copy.ts"),
            "export const copy = 'new'\n",
        )
        .unwrap();
    });
    let reused = push_and_build(&cp.admin(), &repo, &storefront_only, &agent).await;
    let system = system_log(&cp, &reused.id).await;
    assert!(
        system.contains("Reused the backend built by job"),
        "{system}"
    );
    assert!(system.contains("(storefront: build)"), "{system}");
}

async fn system_log(cp: &ControlPlane, id: &str) -> String {
    cp.admin()
        .get(&format!("/api/v1/deployments/{id}/logs/system"))
        .await
        .text()
}

#[tokio::test]
async fn issue_30_sibling_folders_with_a_backend_on_node_22_build_with_no_paths_set() {
    if !opted_in("KILN_ACCEPT_SIBLINGS") && !opted_in("KILN_ACCEPT_MEDUSA") {
        eprintln!("skip: set KILN_ACCEPT_SIBLINGS=1 to build real backend/ + storefront/ siblings from the npm registry");
        return;
    }
    let docker = docker().await.expect("the acceptance test needs Docker");
    let node_22 = node_image(22).await;
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("siblings");
    copy_dir(&accept_dir("medusa-backend"), &project.join("backend"), &[]);
    copy_dir(
        &accept_dir("medusa-monorepo").join("apps/storefront"),
        &project.join("storefront"),
        &[],
    );
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(
            accept_dir("medusa-siblings").join("storefront").join(file),
            project.join("storefront").join(file),
        )
        .unwrap();
    }
    let backend_package = project.join("backend/package.json");
    let mut package: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&backend_package).unwrap()).unwrap();
    package["engines"]["node"] = "22.x".into();
    std::fs::write(
        &backend_package,
        serde_json::to_string_pretty(&package).unwrap(),
    )
    .unwrap();
    let repo = FixtureRepo::of(&dir.path().join("repo"), &project);
    let (port, _store) = stand_in_store_api().await;
    let (deployment, cp, _agent) = build_through_kiln(
        dir.path(),
        &repo,
        serde_json::json!([
            {"name": "MEDUSA_BACKEND_URL", "value": format!("http://127.0.0.1:{port}")},
            {"name": "NEXT_PUBLIC_MEDUSA_PUBLISHABLE_KEY", "value": format!("pk_{}", "0a1b2c3d".repeat(8))},
        ]),
        &format!(
            "node_images = {{ \"20\" = {:?}, \"22\" = {node_22:?} }}",
            build_image().await
        ),
    )
    .await;
    let system = system_log(&cp, &deployment.id).await;
    for expected in [
        "Backend: backend: Medusa, dependency `@medusajs/framework` in backend/package.json",
        "Backend: builds with Node 22.",
        "22.x (engines.node in backend/package.json) asks for it.",
        "Storefront: builds with Node 20.",
        "Storefront: nextjs: dependency `next` in storefront/package.json",
        "Running `npm ci` (install).",
        "Running `npx --no-install next build` (storefront: build).",
    ] {
        assert!(system.contains(expected), "{expected:?} not in:\n{system}");
    }
    let backend = artifact_files(&cp, &deployment.id, "backend.tar.gz").await;
    assert!(backend.contains(&"public/admin/index.html".to_owned()));
    let storefront = artifact_files(&cp, &deployment.id, "storefront.tar.gz").await;
    assert!(
        storefront.contains(&"BUILD_ID".to_owned()),
        "{storefront:?}"
    );
    assert!(
        containers_of_job(&docker, deployment.current_job_id.as_deref().unwrap())
            .await
            .is_empty()
    );
}

/// Issue 31: Medusa's starter, built and deployed through Kiln to a deploy
/// host with a real PostgreSQL and a real Caddy: `/health` answers 200 through
/// Caddy by hostname, `/app` serves the admin, and `/store/products` answers as
/// Medusa does without a publishable key. Runs with `KILN_ACCEPT_DEPLOY=1`
/// (CI sets it) or `KILN_ACCEPT_MEDUSA=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue_31_the_real_medusa_starter_deploys_live_behind_caddy() {
    if !opted_in("KILN_ACCEPT_DEPLOY") && !opted_in("KILN_ACCEPT_MEDUSA") {
        eprintln!("skip: set KILN_ACCEPT_DEPLOY=1 to build and deploy a real Medusa backend");
        return;
    }
    docker().await.expect("the acceptance test needs Docker");
    let postgres = Postgres::start();
    let caddy = CaddyProcess::start();
    let host = "api.medusa.test";
    let dir = tempfile::tempdir().unwrap();
    let repo = FixtureRepo::of(&dir.path().join("repo"), &accept_dir("medusa-backend"));
    let cp = ControlPlane::start(&dir.path().join("server")).await;
    let admin = cp.admin();
    let project = admin
        .create_project_with(CreateProject::new("medusa", &repo.url))
        .await;
    let environment = admin
        .create_environment(&project, "Production", "main")
        .await;
    let _containers = ReleaseContainers {
        environment_id: environment.id.clone(),
    };
    admin
        .set_variables(
            &environment.id,
            serde_json::json!([{"name": "DATABASE_URL", "value": postgres.url, "secret": true, "build": false}]),
        )
        .await;
    let reply = admin
        .send_json(
            reqwest::Method::PATCH,
            &format!("/api/v1/environments/{}", environment.id),
            &serde_json::json!({
                "auto_deploy": true,
                "deploy": {"backend_hostname": host, "health_timeout_seconds": 300}
            }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let extra = format!(
        "install_network = \"bridge\"\nbuild_network = \"host\"\nextra_ca_certs = {:?}\nmemory = \"6GiB\"\njob_timeout = \"30m\"\nroles = [\"build\", \"deploy\"]\ncaddy_admin_url = {:?}\ncaddy_listen = \"127.0.0.1:{}\"\ndeploy_network = \"host\"\n",
        ca_bundle(),
        caddy.admin,
        caddy.listen
    );
    let agent = AgentProcess::start(
        Path::new(AGENT),
        &cp.base_url(),
        &dir.path().join("agent"),
        build_image().await,
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
                message: "accept deploy".into(),
                people: Default::default(),
            },
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    let id = outcome.deployments[0].id.clone();
    loop {
        let deployment = admin.deployment(&id).await;
        match deployment.status {
            DeploymentStatus::Live => break,
            DeploymentStatus::Queued
            | DeploymentStatus::Building
            | DeploymentStatus::AwaitingDeployment
            | DeploymentStatus::Deploying => {}
            other => panic!(
                "deployment ended {other}: {:?}\n{}\n{}\n{}",
                deployment.reason,
                system_log(&cp, &id).await,
                admin
                    .get(&format!("/api/v1/deployments/{id}/logs/deploy"))
                    .await
                    .text(),
                agent.log_text()
            ),
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(1800),
            "push to live took over 30 minutes"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let deploy_log = admin
        .get(&format!("/api/v1/deployments/{id}/logs/deploy"))
        .await
        .text();
    eprintln!(
        "push to live {:.1?}\nsystem log:\n{}\ndeploy log:\n{deploy_log}",
        pushed.elapsed(),
        system_log(&cp, &id).await
    );
    let (status, body) = caddy.get(host, "/health").await.expect("an answer");
    assert_eq!((status, body.as_str()), (200, "OK"));
    let (status, admin_page) = caddy.get(host, "/app/").await.expect("an answer");
    assert_eq!(status, 200, "{admin_page}");
    assert!(
        admin_page.to_lowercase().contains("<!doctype html"),
        "{admin_page}"
    );
    let (status, products) = caddy.get(host, "/store/products").await.expect("an answer");
    assert_eq!(status, 400, "{products}");
    assert!(
        products.contains("Publishable API key required"),
        "{products}"
    );
    assert!(postgres.tables() > 50, "the migrations made too few tables");
}
