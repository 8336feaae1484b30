//! Deploys run by agents: an environment's deploy settings, the roles an agent
//! takes jobs for, and the deploy job a deploy host claims.

use serde::{Deserialize, Serialize};

/// What an agent takes jobs for (`roles = ["build"]` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Build,
    Deploy,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Build => "build",
            Role::Deploy => "deploy",
        }
    }

    pub fn parse(text: &str) -> Result<Role, String> {
        match text.trim() {
            "build" => Ok(Role::Build),
            "deploy" => Ok(Role::Deploy),
            other => Err(format!(
                "unknown role {other:?}; an agent's roles are build and deploy"
            )),
        }
    }
}

/// The release image of a component, one artifact of its build.
pub const BACKEND_RELEASE: &str = "backend-release.tar";
pub const STOREFRONT_RELEASE: &str = "storefront-release.tar";

/// `"deploy"` of `PATCH /api/v1/environments/{id}`: the environment's deploys
/// go to an agent with the deploy role and these labels, which runs the release
/// image and routes the hostnames to it through Caddy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySettings {
    #[serde(default)]
    pub agent_labels: Vec<String>,
    #[serde(default)]
    pub backend_hostname: Option<String>,
    #[serde(default)]
    pub storefront_hostname: Option<String>,
    /// Also run a worker from the same image (`MEDUSA_WORKER_MODE=worker`).
    #[serde(default)]
    pub worker: bool,
    #[serde(default = "default_health_path")]
    pub health_path: String,
    #[serde(default = "default_health_timeout")]
    pub health_timeout_seconds: u64,
    /// Release images a deploy host keeps per environment (the live one among
    /// them), for rollbacks without a download.
    #[serde(default = "default_releases_kept")]
    pub releases_kept: u32,
}

fn default_releases_kept() -> u32 {
    5
}

/// The most release images a deploy host keeps per environment.
pub const MAX_RELEASES_KEPT: u32 = 50;

fn default_health_path() -> String {
    "/health".to_owned()
}

fn default_health_timeout() -> u64 {
    120
}

/// The longest health check a deploy may wait for.
pub const MAX_HEALTH_TIMEOUT_SECONDS: u64 = 3600;

impl DeploySettings {
    /// Every field well formed, or what is wrong with the first that is not.
    /// The control plane checks this on input; the agent again on every job,
    /// since the values end up in Caddy's config and in a URL.
    pub fn check(&self) -> Result<(), String> {
        // As an agent's own labels are bounded (`validate::MAX_LABELS`, `MAX_NAME`).
        if self.agent_labels.len() > 64 {
            return Err("deploy.agent_labels: at most 64 labels".to_owned());
        }
        for label in &self.agent_labels {
            if label.is_empty() || label.len() > 100 || label.chars().any(char::is_control) {
                return Err(format!(
                    "deploy.agent_labels: {label:?} must be 1 to 100 characters, none of them control characters"
                ));
            }
        }
        for (field, hostname) in [
            ("backend_hostname", &self.backend_hostname),
            ("storefront_hostname", &self.storefront_hostname),
        ] {
            if let Some(hostname) = hostname {
                hostname_check(hostname).map_err(|why| format!("deploy.{field}: {why}"))?;
            }
        }
        if self.backend_hostname.is_none() {
            return Err("deploy.backend_hostname is required: the hostname Caddy routes to the Medusa server, such as api.shop.example".to_owned());
        }
        health_path_check(&self.health_path).map_err(|why| format!("deploy.health_path: {why}"))?;
        if !(1..=MAX_HEALTH_TIMEOUT_SECONDS).contains(&self.health_timeout_seconds) {
            return Err(format!(
                "deploy.health_timeout_seconds must be 1 to {MAX_HEALTH_TIMEOUT_SECONDS}, not {}",
                self.health_timeout_seconds
            ));
        }
        if !(1..=MAX_RELEASES_KEPT).contains(&self.releases_kept) {
            return Err(format!(
                "deploy.releases_kept must be 1 to {MAX_RELEASES_KEPT}, not {}",
                self.releases_kept
            ));
        }
        Ok(())
    }

    /// A preview's settings from its parent's: each hostname gets the pull
    /// request's number as a first label (`api.shop.example` → `pr-12.api.shop.example`).
    pub fn for_preview(&self, pull_request: u64) -> DeploySettings {
        let derive = |hostname: &Option<String>| {
            hostname
                .as_ref()
                .map(|hostname| format!("pr-{pull_request}.{hostname}"))
        };
        DeploySettings {
            backend_hostname: derive(&self.backend_hostname),
            storefront_hostname: derive(&self.storefront_hostname),
            ..self.clone()
        }
    }
}

/// A DNS name of letters, digits and hyphens, as Caddy's host matcher takes it:
/// nothing that could close a JSON string or match more than the one host.
pub fn hostname_check(hostname: &str) -> Result<(), String> {
    let fix = "use a DNS name such as shop.example.com: labels of a-z, 0-9 and -, joined by dots";
    if hostname.is_empty() || hostname.len() > 253 {
        return Err(format!("{hostname:?} is not a hostname; {fix}"));
    }
    for label in hostname.split('.') {
        let well_formed = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !well_formed {
            return Err(format!("{hostname:?} is not a hostname; {fix}"));
        }
    }
    Ok(())
}

