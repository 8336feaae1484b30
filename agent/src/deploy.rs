//! A deploy job on a deploy host: the release image loaded, the migrations run
//! once, the new server (and worker) started and health-checked, Caddy
//! switched to it through its admin API, the previous release stopped after a
//! grace period. Every step is a line of the deployment's `deploy` log.
//!
//! A failure before the switch removes the new containers: the previous
//! release keeps serving.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kiln_protocol::{Component, DeployAction, DeployJob, Job, ReleaseImage};
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::config::{AgentConfig, Network};
use crate::executor::release::{ServiceSpec, ServiceState};
use crate::executor::Executor as _;
use crate::executor::{DockerExecutor, Limits};
use crate::logs::LogSink;
use crate::runtime_logs::{Followed, LABEL_DEPLOY_AGENT, LABEL_DEPLOY_JOB, LABEL_SERVICE};

/// The port a release's server listens on inside its container.
const SERVER_PORT: u16 = 9000;
/// The port a release's storefront listens on inside its container.
const STOREFRONT_PORT: u16 = 3000;
/// How long the old release keeps its containers after the switch, for the
/// requests in flight.
const DRAIN: Duration = Duration::from_secs(2);
/// Time an old container gets between SIGTERM and SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of a failed container's output a reason quotes.
const OUTPUT_QUOTED: usize = 20;

pub(crate) const LABEL_ENVIRONMENT: &str = "kiln.environment";
const LABEL_DEPLOYMENT: &str = "kiln.deployment";

const WORKER_MODE_MISSING: &str = "deploy.worker is true, but this release's medusa-config does not read MEDUSA_WORKER_MODE, so the server and the worker would both run scheduled jobs and subscribers; nothing was started. Add to projectConfig in medusa-config: `workerMode: process.env.MEDUSA_WORKER_MODE as \"shared\" | \"worker\" | \"server\"` and to the admin block `disable: process.env.DISABLE_MEDUSA_ADMIN === \"true\"`, then push; or set deploy.worker to false";

/// The Caddy server a deploy host manages.
pub(crate) const CADDY_SERVER: &str = "kiln";

/// The host ports the new release answers on.
struct Ports {
    backend: u16,
    storefront: Option<u16>,
}

/// What a service's health check asks for.
struct Health<'a> {
    service: &'static str,
    path: &'a str,
    healthy: fn(reqwest::StatusCode) -> bool,
    /// The answer waited for, in words.
    wanted: &'static str,
}

pub(crate) struct DeployRun<'a> {
    pub config: &'a AgentConfig,
    pub client: &'a Client,
    pub job: &'a Job,
    pub deploy: &'a DeployJob,
    pub log: LogSink,
    pub cancel: &'a CancellationToken,
    pub spool_dir: std::path::PathBuf,
    pub agent_id: &'a str,
}

