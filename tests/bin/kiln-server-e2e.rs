//! The real `kiln-server` command line, built inside the test package so fault
//! tests can run (and SIGKILL) it as a process: `CARGO_BIN_EXE_kiln-server-e2e`.

fn main() -> anyhow::Result<()> {
    kiln_control_plane::cli::main()
}
