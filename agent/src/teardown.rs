//! The releases a deploy host runs for environments that are gone (a closed
//! pull request's preview, a removed environment): their containers stopped,
//! their Caddy routes removed and their images dropped. The host asks the
//! control plane about the environments it runs releases of every
//! `TEARDOWN_EVERY`, so a stopped agent catches up when it starts again.

use std::time::Duration;

use kiln_protocol::Component;

use crate::client::Client;
use crate::config::AgentConfig;
use crate::deploy::{release_repository, route_id, LABEL_ENVIRONMENT, STOP_GRACE};
use crate::executor::DockerExecutor;
use crate::runtime_logs::LABEL_DEPLOY_AGENT;

pub(crate) const TEARDOWN_EVERY: Duration = Duration::from_secs(10);

/// Stops the releases of every environment the control plane says is gone.
pub(crate) async fn tear_down_removed(
    config: &AgentConfig,
    client: &Client,
    docker: &DockerExecutor,
    agent_id: &str,
) {
    // Only the releases this agent started: an engine may run others'.
    let own = format!("{LABEL_DEPLOY_AGENT}={agent_id}");
    let environments = match docker.label_values(LABEL_ENVIRONMENT, &own).await {
        Ok(environments) => environments,
        Err(error) => {
            tracing::warn!(message = "Cannot list the releases this host runs.", %error);
            return;
        }
    };
    for asked in environments.chunks(kiln_protocol::MAX_ENVIRONMENTS_ASKED) {
        let removed = match client.removed_environments(asked.to_vec()).await {
            Ok(removed) => removed,
            Err(error) => {
                tracing::info!(message = "Cannot ask which environments are gone; asking again later.", %error);
                return;
            }
        };
        // Only what this host asked about, in the control plane's format.
        for environment_id in removed.iter().filter(|id| {
            asked.contains(id)
                && kiln_protocol::validate::id(id, kiln_protocol::validate::prefix::ENVIRONMENT)
                    .is_ok()
        }) {
            tear_down(config, docker, environment_id, agent_id).await;
        }
    }
}

/// Stops an environment's containers, then removes its routes and images.
async fn tear_down(
    config: &AgentConfig,
    docker: &DockerExecutor,
    environment_id: &str,
    agent_id: &str,
) {
    let containers: Vec<_> = docker
        .services_labelled(LABEL_ENVIRONMENT, environment_id)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, labels)| labels.get(LABEL_DEPLOY_AGENT).map(String::as_str) == Some(agent_id))
        .collect();
    for (name, _) in &containers {
        if let Err(error) = docker.remove_service(name, STOP_GRACE).await {
            tracing::warn!(message = "Could not stop a release of a removed environment.", container = %name, %error);
        }
    }
    let caddy = crate::caddy::Caddy::new(&config.caddy_admin_url);
    for component in [Component::Backend, Component::Storefront] {
        if let Err(error) = caddy
            .remove_route(&route_id(environment_id, component))
            .await
        {
            tracing::warn!(message = "Could not remove a removed environment's route.", %environment_id, %error);
        }
        for tag in docker
            .tags_of(&release_repository(environment_id, component))
            .await
            .unwrap_or_default()
        {
            let _ = docker.untag_image(&tag).await;
        }
    }
    tracing::info!(message = "Stopped the release of a removed environment (a closed pull request's preview, or an environment removed).", %environment_id, containers = containers.len());
}
