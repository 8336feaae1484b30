//! `kiln-agent doctor`: one line per check, each failure with its fix.

use std::time::Duration;

use crate::client::{Client, ClientError};
use crate::config::AgentConfig;
use crate::executor::DockerExecutor;
use crate::state::StateDir;

enum Verdict {
    Ok(String),
    Warn(String),
    Fail(String),
}

fn print(check: &str, verdict: &Verdict) {
    let (tag, text) = match verdict {
        Verdict::Ok(text) => ("ok  ", text),
        Verdict::Warn(text) => ("warn", text),
        Verdict::Fail(text) => ("FAIL", text),
    };
    println!("{tag}  {check:<14} {text}");
}

/// Runs every check; `true` when none failed.
pub async fn run(config: &AgentConfig) -> bool {
    let mut results = Vec::new();

    let docker = DockerExecutor::connect().await;
    match &docker {
        Ok(docker) => match docker.server_version().await {
            Ok(version) => results.push((
                "docker",
                Verdict::Ok(format!(
                    "{version}, negotiated API {}",
                    docker.api_version()
                )),
            )),
            Err(error) => results.push(("docker", Verdict::Fail(error.to_string()))),
        },
        Err(error) => results.push(("docker", Verdict::Fail(error.to_string()))),
    }
    if let Ok(docker) = &docker {
        let verdict = match docker.has_image(&config.build_image).await {
            Ok(true) => Verdict::Ok(format!("{} is present", config.build_image)),
            Ok(false) => Verdict::Fail(format!(
                "{} is not on this host; build it with sandbox-images/build-local.sh or `docker pull` it, or set build_image",
                config.build_image
            )),
            Err(error) => Verdict::Fail(error.to_string()),
        };
        results.push(("build image", verdict));
    }

    let git = tokio::process::Command::new("git")
        .arg("--version")
        .output()
        .await;
    results.push((
        "git",
        match git {
            Ok(output) if output.status.success() => {
                Verdict::Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
            }
            _ => Verdict::Fail("git is not installed; install it (apt-get install git)".to_owned()),
        },
    ));

    let disk = disk_free(&config.work_dir);
    results.push((
        "disk",
        match disk {
            Ok(free) if free < 5 << 30 => Verdict::Warn(format!(
                "{} free in {}; a Medusa build needs ~2 GiB per job, free some space",
                crate::config::ByteSize(free),
                config.work_dir.display()
            )),
            Ok(free) => Verdict::Ok(format!(
                "{} free in {}",
                crate::config::ByteSize(free),
                config.work_dir.display()
            )),
            Err(error) => Verdict::Fail(format!(
                "cannot check {}: {error}; create it and make it writable by the agent",
                config.work_dir.display()
            )),
        },
    ));

    results.push(("control plane", control_plane(config).await));
    for (check, verdict) in &results {
        print(check, verdict);
    }
    !results
        .iter()
        .any(|(_, verdict)| matches!(verdict, Verdict::Fail(_)))
}

fn disk_free(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut probe = dir.to_owned();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let stat = nix::sys::statvfs::statvfs(&probe).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

async fn control_plane(config: &AgentConfig) -> Verdict {
    let identity = match StateDir::new(&config.state_dir).load_identity() {
        Ok(identity) => identity,
        Err(error) => return Verdict::Fail(error.to_string()),
    };
    let url = config
        .control_plane_url
        .clone()
        .unwrap_or(identity.control_plane_url);
    let client = Client::new(&url, &identity.token);
    // Watching a job that does not exist: 404 proves the token is accepted
    // without claiming anything.
    match tokio::time::timeout(
        Duration::from_secs(15),
        client.watch("doctor-probe", Duration::ZERO),
    )
    .await
    {
        Err(_) => Verdict::Fail(format!("{url} did not answer within 15 s")),
        Ok(Err(ClientError::Api { status: 404, .. })) => {
            Verdict::Ok(format!("{url} reachable, token accepted"))
        }
        Ok(Err(error @ ClientError::Unauthorized { .. })) => Verdict::Fail(error.to_string()),
        Ok(Err(error)) => Verdict::Fail(error.to_string()),
        Ok(Ok(_)) => Verdict::Ok(format!("{url} reachable, token accepted")),
    }
}
