//! A stand-in for a git host's API (GitHub's, GitLab's or Gitea's cannot be
//! reached from tests): an HTTP server on loopback that records every call
//! (method, path, auth header, JSON body) and answers 201 with a fresh `id`, or
//! 500 while told to fail.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;

/// One call the host received.
#[derive(Debug, Clone)]
pub struct HostCall {
    pub method: String,
    pub path: String,
    /// `Authorization`, or GitLab's `PRIVATE-TOKEN`.
    pub auth: Option<String>,
    pub body: serde_json::Value,
    /// What the host answered.
    pub status: u16,
}

#[derive(Clone, Default)]
struct Shared {
    calls: Arc<Mutex<Vec<HostCall>>>,
    failing: Arc<AtomicBool>,
    ids: Arc<AtomicU64>,
}

pub struct StatusHost {
    pub addr: SocketAddr,
    shared: Shared,
    _stop: tokio_util::sync::DropGuard,
}

async fn record(
    State(shared): State<Shared>,
    headers: HeaderMap,
    request: Request,
) -> impl IntoResponse {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let body: Bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let auth = ["authorization", "private-token"]
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let failing = shared.failing.load(Ordering::SeqCst);
    let status = if failing { 500 } else { 201 };
    shared.calls.lock().unwrap().push(HostCall {
        method,
        path,
        auth,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        status,
    });
    if failing {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the host is down for the test".to_owned(),
        );
    }
    let id = shared.ids.fetch_add(1, Ordering::SeqCst) + 1000;
    (
        StatusCode::CREATED,
        serde_json::json!({ "id": id }).to_string(),
    )
}

impl StatusHost {
    pub async fn start() -> StatusHost {
        let shared = Shared::default();
        let app = axum::Router::new()
            .fallback(record)
            .with_state(shared.clone());
        let (addr, stop) = super::loopback::serve_on_loopback(app).await;
        StatusHost {
            addr,
            shared,
            _stop: stop,
        }
    }

    /// The API base URL to configure as a project's `git_host.api_url`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// Answer 500 to everything (`true`) or 201 again (`false`).
    pub fn fail(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    pub fn calls(&self) -> Vec<HostCall> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// Accepted calls whose path contains `fragment`.
    pub fn accepted(&self, fragment: &str) -> Vec<HostCall> {
        self.calls()
            .into_iter()
            .filter(|call| call.status == 201 && call.path.contains(fragment))
            .collect()
    }

    /// Waits until `done` holds for what arrived so far (30 s at most).
    pub async fn until(&self, what: &str, done: impl Fn(&[HostCall]) -> bool) -> Vec<HostCall> {
        super::loopback::until_recorded("the git host", what, || self.calls(), done).await
    }
}
