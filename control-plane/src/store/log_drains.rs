//! Log drains: an environment's OTLP collector, and per job and stream how far
//! its log has been sent there (`crate::drains` sends).

use kiln_protocol::{LogDrain, LogDrainInfo, LogStream};

use super::values::{now_ms, to_json};
use crate::db::sql::{params, Connection, OptionalExtension};
use crate::error::ApiError;

const MAX_HEADERS: usize = 16;

fn check(drain: &LogDrain) -> Result<(), ApiError> {
    let refuse = |field: &str, why: String| Err(ApiError::invalid_field(field, why));
    match reqwest::Url::parse(&drain.otlp_endpoint) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {}
        _ => {
            return refuse(
                "otlp_endpoint",
                "must be the collector's OTLP/HTTP base URL, such as https://otel.example.com:4318"
                    .to_owned(),
            )
        }
    }
    if drain.otlp_endpoint.len() > 2048 {
        return refuse("otlp_endpoint", "is longer than 2048 bytes".to_owned());
    }
    if drain.headers.len() > MAX_HEADERS {
        return refuse("headers", format!("has more than {MAX_HEADERS} headers"));
    }
    for (name, value) in &drain.headers {
        let valid_name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok();
        let valid_value = reqwest::header::HeaderValue::from_str(value).is_ok();
        if !valid_name || !valid_value || value.len() > 4096 {
            return refuse(
                "headers",
                format!("{name:?} is not a valid HTTP header name with a value of at most 4 KiB on one line"),
            );
        }
    }
    Ok(())
}

fn info(drain: &LogDrain) -> LogDrainInfo {
    LogDrainInfo {
        otlp_endpoint: drain.otlp_endpoint.clone(),
        header_names: drain.headers.keys().cloned().collect(),
    }
}

pub fn set_log_drain(
    conn: &mut Connection,
    environment_id: &str,
    drain: LogDrain,
) -> Result<LogDrainInfo, ApiError> {
    check(&drain)?;
    super::projects::get_environment_in(conn, environment_id)?;
    conn.execute(
        "UPDATE environments SET log_drain = ?1 WHERE id = ?2",
        params![to_json(&drain), environment_id],
    )?;
    Ok(info(&drain))
}

pub fn remove_log_drain(conn: &mut Connection, environment_id: &str) -> Result<(), ApiError> {
    super::projects::get_environment_in(conn, environment_id)?;
    conn.execute(
        "UPDATE environments SET log_drain = NULL WHERE id = ?1",
        [environment_id],
    )?;
    Ok(())
}

fn drain_of(text: Option<String>) -> Option<LogDrain> {
    text.and_then(|text| serde_json::from_str(&text).ok())
}

/// An environment's drain, header values included (for the server's own use).
pub fn log_drain_of(
    conn: &mut Connection,
    environment_id: &str,
) -> Result<Option<LogDrain>, ApiError> {
    super::projects::get_environment_in(conn, environment_id)?;
    let text: Option<String> = conn.query_row(
        "SELECT log_drain FROM environments WHERE id = ?1",
        [environment_id],
        |row| row.get(0),
    )?;
    Ok(drain_of(text))
}

pub fn get_log_drain(
    conn: &mut Connection,
    environment_id: &str,
) -> Result<Option<LogDrainInfo>, ApiError> {
    Ok(log_drain_of(conn, environment_id)?.as_ref().map(info))
}

/// What sending a job's log to its environment's drain needs.
#[derive(Debug, Clone)]
pub struct DrainTarget {
    pub drain: LogDrain,
    pub deployment_id: String,
    pub project_id: String,
    pub environment: String,
    pub commit_sha: String,
    pub job_finished: bool,
    /// Bytes of the stream already sent.
    pub sent: u64,
}

/// The drain a job's stream goes to, if its environment has one.
pub fn drain_target(
    conn: &mut Connection,
    job_id: &str,
    stream: LogStream,
) -> Result<Option<DrainTarget>, ApiError> {
    let found = conn
        .query_row(
            "SELECT e.log_drain, d.id, d.project_id, e.name, d.commit_sha, j.finished_at IS NOT NULL,
                    (SELECT sent FROM log_drain_cursors c WHERE c.job_id = j.id AND c.stream = ?2)
             FROM jobs j JOIN deployments d ON d.id = j.deployment_id
             JOIN environments e ON e.id = d.environment_id
             WHERE j.id = ?1",
            params![job_id, stream.as_str()],
            |row| {
                Ok((
                    row.get::<_, Option<String>>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, bool>(5)?,
                    row.get::<_, Option<i64>>(6)?,
                ))
            },
        )
        .optional()?;
    let Some((drain, deployment_id, project_id, environment, commit_sha, job_finished, sent)) =
        found
    else {
        return Ok(None);
    };
    Ok(drain_of(drain).map(|drain| DrainTarget {
        drain,
        deployment_id,
        project_id,
        environment,
        commit_sha,
        job_finished,
        sent: sent.unwrap_or(0).max(0) as u64,
    }))
}

/// Moves a stream's cursor from `from` to `to`; false if another replica
/// moved it first.
pub fn advance_drain_cursor(
    conn: &mut Connection,
    job_id: &str,
    stream: LogStream,
    from: u64,
    to: u64,
) -> Result<bool, ApiError> {
    let tx = conn.transaction()?;
    let current: Option<i64> = tx
        .query_row(
            "SELECT sent FROM log_drain_cursors WHERE job_id = ?1 AND stream = ?2",
            params![job_id, stream.as_str()],
            |row| row.get(0),
        )
        .optional()?;
    if current.unwrap_or(0) as u64 != from {
        return Ok(false);
    }
    match current {
        Some(_) => tx.execute(
            "UPDATE log_drain_cursors SET sent = ?1 WHERE job_id = ?2 AND stream = ?3",
            params![to as i64, job_id, stream.as_str()],
        )?,
        None => tx.execute(
            "INSERT INTO log_drain_cursors (job_id, stream, sent) VALUES (?1, ?2, ?3)",
            params![job_id, stream.as_str(), to as i64],
        )?,
    };
    tx.commit()?;
    Ok(true)
}

/// Jobs of the last day whose environments drain their logs: looked at again
/// when the server starts, for what was not sent before it stopped.
pub fn recent_drained_jobs(conn: &mut Connection) -> Result<Vec<String>, ApiError> {
    let since = now_ms() - 24 * 3600 * 1000;
    let mut stmt = conn.prepare(
        "SELECT j.id FROM jobs j JOIN deployments d ON d.id = j.deployment_id
         JOIN environments e ON e.id = d.environment_id
         WHERE e.log_drain IS NOT NULL AND j.claimed_at > ?1",
    )?;
    let jobs = stmt
        .query_map([since], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(jobs)
}
