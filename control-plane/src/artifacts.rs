//! Artifact storage under `<data>/artifacts/<deployment>/<job>/<name>`.
//!
//! An upload streams to a temporary file while it is hashed, and is renamed into
//! place only when its size and sha256 match what the agent declared. Nothing is
//! held in memory beyond one body frame.

use std::path::PathBuf;

use axum::body::Body;
use futures::StreamExt;
use kiln_protocol::ArtifactDescriptor;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;

#[derive(Debug)]
pub struct ArtifactStore {
    root: PathBuf,
    /// Where artifacts really are when replicas share them; `root` then holds
    /// this replica's copies.
    objects: Option<crate::objects::Objects>,
}

fn object_key(deployment_id: &str, job_id: &str, name: &str) -> String {
    format!("artifacts/{deployment_id}/{job_id}/{name}")
}

pub fn validate_descriptor(descriptor: &ArtifactDescriptor, max_size: u64) -> Result<(), ApiError> {
    let name_ok = !descriptor.name.is_empty()
        && descriptor.name.len() <= 64
        && !descriptor.name.starts_with('.')
        && descriptor
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !name_ok {
        return Err(ApiError::invalid_field(
            "name",
            format!(
                "{:?} must be 1-64 characters of [a-z0-9._-], not starting with a dot",
                descriptor.name
            ),
        ));
    }
    let sha_ok = descriptor.sha256.len() == 64
        && descriptor
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !sha_ok {
        return Err(ApiError::invalid_field(
            "sha256",
            "must be 64 lowercase hex characters",
        ));
    }
    if descriptor.size > max_size {
        return Err(ApiError::invalid_field(
            "size",
            format!(
                "{} bytes exceeds the server's limit of {max_size}",
                descriptor.size
            ),
        ));
    }
    Ok(())
}

impl ArtifactStore {
    pub fn new(root: PathBuf, objects: Option<crate::objects::Objects>) -> Self {
        Self { root, objects }
    }

    /// The artifact's file on this replica's disk, fetched from the object store
    /// first if another replica received it.
    pub async fn local(
        &self,
        deployment_id: &str,
        job_id: &str,
        name: &str,
    ) -> Result<PathBuf, ApiError> {
        let path = self.path(deployment_id, job_id, name);
        if let Some(objects) = &self.objects {
            if tokio::fs::metadata(&path).await.is_err() {
                objects
                    .download(&object_key(deployment_id, job_id, name), &path)
                    .await?;
            }
        }
        Ok(path)
    }

    /// Deletes a deployment's artifacts from the object store, if there is one.
    pub async fn remove_shared(&self, removed: &crate::store::RemovedArtifacts) {
        if let Some(objects) = &self.objects {
            let keys: Vec<String> = removed
                .artifacts
                .iter()
                .map(|(job_id, name)| object_key(&removed.deployment_id, job_id, name))
                .collect();
            objects.delete_all(&keys).await;
        }
    }

    /// Deletes a deployment's artifacts (every job's) from this replica's disk;
    /// those not there count as deleted.
    pub async fn remove_local(&self, deployment_id: &str) -> std::io::Result<()> {
        remove_dir_if_there(&self.root.join(deployment_id)).await
    }

    pub fn path(&self, deployment_id: &str, job_id: &str, name: &str) -> PathBuf {
        self.root.join(deployment_id).join(job_id).join(name)
    }

