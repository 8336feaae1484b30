//! The secret scan of `.medusa/server/public` inside a build: the folder Medusa
//! serves to the world. Findings go to the system log; they fail the build unless
//! the project's `secret_scan.mode` is `warn`. The scan itself is `crate::scan`.

use std::path::Path;
use std::time::Instant;

use kiln_protocol::{Component, SecretScanMode};

use super::workspace::{output_dir, OutputError};
use super::{fail, seconds, Build, BuildFailure, Stop};
use crate::scan::{report, NamedSecret, ScanPolicy, Scanner};

/// Scans `public` (relative to the checkout).
pub(super) async fn scan_public(build: &Build<'_>, public: &Path) -> Result<(), Stop> {
    let system = &build.system;
    let public = match output_dir(build.workspace, public) {
        Ok(public) => public,
        Err(OutputError::Missing { .. }) => {
            system.line("No .medusa/server/public in the build output; nothing public to scan.");
            return Ok(());
        }
        Err(error) => {
            return Err(fail(
                Component::Backend,
                format!("cannot scan .medusa/server/public: {error}"),
            ))
        }
    };
    let secrets: Vec<NamedSecret> = build
        .request
        .env
        .iter()
        .filter(|var| var.secret)
        .map(|var| NamedSecret {
            name: var.name.clone(),
            value: var.value.clone(),
        })
        .collect();
    let policy: ScanPolicy = build.request.secret_scan.clone();
    let mode = policy.mode;
    let started = Instant::now();
    let found = tokio::task::spawn_blocking(move || {
        Scanner::new(&secrets, &policy).and_then(|scanner| scanner.scan_dir(&public))
    })
    .await
    .expect("scan task")
    .map_err(|error| {
        fail(
            Component::Backend,
            format!("the secret scan of .medusa/server/public could not run: {error}"),
        )
    })?;
    system.line(format!(
        "Scanned .medusa/server/public for secrets: {} files, {} bytes, {} binary skipped, {} allowed, {} finding(s) in {}.",
        found.files_scanned,
        found.bytes_scanned,
        found.binary_files_skipped,
        found.allowed,
        found.findings.len(),
        seconds(started)
    ));
    let Some(first) = found.findings.first() else {
        return Ok(());
    };
    for finding in &found.findings {
        system.line(format!("  {}: {}", finding.path, report::describe(finding)));
    }
    system.line(
        "Everything in .medusa/server/public is served publicly: remove these from the build \
         output and rotate each credential; to accept one on purpose, allowlist its \
         fingerprint in the project's secret_scan settings.",
    );
    if mode == SecretScanMode::Warn {
        system.line("Warning: the project's secret_scan mode is `warn`, so the build goes on.");
        return Ok(());
    }
    Err(Stop::Failed(BuildFailure {
        component: Component::Backend,
        reason: format!(
            "secrets found in .medusa/server/public ({} finding(s), e.g. {} in {})",
            found.findings.len(),
            first.rule,
            first.path
        ),
        detail: Some(serde_json::json!({ "secret_scan": report::json_value(&found) })),
    }))
}
