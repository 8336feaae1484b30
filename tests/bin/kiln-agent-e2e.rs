//! The real `kiln-agent` command line, built inside the test package so the
//! end-to-end tests can find it through `CARGO_BIN_EXE_kiln-agent-e2e`.

fn main() -> std::process::ExitCode {
    kiln_agent::cli::main()
}