impl DeployRun<'_> {
    /// Runs the deploy: the containers now live, whose output is the
    /// runtime log; else the reason it failed.
    pub async fn run(&self) -> Result<Vec<Followed>, String> {
        may_deploy(
            self.config,
            &self.deploy.settings,
            &self.deploy.environment_name,
        )?;
        let started = Instant::now();
        let docker = DockerExecutor::connect()
            .await
            .map_err(|error| error.to_string())?;
        let keys = self.client.provenance_keys().await.map_err(|error| {
            format!(
                "cannot fetch the control plane's provenance keys to check the release: {error}"
            )
        })?;
        let image = self
            .checked_release_image(&docker, Component::Backend, &self.deploy.backend, &keys)
            .await?;
        let storefront_image = match self.storefront_release() {
            Some(release) => Some(
                self.checked_release_image(&docker, Component::Storefront, release, &keys)
                    .await?,
            ),
            None => None,
        };
        self.check_worker_split(&docker, &image).await?;
        if self.deploy.action == DeployAction::Deploy {
            self.migrate(&docker, &image).await?;
        } else {
            self.log
                .line("Rollback: no migrations run (the database stays as it is).");
        }
        let (ports, live) = self
            .start(&docker, &image, storefront_image.as_deref())
            .await?;
        self.switch(&ports).await?;
        // An image in use cannot go: what the previous release used goes
        // once it has stopped.
        for tag in self.pruning().run(&docker).await {
            self.log.line(format!(
                "Removed release image {tag}: this host keeps the last {}.",
                self.deploy.releases_kept
            ));
        }
        self.stop_previous(&docker).await;
        self.log
            .line(format!("Live in {:.1}s.", started.elapsed().as_secs_f64()));
        Ok(live)
    }

    /// The storefront's release, where there is one and a hostname to route
    /// to it; the deploy log says why not otherwise.
    fn storefront_release(&self) -> Option<&ReleaseImage> {
        let hostname = self.deploy.settings.storefront_hostname.as_deref();
        match (&self.deploy.storefront, hostname) {
            (Some(release), Some(_)) => Some(release),
            (Some(_), None) => {
                self.log.line("The storefront has a release image, but deploy.storefront_hostname is not set: it is not started. Set it to run and route the storefront.");
                None
            }
            (None, Some(hostname)) => {
                self.log.line(format!("No storefront release image in this deployment ({hostname} is not switched): the build's system log says why."));
                None
            }
            (None, None) => None,
        }
    }

    fn image_repository(&self, component: Component) -> String {
        release_repository(&self.job.environment_id, component)
    }

    fn image_name(&self, component: Component) -> String {
        format!(
            "{}:{}",
            self.image_repository(component),
            self.job.deployment_id
        )
    }

    /// The environment's release images this host may remove, once no
    /// container uses them: all but the live one and the newest
    /// `releases_kept - 1` others, kept for rollbacks.
    fn pruning(&self) -> Pruning {
        Pruning {
            repositories: [Component::Backend, Component::Storefront]
                .map(|component| (self.image_repository(component), self.image_name(component)))
                .to_vec(),
            kept: self.deploy.releases_kept.max(1) as usize,
        }
    }

    /// A name of this deploy job's own: a rollback to a release whose old
    /// containers are still stopping never shares their names.
    fn container(&self, service: &str) -> String {
        format!("kiln-{}-{service}", self.job.job_id)
    }

    /// The release image, held to its signed provenance before anything of
    /// it runs: signed by one of the control plane's keys, naming this
    /// artifact's digest and the id of the image on this host, within the
    /// environment's policy. A release that fails is removed from the host.
    async fn checked_release_image(
        &self,
        docker: &DockerExecutor,
        component: Component,
        release: &ReleaseImage,
        keys: &[kiln_protocol::provenance::PublicKey],
    ) -> Result<String, String> {
        let name = self.release_image(docker, component, release).await?;
        let image_id = docker
            .inspect_image(&name)
            .await
            .map_err(|error| error.to_string())?
            .id;
        let check = kiln_protocol::provenance::ReleaseCheck {
            keys,
            policy: &self.deploy.require,
            project: &self.job.project_id,
        };
        match check.check(
            release.provenance.as_ref(),
            &release.name,
            &release.sha256,
            Some(&image_id),
        ) {
            Ok(statement) => {
                let signer = release
                    .provenance
                    .as_ref()
                    .and_then(|envelope| envelope.signatures.first())
                    .map(|signature| signature.keyid.as_str())
                    .unwrap_or_default();
                let built = &statement.predicate.build_definition.external_parameters;
                self.log.line(format!(
                    "Provenance checked: {} (image {}) was built from {} at {} and signed by {signer}.",
                    release.name,
                    &image_id[..image_id.len().min(19)],
                    built.repository,
                    built.commit
                ));
                Ok(name)
            }
            Err(error) => {
                let _ = docker.untag_image(&name).await;
                Err(format!(
                    "refused {}: its provenance check failed: {error}",
                    release.name
                ))
            }
        }
    }

    /// The release image on this host: kept from before, or downloaded
    /// (size and sha256 checked) and loaded.
    async fn release_image(
        &self,
        docker: &DockerExecutor,
        component: Component,
        release: &ReleaseImage,
    ) -> Result<String, String> {
        let name = self.image_name(component);
        if docker.has_image(&name).await.unwrap_or(false) {
            self.log
                .line(format!("Release image {name} is on this host already."));
            return Ok(name);
        }
        let started = Instant::now();
        if let Some(reference) = &release.reference {
            match docker.pull(reference).await {
                Ok(stats) => {
                    docker
                        .tag_image(reference, &name)
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = docker.untag_image(reference).await;
                    self.log.line(format!(
                        "Pulled release image {reference} in {:.1}s: {} layer(s), {} bytes; {} layer(s) were on this host.",
                        started.elapsed().as_secs_f64(),
                        stats.layers_pulled,
                        stats.bytes,
                        stats.layers_present
                    ));
                    return Ok(name);
                }
                Err(error) => self.log.line(format!(
                    "Could not pull {reference} ({error}); loading the release image from its artifact instead."
                )),
            }
        }
        std::fs::create_dir_all(&self.spool_dir).map_err(|e| e.to_string())?;
        let archive = self
            .spool_dir
            .join(format!("{}-{component}.tar", self.job.job_id));
        let downloaded = self.client.download(release, &archive).await;
        let loaded = match downloaded {
            Ok(()) => docker.load_image(&archive).await.map_err(|e| e.to_string()),
            Err(error) => Err(format!("cannot download the release image: {error}")),
        };
        let _ = std::fs::remove_file(&archive);
        let loaded = loaded?;
        let Some(loaded_name) = loaded.first() else {
            return Err(format!(
                "the release image {} named no image when loaded; build the deployment again",
                release.name
            ));
        };
        docker
            .tag_image(loaded_name, &name)
            .await
            .map_err(|e| e.to_string())?;
        if loaded_name != &name {
            let _ = docker.untag_image(loaded_name).await;
        }
        self.log.line(format!(
            "Loaded release image {name} ({} bytes, sha256 {}) in {:.1}s.",
            release.size,
            release.sha256,
            started.elapsed().as_secs_f64()
        ));
        Ok(name)
    }

    fn service(
        &self,
        image: &str,
        service: &str,
        env: Vec<String>,
        port: Option<u16>,
    ) -> ServiceSpec {
        let mut labels = HashMap::from([
            (
                LABEL_ENVIRONMENT.to_owned(),
                self.job.environment_id.clone(),
            ),
            (LABEL_DEPLOYMENT.to_owned(), self.job.deployment_id.clone()),
            (LABEL_DEPLOY_JOB.to_owned(), self.job.job_id.clone()),
        ]);
        labels.insert(LABEL_SERVICE.to_owned(), service.to_owned());
        labels.insert(LABEL_DEPLOY_AGENT.to_owned(), self.agent_id.to_owned());
        let mut all: Vec<String> = self
            .deploy
            .runtime_env
            .iter()
            .map(|var| format!("{}={}", var.name, var.value))
            .collect();
        all.push("NODE_ENV=production".to_owned());
        // Writable and the service's own: Medusa's CLI keeps its settings
        // under HOME.
        all.push("HOME=/tmp".to_owned());
        all.push("MEDUSA_DISABLE_TELEMETRY=true".to_owned());
        all.extend(env);
        ServiceSpec {
            name: self.container(service),
            image: image.to_owned(),
            cmd: None,
            env: all,
            labels,
            network: self.config.deploy_network,
            port,
            limits: Limits::from_config(self.config),
            user: self.config.build_user,
        }
    }

    /// A worker beside the server only where the config tells them apart:
    /// else both would run the scheduled jobs.
    async fn check_worker_split(&self, docker: &DockerExecutor, image: &str) -> Result<(), String> {
        if !self.deploy.settings.worker {
            return Ok(());
        }
        let labels = docker
            .image_labels(image)
            .await
            .map_err(|e| e.to_string())?;
        if labels
            .get(crate::pipeline::LABEL_READS_WORKER_MODE)
            .map(String::as_str)
            == Some("true")
        {
            return Ok(());
        }
        Err(WORKER_MODE_MISSING.to_owned())
    }

    /// `medusa db:migrate`, once, in a one-off container with the runtime
    /// variables; a failure switches nothing.
    async fn migrate(&self, docker: &DockerExecutor, image: &str) -> Result<(), String> {
        let started = Instant::now();
        let mut spec = self.service(image, "migrate", Vec::new(), None);
        spec.cmd = Some(vec![
            "/app/node_modules/.bin/medusa".to_owned(),
            "db:migrate".to_owned(),
        ]);
        self.log.line("Running `medusa db:migrate`.");
        docker
            .start_service(&spec)
            .await
            .map_err(|e| e.to_string())?;
        let code = loop {
            match docker.service_state(&spec.name).await {
                Ok(ServiceState::Running) => {}
                Ok(ServiceState::Exited(code)) => break code,
                Ok(ServiceState::Gone) => break -1,
                Err(error) => return Err(error.to_string()),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = self.cancel.cancelled() => {
                    let _ = docker.remove_service(&spec.name, Duration::ZERO).await;
                    return Err("the deploy was canceled during the migrations".to_owned());
                }
            }
        };
        let output = docker.service_output(&spec.name, 200).await;
        // Prefixed as the runtime log's services are, so the Runtime tab and
        // log drains tell the migrations' lines.
        let mut prefixed = String::with_capacity(output.len() + 64);
        for line in output.lines() {
            prefixed.push_str("migrations | ");
            prefixed.push_str(line);
            prefixed.push('\n');
        }
        self.log.write(prefixed.as_bytes());
        let _ = docker.remove_service(&spec.name, Duration::ZERO).await;
        if code != 0 {
            return Err(format!(
                "the migrations failed (`medusa db:migrate` exited with code {code}); nothing was switched and the previous release keeps serving. Its last lines: {}",
                last_lines(&output)
            ));
        }
        self.log.line(format!(
            "Migrations done in {:.1}s.",
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Starts the server (and the worker), waits for the server's health
    /// check, then starts the storefront and waits for it to answer; on a
    /// failure the new containers go.
    async fn start(
        &self,
        docker: &DockerExecutor,
        image: &str,
        storefront_image: Option<&str>,
    ) -> Result<(Ports, Vec<Followed>), String> {
        let mut started = Vec::new();
        let result = self
            .start_services(docker, image, storefront_image, &mut started)
            .await;
        if result.is_err() {
            for followed in &started {
                let _ = docker
                    .remove_service(&followed.container, Duration::ZERO)
                    .await;
            }
        }
        result.map(|ports| (ports, started))
    }

    async fn start_services(
        &self,
        docker: &DockerExecutor,
        image: &str,
        storefront_image: Option<&str>,
        started: &mut Vec<Followed>,
    ) -> Result<Ports, String> {
        let settings = &self.deploy.settings;
        let inside = self.inside_port(SERVER_PORT)?;
        let mode = if settings.worker { "server" } else { "shared" };
        let server = self.service(
            image,
            "server",
            vec![
                format!("PORT={inside}"),
                format!("MEDUSA_WORKER_MODE={mode}"),
            ],
            Some(inside),
        );
        let backend = self.start_service(docker, &server, started).await?;
        if settings.worker {
            let worker = self.service(
                image,
                "worker",
                vec![
                    "MEDUSA_WORKER_MODE=worker".to_owned(),
                    "DISABLE_MEDUSA_ADMIN=true".to_owned(),
                    format!("PORT={}", host_port().unwrap_or(SERVER_PORT + 1)),
                ],
                None,
            );
            self.start_service(docker, &worker, started).await?;
        }
        let health = Health {
            service: "server",
            path: &settings.health_path,
            healthy: |status| status.is_success(),
            wanted: "200",
        };
        self.health_check(docker, &server.name, backend, &health)
            .await?;
        let Some(storefront_image) = storefront_image else {
            return Ok(Ports {
                backend,
                storefront: None,
            });
        };
        let inside = self.inside_port(STOREFRONT_PORT)?;
        let storefront = self.service(
            storefront_image,
            "storefront",
            // Next.js's standalone server listens on HOSTNAME.
            vec![format!("PORT={inside}"), "HOSTNAME=0.0.0.0".to_owned()],
            Some(inside),
        );
        let port = self.start_service(docker, &storefront, started).await?;
        // A storefront may redirect / (to a region) or answer 404 there: any
        // answer but a server error means it serves.
        let health = Health {
            service: "storefront",
            path: "/",
            healthy: |status| !status.is_server_error(),
            wanted: "an answer below 500",
        };
        self.health_check(docker, &storefront.name, port, &health)
            .await?;
        Ok(Ports {
            backend,
            storefront: Some(port),
        })
    }

    /// The port a service listens on inside its container: its own on a
    /// bridge network, a free one of the host's on the host network.
    fn inside_port(&self, bridged: u16) -> Result<u16, String> {
        match self.config.deploy_network {
            Network::Host => host_port().map_err(|e| format!("cannot find a free port: {e}")),
            _ => Ok(bridged),
        }
    }

    /// Starts one service, counted among the new containers; the host port
    /// it answers on, if it publishes one.
    async fn start_service(
        &self,
        docker: &DockerExecutor,
        spec: &ServiceSpec,
        started: &mut Vec<Followed>,
    ) -> Result<u16, String> {
        let service = spec.labels.get(LABEL_SERVICE).cloned().unwrap_or_default();
        started.push(Followed {
            service: service.clone(),
            container: spec.name.clone(),
        });
        let port = docker
            .start_service(spec)
            .await
            .map_err(|e| e.to_string())?;
        match port {
            Some(port) => {
                self.log.line(format!(
                    "Started the {service} ({}) on 127.0.0.1:{port}.",
                    spec.name
                ));
                Ok(port)
            }
            None if spec.port.is_none() => {
                self.log
                    .line(format!("Started the {service} ({}).", spec.name));
                Ok(0)
            }
            None => Err(format!("the {service}'s port was not published")),
        }
    }

    async fn health_check(
        &self,
        docker: &DockerExecutor,
        name: &str,
        port: u16,
        health: &Health<'_>,
    ) -> Result<(), String> {
        let settings = &self.deploy.settings;
        let (service, path) = (health.service, health.path);
        let url = format!("http://127.0.0.1:{port}{path}");
        let timeout = Duration::from_secs(settings.health_timeout_seconds);
        let deadline = Instant::now() + timeout;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        self.log.line(format!(
            "Health check of the {service}: GET {path} until {} (at most {}s).",
            health.wanted, settings.health_timeout_seconds
        ));
        loop {
            let last_answer = match http.get(&url).send().await {
                // The answer counts only while the new container runs: a
                // port it failed to bind answers for whoever holds it.
                Ok(response)
                    if (health.healthy)(response.status())
                        && docker.service_state(name).await.ok() == Some(ServiceState::Running) =>
                {
                    self.log
                        .line(format!("Health check passed: {}.", response.status()));
                    return Ok(());
                }
                Ok(response) => format!("it answered {}", response.status()),
                Err(error) => format!("no answer ({error})"),
            };
            if let Ok(ServiceState::Exited(code)) = docker.service_state(name).await {
                let output = docker.service_output(name, 200).await;
                self.log.write(output.as_bytes());
                return Err(format!(
                    "the new {service} ({name}) exited with code {code} before its health check (GET {path}) passed; nothing was switched and the previous release keeps serving. Its last lines: {}",
                    last_lines(&output)
                ));
            }
            if Instant::now() >= deadline {
                let output = docker.service_output(name, 200).await;
                self.log.write(output.as_bytes());
                return Err(format!(
                    "the new {service}'s health check (GET {path}) did not pass within {}s ({last_answer}); nothing was switched and the previous release keeps serving. Raise deploy.health_timeout_seconds if it starts slowly. Its last lines: {}",
                    settings.health_timeout_seconds,
                    last_lines(&output)
                ));
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.cancel.cancelled() => return Err("the deploy was canceled during the health check".to_owned()),
            }
        }
    }

    /// Routes the hostnames to the new containers: the backend's, then the
    /// storefront's.
    async fn switch(&self, ports: &Ports) -> Result<(), String> {
        let settings = &self.deploy.settings;
        let hostname = settings
            .backend_hostname
            .as_deref()
            .ok_or("the deploy settings name no backend_hostname")?;
        let caddy = crate::caddy::Caddy::new(&self.config.caddy_admin_url);
        caddy
            .ensure_server(CADDY_SERVER, &self.config.caddy_listen)
            .await?;
        let mut routes = vec![(Component::Backend, hostname, ports.backend)];
        if let (Some(port), Some(hostname)) = (ports.storefront, &settings.storefront_hostname) {
            routes.push((Component::Storefront, hostname, port));
        }
        for (component, hostname, port) in routes {
            let id = route_id(&self.job.environment_id, component);
            caddy
                .upsert_route(CADDY_SERVER, &id, hostname, &format!("127.0.0.1:{port}"))
                .await?;
            self.log.line(format!(
                "Caddy ({}): {hostname} now goes to 127.0.0.1:{port}.",
                self.config.caddy_admin_url
            ));
        }
        Ok(())
    }

    /// Stops the environment's other releases once their requests in flight
    /// have had time to finish.
    async fn stop_previous(&self, docker: &DockerExecutor) {
        let Ok(containers) = docker
            .services_labelled(LABEL_ENVIRONMENT, &self.job.environment_id)
            .await
        else {
            return;
        };
        let previous: Vec<String> = containers
            .into_iter()
            .filter(|(_, labels)| labels.get(LABEL_DEPLOY_JOB) != Some(&self.job.job_id))
            .map(|(name, _)| name)
            .collect();
        if previous.is_empty() {
            return;
        }
        self.log.line(format!(
            "The previous release ({}) stops in {}s, once its requests in flight are done.",
            previous.join(", "),
            DRAIN.as_secs()
        ));
        // The deploy is live now; what is left is the old release's.
        let (docker, pruning) = (docker.clone(), self.pruning());
        tokio::spawn(async move {
            tokio::time::sleep(DRAIN).await;
            for name in previous {
                match docker.remove_service(&name, STOP_GRACE).await {
                    Ok(()) => {
                        tracing::info!(message = "Stopped a previous release.", container = %name)
                    }
                    Err(error) => {
                        tracing::warn!(message = "Could not stop a previous release.", container = %name, %error)
                    }
                }
            }
            for tag in pruning.run(&docker).await {
                tracing::info!(message = "Removed a release image beyond releases_kept.", image = %tag, kept = pruning.kept);
            }
        });
    }
}

/// An environment's release images on this host, and how many to keep.
struct Pruning {
    /// Each component's repository and its live image.
    repositories: Vec<(String, String)>,
    kept: usize,
}

impl Pruning {
    /// Removes the tags beyond the kept ones, newest first kept; a tag whose
    /// image a container still uses stays. The tags removed.
    async fn run(&self, docker: &DockerExecutor) -> Vec<String> {
        let mut removed = Vec::new();
        for (repository, live) in &self.repositories {
            let Ok(tags) = docker.tags_of(repository).await else {
                continue;
            };
            let older = tags
                .into_iter()
                .filter(|tag| tag != live)
                .skip(self.kept - 1);
            for tag in older {
                if docker.untag_image(&tag).await.is_ok() {
                    removed.push(tag);
                }
            }
        }
        removed
    }
}

/// Where a host keeps an environment's release images of `component`.
pub(crate) fn release_repository(environment_id: &str, component: Component) -> String {
    match component {
        Component::Backend => format!("kiln-release/{environment_id}"),
        Component::Storefront => format!("kiln-release-storefront/{environment_id}"),
    }
}

/// The `@id` of an environment's Caddy route to `component`.
pub(crate) fn route_id(environment_id: &str, component: Component) -> String {
    format!("kiln-{environment_id}-{component}")
}

/// Refuses a deploy job this agent was not set up to run: without the deploy
/// role, or for an environment whose labels it does not carry all of. The
/// control plane hands out no such job; one that comes anyway is refused.
fn may_deploy(
    config: &AgentConfig,
    settings: &kiln_protocol::DeploySettings,
    environment: &str,
) -> Result<(), String> {
    if !config.roles.contains(&kiln_protocol::Role::Deploy) {
        return Err(format!(
            "this agent does not deploy (its roles are {:?}); give roles = [\"deploy\"] to an agent meant to run {environment}",
            config.roles.iter().map(|role| role.as_str()).collect::<Vec<_>>()
        ));
    }
    let missing: Vec<&String> = settings
        .agent_labels
        .iter()
        .filter(|label| !config.labels.contains(label))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "this agent may not deploy {environment}: it lacks the labels {missing:?} that the environment's deploy.agent_labels require"
        ));
    }
    settings.check()
}

