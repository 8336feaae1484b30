//! Reading one log stream of a deployment from an offset, whole or followed
//! live until the deployment can log no more: the body of the API's
//! `GET /deployments/{id}/logs/{stream}` and of the dashboard's raw log.

use std::pin::pin;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use kiln_protocol::LogStream;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::plain::PlainText;
use super::Stamper;
use crate::error::ApiError;
use crate::store;
use crate::{AppState, Wait};

/// Most bytes one read of a log sends.
const LOG_READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LogQuery {
    #[serde(default)]
    pub(crate) offset: u64,
    #[serde(default)]
    pub(crate) follow: bool,
    /// Prefix each line with the time it was written.
    #[serde(default)]
    timestamps: bool,
    /// Plain text: ANSI escape sequences taken out.
    #[serde(default)]
    pub(crate) plain: bool,
    job: Option<String>,
}

/// A deployment's log stream as a body: from an offset, followed live or not.
pub(crate) async fn log_body(
    state: &AppState,
    deployment_id: String,
    stream: LogStream,
    query: LogQuery,
    client: Option<std::net::IpAddr>,
) -> Result<Body, ApiError> {
    let slot = match query.follow {
        true => Some(state.follows.take(client)?),
        false => None,
    };
    let (id, job) = (deployment_id.clone(), query.job.clone());
    let job = state
        .db
        .call(move |conn| store::job_for_logs(conn, &id, job.as_deref(), stream))
        .await?;
    let reader = LogReader {
        state: state.clone(),
        deployment_id,
        job_id: job.map(|job| job.id),
        stream,
        offset: query.offset,
        follow: query.follow,
        looked_after_end: false,
        stamper: query.timestamps.then(|| Stamper::new(Vec::new())),
        plain: query.plain.then(PlainText::default),
        _slot: slot,
    };
    Ok(Body::from_stream(futures::stream::unfold(
        reader,
        |mut reader| async move {
            match reader.next_chunk().await {
                Ok(Some(bytes)) => Some((Ok::<_, std::io::Error>(bytes), reader)),
                Ok(None) => None,
                Err(error) => Some((Err(std::io::Error::other(error.to_string())), reader)),
            }
        },
    )))
}

/// Reads one log stream from an offset, and with `follow` waits for more until the
/// job has ended and everything it sent has been read.
struct LogReader {
    state: AppState,
    deployment_id: String,
    job_id: Option<String>,
    stream: LogStream,
    offset: u64,
    follow: bool,
    looked_after_end: bool,
    stamper: Option<Stamper>,
    plain: Option<PlainText>,
    /// A follow's slot, held while its body is read.
    _slot: Option<crate::follows::FollowSlot>,
}

impl LogReader {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            let mut appended = pin!(self.state.logs.appended.notified());
            appended.as_mut().enable();
            let mut changed = pin!(self.state.changes.notified());
            changed.as_mut().enable();
            if self.job_id.is_none() {
                let (id, stream) = (self.deployment_id.clone(), self.stream);
                self.job_id = self
                    .state
                    .db
                    .call(move |conn| store::job_for_logs(conn, &id, None, stream))
                    .await?
                    .map(|job| job.id);
            }
            if let Some(job_id) = &self.job_id {
                self.state.logs.pull(job_id, self.stream).await?;
                let chunk =
                    read_at(&self.state.logs.path(job_id, self.stream), self.offset).await?;
                if !chunk.is_empty() {
                    let start = self.offset;
                    self.offset += chunk.len() as u64;
                    let chunk = match &mut self.stamper {
                        Some(stamper) => {
                            // Marks arrive with the bytes, so they are read as fresh.
                            stamper.set_marks(self.state.logs.marks(job_id, self.stream).await);
                            Bytes::from(stamper.stamp_chunk(start, &chunk))
                        }
                        None => chunk,
                    };
                    return Ok(Some(match &mut self.plain {
                        Some(plain) => Bytes::from(plain.strip(&chunk)),
                        None => chunk,
                    }));
                }
            }
            if !self.follow || self.looked_after_end {
                return Ok(None);
            }
            if log_ended(
                &self.state,
                &self.deployment_id,
                self.job_id.as_deref(),
                self.stream,
            )
            .await?
            {
                // One more read: bytes may have landed between the read and the check.
                self.looked_after_end = true;
                continue;
            }
            let _parked = self.state.park(Wait::Follow);
            tokio::select! {
                _ = appended => {}
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.state.shutdown.cancelled() => return Ok(None),
            }
        }
    }
}

/// Whether a deployment's log can grow no more: its job has ended, or, never
/// claimed, the deployment ended without a build (canceled while queued). The
/// runtime stream grows while the deployment is live, after its job ended.
pub(crate) async fn log_ended(
    state: &AppState,
    deployment_id: &str,
    job_id: Option<&str>,
    stream: LogStream,
) -> Result<bool, ApiError> {
    if stream == LogStream::Runtime {
        let id = deployment_id.to_owned();
        let deployment = state
            .db
            .call(move |conn| store::get_deployment(conn, &id))
            .await?;
        if matches!(
            deployment.status,
            kiln_protocol::DeploymentStatus::Live | kiln_protocol::DeploymentStatus::Deploying
        ) {
            return Ok(false);
        }
    }
    let Some(job_id) = job_id.map(str::to_owned) else {
        let id = deployment_id.to_owned();
        let deployment = state
            .db
            .call(move |conn| store::get_deployment(conn, &id))
            .await?;
        return Ok(!deployment.status.is_build_pending());
    };
    let job = state
        .db
        .call(move |conn| store::get_job(conn, &job_id))
        .await?;
    Ok(job.finished)
}

async fn read_at(path: &std::path::Path, offset: u64) -> Result<Bytes, ApiError> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Bytes::new()),
        Err(e) => return Err(e.into()),
    };
    // Past the end there is nothing yet; a seek there may fail (past the file
    // system's largest file) after the answer's status went out.
    if offset >= file.metadata().await?.len() {
        return Ok(Bytes::new());
    }
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = Vec::with_capacity(LOG_READ_CHUNK);
    (&mut file)
        .take(LOG_READ_CHUNK as u64)
        .read_to_end(&mut buf)
        .await?;
    Ok(Bytes::from(buf))
}
