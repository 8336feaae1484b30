//! A control plane that lies: it hands agents the job payloads a test writes
//! (hostile ones), keeps every lease, and records the status reports and log
//! bytes it hears, so a test can see what the real agent made of a bad job.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::Json;

#[derive(Default)]
struct Shared {
    jobs: Mutex<VecDeque<serde_json::Value>>,
    reports: Mutex<Vec<(String, serde_json::Value)>>,
    logs: Mutex<Vec<(String, String)>>,
}

pub struct HostileControlPlane {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: tokio_util::sync::DropGuard,
}

/// A well-formed job for `repository_url` at `commit_sha`, for a test to spoil.
pub fn job(repository_url: &str, commit_sha: &str) -> serde_json::Value {
    serde_json::json!({
        "job_id": "job_0190f1a2b3c4d5e6f708192a3b4c5d6f",
        "deployment_id": "dpl_0190f1a2b3c4d5e6f708192a3b4c5d6e",
        "project_id": "prj_0190f1a2b3c4d5e6f708192a3b4c5d6e",
        "environment_id": "env_0190f1a2b3c4d5e6f708192a3b4c5d6e",
        "attempt": 1,
        "repository_url": repository_url,
        "commit_sha": commit_sha,
        "branch": "main",
        "author": "Mallory",
        "message": "hostile",
        "backend_path": ".",
        "limits": {"timeout_seconds": 120},
        "lease_seconds": 60,
    })
}

impl HostileControlPlane {
    pub async fn start() -> HostileControlPlane {
        let shared: Arc<Shared> = Arc::default();
        let app = axum::Router::new()
            .route("/api/v1/agent/jobs/claim", post(claim))
            .route("/api/v1/agent/jobs/{job}/watch", post(watch))
            .route("/api/v1/agent/jobs/{job}/status", post(status))
            .route("/api/v1/agent/jobs/{job}/logs/{stream}", put(append))
            .route(
                "/api/v1/agent/jobs/{job}/artifacts",
                post(|| async { StatusCode::CONFLICT }),
            )
            .with_state(shared.clone());
        let (addr, stop) = super::loopback::serve_on_loopback(app).await;
        HostileControlPlane {
            addr,
            shared,
            _stop: stop,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next claim gets this payload, as is.
    pub fn hand_out(&self, job: serde_json::Value) {
        self.shared.jobs.lock().unwrap().push_back(job);
    }

    /// Waits for the agent's final report of `job_id` (anything but `building`).
    pub async fn final_report(&self, job_id: &str, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .shared
                .reports
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|(id, report)| id == job_id && report["status"] != "building")
                .map(|(_, report)| report.clone());
            if let Some(report) = found {
                return report;
            }
            assert!(
                Instant::now() < deadline,
                "no final report of {job_id} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every report, in order.
    pub fn reports(&self) -> Vec<(String, serde_json::Value)> {
        self.shared.reports.lock().unwrap().clone()
    }

    /// Every log byte the agent sent, as text.
    pub fn log_text(&self) -> String {
        self.shared
            .logs
            .lock()
            .unwrap()
            .iter()
            .map(|(_, text)| text.as_str())
            .collect()
    }
}

async fn claim(State(shared): State<Arc<Shared>>) -> Response {
    let next = shared.jobs.lock().unwrap().pop_front();
    match next {
        Some(job) => Json(job).into_response(),
        None => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

async fn watch(Path(job): Path<String>) -> Json<serde_json::Value> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    Json(serde_json::json!({
        "job_id": job,
        "directive": "continue",
        "status": "building",
        "lease_expires_at": "2099-01-01T00:00:00Z",
    }))
}

async fn status(
    State(shared): State<Arc<Shared>>,
    Path(job): Path<String>,
    Json(report): Json<serde_json::Value>,
) -> Json<serde_json::Value> {
    shared.reports.lock().unwrap().push((job, report));
    Json(serde_json::json!({}))
}

#[derive(serde::Deserialize)]
struct Offset {
    offset: u64,
}

async fn append(
    State(shared): State<Arc<Shared>>,
    Path((job, stream)): Path<(String, String)>,
    axum::extract::Query(Offset { offset }): axum::extract::Query<Offset>,
    body: Bytes,
) -> Json<serde_json::Value> {
    shared
        .logs
        .lock()
        .unwrap()
        .push((job, String::from_utf8_lossy(&body).into_owned()));
    Json(serde_json::json!({"stream": stream, "next_offset": offset + body.len() as u64}))
}
