//! Secret-scan benchmark, one run, side by side with the scanners people use:
//! `kiln-agent scan` against secretlint (recommended preset), detect-secrets and
//! ripsecrets on the same generated public tree (bundles with long minified lines,
//! source maps, JSON, CSS with data URIs, binaries; planted secrets and decoys).
//!
//! Reported per tool: wall time, MB/s, MB per CPU-second (per core), recall on the
//! planted secrets (format secrets and the job's own secret apart) and files flagged
//! without a planted secret.
//!
//! `cargo bench -p kiln-tests --bench scan`. Knobs: `KILN_SCAN_BENCH_MB` (tree size,
//! default 512), `KILN_SCAN_BENCH_DIR` (keep and reuse the tree there),
//! `KILN_BENCH_SECRETLINT_DIR` (an npm project with secretlint and its preset,
//! default /work/peers/secretlint), `KILN_BENCH_RIPSECRETS` (the binary, default
//! `ripsecrets` on PATH), `KILN_SCAN_BENCH_PEER_TIMEOUT` (seconds, default 1800).
//! A peer that is not installed is reported as such; the run goes on.

// Tests: a fixture that cannot be set up should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::support::public_tree::{self, CONTENT_KINDS, JOB_SECRET_KINDS, JOB_SECRET_NAME};

const AGENT: &str = env!("CARGO_BIN_EXE_kiln-agent-e2e");

struct Run {
    tool: String,
    wall: Duration,
    cpu: Duration,
    flagged: Option<BTreeSet<String>>,
    note: String,
}

fn children_cpu() -> Duration {
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let user = usage.user_time();
    let system = usage.system_time();
    Duration::from_micros((user.tv_sec() * 1_000_000 + user.tv_usec()) as u64)
        + Duration::from_micros((system.tv_sec() * 1_000_000 + system.tv_usec()) as u64)
}

/// Runs a command to completion (killing it after `timeout`); stdout is written to a
/// file, since some peers print hundreds of MB for minified bundles.
fn timed(tool: &str, mut command: Command, timeout: Duration) -> (Run, Option<String>) {
    let out_path =
        std::env::temp_dir().join(format!("kiln-scan-bench-{}.out", tool.replace(' ', "-")));
    let out = std::fs::File::create(&out_path).unwrap();
    let cpu_before = children_cpu();
    let started = Instant::now();
    // Its own process group, so that a timeout also stops a peer's worker processes.
    use std::os::unix::process::CommandExt;
    let child = command
        .stdout(out)
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            return (
                Run {
                    tool: tool.to_owned(),
                    wall: Duration::ZERO,
                    cpu: Duration::ZERO,
                    flagged: None,
                    note: format!("not run: {error}"),
                },
                None,
            )
        }
    };
    let mut note = String::new();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            if !status.success() {
                note = format!("exit {}", status.code().unwrap_or(-1));
            }
            break;
        }
        if started.elapsed() > timeout {
            let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            note = format!("killed after {}s", timeout.as_secs());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = started.elapsed();
    let cpu = children_cpu() - cpu_before;
    let stdout = std::fs::read_to_string(&out_path).ok();
    let _ = std::fs::remove_file(&out_path);
    (
        Run {
            tool: tool.to_owned(),
            wall,
            cpu,
            flagged: None,
            note,
        },
        stdout,
    )
}

fn relative(root: &Path, path: &str) -> String {
    let path = path.strip_prefix("./").unwrap_or(path);
    Path::new(path)
        .strip_prefix(root)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.to_owned())
}

fn run_kiln(root: &Path, job_secret: &str, threads: Option<usize>, timeout: Duration) -> Run {
    let mut command = Command::new(AGENT);
    command
        .arg("scan")
        .arg(root)
        .args(["--format", "json", "--secret-env", JOB_SECRET_NAME])
        .env(JOB_SECRET_NAME, job_secret);
    let name = match threads {
        Some(n) => {
            command.env("RAYON_NUM_THREADS", n.to_string());
            format!("kiln ({n} thread)")
        }
        None => "kiln".to_owned(),
    };
    let (mut run, stdout) = timed(&name, command, timeout);
    if let Some(json) = stdout.and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()) {
        run.flagged = Some(
            json["findings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["path"].as_str().unwrap().to_owned())
                .collect(),
        );
        run.note.clear();
    }
    run
}

