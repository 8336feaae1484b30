//! How a scan's findings are shown: grouped by file for a person, with what to do,
//! or as JSON for tools.

use std::fmt::Write;

use super::{Finding, ScanReport};

/// The human report: findings grouped by file, then the advice, then the totals.
pub fn human(report: &ScanReport, scanned: &str) -> String {
    let mut out = String::new();
    let mut current: Option<&str> = None;
    for finding in &report.findings {
        if current != Some(finding.path.as_str()) {
            current = Some(&finding.path);
            let _ = writeln!(out, "{}", finding.path);
        }
        let _ = writeln!(out, "  {}", describe(finding));
    }
    if !report.findings.is_empty() {
        let _ = writeln!(
            out,
            "\nEverything in {scanned} is served publicly. Remove these files or values from \
             the build output (a build script or the admin bundle copied them there), and \
             rotate every credential listed: assume it is already known. To accept a finding \
             on purpose, allowlist its fingerprint, rule or path in the project's secret_scan \
             settings."
        );
    }
    let _ = writeln!(
        out,
        "{} finding(s) in {} file(s), {} bytes scanned; {} binary file(s) skipped{}.",
        report.findings.len(),
        report.files_scanned,
        report.bytes_scanned,
        report.binary_files_skipped,
        if report.allowed > 0 {
            format!("; {} allowed by the allowlist", report.allowed)
        } else {
            String::new()
        }
    );
    out
}

/// One finding on one line: place, severity, what, the redacted prefix, fingerprint.
pub fn describe(finding: &Finding) -> String {
    let place = if finding.line == 0 {
        "file".to_owned()
    } else {
        format!("{}:{}", finding.line, finding.column)
    };
    let shown = if finding.redacted.is_empty() {
        String::new()
    } else {
        format!(" `{}`", finding.redacted)
    };
    format!(
        "{place} {} {}: {}{shown} [fingerprint {}]",
        finding.severity, finding.rule, finding.what, finding.fingerprint
    )
}

/// The report as a JSON value, for a status report's `detail`.
pub fn json_value(report: &ScanReport) -> serde_json::Value {
    serde_json::to_value(report).expect("a report always serializes")
}

/// The JSON report: `{"findings": [...], "files_scanned", "bytes_scanned", ...}`.
pub fn json(report: &ScanReport) -> String {
    serde_json::to_string_pretty(report).expect("a report always serializes")
}
