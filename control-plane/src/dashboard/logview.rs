//! The log viewer's side on the server: windows of lines by number (so a 200 MB
//! log opens at its tail without being sent), each line's time, search over the
//! whole log, the outline of steps and sections, the raw log, and live follow
//! over Server-Sent Events that resumes from the last byte a client holds
//! (`Last-Event-ID` is a byte offset): no line is lost or doubled by a reconnect.

use std::convert::Infallible;
use std::pin::pin;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_protocol::LogStream;
use serde::{Deserialize, Serialize};

use super::auth::Session;
use crate::error::ApiError;
use crate::store;
use crate::AppState;

/// Most lines one window request returns.
const MAX_WINDOW: u64 = 2000;
/// Most matches a search returns.
const MAX_MATCHES: usize = 2000;
/// Most bytes one live event carries.
const EVENT_BYTES: usize = 64 << 10;

fn parse_stream(stream: &str) -> Result<LogStream, ApiError> {
    stream
        .parse::<LogStream>()
        .map_err(|error| ApiError::InvalidParameter(error.to_string()))
}

/// The job whose `stream` the deployment shows (its latest build, or deploy
/// for the deploy stream), if any claimed it, and whether it has ended.
async fn job_of(
    state: &AppState,
    deployment_id: &str,
    stream: LogStream,
) -> Result<Option<(String, bool)>, ApiError> {
    let id = deployment_id.to_owned();
    let job = state
        .db
        .call(move |conn| store::job_for_logs(conn, &id, None, stream))
        .await?;
    match job {
        // The runtime stream goes on after its job, while the release is live.
        Some(job) if stream == LogStream::Runtime => {
            let ended =
                crate::logs::read::log_ended(state, deployment_id, Some(&job.id), stream).await?;
            Ok(Some((job.id, ended)))
        }
        Some(job) => Ok(Some((job.id, job.finished))),
        None => {
            // Never claimed: the logs are empty; ended once the build will not come.
            let id = deployment_id.to_owned();
            let deployment = state
                .db
                .call(move |conn| store::get_deployment(conn, &id))
                .await?;
            let _ = deployment;
            Ok(None)
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct RawQuery {
    /// Without ANSI escape sequences.
    #[serde(default)]
    plain: bool,
}

pub async fn raw(
    State(state): State<AppState>,
    _session: Session,
    Path((id, stream)): Path<(String, String)>,
    Query(query): Query<RawQuery>,
) -> Result<Response, ApiError> {
    let stream = parse_stream(&stream)?;
    let mut log_query = crate::logs::read::LogQuery::default();
    log_query.plain = query.plain;
    let body = crate::logs::read::log_body(&state, id.clone(), stream, log_query, None).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{id}-{stream}.log\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// The Runtime tab's filters (`crate::logs::filter`).
pub async fn runtime_filter(
    State(state): State<AppState>,
    _session: Session,
    Path(id): Path<String>,
    Query(query): Query<crate::logs::filter::FilterQuery>,
) -> Result<Response, ApiError> {
    crate::logs::filter::filtered(&state, id, query).await
}

#[derive(Debug, Deserialize)]
pub struct LinesQuery {
    from: Option<u64>,
    count: Option<u64>,
    tail: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Lines {
    total: u64,
    size: u64,
    partial: bool,
    first: u64,
    lines: Vec<String>,
    /// When each line was written (Unix milliseconds), where known.
    times: Vec<Option<i64>>,
    /// The job has ended: nothing more will come.
    ended: bool,
    /// An empty component log's build was not run: its output came from this
    /// earlier deployment's.
    #[serde(skip_serializing_if = "Option::is_none")]
    reused_from: Option<String>,
}

pub async fn lines(
    State(state): State<AppState>,
    _session: Session,
    Path((id, stream)): Path<(String, String)>,
    Query(query): Query<LinesQuery>,
) -> Result<Json<Lines>, ApiError> {
    let stream = parse_stream(&stream)?;
    let Some((job_id, ended)) = job_of(&state, &id, stream).await? else {
        return Ok(Json(Lines {
            total: 0,
            size: 0,
            partial: false,
            first: 0,
            lines: Vec::new(),
            times: Vec::new(),
            ended: false,
            reused_from: None,
        }));
    };
    let (first, count) = match (query.tail, query.from) {
        (Some(tail), _) => (None, tail.min(MAX_WINDOW)),
        (None, from) => (
            Some(from.unwrap_or(0)),
            query.count.unwrap_or(200).min(MAX_WINDOW),
        ),
    };
    let window = state.logs.window(&job_id, stream, first, count).await?;
    let marks = state.logs.marks(&job_id, stream).await;
    let times = window
        .offsets
        .iter()
        .map(|&offset| crate::logs::time_at(&marks, offset))
        .collect();
    let reused_from = match (stream, window.total, ended) {
        (LogStream::Backend | LogStream::Storefront, 0, true) => {
            reused_from(&state, &job_id, stream).await?
        }
        _ => None,
    };
    Ok(Json(Lines {
        total: window.total,
        size: window.size,
        partial: window.partial,
        first: window.first,
        lines: window.lines,
        times,
        ended,
        reused_from,
    }))
}

/// The deployment whose output a job reused for `stream`'s component, as its
/// system log says.
async fn reused_from(
    state: &AppState,
    job_id: &str,
    stream: LogStream,
) -> Result<Option<String>, ApiError> {
    let system = state
        .logs
        .window(job_id, LogStream::System, Some(0), 20_000)
        .await?;
    let Some(origin_job) = system.lines.iter().find_map(|line| {
        let text = line
            .split_once("] ")
            .map_or(line.as_str(), |(_, text)| text);
        let (component, job) = kiln_protocol::parse_reused_output_line(text)?;
        (component == stream.as_str()).then(|| job.to_owned())
    }) else {
        return Ok(None);
    };
    let origin = state
        .db
        .call(move |conn| match store::get_job(conn, &origin_job) {
            Ok(job) => Ok(Some(job.deployment_id)),
            Err(ApiError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        })
        .await?;
    Ok(origin)
}

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    q: String,
}

pub async fn search(
    State(state): State<AppState>,
    _session: Session,
    Path((id, stream)): Path<(String, String)>,
    Query(query): Query<SearchQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let stream = parse_stream(&stream)?;
    let needle = query.q.trim().to_owned();
    if needle.is_empty() || needle.len() > 1000 {
        return Err(ApiError::InvalidParameter(
            "q must be 1 to 1000 characters".to_owned(),
        ));
    }
    let Some((job_id, _)) = job_of(&state, &id, stream).await? else {
        return Ok(Json(serde_json::json!({"matches": [], "truncated": false})));
    };
    let (matches, truncated) = state
        .logs
        .search(&job_id, stream, needle, MAX_MATCHES)
        .await?;
    Ok(Json(
        serde_json::json!({"matches": matches, "truncated": truncated}),
    ))
}

/// A step or section of a log, for the viewer's outline.
#[derive(Debug, Clone, Serialize)]
pub struct OutlineEntry {
    title: String,
    start: u64,
    end: u64,
    duration_ms: Option<i64>,
    failed: bool,
}

/// One of the agent's steps, as its system log tells it.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    /// `install: npm ci`.
    title: String,
    /// The log stream its output went to.
    stream: LogStream,
    /// Lines of the system log where it began and ended.
    start_line: u64,
    end_line: Option<u64>,
    started_ms: Option<i64>,
    ended_ms: Option<i64>,
    failed: bool,
}

fn line_time(line: &str) -> Option<i64> {
    let stamp = line.strip_prefix('[')?.split(']').next()?;
    chrono::DateTime::parse_from_rfc3339(stamp)
        .ok()
        .map(|at| at.timestamp_millis())
}

/// The agent's steps, from its system log: `Running \`cmd\` (label).` begins one,
/// `` `cmd` (label) finished in 1.2s.`` ends it; one still open when the build
/// fails is the step that failed.
fn steps(system: &[String]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for (number, line) in system.iter().enumerate() {
        let number = number as u64;
        let text = line
            .split_once("] ")
            .map_or(line.as_str(), |(_, text)| text);
        match kiln_protocol::parse_step_line(text) {
            Some(kiln_protocol::StepLine::Started { command, label }) => {
                let (stream, step) = match label.strip_prefix("storefront: ") {
                    Some(step) => (LogStream::Storefront, step),
                    None => (LogStream::Backend, label),
                };
                steps.push(Step {
                    title: format!("{step}: {command}"),
                    stream,
                    start_line: number,
                    end_line: None,
                    started_ms: line_time(line),
                    ended_ms: None,
                    failed: false,
                });
            }
            Some(kiln_protocol::StepLine::Finished { command, label }) => {
                // Matched by what it ran: the two components' steps interleave.
                let step_name = label.strip_prefix("storefront: ").unwrap_or(label);
                let title = format!("{step_name}: {command}");
                if let Some(step) = steps
                    .iter_mut()
                    .rev()
                    .find(|step| step.end_line.is_none() && step.title == title)
                {
                    step.end_line = Some(number + 1);
                    step.ended_ms = line_time(line);
                }
            }
            None if text.starts_with("Build failed after") => {
                if let Some(step) = steps.iter_mut().rev().find(|step| step.end_line.is_none()) {
                    step.end_line = Some(number + 1);
                    step.ended_ms = line_time(line);
                    step.failed = true;
                }
            }
            None => {}
        }
    }
    steps
}

pub async fn outline(
    State(state): State<AppState>,
    _session: Session,
    Path((id, stream)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let stream = parse_stream(&stream)?;
    let Some((job_id, _)) = job_of(&state, &id, stream).await? else {
        return Ok(Json(serde_json::json!({"sections": []})));
    };
    // The system log is short: the agent's own lines.
    let system = state
        .logs
        .window(&job_id, LogStream::System, Some(0), 20_000)
        .await?;
    let steps = steps(&system.lines);
    let mut entries: Vec<OutlineEntry> = Vec::new();
    if stream == LogStream::System {
        entries.extend(steps.iter().map(|step| OutlineEntry {
            title: step.title.clone(),
            start: step.start_line,
            end: step.end_line.unwrap_or(system.total),
            duration_ms: step.started_ms.zip(step.ended_ms).map(|(a, b)| b - a),
            failed: step.failed,
        }));
    } else {
        // A step's output is what its stream received while it ran: from the first
        // time mark at or after its start.
        let marks = state.logs.marks(&job_id, stream).await;
        let ours: Vec<&Step> = steps.iter().filter(|step| step.stream == stream).collect();
        let offset_at = |millis: Option<i64>| -> Option<u64> {
            let millis = millis?;
            marks
                .iter()
                .find(|&&(_, at)| at >= millis)
                .map(|&(offset, _)| offset)
        };
        let mut offsets = Vec::new();
        for step in &ours {
            offsets.push(offset_at(step.started_ms));
            offsets.push(offset_at(step.ended_ms.map(|at| at + 1)));
        }
        let known: Vec<u64> = {
            let mut known: Vec<u64> = offsets.iter().flatten().copied().collect();
            known.sort_unstable();
            known.dedup();
            known
        };
        let lines = state.logs.lines_at(&job_id, stream, known.clone()).await?;
        let line_of = |offset: Option<u64>| {
            offset.and_then(|offset| known.binary_search(&offset).ok().map(|i| lines[i]))
        };
        let total = state.logs.window(&job_id, stream, Some(0), 0).await?.total;
        for (index, step) in ours.iter().enumerate() {
            let Some(start) = line_of(offsets[2 * index]) else {
                continue;
            };
            // A step ends where it finished, and at the latest where the next
            // step of its stream began.
            let next_start = ours[index + 1..]
                .iter()
                .enumerate()
                .find_map(|(later, _)| line_of(offsets[2 * (index + 1 + later)]));
            let end = line_of(offsets[2 * index + 1])
                .unwrap_or(total)
                .min(next_start.unwrap_or(u64::MAX))
                .max(start);
            if end > start {
                entries.push(OutlineEntry {
                    title: step.title.clone(),
                    start,
                    end,
                    duration_ms: step.started_ms.zip(step.ended_ms).map(|(a, b)| b - a),
                    failed: step.failed,
                });
            }
        }
        let step_ends: Vec<(u64, u64)> = entries.iter().map(|e| (e.start, e.end)).collect();
        entries.extend(
            state
                .logs
                .sections(&job_id, stream)
                .await?
                .into_iter()
                .map(|section| {
                    // A section left open (a heading, a group never closed) ends
                    // with the step it was printed in.
                    let step_end = step_ends
                        .iter()
                        .find(|&&(start, end)| (start..end).contains(&section.start))
                        .map_or(u64::MAX, |&(_, end)| end);
                    OutlineEntry {
                        title: section.title,
                        start: section.start,
                        end: section.end.min(total.max(1)).min(step_end),
                        duration_ms: None,
                        failed: false,
                    }
                }),
        );
        entries.sort_by_key(|entry| entry.start);
    }
    Ok(Json(serde_json::json!({ "sections": entries })))
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    from: u64,
}

/// Where a live follow goes on from: the client's `Last-Event-ID` (the byte it
/// holds up to) wins over `from`.
fn resume_offset(headers: &HeaderMap, from: u64) -> u64 {
    headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(from)
}

/// How many bytes of `chunk` to send: up to its last line break, so no character
/// is cut in two (a chunk with none goes whole, cut at a character boundary).
fn sendable(chunk: &[u8]) -> usize {
    match memchr::memrchr(b'\n', chunk) {
        Some(at) => at + 1,
        None => match std::str::from_utf8(chunk) {
            Ok(_) => chunk.len(),
            Err(error) if error.error_len().is_none() => error.valid_up_to().max(1),
            Err(_) => chunk.len(),
        },
    }
}

pub async fn events(
    State(state): State<AppState>,
    _session: Session,
    peer: crate::http::PeerAddress,
    Path((id, stream)): Path<(String, String)>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let stream = parse_stream(&stream)?;
    let offset = resume_offset(&headers, query.from);
    let slot = state.follows.take(peer.0)?;
    let follower = Follower {
        state: state.clone(),
        deployment_id: id,
        job_id: None,
        stream,
        offset,
        ended: false,
        _slot: slot,
    };
    let events = futures::stream::unfold(follower, |mut follower| async move {
        let event = follower.next_event().await?;
        Some((Ok::<_, Infallible>(event), follower))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

struct Follower {
    state: AppState,
    deployment_id: String,
    job_id: Option<String>,
    stream: LogStream,
    offset: u64,
    ended: bool,
    /// Held while the follow lasts.
    _slot: crate::follows::FollowSlot,
}

impl Follower {
    /// The next event: bytes past `offset`, or `end` once the job has ended and
    /// everything was sent; `None` after `end`.
    async fn next_event(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        loop {
            let state = self.state.clone();
            let mut appended = pin!(state.logs.appended.notified());
            appended.as_mut().enable();
            let mut changed = pin!(state.changes.notified());
            changed.as_mut().enable();
            let job = match &self.job_id {
                Some(job) => Some((job.clone(), false)),
                None => job_of(&self.state, &self.deployment_id, self.stream)
                    .await
                    .ok()
                    .flatten(),
            };
            if job.is_none()
                && crate::logs::read::log_ended(&self.state, &self.deployment_id, None, self.stream)
                    .await
                    .unwrap_or(false)
            {
                // Ended without a build (canceled while queued): no log comes.
                self.ended = true;
                return Some(Event::default().event("end").data(self.offset.to_string()));
            }
            if let Some((job_id, _)) = &job {
                self.job_id = Some(job_id.clone());
                if let Err(error) = self.state.logs.pull(job_id, self.stream).await {
                    tracing::warn!(message = "Cannot bring a followed log up to date.", %error);
                }
                let path = self.state.logs.path(job_id, self.stream);
                let chunk = read_at(&path, self.offset, EVENT_BYTES).await;
                if !chunk.is_empty() {
                    let cut = sendable(&chunk);
                    let start = self.offset;
                    self.offset += cut as u64;
                    let text = String::from_utf8_lossy(&chunk[..cut]);
                    let data = serde_json::json!({"offset": start, "text": text}).to_string();
                    return Some(Event::default().id(self.offset.to_string()).data(data));
                }
                let finished = crate::logs::read::log_ended(
                    &self.state,
                    &self.deployment_id,
                    Some(job_id),
                    self.stream,
                )
                .await
                .unwrap_or(false);
                if finished {
                    // One more look: bytes may have landed between the read and this.
                    let again = read_at(&path, self.offset, 1).await;
                    if again.is_empty() {
                        self.ended = true;
                        return Some(Event::default().event("end").data(self.offset.to_string()));
                    }
                    continue;
                }
            }
            let _parked = self.state.park(crate::Wait::Follow);
            tokio::select! {
                _ = appended => {}
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.state.shutdown.cancelled() => return None,
            }
        }
    }
}

async fn read_at(path: &std::path::Path, offset: u64, limit: usize) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return Vec::new();
    };
    if file
        .metadata()
        .await
        .map_or(true, |meta| offset >= meta.len())
        || file.seek(std::io::SeekFrom::Start(offset)).await.is_err()
    {
        return Vec::new();
    }
    let mut buffer = Vec::with_capacity(limit.min(EVENT_BYTES));
    let _ = (&mut file)
        .take(limit as u64)
        .read_to_end(&mut buffer)
        .await;
    buffer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_come_from_the_system_log() {
        let log: Vec<String> = [
            "[2026-11-29T14:25:07.412Z] Running `npm ci` (install).",
            "[2026-11-29T14:25:09.412Z] `npm ci` (install) finished in 2.0s.",
            "[2026-11-29T14:25:09.500Z] Running `npm run build` (build).",
            "[2026-11-29T14:25:10.000Z] Running `next build` (storefront: build).",
            "[2026-11-29T14:25:12.000Z] Build failed after 5s: storefront: `next build` (build) exited with code 1",
        ]
        .map(str::to_owned)
        .to_vec();
        let steps = steps(&log);
        assert_eq!(steps.len(), 3);
        assert_eq!(
            (steps[0].title.as_str(), steps[0].stream, steps[0].end_line),
            ("install: npm ci", LogStream::Backend, Some(2))
        );
        assert_eq!(
            steps[0].ended_ms.unwrap() - steps[0].started_ms.unwrap(),
            2000
        );
        assert!(steps[2].failed && steps[2].stream == LogStream::Storefront);
    }

    #[test]
    fn every_step_of_a_passing_build_ends_with_its_duration() {
        use kiln_protocol::{step_finished_line, step_started_line};
        // As the agent writes them, the two components' steps interleaving.
        let log: Vec<String> = [
            (
                "07.000",
                step_started_line("yarn install --immutable", "install"),
            ),
            (
                "07.100",
                step_started_line("yarn install --immutable", "storefront: install"),
            ),
            (
                "09.000",
                step_finished_line("yarn install --immutable", "storefront: install", "1.9s"),
            ),
            (
                "09.500",
                step_finished_line("yarn install --immutable", "install", "2.5s"),
            ),
            ("09.600", step_started_line("yarn build", "build")),
            ("19.600", step_finished_line("yarn build", "build", "10.0s")),
        ]
        .map(|(at, text)| format!("[2026-11-29T14:25:{at}Z] {text}"))
        .to_vec();
        let steps = steps(&log);
        let ended: Vec<(&str, LogStream, Option<i64>)> = steps
            .iter()
            .map(|step| {
                (
                    step.title.as_str(),
                    step.stream,
                    step.started_ms.zip(step.ended_ms).map(|(a, b)| b - a),
                )
            })
            .collect();
        assert_eq!(
            ended,
            [
                (
                    "install: yarn install --immutable",
                    LogStream::Backend,
                    Some(2500)
                ),
                (
                    "install: yarn install --immutable",
                    LogStream::Storefront,
                    Some(1900)
                ),
                ("build: yarn build", LogStream::Backend, Some(10_000)),
            ]
        );
        assert!(steps.iter().all(|step| !step.failed));
    }

    #[test]
    fn live_chunks_end_at_a_line_or_a_whole_character() {
        assert_eq!(sendable(b"one\ntwo\nthr"), 8);
        assert_eq!(sendable("caf\u{e9}".as_bytes()), 5);
        assert_eq!(sendable(&"caf\u{e9}".as_bytes()[..4]), 3);
    }
}
