//! The live release's output: the deployment's `runtime` log stream. Each
//! line the server, the worker or the storefront prints is written with its
//! service in front (`server | …`), spooled and shipped on the deploy job
//! that started them, the way a build's output is. A follow lasts until the
//! containers are gone (a newer release replaced them); after an agent
//! restart it picks up again from the spool's last time mark, so a line may
//! come twice but none is lost.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kiln_protocol::LogStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::Client;
use crate::executor::DockerExecutor;
use crate::logs::{JobLogs, LogOptions, LogSink};

/// The services whose output is the runtime stream (a migration's is the
/// deploy stream's).
pub(crate) const RUNTIME_SERVICES: [&str; 3] = ["server", "worker", "storefront"];
pub(crate) const LABEL_SERVICE: &str = "kiln.service";
pub(crate) const LABEL_DEPLOY_JOB: &str = "kiln.deploy-job";
/// The agent that started a release's containers: the one that follows,
/// stops and tears them down, whatever else shares the Docker engine.
pub(crate) const LABEL_DEPLOY_AGENT: &str = "kiln.deploy-agent";
/// The secret values masked in a follow's output, kept beside its spool so a
/// restarted agent masks them too.
const SECRETS_FILE: &str = "secrets.json";

/// One container of a release whose output is followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Followed {
    pub service: String,
    pub container: String,
}

/// The follows of a deploy host, one per live release.
pub(crate) struct RuntimeLogs {
    client: Client,
    docker: DockerExecutor,
    root: PathBuf,
    limit: u64,
    stop: CancellationToken,
    tasks: TaskTracker,
    following: Mutex<HashSet<String>>,
}

impl RuntimeLogs {
    pub fn new(client: Client, docker: DockerExecutor, root: PathBuf, limit: u64) -> Arc<Self> {
        Arc::new(Self {
            client,
            docker,
            root,
            limit,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            following: Mutex::default(),
        })
    }

    /// Follows the output of a release a deploy job started.
    pub fn follow(self: &Arc<Self>, job_id: &str, containers: Vec<Followed>, secrets: Vec<String>) {
        let dir = self.root.join(job_id);
        if let Err(error) = remember_secrets(&dir, &secrets) {
            tracing::warn!(message = "Cannot keep a release's secrets for its runtime log; its output is not followed.", %job_id, %error);
            return;
        }
        self.start(job_id.to_owned(), containers, secrets);
    }

    /// After a restart: follows again the releases still running here, and
    /// delivers what the spools of stopped ones still hold.
    pub async fn resume(self: &Arc<Self>, agent_id: &str) {
        let mut releases: BTreeMap<String, Vec<Followed>> = BTreeMap::new();
        // Only the releases this agent started: an engine may run others'.
        let containers = self
            .docker
            .services_labelled(LABEL_DEPLOY_AGENT, agent_id)
            .await
            .unwrap_or_default();
        for (container, labels) in containers {
            let (Some(job), Some(service)) =
                (labels.get(LABEL_DEPLOY_JOB), labels.get(LABEL_SERVICE))
            else {
                continue;
            };
            if RUNTIME_SERVICES.contains(&service.as_str()) {
                releases.entry(job.clone()).or_default().push(Followed {
                    service: service.clone(),
                    container,
                });
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                releases.entry(name).or_default();
            }
        }
        for (job_id, containers) in releases {
            // Ids name directories: only ones in the control plane's format.
            if kiln_protocol::validate::id(&job_id, kiln_protocol::validate::prefix::JOB).is_err() {
                continue;
            }
            let secrets = recall_secrets(&self.root.join(&job_id));
            self.start(job_id, containers, secrets);
        }
    }

    /// Ends every follow, delivering what is spooled within `drain`; what is
    /// left stays spooled for the next start.
    pub async fn shut_down(&self, drain: std::time::Duration) {
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(drain, self.tasks.wait()).await;
    }

