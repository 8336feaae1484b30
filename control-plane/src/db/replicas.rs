//! Several `kiln-server` processes on one PostgreSQL serving one fleet.
//!
//! Wake-ups reach every replica: a replica that queues or cancels a deployment
//! sends `NOTIFY kiln_wake`, and each replica's listener wakes its own parked
//! claims and watches. Singleton work (the lease reaper, the git-host courier,
//! taking over deploys whose replica stopped renewing them) runs on the one
//! replica holding a session advisory lock; when that replica dies its
//! connection closes, the lock frees, and another takes over within a second.
//! On SQLite the one process is both.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fallible_iterator::FallibleIterator;
use tokio_util::sync::CancellationToken;

use crate::db::sql::WRITE_LOCK;
use crate::db::Db;

const CHANNEL: &str = "kiln_wake";
const LEADER_LOCK: i64 = WRITE_LOCK + 1;
/// How often a follower tries for the lead, and a listener checks for shutdown.
const TICK: Duration = Duration::from_millis(500);

/// What a wake-up is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A deployment was queued, canceled or requeued: claims look again.
    Queue,
    /// A status changed: watches, followers and the courier look again.
    Changes,
    /// A log grew: its followers look again.
    Logs,
}

impl Wake {
    const ALL: [Wake; 3] = [Wake::Queue, Wake::Changes, Wake::Logs];

    fn as_str(self) -> &'static str {
        match self {
            Wake::Queue => "queue",
            Wake::Changes => "changes",
            Wake::Logs => "logs",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

pub struct Replicas {
    shared: bool,
    recheck: Duration,
    leader: AtomicBool,
    /// Names this replica: its notifications, so its listener skips its own,
    /// and the deploys it runs.
    sender: String,
    /// Per kind of wake-up: a notification is on its way and not yet sent, so
    /// another announcement can ride on it (a busy fleet announces hundreds a
    /// second; each `NOTIFY` serializes commits in PostgreSQL).
    unsent: [AtomicBool; 3],
}

impl Replicas {
    /// A lone SQLite server leads from the start; a PostgreSQL replica once its
    /// listener holds the lock.
    pub fn new(shared: bool, recheck: Duration) -> Self {
        Self {
            shared,
            recheck,
            leader: AtomicBool::new(!shared),
            sender: format!("{:016x}", rand::random::<u64>()),
            unsent: Default::default(),
        }
    }

    /// Completes after a while on a shared database (a wake-up sent while a
    /// listener reconnected is lost), never on SQLite.
    pub async fn missed_wake_recheck(&self) {
        if self.shared {
            tokio::time::sleep(self.recheck).await
        } else {
            std::future::pending().await
        }
    }

    /// This replica's name, as the deploys it runs record it.
    pub fn id(&self) -> &str {
        &self.sender
    }

    /// Whether other replicas may share the database (PostgreSQL).
    pub fn shared(&self) -> bool {
        self.shared
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    fn set_leader(&self, leader: bool) {
        if !self.leader.swap(leader, Ordering::SeqCst) && leader {
            tracing::info!(message = "This replica now runs the singleton work (lease reaper, git-host courier, deploy take-over).");
        } else if !leader {
            self.leader.store(false, Ordering::SeqCst);
        }
    }
}

/// Tells the other replicas; this one's own waiters were woken by the caller.
pub fn broadcast(db: &Db, replicas: &Arc<Replicas>, wake: Wake) {
    if db.postgres_url().is_none() {
        return;
    }
    if replicas.unsent[wake.index()].swap(true, Ordering::SeqCst) {
        return;
    }
    let (db, replicas) = (db.clone(), replicas.clone());
    tokio::spawn(async move {
        let payload = format!("{}:{}", wake.as_str(), replicas.sender);
        let sent = db
            .call(move |conn| {
                // From here on, a change needs a notification of its own.
                replicas.unsent[wake.index()].store(false, Ordering::SeqCst);
                conn.execute("SELECT pg_notify(?1, ?2)", [CHANNEL, payload.as_str()])
                    .map_err(crate::ApiError::from)
            })
            .await;
        if let Err(error) = sent {
            tracing::warn!(message = "Cannot wake the other replicas; they look again within a second.", %error);
        }
    });
}

#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error(transparent)]
    Tls(#[from] crate::db::pg_tls::TlsSetupError),
    #[error(transparent)]
    Postgres(#[from] postgres::Error),
}

/// Starts the listener thread of a PostgreSQL replica (none on SQLite): it
/// hands each other replica's wake-up to `wake_local`, takes the lead when it
/// can, reconnects after errors and ends with `shutdown`.
pub fn start_listener(
    db: &Db,
    replicas: Arc<Replicas>,
    shutdown: CancellationToken,
    wake_local: impl Fn(Wake) + Send + 'static,
) -> Option<std::thread::JoinHandle<()>> {
    let url = db.postgres_url()?.to_owned();
    Some(std::thread::spawn(move || {
        while !shutdown.is_cancelled() {
            if let Err(error) = listen(&replicas, &shutdown, &wake_local, &url) {
                replicas.set_leader(false);
                tracing::warn!(message = "Lost the PostgreSQL listener; reconnecting.", error = %error);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        replicas.set_leader(false);
    }))
}

fn listen(
    replicas: &Replicas,
    shutdown: &CancellationToken,
    wake_local: &impl Fn(Wake),
    url: &str,
) -> Result<(), ListenError> {
    let (config, tls) = crate::db::pg_tls::connection(url)?;
    let mut client = postgres::Config::from(config).connect(tls)?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    while !shutdown.is_cancelled() {
        if !replicas.is_leader() {
            let row = client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])?;
            replicas.set_leader(row.get(0));
        }
        let mut notifications = client.notifications();
        let mut arrived = notifications.timeout_iter(TICK);
        while let Some(notification) = arrived.next()? {
            let (kind, sender) = notification
                .payload()
                .split_once(':')
                .unwrap_or((notification.payload(), ""));
            if sender == replicas.sender {
                continue;
            }
            let wake = Wake::ALL
                .into_iter()
                .find(|wake| wake.as_str() == kind)
                .unwrap_or(Wake::Changes);
            wake_local(wake);
        }
    }
    Ok(())
}
