//! Logs and artifacts benchmark, one run, reported as ratios against peers run in
//! the same go:
//!
//! 1. log throughput: a build printing 200 MiB through the agent to the control plane
//!    (build step start → `awaiting_deployment`), against the same container run
//!    by hand (`docker run`) and `docker logs` reading its output back;
//! 2. artifact packing: `kiln_agent::artifact::pack` against `tar -czf` on
//!    the same generated tree.
//!
//! `cargo bench -p kiln-tests --bench logs` (needs a Docker engine).

// Tests: a fixture that cannot be set up should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_protocol::DeploymentStatus;
use kiln_tests::support::*;

const AGENT: &str = env!("CARGO_BIN_EXE_kiln-agent-e2e");
const FLOOD_MIB: u64 = 200;
/// Rounds of (the agent's build step, the floor) for the paired ratio.
const PAIRED_ROUNDS: usize = 9;

fn docker_cli(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// `docker run` arguments for the flooding build step, as the agent runs it.
fn flood_args(image: &str, mounted: &str, flood_mib: u64) -> Vec<String> {
    [
        "--network",
        "none",
        "--user",
        "10000:10000",
        "-e",
        "HOME=/tmp",
        "-e",
        "CI=true",
        "-e",
        "npm_config_update_notifier=false",
        "-e",
        &format!("KILN_FIXTURE_FLOOD_MB={flood_mib}"),
        "-v",
        mounted,
        "-w",
        "/kiln/src",
        image,
        // The agent's command, npm's own start-up included.
        "npm",
        "run",
        "build",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

/// The flooding build step run by hand as most people do, with the engine's default
/// json-file log; returns (run time, `docker logs` time).
fn by_hand(image: &str, source: &Path) -> (Duration, Duration) {
    let mounted = format!("{}:/kiln/src", source.display());
    let mut args = vec!["run".to_owned(), "-d".to_owned()];
    args.extend(flood_args(image, &mounted, FLOOD_MIB));
    let started = Instant::now();
    let id = docker_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    docker_cli(&["wait", &id]);
    let run = started.elapsed();
    let started = Instant::now();
    let status = Command::new("docker")
        .args(["logs", &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let logs = started.elapsed();
    docker_cli(&["rm", "-f", &id]);
    (run, logs)
}

/// The floor: the same step in the same sandbox as the agent's (its init, its
/// limits at the agent's defaults, no capabilities, a read-only root with a
/// tmpfs /tmp), with no engine log, its output attached and thrown away by the
/// docker CLI. Nothing can deliver the output faster than this; the sandbox's
/// own start-up cost is in the floor too, so the ratio is the logging path's.
fn by_hand_unlogged(image: &str, source: &Path, flood_mib: u64) -> Duration {
    let mounted = format!("{}:/kiln/src", source.display());
    // As the agent caps it: never above its own hard limit.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let open_files = hard.min(65536);
    let started = Instant::now();
    let status = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--log-driver",
            "none",
            "-a",
            "stdout",
            "-a",
            "stderr",
            "--init",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--read-only",
            "--tmpfs",
            "/tmp:rw,nosuid,nodev,exec,size=1g",
            "--memory",
            "4g",
            "--memory-swap",
            "4g",
            "--cpus",
            "2",
            "--pids-limit",
            "1024",
            "--ulimit",
            "fsize=10737418240:10737418240",
        ])
        .arg("--ulimit")
        .arg(format!("nofile={open_files}:{open_files}"))
        .args(flood_args(image, &mounted, flood_mib))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    started.elapsed()
}

/// Seconds of CPU (user + system) this process has used.
fn own_cpu_time() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    seconds(usage.user_time()) + seconds(usage.system_time())
}

fn generate_tree(root: &Path) -> u64 {
    // Bundle-like text (minified JS, JSON) and incompressible binary, ~120 MiB.
    let mut total = 0;
    let js: String = (0..20_000)
        .map(|i| format!("function f{i}(a,b){{return a*{i}+b}};"))
        .collect();
    for i in 0..150 {
        let dir = root.join(format!("public/admin/assets/chunk{}", i % 10));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("index-{i}.js")), js.as_bytes()).unwrap();
        total += js.len() as u64;
    }
    let mut state: u64 = 0x9e3779b97f4a7c15;
    for i in 0..30 {
        let bytes: Vec<u8> = (0..1 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(
            root.join(format!("public/admin/assets/font-{i}.woff2")),
            &bytes,
        )
        .unwrap();
        total += bytes.len() as u64;
    }
    total
}

/// Pushes a new commit (so no earlier output is reused), waits for its build,
/// and returns its build step's seconds as the agent timed it.
async fn agent_build_step(admin: &Api, repo: &FixtureRepo, round: usize) -> f64 {
    let sha = repo.commit(&format!("Round {round}"), |dir| {
        std::fs::write(dir.join("ROUND"), round.to_string()).unwrap();
    });
    let outcome = admin.push_repo(&repo.url, "main", &sha).await;
    let id = outcome.deployments[0].id.clone();
    loop {
        let deployment = admin.deployment(&id).await;
        match deployment.status {
            DeploymentStatus::AwaitingDeployment => break,
            DeploymentStatus::Queued | DeploymentStatus::Building => {}
            other => panic!("round {round} ended {other}: {:?}", deployment.reason),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let system = admin
        .get(&format!("/api/v1/deployments/{id}/logs/system"))
        .await
        .text();
    build_step_of(&system)
}

/// The build step's seconds in a system log, from the millisecond stamps of the
/// lines that start it and say it finished (container created → exited →
/// removed); the "finished in" text itself is rounded to a tenth.
fn build_step_of(system: &str) -> f64 {
    let stamp_of = |sign: &str| {
        system
            .lines()
            .find(|line| line.contains(sign))
            .and_then(|line| line.get(1..25))
            .and_then(|stamp| chrono::DateTime::parse_from_rfc3339(stamp).ok())
            .expect("the system log times the build step")
    };
    let started = stamp_of("Running `npm run build` (build).");
    let finished = stamp_of("`npm run build` (build) finished in ");
    (finished - started).num_milliseconds() as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let Some(_docker) = docker().await else {
        eprintln!("the logs benchmark needs a Docker engine");
        return;
    };
    let image = build_image().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = FixtureRepo::new(dir.path());
    let cp = ControlPlane::start_with(&dir.path().join("server"), |config| {
        config.log_limit = 1 << 30;
    })
    .await;
    let admin = cp.admin();
    let (_, environment) = admin
        .repo_project(
            "flood",
            &repo.url,
            serde_json::json!([{"name": "KILN_FIXTURE_FLOOD_MB", "value": FLOOD_MIB.to_string()}]),
        )
        .await;
    let agent = AgentProcess::start(
        Path::new(AGENT),
        &cp.base_url(),
        &dir.path().join("agent"),
        image,
        "log_limit = \"1GiB\"",
    )
    .await;

    // 1a. Through the agent. The control plane runs in this process: its CPU time
    // is this process's.
    let own_cpu_before = own_cpu_time();
    let outcome = admin.push_repo(&repo.url, "main", &repo.head()).await;
    let id = outcome.deployments[0].id.clone();
    let built = loop {
        let deployment = admin.deployment(&id).await;
        if deployment.status == DeploymentStatus::AwaitingDeployment {
            break deployment;
        }
        assert!(
            matches!(
                deployment.status,
                DeploymentStatus::Queued | DeploymentStatus::Building
            ),
            "{:?}",
            deployment.reason
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Before the logs are read back below, which costs the control plane too.
    let control_plane_cpu = own_cpu_time() - own_cpu_before;
    let system = admin
        .get(&format!("/api/v1/deployments/{id}/logs/system"))
        .await
        .text();
    let build_started = system
        .lines()
        .find(|line| line.contains("Running `npm run build`"))
        .and_then(|line| line.get(1..25))
        .and_then(|stamp| chrono::DateTime::parse_from_rfc3339(stamp).ok())
        .expect("the system log times the build step");
    let done = built
        .transitions
        .iter()
        .find(|t| t.status == DeploymentStatus::AwaitingDeployment)
        .unwrap()
        .at;
    let through_agent =
        (done - build_started.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0;
    // The build step alone (container created → exited → removed), as the agent
    // timed it: the counterpart of `docker run` + `docker wait` by hand.
    let build_step = build_step_of(&system);
    let stored = admin
        .get(&format!("/api/v1/deployments/{id}/logs/backend"))
        .await
        .body
        .len() as f64;
    let peak_rss = agent.peak_rss_bytes();
    let agent_cpu = agent.cpu_time().as_secs_f64();

    // 1b. The same container by hand.
    let source = dir.path().join("by-hand");
    Command::new("cp")
        .arg("-r")
        .arg(&repo.dir)
        .arg(&source)
        .status()
        .unwrap();
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && npm ci --offline --no-audit --no-fund >/dev/null 2>&1",
            source.display()
        ))
        .status()
        .unwrap();
    Command::new("chown")
        .args(["-R", "10000:10000"])
        .arg(&source)
        .status()
        .unwrap();
    let (run, logs) = by_hand(image, &source);
    let floor = by_hand_unlogged(image, &source, FLOOD_MIB).as_secs_f64();
    // The floor itself varies by a tenth from one run to the next: the ratio is
    // also taken over rounds that each run the agent's build step, then the
    // floor, and the median of those pairs is reported.
    let mut paired = Vec::new();
    for round in 1..=PAIRED_ROUNDS {
        let through = agent_build_step(&admin, &repo, round).await;
        let floor = by_hand_unlogged(image, &source, FLOOD_MIB).as_secs_f64();
        paired.push((through, floor));
    }
    // What a step costs with no output at all: the fixed part of the ratio.
    admin
        .set_variables(&environment.id, serde_json::json!([]))
        .await;
    let mut empty = Vec::new();
    for round in 1..=3 {
        let through = agent_build_step(&admin, &repo, PAIRED_ROUNDS + round).await;
        let floor = by_hand_unlogged(image, &source, 0).as_secs_f64();
        empty.push((through, floor));
    }
    drop(agent);
    let mut ratios: Vec<f64> = paired.iter().map(|(agent, floor)| agent / floor).collect();
    ratios.sort_by(f64::total_cmp);
    let median_ratio = ratios[ratios.len() / 2];

    // 2. Packing.
    let tree = dir.path().join("tree");
    let tree_bytes = generate_tree(&tree) as f64;
    let started = Instant::now();
    let packed = kiln_agent::artifact::pack(&tree, &dir.path().join("kiln.tar.gz")).unwrap();
    let kiln_pack = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let status = Command::new("tar")
        .arg("-czf")
        .arg(dir.path().join("tar.tar.gz"))
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let tar_pack = started.elapsed().as_secs_f64();
    let tar_size = std::fs::metadata(dir.path().join("tar.tar.gz"))
        .unwrap()
        .len();

    let mib = |bytes: f64, secs: f64| bytes / (1 << 20) as f64 / secs;
    let flood = (FLOOD_MIB << 20) as f64;
    println!();
    println!("log throughput ({FLOOD_MIB} MiB printed by the build step)");
    println!("  through the agent to the control plane : {:.1} MiB/s ({through_agent:.2} s, {:.0} MiB stored, agent peak RSS {} MiB)", mib(flood, through_agent), stored / (1 << 20) as f64, peak_rss >> 20);
    println!(
        "  same container by hand (docker run)    : {:.1} MiB/s ({:.2} s)",
        mib(flood, run.as_secs_f64()),
        run.as_secs_f64()
    );
    println!(
        "  docker logs reading it back            : {:.1} MiB/s ({:.2} s)",
        mib(flood, logs.as_secs_f64()),
        logs.as_secs_f64()
    );
    println!(
        "  same, engine log off, output attached  : {:.1} MiB/s ({floor:.2} s, the floor)",
        mib(flood, floor)
    );
    println!("  build step through the agent           : {build_step:.2} s");
    println!(
        "  agent CPU for the whole job            : {agent_cpu:.2} s ({:.0} MiB per CPU-second)",
        mib(flood, agent_cpu)
    );
    println!(
        "  control plane CPU (and this bench)     : {control_plane_cpu:.2} s ({:.0} MiB per CPU-second)",
        mib(flood, control_plane_cpu)
    );
    println!(
        "  agent / docker run time (build step)   : {:.2}×",
        build_step / run.as_secs_f64()
    );
    println!(
        "  agent / the floor (build step)         : {:.2}×",
        build_step / floor
    );
    println!(
        "  agent / the floor, paired rounds       : {median_ratio:.2}× median of {} ({})",
        paired.len(),
        paired
            .iter()
            .map(|(agent, floor)| format!("{agent:.2}/{floor:.2} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  an empty step, agent vs the floor      : {}",
        empty
            .iter()
            .map(|(agent, floor)| format!("{agent:.2}/{floor:.2} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  agent / docker run time (to awaiting)  : {:.2}×",
        through_agent / run.as_secs_f64()
    );
    println!(
        "  agent throughput / docker logs         : {:.2}×",
        logs.as_secs_f64() / through_agent
    );
    println!(
        "artifact packing ({:.0} MiB tree: minified JS and binary)",
        tree_bytes / (1 << 20) as f64
    );
    println!(
        "  kiln pack  : {:.1} MiB/s ({kiln_pack:.2} s, {} MiB out)",
        mib(tree_bytes, kiln_pack),
        packed.size >> 20
    );
    println!(
        "  tar -czf   : {:.1} MiB/s ({tar_pack:.2} s, {} MiB out)",
        mib(tree_bytes, tar_pack),
        tar_size >> 20
    );
    println!("  kiln / tar : {:.2}× the throughput", tar_pack / kiln_pack);
}
