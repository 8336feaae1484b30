//! What the server is and holds: its `Config`, and `AppState`, the one value
//! every handler and background task shares (the database, the log and
//! artifact stores, the wake-ups, the replica's standing, the counts of parked
//! requests). Leaves out what runs: `server` serves it, `leader` runs the
//! singleton loops.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::artifacts::ArtifactStore;
use crate::connections::ConnectionLimits;
use crate::db::replicas;
use crate::db::{self, Db, DbError};
use crate::logs::{self, LogStore};
use crate::objects::{self, ObjectStoreConfig};
use crate::{follows, secrets, store};

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
    /// Where release images go (`host[:port][/path]`), for deploy hosts to pull.
    pub registry: Option<String>,
    pub deploy_timeout: Duration,
    pub max_artifact_bytes: u64,
    /// Accept `file://` and absolute-path repository URLs: the quick start's
    /// single machine, where the agent clones from the same disk.
    pub allow_local_repositories: bool,
    /// Send statuses to a git host API on loopback or a private network (a
    /// self-hosted Gitea beside the server; the tests' recording host).
    pub allow_private_git_hosts: bool,
    /// Send project webhooks to loopback or a private network.
    pub allow_private_webhooks: bool,
    /// The first wait before a webhook delivery without a 2xx is tried again
    /// (growing each time; no tries after 24 hours).
    pub webhook_retry: Duration,
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
    /// The provenance signing key (PKCS#8 PEM) when given, in place of the
    /// data dir's.
    pub signing_key: Option<PathBuf>,
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
            registry: None,
            deploy_timeout: Duration::from_secs(600),
            max_artifact_bytes: 10 * 1024 * 1024 * 1024,
            allow_local_repositories: false,
            allow_private_git_hosts: false,
            allow_private_webhooks: false,
            webhook_retry: Duration::from_secs(10),
            log_limit: 100 << 20,
            connections: ConnectionLimits::default(),
            metrics_listen: None,
            public_url: None,
            git_host_retry: Duration::from_secs(2),
            follows_per_client: 16,
            signing_key: None,
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
    #[error(transparent)]
    Signing(#[from] crate::signing::SigningError),
    #[error("cannot list the provenance signing key: {0}")]
    SigningKeyList(String),
}

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

pub struct Inner {
    pub config: Config,
    /// The provenance signing key.
    pub(crate) signing: crate::signing::Signing,
    pub(crate) db: Db,
    pub(crate) logs: LogStore,
    pub(crate) artifacts: ArtifactStore,
    pub(crate) admin_token_hash: String,
    pub(crate) registration_token_hash: String,
    /// Woken when a deployment is queued: claim long-polls look again.
    pub(crate) jobs_queued: Notify,
    /// Woken on any status change: job watches and log followers look again.
    pub(crate) changes: Notify,
    /// Whether this replica leads (runs the singleton work).
    pub(crate) replicas: Arc<replicas::Replicas>,
    /// Ends long-polls and log follows when the server stops.
    pub(crate) shutdown: CancellationToken,
    /// Requests parked in a long-poll or a log follow, by kind.
    pub(crate) parked: [tokio::sync::watch::Sender<usize>; 3],
    /// Live log follows, apart from agents' long-polls.
    pub(crate) follows: follows::FollowSlots,
    /// Log streams with bytes their environment's drain may lack.
    pub(crate) drains: crate::sync::Marked<(String, kiln_protocol::LogStream)>,
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
        let signing = crate::signing::Signing::open(
            &config.data_dir,
            config.signing_key.as_deref(),
            config
                .public_url
                .clone()
                .unwrap_or_else(|| "urn:kiln:control-plane".to_owned()),
        )?;
        // Listed before it signs anything. A plain thread: the PostgreSQL
        // client runs a runtime of its own.
        let public = signing.key().verifying_key();
        let location = config.database_location();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut conn = db::connect(&location).map_err(|e| e.to_string())?;
                    store::register_key(&mut conn, &public).map_err(|e| e.to_string())
                })
                .join()
                .unwrap_or_else(|_| Err("the thread panicked".to_owned()))
        })
        .map_err(StartError::SigningKeyList)?;
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
            admin_token_hash: secrets::sha256_hex(config.admin_token.as_bytes()),
            registration_token_hash: secrets::sha256_hex(config.registration_token.as_bytes()),
            config,
            db,
            jobs_queued: Notify::new(),
            changes: Notify::new(),
            replicas: Arc::new(replicas::Replicas::new(db_shared, missed_wake_recheck)),
            shutdown: CancellationToken::new(),
            parked: Default::default(),
            follows: follows::FollowSlots::new(config_connections, follows_per_client),
            drains: crate::sync::Marked::default(),
            signing,
        })))
    }

    pub(crate) fn project_rules(&self) -> store::ProjectRules {
        store::ProjectRules {
            allow_local_repositories: self.config.allow_local_repositories,
            allow_private_git_hosts: self.config.allow_private_git_hosts,
        }
    }

    pub(crate) fn job_policy(&self) -> store::JobPolicy {
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
    /// Ends the server's long-polls, follows and background loops, and its
    /// PostgreSQL listener: what stopping `serve` does, for an owner that
    /// drops the server without waiting for it (a test).
    pub fn shut_down(&self) {
        self.shutdown.cancel();
    }

    pub(crate) fn announce_queue_change(&self) {
        self.wake_local(replicas::Wake::Queue);
        replicas::broadcast(&self.db, &self.replicas, replicas::Wake::Queue);
    }

    /// A status changed: wake watches, log followers and the courier, on every
    /// replica.
    pub(crate) fn announce_change(&self) {
        self.wake_local(replicas::Wake::Changes);
        replicas::broadcast(&self.db, &self.replicas, replicas::Wake::Changes);
    }

    pub(crate) fn wake_local(&self, wake: replicas::Wake) {
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