/// The last lines of a container's output, for a reason.
fn last_lines(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let from = lines.len().saturating_sub(OUTPUT_QUOTED);
    let quoted = lines[from..].join(" | ");
    if quoted.is_empty() {
        "(none)".to_owned()
    } else {
        quoted
    }
}

/// Ports of the host network a release listens on: below the ephemeral
/// range (32768 and up) from which the kernel and Docker's port publishing
/// hand out ports, so a port this agent found free is not given to another
/// process before its release binds it.
const HOST_PORTS: std::ops::Range<u16> = 20000..30000;
/// How long a port handed out stays out of the next choices: its release may
/// still be starting, or stopping.
const PORT_HELD: Duration = Duration::from_secs(600);

/// A free port of the host network for a release: one of `HOST_PORTS` no
/// process listens on and this agent has not handed out lately.
fn host_port() -> std::io::Result<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<(u16, Instant)>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = crate::lock(&HANDED_OUT);
    handed_out.retain(|(_, at)| at.elapsed() < PORT_HELD);
    for _ in 0..500 {
        let port = HOST_PORTS.start + rand::random::<u16>() % (HOST_PORTS.end - HOST_PORTS.start);
        if handed_out.iter().any(|(held, _)| *held == port) {
            continue;
        }
        // Taken on any address (loopback, or IPv6 as Node listens), this fails.
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            handed_out.push((port, Instant::now()));
            return Ok(port);
        }
    }
    Err(std::io::Error::other(format!(
        "no free port in {}..{} of the host network",
        HOST_PORTS.start, HOST_PORTS.end
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(roles: &str, labels: &str) -> AgentConfig {
        crate::config::PartialConfig::from_env(|name| match name {
            "KILN_ROLES" => Some(roles.to_owned()),
            "KILN_LABELS" => Some(labels.to_owned()),
            _ => None,
        })
        .unwrap()
        .resolve()
        .unwrap()
    }

    #[test]
    fn host_ports_are_below_the_ephemeral_range_free_and_not_handed_out_twice() {
        let taken = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let port = host_port().unwrap();
            assert!(HOST_PORTS.contains(&port), "{port}");
            assert!(seen.insert(port), "{port} handed out twice");
            assert_ne!(port, taken.local_addr().unwrap().port());
        }
    }

    #[test]
    fn a_deploy_job_for_an_environment_the_agent_may_not_deploy_is_refused() {
        let settings: kiln_protocol::DeploySettings = serde_json::from_str(
            r#"{"agent_labels": ["edge"], "backend_hostname": "api.shop.example"}"#,
        )
        .unwrap();
        let builder = may_deploy(&config("build", "edge"), &settings, "Production").unwrap_err();
        assert!(builder.contains("does not deploy"), "{builder}");
        let elsewhere =
            may_deploy(&config("deploy", "other"), &settings, "Production").unwrap_err();
        assert!(elsewhere.contains("\"edge\""), "{elsewhere}");
        may_deploy(
            &config("build,deploy", "edge,other"),
            &settings,
            "Production",
        )
        .unwrap();
        let mut injected = settings.clone();
        injected.health_path = "/health\"}]".to_owned();
        assert!(may_deploy(&config("deploy", "edge"), &injected, "Production").is_err());
    }
}
