//! All end-to-end tests, one binary, one module per area. Each test starts the
//! real servers it needs on loopback; see `support`.

mod accept;
mod agent;
mod control_plane;
mod faults;
mod operate;
mod sandbox;
mod scan;

pub use kiln_tests::support;
