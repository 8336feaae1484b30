//! Starts the real `kiln-control-plane` server in-process on `127.0.0.1:0` and talks
//! to it over HTTP, as an agent or a user would.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use kiln_control_plane::{serve, AppState, Config, Wait};
use kiln_protocol::{
    CreateEnvironment, CreateProject, Deployment, Environment, ErrorEnvelope, EventOutcome, Job,
    Project, PushEvent, RegisterAgentRequest, RegisterAgentResponse,
};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ADMIN_TOKEN: &str = "admin-secret-for-tests";
pub const REGISTRATION_TOKEN: &str = "registration-secret-for-tests";
pub const REPO: &str = "https://git.example/acme/shop.git";

/// With `KILN_TEST_DATABASE_URL` set, each data dir gets its own PostgreSQL
/// database (created on first use, so a restarted server finds its data again):
/// the same tests then run against the PostgreSQL store.
pub fn test_database(data_dir: &Path) -> Option<String> {
    let base = std::env::var("KILN_TEST_DATABASE_URL").ok()?;
    let name = format!(
        "kiln_{:016x}",
        std::hash::BuildHasher::hash_one(
            &std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default(),
            data_dir
        )
    );
    let admin_url = base.clone();
    let create = name.clone();
    // The synchronous client may not run inside the test's runtime.
    std::thread::spawn(move || {
        let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls)
            .expect("KILN_TEST_DATABASE_URL answers");
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&create])
            .unwrap()
            .is_some();
        if !exists {
            admin
                .batch_execute(&format!("CREATE DATABASE {create}"))
                .unwrap();
        }
    })
    .join()
    .expect("test database is created");
    Some(format!("{base} dbname={name}"))
}

/// A running control plane; stopped (and its port released) on `stop` or drop.
pub struct ControlPlane {
    pub addr: SocketAddr,
    state: AppState,
    stop: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl ControlPlane {
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, |_| {}).await
    }

    pub async fn start_with(data_dir: &Path, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::new(
            data_dir.to_owned(),
            ADMIN_TOKEN.to_owned(),
            REGISTRATION_TOKEN.to_owned(),
        );
        config.reaper_interval = Duration::from_millis(100);
        // Fixture repositories are git directories on this disk.
        config.allow_local_repositories = true;
        // The recording git host is on loopback.
        config.allow_private_git_hosts = true;
        // So are the tests' webhook receivers.
        config.allow_private_webhooks = true;
        config.database_url = test_database(data_dir);
        tweak(&mut config);
        let state = AppState::open(config).expect("control plane opens its data dir");
        let listener = kiln_control_plane::connections::bind(([127, 0, 0, 1], 0).into()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            state.clone(),
            stop.clone().cancelled_owned(),
        ));
        Self {
            addr,
            state,
            stop,
            server: Some(server),
        }
    }

    /// Returns once a request is parked in `wait` (a claim or watch long-poll, a
    /// log follow), so what the test does next is what wakes it.
    pub async fn until_parked(&self, wait: Wait) {
        let mut parked = self.state.parked(wait);
        tokio::time::timeout(Duration::from_secs(10), parked.wait_for(|count| *count > 0))
            .await
            .unwrap_or_else(|_| panic!("no request parked in {wait:?} within 10 s"))
            .expect("the control plane is running");
    }

    /// Whether this server runs the singleton work (see `replicas.rs`).
    pub fn is_leader(&self) -> bool {
        self.state.is_leader()
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn admin(&self) -> Api {
        Api::new(self.base_url(), Some(ADMIN_TOKEN))
    }

    pub fn anonymous(&self) -> Api {
        Api::new(self.base_url(), None)
    }

    pub fn as_token(&self, token: &str) -> Api {
        Api::new(self.base_url(), Some(token))
    }

    /// Registers an agent and returns a client holding its token.
    pub async fn register_agent(&self, name: &str, labels: &[&str]) -> Api {
        register_agent(self.base_url(), name, labels).await
    }

    /// Stops the server and waits until it has released everything.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop.cancel();
        // The test's runtime may end before the server sees the stop: its
        // PostgreSQL listener thread would then hold its connections for the
        // rest of the test run.
        self.state.shut_down();
    }
}