fn run_secretlint(root: &Path, timeout: Duration) -> Run {
    let project = std::env::var_os("KILN_BENCH_SECRETLINT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/peers/secretlint"));
    let bin = project.join("node_modules/secretlint/bin/secretlint.js");
    let rc = std::env::temp_dir().join("kiln-bench-secretlintrc.json");
    std::fs::write(
        &rc,
        r#"{"rules":[{"id":"@secretlint/secretlint-rule-preset-recommend"}]}"#,
    )
    .unwrap();
    let mut command = Command::new("node");
    command
        .arg("--max-old-space-size=8192")
        .arg(&bin)
        .args(["**/*", "--format", "json", "--secretlintrc"])
        .arg(&rc)
        .current_dir(root)
        .env("NODE_PATH", project.join("node_modules"));
    if !bin.exists() {
        return Run {
            tool: "secretlint".into(),
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            flagged: None,
            note: format!("not installed ({} missing)", bin.display()),
        };
    }
    let (mut run, stdout) = timed("secretlint", command, timeout);
    if let Some(json) = stdout.and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()) {
        run.flagged = Some(
            json.as_array()
                .unwrap()
                .iter()
                .filter(|file| !file["messages"].as_array().unwrap().is_empty())
                .map(|file| relative(root, file["filePath"].as_str().unwrap()))
                .collect(),
        );
        run.note.clear();
    }
    run
}

fn run_detect_secrets(root: &Path, timeout: Duration) -> Run {
    let mut command = Command::new("detect-secrets");
    command.args(["scan", "--all-files", "."]).current_dir(root);
    let (mut run, stdout) = timed("detect-secrets", command, timeout);
    if let Some(json) = stdout.and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()) {
        run.flagged = Some(
            json["results"]
                .as_object()
                .unwrap()
                .keys()
                .map(|path| relative(root, path))
                .collect(),
        );
        run.note.clear();
    }
    run
}

fn run_ripsecrets(root: &Path, timeout: Duration) -> Run {
    let bin = std::env::var("KILN_BENCH_RIPSECRETS").unwrap_or_else(|_| {
        let local = "/work/peers/cargo/bin/ripsecrets";
        if Path::new(local).exists() {
            local.into()
        } else {
            "ripsecrets".into()
        }
    });
    let mut command = Command::new(bin);
    command.args(["--only-matching", "."]).current_dir(root);
    let (mut run, stdout) = timed("ripsecrets", command, timeout);
    if let Some(text) = stdout {
        // `path:line:match`; exit 1 means "found something".
        run.flagged = Some(
            text.lines()
                .filter_map(|line| line.split(':').next())
                .filter(|path| !path.is_empty())
                .map(|path| relative(root, path))
                .collect(),
        );
        if run.note == "exit 1" {
            run.note.clear();
        }
    }
    run
}

fn manifest_path(root: &Path) -> PathBuf {
    root.with_extension("manifest.json")
}

