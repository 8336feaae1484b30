//! What an operator watches: Prometheus metrics, `/healthz` and `/readyz` on
//! `metrics_listen` (off by default), and systemd's notify protocol (ready, status
//! line, watchdog).
//!
//! Metrics live in one process-wide `Metrics` (`metrics()`), so the code that does
//! the work records it where it happens, without threading a handle through every
//! call. Health is judged from what the daemon last saw: its claim loop turning, the
//! control plane answering, Docker answering.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `succeeded`, `failed`, `canceled` or `lost`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub stream: String,
}

pub struct Metrics {
    registry: Registry,
    pub jobs_running: Gauge,
    pub jobs_finished: Family<OutcomeLabel, Counter>,
    pub claim_latency: Histogram,
    pub cancel_latency: Histogram,
    pub log_bytes: Family<StreamLabel, Counter>,
    pub artifact_bytes: Counter,
    pub spool_bytes: Gauge,
    pub control_plane_errors: Counter,
    pub docker_errors: Counter,
    /// 1 while the agent claims no jobs because its disk is low.
    pub holding_back: Gauge,
    health: Health,
}

/// The last sign of each part: when the claim loop turned (ms since the epoch, 0 =
/// never), and whether the last call to each service failed.
#[derive(Default)]
struct Health {
    loop_turned: AtomicI64,
    control_plane_failing: AtomicBool,
    docker_failing: AtomicBool,
    capacity: AtomicU64,
    last_problem: Mutex<Option<String>>,
    /// Why the agent claims no jobs now, for the status line.
    holding_back: Mutex<Option<String>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The claim loop turns at least once per claim long-poll (30 s); twice that and
/// some slack means it is stuck.
const LOOP_STALE: Duration = Duration::from_secs(90);

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kiln_agent");
        let jobs_running = Gauge::default();
        registry.register("jobs_running", "Jobs being built now", jobs_running.clone());
        let jobs_finished = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "jobs_finished",
            "Jobs finished, by outcome (succeeded, failed, canceled, lost)",
            jobs_finished.clone(),
        );
        let claim_latency = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "claim_latency_seconds",
            "From a job's claim to the control plane accepting its `building` report",
            claim_latency.clone(),
        );
        let cancel_latency = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "cancel_latency_seconds",
            "From a build's cancel (control plane or newer job) to its containers being gone",
            cancel_latency.clone(),
        );
        let log_bytes = Family::<StreamLabel, Counter>::default();
        registry.register(
            "log_bytes",
            "Log bytes the control plane accepted, by stream",
            log_bytes.clone(),
        );
        let artifact_bytes = Counter::default();
        registry.register(
            "artifact_bytes",
            "Artifact bytes uploaded",
            artifact_bytes.clone(),
        );
        let spool_bytes = Gauge::default();
        registry.register(
            "spool_bytes",
            "Bytes of log spool on disk (not yet delivered, or kept for a running job)",
            spool_bytes.clone(),
        );
        let control_plane_errors = Counter::default();
        registry.register(
            "control_plane_errors",
            "Calls to the control plane that failed (network, 5xx, 429)",
            control_plane_errors.clone(),
        );
        let docker_errors = Counter::default();
        registry.register(
            "docker_errors",
            "Calls to the Docker engine that failed",
            docker_errors.clone(),
        );
        let holding_back = Gauge::default();
        registry.register(
            "holding_back",
            "1 while the agent claims no jobs because the disk under work_dir is below min_free_disk",
            holding_back.clone(),
        );
        Metrics {
            registry,
            holding_back,
            jobs_running,
            jobs_finished,
            claim_latency,
            cancel_latency,
            log_bytes,
            artifact_bytes,
            spool_bytes,
            control_plane_errors,
            docker_errors,
            health: Health::default(),
        }
    }

    pub fn finished(&self, outcome: &str) {
        self.jobs_finished
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn logged(&self, stream: &str, bytes: u64) {
        self.log_bytes
            .get_or_create(&StreamLabel {
                stream: stream.to_owned(),
            })
            .inc_by(bytes);
    }

    /// How many jobs the agent builds at once (its `concurrency`), for the status line.
    pub fn set_capacity(&self, capacity: usize) {
        self.health
            .capacity
            .store(capacity as u64, Ordering::Relaxed);
    }

    /// Why the agent claims no jobs now (`None`: it claims).
    pub fn set_holding_back(&self, reason: Option<&str>) {
        self.holding_back.set(i64::from(reason.is_some()));
        *crate::lock(&self.health.holding_back) = reason.map(str::to_owned);
    }

    /// The claim loop went round.
    pub fn loop_turned(&self) {
        self.health.loop_turned.store(now_ms(), Ordering::Relaxed);
    }

    pub fn control_plane_answered(&self) {
        self.health
            .control_plane_failing
            .store(false, Ordering::Relaxed);
    }

    pub fn control_plane_failed(&self, error: &str) {
        self.control_plane_errors.inc();
        self.health
            .control_plane_failing
            .store(true, Ordering::Relaxed);
        *crate::lock(&self.health.last_problem) = Some(format!("control plane: {error}"));
    }

    pub fn docker_answered(&self) {
        self.health.docker_failing.store(false, Ordering::Relaxed);
    }

    pub fn docker_failed(&self, error: &str) {
        self.docker_errors.inc();
        self.health.docker_failing.store(true, Ordering::Relaxed);
        *crate::lock(&self.health.last_problem) = Some(format!("docker: {error}"));
    }

    /// Alive: the claim loop has turned lately.
    pub fn live(&self) -> Result<(), String> {
        let turned = self.health.loop_turned.load(Ordering::Relaxed);
        if turned == 0 {
            return Err("the claim loop has not started".to_owned());
        }
        let age = now_ms() - turned;
        if age > LOOP_STALE.as_millis() as i64 {
            return Err(format!(
                "the claim loop has not turned for {} s",
                age / 1000
            ));
        }
        Ok(())
    }

    /// Ready to take jobs: alive, and neither the control plane nor Docker failing
    /// on the last call. (A claim is a 30 s long-poll, so "answered lately" would
    /// keep a fresh agent unready; a failing call shows at once, a hanging connect
    /// within its 10 s timeout.)
    pub fn ready(&self) -> Result<(), String> {
        self.live()?;
        let problem = || {
            crate::lock(&self.health.last_problem)
                .clone()
                .unwrap_or_default()
        };
        if self.health.control_plane_failing.load(Ordering::Relaxed) {
            return Err(format!(
                "the control plane is not answering ({})",
                problem()
            ));
        }
        if self.health.docker_failing.load(Ordering::Relaxed) {
            return Err(format!("Docker is not answering ({})", problem()));
        }
        Ok(())
    }

    /// The Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The line systemd shows in `systemctl status`.
    pub fn status_line(&self) -> String {
        let running = self.jobs_running.get();
        let capacity = self.health.capacity.load(Ordering::Relaxed);
        let mut line = match self.ready() {
            Ok(()) => format!("running {running}/{capacity} jobs"),
            Err(problem) => format!("running {running}/{capacity} jobs; not ready: {problem}"),
        };
        if let Some(reason) = crate::lock(&self.health.holding_back).as_deref() {
            line.push_str("; claiming no jobs: ");
            line.push_str(reason);
        }
        line
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `stop`.
pub async fn serve(listener: tokio::net::TcpListener, stop: CancellationToken) {
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics().encode(),
                )
            }),
        )
        .route("/healthz", get(|| async { verdict(metrics().live()) }))
        .route("/readyz", get(|| async { verdict(metrics().ready()) }));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(error) = served {
        tracing::warn!(message = "The metrics server stopped.", %error);
    }
}

