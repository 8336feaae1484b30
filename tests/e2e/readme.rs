//! README.md's own shell blocks, run as a newcomer pastes them (issue 32): "The
//! control plane by hand" starts the server and drives it with curl, with "An
//! agent by hand" started between the two, as the README says. Three things a
//! person does differently are done here too: the server's port is a free one,
//! not 8080 (tests run side by side); `cargo build --release` is the test's own
//! build, its binaries where the README looks for them; and the agent's `run`,
//! which a person leaves in a terminal of its own, runs in the background.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

const README: &str = include_str!("../../README.md");
const SERVER: &str = env!("CARGO_BIN_EXE_kiln-server-e2e");

/// The text from the heading `heading` to the next heading of its level.
fn section<'a>(heading: &str) -> &'a str {
    let start = README.find(&format!("\n{heading}\n")).expect(heading) + 1;
    let level = heading.split(' ').next().unwrap();
    let rest = &README[start + heading.len()..];
    let end = rest.find(&format!("\n{level} ")).unwrap_or(rest.len());
    &README[start..start + heading.len() + end]
}

/// The ```sh blocks of `text`.
fn shell_blocks(text: &str) -> Vec<String> {
    text.split("```sh\n")
        .skip(1)
        .map(|block| block.split("\n```").next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn issue_32_the_readmes_control_plane_and_agent_blocks_run_as_written() {
    let Some(_docker) = docker().await else {
        return;
    };
    build_image().await;
    let by_hand = shell_blocks(section("## The control plane by hand"));
    let agent = shell_blocks(section("### An agent by hand"));
    // The server, then curl; a third shows `kiln-agent detect`, apart.
    assert!(
        by_hand.len() >= 2 && agent.len() == 1,
        "the README's blocks moved"
    );
    assert!(by_hand[0].contains("kiln-server") && by_hand[1].contains("events/push"));

    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink(SERVER, release.join("kiln-server")).unwrap();
    std::os::unix::fs::symlink(crate::agent::AGENT, release.join("kiln-agent")).unwrap();
    let tools = dir.path().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::write(tools.join("cargo"), "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(
        tools.join("cargo"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // The .env file the import reads.
    std::fs::write(
        dir.path().join(".env"),
        "STRIPE_API_KEY=sk_test_0123456789\nSHOP_NAME=Acme\n",
    )
    .unwrap();
    let _ = std::fs::remove_dir_all("/tmp/kiln-agent");

    let port = free_port();
    let paste = |block: &str| {
        block
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
            .replace("localhost:8080", &format!("localhost:{port}"))
    };
    let agent_block = paste(&agent[0]).replace(
        "--config agent.toml run",
        "--config agent.toml run > agent.log 2>&1 &",
    );
    let script = format!(
        "{server}\n\
         for _ in $(seq 100); do curl -sf localhost:{port}/healthz >/dev/null && break; sleep 0.1; done\n\
         {agent}\n\
         {drive}\n\
         echo \"DEPLOYMENT=$DEPLOYMENT\"\n",
        server = paste(&by_hand[0]),
        agent = agent_block,
        drive = paste(&by_hand[1]),
    );
    std::fs::write(dir.path().join("pasted.sh"), &script).unwrap();
    let path = format!("{}:{}", tools.display(), std::env::var("PATH").unwrap());
    // Into files, not pipes: the server the blocks start in the background
    // keeps its copies open after the shell ends.
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let run = tokio::process::Command::new("bash")
        .arg("pasted.sh")
        .current_dir(dir.path())
        .env("PATH", path)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(300), run).await;
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let agent_log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    // The server and the agent the blocks started go with the test.
    for pattern in [
        "kiln-server --data-dir ./kiln-data",
        "kiln-agent --config agent.toml run",
    ] {
        let _ = std::process::Command::new("pkill")
            .args(["-f", pattern])
            .status();
    }
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}\nagent:\n{agent_log}");
    assert!(
        matches!(status, Ok(Ok(_))),
        "the pasted blocks did not end within 5 minutes: {context}"
    );

    // The push was taken, built by the agent, and its log followed to the end:
    // the example's repository is not reachable, which the log says.
    // (curl's JSON answers end with no newline, so the echo shares their line.)
    let deployment = stdout
        .rsplit("DEPLOYMENT=")
        .next()
        .unwrap_or_default()
        .trim();
    assert!(deployment.starts_with("dpl_"), "{context}");
    assert!(
        stdout.contains("Build failed after")
            && stdout.contains("cannot fetch https://git.example/acme/shop.git"),
        "the followed system log says why the build failed: {context}"
    );
    // The doctor found what it checks.
    assert!(
        !stdout.contains("FAIL") && !stderr.contains("FAIL"),
        "{context}"
    );
    // The .env file went in as secrets, and came back out without their values.
    let exported = std::fs::read_to_string(dir.path().join("production.env")).unwrap();
    assert!(
        exported.contains("STRIPE_API_KEY=") && !exported.contains("sk_test_0123456789"),
        "{exported}"
    );
    assert!(Path::new(&dir.path().join("kiln-data")).is_dir());
}
