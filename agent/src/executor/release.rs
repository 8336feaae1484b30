//! Release images and the containers that run them, on the Docker engine.
//!
//! An image is assembled with no command run in it: each layer is a tar.gz the
//! agent made (`pack`), unpacked into a created, never started container and
//! committed. Its services run with the build sandbox's limits (no
//! capabilities, no new privileges, memory, CPUs, pids), publishing their port
//! on loopback only.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::models::{
    ContainerConfig, ContainerCreateBody, HostConfig, HostConfigLogConfig, PortBinding,
};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, ImportImageOptions,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    StartContainerOptions, StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::docker::{docker_error, DockerExecutor};
use super::{ExecError, ImageAssembly, Limits, LABEL_AGENT};
use crate::config::{Network, UidGid};

/// Where a release's files live in its image.
pub const RELEASE_DIR: &str = "/app";

/// A long-running container of a release: the server, the worker.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub network: Network,
    /// The port the service listens on inside; published on 127.0.0.1 (bridge).
    pub port: Option<u16>,
    pub limits: Limits,
    pub user: UidGid,
}

/// What a pull moved: the layers it fetched (and their compressed bytes), and
/// those the host had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullStats {
    pub layers_pulled: usize,
    pub layers_present: usize,
    pub bytes: u64,
}

/// What a stopped or running service says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    Running,
    Exited(i64),
    Gone,
}

impl DockerExecutor {
    /// Assembles the image, returning its id; a layer is one commit.
    pub async fn assemble(&self, assembly: &ImageAssembly) -> Result<String, ExecError> {
        let mut image = assembly.base.clone();
        let (repo, tag) = assembly
            .tag
            .rsplit_once(':')
            .unwrap_or((assembly.tag.as_str(), "latest"));
        for (index, layer) in assembly.layers.iter().enumerate() {
            let last = index + 1 == assembly.layers.len();
            let created = self
                .docker
                .create_container(
                    None::<bollard::query_parameters::CreateContainerOptions>,
                    ContainerCreateBody {
                        image: Some(image.clone()),
                        cmd: Some(vec!["/nonexistent".to_owned()]),
                        // Docker makes the working directory at create: the
                        // layer is unpacked into it.
                        working_dir: Some(RELEASE_DIR.to_owned()),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| docker_error("create a container to assemble an image in", e))?;
            let result = self
                .fill_and_commit(&created.id, layer, last, assembly, repo, tag)
                .await;
            let _ = self
                .docker
                .remove_container(
                    &created.id,
                    Some(RemoveContainerOptionsBuilder::new().force(true).build()),
                )
                .await;
            image = result?;
        }
        Ok(image)
    }

    async fn fill_and_commit(
        &self,
        container: &str,
        layer: &Path,
        last: bool,
        assembly: &ImageAssembly,
        repo: &str,
        tag: &str,
    ) -> Result<String, ExecError> {
        let file = tokio::fs::File::open(layer)
            .await
            .map_err(|e| ExecError::Docker {
                action: "read an image layer",
                reason: format!("{}: {e}", layer.display()),
            })?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
        // Docker makes the folder, and unpacks a gzipped archive itself.
        self.docker
            .upload_to_container(
                container,
                Some(
                    UploadToContainerOptionsBuilder::new()
                        .path(RELEASE_DIR)
                        .no_overwrite_dir_non_dir("true")
                        .build(),
                ),
                bollard::body_try_stream(stream),
            )
            .await
            .map_err(|e| docker_error("copy a layer into an image", e))?;
        let config = ContainerConfig {
            cmd: assembly.cmd.clone().filter(|_| last),
            env: Some(assembly.env.clone()).filter(|env| last && !env.is_empty()),
            working_dir: Some(RELEASE_DIR.to_owned()),
            labels: Some(assembly.labels.iter().cloned().collect()).filter(|_| last),
            ..Default::default()
        };
        let mut options = CommitContainerOptionsBuilder::new()
            .container(container)
            .pause(false);
        if last {
            options = options.repo(repo).tag(tag);
        }
        let committed = self
            .docker
            .commit_container(options.build(), config)
            .await
            .map_err(|e| docker_error("commit an image layer", e))?;
        Ok(committed.id)
    }

    /// The labels of an image.
    pub async fn image_labels(&self, image: &str) -> Result<HashMap<String, String>, ExecError> {
        let inspected = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|e| docker_error("inspect a release image", e))?;
        Ok(inspected
            .config
            .and_then(|config| config.labels)
            .unwrap_or_default())
    }

