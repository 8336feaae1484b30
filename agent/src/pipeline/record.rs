//! What a build tells the control plane for its provenance, noted as it goes:
//! each component's image, steps, framework and package manager, every cache
//! entry and reused output it restored, and its release images' ids. The
//! control plane signs it, checking the restored entries against its own
//! records of what was published.

use std::sync::Mutex;

use kiln_protocol::provenance::{BuildRecord, ComponentRecord, RestoredEntry, StepRecord};
use kiln_protocol::Component;

use crate::cache::Kind;

#[derive(Debug, Default)]
pub(super) struct Recorder(Mutex<BuildRecord>);

impl Recorder {
    fn with_component(&self, component: Component, change: impl FnOnce(&mut ComponentRecord)) {
        let mut record = crate::lock(&self.0);
        let name = component.as_str();
        let at = match record
            .components
            .iter()
            .position(|existing| existing.component == name)
        {
            Some(at) => at,
            None => {
                record.components.push(ComponentRecord {
                    component: name.to_owned(),
                    ..Default::default()
                });
                // Backend first, whatever finished first.
                record
                    .components
                    .sort_by_key(|existing| existing.component != "backend");
                record
                    .components
                    .iter()
                    .position(|existing| existing.component == name)
                    .expect("just added")
            }
        };
        change(&mut record.components[at]);
    }

    pub fn image(&self, component: Component, image: &str, image_id: &str) {
        self.with_component(component, |record| {
            record.image = image.to_owned();
            record.image_id = image_id.to_owned();
        });
    }

    pub fn step(&self, component: Component, kind: &str, command: &str) {
        self.with_component(component, |record| {
            record.steps.push(StepRecord {
                kind: kind.to_owned(),
                command: command.to_owned(),
            })
        });
    }

    pub fn described(
        &self,
        component: Component,
        framework: Option<String>,
        package_manager: Option<String>,
    ) {
        self.with_component(component, |record| {
            record.framework = framework.or(record.framework.take());
            record.package_manager = package_manager.or(record.package_manager.take());
        });
    }

    /// An entry the build restored: `key` of `kind`, found in `scope`,
    /// published by job `published_by_job`; an output also says the
    /// component was reused, not built.
    pub fn restored(
        &self,
        component: Component,
        kind: Kind,
        key: &str,
        scope: &str,
        published_by_job: &str,
    ) {
        crate::lock(&self.0).restored.push(RestoredEntry {
            component: component.as_str().to_owned(),
            kind: kind.name().to_owned(),
            key: key.to_owned(),
            scope: scope.to_owned(),
            published_by_job: published_by_job.to_owned(),
        });
        if kind == Kind::Output {
            self.with_component(component, |record| {
                record.reused_from = Some(published_by_job.to_owned())
            });
        }
    }

    pub fn release_image(&self, artifact: &str, image_id: &str) {
        crate::lock(&self.0)
            .release_image_ids
            .insert(artifact.to_owned(), image_id.to_owned());
    }

    pub fn finish(&self) -> BuildRecord {
        let mut record = crate::lock(&self.0).clone();
        record.kiln_version = env!("CARGO_PKG_VERSION").to_owned();
        record
    }
}
