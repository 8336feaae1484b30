//! Outbound webhooks: a project's signed news of its builds and deployments, for
//! chat, CMS re-indexing and search. Added in v1.9.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The events a webhook may ask for.
pub const WEBHOOK_EVENTS: [&str; 6] = [
    "build.created",
    "build.succeeded",
    "build.failed",
    "build.canceled",
    "deployment.live",
    "deployment.failed",
];

/// The header that signs a delivery: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>" keyed with the webhook's secret>`.
pub const SIGNATURE_HEADER: &str = "X-Kiln-Signature";

/// `POST /api/v1/projects/{id}/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries are POSTed (http or https).
    pub url: String,
    /// Names from `WEBHOOK_EVENTS`.
    pub events: Vec<String>,
}

/// A project's webhook. `secret` is in the answer to creating it only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub project_id: String,
    pub url: String,
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not yet answered with a 2xx; tried again at `next_attempt_at`.
    Pending,
    Delivered,
    /// No 2xx in 24 hours: no more tries, unless retried by hand.
    Failed,
}

/// One try at a delivery, and how it was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookAttempt {
    pub at: DateTime<Utc>,
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// The start of the answer's body, or why there was none.
    pub answer: String,
    pub took_ms: u64,
}

/// One event sent, or to be sent, to one webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    pub id: String,
    pub webhook_id: String,
    pub event: String,
    pub deployment_id: String,
    pub state: DeliveryState,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub attempts: Vec<WebhookAttempt>,
    /// The JSON body each attempt sends.
    pub body: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDeliveryList {
    pub deliveries: Vec<WebhookDelivery>,
}

/// `PUT /api/v1/environments/{id}/log-drain`: where an environment's build and
/// runtime logs also go, as OpenTelemetry logs over OTLP/HTTP (JSON). Added in
/// v1.9.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogDrain {
    /// The collector's OTLP/HTTP base, e.g. `https://otel.example.com:4318`;
    /// logs are POSTed to `<endpoint>/v1/logs`.
    pub otlp_endpoint: String,
    /// Sent with each request (an API key); never shown back.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// An environment's log drain as the API shows it: the header names only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogDrainInfo {
    pub otlp_endpoint: String,
    pub header_names: Vec<String>,
}
