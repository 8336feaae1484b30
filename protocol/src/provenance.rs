//! Provenance: what the control plane signs about each artifact and release
//! image a build made (an in-toto v1 statement with an SLSA v1 provenance
//! predicate, in a DSSE envelope signed with Ed25519), what an agent tells it
//! to write one, and the checks a deploy host and `verify` make. Added in v1.10.
//!
//! Pure: signing and verifying are computation; fetching keys and envelopes is
//! the callers'.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// DSSE's payload type for an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// What a Kiln build is, for SLSA's `buildType`; its parameters are
/// `ExternalParameters` and `InternalParameters`.
pub const BUILD_TYPE: &str = "https://kiln.build/provenance/medusa-build/v1";
/// The media type of an envelope attached to a release image in a registry.
pub const ENVELOPE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";

/// Annotations a restored cache entry carries in `resolvedDependencies`.
pub const CACHE_SCOPE: &str = "kiln.cache.scope";
pub const CACHE_KIND: &str = "kiln.cache.kind";
pub const CACHE_KEY: &str = "kiln.cache.key";
/// `true` when the control plane found its own record of the entry's
/// publication; else `kiln.cache.unverified` says why not.
pub const CACHE_VERIFIED: &str = "kiln.cache.verified";
pub const CACHE_UNVERIFIED: &str = "kiln.cache.unverified";
pub const CACHE_PUBLISHED_BY_DEPLOYMENT: &str = "kiln.cache.publishedBy.deployment";
pub const CACHE_PUBLISHED_BY_JOB: &str = "kiln.cache.publishedBy.job";
pub const CACHE_PUBLISHED_BY_AGENT: &str = "kiln.cache.publishedBy.agent";
pub const CACHE_PUBLISHED_BY_PROJECT: &str = "kiln.cache.publishedBy.project";
/// The scope the control plane gave the publishing build (its own record, not
/// the restoring agent's word).
pub const CACHE_PUBLISHED_SCOPE: &str = "kiln.cache.publishedBy.scope";

/// The subject naming a release image by its Docker image id (the sha256 of
/// its config), the same whether loaded from its artifact or pulled.
pub fn image_subject_name(artifact: &str) -> String {
    format!("{artifact}#image-id")
}

/// An in-toto v1 statement with an SLSA v1 provenance predicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<ResourceDescriptor>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: Provenance,
}

/// in-toto's ResourceDescriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digest: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, serde_json::Value>,
}

impl ResourceDescriptor {
    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.annotations.get(name).and_then(|value| value.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    #[serde(rename = "buildDefinition")]
    pub build_definition: BuildDefinition,
    #[serde(rename = "runDetails")]
    pub run_details: RunDetails,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildDefinition {
    #[serde(rename = "buildType")]
    pub build_type: String,
    #[serde(rename = "externalParameters")]
    pub external_parameters: ExternalParameters,
    #[serde(rename = "internalParameters")]
    pub internal_parameters: InternalParameters,
    /// The commit first, then every cache entry and reused output restored.
    #[serde(rename = "resolvedDependencies", default)]
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

/// What the build was asked for, from the control plane's own records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalParameters {
    pub repository: String,
    /// `refs/heads/<branch>`, or `refs/pull/<n>/head` for a preview.
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit: String,
    /// `push`, `pull_request` or `redeploy`.
    pub trigger: String,
    pub project: String,
    pub environment: String,
    pub deployment: String,
    #[serde(rename = "backendPath")]
    pub backend_path: String,
    #[serde(rename = "storefrontPath", default)]
    pub storefront_path: Option<String>,
}

/// How the build went about it: the agent's plan, and the variables' names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternalParameters {
    #[serde(default)]
    pub components: Vec<ComponentRecord>,
    /// Names and flags only, never values.
    #[serde(default)]
    pub variables: Vec<VariableRecord>,
    /// The agent that built it and its host, as the control plane knew them.
    #[serde(default)]
    pub agent: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariableRecord {
    pub name: String,
    pub build: bool,
    pub secret: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDetails {
    pub builder: Builder,
    pub metadata: BuildMetadata,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    /// `<control plane>/agents/<agent id>`.
    pub id: String,
    #[serde(default)]
    pub version: BTreeMap<String, String>,
    /// The build images, by digest.
    #[serde(rename = "builderDependencies", default)]
    pub builder_dependencies: Vec<ResourceDescriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildMetadata {
    #[serde(rename = "invocationId")]
    pub invocation_id: String,
    #[serde(rename = "startedOn")]
    pub started_on: String,
    #[serde(rename = "finishedOn")]
    pub finished_on: String,
}

/// What an agent reports of a successful build for its provenance, in the
/// final status update (`JobStatusUpdate::build`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub kiln_version: String,
    #[serde(default)]
    pub components: Vec<ComponentRecord>,
    /// Every cache entry and reused output the build restored.
    #[serde(default)]
    pub restored: Vec<RestoredEntry>,
    /// Each release image's Docker image id, by artifact name.
    #[serde(default)]
    pub release_image_ids: BTreeMap<String, String>,
}

/// One component as the agent built it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentRecord {
    /// `backend` or `storefront`.
    pub component: String,
    #[serde(default)]
    pub framework: Option<String>,
    #[serde(default, rename = "packageManager")]
    pub package_manager: Option<String>,
    /// The build image's name and Docker image id (`sha256:…`).
    #[serde(default)]
    pub image: String,
    #[serde(default, rename = "imageId")]
    pub image_id: String,
    /// Each step's kind and command, in order.
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    /// Set when the component's output was reused rather than built.
    #[serde(
        default,
        rename = "reusedFrom",
        skip_serializing_if = "Option::is_none"
    )]
    pub reused_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub kind: String,
    pub command: String,
}

