//! The reference control plane over real HTTP: lifecycle, cancellation, previews,
//! redeploy, logs, artifacts, leases, auth, bad input, restart.

use std::time::{Duration, Instant};

use kiln_protocol::{
    ArtifactDescriptor, ArtifactUploadTicket, ComponentStatus, Deployment, DeploymentList,
    DeploymentStatus::*, EnvironmentList, EventOutcome, JobControl, JobDirective,
    LogAppendResponse, PullRequestAction, PullRequestEvent, UpdateEnvironment,
};
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};

use crate::support::*;
use kiln_control_plane::Wait;

#[tokio::test]
async fn lifecycle_from_push_to_live_then_ready() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let project = admin.create_project("shop").await;
    let production = admin
        .create_environment(&project, "Production", "main")
        .await;

    let first = admin.push("main", &sha(1)).await.deployments.remove(0);
    assert_eq!(first.status, Queued);
    assert_eq!(first.environment_id, production.id);

    let job = agent.claim(5).await.unwrap();
    assert_eq!(job.deployment_id, first.id);
    assert_eq!(job.commit_sha, sha(1));
    assert_eq!(job.backend_path, ".");
    assert_eq!(admin.deployment(&first.id).await.status, Building);

    let mut building = update(Building);
    building.backend = Some(ComponentStatus::Building);
    agent
        .report(&job, &building)
        .await
        .expect_json::<Deployment>(StatusCode::OK)
        .await;
    let mut built = update(AwaitingDeployment);
    built.backend = Some(ComponentStatus::Succeeded);
    built.storefront = Some(ComponentStatus::Skipped);
    let reported: Deployment = agent
        .report(&job, &built)
        .await
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(reported.status, AwaitingDeployment);
    assert_eq!(reported.backend_status, ComponentStatus::Succeeded);
    assert_eq!(reported.storefront_status, ComponentStatus::Skipped);

    assert_eq!(admin.deploy(&first.id).await.status, Deploying);
    let live = admin.wait_for_status(&first.id, Live).await;
    let statuses: Vec<_> = live.transitions.iter().map(|t| t.status).collect();
    assert_eq!(
        statuses,
        [Queued, Building, AwaitingDeployment, Deploying, Live]
    );

    let second = admin.push("main", &sha(2)).await.deployments.remove(0);
    agent.build_next().await;
    admin.deploy(&second.id).await;
    admin.wait_for_status(&second.id, Live).await;
    let first = admin.deployment(&first.id).await;
    assert_eq!(first.status, Ready);
    assert_eq!(
        first.reason.as_deref(),
        Some(format!("replaced by deployment {}", second.id).as_str())
    );

    let list: DeploymentList = admin
        .get(&format!(
            "/api/v1/deployments?environment={}",
            production.id
        ))
        .await
        .expect_json(StatusCode::OK)
        .await;
    let ids: Vec<_> = list.deployments.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, [second.id.as_str(), first.id.as_str()], "newest first");
    let live_count = list.deployments.iter().filter(|d| d.status == Live).count();
    assert_eq!(live_count, 1);
}

#[tokio::test]
async fn newer_commit_cancels_older_builds_and_the_agent_learns_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;

    let building = admin.push("main", &sha(1)).await.deployments.remove(0);
    let job = agent.claim(5).await.unwrap();
    assert_eq!(job.deployment_id, building.id);
    let queued = admin.push("main", &sha(2)).await;
    assert_eq!(queued.canceled, vec![building.id.clone()]);

    // The agent is in a long-poll watch when the newest commit arrives.
    let watcher = agent.clone();
    let job_id = job.job_id.clone();
    let watch = tokio::spawn(async move {
        let control: JobControl = watcher
            .post_json(
                &format!("/api/v1/agent/jobs/{job_id}/watch"),
                &serde_json::json!({"wait_seconds": 20}),
            )
            .await
            .expect_json(StatusCode::OK)
            .await;
        (control, Instant::now())
    });
    // The first watch returns Cancel at once: the push above already canceled.
    let (control, _) = watch.await.unwrap();
    assert_eq!(control.directive, JobDirective::Cancel);

    // Now the real race: a build running, a watch waiting, then a push.
    let middle = queued.deployments[0].clone();
    let job = agent.claim(5).await.unwrap();
    assert_eq!(job.deployment_id, middle.id);
    let watcher = agent.clone();
    let job_id = job.job_id.clone();
    let watch = tokio::spawn(async move {
        let control: JobControl = watcher
            .post_json(
                &format!("/api/v1/agent/jobs/{job_id}/watch"),
                &serde_json::json!({"wait_seconds": 20}),
            )
            .await
            .expect_json(StatusCode::OK)
            .await;
        (control, Instant::now())
    });
    cp.until_parked(Wait::Watch).await;
    let pushed_at = Instant::now();
    let newest = admin.push("main", &sha(3)).await.deployments.remove(0);
    let (control, learned_at) = watch.await.unwrap();
    // A watch that runs out its hold answers `continue`: `cancel` means the push
    // woke it. How fast is the benchmark's business (benches/agent.rs).
    assert_eq!(control.directive, JobDirective::Cancel);
    eprintln!(
        "watch learned of the cancel {:?} after the push",
        learned_at.duration_since(pushed_at)
    );
    let canceled = admin.deployment(&middle.id).await;
    assert_eq!(canceled.status, BuildCanceled);
    assert_eq!(canceled.backend_status, ComponentStatus::Canceled);
    let reason = canceled.reason.unwrap();
    assert!(
        reason.contains(&newest.id) && reason.contains(&sha(3)[..7]),
        "{reason}"
    );

    // The agent's late "canceled" report is accepted; a late "failed" is refused.
    agent
        .report(&job, &update(BuildCanceled))
        .await
        .expect_json::<Deployment>(StatusCode::OK)
        .await;
    let message = agent
        .report(&job, &update(BuildFailed))
        .await
        .expect_error(StatusCode::CONFLICT, "illegal_transition");
    assert!(
        message.contains("from build_canceled to build_failed"),
        "{message}"
    );
    assert_eq!(admin.deployment(&newest.id).await.status, Queued);
}

