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
    /// Flags beyond the data dir and address.
    args: Vec<String>,
    /// The open-files limit to run under, if not the test's own.
    open_files: Option<u64>,
    /// Environment beyond the tokens (over the test database's).
    pub envs: Vec<(String, String)>,
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
        Self::start_with(binary, data_dir, &[], None).await
    }

    /// Like `start`, with extra environment (a replica's shared database and
    /// object store).
    pub async fn start_with_env(
        binary: &Path,
        data_dir: &Path,
        envs: Vec<(String, String)>,
    ) -> ServerProcess {
        Self::launch(binary, data_dir, Vec::new(), None, envs).await
    }

    /// Like `start`, with extra flags and, optionally, under `ulimit -n open_files`.
    pub async fn start_with(
        binary: &Path,
        data_dir: &Path,
        args: &[&str],
        open_files: Option<u64>,
    ) -> ServerProcess {
        let args = args.iter().map(|arg| arg.to_string()).collect();
        Self::launch(binary, data_dir, args, open_files, Vec::new()).await
    }

    async fn launch(
        binary: &Path,
        data_dir: &Path,
        args: Vec<String>,
        open_files: Option<u64>,
        envs: Vec<(String, String)>,
    ) -> ServerProcess {
        let mut server = ServerProcess {
            binary: binary.to_owned(),
            args,
            open_files,
            envs,
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
        // `ulimit` in a shell that then becomes the server: no unsafe pre_exec.
        let mut command = match self.open_files {
            Some(limit) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(&self.binary);
                shell
            }
            None => Command::new(&self.binary),
        };
        let child = command
            .args(&self.args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--allow-local-repositories")
            .arg("--allow-private-git-hosts")
            .envs(database_env(&self.data_dir))
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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

    /// Registers an agent and returns a client holding its token.
    pub async fn register_agent(&self, name: &str, labels: &[&str]) -> Api {
        super::control_plane::register_agent(self.base_url(), name, labels).await
    }

    /// The server's resident memory now (VmRSS), from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("server is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
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

/// `KILN_DATABASE_URL` for a `kiln-server` process on `data_dir`, when the tests
/// run against PostgreSQL (see `control_plane::test_database`).
pub fn database_env(data_dir: &Path) -> Option<(&'static str, String)> {
    super::control_plane::test_database(data_dir).map(|url| ("KILN_DATABASE_URL", url))
}

/// Adds a dashboard account with `kiln-server users add`, the password on stdin.
/// `binary` is `env!("CARGO_BIN_EXE_kiln-server-e2e")`.
pub fn add_user(binary: &Path, data_dir: &Path, name: &str, role: &str, password: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(binary)
        .args(["users", "add", name, "--role", role, "--data-dir"])
        .arg(data_dir)
        .envs(database_env(data_dir))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln-server users add starts");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{password}").unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "users add {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Signs in to the dashboard over HTTP as a browser does: the form first (its
/// token and the cookie that pairs with it), then the post. `client` must not
/// follow redirects, so the answer's `Set-Cookie` and `Location` can be read.
pub async fn sign_in_over_http(
    client: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
    next: Option<&str>,
) -> reqwest::Response {
    let (cookie, form_token) = sign_in_form(client, base).await;
    let mut form = vec![
        ("username", user),
        ("password", password),
        ("form_token", form_token.as_str()),
    ];
    form.extend(next.map(|next| ("next", next)));
    client
        .post(format!("{base}/login"))
        .header("cookie", cookie)
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// The sign-in form's cookie (`name=value`) and the token it carries.
pub async fn sign_in_form(client: &reqwest::Client, base: &str) -> (String, String) {
    let form = client.get(format!("{base}/login")).send().await.unwrap();
    let cookie = form.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = form.text().await.unwrap();
    let marker = r#"name="form_token" value=""#;
    let start = html.find(marker).expect("the form carries its token") + marker.len();
    let token = html[start..].split('"').next().unwrap().to_owned();
    (cookie, token)
}

/// A viewer's dashboard over HTTP: the account added with the server binary,
/// a client that follows no redirect, and the session cookie it signed in
/// with.
pub async fn viewer_session(
    binary: &Path,
    data_dir: &Path,
    base: &str,
    user: &str,
    password: &str,
) -> (reqwest::Client, String) {
    add_user(binary, data_dir, user, "viewer", password);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = dashboard_session(&client, base, user, password).await;
    (client, cookie)
}

/// A dashboard page's HTML, with the session `cookie`.
pub async fn page_text(client: &reqwest::Client, url: &str, cookie: &str) -> String {
    client
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Signs `user` in over HTTP and returns the session cookie (`name=value`) a
/// browser would send back.
pub async fn dashboard_session(
    client: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> String {
    let signed_in = sign_in_over_http(client, base, user, password, None).await;
    signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}