/// A cache entry a build restored, as the agent found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredEntry {
    pub component: String,
    /// `deps`, `store`, `framework`, `output`, …
    pub kind: String,
    pub key: String,
    /// The scope it was found in.
    pub scope: String,
    /// The job the entry says published it.
    pub published_by_job: String,
}

/// `POST /api/v1/agent/jobs/{job_id}/cache-entries`: the entries a job
/// published to its build cache, after its final report. The control plane
/// records them under the scope it gave the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedEntries {
    pub entries: Vec<PublishedEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedEntry {
    pub kind: String,
    pub key: String,
}

/// `GET /api/v1/agent/jobs/{job_id}/cache/outputs/{component}/{key}`: a
/// component output another host published, which the job may read (its own
/// scope, or the one it falls back to), as the artifact's bytes with
/// `x-kiln-sha256`; these headers say whose it was. 404 when there is none.
/// Added in v1.10.
pub const CACHE_JOB_HEADER: &str = "x-kiln-cache-job";
pub const CACHE_SCOPE_HEADER: &str = "x-kiln-cache-scope";

/// A DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Base64 of the statement's JSON.
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    pub keyid: String,
    /// Base64 of the Ed25519 signature over the PAE.
    pub sig: String,
}

/// A public key of the control plane, as `GET /api/v1/provenance/keys` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub key_id: String,
    /// `ed25519`.
    pub algorithm: String,
    /// Base64 of the 32 raw bytes.
    pub public_key: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Set once another key signs in its place; still good for verifying.
    #[serde(default)]
    pub retired_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeys {
    pub keys: Vec<PublicKey>,
}

/// `GET /api/v1/deployments/{id}/provenance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentProvenance {
    pub deployment_id: String,
    pub envelopes: Vec<Envelope>,
}