#[tokio::test]
async fn pull_requests_get_a_preview_environment_until_closed() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let event = |action, n| PullRequestEvent {
        repository: REPO.to_owned(),
        number: 7,
        action,
        branch: "feature/cart".to_owned(),
        sha: sha(n),
        author: "Grace".to_owned(),
        message: "Cart".to_owned(),
        people: Default::default(),
        base_branch: None,
    };

    let opened: EventOutcome = admin
        .post_json(
            "/api/v1/events/pull_request",
            &event(PullRequestAction::Opened, 10),
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    let environments: EnvironmentList = admin
        .get(&format!("/api/v1/projects/{}/environments", project.id))
        .await
        .expect_json(StatusCode::OK)
        .await;
    let preview = environments
        .environments
        .iter()
        .find(|e| e.name == "pr-7")
        .expect("preview env");
    assert_eq!(preview.kind, kiln_protocol::EnvironmentKind::Preview);
    assert_eq!(preview.pull_request, Some(7));
    assert_eq!(opened.deployments[0].environment_id, preview.id);

    let synced: EventOutcome = admin
        .post_json(
            "/api/v1/events/pull_request",
            &event(PullRequestAction::Synchronize, 11),
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    assert_eq!(
        synced.deployments[0].environment_id, preview.id,
        "the preview is reused"
    );
    assert_eq!(synced.canceled, vec![opened.deployments[0].id.clone()]);

    // Pushes to the pull request's branch build no long-lived environment.
    assert!(admin
        .push("feature/cart", &sha(12))
        .await
        .deployments
        .is_empty());

    let job = agent.claim(5).await.unwrap();
    assert_eq!(job.deployment_id, synced.deployments[0].id);
    let closed: EventOutcome = admin
        .post_json(
            "/api/v1/events/pull_request",
            &event(PullRequestAction::Closed, 11),
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    assert_eq!(closed.canceled, vec![synced.deployments[0].id.clone()]);
    admin
        .get(&format!("/api/v1/environments/{}", preview.id))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    let history = admin.deployment(&synced.deployments[0].id).await;
    assert_eq!(history.status, BuildCanceled);
    assert_eq!(
        history.reason.as_deref(),
        Some("pull request #7 was closed")
    );
}

#[tokio::test]
async fn redeploy_rebuilds_an_older_commit_through_the_whole_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;

    let old = admin.push("main", &sha(1)).await.deployments.remove(0);
    agent.build_next().await;
    admin.deploy(&old.id).await;
    admin.wait_for_status(&old.id, Live).await;
    let new = admin.push("main", &sha(2)).await.deployments.remove(0);
    agent.build_next().await;
    admin.deploy(&new.id).await;
    admin.wait_for_status(&new.id, Live).await;
    assert_eq!(admin.deployment(&old.id).await.status, Ready);

    let redeploy: EventOutcome = admin
        .post_json(
            &format!("/api/v1/deployments/{}/redeploy", old.id),
            &serde_json::json!({}),
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    let again = &redeploy.deployments[0];
    assert_ne!(again.id, old.id, "a redeploy is a new deployment");
    assert_eq!(again.redeploy_of.as_deref(), Some(old.id.as_str()));
    assert_eq!(again.commit_sha, sha(1));
    assert_eq!(again.status, Queued);
    let job = agent.build_next().await;
    assert_eq!(job.commit_sha, sha(1));
    admin.deploy(&again.id).await;
    admin.wait_for_status(&again.id, Live).await;
    assert_eq!(admin.deployment(&new.id).await.status, Ready);
    assert_eq!(
        admin.deployment(&old.id).await.status,
        Ready,
        "the original stays ready"
    );
}

#[tokio::test]
async fn branch_rule_change_applies_to_the_next_push() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let project = admin.create_project("shop").await;
    let staging = admin
        .create_environment(&project, "Staging", "develop")
        .await;
    assert_eq!(admin.push("develop", &sha(1)).await.deployments.len(), 1);

    let updated: kiln_protocol::Environment = admin
        .send_json(
            Method::PATCH,
            &format!("/api/v1/environments/{}", staging.id),
            &UpdateEnvironment {
                branch: Some("release/*".to_owned()),
                auto_deploy: None,
                deploy: None,
                require: None,
            },
        )
        .await
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(updated.branch, "release/*");
    assert!(admin.push("develop", &sha(2)).await.deployments.is_empty());
    let outcome = admin.push("release/2.0", &sha(3)).await;
    assert_eq!(outcome.deployments[0].environment_id, staging.id);
}

#[tokio::test]
async fn log_appends_are_idempotent_gaps_refused_and_followers_see_everything() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let deployment = admin.push("main", &sha(1)).await.deployments.remove(0);
    let job = agent.claim(5).await.unwrap();

    // A follower attaches before the first byte.
    let follow_url = format!(
        "/api/v1/deployments/{}/logs/backend?follow=true",
        deployment.id
    );
    let follower = admin.clone();
    let followed = tokio::spawn(async move { follower.get(&follow_url).await });
    cp.until_parked(Wait::Follow).await;

    let append =
        |offset, data: &'static [u8]| agent.append_log(&job.job_id, "backend", offset, data);
    let next: LogAppendResponse = append(0, b"line 1\n")
        .await
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(next.next_offset, 7);
    let resent: LogAppendResponse = append(0, b"line 1\n")
        .await
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(
        resent.next_offset, 7,
        "a resent chunk is not appended twice"
    );
    let overlap: LogAppendResponse = append(5, b"1\nline 2\n")
        .await
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(overlap.next_offset, 14);
    let gap = append(100, b"lost?\n").await;
    let message = gap.expect_error(StatusCode::CONFLICT, "log_offset_gap");
    assert!(message.contains("resend from offset 14"), "{message}");
    let envelope: kiln_protocol::ErrorEnvelope = serde_json::from_slice(&gap.body).unwrap();
    assert_eq!(envelope.error.expected_offset, Some(14));
    // An empty append asks where the stream ends (an agent resuming after restart).
    let probe: LogAppendResponse = append(0, b"").await.expect_json(StatusCode::OK).await;
    assert_eq!(probe.next_offset, 14);
    agent
        .append_log(&job.job_id, "system", 0, b"cloned in 1.2s\n")
        .await
        .expect_json::<LogAppendResponse>(StatusCode::OK)
        .await;
    append(14, b"done\n")
        .await
        .expect_json::<LogAppendResponse>(StatusCode::OK)
        .await;
    agent
        .report(&job, &update(AwaitingDeployment))
        .await
        .expect_json::<Deployment>(StatusCode::OK)
        .await;

    let followed = tokio::time::timeout(Duration::from_secs(10), followed)
        .await
        .expect("the follow ends when the job does")
        .unwrap();
    assert_eq!(followed.status, StatusCode::OK);
    assert_eq!(followed.text(), "line 1\nline 2\ndone\n");

    let whole = admin
        .get(&format!(
            "/api/v1/deployments/{}/logs/backend",
            deployment.id
        ))
        .await;
    assert_eq!(whole.text(), "line 1\nline 2\ndone\n");
    let tail = admin
        .get(&format!(
            "/api/v1/deployments/{}/logs/backend?offset=7",
            deployment.id
        ))
        .await;
    assert_eq!(tail.text(), "line 2\ndone\n");
    let system = admin
        .get(&format!(
            "/api/v1/deployments/{}/logs/system",
            deployment.id
        ))
        .await;
    assert_eq!(system.text(), "cloned in 1.2s\n");
    admin
        .get(&format!(
            "/api/v1/deployments/{}/logs/frontend",
            deployment.id
        ))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_parameter");
}

