//! Every environment variable `kiln-agent` reads, one documented constant each.
//! Settings (`KILN_<KEY>`) mirror the keys of `agent.toml` one to one; a bad
//! value is an error naming the variable and the value.

/// The configuration file (default `/etc/kiln/agent.toml`); naming one makes it required.
pub const KILN_CONFIG: &str = "KILN_CONFIG";
/// Operator log format: `text` or `json`.
pub const KILN_LOG_FORMAT: &str = "KILN_LOG_FORMAT";
/// The secret `kiln-agent register` presents once to get the agent's own token.
pub const KILN_REGISTRATION_TOKEN: &str = "KILN_REGISTRATION_TOKEN";
/// Tracing filter (`info` by default), as `tracing_subscriber::EnvFilter` reads it.
pub const RUST_LOG: &str = "RUST_LOG";
/// Set by systemd: the socket `READY=1`, `STATUS=` and `WATCHDOG=1` go to.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// Set by systemd: the watchdog interval in microseconds.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// Set by systemd: the process the watchdog is for (unset means this one).
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";
/// Read by the Docker client: the engine's address (the local socket by default).
pub const DOCKER_HOST: &str = "DOCKER_HOST";

/// `control_plane_url`: the control plane's base URL.
pub const KILN_CONTROL_PLANE_URL: &str = "KILN_CONTROL_PLANE_URL";
/// `name`: shown in the control plane.
pub const KILN_NAME: &str = "KILN_NAME";
/// `work_dir`: per-job workspaces.
pub const KILN_WORK_DIR: &str = "KILN_WORK_DIR";
/// `cache_dir`: the build cache (default: `cache` beside `work_dir`).
pub const KILN_CACHE_DIR: &str = "KILN_CACHE_DIR";
/// `cache_limit`: disk the build cache may use (default 10GiB).
pub const KILN_CACHE_LIMIT: &str = "KILN_CACHE_LIMIT";
/// `min_free_disk`: free disk under `work_dir` below which no job is claimed.
pub const KILN_MIN_FREE_DISK: &str = "KILN_MIN_FREE_DISK";
/// `state_dir`: identity and log spools.
pub const KILN_STATE_DIR: &str = "KILN_STATE_DIR";
/// `concurrency`: jobs built at once.
pub const KILN_CONCURRENCY: &str = "KILN_CONCURRENCY";
/// `labels`: comma-separated labels jobs may require.
pub const KILN_LABELS: &str = "KILN_LABELS";
/// `build_image`: the image builds run in (never pulled).
pub const KILN_BUILD_IMAGE: &str = "KILN_BUILD_IMAGE";
/// `node_images`: the build image per Node major (`20=kiln/node:20,22=kiln/node:22`).
pub const KILN_NODE_IMAGES: &str = "KILN_NODE_IMAGES";
/// `memory`: memory (and swap) per build container.
pub const KILN_MEMORY: &str = "KILN_MEMORY";
/// `cpus`: CPUs per build container.
pub const KILN_CPUS: &str = "KILN_CPUS";
/// `pids`: process limit per build container.
pub const KILN_PIDS: &str = "KILN_PIDS";
/// `job_timeout`: cap on a job, whatever the control plane asks.
pub const KILN_JOB_TIMEOUT: &str = "KILN_JOB_TIMEOUT";
/// `step_timeout`: cap on one step.
pub const KILN_STEP_TIMEOUT: &str = "KILN_STEP_TIMEOUT";
/// `open_files`: open files per build container.
pub const KILN_OPEN_FILES: &str = "KILN_OPEN_FILES";
/// `workspace_limit`: disk a job's workspace may use.
pub const KILN_WORKSPACE_LIMIT: &str = "KILN_WORKSPACE_LIMIT";
/// `metrics_listen`: address of `/metrics`, `/healthz`, `/readyz`.
pub const KILN_METRICS_LISTEN: &str = "KILN_METRICS_LISTEN";
/// `cancel_grace`: SIGTERM → SIGKILL for a canceled build.
pub const KILN_CANCEL_GRACE: &str = "KILN_CANCEL_GRACE";
/// `shutdown_grace`: time running builds get when the agent stops.
pub const KILN_SHUTDOWN_GRACE: &str = "KILN_SHUTDOWN_GRACE";
/// `extra_ca_certs`: PEM bundle mounted read-only into build containers.
pub const KILN_EXTRA_CA_CERTS: &str = "KILN_EXTRA_CA_CERTS";
/// `install_network`: the install step's network (`bridge`, `host`, `none`).
pub const KILN_INSTALL_NETWORK: &str = "KILN_INSTALL_NETWORK";
/// `build_network`: the build step's network.
pub const KILN_BUILD_NETWORK: &str = "KILN_BUILD_NETWORK";
/// `components_side_by_side`: build the backend and the storefront at once.
pub const KILN_COMPONENTS_SIDE_BY_SIDE: &str = "KILN_COMPONENTS_SIDE_BY_SIDE";
/// `keep_failed_workspaces`: keep a failed job's workspace.
pub const KILN_KEEP_FAILED_WORKSPACES: &str = "KILN_KEEP_FAILED_WORKSPACES";
/// `build_user`: uid:gid of builds when the agent runs as root.
pub const KILN_BUILD_USER: &str = "KILN_BUILD_USER";
/// `allow_local_repositories`: clone `file://` and local paths (single machine).
pub const KILN_ALLOW_LOCAL_REPOSITORIES: &str = "KILN_ALLOW_LOCAL_REPOSITORIES";
/// `log_limit`: bytes kept per log stream of a job.
pub const KILN_LOG_LIMIT: &str = "KILN_LOG_LIMIT";
/// `roles`: what the agent takes jobs for (`build`, `deploy`, or both).
pub const KILN_ROLES: &str = "KILN_ROLES";
/// `caddy_admin_url`: the admin API of the Caddy a deploy host programs.
pub const KILN_CADDY_ADMIN_URL: &str = "KILN_CADDY_ADMIN_URL";
/// `caddy_listen`: the address of the Caddy server the deploy host manages.
pub const KILN_CADDY_LISTEN: &str = "KILN_CADDY_LISTEN";
/// `deploy_network`: the network of a release's containers (`bridge` or `host`).
pub const KILN_DEPLOY_NETWORK: &str = "KILN_DEPLOY_NETWORK";