/// What an environment requires of a release's provenance before it deploys
/// (`"require"` of `PATCH /api/v1/environments/{id}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenancePolicy {
    /// Refuse a release that restored anything published from a pull
    /// request's scope, from another project, or not published as far as the
    /// control plane knows.
    #[serde(default)]
    pub long_lived_scopes_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvenanceError {
    #[error("the envelope's payload type is {0:?}, not {PAYLOAD_TYPE}")]
    PayloadType(String),
    #[error("the envelope's {what} is not valid base64: {why}")]
    Base64 { what: &'static str, why: String },
    #[error("the envelope has no signature")]
    Unsigned,
    #[error("the envelope is signed by key {0}, which is not among the keys given; fetch the control plane's keys (GET /api/v1/provenance/keys)")]
    UnknownKey(String),
    #[error("the signature by key {0} does not match the statement: it was changed after signing, or signed by another key")]
    BadSignature(String),
    #[error("the public key {0} is not a valid Ed25519 key")]
    BadKey(String),
    #[error("the statement is not an in-toto v1 SLSA provenance statement: {0}")]
    NotAStatement(String),
    #[error("no subject of the statement is named {name}")]
    NoSubject { name: String },
    #[error("{name} has sha256 {actual}, but its provenance says {signed}")]
    DigestMismatch {
        name: String,
        actual: String,
        signed: String,
    },
    #[error("the policy long_lived_scopes_only refuses it: {0}")]
    Policy(String),
    #[error("{0} has no provenance; it was built before the control plane signed builds, or its record is gone: redeploy to build it again")]
    Missing(String),
}

/// DSSE's pre-authentication encoding, what is signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A key's id: `ed25519:` and the first 16 bytes of the sha256 of its raw
/// public key, in hex.
pub fn key_id(key: &VerifyingKey) -> String {
    format!(
        "ed25519:{}",
        hex::encode(&Sha256::digest(key.as_bytes())[..16])
    )
}

/// Signs `statement` into an envelope.
pub fn sign(statement: &Statement, key: &SigningKey) -> Envelope {
    let payload = serde_json::to_vec(statement).expect("a statement serializes");
    let signature = key.sign(&pae(PAYLOAD_TYPE, &payload));
    Envelope {
        payload_type: PAYLOAD_TYPE.to_owned(),
        payload: BASE64.encode(&payload),
        signatures: vec![EnvelopeSignature {
            keyid: key_id(&key.verifying_key()),
            sig: BASE64.encode(signature.to_bytes()),
        }],
    }
}

/// A key's public half, as listed.
pub fn public_key_text(key: &VerifyingKey) -> String {
    BASE64.encode(key.as_bytes())
}

fn verifying_key(key: &PublicKey) -> Result<VerifyingKey, ProvenanceError> {
    let bytes = BASE64
        .decode(key.public_key.trim())
        .map_err(|_| ProvenanceError::BadKey(key.key_id.clone()))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| ProvenanceError::BadKey(key.key_id.clone()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| ProvenanceError::BadKey(key.key_id.clone()))
}

/// Checks the envelope's signature against `keys` (retired ones included)
/// and reads its statement. A key is found by its id, which is checked to be
/// that key's own.
pub fn verify(envelope: &Envelope, keys: &[PublicKey]) -> Result<Statement, ProvenanceError> {
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(ProvenanceError::PayloadType(envelope.payload_type.clone()));
    }
    let payload = BASE64
        .decode(&envelope.payload)
        .map_err(|error| ProvenanceError::Base64 {
            what: "payload",
            why: error.to_string(),
        })?;
    let signed = pae(&envelope.payload_type, &payload);
    let mut unknown = None;
    for signature in &envelope.signatures {
        let Some(key) = keys.iter().find(|key| key.key_id == signature.keyid) else {
            unknown = Some(signature.keyid.clone());
            continue;
        };
        let public = verifying_key(key)?;
        if key_id(&public) != key.key_id {
            return Err(ProvenanceError::BadKey(key.key_id.clone()));
        }
        let bytes = BASE64
            .decode(&signature.sig)
            .map_err(|error| ProvenanceError::Base64 {
                what: "signature",
                why: error.to_string(),
            })?;
        let signature_value = ed25519_dalek::Signature::from_slice(&bytes)
            .map_err(|_| ProvenanceError::BadSignature(key.key_id.clone()))?;
        public
            .verify(&signed, &signature_value)
            .map_err(|_| ProvenanceError::BadSignature(key.key_id.clone()))?;
        let statement: Statement = serde_json::from_slice(&payload)
            .map_err(|error| ProvenanceError::NotAStatement(error.to_string()))?;
        if statement.statement_type != STATEMENT_TYPE
            || statement.predicate_type != SLSA_PROVENANCE_V1
        {
            return Err(ProvenanceError::NotAStatement(format!(
                "_type {:?}, predicateType {:?}",
                statement.statement_type, statement.predicate_type
            )));
        }
        return Ok(statement);
    }
    Err(match unknown {
        Some(key) => ProvenanceError::UnknownKey(key),
        None => ProvenanceError::Unsigned,
    })
}

impl Statement {
    /// The sha256 the statement gives the subject `name`.
    pub fn subject_digest(&self, name: &str) -> Option<&str> {
        self.subject
            .iter()
            .find(|subject| subject.name.as_deref() == Some(name))
            .and_then(|subject| subject.digest.get("sha256"))
            .map(String::as_str)
    }