#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// A response with helpers that fail the test with the body in the message.
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub async fn expect_json<T: DeserializeOwned>(self, status: StatusCode) -> T {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not the expected JSON ({e}): {}", self.text()))
    }

    /// Asserts an error envelope with this status and code; returns the message.
    pub fn expect_error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        let envelope: ErrorEnvelope = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not an error envelope ({e}): {}", self.text()));
        assert_eq!(
            envelope.error.code, code,
            "message: {}",
            envelope.error.message
        );
        envelope.error.message
    }
}

impl Api {
    pub fn new(base: String, token: Option<&str>) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            base,
            token: token.map(str::to_owned),
        }
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let builder = self.client.request(method, url);
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub async fn send(&self, builder: reqwest::RequestBuilder) -> Reply {
        let response = builder.send().await.expect("request reaches the server");
        Reply {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes().await.unwrap().to_vec(),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn send_json<B: Serialize>(&self, method: Method, path: &str, body: &B) -> Reply {
        self.send(self.request(method, path).json(body)).await
    }

    pub async fn post_json<B: Serialize>(&self, path: &str, body: &B) -> Reply {
        self.send_json(Method::POST, path, body).await
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> Reply {
        self.send(
            self.request(Method::POST, path)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    // ------------------------------------------------------------ user helpers

    pub async fn create_project(&self, name: &str) -> Project {
        self.create_project_with(CreateProject::new(name, REPO))
            .await
    }

    pub async fn create_project_with(&self, project: CreateProject) -> Project {
        self.post_json("/api/v1/projects", &project)
            .await
            .expect_json(StatusCode::CREATED)
            .await
    }

    pub async fn create_environment(
        &self,
        project: &Project,
        name: &str,
        branch: &str,
    ) -> Environment {
        self.post_json(
            &format!("/api/v1/projects/{}/environments", project.id),
            &CreateEnvironment {
                name: name.to_owned(),
                branch: branch.to_owned(),
                auto_deploy: false,
            },
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await
    }

    pub async fn push(&self, branch: &str, sha: &str) -> EventOutcome {
        self.post_json(
            "/api/v1/events/push",
            &PushEvent {
                repository: REPO.to_owned(),
                branch: branch.to_owned(),
                sha: sha.to_owned(),
                author: "Ada Lovelace".to_owned(),
                message: format!("commit {sha}"),
                people: Default::default(),
            },
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await
    }

    pub async fn deployment(&self, id: &str) -> Deployment {
        self.get(&format!("/api/v1/deployments/{id}"))
            .await
            .expect_json(StatusCode::OK)
            .await
    }

    /// Polls until the deployment reaches `status` (10 s at most).
    pub async fn wait_for_status(
        &self,
        id: &str,
        status: kiln_protocol::DeploymentStatus,
    ) -> Deployment {
        self.wait_for_status_in(id, &[status]).await
    }

    /// Polls until the deployment reaches one of `statuses` (30 s at most).
    pub async fn wait_for_status_in(
        &self,
        id: &str,
        statuses: &[kiln_protocol::DeploymentStatus],
    ) -> Deployment {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let deployment = self.deployment(id).await;
            if statuses.contains(&deployment.status) {
                return deployment;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "deployment {id} stayed {} (reason {:?}), expected one of {statuses:?}",
                deployment.status,
                deployment.reason
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // ------------------------------------------------------------ agent helpers

    /// Claims a job, waiting up to `wait_seconds`; `None` on 204.
    pub async fn claim(&self, wait_seconds: u64) -> Option<Job> {
        let reply = self
            .post_json(
                "/api/v1/agent/jobs/claim",
                &kiln_protocol::ClaimRequest {
                    wait_seconds: Some(wait_seconds),
                    facts: None,
                    holding_back: None,
                    roles: Vec::new(),
                },
            )
            .await;
        match reply.status {
            StatusCode::NO_CONTENT => None,
            _ => Some(reply.expect_json(StatusCode::OK).await),
        }
    }

    /// As an agent: claims the next job and reports it built.
    pub async fn build_next(&self) -> Job {
        let job = self.claim(5).await.expect("a job is queued");
        self.report(
            &job,
            &update(kiln_protocol::DeploymentStatus::AwaitingDeployment),
        )
        .await
        .expect_json::<Deployment>(StatusCode::OK)
        .await;
        job
    }

    /// As the admin: starts the deploy of a built deployment.
    pub async fn deploy(&self, id: &str) -> Deployment {
        self.post_json(
            &format!("/api/v1/deployments/{id}/deploy"),
            &serde_json::json!({}),
        )
        .await
        .expect_json(StatusCode::ACCEPTED)
        .await
    }

    /// Pauses or resumes agent `agent_id`, as an admin does.
    pub async fn set_paused(&self, agent_id: &str, paused: bool) -> kiln_protocol::AgentInfo {
        self.send_json(
            Method::PATCH,
            &format!("/api/v1/agents/{agent_id}"),
            &kiln_protocol::UpdateAgent {
                paused: Some(paused),
            },
        )
        .await
        .expect_json(StatusCode::OK)
        .await
    }

    pub async fn report(&self, job: &Job, update: &kiln_protocol::JobStatusUpdate) -> Reply {
        self.post_json(&format!("/api/v1/agent/jobs/{}/status", job.job_id), update)
            .await
    }

    pub async fn append_log(
        &self,
        job_id: &str,
        stream: &str,
        offset: u64,
        data: impl AsRef<[u8]>,
    ) -> Reply {
        self.send(
            self.request(
                Method::PUT,
                &format!("/api/v1/agent/jobs/{job_id}/logs/{stream}?offset={offset}"),
            )
            .body(data.as_ref().to_vec()),
        )
        .await
    }
}

/// A fake but well-formed commit id, distinct per `n`.
pub fn sha(n: u32) -> String {
    format!("{n:040x}")
}

/// Registers an agent with the server at `base_url` (its bootstrap token) and
/// returns a client holding the agent's token.
pub async fn register_agent(base_url: String, name: &str, labels: &[&str]) -> Api {
    let response: RegisterAgentResponse = Api::new(base_url.clone(), None)
        .send_json(
            Method::POST,
            "/api/v1/agents/register",
            &RegisterAgentRequest {
                registration_token: REGISTRATION_TOKEN.to_owned(),
                name: name.to_owned(),
                labels: labels.iter().map(|l| l.to_string()).collect(),
                facts: None,
            },
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await;
    Api::new(base_url, Some(&response.token))
}

pub fn update(status: kiln_protocol::DeploymentStatus) -> kiln_protocol::JobStatusUpdate {
    kiln_protocol::JobStatusUpdate {
        status,
        backend: None,
        storefront: None,
        reason: None,
        detail: None,
        commit_message: None,
        build: None,
    }
}

impl Api {
    /// The same agent or user, talking to another server (e.g. after a restart).
    pub fn with_token_of(self, other: &Api) -> Api {
        Api {
            token: other.token.clone(),
            ..self
        }
    }
}

impl Api {
    /// A project building `repository_url` (backend at the root), with a Production
    /// environment on `main` carrying `variables` (the `variables` array of
    /// `PUT /environments/{id}/variables`).
    pub async fn repo_project(
        &self,
        name: &str,
        repository_url: &str,
        variables: serde_json::Value,
    ) -> (Project, Environment) {
        let project = self
            .create_project_with(CreateProject::new(name, repository_url))
            .await;
        let environment = self
            .create_environment(&project, "Production", "main")
            .await;
        self.set_variables(&environment.id, variables).await;
        (project, environment)
    }

    pub async fn set_variables(&self, environment_id: &str, variables: serde_json::Value) {
        let reply = self
            .send_json(
                Method::PUT,
                &format!("/api/v1/environments/{environment_id}/variables"),
                &serde_json::json!({ "variables": variables }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }

    /// A push of `sha` to `branch` of `repository_url`.
    pub async fn push_repo(&self, repository_url: &str, branch: &str, sha: &str) -> EventOutcome {
        self.post_json(
            "/api/v1/events/push",
            &PushEvent {
                repository: repository_url.to_owned(),
                branch: branch.to_owned(),
                sha: sha.to_owned(),
                author: "Ada".to_owned(),
                message: format!("commit {sha}"),
                people: Default::default(),
            },
        )
        .await
        .expect_json(StatusCode::CREATED)
        .await
    }
}
