//! Claim benchmark: N simulated agents (1, 16, 64, 256) speaking the real agent
//! protocol over HTTP (register, long-poll claim, hold the job `HOLD` as a very
//! short build would, report it finished) against 10,000 queued jobs, on SQLite (one server) and on PostgreSQL (one
//! replica, and three sharing the database, agents spread over them):
//!
//! - claims per second while the queue lasts (at most `WINDOW` per run); with
//!   `HOLD` 256 agents ask for more than the machine serves (its capacity), so
//!   a last run per store paces them with `PACED_HOLD` to about 500 a second
//!   (latency at the goal's rate),
//! - claim latency p50 and p99 of a running fleet: every agent asks for its
//!   first job at the same instant, then starts its cycle at its own point of
//!   one hold (as agents that started at different times do); p50 and p99 are
//!   of the claims after the first,
//! - all-at-once: from that first instant until the last agent had its job (a
//!   fleet reconnecting after a restart),
//! - cancel propagation p99: a probe agent holds a job's watch long-poll on one
//!   replica while a newer push to its environment lands on another; the time
//!   from the push's answer to the watch's `cancel` (measured while the N agents
//!   claim),
//! - double claims: deployments handed to two agents (must be 0).
//!
//! PostgreSQL comes from `KILN_TEST_DATABASE_URL`, else `.ci/postgres` starts a
//! throwaway one (as root). `cargo bench -p kiln-tests --bench claims`

// Tests: a fixture that cannot be set up should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_control_plane::Wait;
use kiln_protocol::{DeploymentStatus, JobControl, JobDirective, WatchRequest};
use kiln_tests::support::*;
use reqwest::StatusCode;

const QUEUED: u32 = 10_000;
const AGENT_COUNTS: [usize; 4] = [1, 16, 64, 256];
/// The longest one run claims for (one agent would take minutes to drain).
const WINDOW: Duration = Duration::from_secs(8);
/// How long a simulated agent holds each job before reporting it: 256 agents
/// then ask for up to 1,024 claims a second, more than two cores serve.
const HOLD: Duration = Duration::from_millis(250);
/// The paced run: 256 agents holding each job this long ask for about 500
/// claims a second, the goal, so its latency is that of a store
/// keeping up rather than of a queue of claims.
const PACED_HOLD: Duration = Duration::from_millis(500);
const PROBE_REPO: &str = "https://git.example/acme/probe.git";

#[derive(Clone, Copy, PartialEq)]
enum Store {
    Sqlite,
    Postgres,
}

struct Outcome {
    claims: usize,
    elapsed: Duration,
    /// Claims after each agent's first (a running fleet's).
    latencies: Vec<Duration>,
    /// Until every agent had its first job, all having asked at once.
    burst: Duration,
    cancels: Vec<Duration>,
    double_claims: usize,
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() * p).div_ceil(100)).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