fn verdict(result: Result<(), String>) -> (StatusCode, String) {
    match result {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(problem) => (StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n")),
    }
}

/// Keeps the spool-size gauge current.
pub async fn measure_spool(spool: std::path::PathBuf, stop: CancellationToken) {
    loop {
        let dir = spool.clone();
        let bytes = tokio::task::spawn_blocking(move || crate::disk::usage(&dir))
            .await
            .unwrap_or(0);
        metrics().spool_bytes.set(bytes as i64);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The watchdog interval systemd asked for, as `sd_watchdog_enabled(3)` reads it: an
/// unset `WATCHDOG_PID` means "this process" (sd-notify's own check demands it).
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var(crate::env_vars::WATCHDOG_USEC)
        .ok()?
        .parse()
        .ok()?;
    match std::env::var(crate::env_vars::WATCHDOG_PID) {
        Ok(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

/// Tells systemd the agent is stopping: called from the signal path itself, at
/// the first signal, so a drain that ends quickly (and the runtime with it)
/// cannot lose it. Does nothing outside systemd.
pub fn notify_stopping() {
    if std::env::var_os(crate::env_vars::NOTIFY_SOCKET).is_some() {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    }
}

/// Tells systemd the agent is ready, keeps its status line current, and pings the
/// watchdog only while the claim loop turns and the control plane answers, so a
/// wedged agent is restarted; ends when `stop` (the first signal) comes, whose
/// STOPPING the signal path sends (`notify_stopping`). Does nothing outside
/// systemd.
pub async fn notify_systemd(stop: CancellationToken) {
    if std::env::var_os(crate::env_vars::NOTIFY_SOCKET).is_none() {
        return;
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let watchdog = watchdog_interval();
    let every = watchdog.map_or(Duration::from_secs(10), |limit| {
        (limit / 3).min(Duration::from_secs(10))
    });
    loop {
        let status = metrics().status_line();
        let mut states = vec![sd_notify::NotifyState::Status(&status)];
        // `ready` includes `live`.
        if watchdog.is_some() && metrics().ready().is_ok() {
            states.push(sd_notify::NotifyState::Watchdog);
        }
        let _ = sd_notify::notify(false, &states);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_loop_the_control_plane_and_docker() {
        let metrics = Metrics::new();
        assert!(metrics.live().unwrap_err().contains("not started"));
        metrics.set_capacity(2);
        metrics.loop_turned();
        assert_eq!(metrics.ready(), Ok(()));
        metrics.control_plane_failed("connection refused");
        let problem = metrics.ready().unwrap_err();
        assert!(
            problem.contains("control plane") && problem.contains("connection refused"),
            "{problem}"
        );
        assert!(metrics
            .status_line()
            .starts_with("running 0/2 jobs; not ready"));
        metrics.control_plane_answered();
        metrics.docker_failed("ping: socket gone");
        assert!(metrics.ready().unwrap_err().contains("Docker"));
        metrics.docker_answered();
        assert_eq!(metrics.status_line(), "running 0/2 jobs");
        assert_eq!(metrics.live(), Ok(()));
        metrics.set_holding_back(Some("only 1 GiB free"));
        assert_eq!(
            metrics.status_line(),
            "running 0/2 jobs; claiming no jobs: only 1 GiB free"
        );
        assert_eq!(metrics.holding_back.get(), 1);
        metrics.set_holding_back(None);
        assert_eq!(metrics.status_line(), "running 0/2 jobs");
        assert_eq!(metrics.holding_back.get(), 0);
    }

    #[test]
    fn text_format_names_every_metric() {
        let metrics = Metrics::new();
        metrics.finished("succeeded");
        metrics.logged("backend", 10);
        let text = metrics.encode();
        for name in [
            "kiln_agent_jobs_running",
            "kiln_agent_jobs_finished_total{outcome=\"succeeded\"} 1",
            "kiln_agent_claim_latency_seconds_bucket",
            "kiln_agent_cancel_latency_seconds_count",
            "kiln_agent_log_bytes_total{stream=\"backend\"} 10",
            "kiln_agent_artifact_bytes_total",
            "kiln_agent_spool_bytes",
            "kiln_agent_control_plane_errors_total",
            "kiln_agent_docker_errors_total",
            "kiln_agent_holding_back 0",
        ] {
            assert!(text.contains(name), "{name} not in\n{text}");
        }
    }
}
