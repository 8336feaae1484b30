//! A small OpenTelemetry collector on loopback (the real one is not available
//! here): it takes OTLP/HTTP JSON log exports at `POST /v1/logs`, records each
//! log record with its resource's service, and answers 503 while told to fail.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

#[derive(Debug, Clone)]
pub struct OtlpRecord {
    pub service: String,
    pub version: String,
    pub body: String,
    pub severity: Option<String>,
    pub time_unix_nano: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Clone, Default)]
struct Shared {
    records: Arc<Mutex<Vec<OtlpRecord>>>,
    failing: Arc<AtomicBool>,
    refused: Arc<Mutex<usize>>,
}

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    shared: Shared,
    _stop: tokio_util::sync::DropGuard,
}

fn resource_attribute(resource: &serde_json::Value, key: &str) -> String {
    resource["resource"]["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|attribute| attribute["key"] == key)
        .and_then(|attribute| attribute["value"]["stringValue"].as_str())
        .unwrap_or_default()
        .to_owned()
}

async fn logs(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(export): Json<serde_json::Value>,
) -> StatusCode {
    if shared.failing.load(Ordering::SeqCst) {
        *shared.refused.lock().unwrap() += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let authorization = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut records = shared.records.lock().unwrap();
    for resource in export["resourceLogs"].as_array().into_iter().flatten() {
        let service = resource_attribute(resource, "service.name");
        let version = resource_attribute(resource, "service.version");
        for scope in resource["scopeLogs"].as_array().into_iter().flatten() {
            for record in scope["logRecords"].as_array().into_iter().flatten() {
                records.push(OtlpRecord {
                    service: service.clone(),
                    version: version.clone(),
                    body: record["body"]["stringValue"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    severity: record["severityText"].as_str().map(str::to_owned),
                    time_unix_nano: record["timeUnixNano"].as_str().map(str::to_owned),
                    authorization: authorization.clone(),
                });
            }
        }
    }
    StatusCode::OK
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let shared = Shared::default();
        let app = axum::Router::new()
            .route("/v1/logs", axum::routing::post(logs))
            .with_state(shared.clone());
        let (addr, stop) = super::loopback::serve_on_loopback(app).await;
        OtlpReceiver {
            addr,
            shared,
            _stop: stop,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer 503 (`true`) or take exports again (`false`).
    pub fn fail(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    pub fn refused(&self) -> usize {
        *self.shared.refused.lock().unwrap()
    }

    pub fn records(&self) -> Vec<OtlpRecord> {
        self.shared.records.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what arrived so far (30 s at most).
    pub async fn until(&self, what: &str, done: impl Fn(&[OtlpRecord]) -> bool) -> Vec<OtlpRecord> {
        super::loopback::until_recorded("the collector", what, || self.records(), done).await
    }
}
