//! Provenance: the signing keys' public halves, the build cache entries each
//! job published (the control plane's own record, under the scope it gave the
//! job), and the signed statement of each artifact of a successful build,
//! written in the build's final report's transaction.

use std::collections::BTreeMap;

use chrono::SecondsFormat;
use ed25519_dalek::VerifyingKey;
use kiln_protocol::provenance::{
    self as prov, BuildDefinition, BuildMetadata, BuildRecord, Builder, DeploymentProvenance,
    Envelope, ExternalParameters, InternalParameters, Provenance, ProvenancePolicy, PublicKey,
    PublicKeys, PublishedEntry, ResourceDescriptor, RunDetails, Statement, VariableRecord,
};
use kiln_protocol::{Component, Deployment, EnvVar};
use serde_json::json;

use super::values::{cache_scopes_of, now_ms, time, to_json};
use crate::db::sql::{params, Connection, OptionalExtension, Transaction};
use crate::error::ApiError;
use crate::signing::Signing;

/// The most entries one report may name.
const MAX_ENTRIES: usize = 500;

/// Lists this key's public half, if it is not yet.
pub fn register_key(conn: &mut Connection, key: &VerifyingKey) -> Result<(), ApiError> {
    conn.execute(
        "INSERT INTO provenance_keys (key_id, public_key, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key_id) DO NOTHING",
        params![prov::key_id(key), prov::public_key_text(key), now_ms()],
    )?;
    Ok(())
}

/// Retires `old` and lists `new` in its place.
pub fn rotate_key(
    conn: &mut Connection,
    old: &VerifyingKey,
    new: &VerifyingKey,
) -> Result<PublicKeys, ApiError> {
    let tx = conn.transaction()?;
    let now = now_ms();
    tx.execute(
        "UPDATE provenance_keys SET retired_at = ?1 WHERE key_id = ?2 AND retired_at IS NULL",
        params![now, prov::key_id(old)],
    )?;
    tx.execute(
        "INSERT INTO provenance_keys (key_id, public_key, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key_id) DO NOTHING",
        params![prov::key_id(new), prov::public_key_text(new), now],
    )?;
    let keys = keys_in(&tx)?;
    tx.commit()?;
    Ok(keys)
}

