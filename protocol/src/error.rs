//! The error envelope every `/api/v1` error response carries:
//! `{"error": {"code": "...", "message": "..."}}`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, machine-readable; one of [`codes`] (newer servers may add more).
    pub code: String,
    /// For a person: what failed and what to do.
    pub message: String,
    /// On `log_offset_gap`: where the server expects the next chunk to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_offset: Option<u64>,
}

/// Error codes. A `String` on the wire rather than an enum, so an older agent
/// still reads a code added later.
pub mod codes {
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const FORBIDDEN: &str = "forbidden";
    pub const INVALID_BODY: &str = "invalid_body";
    pub const INVALID_PARAMETER: &str = "invalid_parameter";
    pub const NOT_FOUND: &str = "not_found";
    pub const ILLEGAL_TRANSITION: &str = "illegal_transition";
    pub const JOB_SUPERSEDED: &str = "job_superseded";
    pub const LOG_OFFSET_GAP: &str = "log_offset_gap";
    pub const ARTIFACT_SIZE_MISMATCH: &str = "artifact_size_mismatch";
    pub const ARTIFACT_CHECKSUM_MISMATCH: &str = "artifact_checksum_mismatch";
    pub const CONFLICT: &str = "conflict";
    /// Added in v1.3: a body longer than its route takes (413).
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    /// Added in v1.3: a log stream is at the server's limit (413); later bytes
    /// are not stored.
    pub const LOG_LIMIT_EXCEEDED: &str = "log_limit_exceeded";
    /// Added in v1.3: an artifact of that name is stored already and is never
    /// replaced (409).
    pub const ARTIFACT_EXISTS: &str = "artifact_exists";
    /// Added in v1.5: storage the server depends on (the object store) did not
    /// answer (503); retry.
    pub const UNAVAILABLE: &str = "unavailable";
    /// Added in v1.7: the server's retention policy removed what was asked for
    /// (410); a redeploy builds it again.
    pub const GONE: &str = "gone";
    /// Added in v1.8: the client holds as many of a bounded thing (live log
    /// follows) as it may (429); close one, or retry later.
    pub const TOO_MANY_REQUESTS: &str = "too_many_requests";
    pub const INTERNAL: &str = "internal";
}

impl ErrorEnvelope {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            error: ErrorBody {
                code: code.to_owned(),
                message: message.into(),
                expected_offset: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_wire_form() {
        let envelope = ErrorEnvelope::new(codes::NOT_FOUND, "deployment dpl_x not found");
        insta::assert_json_snapshot!(envelope, @r###"
        {
          "error": {
            "code": "not_found",
            "message": "deployment dpl_x not found"
          }
        }
        "###);
    }
}
