//! `/metrics` for the operator, on `--metrics-listen` (off by default, apart from
//! the API so the fleet's numbers need no token and go nowhere public): the
//! queue and the fleet as the store has them, so every replica's scrape gives
//! the same numbers, and whether this replica leads.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::error::ApiError;
use crate::{store, AppState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// Serves `/metrics` until the server stops.
pub(crate) async fn serve(listener: TcpListener, state: AppState) {
    let stopping = state.shutdown.clone();
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .with_state(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stopping.cancelled_owned())
        .await;
    if let Err(error) = served {
        tracing::warn!(message = "The metrics server stopped.", %error);
    }
}

async fn scrape(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let counts = state.db.call(store::fleet_counts).await?;
    // A registry per scrape: every number is read afresh from the store.
    let mut registry = Registry::with_prefix("kiln_server");
    let deployments = gauges(counts.deployments.iter().map(|(status, count)| {
        let status = status.as_str().to_owned();
        (StatusLabel { status }, *count)
    }));
    registry.register(
        "deployments",
        "Deployments by status; `queued` is the queue's length",
        deployments,
    );
    let oldest = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    oldest.set(counts.oldest_queued_ms as f64 / 1000.0);
    registry.register(
        "queue_oldest_seconds",
        "How long the oldest queued deployment has waited for an agent (0 with none)",
        oldest,
    );
    let agents = gauges(counts.agents.iter().map(|(agent_state, count)| {
        let state = agent_state.as_str().to_owned();
        (StateLabel { state }, *count)
    }));
    registry.register(
        "agents",
        "Agents not revoked, by state (offline: silent for two minutes)",
        agents,
    );
    let holding_back = Gauge::<i64>::default();
    holding_back.set(counts.agents_holding_back);
    registry.register(
        "agents_holding_back",
        "Agents that claim no jobs because their disk is low",
        holding_back,
    );
    let leader = Gauge::<i64>::default();
    leader.set(i64::from(state.replicas.is_leader()));
    registry.register(
        "leader",
        "1 on the replica that runs the singleton work (lease reaper, courier, retention)",
        leader,
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|error| ApiError::Internal(format!("cannot encode metrics: {error}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}

/// One gauge per label set, set to its count.
fn gauges<L>(counts: impl Iterator<Item = (L, i64)>) -> Family<L, Gauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Gauge>::default();
    for (labels, count) in counts {
        family.get_or_create(&labels).set(count);
    }
    family
}
