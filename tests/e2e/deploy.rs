//! Issue 31: a push ends in a running shop. An agent with the deploy role
//! loads the release image, runs the migrations against a real PostgreSQL,
//! starts the server, health-checks it and switches a real Caddy to it.

use std::time::{Duration, Instant};

use kiln_protocol::DeploymentStatus::*;
use reqwest::{Method, StatusCode};
use sha2::Digest;

use super::agent::{world, world_with};
use kiln_tests::support::{containers_labelled, CaddyProcess, Postgres};

/// Deployment `deployment_id`'s containers running `service`.
async fn release_containers(
    docker: &bollard::Docker,
    deployment_id: &str,
    service: &str,
) -> Vec<String> {
    containers_labelled(
        docker,
        vec![
            format!("kiln.deployment={deployment_id}"),
            format!("kiln.service={service}"),
        ],
    )
    .await
}

/// The containers of environment `environment_id`'s releases.
async fn release_containers_of(docker: &bollard::Docker, environment_id: &str) -> Vec<String> {
    containers_labelled(docker, vec![format!("kiln.environment={environment_id}")]).await
}

const HOST: &str = "api.shop.test";

/// The tags of `repository` on the Docker host.
async fn image_tags(docker: &bollard::Docker, repository: &str) -> Vec<String> {
    let filters = std::collections::HashMap::from([(
        "reference".to_owned(),
        vec![format!("{repository}:*")],
    )]);
    docker
        .list_images(Some(
            bollard::query_parameters::ListImagesOptionsBuilder::new()
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap()
        .into_iter()
        .flat_map(|image| image.repo_tags)
        .collect()
}
const STOREFRONT_HOST: &str = "shop.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue_31_a_push_ends_live_behind_caddy_switches_with_no_failed_request_and_rolls_back_with_no_build(
) {
    let postgres = Postgres::start();
    let variables =
        serde_json::json!([{"name": "DATABASE_URL", "value": postgres.url, "secret": true}]);
    let Some(world) = world_with(variables, Some("storefront")).await else {
        return;
    };
    let _containers = kiln_tests::support::ReleaseContainers {
        environment_id: world.environment_id.clone(),
    };
    let caddy = CaddyProcess::start();
    let reply = world
        .admin
        .send_json(
            Method::PATCH,
            &format!("/api/v1/environments/{}", world.environment_id),
            &serde_json::json!({
                "auto_deploy": true,
                "deploy": {"agent_labels": ["edge"], "backend_hostname": HOST, "storefront_hostname": STOREFRONT_HOST, "health_timeout_seconds": 30}
            }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // A hostname that would inject Caddy config is refused, naming the field.
    let refused = world
        .admin
        .send_json(
            Method::PATCH,
            &format!("/api/v1/environments/{}", world.environment_id),
            &serde_json::json!({"deploy": {"backend_hostname": "x\"},{\"handler\":\"static_response"}}),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        refused.text().contains("backend_hostname"),
        "{}",
        refused.text()
    );

    let agent = world
        .agent(
            "agent",
            &format!(
                "roles = [\"build\", \"deploy\"]\nlabels = [\"edge\"]\ncaddy_admin_url = \"{}\"\ncaddy_listen = \"127.0.0.1:{}\"\ndeploy_network = \"host\"\n",
                caddy.admin, caddy.listen
            ),
        )
        .await;

    // The first push: built with a release image, migrated, live behind Caddy.
    let first_sha = world.repo.commit("release one", |dir| {
        std::fs::write(dir.join("src/version.txt"), "one\n").unwrap();
    });
    let first = world.push(&first_sha).await;
    let live = world.settle(&first.id, Live, &agent).await;
    assert!(
        live.artifacts
            .iter()
            .any(|artifact| artifact.descriptor.name == kiln_protocol::BACKEND_RELEASE),
        "{:?}",
        live.artifacts
    );
    // The release image is an OCI image layout (which Docker loads too):
    // every blob named by its sha256.
    let archive = world
        .admin
        .get(&format!(
            "/api/v1/deployments/{}/artifacts/{}",
            first.id,
            kiln_protocol::BACKEND_RELEASE
        ))
        .await;
    assert_eq!(archive.status, 200);
    let mut names = Vec::new();
    let mut tar = tar::Archive::new(archive.body.as_slice());
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut hasher = sha2::Sha256::new();
        std::io::copy(&mut entry, &mut hasher).unwrap();
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            assert_eq!(hex, hex::encode(hasher.finalize()), "{name}");
        }
        names.push(name);
    }
    for required in ["oci-layout", "index.json", "manifest.json"] {
        assert!(names.iter().any(|name| name == required), "{names:?}");
    }
    let deploy_log = world.log(&first.id, "deploy").await;
    for step in [
        "Loaded release image",
        "medusa db:migrate",
        "Health check passed",
        "Caddy",
    ] {
        assert!(deploy_log.contains(step), "{step} missing:\n{deploy_log}");
    }
    assert_eq!(
        caddy.get(HOST, "/version").await,
        Some((200, "one".to_owned())),
        "{deploy_log}"
    );
    assert_eq!(caddy.get(HOST, "/health").await.map(|(s, _)| s), Some(200));
    assert_eq!(postgres.migrations(), ["one"]);
    // The storefront runs `next start` from its own release image, on its
    // own hostname.
    let (status, page) = caddy.get(STOREFRONT_HOST, "/").await.unwrap();
    assert_eq!((status, page.contains("Store on")), (200, true), "{page}");
    assert!(
        live.artifacts
            .iter()
            .any(|artifact| artifact.descriptor.name == kiln_protocol::STOREFRONT_RELEASE),
        "{:?}",
        live.artifacts
    );

    // The runtime log: the live server's output, each line after its
    // service, followed as it comes.
    let (followed, follow) = follow_log(format!(
        "{}/api/v1/deployments/{}/logs/runtime?follow=true",
        world.cp.base_url(),
        first.id
    ));
    assert_eq!(
        caddy.get(HOST, "/runtime-probe").await.map(|(s, _)| s),
        Some(404)
    );
    until_contains(
        &followed,
        "server | {\"level\":\"http\",\"message\":\"GET /runtime-probe 404\"",
    )
    .await;
    // Output the release prints while its agent is away is not lost.
    let mut agent = agent;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(
        caddy
            .get(HOST, "/while-the-agent-was-away")
            .await
            .map(|(s, _)| s),
        Some(404)
    );
    agent.spawn();
    until_contains(&followed, "GET /while-the-agent-was-away 404").await;
    // Filtered on the server: the server's lines with "probe", and the
    // migrations' output, which the deploy log holds.
    let filtered = world
        .admin
        .get(&format!(
            "/api/v1/deployments/{}/logs/runtime/filter?services=server&levels=info&q=runtime-probe",
            first.id
        ))
        .await
        .expect_json::<serde_json::Value>(StatusCode::OK)
        .await;
    let texts: Vec<&str> = filtered["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["text"].as_str().unwrap())
        .collect();
    // (Twice, at times: the agent's restart above resumes from the second of
    // its last line, and a line may come again; none is lost.)
    assert!(
        (1..=2).contains(&texts.len())
            && texts
                .iter()
                .all(|text| text.contains("GET /runtime-probe 404")),
        "{filtered}"
    );
    assert_eq!(filtered["lines"][0]["service"], "server");
    let migrations = world
        .admin
        .get(&format!(
            "/api/v1/deployments/{}/logs/runtime/filter?services=migrations",
            first.id
        ))
        .await
        .expect_json::<serde_json::Value>(StatusCode::OK)
        .await;
    assert!(
        migrations["matched"].as_u64().unwrap() > 0
            && migrations["lines"]
                .as_array()
                .unwrap()
                .iter()
                .all(|line| line["stream"] == "deploy" && line["service"] == "migrations"),
        "{migrations}"
    );
    let refused = world
        .admin
        .get(&format!(
            "/api/v1/deployments/{}/logs/runtime/filter?levels=loud",
            first.id
        ))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.text().contains("loud"), "{}", refused.text());

    // A commit whose server exits at start: deploy_failed with its output;
    // the first release still answers.
    let broken_sha = world.repo.commit("cannot start", |dir| {
        std::fs::write(dir.join("src/version.txt"), "broken\n").unwrap();
        std::fs::write(dir.join("src/exit-at-start"), "").unwrap();
    });
    let broken = world.push(&broken_sha).await;
    let failed = world.settle(&broken.id, DeployFailed, &agent).await;
    let reason = failed.reason.unwrap_or_default();
    assert!(
        reason.contains("exited with code") && reason.contains("src/exit-at-start"),
        "{reason}"
    );
    assert_eq!(
        caddy.get(HOST, "/version").await,
        Some((200, "one".to_owned()))
    );

    // The next good push switches over; the first becomes ready.
    // It also makes the storefront standalone, with a public/ file.
    let third_sha = world.repo.commit("release three", |dir| {
        std::fs::remove_file(dir.join("src/exit-at-start")).unwrap();
        std::fs::write(dir.join("src/version.txt"), "three\n").unwrap();
        std::fs::write(
            dir.join("storefront/next.config.js"),
            "module.exports = { output: \"standalone\" }\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("storefront/public")).unwrap();
        std::fs::write(dir.join("storefront/public/robots.txt"), "User-agent: *\n").unwrap();
    });
    // A steady load through Caddy across the switch: no request fails.
    let load = Load::start(caddy.listen);
    let third = world.push(&third_sha).await;
    world.settle(&third.id, Live, &agent).await;
    assert_eq!(
        caddy.get(HOST, "/version").await,
        Some((200, "three".to_owned()))
    );
    // The standalone storefront serves its page, .next/static and public/.
    for (path, wanted) in [
        ("/", "Store on"),
        ("/_next/static/chunks/app.js", "storefront"),
        ("/robots.txt", "User-agent"),
    ] {
        let (status, body) = caddy.get(STOREFRONT_HOST, path).await.unwrap();
        assert_eq!(
            (status, body.contains(wanted)),
            (200, true),
            "{path}: {body}"
        );
    }
    let system = world.log(&third.id, "system").await;
    assert!(system.contains("(the standalone server.js)"), "{system}");
    let system = world.log(&first.id, "system").await;
    assert!(system.contains("(`next start`)"), "{system}");
    let (sent, failed, versions) = load.stop().await;
    assert!(sent > 50, "only {sent} requests were sent");
    assert_eq!(
        failed,
        Vec::<String>::new(),
        "{} of {sent} requests failed",
        failed.len()
    );
    assert!(
        versions.contains("one") && versions.contains("three"),
        "{versions:?}"
    );
    assert_eq!(world.admin.deployment(&first.id).await.status, Ready);
    // Replaced, the first release's runtime log ends, whole.
    tokio::time::timeout(Duration::from_secs(60), follow)
        .await
        .expect("the runtime follow ends once the release is replaced")
        .unwrap();
    let runtime = followed.lock().unwrap().clone();
    assert!(
        runtime.contains("server | {\"level\":\"info\",\"message\":\"Server is ready on port"),
        "{runtime}"
    );
    assert!(runtime.contains("storefront |  ✓ Ready"), "{runtime}");
    assert!(
        runtime
            .lines()
            .all(|line| line.starts_with("server | ") || line.starts_with("storefront | ")),
        "{runtime}"
    );
    // Its own release's layer of dependencies was reused.
    let system = world.log(&third.id, "system").await;
    assert!(
        system.contains("production dependencies unchanged"),
        "{system}"
    );
    eventually(
        "the first release's server to stop",
        Duration::from_secs(30),
        || release_containers(&world.docker, &first.id, "server"),
        Vec::is_empty,
    )
    .await;

    // Roll back to the first: no build, no migrations, the kept image.
    let rollback = world
        .admin
        .send_json(
            Method::POST,
            &format!("/api/v1/deployments/{}/rollback", first.id),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(rollback.status, 202, "{}", rollback.text());
    let answer: serde_json::Value = serde_json::from_str(&rollback.text()).unwrap();
    assert_eq!(answer["migrations_ahead"], serde_json::json!([third.id]));
    world.settle(&first.id, Live, &agent).await;
    assert_eq!(
        caddy.get(HOST, "/version").await,
        Some((200, "one".to_owned()))
    );
    assert_eq!(world.admin.deployment(&third.id).await.status, Ready);
    assert_eq!(
        caddy.get(STOREFRONT_HOST, "/").await.map(|(s, _)| s),
        Some(200)
    );
    assert_eq!(
        release_containers(&world.docker, &first.id, "storefront")
            .await
            .len(),
        1
    );
    let deploy_log = world.log(&first.id, "deploy").await;
    assert!(
        deploy_log.contains("on this host already") && deploy_log.contains("no migrations run"),
        "{deploy_log}"
    );
    assert_eq!(postgres.migrations(), ["one", "broken", "three"]);
    // The rollback built nothing: the first deployment's build log is its one clone.
    let system = world.log(&first.id, "system").await;
    assert_eq!(system.matches("Cloning").count(), 1, "{system}");
    // A deployment that is live is not rolled back to.
    let again = world
        .admin
        .send_json(
            Method::POST,
            &format!("/api/v1/deployments/{}/rollback", first.id),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.text());

    // From the dashboard: the live links, and "Roll back to this" on the
    // replaced third deployment.
    if kiln_tests::support::browser_available() {
        let server = std::path::Path::new(env!("CARGO_BIN_EXE_kiln-server-e2e"));
        kiln_tests::support::add_user(
            server,
            &world.root_dir().join("server"),
            "ada",
            "admin",
            "correct horse battery",
        );
        let site = world.cp.base_url();
        let browser = kiln_tests::support::Browser::start().await;
        browser.goto(&format!("{site}/login")).await;
        browser.sign_in("ada", "correct horse battery").await;
        browser
            .goto(&format!("{site}/projects/{}", world.project_id))
            .await;
        let admin_link = browser.find(".live-links a[href$='/app']").await;
        assert_eq!(
            admin_link.attr("href").await.unwrap().as_deref(),
            Some("//api.shop.test/app")
        );
        // The live deployment's Runtime tab follows its server.
        browser
            .goto(&format!("{site}/deployments/{}#runtime", first.id))
            .await;
        browser
            .until(
                "the Runtime tab shows the live server's output",
                Duration::from_secs(30),
                "const s = document.querySelector('#log-runtime'); return !!s && s.dataset.ended === 'false' && s.textContent.includes('server | ') && s.textContent.includes('Server is ready')",
            )
            .await;
        // Its filters (on this run's log, the rollback's): the server's lines
        // that say it is ready.
        browser
            .click("form.runtime-filters input[name=services][value=server]")
            .await;
        browser
            .fill("form.runtime-filters input[name=q]", "server is ready")
            .await;
        browser
            .click("form.runtime-filters button[type=submit]")
            .await;
        let found = browser
            .until(
                "the filtered lines",
                Duration::from_secs(10),
                "const l = document.querySelector('ol.filtered'); return l && !l.hidden && l.textContent",
            )
            .await;
        let found = found.as_str().unwrap();
        assert!(
            found.contains("Server is ready") && !found.contains("storefront"),
            "{found}"
        );
        browser
            .goto(&format!("{site}/deployments/{}", third.id))
            .await;
        browser.click_to_load("button.rollback").await;
        world.settle(&third.id, Live, &agent).await;
        assert_eq!(
            caddy.get(HOST, "/version").await,
            Some((200, "three".to_owned()))
        );
        browser.close().await;
    }
    drop(agent);
}

/// A followed log (an admin's), read into a shared text as it comes; the
/// task ends with the body.
fn follow_log(
    url: String,
) -> (
    std::sync::Arc<std::sync::Mutex<String>>,
    tokio::task::JoinHandle<()>,
) {
    use futures::StreamExt;
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    // No time limit: it lasts as long as the release does.
    let request = reqwest::Client::new()
        .get(url)
        .bearer_auth(kiln_tests::support::ADMIN_TOKEN);
    let into = text.clone();
    let task = tokio::spawn(async move {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    });
    (text, task)
}

/// Asks `probe` every 200 ms until `done` holds of its answer, which it
/// returns; fails naming `what` and the last answer after `limit`.
async fn eventually<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let answer = probe().await;
        if done(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "waited {limit:?} for {what}; the last answer: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for `needle` in a followed log.
async fn until_contains(text: &std::sync::Mutex<String>, needle: &str) {
    eventually(
        needle,
        Duration::from_secs(60),
        || async { text.lock().unwrap().clone() },
        |log: &String| log.contains(needle),
    )
    .await;
}

/// GET /version through Caddy every 20 ms until stopped: how many were sent,
/// the failures, and the versions that answered.
struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>, std::collections::BTreeSet<String>)>,
}

impl Load {
    fn start(port: u16) -> Load {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            // A connection per request. Caddy applies a config change by
            // starting its servers anew, closing keep-alive connections that
            // sit idle: a browser (or Go's client) sends its request again on
            // a new one, hyper's does not, so a pooled client here would
            // count Caddy's reload rather than the cutover.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let (mut sent, mut failed, mut versions) =
                (0, Vec::new(), std::collections::BTreeSet::new());
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return (sent, failed, versions),
                }
                sent += 1;
                let answer = client
                    .get(format!("http://127.0.0.1:{port}/version"))
                    .header("host", HOST)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match answer {
                    Ok(response) if response.status() == 200 => {
                        versions.insert(response.text().await.unwrap_or_default());
                    }
                    Ok(response) => failed.push(format!("status {}", response.status())),
                    Err(error) => failed.push(format!("{error:?}")),
                }
            }
        });
        Load { stop, task }
    }

    async fn stop(self) -> (usize, Vec<String>, std::collections::BTreeSet<String>) {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue_31_a_worker_runs_beside_the_server_only_where_the_config_tells_them_apart() {
    let postgres = Postgres::start();
    let variables =
        serde_json::json!([{"name": "DATABASE_URL", "value": postgres.url, "secret": true}]);
    let Some(world) = world(variables).await else {
        return;
    };
    let _containers = kiln_tests::support::ReleaseContainers {
        environment_id: world.environment_id.clone(),
    };
    let caddy = CaddyProcess::start();
    let reply = world
        .admin
        .send_json(
            Method::PATCH,
            &format!("/api/v1/environments/{}", world.environment_id),
            &serde_json::json!({
                "auto_deploy": true,
                "deploy": {"backend_hostname": HOST, "worker": true, "health_timeout_seconds": 30}
            }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let agent = world
        .agent(
            "agent",
            &format!(
                "roles = [\"build\", \"deploy\"]\ncaddy_admin_url = \"{}\"\ncaddy_listen = \"127.0.0.1:{}\"\ndeploy_network = \"host\"\n",
                caddy.admin, caddy.listen
            ),
        )
        .await;

    // The example's config does not read MEDUSA_WORKER_MODE: refused, with
    // the lines to add, before anything ran.
    let first = world.push(&world.repo.head()).await;
    let refused = world.settle(&first.id, DeployFailed, &agent).await;
    let reason = refused.reason.unwrap_or_default();
    assert!(
        reason.contains("workerMode: process.env.MEDUSA_WORKER_MODE"),
        "{reason}"
    );
    assert_eq!(postgres.migrations(), Vec::<String>::new());

    let sha = world.repo.commit("read the worker mode", |dir| {
        let config = std::fs::read_to_string(dir.join("medusa-config.js")).unwrap();
        let config = config.replace(
            "projectConfig: {",
            "projectConfig: {\n    workerMode: process.env.MEDUSA_WORKER_MODE,",
        );
        std::fs::write(dir.join("medusa-config.js"), config).unwrap();
    });
    let second = world.push(&sha).await;
    world.settle(&second.id, Live, &agent).await;
    assert_eq!(caddy.get(HOST, "/health").await.map(|(s, _)| s), Some(200));
    let workers = release_containers(&world.docker, &second.id, "worker").await;
    assert_eq!(workers.len(), 1, "{workers:?}");
    let worker = world
        .docker
        .inspect_container(
            &workers[0],
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .expect("the worker container");
    assert_eq!(worker.state.and_then(|state| state.running), Some(true));
    // A release runs in the build sandbox's limits, never as root.
    let host = worker.host_config.clone().unwrap_or_default();
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert!(host
        .security_opt
        .unwrap_or_default()
        .contains(&"no-new-privileges".to_owned()));
    assert!(host.memory.unwrap_or(0) > 0 && host.pids_limit.unwrap_or(0) > 0);
    assert!(
        host.binds.unwrap_or_default().is_empty(),
        "no host folder is mounted"
    );
    let user = worker
        .config
        .as_ref()
        .and_then(|config| config.user.clone());
    assert!(
        user.as_deref()
            .is_some_and(|user| !user.is_empty() && !user.starts_with("0")),
        "{user:?}"
    );
    let env = worker
        .config
        .and_then(|config| config.env)
        .unwrap_or_default();
    assert!(
        env.contains(&"MEDUSA_WORKER_MODE=worker".to_owned())
            && env.contains(&"DISABLE_MEDUSA_ADMIN=true".to_owned()),
        "{env:?}"
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue_31_with_a_registry_a_code_only_deploy_pulls_one_layer_old_releases_go_past_releases_kept_and_a_preview_gets_its_own_hostname(
) {
    let postgres = Postgres::start();
    let registry = kiln_tests::support::Registry::start().await;
    let variables =
        serde_json::json!([{"name": "DATABASE_URL", "value": postgres.url, "secret": true}]);
    let address = registry.address.clone();
    let Some(world) = kiln_tests::support::World::new_with(
        std::path::Path::new(super::agent::AGENT),
        variables,
        None,
        |config| config.registry = Some(address),
    )
    .await
    else {
        return;
    };
    let _containers = kiln_tests::support::ReleaseContainers {
        environment_id: world.environment_id.clone(),
    };
    let caddy = CaddyProcess::start();
    let reply = world
        .admin
        .send_json(
            Method::PATCH,
            &format!("/api/v1/environments/{}", world.environment_id),
            &serde_json::json!({
                "auto_deploy": true,
                "deploy": {"backend_hostname": HOST, "health_timeout_seconds": 30, "releases_kept": 1}
            }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let agent = world
        .agent(
            "agent",
            &format!(
                "roles = [\"build\", \"deploy\"]\ncaddy_admin_url = \"{}\"\ncaddy_listen = \"127.0.0.1:{}\"\ndeploy_network = \"host\"\n",
                caddy.admin, caddy.listen
            ),
        )
        .await;
    let mut pulled = Vec::new();
    let mut deployments = Vec::new();
    for version in ["one", "two"] {
        let sha = world.repo.commit(version, |dir| {
            std::fs::write(dir.join("src/version.txt"), version).unwrap();
        });
        let deployment = world.push(&sha).await;
        world.settle(&deployment.id, Live, &agent).await;
        assert_eq!(
            caddy.get(HOST, "/version").await,
            Some((200, version.to_owned()))
        );
        let reference = format!(
            "{}/kiln-release/{}:{}",
            registry.address, world.project_id, deployment.id
        );
        let system = world.log(&deployment.id, "system").await;
        assert!(
            system.contains(&format!("Pushed the backend release image to {reference}")),
            "{system}"
        );
        let tags = registry
            .get(&format!("/v2/kiln-release/{}/tags/list", world.project_id))
            .await
            .unwrap_or_default();
        assert!(tags.contains(&deployment.id), "{tags}");
        let deploy_log = world.log(&deployment.id, "deploy").await;
        let line = deploy_log
            .lines()
            .find(|line| line.contains(&format!("Pulled release image {reference}")))
            .unwrap_or_else(|| panic!("no pull in:\n{deploy_log}"))
            .to_owned();
        pulled.push(line);
        deployments.push(deployment.id);
    }
    // The code-only change: one layer (the code) travels; the dependencies
    // and the Node image were on the host.
    assert!(pulled[1].contains(": 1 layer(s)"), "{pulled:?}");
    // Issue 34: each release's signed provenance went to the registry beside
    // it (cosign's tag: docker-registry has no referrers API), names the
    // image the registry holds, and was checked before the deploy.
    let repository = format!("kiln-release/{}", world.project_id);
    let keys: kiln_protocol::provenance::PublicKeys = world
        .admin
        .get("/api/v1/provenance/keys")
        .await
        .expect_json(reqwest::StatusCode::OK)
        .await;
    for deployment_id in &deployments {
        let (release_digest, release) = registry
            .manifest(&repository, deployment_id)
            .await
            .expect("the release image is in the registry");
        let tag = format!("{}.att", release_digest.replace(':', "-"));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let attestation = loop {
            if let Some((_, attestation)) = registry.manifest(&repository, &tag).await {
                break attestation;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {repository}:{tag}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(attestation["subject"]["digest"], release_digest.as_str());
        assert_eq!(
            attestation["layers"][0]["mediaType"],
            "application/vnd.dsse.envelope.v1+json"
        );
        let layer = attestation["layers"][0]["digest"].as_str().unwrap();
        let envelope: kiln_protocol::provenance::Envelope = serde_json::from_str(
            &registry
                .get(&format!("/v2/{repository}/blobs/{layer}"))
                .await
                .expect("the envelope's blob"),
        )
        .unwrap();
        let statement = kiln_protocol::provenance::verify(&envelope, &keys.keys).unwrap();
        statement
            .check_digest(
                &kiln_protocol::provenance::image_subject_name(kiln_protocol::BACKEND_RELEASE),
                release["config"]["digest"].as_str().unwrap(),
            )
            .unwrap();
        let deploy_log = world.log(deployment_id, "deploy").await;
        assert!(
            deploy_log.contains("Provenance checked: backend-release.tar"),
            "{deploy_log}"
        );
    }

    // releases_kept = 1: once the previous release has stopped, the host
    // keeps the live release's image alone, and a rollback to the older one
    // pulls it again (no build).
    let repository = format!("kiln-release/{}", world.environment_id);
    let kept = [format!("{repository}:{}", deployments[1])];
    eventually(
        "the host to keep the live release's image alone",
        Duration::from_secs(60),
        || image_tags(&world.docker, &repository),
        |tags: &Vec<String>| *tags == kept,
    )
    .await;
    let rollback = world
        .admin
        .send_json(
            Method::POST,
            &format!("/api/v1/deployments/{}/rollback", deployments[0]),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(rollback.status, 202, "{}", rollback.text());
    world.settle(&deployments[0], Live, &agent).await;
    assert_eq!(
        caddy.get(HOST, "/version").await,
        Some((200, "one".to_owned()))
    );
    let rolled_back = world.log(&deployments[0], "deploy").await;
    assert!(
        rolled_back.contains("Pulled release image") && rolled_back.contains("no migrations run"),
        "{rolled_back}"
    );

    // A pull request's preview deploys itself on its own hostname, derived
    // from its base branch's (pr-<number>.), beside production. It has its
    // own variables: production's database is not a preview's.
    let feature = world.repo.commit("preview", |dir| {
        std::fs::write(dir.join("src/version.txt"), "preview").unwrap();
    });
    let opened: kiln_protocol::EventOutcome = world
        .admin
        .post_json(
            "/api/v1/events/pull_request",
            &kiln_protocol::PullRequestEvent {
                repository: world.repo.url.clone(),
                number: 7,
                action: kiln_protocol::PullRequestAction::Opened,
                branch: "feature".into(),
                sha: feature,
                author: "Grace".into(),
                message: "Preview".into(),
                people: Default::default(),
                base_branch: Some("main".into()),
            },
        )
        .await
        .expect_json(reqwest::StatusCode::CREATED)
        .await;
    let preview = &opened.deployments[0];
    world
        .admin
        .set_variables(
            &preview.environment_id,
            serde_json::json!([{"name": "DATABASE_URL", "value": postgres.url, "secret": true}]),
        )
        .await;
    let _preview_containers = kiln_tests::support::ReleaseContainers {
        environment_id: preview.environment_id.clone(),
    };
    let live_preview = world.settle(&preview.id, Live, &agent).await;
    assert_eq!(
        caddy.get("pr-7.api.shop.test", "/version").await,
        Some((200, "preview".to_owned()))
    );
    // It shows its commit's own message, not the pull request's title.
    assert_eq!(live_preview.message, "preview");
    assert_eq!(
        caddy.get(HOST, "/version").await,
        Some((200, "one".to_owned()))
    );
    // Closed, the pull request's preview stops: its containers, its route
    // and its images go; production keeps serving.
    world
        .admin
        .post_json(
            "/api/v1/events/pull_request",
            &kiln_protocol::PullRequestEvent {
                repository: world.repo.url.clone(),
                number: 7,
                action: kiln_protocol::PullRequestAction::Closed,
                branch: "feature".into(),
                sha: world.repo.head(),
                author: "Grace".into(),
                message: "Preview".into(),
                people: Default::default(),
                base_branch: Some("main".into()),
            },
        )
        .await
        .expect_json::<kiln_protocol::EventOutcome>(reqwest::StatusCode::CREATED)
        .await;
    eventually(
        "the closed preview's release to stop",
        Duration::from_secs(90),
        || release_containers_of(&world.docker, &preview.environment_id),
        Vec::is_empty,
    )
    .await;
    assert_ne!(
        caddy.get("pr-7.api.shop.test", "/version").await,
        Some((200, "preview".to_owned()))
    );
    // The images go after the containers and routes, in the same sweep.
    let preview_images = format!("kiln-release/{}", preview.environment_id);
    eventually(
        "the closed preview's images to go",
        Duration::from_secs(30),
        || image_tags(&world.docker, &preview_images),
        Vec::is_empty,
    )
    .await;
    assert_eq!(
        caddy.get(HOST, "/version").await,
        Some((200, "one".to_owned()))
    );
    drop(agent);
}

/// The Docker bridge's address on the host: where a container on it reaches
/// the host.
async fn bridge_gateway(docker: &bollard::Docker) -> String {
    docker
        .inspect_network(
            "bridge",
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .unwrap()
        .ipam
        .and_then(|ipam| ipam.config)
        .and_then(|configs| configs.into_iter().find_map(|config| config.gateway))
        .expect("the bridge network has a gateway")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue_31_a_hostile_release_gets_nothing_out_of_its_container_on_the_bridge_network() {
    let Some(world) = world(serde_json::json!([])).await else {
        return;
    };
    let gateway = bridge_gateway(&world.docker).await;
    let postgres = Postgres::start_for_bridge(&gateway);
    let _containers = kiln_tests::support::ReleaseContainers {
        environment_id: world.environment_id.clone(),
    };
    let caddy = CaddyProcess::start();
    let agent = world
        .agent(
            "agent",
            &format!(
                "roles = [\"build\", \"deploy\"]\ncaddy_admin_url = \"{}\"\ncaddy_listen = \"127.0.0.1:{}\"\ndeploy_network = \"bridge\"\n",
                caddy.admin, caddy.listen
            ),
        )
        .await;
    // What the release tries at start: write outside its folder, see the
    // Docker socket and the agent's token and state, become root, and reach
    // Caddy's admin API (on the host's loopback) from the bridge.
    let token = agent.dir.join("state/agent.json");
    assert!(token.exists());
    let admin_port = caddy.admin.rsplit(':').next().unwrap().to_owned();
    let targets = format!(
        "/var/run/docker.sock:/run/docker.sock:{}:{}",
        token.display(),
        agent.dir.display()
    );
    let fetches =
        format!("http://{gateway}:{admin_port}/config/ http://127.0.0.1:{admin_port}/config/");
    world
        .admin
        .set_variables(
            &world.environment_id,
            serde_json::json!([
                {"name": "DATABASE_URL", "value": postgres.url, "secret": true},
                {"name": "KILN_FIXTURE_ESCAPE", "value": targets, "build": false},
                {"name": "KILN_FIXTURE_FETCH", "value": fetches, "build": false},
            ]),
        )
        .await;
    let reply = world
        .admin
        .send_json(
            Method::PATCH,
            &format!("/api/v1/environments/{}", world.environment_id),
            &serde_json::json!({
                "auto_deploy": true,
                "deploy": {"backend_hostname": HOST, "health_timeout_seconds": 30}
            }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // It serves only if nothing got out: live, through Caddy, migrated.
    let deployment = world.push(&world.repo.head()).await;
    world.settle(&deployment.id, Live, &agent).await;
    assert_eq!(caddy.get(HOST, "/health").await.map(|(s, _)| s), Some(200));
    assert_eq!(postgres.migrations(), ["none"]);
    let runtime = eventually(
        "the server to be ready in the runtime log",
        Duration::from_secs(30),
        || world.log(&deployment.id, "runtime"),
        |log: &String| log.contains("Server is ready"),
    )
    .await;
    for refused in [
        "escape: write /etc/kiln-escape: refused",
        "escape: /var/run/docker.sock: not visible",
        &format!("escape: {}: not visible", token.display()),
        "escape: become root: refused",
        &format!("fetch: http://{gateway}:{admin_port}/config/: ECONNREFUSED"),
        &format!("fetch: http://127.0.0.1:{admin_port}/config/: ECONNREFUSED"),
    ] {
        assert!(runtime.contains(refused), "{refused} missing:\n{runtime}");
    }
    for escaped in ["escape: wrote", "is visible", "became root", "answered"] {
        assert!(!runtime.contains(escaped), "{escaped}:\n{runtime}");
    }
    drop(agent);
}