async fn ticket(agent: &Api, job_id: &str, name: &str, data: &[u8]) -> ArtifactUploadTicket {
    agent
        .post_json(
            &format!("/api/v1/agent/jobs/{job_id}/artifacts"),
            &ArtifactDescriptor {
                name: name.to_owned(),
                size: data.len() as u64,
                sha256: hex::encode(Sha256::digest(data)),
            },
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await
}

/// Stores `data` as job `job_id`'s artifact `name`, as an agent does; returns
/// the ticket it used.
async fn upload_artifact(
    agent: &Api,
    job_id: &str,
    name: &str,
    data: &[u8],
) -> ArtifactUploadTicket {
    let upload = ticket(agent, job_id, name, data).await;
    let reply = agent
        .send(
            agent
                .request(Method::PUT, &upload.upload_url)
                .body(data.to_vec()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    upload
}

#[tokio::test]
async fn artifacts_are_verified_on_upload_and_served_back() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let deployment = admin.push("main", &sha(1)).await.deployments.remove(0);
    let job = agent.claim(5).await.unwrap();
    let artifact = b"pretend this is backend.tar.gz".repeat(1000);

    // Same length, different bytes: refused by checksum.
    let wrong = ticket(&agent, &job.job_id, "backend.tar.gz", &artifact).await;
    let mut tampered = artifact.clone();
    tampered[0] ^= 1;
    let reply = agent
        .send(agent.request(Method::PUT, &wrong.upload_url).body(tampered))
        .await;
    let message = reply.expect_error(StatusCode::BAD_REQUEST, "artifact_checksum_mismatch");
    assert!(message.contains("backend.tar.gz"), "{message}");
    // Short body: refused by size.
    let short = ticket(&agent, &job.job_id, "backend.tar.gz", &artifact).await;
    let reply = agent
        .send(
            agent
                .request(Method::PUT, &short.upload_url)
                .body(artifact[..10].to_vec()),
        )
        .await;
    reply.expect_error(StatusCode::BAD_REQUEST, "artifact_size_mismatch");
    let listed = admin.deployment(&deployment.id).await;
    assert!(
        listed.artifacts.is_empty(),
        "refused uploads leave nothing behind"
    );

    let good = upload_artifact(&agent, &job.job_id, "backend.tar.gz", &artifact).await;
    // The URL is single-use, like a presigned URL that has been consumed.
    let again = agent
        .send(
            agent
                .request(Method::PUT, &good.upload_url)
                .body(artifact.clone()),
        )
        .await;
    again.expect_error(StatusCode::UNAUTHORIZED, "unauthorized");

    let listed = admin.deployment(&deployment.id).await;
    assert_eq!(listed.artifacts.len(), 1);
    assert_eq!(
        listed.artifacts[0].descriptor.sha256,
        hex::encode(Sha256::digest(&artifact))
    );
    let download = admin
        .get(&format!(
            "/api/v1/deployments/{}/artifacts/backend.tar.gz",
            deployment.id
        ))
        .await;
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(download.body, artifact);
    assert_eq!(
        download.headers[kiln_protocol::SHA256_HEADER]
            .to_str()
            .unwrap(),
        hex::encode(Sha256::digest(&artifact))
    );

    // Deploy promotes the artifact into the environment's current release.
    agent
        .report(&job, &update(AwaitingDeployment))
        .await
        .expect_json::<Deployment>(StatusCode::OK)
        .await;
    admin.deploy(&deployment.id).await;
    admin.wait_for_status(&deployment.id, Live).await;
    let promoted = dir
        .path()
        .join("releases")
        .join(&deployment.environment_id)
        .join("current")
        .join("backend.tar.gz");
    assert_eq!(std::fs::read(promoted).unwrap(), artifact);
}

#[tokio::test]
async fn failing_deploy_hook_gives_deploy_failed_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(dir.path(), |config| {
        config.deploy_hook =
            Some("echo starting; echo 'health check failed on :9000' >&2; exit 3".to_owned());
    })
    .await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let deployment = admin.push("main", &sha(1)).await.deployments.remove(0);
    agent.build_next().await;
    admin.deploy(&deployment.id).await;
    let failed = admin.wait_for_status(&deployment.id, DeployFailed).await;
    assert_eq!(
        failed.reason.as_deref(),
        Some("deploy hook exited with status 3: health check failed on :9000")
    );
}

#[tokio::test]
async fn expired_lease_requeues_once_then_fails_as_agent_lost() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(dir.path(), |config| {
        config.lease = Duration::from_millis(400);
    })
    .await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let deployment = admin.push("main", &sha(1)).await.deployments.remove(0);

    let first = agent.claim(5).await.unwrap();
    assert_eq!(first.attempt, 1);
    // The agent dies: no watch renews the lease.
    let requeued = admin.wait_for_status(&deployment.id, Queued).await;
    assert!(requeued
        .reason
        .unwrap()
        .starts_with("agent lost; queued again"));
    let second = agent.claim(5).await.unwrap();
    assert_eq!(second.deployment_id, deployment.id);
    assert_eq!(second.attempt, 2);
    assert_ne!(second.job_id, first.job_id);
    // The first job's late report is refused: it no longer holds the deployment.
    agent
        .report(&first, &update(AwaitingDeployment))
        .await
        .expect_error(StatusCode::CONFLICT, "job_superseded");
    let lost = admin.wait_for_status(&deployment.id, BuildFailed).await;
    assert_eq!(lost.reason.as_deref(), Some("agent lost"));
    assert_eq!(lost.attempts, 2);
}

