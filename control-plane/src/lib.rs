//! Kiln's reference control plane: projects, environments bound to branches,
//! deployments per push and per pull request, agents that claim jobs by long-poll,
//! logs and artifacts, git-host webhooks and status reports, the dashboard, and
//! the deploy step.
//!
//! `main.rs` only calls `cli::main`; everything else is here so tests run the
//! real server in-process on `127.0.0.1:0`.

// Every binary that serves (kiln-server, the tests' copy, the benchmarks) gets
// it: with many threads allocating per request, glibc's malloc cost the claim
// path 6–12% of its throughput.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod artifacts;
pub mod cli;
pub mod connections;
mod dashboard;
mod db;
mod deployer;
mod error;
mod follows;
mod git_hosts;
mod hooks;
mod http;
mod log_index;
mod logs;
mod metrics;
mod objects;
mod pg_tls;
mod replicas;
mod retention;
mod routes;
mod sql;
mod store;

use std::future::Future;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use connections::ConnectionLimits;
pub use db::DbError;
pub use error::ApiError;
pub use objects::ObjectStoreConfig;

use artifacts::ArtifactStore;
use db::Db;
use logs::LogStore;

/// Locks a mutex, taking over a poisoned one: every value behind these locks is
/// left consistent between statements (database writes run in transactions), so a
/// panic elsewhere does not spoil it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How the server runs. `main.rs` fills it from flags and environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `kiln.sqlite`, `logs/`, `artifacts/` and `releases/`.
    pub data_dir: PathBuf,
    /// PostgreSQL instead of `kiln.sqlite`, for replicas sharing one fleet.
    pub database_url: Option<String>,
    /// On PostgreSQL, the most connections this replica holds at once.
    pub database_connections: usize,
    /// Logs and artifacts in an object store too (replicas share no disk).
    pub object_store: Option<ObjectStoreConfig>,
    /// On PostgreSQL, how often a parked claim looks again in case a replica's
    /// wake-up was lost.
    pub missed_wake_recheck: Duration,
    /// Bearer token for user endpoints.
    pub admin_token: String,
    /// Shared secret agents present once to get their own token.
    pub registration_token: String,
    /// An agent that doesn't renew within this long has lost its job.
    pub lease: Duration,
    /// How often expired leases are looked for.
    pub reaper_interval: Duration,
    /// With an object store: how long after its job ends a log's chunks are
    /// gathered into one object per stream (late appends have landed by then).
    pub log_compaction_delay: Duration,
    /// Wall-clock limit handed to agents with each job.
    pub job_timeout: Duration,
    /// How long after a deployment ended (and stopped being live) its artifacts
    /// and release are kept; `None` keeps them for ever.
    pub artifact_retention: Option<Duration>,
    /// How often the retention policy is applied.
    pub retention_interval: Duration,
    /// Claims of one deployment before a lost agent fails it.
    pub max_attempts: u32,
    /// Shell command run by the deploy step; non-zero exit is `deploy_failed`.
    pub deploy_hook: Option<String>,
    pub deploy_timeout: Duration,
    pub max_artifact_bytes: u64,
    /// Accept `file://` and absolute-path repository URLs: the quick start's
    /// single machine, where the agent clones from the same disk.
    pub allow_local_repositories: bool,
    /// Send statuses to a git host API on loopback or a private network (a
    /// self-hosted Gitea beside the server; the tests' recording host).
    pub allow_private_git_hosts: bool,
    /// Bytes kept per log stream of a job (the agent's `log_limit`, plus room for
    /// its truncation notice); appends past it are refused.
    pub log_limit: u64,
    pub connections: ConnectionLimits,
    /// Where `/metrics` is served, apart from the API; `None` serves none.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where people reach this server (`https://kiln.example.com`): links sent
    /// elsewhere point there, and an `https` one marks session cookies Secure.
    pub public_url: Option<String>,
    /// The first wait before a git host's refused report is sent again (it
    /// doubles each time, up to 10 minutes).
    pub git_host_retry: Duration,
    /// Live log follows one client address may hold at once.
    pub follows_per_client: usize,
}

