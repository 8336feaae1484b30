//! Runs the real `kiln-agent` binary (`run`) against a control plane, as a child
//! process that tests can signal and kill.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::control_plane::REGISTRATION_TOKEN;

pub struct AgentProcess {
    child: Option<Child>,
    binary: PathBuf,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// Extra environment for `kiln-agent run`.
    pub env: Vec<(String, String)>,
}

impl AgentProcess {
    /// Writes `agent.toml` (work and state dirs under `dir`, the test image, no
    /// network, short graces), with `overrides` (TOML) taking precedence, registers,
    /// and starts `kiln-agent run`.
    /// `binary` is `env!("CARGO_BIN_EXE_kiln-agent-e2e")` of the calling test or bench.
    pub async fn start(
        binary: &Path,
        control_plane_url: &str,
        dir: &Path,
        image: &str,
        overrides: &str,
    ) -> AgentProcess {
        let mut agent = Self::configure(binary, dir, image, overrides);
        let output = Command::new(binary)
            .args([
                "--config",
                agent.config.to_str().unwrap(),
                "register",
                "--url",
                control_plane_url,
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
        agent.spawn();
        agent
    }

    /// Like `start`, for a control plane that does not register agents (a test's
    /// stand-in): the identity file is written as `register` would.
    pub async fn start_registered(
        binary: &Path,
        control_plane_url: &str,
        dir: &Path,
        image: &str,
        overrides: &str,
    ) -> AgentProcess {
        let mut agent = Self::configure(binary, dir, image, overrides);
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let identity = serde_json::json!({
            "control_plane_url": control_plane_url,
            "agent_id": "agt_0190f1a2b3c4d5e6f708192a3b4c5d6e",
            "token": "agent-token-for-tests",
            "name": "e2e",
        });
        std::fs::write(dir.join("state/agent.json"), identity.to_string()).unwrap();
        agent.spawn();
        agent
    }

    fn configure(binary: &Path, dir: &Path, image: &str, overrides: &str) -> AgentProcess {
        std::fs::create_dir_all(dir).unwrap();
        // The tests' builds need tens of MiB, not the 2 GiB an agent holds
        // back below by default: a CI machine whose disk is fuller than ours
        // would otherwise have every agent claim nothing.
        let mut settings: toml::Table = toml::from_str(&format!(
            "work_dir = {work:?}\nstate_dir = {state:?}\nbuild_image = {image:?}\ninstall_network = \"none\"\ncancel_grace = \"2s\"\nshutdown_grace = \"2s\"\nallow_local_repositories = true\nmin_free_disk = \"256MiB\"\n",
            work = dir.join("work"),
            state = dir.join("state"),
        ))
        .unwrap();
        let overrides: toml::Table = toml::from_str(overrides).expect("overrides are TOML");
        settings.extend(overrides);
        let config = dir.join("agent.toml");
        std::fs::write(&config, toml::to_string(&settings).unwrap()).unwrap();
        AgentProcess {
            child: None,
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            config,
            log: dir.join("agent.log"),
            env: Vec::new(),
        }
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
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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

    /// Waits until the agent's log holds `needle` at least `count` times
    /// (60 s at most): what a job does after it reports (publishing cache
    /// entries, telling the control plane of them) a test must wait on.
    pub async fn until_logged(&self, needle: &str, count: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.log_text().matches(needle).count() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "the agent never logged {needle:?} {count} times:\n{}",
                self.log_text()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        // A killed agent leaves its build containers behind (its next start would
        // remove them); a test has no next start, so remove them here, or they keep
        // running, and writing, for the rest of the test run.
        let identity =
            std::fs::read_to_string(self.dir.join("state/agent.json")).unwrap_or_default();
        let agent_id = serde_json::from_str::<serde_json::Value>(&identity)
            .ok()
            .and_then(|v| v["agent_id"].as_str().map(str::to_owned));
        if let Some(agent_id) = agent_id {
            let listed = std::process::Command::new("docker")
                .args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=kiln.agent={agent_id}"),
                ])
                .output();
            if let Ok(listed) = listed {
                let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                if !ids.is_empty() {
                    let _ = std::process::Command::new("docker")
                        .arg("rm")
                        .arg("-f")
                        .args(&ids)
                        .output();
                }
            }
        }
    }
}

impl AgentProcess {
    /// The agent's peak resident memory (VmHWM), from /proc.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib * 1024
    }

    /// CPU time (user + system) the agent has used so far.
    pub fn cpu_time(&self) -> std::time::Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("/proc/PID/stat names the command in parentheses")
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as u64;
        std::time::Duration::from_millis(ticks * 1000 / per_second)
    }
}
