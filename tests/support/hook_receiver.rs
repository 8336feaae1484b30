//! A receiver of Kiln's outbound webhooks on loopback, as a chat bridge or a
//! search indexer would run one: it records each delivery (its headers and raw
//! body) and answers 500 to the first `fail_first` of them, 204 after.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

#[derive(Debug, Clone)]
pub struct Received {
    pub signature: Option<String>,
    pub event: Option<String>,
    pub delivery: Option<String>,
    pub body: Bytes,
    pub answered: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Clone, Default)]
struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    fail_first: Arc<AtomicUsize>,
}

pub struct HookReceiver {
    pub addr: SocketAddr,
    shared: Shared,
    _stop: tokio_util::sync::DropGuard,
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let failing = shared
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok();
    let answered = if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    shared.received.lock().unwrap().push(Received {
        signature: header("x-kiln-signature"),
        event: header("x-kiln-event"),
        delivery: header("x-kiln-delivery"),
        body,
        answered: answered.as_u16(),
    });
    answered
}

impl HookReceiver {
    pub async fn start(fail_first: usize) -> HookReceiver {
        let shared = Shared::default();
        shared.fail_first.store(fail_first, Ordering::SeqCst);
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(shared.clone());
        let (addr, stop) = super::loopback::serve_on_loopback(app).await;
        HookReceiver {
            addr,
            shared,
            _stop: stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/kiln-events", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what arrived so far (30 s at most).
    pub async fn until(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        super::loopback::until_recorded("the receiver", what, || self.received(), done).await
    }
}

/// Checks `X-Kiln-Signature` as a receiver must: the HMAC-SHA256 of
/// `"<t>.<body>"` with the webhook's secret, and `t` within five minutes.
pub fn signature_holds(secret: &str, header: &str, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - t).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}