impl Config {
    pub fn database_location(&self) -> db::Location {
        db::Location::new(&self.data_dir, self.database_url.as_deref())
    }

    pub fn new(data_dir: PathBuf, admin_token: String, registration_token: String) -> Self {
        Self {
            data_dir,
            database_url: None,
            database_connections: db::POSTGRES_CONNECTIONS,
            object_store: None,
            missed_wake_recheck: Duration::from_secs(2),
            admin_token,
            registration_token,
            lease: Duration::from_secs(60),
            reaper_interval: Duration::from_secs(1),
            log_compaction_delay: Duration::from_secs(60),
            job_timeout: Duration::from_secs(3600),
            artifact_retention: None,
            retention_interval: Duration::from_secs(600),
            max_attempts: 2,
            deploy_hook: None,
            deploy_timeout: Duration::from_secs(600),
            max_artifact_bytes: 10 * 1024 * 1024 * 1024,
            allow_local_repositories: false,
            allow_private_git_hosts: false,
            log_limit: 100 << 20,
            connections: ConnectionLimits::default(),
            metrics_listen: None,
            public_url: None,
            git_host_retry: Duration::from_secs(2),
            follows_per_client: 16,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{name} is empty; set it to a long random secret")]
    EmptySecret { name: &'static str },
    #[error("cannot create data directory {path}: {source}; check it exists and is writable by this user")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Objects(#[from] objects::ObjectsError),
}

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    db: Db,
    logs: LogStore,
    artifacts: ArtifactStore,
    admin_token_hash: String,
    registration_token_hash: String,
    /// Woken when a deployment is queued: claim long-polls look again.
    jobs_queued: Notify,
    /// Woken on any status change: job watches and log followers look again.
    changes: Notify,
    /// Whether this replica leads (runs the singleton work).
    replicas: replicas::Replicas,
    /// Ends long-polls and log follows when the server stops.
    shutdown: CancellationToken,
    /// Requests parked in a long-poll or a log follow, by kind.
    parked: [tokio::sync::watch::Sender<usize>; 3],
    /// Failed dashboard sign-ins, per user and per address.
    sign_ins: dashboard::SignInLimiter,
    /// Live log follows, apart from agents' long-polls.
    follows: follows::FollowSlots,
}

/// What a parked request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A claim waiting for a job to be queued.
    Claim,
    /// A job watch waiting for a cancel.
    Watch,
    /// A log follower waiting for more bytes.
    Follow,
}

/// Counts a request as parked while it lives.
pub(crate) struct Parked<'a>(&'a tokio::sync::watch::Sender<usize>);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|count| *count -= 1);
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Opens (or creates) the data directory and migrates the database.
    pub fn open(config: Config) -> Result<Self, StartError> {
        if config.admin_token.trim().is_empty() {
            return Err(StartError::EmptySecret {
                name: "KILN_ADMIN_TOKEN",
            });
        }
        if config.registration_token.trim().is_empty() {
            return Err(StartError::EmptySecret {
                name: "KILN_REGISTRATION_TOKEN",
            });
        }
        for dir in ["logs", "artifacts", "releases"] {
            let path = config.data_dir.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(|source| StartError::DataDir { path, source })?;
        }
        let db = Db::open(&config.database_location(), config.database_connections)?;
        let db_shared = db.postgres_url().is_some();
        let missed_wake_recheck = config.missed_wake_recheck;
        let objects = config
            .object_store
            .as_ref()
            .map(objects::Objects::open)
            .transpose()?;
        let (config_connections, follows_per_client) = (
            config.connections.max_connections,
            config.follows_per_client,
        );
        let shared_logs = objects.clone().map(|objects| logs::SharedLogs {
            objects,
            db: db.clone(),
        });
        Ok(Self(Arc::new(Inner {
            // Room past the agents' limit for the one line that says they cut it.
            logs: LogStore::new(config.data_dir.join("logs"), config.log_limit + 4096)
                .with_shared(shared_logs),
            artifacts: ArtifactStore::new(config.data_dir.join("artifacts"), objects),
            admin_token_hash: http::sha256_hex(config.admin_token.as_bytes()),
            registration_token_hash: http::sha256_hex(config.registration_token.as_bytes()),
            config,
            db,
            jobs_queued: Notify::new(),
            changes: Notify::new(),
            replicas: replicas::Replicas::new(db_shared, missed_wake_recheck),
            shutdown: CancellationToken::new(),
            parked: Default::default(),
            sign_ins: Default::default(),
            follows: follows::FollowSlots::new(config_connections, follows_per_client),
        })))
    }

    fn project_rules(&self) -> store::ProjectRules {
        store::ProjectRules {
            allow_local_repositories: self.config.allow_local_repositories,
            allow_private_git_hosts: self.config.allow_private_git_hosts,
        }
    }

    fn job_policy(&self) -> store::JobPolicy {
        store::JobPolicy {
            lease_ms: self.config.lease.as_millis() as i64,
            job_timeout_seconds: self.config.job_timeout.as_secs(),
            max_attempts: self.config.max_attempts,
        }
    }

    /// Counts the calling request as parked in `wait` until the guard drops.
    pub(crate) fn park(&self, wait: Wait) -> Parked<'_> {
        let count = &self.parked[wait as usize];
        count.send_modify(|count| *count += 1);
        Parked(count)
    }

    /// Whether this replica runs the singleton work (always, on SQLite).
    pub fn is_leader(&self) -> bool {
        self.replicas.is_leader()
    }

    /// How many requests are parked in `wait`, as it changes: a test waits on it
    /// for a long-poll to be in place before it acts.
    pub fn parked(&self, wait: Wait) -> tokio::sync::watch::Receiver<usize> {
        self.parked[wait as usize].subscribe()
    }

    /// A deployment was queued or canceled: wake claims and watches, on every
    /// replica.
    fn announce_queue_change(&self) {
        self.wake_local(replicas::Wake::Queue);
        replicas::broadcast(self, replicas::Wake::Queue);
    }

    /// A status changed: wake watches, log followers and the courier, on every
    /// replica.
    fn announce_change(&self) {
        self.wake_local(replicas::Wake::Changes);
        replicas::broadcast(self, replicas::Wake::Changes);
    }

    fn wake_local(&self, wake: replicas::Wake) {
        match wake {
            replicas::Wake::Queue => {
                self.jobs_queued.notify_waiters();
                self.changes.notify_waiters();
            }
            replicas::Wake::Changes => self.changes.notify_waiters(),
            replicas::Wake::Logs => self.logs.appended.notify_waiters(),
        }
    }
}

