//! Accepting connections with bounds a hostile client cannot stretch: at most
//! `max_connections` at once (further ones wait in the kernel's backlog, so the
//! server never runs out of file descriptors), at most `max_per_client` of them
//! from one address (more are closed as they come, so one client cannot hold
//! every slot), a request head must arrive within
//! `header_timeout` (also the longest a kept-alive connection may sit idle), and
//! a body that stalls for `body_timeout` between frames is cut off. Long-polls
//! are unaffected: they hold a request whose head has arrived.
//!
//! HTTP/1.1 only, as agents, curl and browsers behind a proxy speak it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long in-flight requests get to finish once the server is told to stop.
const DRAIN: Duration = Duration::from_secs(30);
/// File descriptors kept free for the database, logs and artifacts.
const SPARE_FILES: u64 = 32;

/// Bounds on what a connection may hold.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// Connections one client address may hold at once.
    pub max_per_client: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            max_per_client: 512,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// Connections the kernel queues before `serve` accepts them (capped by
/// `net.core.somaxconn`). The usual 128 overflows when hundreds of agents
/// reconnect at once, after a restart or a replica's death; each dropped
/// connection then waits a second or more for its SYN to be sent again.
const BACKLOG: u32 = 4096;

/// Listens on `addr` with room in the kernel's queue for a fleet's reconnects.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// `wanted`, or fewer when the process may not open that many files.
fn connection_cap(wanted: usize) -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let room = soft.saturating_sub(SPARE_FILES).max(1);
    wanted
        .min(usize::try_from(room).unwrap_or(usize::MAX))
        .max(1)
}

/// Serves `app` on `listener` until `shutdown` completes, then gives in-flight
/// requests up to `DRAIN` to finish.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_timeout,
    ));
    let cap = connection_cap(limits.max_connections);
    let slots = Arc::new(Semaphore::new(cap));
    // Connections held per client address; a connection's count goes when it
    // ends. The semaphore above bounds them all.
    let per_client: Arc<crate::sync::Counts<std::net::IpAddr>> = Arc::default();
    let graceful = GracefulShutdown::new();
    tracing::debug!(message = "Accepting connections.", max_connections = cap);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors or a connection reset before accept: the
                // listener is fine; try again shortly rather than spin.
                tracing::warn!(message = "Accept failed.", %error);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if per_client
            .take(&peer.ip(), limits.max_per_client.max(1), usize::MAX)
            .is_err()
        {
            // Closed at once: its slot goes back to everyone else.
            tracing::debug!(message = "A client holds its share of connections; closing another.", client = %peer.ip());
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        // The peer's address, for limits that count per address (sign-in).
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            app.clone(),
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            },
        ));
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        let per_client = per_client.clone();
        tokio::spawn(async move {
            // A client that goes away mid-request is not the server's error.
            let _ = connection.await;
            per_client.give_back(&peer.ip());
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(message = "Connections still open after the drain; closing them.");
    }
    Ok(())
}