fn main() {
    let mb: u64 = std::env::var("KILN_SCAN_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let timeout = Duration::from_secs(
        std::env::var("KILN_SCAN_BENCH_PEER_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1800),
    );
    let _temp;
    let root = match std::env::var_os("KILN_SCAN_BENCH_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            _temp = tempfile::tempdir().unwrap();
            _temp.path().join("public")
        }
    };
    let manifest: serde_json::Value = match std::fs::read(manifest_path(&root)) {
        Ok(bytes) => {
            println!("reusing the tree in {}", root.display());
            serde_json::from_slice(&bytes).unwrap()
        }
        Err(_) => {
            let started = Instant::now();
            let tree = public_tree::generate(&root, mb << 20, 42);
            println!(
                "generated {} MB in {} in {:.1}s",
                tree.bytes >> 20,
                root.display(),
                started.elapsed().as_secs_f64()
            );
            let manifest = serde_json::json!({
                "planted": tree.planted, "job_secret": tree.job_secret, "bytes": tree.bytes,
            });
            std::fs::write(manifest_path(&root), manifest.to_string()).unwrap();
            manifest
        }
    };
    let planted: BTreeMap<String, String> =
        serde_json::from_value(manifest["planted"].clone()).unwrap();
    let job_secret = manifest["job_secret"].as_str().unwrap();
    let bytes = manifest["bytes"].as_u64().unwrap();
    let files = walk_count(&root);
    println!(
        "tree: {} files, {:.1} MB, {} planted secrets",
        files,
        bytes as f64 / 1e6,
        planted.len()
    );

    // Warm the page cache so every tool reads from memory alike.
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find '{}' -type f -exec cat {{}} + > /dev/null",
            root.display()
        ))
        .status();

    let runs = vec![
        run_kiln(&root, job_secret, None, timeout),
        run_kiln(&root, job_secret, Some(1), timeout),
        run_ripsecrets(&root, timeout),
        run_secretlint(&root, timeout),
        run_detect_secrets(&root, timeout),
    ];

    let job_kinds: BTreeSet<&str> = JOB_SECRET_KINDS.iter().copied().collect();
    let format_planted: Vec<&String> = planted
        .iter()
        .filter(|(_, kind)| !job_kinds.contains(kind.as_str()))
        .map(|(path, _)| path)
        .collect();
    let job_planted: Vec<&String> = planted
        .iter()
        .filter(|(_, kind)| job_kinds.contains(kind.as_str()))
        .map(|(path, _)| path)
        .collect();
    println!(
        "\n{:<18} {:>9} {:>9} {:>12} {:>15} {:>13} {:>9}  note",
        "tool", "wall s", "MB/s", "MB/CPU-s", "recall format", "recall job", "false+"
    );
    let mut fastest_peer: Option<(f64, String)> = None;
    let mut kiln_rate = 0.0;
    let mut kiln_per_core = 0.0;
    for run in &runs {
        let rate = bytes as f64 / 1e6 / run.wall.as_secs_f64().max(1e-9);
        let per_core = bytes as f64 / 1e6 / run.cpu.as_secs_f64().max(1e-9);
        let (recall_format, recall_job, false_positive) = match &run.flagged {
            Some(flagged) => {
                let found = format_planted
                    .iter()
                    .filter(|p| flagged.contains(**p))
                    .count();
                let found_job = job_planted.iter().filter(|p| flagged.contains(**p)).count();
                let extra = flagged.iter().filter(|p| !planted.contains_key(*p)).count();
                (
                    format!(
                        "{found}/{} {:>4.0}%",
                        format_planted.len(),
                        100.0 * found as f64 / format_planted.len() as f64
                    ),
                    format!("{found_job}/{}", job_planted.len()),
                    extra.to_string(),
                )
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<18} {:>9.1} {:>9.1} {:>12.1} {:>15} {:>13} {:>9}  {}",
            run.tool,
            run.wall.as_secs_f64(),
            rate,
            per_core,
            recall_format,
            recall_job,
            false_positive,
            run.note
        );
        if run.tool == "kiln" {
            kiln_rate = rate;
        } else if run.tool.starts_with("kiln (") {
            kiln_per_core = per_core;
        } else if run.flagged.is_some() && fastest_peer.as_ref().is_none_or(|(r, _)| rate > *r) {
            fastest_peer = Some((rate, run.tool.clone()));
        }
        if let Some(flagged) = &run.flagged {
            let missed: Vec<_> = planted
                .iter()
                .filter(|(path, _)| !flagged.contains(*path))
                .map(|(_, kind)| kind.as_str())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if !missed.is_empty() {
                println!("    missed kinds: {}", missed.join(", "));
            }
            let extra: Vec<_> = flagged
                .iter()
                .filter(|p| !planted.contains_key(*p))
                .take(3)
                .collect();
            if !extra.is_empty() {
                println!("    e.g. flagged without a planted secret: {extra:?}");
            }
        }
    }
    println!("\nkiln single-thread: {kiln_per_core:.0} MB per CPU-second (target >= 300)");
    if let Some((rate, tool)) = fastest_peer {
        println!(
            "kiln vs fastest peer ({tool}): {:.1}x (target >= 10x)",
            kiln_rate / rate
        );
    }
    println!(
        "planted kinds: {} format kinds + file kinds, {} job-secret forms",
        CONTENT_KINDS.len(),
        JOB_SECRET_KINDS.len()
    );
}

fn walk_count(root: &Path) -> usize {
    let mut count = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let file_type = entry.file_type().unwrap();
            if file_type.is_dir() {
                stack.push(entry.path());
            } else {
                count += 1;
            }
        }
    }
    count
}
