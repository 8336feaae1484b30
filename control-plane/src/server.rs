//! Serving: the HTTP application (the API under `/api/v1`, the dashboard beside
//! it) on a listener, with the background tasks a server runs beside it, until
//! it is told to stop.

use std::future::Future;

use tokio::net::TcpListener;

use crate::db::replicas;
use crate::leader::{compact_finished_logs, reap_expired_leases};
use crate::{api, connections, dashboard, forge, metrics, retention, AppState};

/// The HTTP application, for embedding or testing: the API under `/api/v1`, the
/// dashboard beside it.
pub fn app(state: AppState) -> axum::Router {
    // Every answer is what its content type says: a browser never sniffs a
    // raw log (a build's output) into HTML.
    api::router(state.clone())
        .merge(dashboard::router(state))
        .layer(
            tower_http::set_header::SetResponseHeaderLayer::if_not_present(
                axum::http::header::X_CONTENT_TYPE_OPTIONS,
                axum::http::HeaderValue::from_static("nosniff"),
            ),
        )
}

/// Serves until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = match state.config.metrics_listen {
        Some(address) => {
            let listener = TcpListener::bind(address).await.map_err(|error| {
                std::io::Error::new(
                    error.kind(),
                    format!("cannot listen for metrics on {address}: {error}; is another server using it?"),
                )
            })?;
            tracing::info!(message = "Serving metrics.", address = %address);
            Some(tokio::spawn(metrics::serve(listener, state.clone())))
        }
        None => None,
    };
    // The listener thread must not keep the state (and its pool's connections)
    // alive after the server is gone.
    let waker = std::sync::Arc::downgrade(&state.0);
    let listener_thread = replicas::start_listener(
        &state.db,
        state.replicas.clone(),
        state.shutdown.clone(),
        move |wake| {
            if let Some(inner) = waker.upgrade() {
                AppState(inner).wake_local(wake);
            }
        },
    );
    let reaper = tokio::spawn(reap_expired_leases(state.clone()));
    let courier = tokio::spawn(forge::outbox::run(state.clone()));
    let webhook_courier = tokio::spawn(crate::webhooks::run(state.clone()));
    let drains = tokio::spawn(crate::drains::run(state.clone()));
    let compactor = tokio::spawn(compact_finished_logs(state.clone()));
    let retention = tokio::spawn(retention::remove_expired_artifacts(state.clone()));
    let stopping = state.shutdown.clone();
    let limits = state.config.connections;
    let result = connections::serve(listener, app(state), limits, async move {
        shutdown.await;
        // Long-polls would otherwise hold the shutdown for up to 30 s.
        stopping.cancel();
    })
    .await;
    reaper.abort();
    courier.abort();
    webhook_courier.abort();
    drains.abort();
    compactor.abort();
    retention.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    if let Some(thread) = listener_thread {
        // It sees the cancellation within a tick.
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    result
}
