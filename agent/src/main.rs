//! `kiln-agent`: the build agent. The pipeline lands with issue 3.

fn main() {
    println!("kiln-agent {}", env!("CARGO_PKG_VERSION"));
}