    /// Holds the subject `name` to `actual` (lowercase hex, with or without
    /// `sha256:`).
    pub fn check_digest(&self, name: &str, actual: &str) -> Result<(), ProvenanceError> {
        let actual = actual.trim_start_matches("sha256:");
        let signed = self
            .subject_digest(name)
            .ok_or_else(|| ProvenanceError::NoSubject {
                name: name.to_owned(),
            })?;
        if !signed.eq_ignore_ascii_case(actual) {
            return Err(ProvenanceError::DigestMismatch {
                name: name.to_owned(),
                actual: actual.to_owned(),
                signed: signed.to_owned(),
            });
        }
        Ok(())
    }

    /// The cache entries and reused outputs the build restored.
    pub fn restored(&self) -> impl Iterator<Item = &ResourceDescriptor> {
        self.predicate
            .build_definition
            .resolved_dependencies
            .iter()
            .filter(|dependency| dependency.annotation(CACHE_KEY).is_some())
    }

    /// Holds the statement to an environment's policy, for a release of
    /// `project`.
    pub fn check_policy(
        &self,
        policy: &ProvenancePolicy,
        project: &str,
    ) -> Result<(), ProvenanceError> {
        if !policy.long_lived_scopes_only {
            return Ok(());
        }
        for entry in self.restored() {
            let what = format!(
                "{} cache entry {}",
                entry.annotation(CACHE_KIND).unwrap_or("a"),
                entry.annotation(CACHE_KEY).unwrap_or("?")
            );
            if entry.annotations.get(CACHE_VERIFIED) != Some(&serde_json::Value::Bool(true)) {
                return Err(ProvenanceError::Policy(format!(
                    "the build restored {what}, which the control plane has no record of publishing ({})",
                    entry.annotation(CACHE_UNVERIFIED).unwrap_or("unverified")
                )));
            }
            let scope = entry.annotation(CACHE_PUBLISHED_SCOPE).unwrap_or_default();
            let deployment = entry
                .annotation(CACHE_PUBLISHED_BY_DEPLOYMENT)
                .unwrap_or("?");
            if entry.annotation(CACHE_PUBLISHED_BY_PROJECT) != Some(project) {
                return Err(ProvenanceError::Policy(format!(
                    "the build restored {what}, published by deployment {deployment} of another project"
                )));
            }
            if !scope.starts_with("branch:") {
                return Err(ProvenanceError::Policy(format!(
                    "the build restored {what}, published from the scope {scope} (deployment {deployment}), not a long-lived environment's; redeploy with {{\"cache\": false}} to build without it"
                )));
            }
        }
        Ok(())
    }
}

/// What a deploy host holds a release artifact to before it runs it: signed
/// by one of `keys`, naming `name` with the digest it has (and, for a release
/// image, the image id it loaded), and within the environment's policy.
pub struct ReleaseCheck<'a> {
    pub keys: &'a [PublicKey],
    pub policy: &'a ProvenancePolicy,
    pub project: &'a str,
}

impl ReleaseCheck<'_> {
    pub fn check(
        &self,
        envelope: Option<&Envelope>,
        name: &str,
        sha256: &str,
        image_id: Option<&str>,
    ) -> Result<Statement, ProvenanceError> {
        let envelope = envelope.ok_or_else(|| ProvenanceError::Missing(name.to_owned()))?;
        let statement = verify(envelope, self.keys)?;
        statement.check_digest(name, sha256)?;
        if let Some(image_id) = image_id {
            statement.check_digest(&image_subject_name(name), image_id)?;
        }
        statement.check_policy(self.policy, self.project)?;
        Ok(statement)
    }
}

/// Reads one envelope, an array of them, or `DeploymentProvenance`, as
/// `verify` commands take them.
pub fn envelopes_from_json(bytes: &[u8]) -> Result<Vec<Envelope>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|error| format!("not JSON: {error}"))?;
    let list = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(ref object) if object.contains_key("envelopes") => {
            match object.get("envelopes") {
                Some(serde_json::Value::Array(items)) => items.clone(),
                _ => return Err("\"envelopes\" is not an array".to_owned()),
            }
        }
        other => vec![other],
    };
    list.into_iter()
        .map(|item| {
            serde_json::from_value(item).map_err(|error| format!("not a DSSE envelope: {error}"))
        })
        .collect()
}

