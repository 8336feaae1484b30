//! The agent's state directory: its identity (written by `register`, mode 0600) and
//! the per-job log spools that outlive a crash.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("this agent is not registered ({path} missing); run `kiln-agent register --url URL --registration-token TOKEN`")]
    NotRegistered { path: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt ({reason}); register the agent again")]
    Corrupt { path: PathBuf, reason: String },
}

/// Who this agent is to its control plane.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    pub control_plane_url: String,
    pub agent_id: String,
    pub token: String,
    pub name: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("control_plane_url", &self.control_plane_url)
            .field("agent_id", &self.agent_id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What the agent remembers about a job it is running, for recovery after a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpooledJob {
    pub job_id: String,
    pub deployment_id: String,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path) -> StateDir {
        StateDir {
            root: root.to_owned(),
        }
    }

    pub fn identity_path(&self) -> PathBuf {
        self.root.join("agent.json")
    }

    pub fn spool_root(&self) -> PathBuf {
        self.root.join("spool")
    }

    /// The spools of live releases' output, apart from the jobs' own: they
    /// outlive the deploy job and are no leftover of a lost one.
    pub fn runtime_root(&self) -> PathBuf {
        self.root.join("runtime")
    }

    pub fn spool_dir(&self, job_id: &str) -> PathBuf {
        self.spool_root().join(job_id)
    }

    pub fn save_identity(&self, identity: &Identity) -> Result<(), StateError> {
        let io = |action, source| StateError::Io {
            action,
            path: self.identity_path(),
            source,
        };
        std::fs::create_dir_all(&self.root).map_err(|e| io("create the directory of", e))?;
        let staged = self.root.join(".agent.json.new");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&staged)
            .map_err(|e| io("write", e))?;
        file.write_all(&serde_json::to_vec_pretty(identity).expect("plain data"))
            .map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("write", e))?;
        std::fs::rename(&staged, self.identity_path()).map_err(|e| io("write", e))
    }

    pub fn load_identity(&self) -> Result<Identity, StateError> {
        let path = self.identity_path();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotRegistered { path })
            }
            Err(source) => {
                return Err(StateError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        serde_json::from_slice(&text).map_err(|e| StateError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    pub fn remember_job(&self, job: &SpooledJob) -> Result<PathBuf, StateError> {
        let dir = self.spool_dir(&job.job_id);
        let io = |source| StateError::Io {
            action: "write",
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        std::fs::write(
            dir.join("job.json"),
            serde_json::to_vec(job).expect("plain data"),
        )
        .map_err(io)?;
        Ok(dir)
    }

    /// Jobs whose spool a previous run left behind.
    pub fn spooled_jobs(&self) -> Vec<SpooledJob> {
        let Ok(entries) = std::fs::read_dir(self.spool_root()) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|entry| std::fs::read(entry.path().join("job.json")).ok())
            .filter_map(|text| serde_json::from_slice(&text).ok())
            .collect()
    }

    pub fn forget_job(&self, job_id: &str) {
        let _ = std::fs::remove_dir_all(self.spool_dir(job_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identity_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert!(matches!(
            state.load_identity(),
            Err(StateError::NotRegistered { .. })
        ));
        let identity = Identity {
            control_plane_url: "http://127.0.0.1:1".into(),
            agent_id: "agt_1".into(),
            token: "secret-token".into(),
            name: "builder".into(),
        };
        state.save_identity(&identity).unwrap();
        let mode = std::fs::metadata(state.identity_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(state.load_identity().unwrap().token, "secret-token");
        assert!(!format!("{identity:?}").contains("secret-token"));
    }
}
