//! Log drains: each log append of a job whose environment has a drain marks
//! its stream; a task on this replica sends what the stream holds past its
//! cursor to the environment's OpenTelemetry collector (OTLP/HTTP, JSON), and
//! moves the cursor only on a 2xx. A collector that is down gets what it missed
//! when it is back, from the log files; a restart looks again at the last day's
//! jobs. Lines go as Medusa Cloud sends them: `service.name` `medusa-server`,
//! `medusa-worker`, `medusa-db-migration` or `storefront`, `service.version`
//! the commit.

use std::collections::{BTreeMap, HashMap, HashSet};

use std::io::{Read, Seek};
use std::time::{Duration, Instant};

use kiln_protocol::LogStream;
use serde_json::{json, Value};

use crate::logs::lines::{level_of, service_of};
use crate::store::{self, DrainTarget};
use crate::AppState;

/// The most of a stream sent in one request.
const BATCH_BYTES: u64 = 512 << 10;
/// The wait before a stream whose collector failed is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long a job found without a drain is not asked about again.
const UNDRAINED_FOR: Duration = Duration::from_secs(10);

/// The OpenTelemetry service a line belongs to.
fn service_name(stream: LogStream, service: Option<&str>) -> &'static str {
    match (stream, service) {
        (_, Some("worker")) => "medusa-worker",
        (_, Some("migrations")) => "medusa-db-migration",
        (_, Some("storefront")) | (LogStream::Storefront, _) => "storefront",
        (LogStream::System, _) => "kiln-build",
        (LogStream::Deploy, _) => "kiln-deploy",
        _ => "medusa-server",
    }
}

