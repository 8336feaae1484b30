//! The real `kiln-server` binary as a child process on a fixed port, for fault tests
//! that SIGKILL the control plane and start it again on the same data dir.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::control_plane::{Api, ADMIN_TOKEN, REGISTRATION_TOKEN};

pub struct ServerProcess {
    binary: PathBuf,
    child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    log: PathBuf,
}

/// A port free right now (the kernel picks it), for a server that must come back
/// on the same address after a restart.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ServerProcess {
    /// `binary` is `env!("CARGO_BIN_EXE_kiln-server-e2e")` of the calling test.
    pub async fn start(binary: &Path, data_dir: &Path) -> ServerProcess {
        let mut server = ServerProcess {
            binary: binary.to_owned(),
            child: None,
            port: free_port(),
            data_dir: data_dir.to_owned(),
            log: data_dir.with_extension("log"),
        };
        server.spawn().await;
        server
    }

    /// Starts (again) on the same port and data dir; returns once it answers.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.binary)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--allow-local-repositories")
            .env("KILN_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("KILN_REGISTRATION_TOKEN", REGISTRATION_TOKEN)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if client
                .get(format!("{}/healthz", self.base_url()))
                .send()
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "kiln-server did not come up; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn admin(&self) -> Api {
        Api::new(self.base_url(), Some(ADMIN_TOKEN))
    }

    /// SIGKILL: no graceful anything.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}