fn keys_in(conn: &Connection) -> Result<PublicKeys, ApiError> {
    let keys = conn
        .prepare(
            "SELECT key_id, public_key, created_at, retired_at FROM provenance_keys ORDER BY created_at, key_id",
        )?
        .query_map([], |row| {
            Ok(PublicKey {
                key_id: row.get(0)?,
                algorithm: "ed25519".to_owned(),
                public_key: row.get(1)?,
                created_at: time(row.get(2)?),
                retired_at: row.get::<_, Option<i64>>(3)?.map(time),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(PublicKeys { keys })
}

/// `GET /api/v1/provenance/keys`.
pub fn provenance_keys(conn: &mut Connection) -> Result<PublicKeys, ApiError> {
    keys_in(conn)
}

/// A job as its cache grants see it: whose it is, what it builds, and the
/// scopes the control plane gave it (`values::cache_scopes_of`).
struct JobScopes {
    agent_id: String,
    finished: bool,
    project_id: String,
    deployment_id: String,
    write: String,
    read: Vec<String>,
}

/// The job's scopes, once it is known to be `agent_id`'s.
fn job_scopes(conn: &Connection, agent_id: &str, job_id: &str) -> Result<JobScopes, ApiError> {
    let job = conn
        .query_row(
            "SELECT j.agent_id, j.finished_at IS NOT NULL, d.project_id, d.id, d.branch,
                    e.pull_request, e.base_branch
             FROM jobs j JOIN deployments d ON d.id = j.deployment_id
             JOIN environments e ON e.id = d.environment_id WHERE j.id = ?1",
            [job_id],
            |row| {
                let (write, read) = cache_scopes_of(
                    &row.get::<_, String>(4)?,
                    row.get(5)?,
                    row.get::<_, Option<String>>(6)?.as_deref(),
                );
                Ok(JobScopes {
                    agent_id: row.get(0)?,
                    finished: row.get(1)?,
                    project_id: row.get(2)?,
                    deployment_id: row.get(3)?,
                    write,
                    read,
                })
            },
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("job", job_id))?;
    if job.agent_id != agent_id {
        return Err(ApiError::Forbidden(format!(
            "job {job_id} belongs to another agent"
        )));
    }
    Ok(job)
}

fn check_entry(kind: &str, key: &str) -> Result<(), ApiError> {
    let fine = |text: &str| {
        !text.is_empty()
            && text.len() <= 128
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    };
    if fine(kind) && fine(key) {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            "entries",
            format!("kind {kind:?} or key {key:?} is not 1 to 128 of [A-Za-z0-9._:-]"),
        ))
    }
}

/// `POST /agent/jobs/{job_id}/cache-entries`: what the job published, recorded
/// under the scope the control plane gave it, whatever the agent says.
pub fn record_published(
    conn: &mut Connection,
    agent_id: &str,
    job_id: &str,
    entries: &[PublishedEntry],
) -> Result<usize, ApiError> {
    if entries.len() > MAX_ENTRIES {
        return Err(ApiError::invalid_field(
            "entries",
            format!("names more than {MAX_ENTRIES} entries"),
        ));
    }
    for entry in entries {
        check_entry(&entry.kind, &entry.key)?;
    }
    let tx = conn.transaction()?;
    let job = job_scopes(&tx, agent_id, job_id)?;
    let now = now_ms();
    let mut recorded = 0;
    for entry in entries {
        recorded += tx.execute(
            "INSERT INTO cache_publications
                 (job_id, kind, cache_key, project_id, scope, deployment_id, agent_id, published_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
            params![
                job_id,
                entry.kind,
                entry.key,
                job.project_id,
                job.write,
                job.deployment_id,
                agent_id,
                now
            ],
        )?;
    }
    tx.commit()?;
    Ok(recorded)
}

/// A component output another host's build published, which a build may
/// reuse: where its artifact is, and whose it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedOutput {
    pub deployment_id: String,
    pub job_id: String,
    pub scope: String,
    pub artifact: String,
}

/// The newest output published under `key` for `component` that job
/// `job_id` may read: its project's, in the scope the control plane gave the
/// job or the one it falls back to (a preview's base branch), never another
/// pull request's, with its artifact still kept. The grant is the control
/// plane's own records, whatever the asking agent says.
pub fn shared_output(
    conn: &mut Connection,
    agent_id: &str,
    job_id: &str,
    component: &str,
    key: &str,
) -> Result<Option<SharedOutput>, ApiError> {
    check_entry("output", key)?;
    let artifact = [Component::Backend, Component::Storefront]
        .into_iter()
        .find(|known| known.as_str() == component)
        .map(Component::artifact_name)
        .ok_or_else(|| {
            ApiError::InvalidParameter(format!(
                "component {component:?} is not backend or storefront"
            ))
        })?;
    let job = job_scopes(conn, agent_id, job_id)?;
    if job.finished {
        return Err(ApiError::Conflict(format!("job {job_id} has ended")));
    }
    // Its own scope first, then the one it falls back to (if any).
    let fallback = job.read.first().unwrap_or(&job.write);
    Ok(conn
        .query_row(
            "SELECT c.deployment_id, c.job_id, c.scope FROM cache_publications c
             JOIN deployments d ON d.id = c.deployment_id
             JOIN artifacts a ON a.job_id = c.job_id AND a.name = ?1
             WHERE c.kind = 'output' AND c.cache_key = ?2 AND c.project_id = ?3
               AND c.scope IN (?4, ?5) AND d.artifacts_removed_at IS NULL
             ORDER BY c.scope = ?4 DESC, c.published_at DESC LIMIT 1",
            params![artifact, key, job.project_id, job.write, fallback],
            |row| {
                Ok(SharedOutput {
                    deployment_id: row.get(0)?,
                    job_id: row.get(1)?,
                    scope: row.get(2)?,
                    artifact: artifact.to_owned(),
                })
            },
        )
        .optional()?)
}

/// Checks a build's report for provenance: bounded, and in the shapes the
/// statement takes.
pub fn check_build_record(record: &BuildRecord) -> Result<(), ApiError> {
    let refuse = |why: String| Err(ApiError::invalid_field("build", why));
    if record.restored.len() > MAX_ENTRIES || record.components.len() > 2 {
        return refuse(format!(
            "names more than {MAX_ENTRIES} restored entries or more than 2 components"
        ));
    }
    for entry in &record.restored {
        check_entry(&entry.kind, &entry.key)?;
        if entry.scope.len() > 300 || entry.published_by_job.len() > 64 {
            return refuse("a restored entry's scope or job is too long".to_owned());
        }
    }
    for component in &record.components {
        if component.steps.len() > 32
            || component
                .steps
                .iter()
                .any(|step| step.command.len() > 8192 || step.kind.len() > 64)
            || component.image.len() > 512
            || component.image_id.len() > 128
        {
            return refuse(format!(
                "component {:?} has more than 32 steps, a command over 8 KiB or an image name over 512 bytes",
                component.component
            ));
        }
    }
    if record.kiln_version.len() > 64 || record.release_image_ids.len() > 4 {
        return refuse("kiln_version or release_image_ids is too long".to_owned());
    }
    Ok(())
}

fn sha256_hex(text: &str) -> Option<String> {
    let hex = text.trim_start_matches("sha256:");
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_lowercase())
}

fn rfc3339(ms: i64) -> String {
    time(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Each restored entry as a dependency, with what the control plane's own
/// records say of its publication.
fn restored_dependencies(
    tx: &Transaction,
    record: &BuildRecord,
) -> Result<Vec<ResourceDescriptor>, ApiError> {
    let mut dependencies = Vec::new();
    for entry in &record.restored {
        let mut annotations: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        annotations.insert(prov::CACHE_KIND.into(), json!(entry.kind));
        annotations.insert(prov::CACHE_KEY.into(), json!(entry.key));
        annotations.insert(prov::CACHE_SCOPE.into(), json!(entry.scope));
        annotations.insert("kiln.component".into(), json!(entry.component));
        let published = tx
            .query_row(
                "SELECT project_id, scope, deployment_id, agent_id FROM cache_publications
                 WHERE job_id = ?1 AND kind = ?2 AND cache_key = ?3",
                params![entry.published_by_job, entry.kind, entry.key],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()?;
        match published {
            Some((project, scope, deployment, agent)) => {
                annotations.insert(prov::CACHE_VERIFIED.into(), json!(true));
                annotations.insert(prov::CACHE_PUBLISHED_SCOPE.into(), json!(scope));
                annotations.insert(prov::CACHE_PUBLISHED_BY_PROJECT.into(), json!(project));
                annotations.insert(
                    prov::CACHE_PUBLISHED_BY_DEPLOYMENT.into(),
                    json!(deployment),
                );
                annotations.insert(
                    prov::CACHE_PUBLISHED_BY_JOB.into(),
                    json!(entry.published_by_job),
                );
                annotations.insert(prov::CACHE_PUBLISHED_BY_AGENT.into(), json!(agent));
            }
            None => {
                annotations.insert(prov::CACHE_VERIFIED.into(), json!(false));
                annotations.insert(
                    prov::CACHE_UNVERIFIED.into(),
                    json!(format!(
                        "no record of job {} publishing a {} entry with key {}",
                        entry.published_by_job, entry.kind, entry.key
                    )),
                );
            }
        }
        dependencies.push(ResourceDescriptor {
            uri: Some(format!("kiln-cache:{}/{}", entry.kind, entry.key)),
            annotations,
            ..Default::default()
        });
    }
    Ok(dependencies)
}

/// What every statement of one build shares.
struct BuildFacts {
    repository: String,
    backend_path: String,
    storefront_path: Option<String>,
    pull_request: Option<i64>,
    claimed_at: i64,
    variables: Vec<VariableRecord>,
    agent: serde_json::Value,
}

fn build_facts(
    tx: &Transaction,
    job_id: &str,
    deployment: &Deployment,
) -> Result<BuildFacts, ApiError> {
    let (repository, backend_path, storefront_path, pull_request, claimed_at, given, agent) = tx
        .query_row(
            "SELECT p.repository_url, p.backend_path, p.storefront_path, e.pull_request,
                    j.claimed_at, j.variables, a.id, a.name, a.facts
             FROM jobs j JOIN deployments d ON d.id = j.deployment_id
             JOIN projects p ON p.id = d.project_id JOIN environments e ON e.id = d.environment_id
             JOIN agents a ON a.id = j.agent_id WHERE j.id = ?1",
            [job_id],
            |row| {
                let facts: Option<String> = row.get(8)?;
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, Option<i64>>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, Option<String>>(5)?,
                    json!({
                        "id": row.get::<_, String>(6)?,
                        "name": row.get::<_, String>(7)?,
                        "host": facts
                            .and_then(|facts| serde_json::from_str::<serde_json::Value>(&facts).ok()),
                    }),
                ))
            },
        )?;
    let given: Vec<EnvVar> = given
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default();
    let mut variables: Vec<VariableRecord> = given
        .iter()
        .map(|variable| VariableRecord {
            name: variable.name.clone(),
            build: true,
            secret: variable.secret,
        })
        .collect();
    let runtime_only = tx
        .prepare(
            "SELECT name, secret FROM variables WHERE environment_id = ?1 AND build = 0 ORDER BY name",
        )?
        .query_map([&deployment.environment_id], |row| {
            Ok(VariableRecord {
                name: row.get(0)?,
                build: false,
                secret: row.get(1)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    variables.extend(runtime_only);
    Ok(BuildFacts {
        repository,
        backend_path,
        storefront_path,
        pull_request,
        claimed_at,
        variables,
        agent,
    })
}

/// The names and values of the variables a job was given, kept without
/// their values when it is claimed.
pub(super) fn given_variables(variables: &[EnvVar]) -> String {
    to_json(
        &variables
            .iter()
            .map(|variable| EnvVar {
                name: variable.name.clone(),
                value: String::new(),
                secret: variable.secret,
            })
            .collect::<Vec<_>>(),
    )
}

/// Signs a statement for each artifact of job `job_id`, which just built
/// `deployment`, in the report's transaction.
pub(super) fn sign_build(
    tx: &Transaction,
    signing: &Signing,
    job_id: &str,
    deployment: &Deployment,
    record: &BuildRecord,
    now: i64,
) -> Result<(), ApiError> {
    let facts = build_facts(tx, job_id, deployment)?;
    let artifacts = tx
        .prepare("SELECT name, sha256 FROM artifacts WHERE job_id = ?1 ORDER BY name")?
        .query_map([job_id], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let git_ref = match facts.pull_request {
        Some(number) => format!("refs/pull/{number}/head"),
        None => format!("refs/heads/{}", deployment.branch),
    };
    let trigger = if deployment.redeploy_of.is_some() {
        "redeploy"
    } else if facts.pull_request.is_some() {
        "pull_request"
    } else {
        "push"
    };
    let mut resolved = vec![ResourceDescriptor {
        uri: Some(format!("git+{}@{git_ref}", facts.repository)),
        digest: [("gitCommit".to_owned(), deployment.commit_sha.clone())].into(),
        ..Default::default()
    }];
    resolved.extend(restored_dependencies(tx, record)?);
    let builder_dependencies = record
        .components
        .iter()
        .filter_map(|component| {
            Some(ResourceDescriptor {
                name: Some(format!("{} build image", component.component)),
                uri: Some(format!("docker-image:{}", component.image)),
                digest: [("sha256".to_owned(), sha256_hex(&component.image_id)?)].into(),
                ..Default::default()
            })
        })
        .collect();
    let mut version = BTreeMap::new();
    version.insert("kiln-agent".to_owned(), record.kiln_version.clone());
    version.insert(
        "kiln-server".to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    );
    let predicate = Provenance {
        build_definition: BuildDefinition {
            build_type: prov::BUILD_TYPE.to_owned(),
            external_parameters: ExternalParameters {
                repository: facts.repository.clone(),
                git_ref,
                commit: deployment.commit_sha.clone(),
                trigger: trigger.to_owned(),
                project: deployment.project_id.clone(),
                environment: deployment.environment_id.clone(),
                deployment: deployment.id.clone(),
                backend_path: facts.backend_path.clone(),
                storefront_path: facts.storefront_path.clone(),
            },
            internal_parameters: InternalParameters {
                components: record.components.clone(),
                variables: facts.variables.clone(),
                agent: facts.agent.clone(),
            },
            resolved_dependencies: resolved,
        },
        run_details: RunDetails {
            builder: Builder {
                id: format!(
                    "{}/agents/{}",
                    signing.builder_base.trim_end_matches('/'),
                    deployment.agent_id.as_deref().unwrap_or_default()
                ),
                version,
                builder_dependencies,
            },
            metadata: BuildMetadata {
                invocation_id: job_id.to_owned(),
                started_on: rfc3339(facts.claimed_at),
                finished_on: rfc3339(now),
            },
        },
    };
    let key = signing.key();
    let key_id = prov::key_id(&key.verifying_key());
    for (name, sha256) in artifacts {
        let mut subject = vec![ResourceDescriptor {
            name: Some(name.clone()),
            digest: [("sha256".to_owned(), sha256)].into(),
            ..Default::default()
        }];
        if let Some(image_id) = record
            .release_image_ids
            .get(&name)
            .and_then(|id| sha256_hex(id))
        {
            subject.push(ResourceDescriptor {
                name: Some(prov::image_subject_name(&name)),
                digest: [("sha256".to_owned(), image_id)].into(),
                ..Default::default()
            });
        }
        let statement = Statement {
            statement_type: prov::STATEMENT_TYPE.to_owned(),
            subject,
            predicate_type: prov::SLSA_PROVENANCE_V1.to_owned(),
            predicate: predicate.clone(),
        };
        let envelope = prov::sign(&statement, &key);
        tx.execute_deferred(
            "INSERT INTO provenance (job_id, deployment_id, subject, envelope, key_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (job_id, subject) DO NOTHING",
            params![job_id, deployment.id, name, to_json(&envelope), key_id, now],
        )?;
    }
    Ok(())
}

/// `GET /api/v1/deployments/{id}/provenance`: the envelopes of the build that
/// made the deployment, one per artifact.
pub fn deployment_provenance(
    conn: &mut Connection,
    deployment_id: &str,
) -> Result<DeploymentProvenance, ApiError> {
    super::rows::deployment_row_in(conn, deployment_id)?;
    let envelopes = conn
        .prepare("SELECT envelope FROM provenance WHERE deployment_id = ?1 ORDER BY subject")?
        .query_map([deployment_id], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter_map(|text| serde_json::from_str::<Envelope>(&text).ok())
        .collect();
    Ok(DeploymentProvenance {
        deployment_id: deployment_id.to_owned(),
        envelopes,
    })
}

/// The envelope of one artifact of a deployment, for its deploy.
pub(super) fn envelope_of(
    conn: &Connection,
    deployment_id: &str,
    artifact: &str,
) -> Result<Option<Envelope>, ApiError> {
    Ok(conn
        .query_row(
            "SELECT envelope FROM provenance WHERE deployment_id = ?1 AND subject = ?2
             ORDER BY created_at DESC LIMIT 1",
            params![deployment_id, artifact],
            |row| row.get::<_, String>(0),
        )
        .optional()?
        .and_then(|text| serde_json::from_str(&text).ok()))
}

/// What the reference deployer checks a release against.
pub struct ReleaseProvenance {
    /// By artifact name.
    pub envelopes: BTreeMap<String, Envelope>,
    pub keys: Vec<PublicKey>,
    pub policy: ProvenancePolicy,
}

pub fn release_provenance(
    conn: &mut Connection,
    deployment_id: &str,
) -> Result<ReleaseProvenance, ApiError> {
    let policy: Option<String> = conn
        .query_row(
            "SELECT e.require_policy FROM deployments d JOIN environments e ON e.id = d.environment_id
             WHERE d.id = ?1",
            [deployment_id],
            |row| row.get(0),
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("deployment", deployment_id))?;
    let envelopes = conn
        .prepare("SELECT subject, envelope FROM provenance WHERE deployment_id = ?1")?
        .query_map([deployment_id], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter_map(|(subject, text)| Some((subject, serde_json::from_str(&text).ok()?)))
        .collect();
    Ok(ReleaseProvenance {
        envelopes,
        keys: keys_in(conn)?.keys,
        policy: policy
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{agent, claim_one, push, sha, shop, REPO};
    use kiln_protocol::provenance::{ProvenanceError, RestoredEntry};
    use kiln_protocol::{DeploymentStatus, JobStatusUpdate, PullRequestAction, PullRequestEvent};

    fn report(conn: &mut Connection, agent_id: &str, job_id: &str, build: Option<BuildRecord>) {
        crate::store::report_status(
            conn,
            &Signing::for_tests(),
            agent_id,
            job_id,
            JobStatusUpdate {
                status: DeploymentStatus::AwaitingDeployment,
                backend: None,
                storefront: None,
                reason: None,
                detail: None,
                commit_message: None,
                build,
            },
        )
        .unwrap();
    }

    fn restored(kind: &str, key: &str, scope: &str, job: &str) -> RestoredEntry {
        RestoredEntry {
            component: "backend".into(),
            kind: kind.into(),
            key: key.into(),
            scope: scope.into(),
            published_by_job: job.into(),
        }
    }

    /// Opens pull request `number` onto main at commit `sha(2)`: its preview
    /// queues a build.
    fn open_pull_request(conn: &mut Connection, number: u64) {
        crate::store::on_pull_request(
            conn,
            PullRequestEvent {
                repository: REPO.into(),
                number,
                action: PullRequestAction::Opened,
                branch: format!("feature/{number}"),
                sha: sha(2),
                author: "Grace".into(),
                message: "A pull request".into(),
                people: Default::default(),
                base_branch: Some("main".into()),
            },
        )
        .unwrap();
    }

    fn published(kind: &str, key: &str) -> Vec<PublishedEntry> {
        vec![PublishedEntry {
            kind: kind.into(),
            key: key.into(),
        }]
    }

    /// What an agent restores is checked against what the control plane
    /// recorded as published, under the scope the control plane gave the
    /// publisher, whatever scope the restoring agent names.
    #[test]
    fn a_build_is_signed_with_each_restored_entry_checked_against_the_records() {
        let (mut conn, project_id, environment_id) = shop(&[]);
        register_key(&mut conn, &Signing::for_tests().key().verifying_key()).unwrap();
        let builder = agent(&mut conn, &[]);
        push(&mut conn, "main", 1);
        let main_job = claim_one(&mut conn, &builder);
        open_pull_request(&mut conn, 7);
        let pr_job = claim_one(&mut conn, &builder);
        record_published(
            &mut conn,
            &builder.id,
            &main_job.job_id,
            &published("deps", "mainkey"),
        )
        .unwrap();
        record_published(
            &mut conn,
            &builder.id,
            &pr_job.job_id,
            &published("deps", "prkey"),
        )
        .unwrap();
        let stranger = agent(&mut conn, &[]);
        let error = record_published(
            &mut conn,
            &stranger.id,
            &pr_job.job_id,
            &published("deps", "x"),
        )
        .unwrap_err();
        assert!(matches!(error, ApiError::Forbidden(_)), "{error}");
        let error = record_published(
            &mut conn,
            &builder.id,
            &pr_job.job_id,
            &published("deps", "a/../b"),
        )
        .unwrap_err();
        assert!(error.to_string().contains("entries"), "{error}");

        let variable = |name: &str, secret: bool, build: bool| kiln_protocol::VariableInput {
            name: name.into(),
            value: "hunter2-value".into(),
            secret,
            build,
            runtime: true,
        };
        crate::store::set_variables(
            &mut conn,
            &environment_id,
            vec![
                variable("JWT_SECRET", true, true),
                variable("RUNTIME_ONLY", false, false),
            ],
        )
        .unwrap();
        push(&mut conn, "main", 3);
        let job = claim_one(&mut conn, &builder);
        conn.execute(
            "INSERT INTO artifacts (deployment_id, job_id, name, size, sha256, created_at)
             VALUES (?1, ?2, 'backend.tar.gz', 3, ?3, 0)",
            params![job.deployment_id, job.job_id, "ab".repeat(32)],
        )
        .unwrap();
        report(
            &mut conn,
            &builder.id,
            &job.job_id,
            Some(BuildRecord {
                kiln_version: "9.9.9".into(),
                restored: vec![
                    restored("deps", "mainkey", "branch:main", &main_job.job_id),
                    // The agent says branch:main; the record says pr:7.
                    restored("deps", "prkey", "branch:main", &pr_job.job_id),
                    restored("store", "ghost", "branch:main", "job_none"),
                ],
                ..Default::default()
            }),
        );
        let signed = deployment_provenance(&mut conn, &job.deployment_id).unwrap();
        assert_eq!(signed.envelopes.len(), 1);
        let keys = provenance_keys(&mut conn).unwrap().keys;
        let statement = prov::verify(&signed.envelopes[0], &keys).unwrap();
        statement
            .check_digest("backend.tar.gz", &"ab".repeat(32))
            .unwrap();
        let params = &statement.predicate.build_definition.external_parameters;
        assert_eq!(
            (
                params.git_ref.as_str(),
                params.trigger.as_str(),
                params.commit.as_str()
            ),
            ("refs/heads/main", "push", sha(3).as_str())
        );
        let variables: Vec<(&str, bool, bool)> = statement
            .predicate
            .build_definition
            .internal_parameters
            .variables
            .iter()
            .map(|variable| (variable.name.as_str(), variable.build, variable.secret))
            .collect();
        assert_eq!(
            variables,
            [("JWT_SECRET", true, true), ("RUNTIME_ONLY", false, false)]
        );
        let envelope_text = serde_json::to_string(&signed).unwrap();
        assert!(!envelope_text.contains("hunter2"));
        let payload = serde_json::to_string(&statement).unwrap();
        assert!(!payload.contains("hunter2"), "no value, ever: {payload}");
        let entries: Vec<_> = statement.restored().collect();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0].annotation(prov::CACHE_PUBLISHED_SCOPE),
            Some("branch:main")
        );
        assert_eq!(
            entries[1].annotation(prov::CACHE_PUBLISHED_SCOPE),
            Some("pr:7")
        );
        assert_eq!(
            entries[2].annotations.get(prov::CACHE_VERIFIED),
            Some(&serde_json::Value::Bool(false))
        );
        let strict = ProvenancePolicy {
            long_lived_scopes_only: true,
        };
        let refused = statement.check_policy(&strict, &project_id).unwrap_err();
        assert!(
            matches!(refused, ProvenanceError::Policy(ref why) if why.contains("pr:7")),
            "{refused}"
        );
        statement
            .check_policy(&ProvenancePolicy::default(), &project_id)
            .unwrap();
    }

    fn with_artifact(conn: &mut Connection, job: &kiln_protocol::Job) {
        conn.execute(
            "INSERT INTO artifacts (deployment_id, job_id, name, size, sha256, created_at)
             VALUES (?1, ?2, 'backend.tar.gz', 3, ?3, 0)",
            params![job.deployment_id, job.job_id, "ab".repeat(32)],
        )
        .unwrap();
    }

    /// Another host's output reaches a build only within the scopes the
    /// control plane gives it: main never reads a pull request's, a preview
    /// reads its base branch's.
    #[test]
    fn a_shared_output_is_granted_by_scope_never_from_a_pull_request_to_main() {
        let (mut conn, _, _) = shop(&[]);
        let builder = agent(&mut conn, &[]);
        push(&mut conn, "main", 1);
        let main_job = claim_one(&mut conn, &builder);
        with_artifact(&mut conn, &main_job);
        record_published(
            &mut conn,
            &builder.id,
            &main_job.job_id,
            &published("output", "mainout"),
        )
        .unwrap();
        open_pull_request(&mut conn, 8);
        let pr_job = claim_one(&mut conn, &builder);
        with_artifact(&mut conn, &pr_job);
        record_published(
            &mut conn,
            &builder.id,
            &pr_job.job_id,
            &published("output", "prout"),
        )
        .unwrap();
        push(&mut conn, "main", 3);
        let next_main = claim_one(&mut conn, &builder);
        let grant = |conn: &mut Connection, job: &kiln_protocol::Job, key: &str| {
            shared_output(conn, &builder.id, &job.job_id, "backend", key).unwrap()
        };
        let found = grant(&mut conn, &next_main, "mainout").expect("main's own");
        assert_eq!(
            (found.job_id.as_str(), found.scope.as_str()),
            (main_job.job_id.as_str(), "branch:main")
        );
        assert_eq!(
            grant(&mut conn, &next_main, "prout"),
            None,
            "never a pull request's"
        );
        let from_base = grant(&mut conn, &pr_job, "mainout").expect("a preview reads its base");
        assert_eq!(from_base.scope, "branch:main");
        assert_eq!(grant(&mut conn, &next_main, "unknown"), None);
        let stranger = agent(&mut conn, &[]);
        let error = shared_output(
            &mut conn,
            &stranger.id,
            &next_main.job_id,
            "backend",
            "mainout",
        )
        .unwrap_err();
        assert!(matches!(error, ApiError::Forbidden(_)), "{error}");
        let error = shared_output(&mut conn, &builder.id, &next_main.job_id, "../x", "mainout")
            .unwrap_err();
        assert!(error.to_string().contains("component"), "{error}");
    }

    /// What an agent reports for provenance is bounded and shaped before a
    /// statement takes it: each refusal names the field.
    #[test]
    fn a_hostile_build_record_is_refused_naming_build_or_entries() {
        use kiln_protocol::provenance::{ComponentRecord, StepRecord};
        check_build_record(&BuildRecord::default()).unwrap();
        let entry = |key: &str| restored("deps", key, "branch:main", "job_1");
        let too_many = BuildRecord {
            restored: vec![entry("k"); MAX_ENTRIES + 1],
            ..Default::default()
        };
        let bad_key = BuildRecord {
            restored: vec![entry("a/../b")],
            ..Default::default()
        };
        let long_command = BuildRecord {
            components: vec![ComponentRecord {
                component: "backend".into(),
                steps: vec![StepRecord {
                    kind: "build".into(),
                    command: "x".repeat(8193),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let long_scope = BuildRecord {
            restored: vec![restored("deps", "k", &"s".repeat(301), "job_1")],
            ..Default::default()
        };
        for (record, field) in [
            (too_many, "build"),
            (bad_key, "entries"),
            (long_command, "build"),
            (long_scope, "build"),
        ] {
            let error = check_build_record(&record).unwrap_err().to_string();
            assert!(error.contains(field), "{error}");
        }
    }

    #[test]
    fn a_rotated_key_stays_listed_as_retired() {
        let (mut conn, _, _) = shop(&[]);
        let old = Signing::for_tests().key().verifying_key();
        register_key(&mut conn, &old).unwrap();
        let new = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
        let keys = rotate_key(&mut conn, &old, &new).unwrap().keys;
        assert_eq!(keys.len(), 2);
        let retired = keys
            .iter()
            .find(|key| key.key_id == prov::key_id(&old))
            .unwrap();
        assert!(retired.retired_at.is_some());
        let current = keys
            .iter()
            .find(|key| key.key_id == prov::key_id(&new))
            .unwrap();
        assert!(current.retired_at.is_none());
    }
}
