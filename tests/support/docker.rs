//! Docker for the end-to-end tests: one connection helper that negotiates the API
//! version, the locally assembled build image, and container lookups by label.
//! Without Docker a test is skipped, unless `KILN_REQUIRE_DOCKER` is set.

use std::collections::HashMap;
use std::path::Path;

use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;
use tokio::sync::OnceCell;

pub const IMAGE: &str = "kiln/node:local";

pub async fn docker() -> Option<Docker> {
    let connected = async {
        Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await
    }
    .await;
    match connected {
        Ok(docker) => match docker.ping().await {
            Ok(_) => Some(docker),
            Err(e) => skip_or_panic(e),
        },
        Err(e) => skip_or_panic(e),
    }
}

fn skip_or_panic<T>(error: impl std::fmt::Display) -> Option<T> {
    if std::env::var_os("KILN_REQUIRE_DOCKER").is_none() {
        eprintln!("skip: Docker is unreachable ({error}); set KILN_REQUIRE_DOCKER=1 to make this a failure");
        None
    } else {
        panic!("KILN_REQUIRE_DOCKER is set but Docker is unreachable: {error}");
    }
}

/// Builds the test image once per test run with `sandbox-images/build-local.sh`.
pub async fn build_image() -> &'static str {
    static BUILT: OnceCell<()> = OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../sandbox-images/build-local.sh");
            let output = tokio::process::Command::new("bash")
                .arg(&script)
                .arg(IMAGE)
                .output()
                .await
                .expect("bash runs");
            assert!(
                output.status.success(),
                "build-local.sh failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        })
        .await;
    IMAGE
}

/// `kiln/node:<major>`, assembled once per test run by `build-local.sh --node`
/// from Node's official binary in npm's registry.
pub async fn node_image(major: u32) -> String {
    static BUILT: tokio::sync::Mutex<Vec<u32>> = tokio::sync::Mutex::const_new(Vec::new());
    let mut built = BUILT.lock().await;
    let image = format!("kiln/node:{major}");
    if !built.contains(&major) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sandbox-images/build-local.sh");
        let output = tokio::process::Command::new("bash")
            .arg(&script)
            .args(["--node", &major.to_string()])
            .output()
            .await
            .expect("bash runs");
        assert!(
            output.status.success(),
            "build-local.sh --node {major} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        built.push(major);
    }
    image
}

/// Containers (running or not) labelled with this job.
pub async fn containers_of_job(docker: &Docker, job_id: &str) -> Vec<String> {
    containers_labelled(docker, vec![format!("kiln.job={job_id}")]).await
}

/// The ids of the containers (running or not) carrying every one of
/// `labels` (`key=value`).
pub async fn containers_labelled(docker: &Docker, labels: Vec<String>) -> Vec<String> {
    let filters = HashMap::from([("label", labels)]);
    docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}
