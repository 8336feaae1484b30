//! Dashboard benchmark, one run, reported as times and as ratios against peers
//! run in the same go:
//!
//! 1. pages with 10,000 deployments in the store: each page's time over loopback
//!    (median and 95th percentile of 40), against the API's JSON for the same 50
//!    deployments;
//! 2. a 200 MiB log: the viewer's first window at the tail (the index built from
//!    nothing), the next one, its outline and a search of the whole log, against
//!    `tail -n 500` and `grep -c` on the same file; and, with Chromium present,
//!    the deployment page opening that log at its tail in a real browser, against
//!    the same page with a 10-line log.
//!
//! `cargo bench -p kiln-tests --bench dashboard`

// Tests: a fixture that cannot be set up should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_protocol::{ComponentStatus, DeploymentStatus};
use kiln_tests::support::*;
use reqwest::StatusCode;

const SERVER: &str = env!("CARGO_BIN_EXE_kiln-server-e2e");
const DEPLOYMENTS: u32 = 10_000;
const ENVIRONMENTS: u32 = 20;
const LOG_MIB: usize = 200;
const PASSWORD: &str = "benchmark password";

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Median and 95th percentile of `runs` timed requests.
async fn time_get(
    client: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    runs: usize,
) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut request = client.get(url);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let started = Instant::now();
        let response = request.send().await.unwrap();
        let status = response.status();
        let body = response.bytes().await.unwrap();
        times.push(started.elapsed());
        assert_eq!(
            status,
            StatusCode::OK,
            "{url}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    times.sort();
    (times[runs / 2], times[runs * 95 / 100])
}

