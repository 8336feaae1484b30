//! A release's log lines filtered by service (server, worker, migrations,
//! storefront), level, time range and text, read from the runtime stream (and
//! the deploy stream, where the migrations' lines are) on the server, as JSON
//! or as text to download: the Runtime tab's filters and
//! `GET /api/v1/deployments/{id}/logs/runtime/filter`.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::Path as FilePath;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_protocol::LogStream;
use serde::{Deserialize, Serialize};

use super::lines::{level_of, service_of, Level, SERVICES};
use crate::error::ApiError;
use crate::store;
use crate::AppState;

/// The most matching lines returned: the newest.
const MAX_LINES: usize = 2000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterQuery {
    /// Comma-separated services; none: all.
    #[serde(default)]
    services: String,
    /// Comma-separated levels; none: all, lines without a level too.
    #[serde(default)]
    levels: String,
    /// Unix milliseconds.
    since: Option<i64>,
    until: Option<i64>,
    #[serde(default)]
    q: String,
    /// `text` to download the lines.
    #[serde(default)]
    format: String,
}

#[derive(Debug, Clone)]
struct Filter {
    services: Vec<&'static str>,
    levels: Vec<Level>,
    since: Option<i64>,
    until: Option<i64>,
    needle: String,
}

impl Filter {
    fn from_query(query: &FilterQuery) -> Result<Filter, ApiError> {
        let mut services = Vec::new();
        for name in query
            .services
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let Some(service) = SERVICES.iter().find(|s| **s == name) else {
                return Err(ApiError::InvalidParameter(format!(
                    "services: {name:?} is no service; use {}",
                    SERVICES.join(", ")
                )));
            };
            services.push(*service);
        }
        let mut levels = Vec::new();
        for name in query
            .levels
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let Some(level) = Level::ALL.into_iter().find(|l| l.as_str() == name) else {
                return Err(ApiError::InvalidParameter(format!(
                    "levels: {name:?} is no level; use error, warn, info, debug"
                )));
            };
            levels.push(level);
        }
        if let (Some(since), Some(until)) = (query.since, query.until) {
            if since > until {
                return Err(ApiError::InvalidParameter(
                    "since is after until; swap them".to_owned(),
                ));
            }
        }
        Ok(Filter {
            services,
            levels,
            since: query.since,
            until: query.until,
            needle: query.q.trim().to_lowercase(),
        })
    }

    fn keeps(
        &self,
        service: Option<&str>,
        level: Option<Level>,
        at: Option<i64>,
        text: &str,
    ) -> bool {
        (self.services.is_empty() || service.is_some_and(|s| self.services.contains(&s)))
            && (self.levels.is_empty() || level.is_some_and(|l| self.levels.contains(&l)))
            && self
                .since
                .is_none_or(|since| at.is_some_and(|at| at >= since))
            && self
                .until
                .is_none_or(|until| at.is_some_and(|at| at <= until))
            && (self.needle.is_empty() || text.to_lowercase().contains(&self.needle))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FoundLine {
    stream: LogStream,
    /// 1-based, for `#runtime-L12` anchors.
    line: u64,
    at: Option<i64>,
    service: Option<&'static str>,
    level: Option<&'static str>,
    text: String,
}

/// Scans one log file, keeping the newest `MAX_LINES` matches; returns them
/// and how many matched in all.
fn scan(
    path: &FilePath,
    stream: LogStream,
    marks: &[(u64, i64)],
    filter: &Filter,
    only_prefixed: bool,
    found: &mut VecDeque<FoundLine>,
) -> std::io::Result<u64> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error),
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let (mut offset, mut number, mut matched) = (0u64, 0u64, 0u64);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let read = reader.read_until(b'\n', &mut buffer)?;
        if read == 0 {
            break;
        }
        number += 1;
        let at = super::time_at(marks, offset);
        offset += read as u64;
        let line = String::from_utf8_lossy(&buffer);
        let line = line.trim_end_matches(['\n', '\r']);
        let (service, text) = service_of(line);
        if only_prefixed && service.is_none() {
            continue;
        }
        let level = level_of(text);
        if filter.keeps(service, level, at, line) {
            matched += 1;
            if found.len() == MAX_LINES {
                found.pop_front();
            }
            found.push_back(FoundLine {
                stream,
                line: number,
                at,
                service,
                level: level.map(Level::as_str),
                text: text.to_owned(),
            });
        }
    }
    Ok(matched)
}

