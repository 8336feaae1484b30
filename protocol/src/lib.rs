//! Wire types of Kiln's `/api/v1`, shared by `kiln-agent` and `kiln-control-plane`.
//!
//! Data only: no I/O, no async runtime, no HTTP client. Every type here is part of the
//! public protocol. A field added after v1.0 gets `#[serde(default)]` and a note saying
//! when, so older peers keep parsing. Unknown fields are ignored (forward compatibility);
//! an unknown status or a missing required field is an error.

pub mod agent;
pub mod api;
pub mod deploy;
pub mod error;
pub mod provenance;
pub mod status;
pub mod steps;
pub mod validate;
pub mod webhooks;

pub use agent::*;
pub use api::*;
pub use deploy::*;
pub use error::*;
pub use status::*;
pub use steps::*;
pub use webhooks::*;

/// Every route of this protocol lives under this prefix.
pub const API_PREFIX: &str = "/api/v1";

/// Header carrying an artifact's lowercase hex sha256 on upload.
pub const SHA256_HEADER: &str = "x-kiln-sha256";

/// Optional header of a log append (added in v1.1): when output was written, as
/// comma-separated `offset:unix_millis` marks, offsets absolute in the stream. A
/// line's time is that of the last mark at or before its first byte. The log's
/// bytes stay exactly what the build printed.
pub const LOG_TIMES_HEADER: &str = "x-kiln-log-times";

/// Formats time marks for `LOG_TIMES_HEADER`.
pub fn format_log_times(marks: &[(u64, i64)]) -> String {
    marks
        .iter()
        .map(|(offset, millis)| format!("{offset}:{millis}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `LOG_TIMES_HEADER`; `None` names nothing more than "malformed".
pub fn parse_log_times(text: &str) -> Option<Vec<(u64, i64)>> {
    if text.trim().is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|mark| {
            let (offset, millis) = mark.trim().split_once(':')?;
            Some((offset.parse().ok()?, millis.parse().ok()?))
        })
        .collect()
}

/// One line of a `.times` file, the on-disk form of time marks that the agent's spool
/// and the control plane's log store both keep beside a log: `offset millis`.
pub fn time_mark_line(offset: u64, millis: i64) -> String {
    format!("{offset} {millis}\n")
}

/// Reads a `.times` file's text. A malformed line (a write torn by a crash) is
/// skipped: it costs a line its exact time, never the log.
pub fn parse_time_mark_lines(text: &str) -> Vec<(u64, i64)> {
    text.lines()
        .filter_map(|line| {
            let (offset, millis) = line.split_once(' ')?;
            Some((offset.parse().ok()?, millis.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_round_trip() {
        let marks = vec![(0, 1_764_000_000_000), (4096, 1_764_000_000_250)];
        assert_eq!(parse_log_times(&format_log_times(&marks)), Some(marks));
        assert_eq!(parse_log_times(""), Some(vec![]));
        assert_eq!(parse_log_times("12"), None);
        assert_eq!(parse_log_times("a:1"), None);
    }

    #[test]
    fn time_mark_lines_round_trip_and_skip_a_torn_line() {
        let text =
            time_mark_line(0, 1_764_000_000_000) + &time_mark_line(90, 1_764_000_000_100) + "18";
        assert_eq!(
            parse_time_mark_lines(&text),
            vec![(0, 1_764_000_000_000), (90, 1_764_000_000_100)]
        );
    }
}