/// Reads `{"keys": [...]}` (as `GET /api/v1/provenance/keys` answers) or a
/// bare list of keys.
pub fn keys_from_json(bytes: &[u8]) -> Result<Vec<PublicKey>, String> {
    if let Ok(listed) = serde_json::from_slice::<PublicKeys>(bytes) {
        return Ok(listed.keys);
    }
    serde_json::from_slice::<Vec<PublicKey>>(bytes).map_err(|error| {
        format!("not a list of public keys as GET /api/v1/provenance/keys answers: {error}")
    })
}

/// A file to hold to the provenance: its subject name and sha256.
pub struct Artifact<'a> {
    pub name: &'a str,
    pub sha256: &'a str,
}

/// The name an artifact file goes by in a statement: `subject` when given,
/// else the file's own name.
pub fn subject_of(path: &std::path::Path, subject: Option<String>) -> String {
    subject.unwrap_or_else(|| {
        path.file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}

/// What both `verify` commands do with what they read, each named by where
/// it came from (for the messages): the envelopes and the keys as JSON, and
/// an artifact to hold to its statement. The report's lines, ending
/// `verified`, or why not.
pub fn verify_read(
    envelopes: (&str, &[u8]),
    keys: (&str, &[u8]),
    artifact: Option<Artifact<'_>>,
) -> Result<Vec<String>, String> {
    let (from, bytes) = envelopes;
    let envelopes = envelopes_from_json(bytes).map_err(|why| format!("{from}: {why}"))?;
    let (from, bytes) = keys;
    let keys = keys_from_json(bytes).map_err(|why| format!("{from}: {why}"))?;
    let mut lines = verify_all(&envelopes, &keys, artifact)?;
    lines.push("verified".to_owned());
    Ok(lines)
}

/// Checks every envelope
/// against `keys` (and, given one, an artifact against the envelope naming
/// it); returns a line in words for each envelope, or why it failed.
pub fn verify_all(
    envelopes: &[Envelope],
    keys: &[PublicKey],
    artifact: Option<Artifact<'_>>,
) -> Result<Vec<String>, String> {
    if envelopes.is_empty() {
        return Err("no envelope to verify".to_owned());
    }
    let mut lines = Vec::new();
    let mut artifact_checked = false;
    for (at, envelope) in envelopes.iter().enumerate() {
        let statement =
            verify(envelope, keys).map_err(|error| format!("envelope {}: {error}", at + 1))?;
        let names: Vec<&str> = statement
            .subject
            .iter()
            .filter_map(|subject| subject.name.as_deref())
            .collect();
        if let Some(artifact) = &artifact {
            if names.contains(&artifact.name) {
                statement
                    .check_digest(artifact.name, artifact.sha256)
                    .map_err(|error| error.to_string())?;
                artifact_checked = true;
            }
        }
        lines.push(describe(&statement, envelope));
    }
    if let Some(artifact) = artifact {
        if !artifact_checked {
            return Err(format!(
                "no envelope names {}; name the artifact as its statement does (--subject)",
                artifact.name
            ));
        }
        lines.push(format!(
            "{} matches its provenance (sha256 {}).",
            artifact.name, artifact.sha256
        ));
    }
    Ok(lines)
}

/// A statement in words: what, from where, by whom, reusing what, signed by.
pub fn describe(statement: &Statement, envelope: &Envelope) -> String {
    let built = &statement.predicate.build_definition.external_parameters;
    let subjects: Vec<String> = statement
        .subject
        .iter()
        .map(|subject| {
            format!(
                "{} (sha256 {})",
                subject.name.as_deref().unwrap_or("?"),
                subject
                    .digest
                    .get("sha256")
                    .map(String::as_str)
                    .unwrap_or("?")
            )
        })
        .collect();
    let reused: Vec<String> = statement
        .restored()
        .map(|entry| {
            let key = entry.annotation(CACHE_KEY).unwrap_or("?");
            let what = format!(
                "{} {}",
                entry.annotation(CACHE_KIND).unwrap_or("?"),
                key.get(..12).unwrap_or(key)
            );
            match entry.annotation(CACHE_PUBLISHED_BY_DEPLOYMENT) {
                Some(deployment) => format!(
                    "{what} from deployment {deployment} ({})",
                    entry.annotation(CACHE_PUBLISHED_SCOPE).unwrap_or("?")
                ),
                None => format!("{what} (unverified)"),
            }
        })
        .collect();
    format!(
        "{}: built from {}@{} ({}, {}) by {}; {}; signed by {}.",
        subjects.join(", "),
        built.repository,
        built.commit,
        built.git_ref,
        built.trigger,
        statement.predicate.run_details.builder.id,
        if reused.is_empty() {
            "restored nothing from the build cache".to_owned()
        } else {
            format!("reused {}", reused.join(", "))
        },
        envelope
            .signatures
            .iter()
            .map(|signature| signature.keyid.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn listed(key: &SigningKey) -> PublicKey {
        PublicKey {
            key_id: key_id(&key.verifying_key()),
            algorithm: "ed25519".into(),
            public_key: public_key_text(&key.verifying_key()),
            created_at: chrono::Utc::now(),
            retired_at: None,
        }
    }

    pub(crate) fn statement(restored: Vec<ResourceDescriptor>) -> Statement {
        Statement {
            statement_type: STATEMENT_TYPE.into(),
            subject: vec![ResourceDescriptor {
                name: Some("backend.tar.gz".into()),
                digest: [("sha256".to_owned(), "ab".repeat(32))].into(),
                ..Default::default()
            }],
            predicate_type: SLSA_PROVENANCE_V1.into(),
            predicate: Provenance {
                build_definition: BuildDefinition {
                    build_type: BUILD_TYPE.into(),
                    external_parameters: ExternalParameters {
                        repository: "https://git.example/shop.git".into(),
                        git_ref: "refs/heads/main".into(),
                        commit: "0".repeat(40),
                        trigger: "push".into(),
                        project: "prj_1".into(),
                        environment: "env_1".into(),
                        deployment: "dpl_1".into(),
                        backend_path: ".".into(),
                        storefront_path: None,
                    },
                    internal_parameters: InternalParameters::default(),
                    resolved_dependencies: restored,
                },
                run_details: RunDetails {
                    builder: Builder {
                        id: "http://kiln.example/agents/agt_1".into(),
                        version: BTreeMap::new(),
                        builder_dependencies: Vec::new(),
                    },
                    metadata: BuildMetadata {
                        invocation_id: "job_1".into(),
                        started_on: "2026-12-07T00:00:00Z".into(),
                        finished_on: "2026-12-07T00:01:00Z".into(),
                    },
                },
            },
        }
    }

    fn restored(scope: &str, project: &str, verified: bool) -> ResourceDescriptor {
        let mut annotations = BTreeMap::new();
        annotations.insert(CACHE_KIND.to_owned(), "deps".into());
        annotations.insert(CACHE_KEY.to_owned(), "k1".into());
        annotations.insert(CACHE_SCOPE.to_owned(), scope.into());
        annotations.insert(CACHE_VERIFIED.to_owned(), verified.into());
        if verified {
            annotations.insert(CACHE_PUBLISHED_SCOPE.to_owned(), scope.into());
            annotations.insert(CACHE_PUBLISHED_BY_PROJECT.to_owned(), project.into());
            annotations.insert(CACHE_PUBLISHED_BY_DEPLOYMENT.to_owned(), "dpl_0".into());
        } else {
            annotations.insert(CACHE_UNVERIFIED.to_owned(), "no record".into());
        }
        ResourceDescriptor {
            uri: Some("kiln-cache:deps/k1".into()),
            annotations,
            ..Default::default()
        }
    }

    #[test]
    fn a_signed_statement_verifies_and_its_digest_holds() {
        let signing = key(1);
        let envelope = sign(&statement(Vec::new()), &signing);
        let read = verify(&envelope, &[listed(&signing)]).unwrap();
        assert_eq!(read, statement(Vec::new()));
        read.check_digest("backend.tar.gz", &"ab".repeat(32))
            .unwrap();
        assert!(matches!(
            read.check_digest("backend.tar.gz", &"ac".repeat(32)),
            Err(ProvenanceError::DigestMismatch { .. })
        ));
        assert!(matches!(
            read.check_digest("storefront.tar.gz", &"ab".repeat(32)),
            Err(ProvenanceError::NoSubject { .. })
        ));
    }

    #[test]
    fn a_changed_payload_an_unknown_key_and_no_signature_fail() {
        let signing = key(1);
        let mut envelope = sign(&statement(Vec::new()), &signing);
        let mut payload = BASE64.decode(&envelope.payload).unwrap();
        let at = payload.iter().position(|&b| b == b'a').unwrap();
        payload[at] = b'c';
        envelope.payload = BASE64.encode(&payload);
        assert!(matches!(
            verify(&envelope, &[listed(&signing)]),
            Err(ProvenanceError::BadSignature(_))
        ));

        let other = sign(&statement(Vec::new()), &key(2));
        assert!(matches!(
            verify(&other, &[listed(&signing)]),
            Err(ProvenanceError::UnknownKey(_))
        ));
        // A key listed under another key's id is not taken for it.
        let mut impostor = listed(&key(2));
        impostor.key_id = key_id(&signing.verifying_key());
        let envelope = sign(&statement(Vec::new()), &signing);
        assert!(verify(&envelope, &[impostor]).is_err());

        let mut unsigned = sign(&statement(Vec::new()), &signing);
        unsigned.signatures.clear();
        assert_eq!(
            verify(&unsigned, &[listed(&signing)]),
            Err(ProvenanceError::Unsigned)
        );
    }

    #[test]
    fn the_policy_refuses_a_pull_requests_another_projects_or_an_unknown_entry() {
        let strict = ProvenancePolicy {
            long_lived_scopes_only: true,
        };
        let fine = statement(vec![restored("branch:main", "prj_1", true)]);
        fine.check_policy(&strict, "prj_1").unwrap();
        for (entry, says) in [
            (restored("pr:7", "prj_1", true), "pr:7"),
            (restored("branch:main", "prj_2", true), "another project"),
            (restored("branch:main", "prj_1", false), "no record"),
        ] {
            let error = statement(vec![entry])
                .check_policy(&strict, "prj_1")
                .unwrap_err()
                .to_string();
            assert!(error.contains(says), "{error}");
            assert!(error.contains("long_lived_scopes_only"), "{error}");
        }
        statement(vec![restored("pr:7", "prj_1", true)])
            .check_policy(&ProvenancePolicy::default(), "prj_1")
            .unwrap();
    }

    /// Keys and envelopes come from files, URLs and registries: anything
    /// malformed is an error that says what, never a panic.
    #[test]
    fn malformed_keys_and_signatures_are_refused_by_name() {
        assert!(keys_from_json(b"not json").is_err());
        assert!(keys_from_json(br#"{"keys": [{"key_id": 1}]}"#).is_err());
        let signing = key(1);
        let mut short_key = listed(&signing);
        short_key.public_key = BASE64.encode([1u8; 7]);
        let envelope = sign(&statement(Vec::new()), &signing);
        assert!(matches!(
            verify(&envelope, &[short_key]),
            Err(ProvenanceError::BadKey(_))
        ));
        let mut garbled = envelope.clone();
        garbled.signatures[0].sig = "%%%".into();
        assert!(matches!(
            verify(&garbled, &[listed(&signing)]),
            Err(ProvenanceError::Base64 {
                what: "signature",
                ..
            })
        ));
        let mut short_sig = envelope.clone();
        short_sig.signatures[0].sig = BASE64.encode([0u8; 10]);
        assert!(matches!(
            verify(&short_sig, &[listed(&signing)]),
            Err(ProvenanceError::BadSignature(_))
        ));
        let mut other_type = envelope;
        other_type.payload_type = "text/plain".into();
        assert!(matches!(
            verify(&other_type, &[listed(&signing)]),
            Err(ProvenanceError::PayloadType(_))
        ));
        let unreadable =
            verify_read(("envelopes.json", b"[1]"), ("keys.json", b"[]"), None).unwrap_err();
        assert!(unreadable.starts_with("envelopes.json: "), "{unreadable}");
    }

    #[test]
    fn the_pae_is_dsses() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn verify_takes_one_envelope_a_list_or_a_deployments_answer() {
        let envelope = sign(&statement(Vec::new()), &key(1));
        let one = serde_json::to_vec(&envelope).unwrap();
        let list = serde_json::to_vec(&vec![envelope.clone(), envelope.clone()]).unwrap();
        let answer = serde_json::to_vec(&DeploymentProvenance {
            deployment_id: "dpl_1".into(),
            envelopes: vec![envelope],
        })
        .unwrap();
        assert_eq!(envelopes_from_json(&one).unwrap().len(), 1);
        assert_eq!(envelopes_from_json(&list).unwrap().len(), 2);
        assert_eq!(envelopes_from_json(&answer).unwrap().len(), 1);
        assert!(envelopes_from_json(b"{\"payload\": 1}").is_err());
    }
}
