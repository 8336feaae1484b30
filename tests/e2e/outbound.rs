//! Outbound webhooks (issue 32): a project's signed news of builds and
//! deployments, delivered to a receiver on loopback, retried until it answers
//! 2xx, listed with every attempt, and sent again by hand.

use std::time::Duration;

use kiln_protocol::{
    DeliveryState, DeploymentStatus::*, Webhook, WebhookDeliveryList, WebhookList,
};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::*;

const ALL_EVENTS: [&str; 6] = [
    "build.created",
    "build.succeeded",
    "build.failed",
    "build.canceled",
    "deployment.live",
    "deployment.failed",
];

#[tokio::test]
async fn issue_32_webhooks_tell_a_receiver_of_each_build_and_deploy_signed_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(dir.path(), |config| {
        config.allow_private_webhooks = true;
        config.webhook_retry = Duration::from_millis(300);
    })
    .await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    // The receiver is down for the first delivery.
    let receiver = HookReceiver::start(1).await;
    let hooks = format!("/api/v1/projects/{}/webhooks", project.id);
    let webhook: Webhook = admin
        .post_json(
            &hooks,
            &json!({"url": receiver.url(), "events": ALL_EVENTS}),
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    let secret = webhook.secret.clone().expect("the secret, shown once");
    let listed: WebhookList = admin.get(&hooks).await.expect_json(StatusCode::OK).await;
    assert_eq!(listed.webhooks.len(), 1);
    assert_eq!(
        listed.webhooks[0].secret, None,
        "the secret is never shown back"
    );

    // A build that succeeds and goes live.
    let first = admin.push("main", &sha(1)).await.deployments.remove(0);
    agent.build_next().await;
    admin.deploy(&first.id).await;
    admin.wait_for_status(&first.id, Live).await;
    // One that fails, and one canceled by a newer push while queued.
    let second = admin.push("main", &sha(2)).await.deployments.remove(0);
    let job = agent.claim(5).await.unwrap();
    let mut failed = update(BuildFailed);
    failed.reason = Some("backend: `npm run build` (build) exited with code 1".to_owned());
    agent
        .report(&job, &failed)
        .await
        .expect_json::<kiln_protocol::Deployment>(StatusCode::OK)
        .await;
    let third = admin.push("main", &sha(3)).await.deployments.remove(0);
    admin.push("main", &sha(4)).await;

    let expected = [
        ("build.created", &first.id),
        ("build.succeeded", &first.id),
        ("deployment.live", &first.id),
        ("build.created", &second.id),
        ("build.failed", &second.id),
        ("build.created", &third.id),
        ("build.canceled", &third.id),
    ];
    let received = receiver
        .until("each event, delivered", |received| {
            expected.iter().all(|(event, id)| {
                received.iter().any(|r| {
                    r.answered == 204
                        && r.event.as_deref() == Some(*event)
                        && r.json()["deployment"]["id"] == json!(id)
                })
            })
        })
        .await;
    for delivery in &received {
        let body = delivery.json();
        assert!(
            signature_holds(
                &secret,
                delivery.signature.as_deref().unwrap(),
                &delivery.body
            ),
            "a bad signature on {body}"
        );
        assert_eq!(body["event"].as_str(), delivery.event.as_deref());
        assert_eq!(body["id"].as_str(), delivery.delivery.as_deref());
        assert_eq!(body["project"]["id"], json!(project.id));
        assert_eq!(body["environment"]["name"], json!("Production"));
    }
    // The first delivery was refused once, then delivered, with the same id.
    let refused = received.iter().find(|r| r.answered == 500).unwrap();
    let redelivered = received
        .iter()
        .find(|r| r.answered == 204 && r.delivery == refused.delivery)
        .expect("the refused delivery, tried again");
    assert!(!signature_holds(
        "another secret",
        redelivered.signature.as_deref().unwrap(),
        &redelivered.body
    ));
    // The delivery log shows each attempt with its answer.
    let deliveries_path = format!("{hooks}/{}/deliveries", webhook.id);
    let log: WebhookDeliveryList = admin
        .get(&deliveries_path)
        .await
        .expect_json(StatusCode::OK)
        .await;
    let created = log
        .deliveries
        .iter()
        .find(|d| d.id == *refused.delivery.as_ref().unwrap())
        .unwrap();
    assert_eq!(created.state, DeliveryState::Delivered);
    let answers: Vec<Option<u16>> = created.attempts.iter().map(|a| a.status).collect();
    assert_eq!(answers, [Some(500), Some(204)]);
    assert_eq!(Some(&created.event), refused.event.as_ref());

    // A retry by hand sends it once more.
    let before = receiver.received().len();
    admin
        .post_json(
            &format!("{deliveries_path}/{}/retry", created.id),
            &json!({}),
        )
        .await
        .expect_json::<kiln_protocol::WebhookDelivery>(StatusCode::ACCEPTED)
        .await;
    let again = receiver
        .until("the retried delivery", |received| received.len() > before)
        .await;
    assert_eq!(again[before].delivery.as_ref(), Some(&created.id));

    // Bad input is named; nobody but an admin may ask.
    for (body, named) in [
        (
            json!({"url": receiver.url(), "events": ["build.started"]}),
            "build.started",
        ),
        (json!({"url": receiver.url(), "events": []}), "events"),
        (
            json!({"url": "ftp://hooks.example.com/", "events": ["build.failed"]}),
            "http",
        ),
        (
            json!({"url": receiver.url(), "events": ["build.failed"], "secret": "mine"}),
            "secret",
        ),
    ] {
        let reply = admin.post_json(&hooks, &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            reply.text().contains(named),
            "{named} not named: {}",
            reply.text()
        );
    }
    assert_eq!(agent.get(&hooks).await.status, StatusCode::FORBIDDEN);
    let reply = admin
        .get(&format!(
            "/api/v1/projects/{}/webhooks/whk_nope/deliveries",
            project.id
        ))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    // Deleted, it hears no more.
    let reply = admin
        .send(admin.request(Method::DELETE, &format!("{hooks}/{}", webhook.id)))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let heard = receiver.received().len();
    admin.push("main", &sha(5)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received().len(), heard);
}