fn postgres_url() -> String {
    if let Ok(url) = std::env::var("KILN_TEST_DATABASE_URL") {
        return url;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/postgres");
    let output = std::process::Command::new(script).output().unwrap();
    assert!(
        output.status.success(),
        ".ci/postgres: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn database_name(run: usize) -> String {
    format!("kiln_bench_{}_{run}", std::process::id())
}

/// Runs `sql` on the base database, on a plain thread (the synchronous client
/// may not run inside the benchmark's runtime).
fn admin_sql(base: &str, sql: String) {
    let base = base.to_owned();
    std::thread::spawn(move || {
        let mut admin = postgres::Client::connect(&base, postgres::NoTls).unwrap();
        admin.batch_execute(&sql).unwrap();
    })
    .join()
    .unwrap();
}

/// A fresh database for one run.
fn fresh_database(base: &str, run: usize) -> String {
    admin_sql(base, format!("CREATE DATABASE {}", database_name(run)));
    format!("{base} dbname={}", database_name(run))
}

/// Copies the one queued deployment `template` until `QUEUED` wait, in one
/// statement both databases accept.
const SEED: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
    INSERT INTO deployments (id, project_id, environment_id, commit_sha, branch, author, message,
                             status, backend_status, storefront_status, created_at, updated_at)
    SELECT 'dpl_seed' || CAST(n.i AS TEXT), project_id, environment_id, commit_sha, branch, author,
           message, status, backend_status, storefront_status, created_at, updated_at
    FROM deployments, n WHERE id = ?1";

fn seed(store: Store, data_dir: &Path, url: Option<&str>, template: &str) {
    let more = i64::from(QUEUED - 1);
    match store {
        Store::Sqlite => {
            let conn = rusqlite::Connection::open(data_dir.join("kiln.sqlite")).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            conn.execute(SEED, rusqlite::params![template, more])
                .unwrap();
        }
        Store::Postgres => {
            let (url, template) = (url.unwrap().to_owned(), template.to_owned());
            std::thread::spawn(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                let sql = SEED.replace("?1", "$1").replace("?2", "$2");
                client.execute(&sql, &[&template, &(more as i32)]).unwrap();
                // As autovacuum would soon: plans for a table of this size.
                client.batch_execute("ANALYZE").unwrap();
                // Every run starts from a checkpoint, so none pays for an
                // earlier one's writes (needs a superuser, as `.ci/postgres`'s).
                if let Err(error) = client.batch_execute("CHECKPOINT") {
                    eprintln!("no CHECKPOINT before the run: {error}");
                }
            })
            .join()
            .unwrap();
        }
    }
}

/// A project whose jobs need `label`, Production on `main`.
async fn labeled_project(admin: &Api, name: &str, repository: &str, label: &str) {
    let project = admin
        .create_project_with(kiln_protocol::CreateProject {
            agent_labels: vec![label.into()],
            ..kiln_protocol::CreateProject::new(name, repository)
        })
        .await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
}

async fn run(
    store: Store,
    replicas: usize,
    agents: usize,
    hold: Duration,
    base_url: Option<&str>,
    run: usize,
) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let url = base_url.map(|base| fresh_database(base, run));
    let mut servers = Vec::new();
    for replica in 0..replicas {
        let url = url.clone();
        servers.push(
            ControlPlane::start_with(
                &dir.path().join(format!("replica-{replica}")),
                move |config| {
                    config.database_url = url;
                    config.lease = Duration::from_secs(600);
                    // The server's own pace (the test fixture reaps ten times as often).
                    config.reaper_interval = Duration::from_secs(1);
                },
            )
            .await,
        );
    }
    let admin = servers[0].admin();
    // The simulated agents' jobs need `sim`, which the probe agent lacks.
    labeled_project(&admin, "shop", REPO, "sim").await;
    let template = admin.push("main", &sha(1)).await.deployments[0].id.clone();
    seed(
        store,
        &dir.path().join("replica-0"),
        url.as_deref(),
        &template,
    );
    // The seed's and earlier runs' dirty pages go to disk before the clock
    // starts, not during this run.
    nix::unistd::sync();

    // The cancel probe: its own project, built only by the probe agent.
    labeled_project(&admin, "probe", PROBE_REPO, "probe").await;

    let mut simulated = Vec::new();
    for n in 0..agents {
        simulated.push(
            servers[n % replicas]
                .register_agent(&format!("sim-{n}"), &["sim"])
                .await,
        );
    }
    let probe = servers[0].register_agent("probe", &["probe"]).await;
    let pusher = servers[replicas - 1].admin();

    let started = Instant::now();
    let deadline = started + WINDOW;
    let count = simulated.len() as u32;
    let workers: Vec<_> = simulated
        .into_iter()
        .enumerate()
        .map(|(n, agent)| {
            tokio::spawn(async move {
                let mut claimed = Vec::new();
                let mut first = None;
                let mut steady = Vec::new();
                // After the first claim, all at once, each agent starts its
                // cycle at its own point of one hold, as a running fleet has:
                // the first instant at that point after its first job came
                // (counted from when that came, the first claims' spread
                // would bunch the next ones up).
                let phase = hold * n as u32 / count;
                while Instant::now() < deadline {
                    let asked = Instant::now();
                    let Some(job) = agent.claim(1).await else {
                        break;
                    };
                    let latency = asked.elapsed();
                    claimed.push(job.deployment_id.clone());
                    match first {
                        None => first = Some(latency),
                        Some(_) => steady.push(latency),
                    }
                    // Only the first claim's job is held to the agent's point.
                    let until = if steady.is_empty() {
                        let holds = started
                            .elapsed()
                            .saturating_sub(phase)
                            .as_nanos()
                            .div_ceil(hold.as_nanos());
                        started + phase + hold * holds as u32
                    } else {
                        Instant::now() + hold
                    };
                    tokio::time::sleep_until(until.into()).await;
                    let reply = agent
                        .report(&job, &update(DeploymentStatus::BuildFailed))
                        .await;
                    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                }
                (claimed, first, steady)
            })
        })
        .collect();

    let servers = Arc::new(servers);
    let prober = {
        let servers = servers.clone();
        tokio::spawn(async move {
            let mut cancels = Vec::new();
            let mut n = 0;
            pusher.push_repo(PROBE_REPO, "main", &sha(1_000_000)).await;
            while Instant::now() < deadline && cancels.len() < 50 {
                let Some(job) = probe.claim(5).await else {
                    break;
                };
                let watcher = probe.clone();
                let job_id = job.job_id.clone();
                let watch = tokio::spawn(async move {
                    watcher
                        .post_json(
                            &format!("/api/v1/agent/jobs/{job_id}/watch"),
                            &WatchRequest {
                                wait_seconds: Some(20),
                            },
                        )
                        .await
                        .expect_json::<JobControl>(StatusCode::OK)
                        .await
                });
                servers[0].until_parked(Wait::Watch).await;
                n += 1;
                pusher
                    .push_repo(PROBE_REPO, "main", &sha(1_000_000 + n))
                    .await;
                let pushed = Instant::now();
                let control = watch.await.unwrap();
                cancels.push(pushed.elapsed());
                assert_eq!(control.directive, JobDirective::Cancel);
            }
            cancels
        })
    };

    let mut claimed = Vec::new();
    let mut latencies = Vec::new();
    let mut burst = Duration::ZERO;
    for worker in workers {
        let (mine, first, steady) = worker.await.unwrap();
        claimed.extend(mine);
        burst = burst.max(first.unwrap_or_default());
        latencies.extend(steady);
    }
    let elapsed = started.elapsed().min(WINDOW);
    let mut cancels = prober.await.unwrap();
    let distinct: HashSet<&String> = claimed.iter().collect();
    latencies.sort();
    cancels.sort();
    let outcome = Outcome {
        claims: claimed.len(),
        elapsed,
        latencies,
        burst,
        cancels,
        double_claims: claimed.len() - distinct.len(),
    };
    for server in Arc::try_unwrap(servers).ok().unwrap() {
        server.stop().await;
    }
    // Abandoned databases cost every later run: autovacuum visits each.
    if let Some(base) = base_url {
        admin_sql(base, format!("DROP DATABASE {}", database_name(run)));
    }
    outcome
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let postgres = postgres_url();
    let configurations = [
        ("SQLite", Store::Sqlite, 1),
        ("PostgreSQL", Store::Postgres, 1),
        ("PostgreSQL", Store::Postgres, 3),
    ];
    // A row's child process prints only its row (see below).
    let child_row = std::env::var("KILN_BENCH_ROW").is_ok();
    if !child_row {
        println!(
            "{QUEUED} queued jobs; each run claims for at most {} s, each in a process of its own. Latencies in ms.",
            WINDOW.as_secs()
        );
        println!(
            "{:<11} {:>8} {:>6} {:>7} {:>8} {:>9} {:>9} {:>9} {:>11} {:>11} {:>7}",
            "store",
            "replicas",
            "agents",
            "hold",
            "claims",
            "claims/s",
            "p50",
            "p99",
            "all-at-once",
            "cancel p99",
            "double"
        );
    }
    // Each agent count holding `HOLD`, then 256 agents paced by `PACED_HOLD`.
    let runs: Vec<(usize, Duration)> = AGENT_COUNTS
        .into_iter()
        .map(|agents| (agents, HOLD))
        .chain([(256, PACED_HOLD)])
        .collect();
    // `KILN_BENCH_ONLY=PostgreSQL/1/256/500` runs one row, in this process (to
    // profile it).
    let only = std::env::var("KILN_BENCH_ONLY").ok();
    let mut sqlite_rates = vec![f64::NAN; runs.len()];
    let mut number = 0;
    for (name, store, replicas) in configurations {
        for (index, &(agents, hold)) in runs.iter().enumerate() {
            let label = format!("{name}/{replicas}/{agents}/{}", hold.as_millis());
            if only.as_ref().is_some_and(|only| *only != label) {
                continue;
            }
            let (row, rate) = if only.is_none() {
                // One process per row: a run in a process that ran others
                // measured up to a third slower, whatever it cleaned up.
                row_in_child(&label, &postgres)
            } else {
                number += 1;
                let base = (store == Store::Postgres).then_some(postgres.as_str());
                let outcome = run(store, replicas, agents, hold, base, number).await;
                assert_eq!(outcome.double_claims, 0, "a job went to two agents");
                let rate = outcome.claims as f64 / outcome.elapsed.as_secs_f64();
                let row = format!(
                    "{:<11} {:>8} {:>6} {:>7} {:>8} {:>9.0} {:>9.1} {:>9.1} {:>11.1} {:>11.1} {:>7}",
                    name,
                    replicas,
                    agents,
                    format!("{} ms", hold.as_millis()),
                    outcome.claims,
                    rate,
                    percentile(&outcome.latencies, 50),
                    percentile(&outcome.latencies, 99),
                    outcome.burst.as_secs_f64() * 1000.0,
                    percentile(&outcome.cancels, 99),
                    outcome.double_claims,
                );
                (row, rate)
            };
            if child_row {
                println!("{row}\n{RATE}{rate}");
                continue;
            }
            let versus = if store == Store::Sqlite {
                sqlite_rates[index] = rate;
                String::new()
            } else {
                format!("  ({:.2}× SQLite)", rate / sqlite_rates[index])
            };
            println!("{row}{versus}");
        }
    }
}

/// Before the rate on a child's last line.
const RATE: &str = "rate ";

/// Runs one row in a fresh process of this benchmark: its printed row and rate.
fn row_in_child(label: &str, postgres: &str) -> (String, f64) {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .env("KILN_BENCH_ONLY", label)
        .env("KILN_BENCH_ROW", "1")
        .env("KILN_TEST_DATABASE_URL", postgres)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "the run of {label} failed");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (row, rate) = stdout.trim_end().rsplit_once('\n').unwrap();
    (
        row.to_owned(),
        rate.strip_prefix(RATE).unwrap().parse().unwrap(),
    )
}
