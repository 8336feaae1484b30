//! `kiln-agent doctor`: one line per check, each failure with its fix.

use std::time::Duration;

use crate::client::{Client, ClientError};
use crate::config::AgentConfig;
use crate::executor::DockerExecutor;
use crate::state::StateDir;

#[derive(Debug)]
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
    let mut image_present = false;
    if let Ok(docker) = &docker {
        let verdict = match docker.has_image(&config.build_image).await {
            Ok(true) => {
                image_present = true;
                Verdict::Ok(format!("{} is present", config.build_image))
            }
            Ok(false) => Verdict::Fail(format!(
                "{} is not on this host; build it with sandbox-images/build-local.sh or `docker pull` it, or set build_image",
                config.build_image
            )),
            Err(error) => Verdict::Fail(error.to_string()),
        };
        results.push(("build image", verdict));
        // Another major is needed only by a repository that asks for it.
        let mut present = Vec::new();
        let mut missing = Vec::new();
        for (major, image) in &config.node_images.0 {
            match docker.has_image(image).await {
                Ok(true) => present.push(format!("{major}={image}")),
                _ => missing.push(format!(
                    "{major}={image} (sandbox-images/build-local.sh --node {major}, or `docker pull` it)"
                )),
            }
        }
        let verdict = if missing.is_empty() {
            Verdict::Ok(format!("present: {}", present.join(", ")))
        } else {
            Verdict::Warn(format!(
                "not on this host: {}; a component that asks for that Node fails before installing",
                missing.join(", ")
            ))
        };
        results.push(("node images", verdict));
    }

    if let (Ok(docker), true) = (docker, image_present) {
        results.extend(sandbox(config, &docker).await);
        results.push(("registry", registry(config, &docker).await));
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

    let disk = crate::disk::free(&config.work_dir);
    results.push((
        "disk",
        match disk {
            Ok(free) if free < config.min_free_disk.0 => Verdict::Fail(format!(
                "{} free in {}, below min_free_disk ({}): the agent claims no jobs until there is more; free some space",
                crate::config::ByteSize(free),
                config.work_dir.display(),
                config.min_free_disk
            )),
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

    if config.roles.contains(&kiln_protocol::Role::Deploy) {
        results.push(("caddy", caddy(config).await));
    }
    results.push(("control plane", control_plane(config).await));
    for (check, verdict) in &results {
        print(check, verdict);
    }
    !results
        .iter()
        .any(|(_, verdict)| matches!(verdict, Verdict::Fail(_)))
}

/// What a build container sees of its own sandbox, printed by `PROBE`.
const PROBE: &str = "echo uid=$(id -u):$(id -g); \
    grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status | tr -d '\t' | tr ':' '='; \
    echo memory=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes); \
    echo pids=$(cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max); \
    echo uid_map=$(cat /proc/self/uid_map | tr -s ' ' | tr ' ' ','); \
    if touch /kiln-probe 2>/dev/null; then echo rootfs=writable; else echo rootfs=read-only; fi";

/// Starts a throwaway container exactly as builds are started and checks, from the
/// inside, that the sandbox holds: the build uid, seccomp, no capabilities,
/// no-new-privileges, the memory and pids cgroup limits, a read-only root.
/// Runs `command` in a throwaway container of the build image, as a build step
/// runs (the build user, the limits), on `network` and with `ca_bundle`;
/// returns how it ended and what it printed, or why it could not run.
async fn probe(
    config: &AgentConfig,
    docker: &DockerExecutor,
    name: &str,
    command: &str,
    network: crate::config::Network,
    ca_bundle: Option<std::path::PathBuf>,
) -> Result<(crate::executor::StepOutcome, String), String> {
    use crate::executor::{Executor, Limits, Step};
    use kiln_protocol::LogStream;
    let scratch = config
        .work_dir
        .join(format!("doctor-{name}-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(scratch.clone());
    std::fs::create_dir_all(scratch.join("logs"))
        .map_err(|error| format!("cannot create {}: {error}", scratch.display()))?;
    let _ = nix::unistd::chown(
        &scratch,
        Some(nix::unistd::Uid::from_raw(config.build_user.uid)),
        Some(nix::unistd::Gid::from_raw(config.build_user.gid)),
    );
    let logs = crate::logs::JobLogs::open(&scratch.join("logs"), &Default::default())
        .map_err(|error| format!("cannot write in {}: {error}", scratch.display()))?;
    let step = Step {
        name: name.to_owned(),
        agent_id: "doctor".to_owned(),
        job_id: format!("doctor-{}", std::process::id()),
        image: config.build_image.clone(),
        command: vec!["sh".into(), "-c".into(), command.into()],
        working_dir: crate::executor::WORKSPACE_MOUNT.to_owned(),
        workspace: scratch.clone(),
        env: vec![
            ("HOME".to_owned(), "/tmp".to_owned()),
            ("npm_config_update_notifier".to_owned(), "false".to_owned()),
        ],
        network,
        limits: Limits::from_config(config),
        user: config.build_user,
        ca_bundle,
        timeout: Duration::from_secs(60),
        stop_grace: Duration::from_secs(1),
    };
    let sink = logs.sink(LogStream::Backend);
    let outcome = docker
        .run(
            step,
            sink.clone(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
    sink.flush();
    let outcome = outcome.map_err(|error| error.to_string())?;
    let text = std::fs::read_to_string(scratch.join("logs/backend.log")).unwrap_or_default();
    Ok((outcome, text))
}

async fn sandbox(config: &AgentConfig, docker: &DockerExecutor) -> Vec<(&'static str, Verdict)> {
    let fail = |text: String| vec![("sandbox", Verdict::Fail(text))];
    let text = match probe(
        config,
        docker,
        "sandbox",
        PROBE,
        crate::config::Network::None,
        None,
    )
    .await
    {
        Ok((crate::executor::StepOutcome::Exited(0), text)) => text,
        Ok((other, _)) => {
            return fail(format!(
                "the probe container did not finish cleanly: {other:?}"
            ))
        }
        Err(error) => return fail(error),
    };
    judge_sandbox(&text, config)
}

/// Whether npm's registry answers from a build container as an install step
/// reaches it: through `install_network`, trusting `extra_ca_certs`. Without
/// this check, a missing CA bundle shows only mid-build.
async fn registry(config: &AgentConfig, docker: &DockerExecutor) -> Verdict {
    let network = config.install_network;
    if network == crate::config::Network::None {
        return Verdict::Warn(
            "install_network is \"none\": installs reach no registry, so only a restored build cache can install; set it to \"bridge\"".to_owned(),
        );
    }
    let trusted = config
        .extra_ca_certs
        .as_ref()
        .map_or("the image's own CA certificates".to_owned(), |path| {
            format!("extra_ca_certs {}", path.display())
        });
    match probe(
        config,
        docker,
        "registry",
        "npm ping",
        network,
        config.extra_ca_certs.clone(),
    )
    .await
    {
        Ok((crate::executor::StepOutcome::Exited(0), _)) => Verdict::Ok(format!(
            "npm's registry answers through install_network \"{}\", trusting {trusted}",
            network.docker_mode()
        )),
        Ok((outcome, text)) => {
            let said: Vec<&str> = text.lines().rev().take(3).collect();
            let hint = if [
                "SELF_SIGNED_CERT_IN_CHAIN",
                "UNABLE_TO_GET_ISSUER_CERT",
                "unable to get local issuer",
            ]
            .iter()
            .any(|sign| text.contains(sign))
            {
                "TLS to the registry is intercepted by a certificate the build does not trust; set extra_ca_certs to the host's CA bundle"
            } else {
                "check install_network, the host's DNS and proxy, and extra_ca_certs"
            };
            Verdict::Fail(format!(
                "`npm ping` from a build container ended {outcome:?} (install_network \"{}\", trusting {trusted}): {}; {hint}",
                network.docker_mode(),
                said.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ))
        }
        Err(error) => Verdict::Fail(error),
    }
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Turns the probe's `key=value` lines into verdicts.
fn judge_sandbox(probe: &str, config: &AgentConfig) -> Vec<(&'static str, Verdict)> {
    let value = |key: &str| {
        probe
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")))
            .map(str::trim)
            .unwrap_or("")
            .to_owned()
    };
    let mut results = Vec::new();
    let want_uid = format!("{}:{}", config.build_user.uid, config.build_user.gid);
    let uid_map = value("uid_map");
    let remapped = !uid_map.is_empty() && !uid_map.trim_start_matches(',').starts_with("0,0,");
    results.push((
        "sandbox user",
        if value("uid") == want_uid {
            Verdict::Ok(format!(
                "builds run as {want_uid}{}",
                if remapped {
                    format!(" (user namespace remapped: {uid_map})")
                } else {
                    " (no user-namespace remap; uid is not root)".to_owned()
                }
            ))
        } else {
            Verdict::Fail(format!(
                "builds run as {:?}, expected {want_uid}; check build_user",
                value("uid")
            ))
        },
    ));
    let seccomp = value("Seccomp");
    let caps = value("CapEff");
    let nnp = value("NoNewPrivs");
    results.push((
        "sandbox lock",
        if seccomp == "2" && caps.chars().all(|c| c == '0') && nnp == "1" {
            Verdict::Ok("seccomp filter on, no capabilities, no-new-privileges".to_owned())
        } else {
            Verdict::Fail(format!(
                "seccomp {seccomp:?} (want 2), CapEff {caps:?} (want 0), NoNewPrivs {nnp:?} (want 1); \
                 is dockerd started with --seccomp-profile=unconfined or a privileged default?"
            ))
        },
    ));
    let memory = value("memory");
    let pids = value("pids");
    results.push((
        "sandbox limits",
        if memory == config.memory.0.to_string() && pids == config.pids.to_string() {
            Verdict::Ok(format!("memory {} and pids {} applied by the cgroup", config.memory, config.pids))
        } else {
            Verdict::Fail(format!(
                "the container's cgroup has memory {memory:?} and pids {pids:?}, expected {} and {}; \
                 enable the memory and pids cgroup controllers (cgroup_enable=memory swapaccount=1)",
                config.memory.0, config.pids
            ))
        },
    ));
    results.push((
        "sandbox rootfs",
        if value("rootfs") == "read-only" {
            Verdict::Ok("root file system is read-only".to_owned())
        } else {
            Verdict::Fail("the build container's root file system is writable".to_owned())
        },
    ));
    results
}

/// A deploy host switches releases through Caddy's admin API.
async fn caddy(config: &AgentConfig) -> Verdict {
    match crate::caddy::Caddy::new(&config.caddy_admin_url)
        .answers()
        .await
    {
        Ok(()) => Verdict::Ok(format!(
            "the admin API answers at {}; releases are served on {}",
            config.caddy_admin_url, config.caddy_listen
        )),
        Err(error) => Verdict::Fail(error),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deploy_host_without_caddy_is_told_what_to_start() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = crate::config::PartialConfig {
            caddy_admin_url: Some(format!("http://127.0.0.1:{port}")),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        match caddy(&config).await {
            Verdict::Fail(why) => assert!(
                why.contains("is Caddy running") && why.contains("caddy_admin_url"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
    }

    fn config() -> AgentConfig {
        crate::config::PartialConfig {
            build_user: Some(crate::config::UidGid {
                uid: 10000,
                gid: 10000,
            }),
            memory: Some(crate::config::ByteSize(512 << 20)),
            pids: Some(200),
            ..Default::default()
        }
        .resolve()
        .unwrap()
    }

    #[test]
    fn a_sandbox_without_seccomp_or_limits_fails_by_name() {
        let config = config();
        let user = format!("{}:{}", config.build_user.uid, config.build_user.gid);
        let good = format!("uid={user}\nSeccomp=2\nNoNewPrivs=1\nCapEff=0000000000000000\nmemory=536870912\npids=200\nuid_map=,0,0,4294967295\nrootfs=read-only\n");
        assert!(judge_sandbox(&good, &config)
            .iter()
            .all(|(_, v)| matches!(v, Verdict::Ok(_))));
        let bad = good
            .replace("Seccomp=2", "Seccomp=0")
            .replace("memory=536870912", "memory=max")
            .replace("rootfs=read-only", "rootfs=writable");
        let failed: Vec<&str> = judge_sandbox(&bad, &config)
            .into_iter()
            .filter(|(_, v)| matches!(v, Verdict::Fail(_)))
            .map(|(check, _)| check)
            .collect();
        assert_eq!(failed, ["sandbox lock", "sandbox limits", "sandbox rootfs"]);
    }
}
