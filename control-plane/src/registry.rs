//! Provenance attached to release images in the registry (`--registry`): each
//! release image's signed statement, as an OCI artifact whose subject is the
//! image's manifest. Pushed by digest where the registry answers the OCI
//! referrers API, else tagged `sha256-<digest>.att`, as cosign tags
//! attestations, for registries without it (Docker's distribution 2.x).

use std::time::Duration;

use kiln_protocol::provenance::{self as prov, Envelope};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::store;
use crate::AppState;

/// The manifests a registry is asked for, newest kind first.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI's empty descriptor, the config of an artifact that has none.
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{action} at {url}: {why}")]
    Failed {
        action: &'static str,
        url: String,
        why: String,
    },
}

/// One repository of the registry, spoken to over HTTP: plain HTTP on
/// loopback (as Docker allows), HTTPS elsewhere.
pub struct Repository {
    http: reqwest::Client,
    base: String,
    /// `kiln-release/prj_…`, under the registry's path.
    name: String,
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Repository {
    /// The repository and tag of `reference` (`host[:port][/path]/repo:tag`).
    pub fn of(reference: &str) -> Option<(Repository, String)> {
        let (host, rest) = reference.split_once('/')?;
        let (name, tag) = rest.rsplit_once(':')?;
        let loopback =
            host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]");
        let scheme = if loopback { "http" } else { "https" };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .ok()?;
        Some((
            Repository {
                http,
                base: format!("{scheme}://{host}/v2/{name}"),
                name: name.to_owned(),
            },
            tag.to_owned(),
        ))
    }

    fn failed(action: &'static str, url: &str, why: impl ToString) -> RegistryError {
        RegistryError::Failed {
            action,
            url: url.to_owned(),
            why: why.to_string(),
        }
    }

    /// The manifest `reference` (a tag or a digest) names: its digest, media
    /// type and bytes.
    pub async fn manifest(
        &self,
        reference: &str,
    ) -> Result<(String, String, Vec<u8>), RegistryError> {
        let url = format!("{}/manifests/{reference}", self.base);
        let response = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES)
            .send()
            .await
            .map_err(|error| Self::failed("read a manifest", &url, error))?;
        if !response.status().is_success() {
            return Err(Self::failed("read a manifest", &url, response.status()));
        }
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or(OCI_MANIFEST)
            .to_owned();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| Self::failed("read a manifest", &url, error))?
            .to_vec();
        Ok((sha256_digest(&bytes), media_type, bytes))
    }

    async fn push_blob(&self, bytes: &[u8]) -> Result<String, RegistryError> {
        let digest = sha256_digest(bytes);
        let start = format!("{}/blobs/uploads/", self.base);
        let response = self
            .http
            .post(&start)
            .send()
            .await
            .map_err(|error| Self::failed("start a blob upload", &start, error))?;
        if response.status() != reqwest::StatusCode::ACCEPTED {
            return Err(Self::failed(
                "start a blob upload",
                &start,
                response.status(),
            ));
        }
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| Self::failed("start a blob upload", &start, "no Location"))?;
        // The location may be relative to the registry.
        let location = match reqwest::Url::parse(&start).and_then(|base| base.join(location)) {
            Ok(url) => url,
            Err(error) => return Err(Self::failed("start a blob upload", &start, error)),
        };
        let mut put = location.clone();
        put.query_pairs_mut().append_pair("digest", &digest);
        let response = self
            .http
            .put(put.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .map_err(|error| Self::failed("upload a blob", put.as_str(), error))?;
        if !response.status().is_success() {
            return Err(Self::failed(
                "upload a blob",
                put.as_str(),
                response.status(),
            ));
        }
        Ok(digest)
    }

    async fn put_manifest(&self, reference: &str, manifest: &[u8]) -> Result<(), RegistryError> {
        let url = format!("{}/manifests/{reference}", self.base);
        let response = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, OCI_MANIFEST)
            .body(manifest.to_vec())
            .send()
            .await
            .map_err(|error| Self::failed("push a manifest", &url, error))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(Self::failed(
                "push a manifest",
                &url,
                format!("{status}: {}", &body[..body.len().min(300)]),
            ));
        }
        Ok(())
    }

    /// Whether the registry answers the OCI referrers API.
    async fn has_referrers(&self, digest: &str) -> bool {
        let url = format!("{}/referrers/{digest}", self.base);
        matches!(self.http.get(&url).send().await, Ok(response) if response.status().is_success())
    }

    /// Attaches `envelope` to the manifest `tag` names; returns where it went.
    pub async fn attach(&self, tag: &str, envelope: &Envelope) -> Result<String, RegistryError> {
        let (subject_digest, subject_type, subject_bytes) = self.manifest(tag).await?;
        let payload = serde_json::to_vec(envelope).expect("an envelope serializes");
        let layer = self.push_blob(&payload).await?;
        let config = self.push_blob(b"{}").await?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": prov::ENVELOPE_MEDIA_TYPE,
            "config": {"mediaType": EMPTY_CONFIG, "digest": config, "size": 2},
            "layers": [{
                "mediaType": prov::ENVELOPE_MEDIA_TYPE,
                "digest": layer,
                "size": payload.len(),
                "annotations": {"in-toto.io/predicate-type": prov::SLSA_PROVENANCE_V1},
            }],
            "subject": {
                "mediaType": subject_type,
                "digest": subject_digest,
                "size": subject_bytes.len(),
            },
        }))
        .expect("a manifest serializes");
        if self.has_referrers(&subject_digest).await {
            let digest = sha256_digest(&manifest);
            self.put_manifest(&digest, &manifest).await?;
            Ok(format!(
                "{}@{digest} (a referrer of {subject_digest})",
                self.name
            ))
        } else {
            let tag = cosign_tag(&subject_digest);
            self.put_manifest(&tag, &manifest).await?;
            Ok(format!("{}:{tag}", self.name))
        }
    }
}

