//! Runs the real `kiln-agent` binary (`run`) against a control plane, as a child
//! process that tests can signal and kill.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::control_plane::{ControlPlane, REGISTRATION_TOKEN};

pub struct AgentProcess {
    child: Option<Child>,
    binary: PathBuf,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl AgentProcess {
    /// Writes `agent.toml` (work and state dirs under `dir`, the test image, no
    /// network) plus `extra` lines, registers, and starts `kiln-agent run`.
    /// `binary` is `env!("CARGO_BIN_EXE_kiln-agent-e2e")` of the calling test or bench.
    pub async fn start(
        binary: &Path,
        cp: &ControlPlane,
        dir: &Path,
        image: &str,
        extra: &str,
    ) -> AgentProcess {
        Self::start_with_config(
            binary,
            cp,
            dir,
            image,
            &format!("install_network = \"none\"\n{extra}"),
        )
        .await
    }

    /// Like `start`, without the default `install_network = "none"`.
    pub async fn start_with_config(
        binary: &Path,
        cp: &ControlPlane,
        dir: &Path,
        image: &str,
        extra: &str,
    ) -> AgentProcess {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "work_dir = {work:?}\nstate_dir = {state:?}\nbuild_image = {image:?}\ncancel_grace = \"2s\"\nshutdown_grace = \"2s\"\n{extra}\n",
                work = dir.join("work"),
                state = dir.join("state"),
            ),
        )
        .unwrap();
        let output = Command::new(binary)
            .args([
                "--config",
                config.to_str().unwrap(),
                "register",
                "--url",
                &cp.base_url(),
                "--name",
                "e2e",
            ])
            .env("KILN_REGISTRATION_TOKEN", REGISTRATION_TOKEN)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "register failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut agent = AgentProcess {
            child: None,
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            config,
            log: dir.join("agent.log"),
        };
        agent.spawn();
        agent
    }

    /// (Re)starts `kiln-agent run` with the same configuration and state.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.binary)
            .args(["--config", self.config.to_str().unwrap(), "run"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("agent is running") as i32
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Waits for the process to exit; panics (with its log) after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("agent was started");
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => {
                self.child = None;
                status.unwrap()
            }
            Err(_) => panic!(
                "agent did not exit within {limit:?}; log:\n{}",
                self.log_text()
            ),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}