/// The HTTP application, for embedding or testing: the API under `/api/v1`, the
/// dashboard beside it.
pub fn app(state: AppState) -> axum::Router {
    // Every answer is what its content type says: a browser never sniffs a
    // raw log (a build's output) into HTML.
    routes::router(state.clone())
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
    let listener_thread = replicas::start_listener(state.clone());
    let reaper = tokio::spawn(reap_expired_leases(state.clone()));
    let courier = tokio::spawn(git_hosts::outbox::run(state.clone()));
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

/// Runs again the deploys whose replica stopped renewing them: it died, or it
/// was this server's previous run. A deploy hook may so run twice for one
/// deployment, as it always has after a restart.
async fn take_over_orphaned_deploys(state: &AppState) {
    let deployer = state.replicas.id().to_owned();
    let lease_ms = state.config.lease.as_millis() as i64;
    // A lone server's database holds no other live replica's deploys.
    let every_other = !state.replicas.shared();
    match state
        .db
        .call(move |conn| store::take_over_deploys(conn, &deployer, lease_ms, every_other))
        .await
    {
        Ok(ids) => {
            for id in ids {
                tracing::warn!(message = "Taking over a deploy its replica stopped renewing; running it again.", deployment_id = %id);
                tokio::spawn(deployer::run(state.clone(), id));
            }
        }
        Err(error) => tracing::error!(message = "Cannot look for orphaned deploys.", %error),
    }
}

/// Jobs whose logs one look compacts; the next look takes the next ones.
const LOGS_COMPACTED_PER_LOOK: i64 = 16;
/// Looks at one log that fails before it is left in its chunks.
const COMPACTION_TRIES: u32 = 3;

/// On the leader, with an object store: gathers the logs of jobs that ended
/// `log_compaction_delay` ago into one object per stream.
async fn compact_finished_logs(state: AppState) {
    if !state.logs.is_shared() {
        return;
    }
    let mut ticks = LeaderTicks::new(
        &state,
        state.config.reaper_interval.max(Duration::from_secs(1)),
    );
    let mut failed: std::collections::HashMap<String, u32> = Default::default();
    while ticks.next().await {
        let ended_before = store::now_ms() - state.config.log_compaction_delay.as_millis() as i64;
        let jobs = match state
            .db
            .call(move |conn| {
                store::jobs_with_logs_to_compact(conn, ended_before, LOGS_COMPACTED_PER_LOOK)
            })
            .await
        {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::error!(message = "Cannot look for logs to compact.", %error);
                continue;
            }
        };
        for job_id in jobs {
            match state.logs.compact(&job_id).await {
                Ok(replaced) if replaced > 0 => {
                    tracing::info!(
                        message = "Log compacted.",
                        job_id,
                        chunks_replaced = replaced
                    );
                }
                Ok(_) => {}
                // The chunks still hold the log: it is only read with more
                // requests. Given up after a few looks, so it never holds up
                // the jobs behind it.
                Err(error) => {
                    let failures = failed.entry(job_id.clone()).or_insert(0);
                    *failures += 1;
                    if *failures < COMPACTION_TRIES {
                        tracing::warn!(message = "Cannot compact a log; will try again.", job_id, %error);
                        continue;
                    }
                    tracing::error!(message = "Cannot compact a log; leaving it in its chunks.", job_id, %error);
                }
            }
            failed.remove(&job_id);
            let id = job_id.clone();
            if let Err(error) = state
                .db
                .call(move |conn| store::mark_logs_compacted(conn, &id))
                .await
            {
                tracing::error!(message = "Cannot note a log compacted.", job_id, %error);
            }
        }
    }
}

