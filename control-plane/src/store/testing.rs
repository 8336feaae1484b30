//! Fixtures for the store's unit tests: an in-memory database with a project, an
//! environment and an agent, and the calls a push and a claim make.

use crate::db::sql::Connection;
use kiln_protocol::{CreateEnvironment, CreateProject, Deployment, Job, PushEvent};

use super::{
    claim, create_environment, create_project, on_push, register_agent, AgentRow, JobPolicy,
};

pub(super) const REPO: &str = "https://git.example/acme/shop.git";

pub(super) const POLICY: JobPolicy = JobPolicy {
    lease_ms: 60_000,
    job_timeout_seconds: 3600,
    max_attempts: 2,
};

/// A database with project `shop` (labels `labels`) and environment `Production`
/// on `main`; returns the connection, the project id and the environment id.
pub(super) fn shop(labels: &[&str]) -> (Connection, String, String) {
    let mut conn = crate::db::in_memory();
    let project = create_project(
        &mut conn,
        CreateProject {
            agent_labels: labels.iter().map(|l| l.to_string()).collect(),
            ..CreateProject::new("shop", REPO)
        },
        Default::default(),
    )
    .unwrap();
    let environment = create_environment(
        &mut conn,
        &project.id,
        CreateEnvironment {
            name: "Production".into(),
            branch: "main".into(),
            auto_deploy: false,
        },
    )
    .unwrap();
    (conn, project.id, environment.id)
}

/// A store other connections open too (`crate::db::connect(&location)`, as
/// replicas do), with project `shop`; keep the directory until they are done.
pub(super) fn shared_shop() -> (
    tempfile::TempDir,
    crate::db::Location,
    Connection,
    kiln_protocol::Project,
) {
    let dir = tempfile::tempdir().unwrap();
    let location = crate::db::shared_for_test(dir.path());
    let mut conn = crate::db::connect(&location).unwrap();
    let project = create_project(
        &mut conn,
        CreateProject::new("shop", REPO),
        Default::default(),
    )
    .unwrap();
    (dir, location, conn, project)
}

/// A 40-hex commit id made from `n`.
pub(super) fn sha(n: u8) -> String {
    format!("{n:02x}").repeat(20)
}

/// Pushes commit `sha(n)` to `branch`; returns the deployments it queued.
pub(super) fn push(conn: &mut Connection, branch: &str, n: u8) -> Vec<Deployment> {
    on_push(
        conn,
        PushEvent {
            repository: REPO.into(),
            branch: branch.into(),
            sha: sha(n),
            author: "Ada".into(),
            message: format!("commit {n}"),
            people: Default::default(),
        },
    )
    .unwrap()
    .deployments
}

pub(super) fn agent(conn: &mut Connection, labels: &[&str]) -> AgentRow {
    let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    let hash = format!("hash-{}", super::values::new_id("t"));
    let id = register_agent(conn, "builder", &labels, &hash).unwrap();
    AgentRow {
        id,
        labels,
        paused: false,
        holding_back: None,
    }
}

pub(super) fn claim_one(conn: &mut Connection, agent: &AgentRow) -> Job {
    claim(conn, agent, POLICY)
        .unwrap()
        .expect("a job is queued")
}

/// `count` more environments of `project_id` (branches `branch-<n>`), each with
/// one queued deployment.
pub(super) fn queue_in_new_environments(conn: &mut Connection, project_id: &str, count: usize) {
    for n in 0..count {
        create_environment(
            conn,
            project_id,
            CreateEnvironment {
                name: format!("env {n}"),
                branch: format!("branch-{n}"),
                auto_deploy: false,
            },
        )
        .unwrap();
        push(conn, &format!("branch-{n}"), n as u8);
    }
}
