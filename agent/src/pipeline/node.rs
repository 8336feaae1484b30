//! The Node each component builds with, chosen before anything installs: the
//! agent's `build_image` when the component asks for no version, else the first
//! of `build_image` and the `node_images` (by major, oldest first) whose Node
//! satisfies what it asks (`detect::NodeRequirement`). Node 20 stays the default,
//! as on Medusa Cloud; 22 or 24 where the repository asks.

use std::path::Path;

use kiln_protocol::Component;
use node_semver::Version;

use super::steps::{PlannedStep, StepKind};
use super::{display_dir, fail, Build, Stop};
use crate::config::Network;
use crate::detect::NodeRequirement;
use crate::executor::{ExecError, StepOutcome};

/// The image a component builds in.
#[derive(Debug, Clone)]
pub(super) struct NodeChoice {
    pub image: String,
    /// `sha256:…`: the component's cache keys change with it.
    pub image_id: String,
    /// Its Node version (`22.23.5`), when known.
    pub version: Option<String>,
}

/// `Backend` or `Storefront`, to begin a line of the system log.
pub(super) fn title(component: Component) -> &'static str {
    match component {
        Component::Backend => "Backend",
        Component::Storefront => "Storefront",
    }
}

/// The even (long-term support) major a requirement allows first, for the
/// command that assembles an image of it.
fn major_to_add(wanted: &NodeRequirement) -> u64 {
    (18..=40)
        .step_by(2)
        .find(|major| wanted.allows_major(*major))
        .unwrap_or(22)
}

impl Build<'_> {
    /// Chooses and says the image `component` (in `dir`) builds in; a
    /// requirement no image of this agent satisfies fails it, naming the
    /// requirement, where it is written, and the images there are.
    pub(super) async fn choose_node(
        &self,
        component: Component,
        dir: &Path,
        wanted: Option<&NodeRequirement>,
    ) -> Result<NodeChoice, Stop> {
        let config = &self.pipeline.config;
        let default = &config.build_image;
        let configured_major = |image: &str| {
            config
                .node_images
                .0
                .iter()
                .find(|(_, configured)| configured.as_str() == image)
                .map(|(major, _)| *major)
        };
        let Some(wanted) = wanted else {
            let facts = self.inspect(component, default).await?;
            let node = match (&facts.node_version, configured_major(default)) {
                (Some(version), _) => format!("Node {version}"),
                (None, Some(major)) => format!("Node {major}"),
                (None, None) => "the Node".to_owned(),
            };
            self.system.line(format!(
                "{}: builds with {node} of {default}, the default image: nothing in {} asks for a Node version (.nvmrc, .node-version, volta.node, engines.node).",
                title(component),
                display_dir(dir)
            ));
            return Ok(NodeChoice {
                image: default.clone(),
                image_id: facts.id,
                version: facts.node_version,
            });
        };
        let mut candidates = vec![default.clone()];
        candidates.extend(
            config
                .node_images
                .0
                .values()
                .filter(|image| *image != default)
                .cloned(),
        );
        let mut seen = Vec::new();
        for image in candidates {
            if let Some(major) = configured_major(&image).filter(|m| !wanted.allows_major(*m)) {
                seen.push(format!("{image} (Node {major})"));
                continue;
            }
            let facts = match self.pipeline.executor.inspect_image(&image).await {
                Ok(facts) => facts,
                Err(ExecError::ImageMissing { .. }) => {
                    seen.push(format!("{image} (not on this host)"));
                    continue;
                }
                Err(error) => return Err(fail(component, error.to_string())),
            };
            let version = match facts.node_version.as_deref().map(str::parse::<Version>) {
                Some(Ok(version)) => version,
                _ => self.node_version_in(component, dir, &image).await?,
            };
            if wanted.satisfied_by(&version) {
                self.system.line(format!(
                    "{}: builds with Node {version} of {image}: {wanted} asks for it.",
                    title(component)
                ));
                return Ok(NodeChoice {
                    image,
                    image_id: facts.id,
                    version: Some(version.to_string()),
                });
            }
            seen.push(format!("{image} (Node {version})"));
        }
        let major = major_to_add(wanted);
        Err(fail(
            component,
            format!(
                "node_version_unavailable: the {} asks for Node {wanted}, and no build image of this agent has it: {}; add an image of that Node to node_images (`sandbox-images/build-local.sh --node {major}` assembles kiln/node:{major}), or change {}",
                component.as_str(),
                seen.join(", "),
                wanted.source
            ),
        ))
    }

    async fn inspect(
        &self,
        component: Component,
        image: &str,
    ) -> Result<crate::executor::ImageFacts, Stop> {
        self.pipeline
            .executor
            .inspect_image(image)
            .await
            .map_err(|error| fail(component, error.to_string()))
    }

    /// `node --version` in `image`, run like any step (no network), for an
    /// image that does not say its Node.
    async fn node_version_in(
        &self,
        component: Component,
        dir: &Path,
        image: &str,
    ) -> Result<Version, Stop> {
        let mut step = self.step(
            &PlannedStep::new(
                StepKind::NodeVersion,
                vec!["node".to_owned(), "--version".to_owned()],
                dir.to_owned(),
                Network::None,
            ),
            component,
        );
        step.image = image.to_owned();
        let captured = self
            .pipeline
            .executor
            .capture(step, self.cancel.clone())
            .await;
        let printed = match captured {
            Ok((StepOutcome::Exited(0), output)) => String::from_utf8_lossy(&output).into_owned(),
            Ok((StepOutcome::Canceled, _)) => return Err(Stop::Canceled),
            Ok((outcome, output)) => {
                return Err(fail(
                    component,
                    format!(
                        "`node --version` failed in the build image {image} ({outcome:?}): {}; is node on its PATH?",
                        String::from_utf8_lossy(&output).trim()
                    ),
                ))
            }
            Err(error) => return Err(fail(component, error.to_string())),
        };
        let text = printed.trim().trim_start_matches('v');
        text.parse().map_err(|_| {
            fail(
                component,
                format!(
                    "the build image {image} printed {:?} for `node --version`, which is not a version",
                    printed.trim()
                ),
            )
        })
    }
}