/// cosign's tag for the attestations of the manifest `digest`.
pub fn cosign_tag(digest: &str) -> String {
    format!("{}.att", digest.replace(':', "-"))
}

/// Attaches the provenance of a deployment's release images to them in the
/// registry, once its build succeeded; a failure is logged, and the release
/// still deploys (its provenance is also served by the API and sent with
/// the deploy job).
pub async fn attach_release_provenance(state: AppState, deployment_id: String) {
    let Some(registry) = state.config.registry.clone() else {
        return;
    };
    let id = deployment_id.clone();
    let found = state
        .db
        .call(move |conn| {
            let deployment = store::get_deployment(conn, &id)?;
            let signed = store::release_provenance(conn, &id)?;
            Ok::<_, crate::error::ApiError>((deployment.project_id, signed.envelopes))
        })
        .await;
    let (project_id, envelopes) = match found {
        Ok(found) => found,
        Err(error) => {
            tracing::warn!(message = "Could not read the provenance to attach.", %deployment_id, %error);
            return;
        }
    };
    let backend = kiln_protocol::release_reference(&registry, &project_id, &deployment_id);
    for (artifact, reference) in [
        (kiln_protocol::BACKEND_RELEASE, backend.clone()),
        (
            kiln_protocol::STOREFRONT_RELEASE,
            kiln_protocol::storefront_reference(&backend),
        ),
    ] {
        let Some(envelope) = envelopes.get(artifact) else {
            continue;
        };
        let Some((repository, tag)) = Repository::of(&reference) else {
            continue;
        };
        match repository.attach(&tag, envelope).await {
            Ok(at) => {
                tracing::info!(message = "Provenance attached in the registry.", %deployment_id, %at)
            }
            Err(error) => {
                tracing::warn!(message = "Could not attach provenance in the registry.", %deployment_id, %error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post, put};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    /// A registry on loopback, speaking the distribution API's parts that an
    /// attachment uses, with or without the referrers API; it keeps what it
    /// is given.
    #[derive(Clone, Default)]
    struct Stand {
        referrers: bool,
        blobs: Arc<Mutex<HashMap<String, Vec<u8>>>>,
        manifests: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    }

    async fn manifest(
        State(stand): State<Stand>,
        Path((_, reference)): Path<(String, String)>,
    ) -> Result<(HeaderMap, Vec<u8>), StatusCode> {
        let body = crate::sync::lock(&stand.manifests)
            .get(&reference)
            .cloned()
            .ok_or(StatusCode::NOT_FOUND)?;
        let mut headers = HeaderMap::new();
        headers.insert("content-type", OCI_MANIFEST.parse().unwrap());
        Ok((headers, body))
    }

    async fn put_manifest(
        State(stand): State<Stand>,
        Path((_, reference)): Path<(String, String)>,
        body: Bytes,
    ) -> StatusCode {
        crate::sync::lock(&stand.manifests).insert(reference, body.to_vec());
        StatusCode::CREATED
    }

    async fn start_upload(Path(project): Path<String>) -> (StatusCode, HeaderMap) {
        let mut headers = HeaderMap::new();
        headers.insert(
            "location",
            format!("/v2/kiln-release/{project}/blobs/uploads/u1")
                .parse()
                .unwrap(),
        );
        (StatusCode::ACCEPTED, headers)
    }

    async fn finish_upload(
        State(stand): State<Stand>,
        axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
        body: Bytes,
    ) -> StatusCode {
        let digest = query.get("digest").cloned().unwrap_or_default();
        if sha256_digest(&body) != digest {
            return StatusCode::BAD_REQUEST;
        }
        crate::sync::lock(&stand.blobs).insert(digest, body.to_vec());
        StatusCode::CREATED
    }

    async fn referrers(State(stand): State<Stand>) -> StatusCode {
        if stand.referrers {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        }
    }

    async fn serve(stand: Stand) -> String {
        let app = axum::Router::new()
            .route(
                "/v2/kiln-release/{project}/manifests/{reference}",
                get(manifest).put(put_manifest),
            )
            .route(
                "/v2/kiln-release/{project}/blobs/uploads/",
                post(start_upload),
            )
            .route(
                "/v2/kiln-release/{project}/blobs/uploads/u1",
                put(finish_upload),
            )
            .route(
                "/v2/kiln-release/{project}/referrers/{digest}",
                get(referrers),
            )
            .with_state(stand);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        address.to_string()
    }

    fn envelope() -> Envelope {
        Envelope {
            payload_type: prov::PAYLOAD_TYPE.to_owned(),
            payload: "e30=".to_owned(),
            signatures: Vec::new(),
        }
    }

    /// The release image's manifest, as the stand holds it under its tag.
    fn with_release(stand: &Stand) -> String {
        let release = br#"{"schemaVersion":2,"config":{"digest":"sha256:00"}}"#.to_vec();
        let digest = sha256_digest(&release);
        crate::sync::lock(&stand.manifests).insert("dpl_1".to_owned(), release);
        digest
    }

    #[tokio::test]
    async fn with_the_referrers_api_the_envelope_goes_by_digest_with_its_subject() {
        let stand = Stand {
            referrers: true,
            ..Default::default()
        };
        let release = with_release(&stand);
        let address = serve(stand.clone()).await;
        let (repository, tag) =
            Repository::of(&format!("{address}/kiln-release/prj_1:dpl_1")).unwrap();
        let at = repository.attach(&tag, &envelope()).await.unwrap();
        assert!(at.contains("a referrer of"), "{at}");
        let manifests = crate::sync::lock(&stand.manifests).clone();
        let (name, pushed) = manifests
            .iter()
            .find(|(name, _)| name.starts_with("sha256:"))
            .expect("pushed by digest");
        assert_eq!(&sha256_digest(pushed), name);
        assert!(!manifests.contains_key(&cosign_tag(&release)));
        let pushed: serde_json::Value = serde_json::from_slice(pushed).unwrap();
        assert_eq!(pushed["subject"]["digest"], release.as_str());
        assert_eq!(pushed["artifactType"], prov::ENVELOPE_MEDIA_TYPE);
        let layer = pushed["layers"][0]["digest"].as_str().unwrap().to_owned();
        let blob = crate::sync::lock(&stand.blobs)[&layer].clone();
        assert_eq!(
            serde_json::from_slice::<Envelope>(&blob).unwrap(),
            envelope()
        );
    }

    #[tokio::test]
    async fn without_it_the_envelope_is_tagged_as_cosign_tags_attestations() {
        let stand = Stand::default();
        let release = with_release(&stand);
        let address = serve(stand.clone()).await;
        let (repository, tag) =
            Repository::of(&format!("{address}/kiln-release/prj_1:dpl_1")).unwrap();
        let at = repository.attach(&tag, &envelope()).await.unwrap();
        assert!(at.ends_with(&cosign_tag(&release)), "{at}");
        assert!(crate::sync::lock(&stand.manifests).contains_key(&cosign_tag(&release)));
        let missing = repository.attach("dpl_2", &envelope()).await.unwrap_err();
        assert!(missing.to_string().contains("404"), "{missing}");
    }
}