/// The ticks of singleton work: one each `every` while this replica leads,
/// none once the server stops.
struct LeaderTicks {
    state: AppState,
    tick: tokio::time::Interval,
}

impl LeaderTicks {
    fn new(state: &AppState, every: Duration) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            state: state.clone(),
            tick,
        }
    }

    /// Waits for the next tick on which this replica leads; `false` once the
    /// server stops.
    async fn next(&mut self) -> bool {
        loop {
            tokio::select! {
                _ = self.tick.tick() => {}
                _ = self.state.shutdown.cancelled() => return false,
            }
            if self.state.replicas.is_leader() {
                return true;
            }
        }
    }
}

async fn reap_expired_leases(state: AppState) {
    let mut ticks = LeaderTicks::new(&state, state.config.reaper_interval);
    while ticks.next().await {
        let policy = state.job_policy();
        match state
            .db
            .call(move |conn| store::expire_leases(conn, policy))
            .await
        {
            Ok(expired) if !expired.is_empty() => {
                tracing::warn!(message = "Agent leases expired.", deployments = ?expired);
                state.announce_queue_change();
            }
            Ok(_) => {}
            Err(error) => tracing::error!(message = "Lease reaper failed.", %error),
        }
        take_over_orphaned_deploys(&state).await;
    }
}
