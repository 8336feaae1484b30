//! Issue 7: what an operator sees. `/metrics` scraped and parsed after real builds,
//! `/healthz` and `/readyz`, and JSON operator logs whose job events carry the job.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kiln_protocol::DeploymentStatus::{AwaitingDeployment, BuildFailed};

use crate::agent::world;
use crate::support::free_port;

/// Prometheus text format: `name{labels} value` per sample line.
pub(crate) fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("sample has a value");
            (
                name.to_owned(),
                value.parse::<f64>().expect("value is a number"),
            )
        })
        .collect()
}

#[tokio::test]
async fn metrics_health_and_json_logs_tell_the_operator_what_happened() {
    let Some(world) = world(serde_json::json!([])).await else {
        return;
    };
    let port = free_port();
    let mut agent = world
        .agent("agent", &format!("metrics_listen = \"127.0.0.1:{port}\"\n"))
        .await;
    // Restart with JSON operator logs (the first start registered it).
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit(Duration::from_secs(20)).await;
    agent.env.push(("KILN_LOG_FORMAT".into(), "json".into()));
    agent.spawn();

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await;
        if ready.as_ref().is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready: {ready:?}\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let built = world.push(&world.repo.head()).await;
    world.settle(&built.id, AwaitingDeployment, &agent).await;
    world
        .admin
        .set_variables(
            &world.environment_id,
            serde_json::json!([{"name": "KILN_FIXTURE_EXIT", "value": "3"}]),
        )
        .await;
    let sha = world
        .repo
        .commit("fail", |dir| std::fs::write(dir.join("F.md"), "f").unwrap());
    let failed = world.push(&sha).await;
    world.settle(&failed.id, BuildFailed, &agent).await;

    // The job's task ends (and leaves `jobs_running`) just after its final report,
    // which the test may see first.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (text, samples) = loop {
        let response = http.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let samples = parse_metrics(&text);
        if samples.get("kiln_agent_jobs_running") == Some(&0.0) || Instant::now() > deadline {
            break (text, samples);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let get = |name: &str| {
        *samples
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    };
    assert_eq!(get("kiln_agent_jobs_running"), 0.0);
    assert_eq!(
        get("kiln_agent_jobs_finished_total{outcome=\"succeeded\"}"),
        1.0
    );
    assert_eq!(
        get("kiln_agent_jobs_finished_total{outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(get("kiln_agent_claim_latency_seconds_count"), 2.0);
    assert!(get("kiln_agent_claim_latency_seconds_sum") > 0.0);
    assert!(get("kiln_agent_log_bytes_total{stream=\"backend\"}") > 0.0);
    assert!(get("kiln_agent_log_bytes_total{stream=\"system\"}") > 0.0);
    assert!(get("kiln_agent_artifact_bytes_total") > 0.0);
    assert_eq!(get("kiln_agent_docker_errors_total"), 0.0);
    get("kiln_agent_control_plane_errors_total");
    get("kiln_agent_spool_bytes");
    get("kiln_agent_cancel_latency_seconds_count");

    // Every event inside a job carries its ids, whatever emitted it.
    let job_id = world
        .admin
        .deployment(&failed.id)
        .await
        .current_job_id
        .unwrap();
    let log = agent.log_text();
    let ended: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["fields"]["message"] == "Build ended.")
        .collect();
    assert_eq!(ended.len(), 2, "JSON log lines:\n{log}");
    let failed_event = ended
        .iter()
        .find(|event| event["span"]["job_id"] == job_id.as_str())
        .unwrap_or_else(|| panic!("no event of job {job_id}:\n{log}"));
    assert_eq!(failed_event["span"]["deployment_id"], failed.id.as_str());
    assert_eq!(failed_event["span"]["commit"], sha.as_str());

    // `doctor` checks the sandbox from inside a throwaway container.
    // (tokio's Command: the control plane runs on this test's runtime.)
    let doctor = tokio::process::Command::new(crate::agent::AGENT)
        .args(["--config", agent.config.to_str().unwrap(), "doctor"])
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        doctor.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&doctor.stderr)
    );
    for line in [
        "ok    sandbox user   builds run as ",
        "ok    sandbox lock   seccomp filter on, no capabilities, no-new-privileges",
        "ok    sandbox limits memory 4 GiB and pids 1024 applied by the cgroup",
        "ok    sandbox rootfs root file system is read-only",
    ] {
        assert!(report.contains(line), "{line:?} not in\n{report}");
    }
    // Issue 32: the package registry, from a build container as an install
    // reaches it. This agent installs with no network: said, not failed.
    assert!(
        report
            .lines()
            .any(|line| line.starts_with("warn") && line.contains("install_network is \"none\"")),
        "{report}"
    );
    let doctor = tokio::process::Command::new(crate::agent::AGENT)
        .args(["--config", agent.config.to_str().unwrap(), "doctor"])
        .env("KILN_INSTALL_NETWORK", "bridge")
        .env("KILN_EXTRA_CA_CERTS", "/etc/ssl/certs/ca-certificates.crt")
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        report.lines().any(|line| line.starts_with("ok")
            && line.contains("npm's registry answers through install_network \"bridge\", trusting extra_ca_certs /etc/ssl/certs/ca-certificates.crt")),
        "{report}"
    );
}

#[tokio::test]
async fn stale_workspaces_are_swept_at_start_and_reported() {
    let Some(world) = world(serde_json::json!([])).await else {
        return;
    };
    let dir = world.root_dir().join("sweeper");
    let stale = dir.join("work/job_from_a_crash/build/src");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("big.bin"), vec![7u8; 3 << 20]).unwrap();
    let agent = world.agent("sweeper", "").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.log_text().contains("Reclaimed disk") {
        assert!(
            Instant::now() < deadline,
            "no sweep reported:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Issue 32: a log file, not a terminal, gets no colour codes.
    assert!(!agent.log_text().contains('\x1b'), "{}", agent.log_text());
    assert!(!dir.join("work/job_from_a_crash").exists());
    let log = agent.log_text();
    // 3 MiB of file plus directory blocks.
    assert!(log.contains("3.0 MiB"), "{log}");
}

/// The systemd notify protocol, spoken to a socket of our own as systemd would
/// listen: ready, a status line, and watchdog pings while healthy.
#[tokio::test]
async fn systemd_hears_ready_status_and_watchdog_pings() {
    let Some(world) = world(serde_json::json!([])).await else {
        return;
    };
    let socket_path = world.root_dir().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let mut agent = world.agent("notified", "").await;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit(Duration::from_secs(20)).await;
    agent
        .env
        .push(("NOTIFY_SOCKET".into(), socket_path.display().to_string()));
    agent.env.push(("WATCHDOG_USEC".into(), "3000000".into()));
    agent.spawn();

    let mut heard = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 4096];
    while !(heard.contains("READY=1")
        && heard.contains("STATUS=running 0/1 jobs")
        && heard.matches("WATCHDOG=1").count() >= 2)
    {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "heard only:\n{heard}\nagent log:\n{}",
            agent.log_text()
        );
        if let Ok(Ok(n)) = tokio::time::timeout(left, socket.recv(&mut buf)).await {
            heard.push_str(&String::from_utf8_lossy(&buf[..n]));
            heard.push('\n');
        }
    }
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit(Duration::from_secs(20)).await;
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await
    {
        heard.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(heard.contains("STOPPING=1"), "{heard}");
}
