//! The agent's HTTP client for the control plane's `/api/v1/agent` endpoints.
//!
//! It only speaks the protocol; retries, backoff and what to do on failure belong
//! to the callers, which know whether a call may be repeated.

use std::path::Path;
use std::time::Duration;

use kiln_protocol::{
    codes, format_log_times, ArtifactDescriptor, ArtifactUploadTicket, ClaimRequest, ErrorEnvelope,
    Job, JobControl, JobStatusUpdate, LogAppendResponse, LogStream, RegisterAgentRequest,
    RegisterAgentResponse, WatchRequest, API_PREFIX, SHA256_HEADER,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::backoff::Backoff;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("control plane at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the control plane refused this agent's token: {message}; re-register with `kiln-agent register`")]
    Unauthorized { message: String },
    #[error("control plane answered {status} ({code}): {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        expected_offset: Option<u64>,
    },
    #[error("control plane sent a malformed {what}: {reason}")]
    Malformed {
        what: &'static str,
        reason: String,
        /// The job id, when a malformed job payload still carried one.
        job_id: Option<String>,
    },
    #[error("cannot read {path} for upload: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
}

/// reqwest's message alone ("error sending request") hides the cause; the chain
/// says it ("connection refused").
fn unreachable(url: &str, error: reqwest::Error) -> ClientError {
    let error = error.without_url();
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    ClientError::Unreachable {
        url: url.to_owned(),
        reason,
    }
}

