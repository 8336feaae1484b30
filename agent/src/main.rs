//! `kiln-agent`: see `cli.rs`.

fn main() -> std::process::ExitCode {
    kiln_agent::cli::main()
}
