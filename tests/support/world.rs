//! A world for end-to-end tests of the whole loop: a control plane in-process,
//! a fixture git repository with a project and a Production environment, the
//! Docker engine and the test image; agents are started into it.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_protocol::{CreateProject, Deployment, DeploymentStatus, DeploymentStatus::*};

use super::*;

pub struct World {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    /// The `kiln-agent` binary the test was built with.
    agent_binary: std::path::PathBuf,
    pub cp: ControlPlane,
    pub admin: Api,
    pub repo: FixtureRepo,
    pub docker: bollard::Docker,
    pub image: &'static str,
    pub project_id: String,
    pub environment_id: String,
}

impl World {
    /// A control plane with one project (the fixture repo) and a Production
    /// environment on `main` carrying `variables` (and the project's
    /// storefront path); `None` when Docker is absent. `agent_binary` is the
    /// calling test's `env!("CARGO_BIN_EXE_kiln-agent-e2e")`.
    pub async fn new(
        agent_binary: &Path,
        variables: serde_json::Value,
        storefront_path: Option<&str>,
    ) -> Option<World> {
        World::new_with(agent_binary, variables, storefront_path, |_| {}).await
    }

    /// Like `new`, with the control plane's configuration changed by `tweak`.
    pub async fn new_with(
        agent_binary: &Path,
        variables: serde_json::Value,
        storefront_path: Option<&str>,
        tweak: impl FnOnce(&mut kiln_control_plane::Config),
    ) -> Option<World> {
        let docker = docker().await?;
        let image = build_image().await;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let repo = match storefront_path {
            Some(_) => FixtureRepo::with_storefront(&root),
            None => FixtureRepo::new(&root),
        };
        let cp = ControlPlane::start_with(&root.join("server"), tweak).await;
        let admin = cp.admin();
        let project = admin
            .create_project_with(CreateProject {
                storefront_path: storefront_path.map(str::to_owned),
                ..CreateProject::new("shop", &repo.url)
            })
            .await;
        let environment = admin
            .create_environment(&project, "Production", "main")
            .await;
        admin.set_variables(&environment.id, variables).await;
        Some(World {
            _dir: dir,
            root,
            agent_binary: agent_binary.to_owned(),
            cp,
            admin,
            repo,
            docker,
            image,
            project_id: project.id,
            environment_id: environment.id,
        })
    }

    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    pub async fn agent(&self, name: &str, extra: &str) -> AgentProcess {
        AgentProcess::start(
            &self.agent_binary,
            &self.cp.base_url(),
            &self.root.join(name),
            self.image,
            extra,
        )
        .await
    }

    pub async fn push(&self, sha: &str) -> Deployment {
        let outcome = self.admin.push_repo(&self.repo.url, "main", sha).await;
        outcome
            .deployments
            .into_iter()
            .next()
            .expect("one deployment queued")
    }

    /// Waits for `status`; fails at once (with the agent's log) if the deployment
    /// settles elsewhere.
    pub async fn settle(
        &self,
        id: &str,
        status: DeploymentStatus,
        agent: &AgentProcess,
    ) -> Deployment {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let deployment = self.admin.deployment(id).await;
            if deployment.status == status {
                return deployment;
            }
            // On the way to live (auto-deploy), a build passes through these too.
            let on_the_way = matches!(deployment.status, Queued | Building)
                || (matches!(status, Live | DeployFailed)
                    && matches!(deployment.status, AwaitingDeployment | Deploying));
            let settled_elsewhere = !on_the_way;
            if settled_elsewhere || Instant::now() > deadline {
                panic!(
                    "deployment {id} is {} (reason {:?}), expected {status}\nsystem log:\n{}\ndeploy log:\n{}\nagent log:\n{}",
                    deployment.status,
                    deployment.reason,
                    self.log(id, "system").await,
                    self.log(id, "deploy").await,
                    agent.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn log(&self, id: &str, stream: &str) -> String {
        self.admin
            .get(&format!("/api/v1/deployments/{id}/logs/{stream}"))
            .await
            .text()
    }

    pub async fn wait_until_building(&self, id: &str) -> Deployment {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let deployment = self.admin.deployment(id).await;
            if deployment.status == Building
                && self.log(id, "backend").await.contains("still compiling")
            {
                return deployment;
            }
            assert!(
                Instant::now() < deadline,
                "deployment {id} never got into its build: {:?}",
                deployment.status
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