    /// Gives `image` another name.
    pub async fn tag_image(&self, image: &str, tag: &str) -> Result<(), ExecError> {
        let (repo, tag) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
        self.docker
            .tag_image(
                image,
                Some(
                    bollard::query_parameters::TagImageOptionsBuilder::new()
                        .repo(repo)
                        .tag(tag)
                        .build(),
                ),
            )
            .await
            .map_err(|e| docker_error("tag an image", e))
    }

    /// Removes an image name (its layers stay while another name uses them).
    pub async fn untag_image(&self, image: &str) -> Result<(), ExecError> {
        match self
            .docker
            .remove_image(
                image,
                Some(RemoveImageOptionsBuilder::new().noprune(false).build()),
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if super::docker::is_not_found(&error) => Ok(()),
            Err(error) => Err(docker_error("remove an image", error)),
        }
    }

    /// Pushes `image` (`registry/repository:tag`) to its registry.
    pub async fn push(&self, image: &str) -> Result<(), ExecError> {
        let (name, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
        let mut progress = self.docker.push_image(
            name,
            Some(bollard::query_parameters::PushImageOptions {
                tag: Some(tag.to_owned()),
                platform: None,
            }),
            None,
        );
        while let Some(message) = progress.next().await {
            let message = message.map_err(|e| docker_error("push a release image", e))?;
            if let Some(error) = message.error_detail.and_then(|detail| detail.message) {
                return Err(ExecError::Docker {
                    action: "push a release image",
                    reason: error,
                });
            }
        }
        Ok(())
    }

    /// Pulls `image` (`registry/repository:tag`): only the layers this host
    /// lacks travel, and the answer says how many and how large.
    pub async fn pull(&self, image: &str) -> Result<PullStats, ExecError> {
        let (name, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
        let mut progress = self.docker.create_image(
            Some(bollard::query_parameters::CreateImageOptions {
                from_image: Some(name.to_owned()),
                tag: Some(tag.to_owned()),
                ..Default::default()
            }),
            None,
            None,
        );
        let mut present = std::collections::BTreeSet::new();
        let mut pulled: HashMap<String, i64> = HashMap::new();
        while let Some(message) = progress.next().await {
            let message = message.map_err(|e| docker_error("pull a release image", e))?;
            if let Some(error) = message.error_detail.and_then(|detail| detail.message) {
                return Err(ExecError::Docker {
                    action: "pull a release image",
                    reason: error,
                });
            }
            let (Some(layer), Some(status)) = (message.id, message.status) else {
                continue;
            };
            match status.as_str() {
                "Already exists" => {
                    present.insert(layer);
                }
                "Downloading" => {
                    let total = message
                        .progress_detail
                        .and_then(|detail| detail.total)
                        .unwrap_or(0);
                    let entry = pulled.entry(layer).or_default();
                    *entry = (*entry).max(total);
                }
                "Pull complete" | "Download complete" => {
                    pulled.entry(layer).or_default();
                }
                _ => {}
            }
        }
        Ok(PullStats {
            layers_pulled: pulled.len(),
            layers_present: present.len(),
            bytes: pulled.values().map(|&bytes| bytes.max(0) as u64).sum(),
        })
    }

    /// Writes `image` as an OCI image layout that Docker loads too (`docker
    /// save`, then its blobs laid out by digest); its size and sha256.
    pub async fn save_image(&self, image: &str, out: &Path) -> Result<(u64, String), ExecError> {
        let io = |e: std::io::Error| ExecError::Docker {
            action: "write an image archive",
            reason: format!("{}: {e}", out.display()),
        };
        let saved = out.with_extension("docker.tar");
        let mut file = tokio::fs::File::create(&saved).await.map_err(io)?;
        let mut stream = self.docker.export_image(image);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| docker_error("save an image", e))?;
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        drop(file);
        let (from, to) = (saved.clone(), out.to_owned());
        let laid_out = tokio::task::spawn_blocking(move || {
            super::oci::to_layout(&from, &to)?;
            super::oci::digest_file(&to)
        })
        .await
        .expect("layout task");
        let _ = tokio::fs::remove_file(&saved).await;
        laid_out.map_err(io)
    }

    /// Loads an image archive (`docker load`); the names it brought.
    pub async fn load_image(&self, archive: &Path) -> Result<Vec<String>, ExecError> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| ExecError::Docker {
                action: "read an image archive",
                reason: format!("{}: {e}", archive.display()),
            })?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
        let mut progress = self.docker.import_image(
            ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            bollard::body_try_stream(stream),
            None,
        );
        let mut loaded = Vec::new();
        while let Some(message) = progress.next().await {
            let message = message.map_err(|e| docker_error("load an image", e))?;
            if let Some(error) = message.error_detail.and_then(|detail| detail.message) {
                return Err(ExecError::Docker {
                    action: "load an image",
                    reason: error,
                });
            }
            if let Some(name) = message
                .stream
                .as_deref()
                .and_then(|line| line.trim().strip_prefix("Loaded image: "))
            {
                loaded.push(name.to_owned());
            }
        }
        Ok(loaded)
    }

    /// Starts a service; the host port its `port` is published on (or, on the
    /// host network, `port` itself).
    pub async fn start_service(&self, spec: &ServiceSpec) -> Result<Option<u16>, ExecError> {
        let _ = self.remove_service(&spec.name, Duration::ZERO).await;
        let memory = spec.limits.memory_bytes as i64;
        let port_key = spec.port.map(|port| format!("{port}/tcp"));
        let mut labels = spec.labels.clone();
        labels.insert(LABEL_AGENT.to_owned(), "service".to_owned());
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.cmd.clone(),
            env: Some(spec.env.clone()),
            user: Some(format!("{}:{}", spec.user.uid, spec.user.gid)),
            labels: Some(labels),
            exposed_ports: port_key
                .clone()
                .filter(|_| spec.network == Network::Bridge)
                .map(|key| HashMap::from([(key, HashMap::new())])),
            host_config: Some(HostConfig {
                network_mode: Some(spec.network.docker_mode().to_owned()),
                port_bindings: port_key
                    .filter(|_| spec.network == Network::Bridge)
                    .map(|key| {
                        HashMap::from([(
                            key,
                            Some(vec![PortBinding {
                                host_ip: Some("127.0.0.1".to_owned()),
                                host_port: Some(String::new()),
                            }]),
                        )])
                    }),
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some((spec.limits.cpus * 1e9) as i64),
                pids_limit: Some(spec.limits.pids),
                init: Some(true),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_owned(),
                    "rw,nosuid,nodev,size=512m".to_owned(),
                )])),
                // Kept small: the last lines say why a release would not start.
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".to_owned()),
                    config: Some(HashMap::from([
                        ("max-size".to_owned(), "10m".to_owned()),
                        ("max-file".to_owned(), "2".to_owned()),
                    ])),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(
                    CreateContainerOptionsBuilder::new()
                        .name(&spec.name)
                        .build(),
                ),
                body,
            )
            .await
            .map_err(|e| docker_error("create a release container", e))?;
        self.docker
            .start_container(&spec.name, None::<StartContainerOptions>)
            .await
            .map_err(|e| docker_error("start a release container", e))?;
        if spec.network != Network::Bridge {
            return Ok(spec.port);
        }
        let inspected = self
            .docker
            .inspect_container(
                &spec.name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(|e| docker_error("inspect a release container", e))?;
        let published = inspected
            .network_settings
            .and_then(|settings| settings.ports)
            .and_then(|ports| ports.get(&format!("{}/tcp", spec.port?)).cloned().flatten())
            .and_then(|bindings| bindings.into_iter().find_map(|b| b.host_port))
            .and_then(|port| port.parse().ok());
        Ok(published)
    }

    /// Whether a service runs, ended (with its exit code), or is gone.
    pub async fn service_state(&self, name: &str) -> Result<ServiceState, ExecError> {
        match self
            .docker
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(inspected) => {
                let state = inspected.state.unwrap_or_default();
                if state.running == Some(true) {
                    Ok(ServiceState::Running)
                } else {
                    Ok(ServiceState::Exited(state.exit_code.unwrap_or(-1)))
                }
            }
            Err(error) if super::docker::is_not_found(&error) => Ok(ServiceState::Gone),
            Err(error) => Err(docker_error("inspect a release container", error)),
        }
    }

    /// The last `lines` lines a service printed.
    pub async fn service_output(&self, name: &str, lines: usize) -> String {
        let mut stream = self.docker.logs(
            name,
            Some(
                LogsOptionsBuilder::new()
                    .stdout(true)
                    .stderr(true)
                    .tail(&lines.to_string())
                    .build(),
            ),
        );
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        text
    }

    /// What a service prints from `since` (Unix seconds; 0 for all of it)
    /// on, as it prints it, until the container stops.
    pub fn follow_output(
        &self,
        name: &str,
        since: i64,
    ) -> impl futures::Stream<Item = Result<bytes::Bytes, ExecError>> + use<> {
        self.docker
            .logs(
                name,
                Some(
                    LogsOptionsBuilder::new()
                        .stdout(true)
                        .stderr(true)
                        .follow(true)
                        .since(since.clamp(0, i32::MAX as i64) as i32)
                        .build(),
                ),
            )
            .map(|chunk| {
                chunk
                    .map(|output| output.into_bytes())
                    .map_err(|e| docker_error("follow a release container's output", e))
            })
    }

    /// Stops (SIGTERM, then SIGKILL after `grace`) and removes a service.
    pub async fn remove_service(&self, name: &str, grace: Duration) -> Result<(), ExecError> {
        if !grace.is_zero() {
            let _ = self
                .docker
                .stop_container(
                    name,
                    Some(
                        StopContainerOptionsBuilder::new()
                            .t(grace.as_secs().max(1) as i32)
                            .build(),
                    ),
                )
                .await;
        }
        match self
            .docker
            .remove_container(
                name,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(error) if super::docker::is_not_found(&error) => Ok(()),
            Err(error) => Err(docker_error("remove a release container", error)),
        }
    }

    /// The tags of repository `repo` on this host, newest first.
    pub async fn tags_of(&self, repo: &str) -> Result<Vec<String>, ExecError> {
        let filters = HashMap::from([("reference".to_owned(), vec![format!("{repo}:*")])]);
        let mut images = self
            .docker
            .list_images(Some(
                bollard::query_parameters::ListImagesOptionsBuilder::new()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| docker_error("list release images", e))?;
        images.sort_by_key(|image| std::cmp::Reverse(image.created));
        Ok(images
            .into_iter()
            .flat_map(|image| image.repo_tags)
            .filter(|tag| tag.starts_with(&format!("{repo}:")))
            .collect())
    }

    /// The values of label `key` among the containers labelled `filter`
    /// (`key=value`).
    pub async fn label_values(&self, key: &str, filter: &str) -> Result<Vec<String>, ExecError> {
        let containers = self.labelled(filter, "list release containers").await?;
        let mut values: Vec<String> = containers
            .into_iter()
            .filter_map(|container| container.labels?.get(key).cloned())
            .collect();
        values.sort();
        values.dedup();
        Ok(values)
    }

    /// Names and labels of the services with label `key=value`.
    pub async fn services_labelled(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<(String, HashMap<String, String>)>, ExecError> {
        let containers = self
            .labelled(&format!("{key}={value}"), "list release containers")
            .await?;
        Ok(containers
            .into_iter()
            .filter_map(|container| {
                let name = container.names?.first()?.trim_start_matches('/').to_owned();
                Some((name, container.labels.unwrap_or_default()))
            })
            .collect())
    }
}