fn attribute(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

/// An OTLP/HTTP JSON `ExportLogsServiceRequest` of `text`, whose first byte is
/// at `offset` of the stream; one resource per service.
fn export_request(
    target: &DrainTarget,
    stream: LogStream,
    text: &str,
    offset: u64,
    marks: &[(u64, i64)],
) -> Value {
    let mut by_service: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    let now_nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let mut at = offset;
    for line in text.split_inclusive('\n') {
        let start = at;
        at += line.len() as u64;
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        let (service, body) = service_of(line);
        let millis = crate::logs::time_at(marks, start);
        let mut record = json!({
            "observedTimeUnixNano": now_nanos.to_string(),
            "body": {"stringValue": body},
            "attributes": [attribute("kiln.log.stream", stream.as_str())],
        });
        if let Some(millis) = millis {
            record["timeUnixNano"] = json!((millis as i128 * 1_000_000).to_string());
        }
        if let Some(level) = level_of(body) {
            record["severityText"] = json!(level.as_str().to_uppercase());
            record["severityNumber"] = json!(level.severity_number());
        }
        by_service
            .entry(service_name(stream, service))
            .or_default()
            .push(record);
    }
    let resource_logs: Vec<Value> = by_service
        .into_iter()
        .map(|(service, records)| {
            json!({
                "resource": {"attributes": [
                    attribute("service.name", service),
                    attribute("service.version", &target.commit_sha),
                    attribute("deployment.environment.name", &target.environment),
                    attribute("kiln.project.id", &target.project_id),
                    attribute("kiln.deployment.id", &target.deployment_id),
                ]},
                "scopeLogs": [{"scope": {"name": "kiln", "version": env!("CARGO_PKG_VERSION")}, "logRecords": records}],
            })
        })
        .collect();
    json!({ "resourceLogs": resource_logs })
}

/// The bytes of `path` from `from`, at most `BATCH_BYTES`, cut after the last
/// whole line unless `whole` (the job ended: its last line is all there is).
fn read_batch(path: &std::path::Path, from: u64, whole: bool) -> std::io::Result<Vec<u8>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    if file.metadata()?.len() <= from {
        return Ok(Vec::new());
    }
    file.seek(std::io::SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(BATCH_BYTES).read_to_end(&mut bytes)?;
    let full = bytes.len() as u64 == BATCH_BYTES;
    if !whole || full {
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(keep);
    }
    Ok(bytes)
}

pub async fn run(state: AppState) {
    let http = crate::outbound::client(
        state.config.allow_private_webhooks,
        "--allow-private-webhooks",
        Duration::from_secs(10),
    );
    // What was not sent before the server stopped.
    if let Ok(jobs) = state.db.call(store::recent_drained_jobs).await {
        for job in jobs {
            for stream in LogStream::ALL {
                state.drains.mark((job.clone(), stream));
            }
        }
    }
    // Streams whose collector failed, and when they are tried again.
    let mut failing: HashMap<(String, LogStream), Instant> = HashMap::new();
    let mut undrained: HashMap<String, Instant> = HashMap::new();
    loop {
        let woken = state.drains.marked();
        let mut pending: HashSet<(String, LogStream)> = state.drains.take();
        let now = Instant::now();
        failing.retain(|key, until| {
            let due = *until <= now;
            if due {
                pending.insert(key.clone());
            }
            !due
        });
        pending.retain(|key| !failing.contains_key(key));
        // Most jobs' environments drain nothing: asked again only after a while.
        undrained.retain(|_, seen| seen.elapsed() < UNDRAINED_FOR);
        pending.retain(|(job_id, _)| !undrained.contains_key(job_id));
        for (job_id, stream) in pending {
            match drain_stream(&state, &http, &job_id, stream).await {
                Ok(Drained::More) => state.drains.mark((job_id.clone(), stream)),
                Ok(Drained::AllSent) => {}
                Ok(Drained::NoDrain) => {
                    undrained.insert(job_id, Instant::now());
                }
                Err(error) => {
                    tracing::warn!(message = "A log drain did not take a job's log; it is tried again.", %job_id, %stream, %error);
                    failing.insert((job_id, stream), Instant::now() + RETRY_AFTER);
                }
            }
        }
        let wait = failing
            .values()
            .min()
            .map_or(Duration::from_secs(60), |until| {
                until.saturating_duration_since(Instant::now())
            });
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(wait) => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
}

/// What sending a stream's next batch came to.
enum Drained {
    /// More may remain.
    More,
    AllSent,
    /// The job's environment has no drain.
    NoDrain,
}

/// Sends one batch of a stream.
async fn drain_stream(
    state: &AppState,
    http: &reqwest::Client,
    job_id: &str,
    stream: LogStream,
) -> Result<Drained, String> {
    let id = job_id.to_owned();
    let Some(target) = state
        .db
        .call(move |conn| store::drain_target(conn, &id, stream))
        .await
        .map_err(|error| error.to_string())?
    else {
        return Ok(Drained::NoDrain);
    };
    state
        .logs
        .pull(job_id, stream)
        .await
        .map_err(|error| error.to_string())?;
    let path = state.logs.path(job_id, stream);
    let (from, whole) = (target.sent, target.job_finished);
    let bytes = tokio::task::spawn_blocking(move || read_batch(&path, from, whole))
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())?;
    if bytes.is_empty() {
        return Ok(Drained::AllSent);
    }
    let marks = state.logs.marks(job_id, stream).await;
    let text = String::from_utf8_lossy(&bytes);
    let body = export_request(&target, stream, &text, from, &marks);
    let url = format!(
        "{}/v1/logs",
        target.drain.otlp_endpoint.trim_end_matches('/')
    );
    if !state.config.allow_private_webhooks && crate::outbound::names_private_address(&url) {
        return Err(format!("{url} is a loopback, link-local or private address; log drains go there only when the server runs with --allow-private-webhooks"));
    }
    let mut request = http.post(&url).json(&body);
    for (name, value) in &target.drain.headers {
        request = request.header(name, value);
    }
    let response = request
        .send()
        .await
        .map_err(|error| format!("no answer from {url}: {error}"))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let to = from + bytes.len() as u64;
    let (id, moved_from) = (job_id.to_owned(), from);
    state
        .db
        .call(move |conn| store::advance_drain_cursor(conn, &id, stream, moved_from, to))
        .await
        .map_err(|error| error.to_string())?;
    Ok(Drained::More)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_go_to_their_service_with_time_and_severity() {
        let target = DrainTarget {
            drain: kiln_protocol::LogDrain {
                otlp_endpoint: "http://collector:4318".to_owned(),
                headers: BTreeMap::new(),
            },
            deployment_id: "dpl_1".to_owned(),
            project_id: "prj_1".to_owned(),
            environment: "Production".to_owned(),
            commit_sha: "0123abc".to_owned(),
            job_finished: false,
            sent: 0,
        };
        let text = "server | info:    Server is ready\nworker | error:   job failed\n";
        let request = export_request(
            &target,
            LogStream::Runtime,
            text,
            100,
            &[(100, 1_700_000_000_000)],
        );
        let resources = request["resourceLogs"].as_array().unwrap();
        let names: Vec<&str> = resources
            .iter()
            .map(|r| {
                r["resource"]["attributes"][0]["value"]["stringValue"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(names, ["medusa-server", "medusa-worker"]);
        assert_eq!(
            resources[0]["resource"]["attributes"][1]["value"]["stringValue"],
            "0123abc"
        );
        let worker = &resources[1]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(worker["body"]["stringValue"], "error:   job failed");
        assert_eq!(worker["severityNumber"], 17);
        assert_eq!(worker["timeUnixNano"], "1700000000000000000");
        assert_eq!(
            service_name(LogStream::Deploy, Some("migrations")),
            "medusa-db-migration"
        );
        assert_eq!(service_name(LogStream::Storefront, None), "storefront");
    }

    #[test]
    fn a_batch_ends_at_a_whole_line_until_the_job_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backend.log");
        std::fs::write(&path, "one\ntwo\nthr").unwrap();
        assert_eq!(read_batch(&path, 0, false).unwrap(), b"one\ntwo\n");
        assert_eq!(read_batch(&path, 4, true).unwrap(), b"two\nthr");
        assert!(read_batch(&path, 11, true).unwrap().is_empty());
        assert!(read_batch(&dir.path().join("none"), 0, true)
            .unwrap()
            .is_empty());
    }
}