/// The deployment's release log lines that `query` keeps.
pub(crate) async fn filtered(
    state: &AppState,
    id: String,
    query: FilterQuery,
) -> Result<Response, ApiError> {
    let filter = Filter::from_query(&query)?;
    let deployment_id = id.clone();
    let job = state
        .db
        .call(move |conn| store::job_for_logs(conn, &deployment_id, None, LogStream::Runtime))
        .await?;
    let mut sources = Vec::new();
    if let Some(job) = job {
        for stream in [LogStream::Runtime, LogStream::Deploy] {
            state.logs.pull(&job.id, stream).await?;
            sources.push((
                stream,
                state.logs.path(&job.id, stream),
                state.logs.marks(&job.id, stream).await,
            ));
        }
    }
    let (lines, matched) = tokio::task::spawn_blocking(move || {
        let mut found = VecDeque::new();
        let mut matched = 0;
        for (stream, path, marks) in &sources {
            // The deploy log's own lines are the agent's; only the migrations'
            // output there is the release's.
            let only_prefixed = *stream == LogStream::Deploy;
            matched += scan(path, *stream, marks, &filter, only_prefixed, &mut found)?;
        }
        let mut lines: Vec<FoundLine> = found.into();
        lines.sort_by_key(|line| (line.at, line.stream != LogStream::Deploy));
        Ok::<_, std::io::Error>((lines, matched))
    })
    .await
    .map_err(|error| ApiError::Internal(error.to_string()))??;
    if query.format == "text" {
        let mut body = String::new();
        for line in &lines {
            let at = line
                .at
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|at| at.format("%Y-%m-%dT%H:%M:%S%.3fZ ").to_string())
                .unwrap_or_default();
            let service = line.service.map(|s| format!("{s} | ")).unwrap_or_default();
            body.push_str(&format!("{at}{service}{}\n", line.text));
        }
        return Ok((
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{id}-runtime-filtered.log\""),
                ),
            ],
            body,
        )
            .into_response());
    }
    Ok(Json(serde_json::json!({
        "lines": lines,
        "matched": matched,
        "truncated": matched as usize > lines.len(),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_by_service_level_time_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.log");
        let log = "server | info:    Server is ready\n\
                   worker | warn:    Redis not configured\n\
                   storefront |  ⨯ Failed to fetch products\n\
                   server | error:   Cannot connect to the database\n";
        std::fs::write(&path, log).unwrap();
        let marks = [(0, 1_000), (34, 2_000), (74, 3_000), (113, 4_000)];
        let run = |query: FilterQuery| {
            let filter = Filter::from_query(&query).unwrap();
            let mut found = VecDeque::new();
            let matched = scan(
                &path,
                LogStream::Runtime,
                &marks,
                &filter,
                false,
                &mut found,
            )
            .unwrap();
            (matched, found.iter().map(|l| l.line).collect::<Vec<_>>())
        };
        assert_eq!(run(FilterQuery::default()), (4, vec![1, 2, 3, 4]));
        let by_service = FilterQuery {
            services: "server".into(),
            ..FilterQuery::default()
        };
        assert_eq!(run(by_service), (2, vec![1, 4]));
        let by_level = FilterQuery {
            levels: "error,warn".into(),
            ..FilterQuery::default()
        };
        assert_eq!(run(by_level), (3, vec![2, 3, 4]));
        let by_time = FilterQuery {
            since: Some(2_000),
            until: Some(3_500),
            ..FilterQuery::default()
        };
        assert_eq!(run(by_time), (2, vec![2, 3]));
        let by_text = FilterQuery {
            q: "DATABASE".into(),
            ..FilterQuery::default()
        };
        assert_eq!(run(by_text), (1, vec![4]));
        let bad = FilterQuery {
            services: "api".into(),
            ..FilterQuery::default()
        };
        assert!(Filter::from_query(&bad)
            .unwrap_err()
            .to_string()
            .contains("server, worker"));
    }
}
