//! A stand-in for a Medusa backend's Store API on loopback (empty regions,
//! products and collections), so a Next.js storefront's `next build`, which
//! fetches them while it renders, runs offline.

/// Serves until the guard drops; returns its port.
pub async fn stand_in_store_api() -> (u16, tokio_util::sync::DropGuard) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/health", get(|| async { "OK" }))
        .route(
            "/store/{resource}",
            get(|| async {
                axum::Json(serde_json::json!({
                    "regions": [], "products": [], "collections": [], "product_categories": [],
                    "count": 0, "offset": 0, "limit": 100
                }))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped.cancelled_owned())
            .await
    });
    (port, stop.drop_guard())
}