impl ClientError {
    /// Worth trying again later: the network, a restarting server, overload.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// A call that kept failing: the last error, and how many tries were made.
#[derive(Debug)]
pub struct GaveUp {
    pub error: ClientError,
    pub attempts: u32,
}

/// Calls `attempt` until it succeeds, fails for good, or fails transiently after
/// `limit` has passed. Before each retry, `on_retry` hears the error and the pause.
pub async fn retry_transient<T, Fut>(
    limit: Duration,
    mut backoff: Backoff,
    mut attempt: impl FnMut() -> Fut,
    mut on_retry: impl FnMut(&ClientError, Duration),
) -> Result<T, GaveUp>
where
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_transient() && tokio::time::Instant::now() < deadline => {
                let pause = backoff.next_delay();
                on_retry(&error, pause);
                tokio::time::sleep(pause).await;
            }
            Err(error) => return Err(GaveUp { error, attempts }),
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Outcome of a log append: accepted up to an offset, or the server expects another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Upto(u64),
    Expected(u64),
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("kiln-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("TLS backend initialises")
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The most of a control plane's answer the agent reads: a job with its
/// variables is far less; a server (or something posing as one) that sends
/// more is refused, not buffered.
const MAX_ANSWER: usize = 16 << 20;
/// The most of an error's answer read.
const MAX_ERROR_ANSWER: usize = 64 << 10;

/// Reads an answer's body, at most `limit` bytes.
async fn read_capped(
    url: &str,
    mut response: reqwest::Response,
    limit: usize,
    what: &'static str,
) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(url, e))? {
        if body.len() + chunk.len() > limit {
            return Err(ClientError::Malformed {
                what,
                reason: format!("the answer is longer than {limit} bytes"),
                job_id: None,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn decode_error(url: &str, response: reqwest::Response) -> ClientError {
    let status = response.status();
    // Past the cap, the start is enough to say what went wrong.
    let mut response = response;
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk[..chunk.len().min(MAX_ERROR_ANSWER - body.len())]);
        if body.len() >= MAX_ERROR_ANSWER {
            break;
        }
    }
    let (code, message, expected_offset) = match serde_json::from_slice::<ErrorEnvelope>(&body) {
        Ok(envelope) => (
            envelope.error.code,
            envelope.error.message,
            envelope.error.expected_offset,
        ),
        Err(_) => (
            "unknown".to_owned(),
            format!(
                "{} from {url}: {}",
                status,
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ),
            None,
        ),
    };
    if status == StatusCode::UNAUTHORIZED {
        return ClientError::Unauthorized { message };
    }
    ClientError::Api {
        status: status.as_u16(),
        code,
        message,
        expected_offset,
    }
}

impl Client {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            http: http_client(),
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Exchanges the registration token for this agent's own token.
    pub async fn register(
        base: &str,
        request: &RegisterAgentRequest,
    ) -> Result<RegisterAgentResponse, ClientError> {
        let url = format!("{}{API_PREFIX}/agents/register", base.trim_end_matches('/'));
        // The token goes in the header, which the server checks before it reads
        // a body; the body keeps it too, for older servers.
        let response = http_client()
            .post(&url)
            .timeout(Duration::from_secs(30))
            .bearer_auth(&request.registration_token)
            .json(request)
            .send()
            .await
            .map_err(|e| unreachable(&url, e))?;
        if !response.status().is_success() {
            return Err(decode_error(&url, response).await);
        }
        Self::decode(&url, response, "registration answer").await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }

    /// `/agent/jobs/{job_id}{rest}`, the id percent-encoded: it came from the
    /// control plane and must stay one path segment whatever it holds.
    fn job_url(&self, job_id: &str, rest: &str) -> String {
        self.url(&format!("/agent/jobs/{}{rest}", path_segment(job_id)))
    }

    async fn send(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let result = match request.bearer_auth(&self.token).send().await {
            Err(error) => Err(unreachable(url, error)),
            Ok(response) if response.status().is_success() => Ok(response),
            Ok(response) => Err(decode_error(url, response).await),
        };
        let metrics = crate::metrics::metrics();
        match &result {
            Err(error) if error.is_transient() => metrics.control_plane_failed(&error.to_string()),
            _ => metrics.control_plane_answered(),
        }
        result
    }

    async fn decode<T: DeserializeOwned>(
        url: &str,
        response: reqwest::Response,
        what: &'static str,
    ) -> Result<T, ClientError> {
        let body = read_capped(url, response, MAX_ANSWER, what).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Malformed {
            what,
            reason: e.to_string(),
            job_id: None,
        })
    }

    /// Long-polls for a job; `Ok(None)` when none came within `wait`.
    pub async fn claim(
        &self,
        wait: Duration,
        facts: Option<kiln_protocol::HostFacts>,
        holding_back: Option<String>,
        roles: &[kiln_protocol::Role],
    ) -> Result<Option<Job>, ClientError> {
        let url = self.url("/agent/jobs/claim");
        let request = self
            .http
            .post(&url)
            .timeout(wait + Duration::from_secs(15))
            .json(&ClaimRequest {
                wait_seconds: Some(wait.as_secs()),
                facts,
                holding_back,
                roles: roles.to_vec(),
            });
        let response = self.send(&url, request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            // A paused agent (or one holding back) is answered at once, with
            // when to ask again.
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok());
            if let Some(seconds) = retry_after {
                tokio::time::sleep(Duration::from_secs(seconds.min(60))).await;
            }
            return Ok(None);
        }
        let body = read_capped(&url, response, MAX_ANSWER, "job payload").await?;
        // Parse in two steps so a malformed job can still be failed by its id.
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ClientError::Malformed {
                what: "job payload",
                reason: e.to_string(),
                job_id: None,
            })?;
        let job_id = value
            .get("job_id")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| ClientError::Malformed {
                what: "job payload",
                reason: e.to_string(),
                job_id,
            })
    }

    /// Which of `environment_ids` (whose releases this host runs) are gone.
    pub async fn removed_environments(
        &self,
        environment_ids: Vec<String>,
    ) -> Result<Vec<String>, ClientError> {
        let url = self.url("/agent/environments/removed");
        let request = self
            .http
            .post(&url)
            .timeout(Duration::from_secs(30))
            .json(&kiln_protocol::RemovedEnvironments { environment_ids });
        let response = self.send(&url, request).await?;
        let answer: kiln_protocol::RemovedEnvironments =
            Self::decode(&url, response, "removed environments").await?;
        Ok(answer.environment_ids)
    }

    /// Renews the lease; returns early when the job is canceled.
    pub async fn watch(&self, job_id: &str, wait: Duration) -> Result<JobControl, ClientError> {
        let url = self.job_url(job_id, "/watch");
        let request = self
            .http
            .post(&url)
            .timeout(wait + Duration::from_secs(15))
            .json(&WatchRequest {
                wait_seconds: Some(wait.as_secs()),
            });
        let response = self.send(&url, request).await?;
        Self::decode(&url, response, "job control").await
    }

    pub async fn report(&self, job_id: &str, update: &JobStatusUpdate) -> Result<(), ClientError> {
        let url = self.job_url(job_id, "/status");
        let request = self
            .http
            .post(&url)
            .timeout(Duration::from_secs(30))
            .json(update);
        self.send(&url, request).await.map(drop)
    }

    /// Tells the control plane which cache entries the job published, for the
    /// provenance of the builds that restore them.
    pub async fn report_cache_entries(
        &self,
        job_id: &str,
        entries: Vec<kiln_protocol::provenance::PublishedEntry>,
    ) -> Result<(), ClientError> {
        let url = self.job_url(job_id, "/cache-entries");
        let request = self
            .http
            .post(&url)
            .timeout(Duration::from_secs(30))
            .json(&kiln_protocol::provenance::PublishedEntries { entries });
        self.send(&url, request).await.map(drop)
    }

    /// The control plane's provenance public keys, to verify a release with.
    pub async fn provenance_keys(
        &self,
    ) -> Result<Vec<kiln_protocol::provenance::PublicKey>, ClientError> {
        let url = self.url("/provenance/keys");
        let request = self.http.get(&url).timeout(Duration::from_secs(30));
        let response = self.send(&url, request).await?;
        let keys: kiln_protocol::provenance::PublicKeys =
            Self::decode(&url, response, "provenance keys").await?;
        Ok(keys.keys)
    }

    pub async fn append_log(
        &self,
        job_id: &str,
        stream: LogStream,
        offset: u64,
        data: bytes::Bytes,
        marks: &[(u64, i64)],
    ) -> Result<Appended, ClientError> {
        let url = self.job_url(job_id, &format!("/logs/{stream}?offset={offset}"));
        let mut request = self
            .http
            .put(&url)
            .timeout(Duration::from_secs(30))
            .body(data);
        if !marks.is_empty() {
            request = request.header(kiln_protocol::LOG_TIMES_HEADER, format_log_times(marks));
        }
        match self.send(&url, request).await {
            Ok(response) => {
                let answer: LogAppendResponse =
                    Self::decode(&url, response, "log append answer").await?;
                Ok(Appended::Upto(answer.next_offset))
            }
            Err(ClientError::Api {
                code,
                expected_offset: Some(expected),
                ..
            }) if code == codes::LOG_OFFSET_GAP => Ok(Appended::Expected(expected)),
            Err(e) => Err(e),
        }
    }

    pub async fn request_upload(
        &self,
        job_id: &str,
        descriptor: &ArtifactDescriptor,
    ) -> Result<ArtifactUploadTicket, ClientError> {
        let url = self.job_url(job_id, "/artifacts");
        let request = self
            .http
            .post(&url)
            .timeout(Duration::from_secs(30))
            .json(descriptor);
        let response = self.send(&url, request).await?;
        Self::decode(&url, response, "upload ticket").await
    }

    /// Streams a deploy job's release image (`url`, relative to the control
    /// plane) to `out`; refused unless its size and sha256 are as the job says.
    pub async fn download(
        &self,
        release: &kiln_protocol::ReleaseImage,
        out: &Path,
    ) -> Result<(), ClientError> {
        let url = format!("{}{}", self.base, release.url);
        let (_, size, sha256) = self.download_to(&url, out, release.size).await?;
        if size != release.size || sha256 != release.sha256 {
            return Err(ClientError::Malformed {
                what: "release image",
                reason: format!(
                    "{} came as {size} bytes with sha256 {sha256}; the job says {} bytes with sha256 {}",
                    release.name, release.size, release.sha256
                ),
                job_id: None,
            });
        }
        Ok(())
    }

    /// Streams `url`'s body into `out`, hashing it, stopping past `limit`
    /// bytes; returns the answer's headers, the size and the sha256.
    async fn download_to(
        &self,
        url: &str,
        out: &Path,
        limit: u64,
    ) -> Result<(reqwest::header::HeaderMap, u64, String), ClientError> {
        use sha2::Digest;
        use tokio::io::AsyncWriteExt;
        let request = self.http.get(url);
        let mut response = self.send(url, request).await?;
        let write_error = |source| ClientError::ReadFile {
            path: out.display().to_string(),
            source,
        };
        let mut file = tokio::fs::File::create(out).await.map_err(write_error)?;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(url, e))? {
            size += chunk.len() as u64;
            if size > limit {
                break;
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(write_error)?;
        }
        file.flush().await.map_err(write_error)?;
        Ok((
            response.headers().clone(),
            size,
            hex::encode(hasher.finalize()),
        ))
    }

    /// An output another host's build published that this job may reuse,
    /// fetched into `out` and held to the sha256 the control plane recorded
    /// for it; `Ok(None)` when there is none.
    pub async fn shared_output(
        &self,
        job_id: &str,
        component: &str,
        key: &str,
        out: &Path,
        limit: u64,
    ) -> Result<Option<crate::pipeline::FetchedOutput>, ClientError> {
        use kiln_protocol::provenance::{CACHE_JOB_HEADER, CACHE_SCOPE_HEADER};
        let url = self.job_url(
            job_id,
            &format!(
                "/cache/outputs/{}/{}",
                path_segment(component),
                path_segment(key)
            ),
        );
        let (headers, size, sha256) = match self.download_to(&url, out, limit).await {
            Ok(fetched) => fetched,
            Err(ClientError::Api { status: 404, .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let recorded = header(kiln_protocol::SHA256_HEADER);
        if size > limit || sha256 != recorded {
            let _ = tokio::fs::remove_file(out).await;
            return Err(ClientError::Malformed {
                what: "shared output",
                reason: format!(
                    "it came as {size} bytes with sha256 {sha256}; the control plane recorded {recorded}"
                ),
                job_id: Some(job_id.to_owned()),
            });
        }
        Ok(Some(crate::pipeline::FetchedOutput {
            size,
            sha256,
            published_by_job: header(CACHE_JOB_HEADER),
            scope: header(CACHE_SCOPE_HEADER),
        }))
    }

    /// Streams a file to an upload URL, with its length and sha256 in the headers.
    pub async fn upload(
        &self,
        ticket: &ArtifactUploadTicket,
        descriptor: &ArtifactDescriptor,
        path: &Path,
    ) -> Result<(), ClientError> {
        let url = if ticket.upload_url.starts_with("http://")
            || ticket.upload_url.starts_with("https://")
        {
            ticket.upload_url.clone()
        } else {
            format!("{}{}", self.base, ticket.upload_url)
        };
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| ClientError::ReadFile {
                path: path.display().to_string(),
                source,
            })?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            256 * 1024,
        ));
        // The URL authorises itself (like a presigned URL): no bearer token is sent.
        let response = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_LENGTH, descriptor.size)
            .header(SHA256_HEADER, &descriptor.sha256)
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(&url, e))?;
        if response.status().is_success() {
            crate::metrics::metrics()
                .artifact_bytes
                .inc_by(descriptor.size);
            Ok(())
        } else {
            Err(decode_error(&url, response).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn away() -> ClientError {
        ClientError::Unreachable {
            url: "http://127.0.0.1:1".to_owned(),
            reason: "connection refused".to_owned(),
        }
    }

    fn fast() -> Backoff {
        Backoff::new(Duration::from_millis(1), Duration::from_millis(2))
    }

    #[test]
    fn job_ids_stay_one_path_segment() {
        assert_eq!(path_segment("job_01ab"), "job_01ab");
        assert_eq!(path_segment("../../x y"), "..%2F..%2Fx%20y");
    }

    #[tokio::test]
    async fn retries_while_away_and_stops_at_a_refusal_or_the_limit() {
        let mut calls = 0;
        let mut heard = 0;
        let answer = retry_transient(
            Duration::from_secs(60),
            fast(),
            || {
                calls += 1;
                let result = if calls < 3 { Err(away()) } else { Ok(calls) };
                async move { result }
            },
            |_, _| heard += 1,
        )
        .await;
        assert_eq!(answer.unwrap(), 3);
        assert_eq!(heard, 2);

        let refused = retry_transient(
            Duration::from_secs(60),
            fast(),
            || async {
                Err::<(), _>(ClientError::Unauthorized {
                    message: "revoked".to_owned(),
                })
            },
            |_, _| panic!("a refusal is not retried"),
        )
        .await
        .unwrap_err();
        assert_eq!(refused.attempts, 1);

        let timed_out = retry_transient(
            Duration::from_millis(20),
            fast(),
            || async { Err::<(), _>(away()) },
            |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(timed_out.error.is_transient());
        assert!(timed_out.attempts > 1);
    }

    /// A control plane on loopback that answers every request with `answer`
    /// (a whole HTTP/1.1 response), as a hostile or broken one might.
    async fn answering(answer: String) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://{address}")
    }

    fn output_answer(sha256: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{}: {sha256}\r\n{}: job_1\r\n{}: branch:main\r\nconnection: close\r\n\r\n{body}",
            body.len(),
            kiln_protocol::SHA256_HEADER,
            kiln_protocol::provenance::CACHE_JOB_HEADER,
            kiln_protocol::provenance::CACHE_SCOPE_HEADER,
        )
    }

    /// A shared output is taken only whole and as recorded: another sha256
    /// or more bytes than the limit fails and leaves no file; a 404 is none.
    #[tokio::test]
    async fn a_shared_output_is_held_to_its_recorded_sha256_and_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("backend.tar.gz");
        let fetch = |base: String, limit: u64| {
            let out = out.clone();
            async move {
                Client::new(&base, "token")
                    .shared_output("job_2", "backend", "k1", &out, limit)
                    .await
            }
        };
        let body = "the output";
        let good = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
        let fetched = fetch(answering(output_answer(&good, body)).await, 1024)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                fetched.sha256.as_str(),
                fetched.published_by_job.as_str(),
                fetched.scope.as_str()
            ),
            (good.as_str(), "job_1", "branch:main")
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap(), body);

        let lying = fetch(answering(output_answer(&"0".repeat(64), body)).await, 1024).await;
        assert!(
            matches!(&lying, Err(ClientError::Malformed { reason, .. }) if reason.contains("recorded")),
            "{lying:?}"
        );
        assert!(!out.exists(), "nothing of it stays");
        let too_big = fetch(answering(output_answer(&good, body)).await, 4).await;
        assert!(too_big.is_err(), "{too_big:?}");
        assert!(!out.exists());

        let missing = r#"{"error":{"code":"not_found","message":"cache output k1 not found"}}"#;
        let none = fetch(
            answering(format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{missing}",
                missing.len()
            ))
            .await,
            1024,
        )
        .await;
        assert!(matches!(none, Ok(None)), "{none:?}");
    }
}
