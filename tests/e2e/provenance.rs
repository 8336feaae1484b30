//! Issue 34: provenance made by the control plane, with the real agent in
//! Docker. A pull request's preview builds and goes live (the deploy checks its
//! signed provenance first); its statement validates against the in-toto and
//! SLSA v1 schemas and verifies offline with both binaries, while a flipped byte
//! or an unknown key fails; the next build restores the pull request's own
//! cache entries, which the control plane names as published from `pr:<n>`, and
//! a policy of long-lived scopes only refuses its deploy; without the policy
//! the next one goes live.

use std::path::Path;
use std::process::Command;

use kiln_protocol::provenance::{self as prov, DeploymentProvenance, PublicKeys, Statement};
use kiln_protocol::{DeploymentStatus::*, EventOutcome, PullRequestAction, PullRequestEvent};
use reqwest::{Method, StatusCode};

use crate::agent::world_with;
use crate::support::*;

const SERVER: &str = env!("CARGO_BIN_EXE_kiln-server-e2e");

/// The statement validates against the in-toto v1 Statement schema and its
/// predicate against the SLSA v1 provenance schema (`tests/schemas`).
fn check_schemas(statement: &serde_json::Value) {
    let read = |name: &str| -> serde_json::Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    let in_toto = read("in-toto-statement-v1.json");
    let slsa = read("slsa-provenance-v1.json");
    let validator = |schema: &serde_json::Value| {
        jsonschema::options()
            .should_validate_formats(true)
            .with_resource(
                "https://kiln.build/schemas/in-toto-statement-v1.json",
                jsonschema::Resource::from_contents(in_toto.clone()),
            )
            .build(schema)
            .unwrap()
    };
    for (schema, instance, what) in [
        (&in_toto, statement, "statement"),
        (&slsa, &statement["predicate"], "predicate"),
    ] {
        let errors: Vec<String> = validator(schema)
            .iter_errors(instance)
            .map(|error| format!("{} at {}", error, error.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "the {what} is invalid: {errors:?}\n{statement:#}"
        );
    }
    // A statement the schemas must refuse: they can fail.
    let mut broken = statement.clone();
    broken["subject"][0]["digest"]["sha256"] = "NOT HEX".into();
    assert!(!validator(&in_toto).is_valid(&broken));
}

fn run(binary: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(binary).args(args).output().unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn pull_request(world: &World, sha: &str, action: PullRequestAction) -> PullRequestEvent {
    PullRequestEvent {
        repository: world.repo.url.clone(),
        number: 12,
        action,
        branch: "feature/provenance".into(),
        sha: sha.to_owned(),
        author: "Grace".into(),
        message: "Show where a release came from".into(),
        people: Default::default(),
        base_branch: Some("main".into()),
    }
}

/// A commit of the pull request that changes the backend's code (so its
/// output is built, its dependencies restored), sent as `action`, and its
/// deployment once its deploy has ended; returns the commit too.
async fn preview_build(
    world: &World,
    version: &str,
    action: PullRequestAction,
) -> (String, kiln_protocol::Deployment) {
    let sha = world.repo.commit(&format!("Provenance, {version}"), |dir| {
        std::fs::write(dir.join("src/version.txt"), version).unwrap();
    });
    let outcome: EventOutcome = world
        .admin
        .post_json(
            "/api/v1/events/pull_request",
            &pull_request(world, &sha, action),
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    let deployment = world
        .admin
        .wait_for_status_in(&outcome.deployments[0].id, &[Live, DeployFailed])
        .await;
    (sha, deployment)
}

async fn require_long_lived_scopes(world: &World, environment_id: &str, required: bool) {
    let reply = world
        .admin
        .send_json(
            Method::PATCH,
            &format!("/api/v1/environments/{environment_id}"),
            &serde_json::json!({"require": {"long_lived_scopes_only": required}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

async fn signed(world: &World, deployment_id: &str) -> DeploymentProvenance {
    world
        .admin
        .get(&format!("/api/v1/deployments/{deployment_id}/provenance"))
        .await
        .expect_json(StatusCode::OK)
        .await
}

#[tokio::test]
async fn issue_34_provenance_is_signed_checked_before_deploy_verified_offline_and_a_pull_requests_cache_is_refused_under_the_policy(
) {
    let Some(world) = world_with(serde_json::json!([]), None).await else {
        return;
    };
    let agent = world.agent("agent", "").await;

    // The first build of the pull request: signed, checked and live.
    let (first_sha, first) = preview_build(&world, "one", PullRequestAction::Opened).await;
    assert_eq!(first.status, Live, "{:?}", first.reason);
    let preview_environment = first.environment_id.clone();

    let keys: PublicKeys = reqwest::get(format!("{}/api/v1/provenance/keys", world.cp.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys.keys.len(), 1, "{keys:?}");
    let first_signed = signed(&world, &first.id).await;
    assert_eq!(
        first_signed.envelopes.len(),
        1,
        "one artifact, one statement"
    );
    let envelope = &first_signed.envelopes[0];
    let statement: Statement = prov::verify(envelope, &keys.keys).unwrap();
    let artifact = &first.artifacts[0].descriptor;
    statement
        .check_digest(&artifact.name, &artifact.sha256)
        .unwrap();
    let built = &statement.predicate.build_definition.external_parameters;
    assert_eq!(
        (
            built.commit.as_str(),
            built.git_ref.as_str(),
            built.trigger.as_str()
        ),
        (first_sha.as_str(), "refs/pull/12/head", "pull_request")
    );
    let internal = &statement.predicate.build_definition.internal_parameters;
    assert_eq!(internal.agent["id"], serde_json::json!(first.agent_id));
    let backend = &internal.components[0];
    assert_eq!(backend.component, "backend");
    assert!(backend.image_id.starts_with("sha256:"), "{backend:?}");
    assert!(
        backend.steps.iter().any(|step| step.kind == "build"),
        "{backend:?}"
    );
    check_schemas(&serde_json::to_value(&statement).unwrap());

    // Offline, with both binaries: it verifies; a flipped byte, an unknown key
    // and a changed statement do not.
    let dir = tempfile::tempdir().unwrap();
    let envelopes_file = dir.path().join("provenance.json");
    std::fs::write(&envelopes_file, serde_json::to_vec(&first_signed).unwrap()).unwrap();
    let keys_file = dir.path().join("keys.json");
    std::fs::write(&keys_file, serde_json::to_vec(&keys).unwrap()).unwrap();
    let download = world
        .admin
        .get(&format!(
            "/api/v1/deployments/{}/artifacts/{}",
            first.id, artifact.name
        ))
        .await;
    assert_eq!(download.status, StatusCode::OK);
    let artifact_file = dir.path().join(&artifact.name);
    std::fs::write(&artifact_file, &download.body).unwrap();
    let (envelopes_arg, keys_arg, artifact_arg) = (
        envelopes_file.to_str().unwrap(),
        keys_file.to_str().unwrap(),
        artifact_file.to_str().unwrap(),
    );
    for command in [
        vec![SERVER, "provenance", "verify", envelopes_arg],
        vec![crate::agent::AGENT, "verify", envelopes_arg],
    ] {
        let (verified, said) = run(
            command[0],
            &[
                &command[1..],
                &["--keys", keys_arg, "--artifact", artifact_arg],
            ]
            .concat(),
        );
        assert!(verified, "{said}");
        assert!(said.contains("matches its provenance"), "{said}");
        assert!(said.contains(&first_sha), "{said}");
    }
    // From the server itself: the envelopes by URL with the admin token, the
    // keys from the same server.
    // Async: the control plane it asks runs on this test's runtime.
    let output = tokio::process::Command::new(SERVER)
        .args([
            "provenance",
            "verify",
            &format!(
                "{}/api/v1/deployments/{}/provenance",
                world.cp.base_url(),
                first.id
            ),
            "--artifact",
            artifact_arg,
        ])
        .env("KILN_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains("verified"), "{said}");
    let mut flipped = download.body.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    std::fs::write(&artifact_file, &flipped).unwrap();
    let (verified, said) = run(
        crate::agent::AGENT,
        &[
            "verify",
            envelopes_arg,
            "--keys",
            keys_arg,
            "--artifact",
            artifact_arg,
        ],
    );
    assert!(
        !verified && said.contains("but its provenance says"),
        "{said}"
    );
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[42; 32]).verifying_key();
    let strangers = serde_json::json!({"keys": [{
        "key_id": prov::key_id(&stranger),
        "algorithm": "ed25519",
        "public_key": prov::public_key_text(&stranger),
        "created_at": "2026-12-01T00:00:00Z",
    }]});
    let strangers_file = dir.path().join("strangers.json");
    std::fs::write(&strangers_file, strangers.to_string()).unwrap();
    let (verified, said) = run(
        SERVER,
        &[
            "provenance",
            "verify",
            envelopes_arg,
            "--keys",
            strangers_file.to_str().unwrap(),
        ],
    );
    assert!(
        !verified && said.contains("not among the keys given"),
        "{said}"
    );
    let mut changed = first_signed.clone();
    let mut tampered = statement.clone();
    tampered
        .predicate
        .build_definition
        .external_parameters
        .commit = "0".repeat(40);
    changed.envelopes[0].payload = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        serde_json::to_vec(&tampered).unwrap(),
    );
    std::fs::write(&envelopes_file, serde_json::to_vec(&changed).unwrap()).unwrap();
    let (verified, said) = run(
        SERVER,
        &["provenance", "verify", envelopes_arg, "--keys", keys_arg],
    );
    assert!(
        !verified && said.contains("does not match the statement"),
        "{said}"
    );

    // The deployment's page says it in words and offers the download.
    let base = world.cp.base_url();
    let (client, cookie) = viewer_session(
        Path::new(SERVER),
        &world.root_dir().join("server"),
        &base,
        "ada",
        "provenance-password-1",
    )
    .await;
    let page = page_text(
        &client,
        &format!("{base}/deployments/{}", first.id),
        &cookie,
    )
    .await;
    for words in [
        "Provenance",
        "Built from",
        first_sha.as_str(),
        "signature checked against this server",
        keys.keys[0].key_id.as_str(),
        "provenance.json",
    ] {
        assert!(page.contains(words), "no {words:?} in the page:\n{page}");
    }
    let download = client
        .get(format!("{base}/deployments/{}/provenance.json", first.id))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    let downloaded: DeploymentProvenance = download.json().await.unwrap();
    assert_eq!(downloaded, first_signed);

    // The environment now takes only what long-lived scopes published; the
    // next build restores the pull request's own entries and is refused.
    agent
        .until_logged("Cache entries recorded by the control plane.", 1)
        .await;
    require_long_lived_scopes(&world, &preview_environment, true).await;
    let (_, second) = preview_build(&world, "two", PullRequestAction::Synchronize).await;
    assert_eq!(second.status, DeployFailed, "refused: {second:?}");
    let reason = second.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("long_lived_scopes_only") && reason.contains("pr:12"),
        "{reason}"
    );
    let second_statement =
        prov::verify(&signed(&world, &second.id).await.envelopes[0], &keys.keys).unwrap();
    let restored: Vec<_> = second_statement.restored().collect();
    assert!(!restored.is_empty(), "{second_statement:?}");
    assert!(
        restored.iter().all(|entry| {
            entry.annotation(prov::CACHE_PUBLISHED_SCOPE) == Some("pr:12")
                && entry.annotation(prov::CACHE_PUBLISHED_BY_DEPLOYMENT) == Some(first.id.as_str())
        }),
        "{restored:?}"
    );

    // Without the policy, the same kind of release goes live.
    agent
        .until_logged("Cache entries recorded by the control plane.", 2)
        .await;
    require_long_lived_scopes(&world, &preview_environment, false).await;
    let (_, third) = preview_build(&world, "three", PullRequestAction::Synchronize).await;
    assert_eq!(third.status, Live, "{:?}", third.reason);
    let third_statement =
        prov::verify(&signed(&world, &third.id).await.envelopes[0], &keys.keys).unwrap();
    assert!(third_statement.restored().count() > 0);
}