    fn start(self: &Arc<Self>, job_id: String, containers: Vec<Followed>, secrets: Vec<String>) {
        if !crate::lock(&self.following).insert(job_id.clone()) {
            return;
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            this.run(&job_id, containers, secrets).await;
            crate::lock(&this.following).remove(&job_id);
        });
    }

    async fn run(&self, job_id: &str, containers: Vec<Followed>, secrets: Vec<String>) {
        let dir = self.root.join(job_id);
        let options = LogOptions {
            secrets,
            echo: false,
            limit: self.limit,
        };
        let logs = match JobLogs::open(&dir, &options) {
            Ok(logs) => Arc::new(logs),
            Err(error) => {
                tracing::warn!(message = "Cannot spool a release's runtime log.", %job_id, %error);
                return;
            }
        };
        // From the last line spooled (to the second: Docker's `since`), or
        // from the start of the containers.
        let since = last_mark_seconds(&dir).unwrap_or(0);
        let finish = CancellationToken::new();
        let give_up = CancellationToken::new();
        let shipper = {
            let (logs, client, job_id) = (logs.clone(), self.client.clone(), job_id.to_owned());
            let (finish, give_up) = (finish.clone(), give_up.clone());
            tokio::spawn(async move { logs.ship(&client, &job_id, finish, give_up).await })
        };
        let sink = logs.sink(LogStream::Runtime);
        futures::future::join_all(
            containers
                .iter()
                .map(|followed| self.follow_one(followed, since, sink.clone())),
        )
        .await;
        finish.cancel();
        let drained = tokio::time::timeout(crate::logs::LOG_DRAIN_LIMIT, shipper).await;
        give_up.cancel();
        let delivered = matches!(drained, Ok(Ok(true)));
        // Stopped for a shutdown, the containers still run: the spool is where
        // the next start goes on from.
        if delivered && !self.stop.is_cancelled() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    async fn follow_one(&self, followed: &Followed, since: i64, sink: LogSink) {
        let mut lines = Prefixed::new(&followed.service);
        let mut output = std::pin::pin!(self.docker.follow_output(&followed.container, since));
        loop {
            tokio::select! {
                chunk = output.next() => match chunk {
                    Some(Ok(bytes)) => sink.write(&lines.push(&bytes)),
                    Some(Err(error)) => {
                        tracing::info!(message = "A release container's output ended.", container = %followed.container, %error);
                        break;
                    }
                    None => break,
                },
                _ = self.stop.cancelled() => break,
            }
        }
        sink.write(&lines.finish());
        sink.flush();
    }
}

/// Splits a service's output into lines, each with the service in front.
struct Prefixed {
    prefix: Vec<u8>,
    partial: Vec<u8>,
}

impl Prefixed {
    fn new(service: &str) -> Self {
        Self {
            prefix: format!("{service} | ").into_bytes(),
            partial: Vec::new(),
        }
    }

    /// The whole lines `bytes` completes, prefixed; the rest waits.
    fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.partial.extend_from_slice(bytes);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(last_newline + 1);
        let whole = std::mem::replace(&mut self.partial, rest);
        let mut out = Vec::with_capacity(whole.len() + self.prefix.len() * 4);
        for line in whole.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(&self.prefix);
            out.extend_from_slice(line);
        }
        out
    }

    /// A last line with no newline, ended.
    fn finish(&mut self) -> Vec<u8> {
        if self.partial.is_empty() {
            return Vec::new();
        }
        self.partial.push(b'\n');
        self.push(&[])
    }
}

fn remember_secrets(dir: &std::path::Path, secrets: &[String]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join(SECRETS_FILE))?;
    file.write_all(&serde_json::to_vec(secrets)?)
}

fn recall_secrets(dir: &std::path::Path) -> Vec<String> {
    std::fs::read(dir.join(SECRETS_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// When the spool's last line was written, in Unix seconds.
fn last_mark_seconds(dir: &std::path::Path) -> Option<i64> {
    let text = std::fs::read_to_string(dir.join(format!("{}.times", LogStream::Runtime))).ok()?;
    let marks = kiln_protocol::parse_time_mark_lines(&text);
    marks.last().map(|&(_, millis)| millis / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_gets_its_service_even_split_across_chunks() {
        let mut lines = Prefixed::new("server");
        assert_eq!(lines.push(b"listen"), b"");
        assert_eq!(
            String::from_utf8(lines.push(b"ing on 9000\n{\"level\":\"info\"}\nhal")).unwrap(),
            "server | listening on 9000\nserver | {\"level\":\"info\"}\n"
        );
        assert_eq!(String::from_utf8(lines.finish()).unwrap(), "server | hal\n");
        assert_eq!(lines.finish(), b"");
    }

    #[test]
    fn a_restarted_follow_masks_the_same_secrets_and_goes_on_from_its_last_line() {
        let dir = tempfile::tempdir().unwrap();
        remember_secrets(dir.path(), &["s3cr3t".to_owned()]).unwrap();
        assert_eq!(recall_secrets(dir.path()), vec!["s3cr3t".to_owned()]);
        let logs = JobLogs::open(dir.path(), &LogOptions::default()).unwrap();
        logs.sink(LogStream::Runtime).write(b"server | up\n");
        logs.sink(LogStream::Runtime).flush();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let since = last_mark_seconds(dir.path()).unwrap();
        assert!((now - 2..=now).contains(&since), "{since} vs {now}");
    }
}