async fn sign_in(client: &reqwest::Client, base: &str) -> String {
    let response = sign_in_over_http(client, base, "bench", PASSWORD, None).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

fn command_time(program: &str, args: &[&str]) -> Duration {
    let started = Instant::now();
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success() || program == "grep",
        "{program} {args:?}"
    );
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("server");
    let cp = ControlPlane::start_with(&data_dir, |config| {
        config.log_limit = (LOG_MIB as u64 + 8) << 20;
    })
    .await;
    add_user(Path::new(SERVER), &data_dir, "bench", "viewer", PASSWORD);
    let admin = cp.admin();
    let base = cp.base_url();
    let project = admin.create_project("shop").await;
    let mut environments = Vec::new();
    for n in 0..ENVIRONMENTS {
        environments.push(
            admin
                .create_environment(&project, &format!("env-{n}"), &format!("branch-{n}"))
                .await,
        );
    }
    let agent = cp.register_agent("bench-agent", &[]).await;

    // 10,000 deployments: every tenth built to a mix of outcomes, the rest
    // superseded by the next push to their environment, as busy teams see.
    let seeded = Instant::now();
    let mut last = None;
    for n in 0..DEPLOYMENTS {
        let outcome = admin
            .push(&format!("branch-{}", n % ENVIRONMENTS), &sha(n + 1))
            .await;
        last = outcome.deployments.into_iter().next().or(last);
        if n % 10 == 0 {
            let job = agent.claim(1).await.unwrap();
            agent
                .report(&job, &update(DeploymentStatus::Building))
                .await;
            let mut done = update(if n % 20 == 0 {
                DeploymentStatus::AwaitingDeployment
            } else {
                DeploymentStatus::BuildFailed
            });
            done.backend = Some(ComponentStatus::Succeeded);
            done.storefront = Some(ComponentStatus::Skipped);
            agent.report(&job, &done).await;
        }
    }
    println!(
        "seeded {DEPLOYMENTS} deployments in {ENVIRONMENTS} environments in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );
    let last = last.unwrap();

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = sign_in(&client, &base).await;
    let runs = 40;
    let api_client = {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            "authorization",
            format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
        );
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap()
    };
    let (peer, _) = time_get(
        &api_client,
        &format!(
            "{base}/api/v1/deployments?project_id={}&limit=50",
            project.id
        ),
        None,
        runs,
    )
    .await;
    println!();
    println!("pages with {DEPLOYMENTS} deployments (median / p95 of {runs}; peer: the API's JSON for 50 deployments, {:.2} ms)", millis(peer));
    let pages = [
        ("projects", "/".to_owned()),
        (
            "project (environment cards)",
            format!("/projects/{}", project.id),
        ),
        (
            "deployments tab",
            format!("/projects/{}/deployments", project.id),
        ),
        (
            "deployments tab, page 100",
            format!("/projects/{}/deployments?page=100", project.id),
        ),
        (
            "deployments tab, filtered",
            format!(
                "/projects/{}/deployments?environment={}&status=build_failed&branch=branch-3",
                project.id, environments[3].id
            ),
        ),
        (
            "deployments tab, sha search",
            format!(
                "/projects/{}/deployments?q={}",
                project.id,
                &sha(4242)[..12]
            ),
        ),
        (
            "environment",
            format!("/environments/{}", environments[0].id),
        ),
        (
            "environment settings",
            format!("/environments/{}/settings", environments[0].id),
        ),
        ("deployment", format!("/deployments/{}", last.id)),
        ("agents", "/agents".to_owned()),
    ];
    let mut worst = Duration::ZERO;
    for (name, path) in &pages {
        let (median, p95) = time_get(&client, &format!("{base}{path}"), Some(&cookie), runs).await;
        worst = worst.max(p95);
        println!(
            "  {name:<30}: {:>6.2} ms / {:>6.2} ms  ({:.1}× the API)",
            millis(median),
            millis(p95),
            median.as_secs_f64() / peer.as_secs_f64()
        );
    }
    println!("  slowest p95: {:.2} ms (goal < 50 ms)", millis(worst));

    // ---------------------------------------------------------------- a 200 MiB log
    // Deployments left queued by the seeding come first: build whichever is claimed.
    let job = agent.claim(1).await.unwrap();
    let big_id = job.deployment_id.clone();
    agent
        .report(&job, &update(DeploymentStatus::Building))
        .await;
    let mut chunk = String::with_capacity(1 << 20);
    let mut number = 0u64;
    let mut offset = 0u64;
    for piece in 0..LOG_MIB {
        chunk.clear();
        if piece == 0 {
            chunk.push_str("section_start:1764426307:install\r\x1b[0KInstalling\n");
        }
        while chunk.len() < (1 << 20) - 200 {
            number += 1;
            if number == 1_000_000 {
                chunk.push_str("kiln-needle found here\n");
            } else {
                chunk.push_str(&format!(
                    "\x1b[32minfo\x1b[0m line {number:09}: compiled module in 12ms abcdefghijklmnopqrstuvwxyz\n"
                ));
            }
        }
        let reply = agent
            .append_log(&job.job_id, "backend", offset, chunk.as_bytes())
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        offset += chunk.len() as u64;
    }
    let mut done = update(DeploymentStatus::AwaitingDeployment);
    done.backend = Some(ComponentStatus::Succeeded);
    done.storefront = Some(ComponentStatus::Skipped);
    agent.report(&job, &done).await;
    let log_path = data_dir.join("logs").join(&job.job_id).join("backend.log");
    assert!(
        log_path.exists(),
        "{} is where the log is kept",
        log_path.display()
    );
    let logs = format!("{base}/deployments/{big_id}/logs/backend");
    let timed = |url: String| {
        let client = client.clone();
        let cookie = cookie.clone();
        async move {
            let started = Instant::now();
            let response = client
                .get(&url)
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{url}");
            let body = response.bytes().await.unwrap();
            (started.elapsed(), body.len())
        }
    };
    let (cold, bytes) = timed(format!("{logs}/lines?tail=500")).await;
    assert!(bytes > 500 * 60, "the tail window holds the log's lines");
    let (warm, _) = timed(format!("{logs}/lines?tail=500")).await;
    let (middle, _) = timed(format!("{logs}/lines?from=1000000&count=500")).await;
    let (outline, _) = timed(format!("{logs}/outline")).await;
    let (search, _) = timed(format!("{logs}/search?q=kiln-needle")).await;
    let path = log_path.to_str().unwrap();
    let tail = command_time("tail", &["-n", "500", path]);
    let grep = command_time("grep", &["-c", "kiln-needle", path]);
    println!();
    println!("a {LOG_MIB} MiB log ({number} lines)");
    println!(
        "  first window at the tail (index built): {:>7.1} ms  ({:.1}× `tail -n 500`, {:.1} ms)",
        millis(cold),
        cold.as_secs_f64() / tail.as_secs_f64(),
        millis(tail)
    );
    println!(
        "  next window at the tail               : {:>7.1} ms",
        millis(warm)
    );
    println!(
        "  a window in the middle                : {:>7.1} ms",
        millis(middle)
    );
    println!(
        "  outline                               : {:>7.1} ms",
        millis(outline)
    );
    println!(
        "  search of the whole log               : {:>7.1} ms  ({:.2}× `grep -c`, {:.1} ms)",
        millis(search),
        search.as_secs_f64() / grep.as_secs_f64(),
        millis(grep)
    );

    if Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists() {
        let job = agent.claim(1).await.unwrap();
        let small_id = job.deployment_id.clone();
        agent
            .report(&job, &update(DeploymentStatus::Building))
            .await;
        agent
            .append_log(
                &job.job_id,
                "backend",
                0,
                "one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\nten\n",
            )
            .await;
        agent.report(&job, &done).await;
        let browser = Browser::start().await;
        browser.goto(&format!("{base}/login")).await;
        browser.sign_in("bench", PASSWORD).await;
        let open = |id: String| {
            let browser = &browser;
            let base = base.clone();
            async move {
                browser
                    .goto(&format!("{base}/deployments/{id}#backend"))
                    .await;
                let value = browser
                    .until(
                        "the log at its tail",
                        Duration::from_secs(30),
                        "const s = document.querySelector('#log-backend'); const rows = s.querySelectorAll('.row .text'); return s.dataset.ended === 'true' && rows.length && !s.querySelector('.loading') && performance.now()",
                    )
                    .await;
                value.as_f64().unwrap()
            }
        };
        // Once each to warm caches (and the index), then measured.
        open(small_id.clone()).await;
        open(big_id.clone()).await;
        let small_ms = open(small_id.clone()).await;
        let big_ms = open(big_id.clone()).await;
        println!("  in Chromium, page load to the tail drawn: {big_ms:.0} ms ({:.2}× the same page with a 10-line log, {small_ms:.0} ms)", big_ms / small_ms);
        let scroll_ms = browser
            .run(
                "const v = document.querySelector('#log-backend .viewport'); const started = performance.now(); for (let i = 0; i < 50; i++) { v.scrollTop = v.scrollHeight * i / 50; v.dispatchEvent(new Event('scroll')); window.kiln.viewers.get('backend').draw(); } return (performance.now() - started) / 50",
                vec![],
            )
            .await;
        println!(
            "  in Chromium, one scroll redraw (of 50 jumps across the log): {:.2} ms",
            scroll_ms.as_f64().unwrap()
        );
        browser.close().await;
    } else {
        println!("  (no Chromium: the in-browser open time was not measured)");
    }
}