/// A registry as `--registry` takes it (`127.0.0.1:5000`,
/// `registry.example.com/kiln`, an `http://` or `https://` prefix allowed):
/// the host and path an image reference starts with.
pub fn registry_prefix(registry: &str) -> Result<String, String> {
    let bare = registry
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let well_formed = !bare.is_empty()
        && bare.len() <= 200
        && bare
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_:/".contains(&b))
        && !bare.contains("//");
    if well_formed {
        Ok(bare.to_owned())
    } else {
        Err(format!(
            "{registry:?} is not a registry; give host[:port][/path], such as 127.0.0.1:5000 or registry.example.com/kiln"
        ))
    }
}

/// `POST /api/v1/agent/environments/removed`: which of the environments a
/// deploy host runs releases of are gone (a closed pull request's preview, a
/// removed environment), so their containers, routes and images can go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovedEnvironments {
    pub environment_ids: Vec<String>,
}

/// The most environments one `RemovedEnvironments` asks about.
pub const MAX_ENVIRONMENTS_ASKED: usize = 256;

/// The reference a deployment's backend release image has in `registry`.
pub fn release_reference(registry: &str, project_id: &str, deployment_id: &str) -> String {
    format!("{registry}/kiln-release/{project_id}:{deployment_id}")
}

/// The reference of the storefront's release image beside the backend's:
/// the same repository, its tag suffixed.
pub fn storefront_reference(backend_reference: &str) -> String {
    format!("{backend_reference}-storefront")
}

/// A reference as the agent accepts one from a job: lowercase registry,
/// repository and tag characters only.
pub fn reference_check(reference: &str) -> Result<(), String> {
    let well_formed = reference.len() <= 400
        && reference.contains(':')
        && reference
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-:/".contains(&b))
        && !reference.starts_with('-');
    if well_formed {
        Ok(())
    } else {
        Err(format!("{reference:?} is not an image reference"))
    }
}

/// An absolute path of URL-safe characters, with no query and no way up.
pub fn health_path_check(path: &str) -> Result<(), String> {
    let fix = "use an absolute path such as /health";
    let safe = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b));
    if !path.starts_with('/') || path.len() > 256 || !safe || path.contains("..") {
        return Err(format!("{path:?} is not a health path; {fix}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DeploySettings {
        serde_json::from_str(r#"{"backend_hostname": "api.shop.example"}"#).unwrap()
    }

    #[test]
    fn defaults_and_a_well_formed_setting_pass() {
        let settings = settings();
        assert_eq!(settings.health_path, "/health");
        assert_eq!(settings.health_timeout_seconds, 120);
        assert_eq!(settings.releases_kept, 5);
        settings.check().unwrap();
        for kept in [0, MAX_RELEASES_KEPT + 1] {
            let refused = DeploySettings {
                releases_kept: kept,
                ..settings.clone()
            }
            .check()
            .unwrap_err();
            assert!(refused.contains("deploy.releases_kept"), "{refused}");
        }
    }

    #[test]
    fn hostnames_that_would_inject_caddy_config_are_refused() {
        for bad in [
            "api.shop.example\"},{\"handler\":\"file_server",
            "*.shop.example",
            "API.shop.example",
            "shop..example",
            "-shop.example",
            "shop.example:80",
            "",
        ] {
            let mut settings = settings();
            settings.backend_hostname = Some(bad.to_owned());
            let error = settings.check().unwrap_err();
            assert!(error.contains("deploy.backend_hostname"), "{bad}: {error}");
        }
    }

    #[test]
    fn health_paths_must_be_plain_absolute_paths() {
        for bad in ["health", "/health?x=1", "/../admin", "/a b", "/h\"}"] {
            let mut settings = settings();
            settings.health_path = bad.to_owned();
            assert!(
                settings.check().unwrap_err().contains("health_path"),
                "{bad}"
            );
        }
        let mut settings = settings();
        settings.health_timeout_seconds = 0;
        assert!(settings.check().is_err());
    }

    #[test]
    fn registries_and_references_are_checked() {
        assert_eq!(
            registry_prefix("http://127.0.0.1:5000/").unwrap(),
            "127.0.0.1:5000"
        );
        assert_eq!(
            registry_prefix("registry.example.com/kiln").unwrap(),
            "registry.example.com/kiln"
        );
        for bad in [
            "",
            "Registry.example.com",
            "host:5000/a b",
            "a//b",
            "-x; rm -rf /",
        ] {
            assert!(registry_prefix(bad).is_err(), "{bad}");
        }
        let reference = release_reference("127.0.0.1:5000", "prj_1", "dpl_2");
        assert_eq!(reference, "127.0.0.1:5000/kiln-release/prj_1:dpl_2");
        reference_check(&reference).unwrap();
        for bad in ["--help", "no-tag", "a b:c", "X:y"] {
            assert!(reference_check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_preview_gets_its_own_hostnames() {
        let preview = settings().for_preview(12);
        assert_eq!(
            preview.backend_hostname.as_deref(),
            Some("pr-12.api.shop.example")
        );
        preview.check().unwrap();
    }
}
