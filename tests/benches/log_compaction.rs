//! Log compaction benchmark, one run: a job's backend log of `APPENDS`
//! acknowledged appends (a long build's, one object each in the bucket) read
//! back whole by a replica that never held it, before and after the leader
//! compacts it into one object; the read after as a ratio of the one before.
//!
//! Replicas in this process on one PostgreSQL (`KILN_TEST_DATABASE_URL`) and one
//! S3 bucket (`KILN_TEST_S3_ENDPOINT`, `moto_server`).
//! `cargo bench -p kiln-tests --bench log_compaction`

// Tests: a fixture that cannot be set up should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_protocol::DeploymentStatus;
use kiln_tests::support::*;
use reqwest::StatusCode;

/// A 20-minute build that prints steadily: an append every 600 ms.
const APPENDS: usize = 2_000;
const READS: usize = 3;

async fn replica(
    dir: &Path,
    name: &str,
    database_url: &str,
    bucket: &TestBucket,
    compaction_delay: Duration,
) -> ControlPlane {
    let (database_url, objects) = (database_url.to_owned(), bucket.object_store_config());
    ControlPlane::start_with(&dir.join(name), move |config| {
        config.database_url = Some(database_url);
        config.object_store = Some(objects);
        config.log_compaction_delay = compaction_delay;
    })
    .await
}

/// Median seconds for a replica started afresh to serve the whole log.
async fn fresh_reads(
    dir: &Path,
    database_url: &str,
    bucket: &TestBucket,
    deployment_id: &str,
    expected: &[u8],
) -> f64 {
    let mut took = Vec::new();
    for _ in 0..READS {
        let name = format!("reader-{}", uuid::Uuid::new_v4().simple());
        let reader = replica(dir, &name, database_url, bucket, Duration::from_secs(3600)).await;
        let started = Instant::now();
        let log = reader
            .admin()
            .get(&format!("/api/v1/deployments/{deployment_id}/logs/backend"))
            .await;
        took.push(started.elapsed().as_secs_f64());
        assert_eq!(log.status, StatusCode::OK);
        assert!(log.body == expected, "the log read back is byte-exact");
        reader.stop().await;
    }
    took.sort_by(f64::total_cmp);
    took[READS / 2]
}

fn log_objects(keys: &[String]) -> usize {
    keys.iter()
        .filter(|key| key.starts_with("kiln/logs/") && key.contains("/backend/"))
        .count()
}

#[tokio::main]
async fn main() {
    let (Ok(_), Some(bucket)) = (
        std::env::var("KILN_TEST_DATABASE_URL"),
        TestBucket::create().await,
    ) else {
        eprintln!(
            "the log compaction benchmark needs KILN_TEST_DATABASE_URL and KILN_TEST_S3_ENDPOINT"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let database_url = test_database(&dir.path().join("shared")).unwrap();
    let writer = replica(
        dir.path(),
        "writer",
        &database_url,
        &bucket,
        Duration::from_secs(3600),
    )
    .await;
    let admin = writer.admin();
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let deployment_id = admin.push("main", &sha(1)).await.deployments[0].id.clone();
    let agent = writer.register_agent("bench", &[]).await;
    let job = agent.claim(5).await.unwrap();
    let mut expected = Vec::new();
    let started = Instant::now();
    for n in 0..APPENDS {
        let chunk = format!("[{n:06}] compiling module {n} of {APPENDS}: ok\n").repeat(4);
        let reply = agent
            .append_log(&job.job_id, "backend", expected.len() as u64, &chunk)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        expected.extend_from_slice(chunk.as_bytes());
    }
    let appending = started.elapsed().as_secs_f64();
    agent
        .report(&job, &update(DeploymentStatus::AwaitingDeployment))
        .await
        .expect_json::<kiln_protocol::Deployment>(StatusCode::OK)
        .await;
    let objects_before = log_objects(&bucket.keys().await);
    let before = fresh_reads(
        dir.path(),
        &database_url,
        &bucket,
        &deployment_id,
        &expected,
    )
    .await;

    // The writer leads; a successor that compacts at once takes over.
    writer.stop().await;
    let started = Instant::now();
    let compactor = replica(
        dir.path(),
        "compactor",
        &database_url,
        &bucket,
        Duration::ZERO,
    )
    .await;
    while !compactor.is_leader() {
        assert!(started.elapsed() < Duration::from_secs(60), "never leads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leading = started.elapsed().as_secs_f64();
    while log_objects(&bucket.keys().await) != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "never compacted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let compaction = started.elapsed().as_secs_f64();
    let after = fresh_reads(
        dir.path(),
        &database_url,
        &bucket,
        &deployment_id,
        &expected,
    )
    .await;
    compactor.stop().await;

    println!();
    println!(
        "log compaction: one backend log of {APPENDS} appends ({} KiB), read whole by a fresh replica (median of {READS})",
        expected.len() / 1024
    );
    println!("{:<22} {:>8} {:>10}", "", "objects", "read (s)");
    println!(
        "{:<22} {objects_before:>8} {before:>10.3}",
        "before compaction"
    );
    println!("{:<22} {:>8} {after:>10.3}", "after compaction", 1);
    println!("after / before: {:.3}", after / before);
    println!(
        "appending took {appending:.1} s; the successor led after {leading:.1} s and had compacted after {compaction:.1} s"
    );
}