    /// Streams `body` to disk and keeps it only if it is exactly `descriptor`. A
    /// stored file is never replaced: the same bytes again are a no-op, other
    /// bytes are refused.
    pub async fn receive(
        &self,
        deployment_id: &str,
        job_id: &str,
        descriptor: &ArtifactDescriptor,
        body: Body,
    ) -> Result<PathBuf, ApiError> {
        let tmp_dir = self.root.join(".incoming");
        tokio::fs::create_dir_all(&tmp_dir).await?;
        let tmp = tmp_dir.join(uuid::Uuid::new_v4().simple().to_string());
        let result = self.write_verified(&tmp, descriptor, body).await;
        let result = match result {
            Ok(()) => self.publish(&tmp, deployment_id, job_id, descriptor).await,
            Err(error) => Err(error),
        };
        // In the object store before the upload is answered (and recorded), so
        // every replica can serve and deploy it.
        let result = match (result, &self.objects) {
            (Ok(path), Some(objects)) => objects
                .upload(&object_key(deployment_id, job_id, &descriptor.name), &path)
                .await
                .map(|()| path),
            (result, _) => result,
        };
        let _ = tokio::fs::remove_file(&tmp).await;
        result
    }

    /// Links the verified upload into place, never over an existing file.
    async fn publish(
        &self,
        tmp: &PathBuf,
        deployment_id: &str,
        job_id: &str,
        descriptor: &ArtifactDescriptor,
    ) -> Result<PathBuf, ApiError> {
        let dest = self.path(deployment_id, job_id, &descriptor.name);
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        match tokio::fs::hard_link(tmp, &dest).await {
            Ok(()) => Ok(dest),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                let stored = dest.clone();
                let same =
                    tokio::task::spawn_blocking(move || crate::secrets::sha256_file(&stored))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .is_some_and(|sha256| sha256 == descriptor.sha256);
                if same {
                    Ok(dest)
                } else {
                    Err(ApiError::ArtifactExists {
                        job_id: job_id.to_owned(),
                        name: descriptor.name.clone(),
                    })
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn write_verified(
        &self,
        tmp: &PathBuf,
        descriptor: &ArtifactDescriptor,
        body: Body,
    ) -> Result<(), ApiError> {
        let mut file = tokio::fs::File::create(tmp).await?;
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let mut stream = body.into_data_stream();
        while let Some(frame) = stream.next().await {
            let frame = frame.map_err(|e| {
                ApiError::InvalidBody(format!("upload of {} broke off: {e}", descriptor.name))
            })?;
            received += frame.len() as u64;
            if received > descriptor.size {
                return Err(ApiError::ArtifactSize {
                    name: descriptor.name.clone(),
                    declared: descriptor.size,
                    received,
                });
            }
            hasher.update(&frame);
            file.write_all(&frame).await?;
        }
        if received != descriptor.size {
            return Err(ApiError::ArtifactSize {
                name: descriptor.name.clone(),
                declared: descriptor.size,
                received,
            });
        }
        let actual = hex::encode(hasher.finalize());
        if actual != descriptor.sha256 {
            return Err(ApiError::ArtifactChecksum {
                name: descriptor.name.clone(),
                declared: descriptor.sha256.clone(),
                actual,
            });
        }
        file.sync_all().await?;
        Ok(())
    }
}

/// `remove_dir_all`, with a directory already gone counted as removed.
pub(crate) async fn remove_dir_if_there(dir: &std::path::Path) -> std::io::Result<()> {
    match tokio::fs::remove_dir_all(dir).await {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// A stored artifact's bytes, with its size and sha256 in the headers: the API's
/// download and the dashboard's.
pub(crate) async fn serve_artifact(
    db: &crate::db::Db,
    artifacts: &ArtifactStore,
    deployment_id: String,
    name: String,
) -> Result<axum::response::Response, ApiError> {
    use axum::http::header;
    use axum::response::IntoResponse;
    let (id, artifact_name) = (deployment_id.clone(), name.clone());
    let artifact = db
        .call(move |conn| crate::store::artifact(conn, &id, &artifact_name))
        .await?;
    let path = artifacts
        .local(&deployment_id, &artifact.job_id, &name)
        .await?;
    let file = tokio::fs::File::open(&path).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, artifact.descriptor.size.to_string()),
            (
                header::HeaderName::from_static(kiln_protocol::SHA256_HEADER),
                artifact.descriptor.sha256.clone(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}
