//! What a deploy host runs beside the agent in the tests: a real Caddy (its
//! admin API and Kiln's listener on free ports) and a real PostgreSQL on a
//! loopback TCP port, for the releases' migrations.

use sha2::Digest as _;
use std::process::{Child, Command};
use std::time::Duration;

use super::free_port;

/// A real Caddy with its admin API and Kiln's listener on free ports.
pub struct CaddyProcess {
    child: Child,
    pub admin: String,
    pub listen: u16,
    _dir: tempfile::TempDir,
}

impl CaddyProcess {
    pub fn start() -> CaddyProcess {
        let dir = tempfile::tempdir().unwrap();
        let admin = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("caddy.json");
        std::fs::write(
            &config,
            serde_json::json!({"admin": {"listen": admin}}).to_string(),
        )
        .unwrap();
        let child = Command::new("caddy")
            .args(["run", "--config", config.to_str().unwrap()])
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("caddy is installed (.ci/run installs it)");
        CaddyProcess {
            child,
            admin: format!("http://{admin}"),
            listen: free_port(),
            _dir: dir,
        }
    }

    /// GET `path` through Caddy as `host`: status and body.
    pub async fn get(&self, host: &str, path: &str) -> Option<(u16, String)> {
        let response = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", self.listen))
            .header("host", host)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        Some((response.status().as_u16(), response.text().await.ok()?))
    }
}

impl Drop for CaddyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway PostgreSQL on a loopback TCP port (trust sign-in), run by the
/// unprivileged `postgres` user, as `.ci/postgres` runs the tests' own.
pub struct Postgres {
    dir: tempfile::TempDir,
    /// What the releases connect to.
    pub url: String,
    /// What the test itself connects to: loopback.
    local_url: String,
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_on("127.0.0.1")
    }

    /// Also listening on `gateway`, the Docker bridge's address on the host,
    /// for containers on that bridge (its /16, trust sign-in); the URL names it.
    pub fn start_for_bridge(gateway: &str) -> Postgres {
        Postgres::start_on(gateway)
    }

    fn start_on(host: &str) -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let user = "postgres";
        let _ = Command::new("useradd")
            .args(["--system", "--no-create-home", user])
            .output();
        let run = |args: &[&str]| {
            let output = Command::new("runuser")
                .args(["-u", user, "--"])
                .args(args)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        Command::new("chown")
            .args([user, dir.path().to_str().unwrap()])
            .status()
            .unwrap();
        let data = dir.path().join("data");
        let port = free_port().to_string();
        run(&[
            "initdb",
            "-D",
            data.to_str().unwrap(),
            "-U",
            "kiln",
            "--auth=trust",
        ]);
        if host != "127.0.0.1" {
            let hba = data.join("pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba).unwrap();
            rules.push_str(&format!("host all all {host}/16 trust\n"));
            std::fs::write(&hba, rules).unwrap();
        }
        let listen = match host {
            "127.0.0.1" => host.to_owned(),
            _ => format!("127.0.0.1,{host}"),
        };
        let options = format!(
            "-c listen_addresses={listen} -c port={port} -c unix_socket_directories={}",
            dir.path().display()
        );
        run(&[
            "pg_ctl",
            "-D",
            data.to_str().unwrap(),
            "-l",
            dir.path().join("log").to_str().unwrap(),
            "-w",
            "-o",
            &options,
            "start",
        ]);
        let socket = dir.path().to_str().unwrap().to_owned();
        run(&["createdb", "-h", &socket, "-p", &port, "-U", "kiln", "shop"]);
        Postgres {
            url: format!("postgres://kiln@{host}:{port}/shop"),
            local_url: format!("postgres://kiln@127.0.0.1:{port}/shop"),
            dir,
        }
    }

    /// How many tables the database's public schema holds.
    pub fn tables(&self) -> i64 {
        tokio::task::block_in_place(|| {
            let mut client = postgres::Client::connect(&self.local_url, postgres::NoTls).unwrap();
            client
                .query_one(
                    "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
                    &[],
                )
                .unwrap()
                .get(0)
        })
    }

    /// The releases the stand-in's `db:migrate` recorded, in order.
    pub fn migrations(&self) -> Vec<String> {
        tokio::task::block_in_place(|| {
            let mut client = postgres::Client::connect(&self.local_url, postgres::NoTls).unwrap();
            client
                .query(
                    "SELECT release FROM kiln_fixture_migrations ORDER BY applied_at",
                    &[],
                )
                .map(|rows| rows.iter().map(|row| row.get(0)).collect())
                .unwrap_or_default()
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", "pg_ctl", "-D"])
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// Removes the release containers a test's deploys started for
/// `environment_id` when dropped: they are meant to outlive the agent.
pub struct ReleaseContainers {
    pub environment_id: String,
}

impl Drop for ReleaseContainers {
    fn drop(&mut self) {
        let listed = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=kiln.environment={}", self.environment_id))
            .output();
        if let Ok(listed) = listed {
            let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
    }
}

/// A real OCI registry on a loopback port (Debian's `docker-registry`), which
/// the Docker engine speaks plain HTTP to, as to any registry on 127.0.0.0/8.
pub struct Registry {
    child: Child,
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub async fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry is installed (.ci/run installs it)");
        let registry = Registry {
            child,
            address,
            _dir: dir,
        };
        for _ in 0..100 {
            if registry.get("/v2/").await.is_some() {
                return registry;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("docker-registry did not answer on {}", registry.address);
    }

    /// The manifest `reference` (a tag or digest) of `repository` names, and
    /// its digest (as the registry computes it).
    pub async fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Option<(String, serde_json::Value)> {
        let response = reqwest::Client::new()
            .get(format!(
                "http://{}/v2/{repository}/manifests/{reference}",
                self.address
            ))
            .header(
                "accept",
                "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await
            .ok()?;
        if response.status() != 200 {
            return None;
        }
        let bytes = response.bytes().await.ok()?;
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        Some((digest, serde_json::from_slice(&bytes).ok()?))
    }

    /// GET `path` of the registry's API: the body of a 200.
    pub async fn get(&self, path: &str) -> Option<String> {
        let response = reqwest::get(format!("http://{}{path}", self.address))
            .await
            .ok()?;
        if response.status() != 200 {
            return None;
        }
        response.text().await.ok()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
