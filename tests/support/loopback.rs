//! The stand-ins' one way to serve on loopback (a git host's API, a git server,
//! a webhook receiver, a collector, a hostile control plane), and their one way
//! to wait for what they recorded.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, DropGuard};

/// Serves `app` on a free loopback port until the guard is dropped.
pub async fn serve_on_loopback(app: axum::Router) -> (SocketAddr, DropGuard) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped.cancelled_owned())
            .await
    });
    (addr, stop.drop_guard())
}

/// Polls `recorded` until `done` holds for it (30 s at most); `who` never
/// seeing `what` fails the test with what it did see.
pub async fn until_recorded<T: Debug>(
    who: &str,
    what: &str,
    recorded: impl Fn() -> Vec<T>,
    done: impl Fn(&[T]) -> bool,
) -> Vec<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = recorded();
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{who} never saw {what}; it saw:\n{seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