#[tokio::test]
async fn issue_32_a_webhook_to_a_private_address_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(dir.path(), |config| {
        config.allow_private_webhooks = false;
    })
    .await;
    let admin = cp.admin();
    let project = admin.create_project("shop").await;
    admin
        .create_environment(&project, "Production", "main")
        .await;
    let receiver = HookReceiver::start(0).await;
    let hooks = format!("/api/v1/projects/{}/webhooks", project.id);
    let webhook: Webhook = admin
        .post_json(
            &hooks,
            &json!({"url": receiver.url(), "events": ["build.created"]}),
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    admin.push("main", &sha(1)).await;
    let path = format!("{hooks}/{}/deliveries", webhook.id);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let delivery = loop {
        let log: WebhookDeliveryList = admin.get(&path).await.expect_json(StatusCode::OK).await;
        if let Some(delivery) = log.deliveries.into_iter().find(|d| !d.attempts.is_empty()) {
            break delivery;
        }
        assert!(std::time::Instant::now() < deadline, "no attempt made");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(delivery.state, DeliveryState::Failed);
    assert!(
        delivery.attempts[0]
            .answer
            .contains("--allow-private-webhooks"),
        "{:?}",
        delivery.attempts
    );
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn issue_32_a_log_drain_sends_build_logs_to_a_collector_and_what_it_missed_when_back() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin();
    let agent = cp.register_agent("builder-1", &[]).await;
    let project = admin.create_project("shop").await;
    let production = admin
        .create_environment(&project, "Production", "main")
        .await;
    let collector = OtlpReceiver::start().await;
    let drain_path = format!("/api/v1/environments/{}/log-drain", production.id);
    let shown = admin
        .send_json(
            Method::PUT,
            &drain_path,
            &json!({"otlp_endpoint": collector.endpoint(), "headers": {"Authorization": "Bearer otel-key"}}),
        )
        .await
        .expect_json::<kiln_protocol::LogDrainInfo>(StatusCode::OK)
        .await;
    assert_eq!(
        shown.header_names,
        ["Authorization"],
        "values are never shown back"
    );

    let deployment = admin.push("main", &sha(1)).await.deployments.remove(0);
    let job = agent.claim(5).await.unwrap();
    let mut offsets = std::collections::HashMap::new();
    let mut append = |stream: &'static str, text: &'static str| {
        let offset = *offsets.entry(stream).or_insert(0u64);
        offsets.insert(stream, offset + text.len() as u64);
        let (agent, job_id) = (&agent, job.job_id.clone());
        async move {
            let reply = agent.append_log(&job_id, stream, offset, text).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
    };
    append("backend", "info:    Compiling the backend\n").await;
    append("storefront", " ⚠ metadataBase is not set\n").await;
    let records = collector
        .until("the first lines", |records| records.len() >= 2)
        .await;
    let backend = records
        .iter()
        .find(|r| r.body.contains("Compiling"))
        .unwrap();
    assert_eq!(
        (
            backend.service.as_str(),
            backend.version.as_str(),
            backend.severity.as_deref()
        ),
        (
            "medusa-server",
            deployment.commit_sha.as_str(),
            Some("INFO")
        )
    );
    assert_eq!(backend.authorization.as_deref(), Some("Bearer otel-key"));
    let storefront = records
        .iter()
        .find(|r| r.body.contains("metadataBase"))
        .unwrap();
    assert_eq!(
        (storefront.service.as_str(), storefront.severity.as_deref()),
        ("storefront", Some("WARN"))
    );

    // The collector goes down; what comes meanwhile waits in the log, and is
    // sent once it is back, each line once.
    collector.fail(true);
    append("backend", "error:   Cannot find module 'x'\n").await;
    append("backend", "last words without a newline").await;
    let mut finished = update(BuildFailed);
    finished.reason = Some("backend: `npm run build` (build) exited with code 1".to_owned());
    agent
        .report(&job, &finished)
        .await
        .expect_json::<kiln_protocol::Deployment>(StatusCode::OK)
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while collector.refused() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the drain never tried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    collector.fail(false);
    let records = collector
        .until("the lines it missed", |records| {
            records
                .iter()
                .any(|r| r.body == "last words without a newline")
        })
        .await;
    let bodies: Vec<&str> = records
        .iter()
        .filter(|r| r.service == "medusa-server")
        .map(|r| r.body.as_str())
        .collect();
    assert_eq!(
        bodies,
        [
            "info:    Compiling the backend",
            "error:   Cannot find module 'x'",
            "last words without a newline"
        ]
    );
    assert!(records
        .iter()
        .any(|r| r.severity.as_deref() == Some("ERROR")));

    // Bad settings are named; removed, nothing more is sent.
    let reply = admin
        .send_json(
            Method::PUT,
            &drain_path,
            &json!({"otlp_endpoint": "collector:4318"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("otlp_endpoint"), "{}", reply.text());
    let reply = admin.send(admin.request(Method::DELETE, &drain_path)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(admin.get(&drain_path).await.status, StatusCode::NOT_FOUND);
}
