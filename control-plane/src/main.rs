//! `kiln-server`: see `cli.rs`.

fn main() -> anyhow::Result<()> {
    kiln_control_plane::cli::main()
}
