//! `kiln-agent scan` end to end on a generated public tree: every planted secret found
//! (recall 100%), no decoy or ordinary bundle flagged, exit codes and JSON as documented.

use std::collections::BTreeSet;
use std::process::Command;

use kiln_tests::support::public_tree::{self, JOB_SECRET_NAME};

use crate::agent::AGENT;

fn scan_json(dir: &std::path::Path, extra: &[&str], job_secret: &str) -> (i32, serde_json::Value) {
    let output = Command::new(AGENT)
        .arg("scan")
        .arg(dir)
        .args(["--format", "json", "--secret-env", JOB_SECRET_NAME])
        .args(extra)
        .env(JOB_SECRET_NAME, job_secret)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "scan printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap(), json)
}

fn flagged_paths(report: &serde_json::Value) -> BTreeSet<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn fixture_tree_every_planted_secret_found_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let tree = public_tree::generate(dir.path(), 24 << 20, 7);
    let (code, report) = scan_json(dir.path(), &[], &tree.job_secret);
    assert_eq!(code, 1, "findings exit 1");
    let flagged = flagged_paths(&report);
    let missed: Vec<_> = tree
        .planted
        .iter()
        .filter(|(path, _)| !flagged.contains(*path))
        .collect();
    assert!(missed.is_empty(), "planted secrets not found: {missed:?}");
    let extra: Vec<_> = flagged
        .iter()
        .filter(|path| !tree.planted.contains_key(*path))
        .collect();
    assert!(
        extra.is_empty(),
        "flagged without a planted secret (false positives): {extra:?}\n{}",
        serde_json::to_string_pretty(&report).unwrap()
    );
    // No finding prints the secret it found.
    let text = report.to_string();
    assert!(!text.contains(&tree.job_secret));
    for finding in report["findings"].as_array().unwrap() {
        let redacted = finding["redacted"].as_str().unwrap();
        assert!(redacted.chars().count() <= 40, "{finding}");
        assert!(finding["line"].as_u64().is_some() && finding["column"].as_u64().is_some());
    }
    assert!(report["bytes_scanned"].as_u64().unwrap() >= 20 << 20);
    assert!(report["files_scanned"].as_u64().unwrap() > tree.planted.len() as u64);
}

#[test]
fn clean_tree_exits_0_and_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<html>pk_live_abc</html>").unwrap();
    let (code, report) = scan_json(dir.path(), &[], "not-in-the-tree-at-all");
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["findings"], serde_json::json!([]));
    assert_eq!(report["files_scanned"], 1);

    let missing = dir.path().join("nope");
    let (code, report) = scan_json(&missing, &[], "x");
    assert_eq!(code, 2);
    let message = report["error"]["message"].as_str().unwrap();
    assert!(message.contains("nope"), "{message}");

    let config = dir.path().join("scan.toml");
    std::fs::write(&config, "allow_rules = [\"no-such-rule\"]\n").unwrap();
    let (code, report) = scan_json(dir.path(), &["--config", config.to_str().unwrap()], "x");
    assert_eq!(code, 2);
    assert!(report["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no-such-rule"));

    std::fs::write(&config, "allow_path = [\"docs/**\"]\n").unwrap();
    let (code, report) = scan_json(dir.path(), &["--config", config.to_str().unwrap()], "x");
    assert_eq!(code, 2);
    let message = report["error"]["message"].as_str().unwrap();
    assert!(message.contains("unknown key \"allow_path\""), "{message}");
}

#[test]
fn allowlists_and_warn_mode_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("docs")).unwrap();
    std::fs::write(
        dir.path().join("app.js"),
        "stripe(\"sk_live_51NzQ3bKc8Jv2LmXpT4rWq9YdE6uA0sHg\")",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("docs/setup.md"),
        "export GITHUB_TOKEN=ghp_Q8mZ2kP4vX7nR1tY6wB3cL9dF5hJ0sA2gE4u",
    )
    .unwrap();
    let (_, report) = scan_json(dir.path(), &[], "x");
    let fingerprint = report["findings"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(report["findings"][0]["path"], "app.js");
    assert_eq!(report["findings"].as_array().unwrap().len(), 2);

    let config = dir.path().join("scan.toml");
    std::fs::write(
        &config,
        format!("allow_paths = [\"docs/**\"]\nallow_fingerprints = [\"{fingerprint}\"]\n"),
    )
    .unwrap();
    let (code, report) = scan_json(dir.path(), &["--config", config.to_str().unwrap()], "x");
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["allowed"], 2);

    std::fs::write(&config, "mode = \"warn\"\n").unwrap();
    let (code, report) = scan_json(dir.path(), &["--config", config.to_str().unwrap()], "x");
    assert_eq!(code, 0, "warn mode reports but does not fail");
    assert_eq!(report["findings"].as_array().unwrap().len(), 2);
}