#[tokio::test]
async fn renewed_lease_keeps_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(dir.path(), |config| {
        config.lease = Duration::from_millis(600);
    })
    .await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let deployment = admin.push("main", &sha(1)).await.deployments.remove(0);
    let job = agent.claim(5).await.unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let control: JobControl = agent
            .post_json(
                &format!("/api/v1/agent/jobs/{}/watch", job.job_id),
                &serde_json::json!({}),
            )
            .await
            .expect_json(StatusCode::OK)
            .await;
        assert_eq!(control.directive, JobDirective::Continue);
    }
    assert_eq!(admin.deployment(&deployment.id).await.status, Building);
}

#[tokio::test]
async fn claims_long_poll_and_respect_labels() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let plain = cp.register_agent("plain", &[]).await;
    let big = cp.register_agent("big", &["large", "linux"]).await;

    assert!(plain.claim(0).await.is_none(), "204 when nothing is queued");

    let project = admin
        .create_project_with(kiln_protocol::CreateProject {
            backend_path: "apps/backend".to_owned(),
            storefront_path: Some("apps/storefront".to_owned()),
            agent_labels: vec!["large".to_owned()],
            ..kiln_protocol::CreateProject::new("big-shop", REPO)
        })
        .await;
    admin
        .create_environment(&project, "Production", "main")
        .await;

    // A claim held open gets a job queued while it waits: had it not been held
    // (or not been woken), it would have answered 204.
    let waiter = big.clone();
    let claim = tokio::spawn(async move { (waiter.claim(20).await, Instant::now()) });
    cp.until_parked(Wait::Claim).await;
    let pushed_at = Instant::now();
    admin.push("main", &sha(1)).await;
    let (job, woke_at) = claim.await.unwrap();
    let job = job.expect("the labelled agent gets the job");
    eprintln!(
        "claim woke {:?} after the push",
        woke_at.duration_since(pushed_at)
    );
    assert_eq!(job.backend_path, "apps/backend");
    assert_eq!(job.storefront_path.as_deref(), Some("apps/storefront"));

    admin.push("main", &sha(2)).await;
    assert!(
        plain.claim(1).await.is_none(),
        "an agent without the label gets nothing"
    );
    assert!(big.claim(1).await.is_some());
}

