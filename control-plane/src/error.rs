//! `ApiError`: every way a request can fail, each mapped to one HTTP status and one
//! error code, and rendered as the `/api/v1` error envelope.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_protocol::{codes, DeploymentStatus, ErrorEnvelope, LogStream};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("deployment {deployment_id}: illegal transition from {from} to {to}")]
    IllegalTransition {
        deployment_id: String,
        from: DeploymentStatus,
        to: DeploymentStatus,
    },
    #[error("job {job_id} no longer holds its deployment: {why}")]
    JobSuperseded { job_id: String, why: String },
    #[error("log stream {stream} of job {job_id} holds {expected} bytes; resend from offset {expected}, not {offset}")]
    LogGap {
        job_id: String,
        stream: LogStream,
        offset: u64,
        expected: u64,
    },
    #[error("artifact {name}: declared {declared} bytes but received {received}")]
    ArtifactSize {
        name: String,
        declared: u64,
        received: u64,
    },
    #[error("artifact {name}: declared sha256 {declared} but the received bytes hash to {actual}")]
    ArtifactChecksum {
        name: String,
        declared: String,
        actual: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large: {0}")]
    TooLarge(String),
    #[error("log stream {stream} of job {job_id} is at the server's limit of {limit} bytes; later output is not stored")]
    LogLimit {
        job_id: String,
        stream: LogStream,
        limit: u64,
    },
    #[error("artifact {name} of job {job_id} is stored already with another sha256; a stored artifact is never replaced")]
    ArtifactExists { job_id: String, name: String },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
        }
    }

    pub fn invalid_field(field: &str, message: impl std::fmt::Display) -> Self {
        Self::InvalidBody(format!("field `{field}`: {message}"))
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, codes::FORBIDDEN),
            Self::InvalidBody(_) => (StatusCode::BAD_REQUEST, codes::INVALID_BODY),
            Self::InvalidParameter(_) => (StatusCode::BAD_REQUEST, codes::INVALID_PARAMETER),
            Self::NotFound { .. } => (StatusCode::NOT_FOUND, codes::NOT_FOUND),
            Self::IllegalTransition { .. } => (StatusCode::CONFLICT, codes::ILLEGAL_TRANSITION),
            Self::JobSuperseded { .. } => (StatusCode::CONFLICT, codes::JOB_SUPERSEDED),
            Self::LogGap { .. } => (StatusCode::CONFLICT, codes::LOG_OFFSET_GAP),
            Self::ArtifactSize { .. } => (StatusCode::BAD_REQUEST, codes::ARTIFACT_SIZE_MISMATCH),
            Self::ArtifactChecksum { .. } => {
                (StatusCode::BAD_REQUEST, codes::ARTIFACT_CHECKSUM_MISMATCH)
            }
            Self::Conflict(_) => (StatusCode::CONFLICT, codes::CONFLICT),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, codes::BODY_TOO_LARGE),
            Self::LogLimit { .. } => (StatusCode::PAYLOAD_TOO_LARGE, codes::LOG_LIMIT_EXCEEDED),
            Self::ArtifactExists { .. } => (StatusCode::CONFLICT, codes::ARTIFACT_EXISTS),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE),
            Self::Gone(_) => (StatusCode::GONE, codes::GONE),
            Self::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, codes::TOO_MANY_REQUESTS),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL),
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::TooLarge(rejection.body_text())
        } else {
            Self::InvalidBody(rejection.body_text())
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(error: std::io::Error) -> Self {
        Self::Internal(format!("storage: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(message = "Request failed.", error = %self);
        }
        let mut envelope = ErrorEnvelope::new(code, self.to_string());
        if let Self::LogGap { expected, .. } = self {
            envelope.error.expected_offset = Some(expected);
        }
        (status, Json(envelope)).into_response()
    }
}