#[tokio::test]
async fn jobs_carry_environment_variables_and_secrets_are_not_shown_to_users() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let project = admin.create_project("shop").await;
    let production = admin
        .create_environment(&project, "Production", "main")
        .await;
    let variables = serde_json::json!({"variables": [
        {"name": "JWT_SECRET", "value": "s3cr3t-jwt", "secret": true},
        {"name": "MEDUSA_BACKEND_URL", "value": "https://api.shop.example"}
    ]});
    let shown: kiln_protocol::VariableList = admin
        .send_json(
            Method::PUT,
            &format!("/api/v1/environments/{}/variables", production.id),
            &variables,
        )
        .await
        .expect_json(StatusCode::OK)
        .await;
    assert!(!serde_json::to_string(&shown)
        .unwrap()
        .contains("s3cr3t-jwt"));
    admin.push("main", &sha(1)).await;
    let job = agent.claim(5).await.unwrap();
    let secret = job.env.iter().find(|v| v.name == "JWT_SECRET").unwrap();
    assert!(secret.secret);
    assert_eq!(secret.value, "s3cr3t-jwt");
    let url = job
        .env
        .iter()
        .find(|v| v.name == "MEDUSA_BACKEND_URL")
        .unwrap();
    assert!(!url.secret);
}

#[tokio::test]
async fn auth_is_required_and_token_kinds_do_not_mix() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let other_agent = cp.register_agent("builder-2", &[]).await;

    let message = cp
        .anonymous()
        .get("/api/v1/projects")
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(message.contains("Authorization: Bearer"), "{message}");
    cp.as_token("wrong")
        .get("/api/v1/projects")
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let message = agent
        .get("/api/v1/projects")
        .await
        .expect_error(StatusCode::FORBIDDEN, "forbidden");
    assert!(message.contains("admin token"), "{message}");
    let message = admin
        .post_json(
            "/api/v1/agent/jobs/claim",
            &serde_json::json!({"wait_seconds": 0}),
        )
        .await
        .expect_error(StatusCode::FORBIDDEN, "forbidden");
    assert!(message.contains("kiln-agent register"), "{message}");
    let message = cp
        .as_token("not-an-agent")
        .post_json("/api/v1/agent/jobs/claim", &serde_json::json!({}))
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(message.contains("re-register"), "{message}");
    let message = cp
        .anonymous()
        .post_json(
            "/api/v1/agents/register",
            &serde_json::json!({"registration_token": "guess", "name": "intruder"}),
        )
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(message.contains("KILN_REGISTRATION_TOKEN"), "{message}");

    // One agent can't touch another's job.
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    admin.push("main", &sha(1)).await;
    let job = agent.claim(5).await.unwrap();
    other_agent
        .report(&job, &update(BuildFailed))
        .await
        .expect_error(StatusCode::FORBIDDEN, "forbidden");
    other_agent
        .append_log(&job.job_id, "backend", 0, b"spoofed\n")
        .await
        .expect_error(StatusCode::FORBIDDEN, "forbidden");
    // Agents report build outcomes only; deploying is the user's call.
    agent
        .report(&job, &update(Live))
        .await
        .expect_error(StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn bad_input_gets_400_unknown_ids_404_illegal_transitions_409() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();

    let message = admin
        .post_raw("/api/v1/projects", r#"{"name": "shop"}"#)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(
        message.contains("missing field `repository_url`"),
        "{message}"
    );
    let message = admin
        .post_raw(
            "/api/v1/projects",
            r#"{"name": "shop", "repository_url": 42}"#,
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(message.contains("`repository_url`"), "{message}");
    let message = admin
        .post_raw("/api/v1/projects", r#"{"name": "shop", "#)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(message.contains("EOF"), "{message}");
    let message = admin
        .post_raw(
            "/api/v1/projects",
            r#"{"name": "shop", "repository_url": "https://git.example/shop.git", "backend_path": "../etc"}"#,
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(message.contains("`backend_path`"), "{message}");

    let project = admin.create_project("shop").await;
    admin
        .post_json(
            "/api/v1/projects",
            &serde_json::json!({"name": "shop", "repository_url": REPO}),
        )
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
    let env = admin
        .create_environment(&project, "Production", "main")
        .await;
    // Issue 32: a misspelt setting is a 400 naming it, not a 200 that ignores it.
    let message = admin
        .send_json(
            reqwest::Method::PATCH,
            &format!("/api/v1/environments/{}", env.id),
            &serde_json::json!({"autodeploy": true}),
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(message.contains("unknown field `autodeploy`"), "{message}");
    let message = admin
        .send_json(
            reqwest::Method::PUT,
            &format!("/api/v1/environments/{}/variables", env.id),
            &serde_json::json!({"variables": [{"name": "A", "value": "b", "secrte": true}]}),
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(message.contains("unknown field `secrte`"), "{message}");
    let message = admin
        .post_raw(
            "/api/v1/events/push",
            r#"{"repository": "x", "branch": "main", "sha": "abc", "author": "a", "message": "m"}"#,
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(message.contains("`sha`"), "{message}");
    let message = push_unknown_repo(&admin)
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    assert!(
        message.contains("https://git.example/nobody.git"),
        "{message}"
    );
    let message = admin
        .send_json(
            Method::PUT,
            &format!("/api/v1/environments/{}/variables", env.id),
            &serde_json::json!({"variables": [{"name": "OK", "value": "1"}, {"name": "NOT-OK", "value": "2"}]}),
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(message.contains("variables[1].name"), "{message}");
    let message = admin
        .send_json(
            Method::PUT,
            &format!("/api/v1/environments/{}/variables", env.id),
            &serde_json::json!({"variables": [{"name": "OK"}]}),
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(
        message.contains("variables[0]") && message.contains("missing field `value`"),
        "{message}"
    );

    admin
        .get("/api/v1/deployments/dpl_nope")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    admin
        .get("/api/v1/projects/prj_nope")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    admin
        .get("/api/v1/no/such/route")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    admin
        .get("/api/v1/deployments?limit=lots")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_parameter");

    let queued = admin.push("main", &sha(1)).await.deployments.remove(0);
    let message = admin
        .post_json(
            &format!("/api/v1/deployments/{}/deploy", queued.id),
            &serde_json::json!({}),
        )
        .await
        .expect_error(StatusCode::CONFLICT, "illegal_transition");
    assert!(message.contains("from queued to deploying"), "{message}");

    let agent = cp.register_agent("builder-1", &[]).await;
    let job = agent.claim(5).await.unwrap();
    let message = agent
        .post_raw(
            &format!("/api/v1/agent/jobs/{}/status", job.job_id),
            r#"{"status": "exploded"}"#,
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(message.contains("unknown variant `exploded`"), "{message}");
    agent
        .post_raw(
            "/api/v1/agent/jobs/job_nope/status",
            r#"{"status": "building"}"#,
        )
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
}

async fn push_unknown_repo(admin: &Api) -> Reply {
    {
        admin.post_json(
            "/api/v1/events/push",
            &serde_json::json!({"repository": "https://git.example/nobody.git", "branch": "main", "sha": sha(9), "author": "a", "message": "m"}),
        )
        .await
    }
}

#[tokio::test]
async fn restart_on_the_same_data_dir_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let live = admin.push("main", &sha(1)).await.deployments.remove(0);
    let job = agent.claim(5).await.unwrap();
    agent
        .append_log(&job.job_id, "backend", 0, b"built\n")
        .await
        .expect_json::<LogAppendResponse>(StatusCode::OK)
        .await;
    let data = b"artifact bytes";
    upload_artifact(&agent, &job.job_id, "backend.tar.gz", data).await;
    agent
        .report(&job, &update(AwaitingDeployment))
        .await
        .expect_json::<Deployment>(StatusCode::OK)
        .await;
    admin.deploy(&live.id).await;
    admin.wait_for_status(&live.id, Live).await;
    let building = admin.push("main", &sha(2)).await.deployments.remove(0);
    let job2 = agent.claim(5).await.unwrap();
    agent
        .append_log(&job2.job_id, "backend", 0, b"half")
        .await
        .expect_json::<LogAppendResponse>(StatusCode::OK)
        .await;
    let token_agent = agent.clone();
    cp.stop().await;

    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let agent = Api::new(cp.base_url(), None).with_token_of(&token_agent);
    let before = admin.deployment(&live.id).await;
    assert_eq!(before.status, Live);
    assert_eq!(before.artifacts.len(), 1);
    assert_eq!(admin.deployment(&building.id).await.status, Building);
    let log = admin
        .get(&format!("/api/v1/deployments/{}/logs/backend", live.id))
        .await;
    assert_eq!(log.text(), "built\n");
    let download = admin
        .get(&format!(
            "/api/v1/deployments/{}/artifacts/backend.tar.gz",
            live.id
        ))
        .await;
    assert_eq!(download.body, data);
    // The agent goes on where it was: its token works and its offsets hold.
    let next: LogAppendResponse = agent
        .append_log(&job2.job_id, "backend", 4, b" done\n")
        .await
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(next.next_offset, 10);
    agent
        .report(&job2, &update(AwaitingDeployment))
        .await
        .expect_json::<Deployment>(StatusCode::OK)
        .await;
    let projects: kiln_protocol::ProjectList = admin
        .get("/api/v1/projects")
        .await
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(projects.projects.len(), 1);
}

#[tokio::test]
async fn log_lines_carry_their_timestamps_without_changing_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let deployment = admin.push("main", &sha(1)).await.deployments.remove(0);
    let job = agent.claim(5).await.unwrap();
    let base: i64 = 1_764_000_000_000;
    let append = |offset: u64, data: &'static str, marks: String| {
        agent.send(
            agent
                .request(
                    Method::PUT,
                    &format!(
                        "/api/v1/agent/jobs/{}/logs/backend?offset={offset}",
                        job.job_id
                    ),
                )
                .header(kiln_protocol::LOG_TIMES_HEADER, marks)
                .body(data),
        )
    };
    let reply = append(0, "installing\nbuil", format!("0:{base}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // A resend with the same marks adds nothing twice.
    append(0, "installing\nbuil", format!("0:{base}")).await;
    append(
        15,
        "ding\ndone\n",
        format!("15:{},20:{}", base + 2000, base + 61_000),
    )
    .await;
    let bad = append(25, "x", "yesterday".to_owned()).await;
    let message = bad.expect_error(StatusCode::BAD_REQUEST, "invalid_parameter");
    assert!(
        message.contains(kiln_protocol::LOG_TIMES_HEADER),
        "{message}"
    );

    let raw = admin
        .get(&format!(
            "/api/v1/deployments/{}/logs/backend",
            deployment.id
        ))
        .await;
    assert_eq!(
        raw.text(),
        "installing\nbuilding\ndone\n",
        "the log's bytes are the build's"
    );
    let stamped = admin
        .get(&format!(
            "/api/v1/deployments/{}/logs/backend?timestamps=true",
            deployment.id
        ))
        .await;
    assert_eq!(
        stamped.text(),
        "2025-11-24T16:00:00.000Z installing\n2025-11-24T16:00:00.000Z building\n2025-11-24T16:01:01.000Z done\n"
    );
}

/// Builds the queued `deployment` as an agent would, with one artifact, and
/// deploys it (`by_hand`, or its environment deploys by itself); returns it,
/// live.
async fn build_and_deploy(
    admin: &Api,
    agent: &Api,
    deployment: Deployment,
    artifact: &[u8],
    by_hand: bool,
) -> Deployment {
    let job = agent.claim(5).await.unwrap();
    assert_eq!(job.deployment_id, deployment.id);
    upload_artifact(agent, &job.job_id, "backend.tar.gz", artifact).await;
    agent
        .report(&job, &update(AwaitingDeployment))
        .await
        .expect_json::<Deployment>(StatusCode::OK)
        .await;
    if by_hand {
        admin.deploy(&deployment.id).await;
    }
    admin.wait_for_status(&deployment.id, Live).await
}

#[tokio::test]
async fn retention_deletes_the_artifacts_of_deployments_no_longer_live_and_keeps_the_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = TestBucket::create().await;
    assert!(
        bucket.is_some() || std::env::var("KILN_REQUIRE_S3").is_err(),
        "KILN_REQUIRE_S3 is set but KILN_TEST_S3_ENDPOINT is not"
    );
    let object_store = bucket.as_ref().map(TestBucket::object_store_config);
    let cp = ControlPlane::start_with(dir.path(), |config| {
        config.object_store = object_store;
        config.artifact_retention = Some(Duration::from_secs(2));
        config.retention_interval = Duration::from_millis(100);
    })
    .await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let queued = admin.push("main", &sha(1)).await.deployments.remove(0);
    let old = build_and_deploy(&admin, &agent, queued, b"old build", true).await;
    let release = |id: &str| {
        dir.path()
            .join("releases")
            .join(&old.environment_id)
            .join(id)
    };
    assert!(release(&old.id).join("backend.tar.gz").exists());
    // Live for longer than the retention: still kept.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(admin.deployment(&old.id).await.artifacts_removed_at, None);

    let queued = admin.push("main", &sha(2)).await.deployments.remove(0);
    let new = build_and_deploy(&admin, &agent, queued, b"new build", true).await;
    assert_eq!(admin.deployment(&old.id).await.status, Ready);
    let deadline = Instant::now() + Duration::from_secs(20);
    let removed = loop {
        let read = admin.deployment(&old.id).await;
        if read.artifacts_removed_at.is_some() {
            break read;
        }
        assert!(Instant::now() < deadline, "the retention policy never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        removed.artifacts_removed_at.unwrap() - removed.updated_at >= chrono::Duration::seconds(2),
        "removed only once kept for the retention"
    );
    assert_eq!(
        removed.artifacts.len(),
        1,
        "the record of what was built stays"
    );
    let refused = admin
        .get(&format!(
            "/api/v1/deployments/{}/artifacts/backend.tar.gz",
            old.id
        ))
        .await;
    let message = refused.expect_error(StatusCode::GONE, "gone");
    assert!(
        message.contains("backend.tar.gz")
            && message.contains("--artifact-retention-days")
            && message.contains("redeploy"),
        "{message}"
    );
    // Every replica clears its disk right after the mark, within a look or two.
    let deadline = Instant::now() + Duration::from_secs(5);
    while release(&old.id).exists() || dir.path().join("artifacts").join(&old.id).exists() {
        assert!(Instant::now() < deadline, "the old files are still on disk");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(bucket) = &bucket {
        let keys = bucket.keys().await;
        assert!(
            !keys.iter().any(|key| key.contains(&old.id)),
            "old artifacts left in the object store: {keys:?}"
        );
        assert!(
            keys.iter().any(|key| key.contains(&new.id)),
            "the live deployment's artifact went too: {keys:?}"
        );
    }

    // The live deployment keeps everything; its release is what `current` is.
    let download = admin
        .get(&format!(
            "/api/v1/deployments/{}/artifacts/backend.tar.gz",
            new.id
        ))
        .await;
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(download.body, b"new build");
    let current = dir
        .path()
        .join("releases")
        .join(&new.environment_id)
        .join("current")
        .join("backend.tar.gz");
    assert_eq!(std::fs::read(current).unwrap(), b"new build");
    // A closed pull request's preview is live no more (issue 32: nothing serves
    // it); it goes whole once closed for the retention, its `current` link and
    // directory too.
    let event = |action| PullRequestEvent {
        repository: REPO.to_owned(),
        number: 7,
        action,
        branch: "feature/cart".to_owned(),
        sha: sha(7),
        author: "Grace".to_owned(),
        message: "Cart".to_owned(),
        people: Default::default(),
        base_branch: None,
    };
    let opened: EventOutcome = admin
        .post_json(
            "/api/v1/events/pull_request",
            &event(PullRequestAction::Opened),
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    let preview = build_and_deploy(
        &admin,
        &agent,
        opened.deployments[0].clone(),
        b"preview build",
        false,
    )
    .await;
    let preview_dir = dir.path().join("releases").join(&preview.environment_id);
    assert!(preview_dir.join("current/backend.tar.gz").exists());
    admin
        .post_json(
            "/api/v1/events/pull_request",
            &event(PullRequestAction::Closed),
        )
        .await
        .expect_json::<EventOutcome>(StatusCode::CREATED)
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while preview_dir.exists() {
        assert!(
            Instant::now() < deadline,
            "the closed preview's release is still on disk"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = admin.deployment(&preview.id).await;
    assert_eq!(closed.status, Ready);
    assert_eq!(
        closed.reason.as_deref(),
        Some("pull request #7 was closed and its preview environment removed")
    );
    assert!(closed.artifacts_removed_at.is_some());

    // A redeploy of the old one builds its commit again.
    let again = admin
        .post_json(
            &format!("/api/v1/deployments/{}/redeploy", old.id),
            &serde_json::json!({}),
        )
        .await
        .expect_json::<EventOutcome>(StatusCode::CREATED)
        .await;
    assert_eq!(again.deployments[0].commit_sha, sha(1));
}

#[tokio::test]
async fn a_dotenv_file_is_imported_over_http_and_exported_without_secret_values() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let project = admin.create_project("shop").await;
    let environment = admin
        .create_environment(&project, "Production", "main")
        .await;
    let base = format!("/api/v1/environments/{}/variables", environment.id);
    let import = |query: &str, content_type: &str, body: &str| {
        admin
            .request(Method::POST, &format!("{base}/import{query}"))
            .header("content-type", content_type)
            .body(body.to_owned())
    };
    let reply = admin
        .send(import(
            "?secret=true",
            "text/plain",
            "# from the old host\nexport DATABASE_URL=\"postgres://u:p@db/shop\"\nJWT_SECRET='s3cr3t'\n",
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let answer: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        answer["imported"],
        serde_json::json!(["DATABASE_URL", "JWT_SECRET"])
    );
    assert_eq!(answer["variables"][0]["secret"], true);
    assert!(!reply.text().contains("s3cr3t"), "{}", reply.text());

    // JSON is not a .env file, and an unknown flag is named.
    let wrong = admin
        .send(import("", "application/json", "{\"A\": 1}"))
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert!(wrong.text().contains("content-type"), "{}", wrong.text());
    let unknown = admin
        .send(import("?secrets=true", "text/plain", "A=1"))
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(unknown.text().contains("secrets"), "{}", unknown.text());
    let bad_line = admin.send(import("", "text/plain", "A=1\nB C\n")).await;
    assert_eq!(bad_line.status, StatusCode::BAD_REQUEST);
    assert!(bad_line.text().contains("line 2"), "{}", bad_line.text());

    let export = admin.get(&format!("{base}/export")).await;
    assert_eq!(export.status, StatusCode::OK);
    assert!(export.headers["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    let text = export.text();
    assert!(
        text.contains("# JWT_SECRET is secret: its value is not exported.\nJWT_SECRET=\n")
            && !text.contains("s3cr3t")
            && !text.contains("postgres://"),
        "{text}"
    );
}

#[tokio::test]
async fn an_agent_asking_which_environments_are_gone_is_bounded_and_learns_only_of_ids() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let agent = cp.register_agent("deployer-1", &[]).await;
    let project = admin.create_project("shop").await;
    let live = admin
        .create_environment(&project, "Production", "main")
        .await;
    let ask = |ids: Vec<String>| {
        let body = kiln_protocol::RemovedEnvironments {
            environment_ids: ids,
        };
        let agent = &agent;
        async move {
            agent
                .post_json("/api/v1/agent/environments/removed", &body)
                .await
        }
    };
    let answer = ask(vec![live.id.clone(), "env_gone".into(), "\"}; DROP".into()]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let removed: kiln_protocol::RemovedEnvironments = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(removed.environment_ids, ["env_gone", "\"}; DROP"]);
    let too_many = ask((0..=kiln_protocol::MAX_ENVIRONMENTS_ASKED)
        .map(|n| format!("env_{n}"))
        .collect())
    .await;
    assert_eq!(too_many.status, StatusCode::BAD_REQUEST);
    assert!(
        too_many.text().contains("at most 256"),
        "{}",
        too_many.text()
    );
    // Admins and strangers are not agents.
    let stranger = cp
        .anonymous()
        .post_json(
            "/api/v1/agent/environments/removed",
            &serde_json::json!({"environment_ids": []}),
        )
        .await;
    assert_eq!(stranger.status, StatusCode::UNAUTHORIZED);
}
