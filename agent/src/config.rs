//! Agent configuration: `agent.toml`, then `KILN_*` environment variables, then flags.
//!
//! One struct, `PartialConfig`, is read from all three sources (serde for the file,
//! `FromStr` for the environment, clap for flags), merged with the higher source
//! winning, then resolved into `AgentConfig` with defaults and checks. A typo in the
//! file is an error naming the key; a bad value names the key or variable and value.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::env_vars;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/kiln/agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{name}={value:?} is invalid: {reason}")]
    InvalidEnv {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("`{key}` is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// A size such as `4GiB`, `512MiB`, `1024` (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{s:?} is not a size like 4GiB, 512MiB or 1048576"))?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown size unit {other:?}; use B, KiB, MiB, GiB or TiB"
                ))
            }
        };
        Ok(ByteSize((number * multiplier as f64) as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (unit, size) in UNITS {
            if self.0 >= size {
                let value = self.0 as f64 / size as f64;
                return if value.fract() == 0.0 {
                    write!(f, "{value:.0} {unit}")
                } else {
                    write!(f, "{value:.1} {unit}")
                };
            }
        }
        write!(f, "{} B", self.0)
    }
}

/// A duration such as `30m`, `10s`, `1h30m`, or plain seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not a duration like 30m, 10s, 1h30m or 90");
        if let Ok(seconds) = s.parse::<u64>() {
            return Ok(Span(Duration::from_secs(seconds)));
        }
        let mut total = Duration::ZERO;
        let mut number = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let n: u64 = number.parse().map_err(|_| bad())?;
            number.clear();
            total += match c {
                'h' => Duration::from_secs(n * 3600),
                'm' => Duration::from_secs(n * 60),
                's' => Duration::from_secs(n),
                _ => return Err(bad()),
            };
        }
        if !number.is_empty() || s.is_empty() {
            return Err(bad());
        }
        Ok(Span(total))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        match (secs / 3600, secs % 3600 / 60, secs % 60) {
            (0, 0, s) => write!(f, "{s}s"),
            (0, m, 0) => write!(f, "{m}m"),
            (h, 0, 0) => write!(f, "{h}h"),
            (h, m, s) if h > 0 => write!(f, "{h}h{m}m{s}s"),
            (_, m, s) => write!(f, "{m}m{s}s"),
        }
    }
}

/// A comma-separated list in the environment and on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct List(pub Vec<String>);

impl FromStr for List {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(List(
            s.split(',')
                .map(str::trim)
                .filter(|part| !part.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }
}

/// The build image for each Node major: `{ "20" = "kiln/node:20", … }`, or
/// `20=kiln/node:20,22=kiln/node:22` in the environment and on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeImages(pub std::collections::BTreeMap<u64, String>);

impl NodeImages {
    fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<NodeImages, String> {
        let mut images = std::collections::BTreeMap::new();
        for (major, image) in pairs {
            let major = major.trim();
            let number: u64 = major
                .parse()
                .ok()
                .filter(|n| (1..=99).contains(n))
                .ok_or_else(|| {
                    format!("{major:?} is not a Node major; use keys such as \"20\" and \"22\"")
                })?;
            let image = image.trim();
            if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "{image:?} (for Node {number}) is not an image name"
                ));
            }
            images.insert(number, image.to_owned());
        }
        if images.is_empty() {
            return Err("no images; name at least one, e.g. 20=kiln/node:20".to_owned());
        }
        Ok(NodeImages(images))
    }

    /// `kiln/node:<major>` for the majors Medusa Cloud builds with.
    pub fn defaults() -> NodeImages {
        NodeImages(
            [20, 22, 24]
                .into_iter()
                .map(|major| (major, format!("kiln/node:{major}")))
                .collect(),
        )
    }
}

impl fmt::Display for NodeImages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self
            .0
            .iter()
            .map(|(major, image)| format!("{major}={image}"))
            .collect();
        f.write_str(&shown.join(","))
    }
}

impl FromStr for NodeImages {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let pairs: Result<Vec<(&str, &str)>, String> = s
            .split(',')
            .filter(|pair| !pair.trim().is_empty())
            .map(|pair| {
                pair.split_once('=')
                    .ok_or_else(|| format!("{pair:?} is not MAJOR=IMAGE, e.g. 22=kiln/node:22"))
            })
            .collect();
        NodeImages::from_pairs(pairs?)
    }
}

/// `node_images` in the file: a table of major to image.
fn node_images_table<'de, D>(deserializer: D) -> Result<Option<NodeImages>, D::Error>
where
    D: Deserializer<'de>,
{
    let table = std::collections::BTreeMap::<String, String>::deserialize(deserializer)?;
    NodeImages::from_pairs(table.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// How a build container reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Host,
    Bridge,
    None,
}

impl Network {
    pub fn docker_mode(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::Bridge => "bridge",
            Network::None => "none",
        }
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host" => Ok(Network::Host),
            "bridge" => Ok(Network::Bridge),
            "none" => Ok(Network::None),
            other => Err(format!(
                "{other:?} is not a network mode; use host, bridge or none"
            )),
        }
    }
}

/// `uid:gid` for build containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidGid {
    pub uid: u32,
    pub gid: u32,
}

impl FromStr for UidGid {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not uid:gid, e.g. 10000:10000");
        let (uid, gid) = s.split_once(':').ok_or_else(bad)?;
        Ok(UidGid {
            uid: uid.parse().map_err(|_| bad())?,
            gid: gid.parse().map_err(|_| bad())?,
        })
    }
}

/// Deserialises a TOML string (or number, where it makes sense) through `FromStr`.
fn from_str_or_number<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Integer(u64),
        Float(f64),
        List(Vec<String>),
    }
    let text = match Raw::deserialize(deserializer)? {
        Raw::Text(text) => text,
        Raw::Integer(n) => n.to_string(),
        Raw::Float(n) => n.to_string(),
        Raw::List(items) => items.join(","),
    };
    T::from_str(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

macro_rules! partial_config {
    ($( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $env:path $(, parse = $parse:literal)? ;)*) => {
        /// Settings from one source; `None` means "not set here".
        #[derive(Debug, Clone, Default, Deserialize, clap::Args)]
        #[serde(deny_unknown_fields)]
        pub struct PartialConfig {
            $(
                $(#[doc = $doc])*
                #[arg(long)]
                #[serde(default $(, deserialize_with = $parse)?)]
                pub $field: Option<$ty>,
            )*
        }

        impl PartialConfig {
            /// Fields set in `self` win over `lower`.
            pub fn over(self, lower: PartialConfig) -> PartialConfig {
                PartialConfig { $( $field: self.$field.or(lower.$field), )* }
            }

            /// Reads `KILN_*` variables through `lookup` (the process environment in `main`).
            pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<PartialConfig, ConfigError> {
                let mut config = PartialConfig::default();
                $(
                    if let Some(value) = lookup($env) {
                        config.$field = Some(value.parse::<$ty>().map_err(|reason| ConfigError::InvalidEnv {
                            name: $env,
                            value: value.clone(),
                            reason: reason.to_string(),
                        })?);
                    }
                )*
                Ok(config)
            }

            /// The variable name for each key.
            #[cfg(test)]
            pub const ENV_NAMES: &'static [(&'static str, &'static str)] = &[ $( (stringify!($field), $env), )* ];
        }
    };
}

partial_config! {
    /// Base URL of the control plane, e.g. `https://kiln.example.com`
    control_plane_url: String = env_vars::KILN_CONTROL_PLANE_URL;
    /// Name shown in the control plane (default: the host name)
    name: String = env_vars::KILN_NAME;
    /// Per-job workspaces live here
    work_dir: PathBuf = env_vars::KILN_WORK_DIR;
    /// The agent token and log spools live here
    state_dir: PathBuf = env_vars::KILN_STATE_DIR;
    /// Jobs built at once
    concurrency: usize = env_vars::KILN_CONCURRENCY;
    /// Labels jobs may require, comma-separated
    labels: List = env_vars::KILN_LABELS, parse = "from_str_or_number";
    /// Docker image of components that ask for no Node version (default: node_images' 20)
    build_image: String = env_vars::KILN_BUILD_IMAGE;
    /// Build image per Node major, for components that ask for one: 20=kiln/node:20,22=kiln/node:22
    node_images: NodeImages = env_vars::KILN_NODE_IMAGES, parse = "node_images_table";
    /// Memory limit per build container (swap is limited to the same)
    memory: ByteSize = env_vars::KILN_MEMORY, parse = "from_str_or_number";
    /// CPUs per build container
    cpus: f64 = env_vars::KILN_CPUS;
    /// Process limit per build container
    pids: i64 = env_vars::KILN_PIDS;
    /// Longest a job may run, whatever the control plane asks
    job_timeout: Span = env_vars::KILN_JOB_TIMEOUT, parse = "from_str_or_number";
    /// Longest one step (install, build, storefront) may run
    step_timeout: Span = env_vars::KILN_STEP_TIMEOUT, parse = "from_str_or_number";
    /// Open files per build container
    open_files: i64 = env_vars::KILN_OPEN_FILES;
    /// Disk a job's workspace may use (checked while the build runs)
    workspace_limit: ByteSize = env_vars::KILN_WORKSPACE_LIMIT, parse = "from_str_or_number";
    /// Address of /metrics, /healthz and /readyz, e.g. 127.0.0.1:9464 (off when unset)
    metrics_listen: String = env_vars::KILN_METRICS_LISTEN;
    /// Time a canceled build gets between SIGTERM and SIGKILL
    cancel_grace: Span = env_vars::KILN_CANCEL_GRACE, parse = "from_str_or_number";
    /// Time running jobs get to finish when the agent is asked to stop
    shutdown_grace: Span = env_vars::KILN_SHUTDOWN_GRACE, parse = "from_str_or_number";
    /// PEM bundle mounted read-only into build containers (TLS-inspecting proxies)
    extra_ca_certs: PathBuf = env_vars::KILN_EXTRA_CA_CERTS;
    /// Network of the install step: host, bridge or none
    install_network: Network = env_vars::KILN_INSTALL_NETWORK, parse = "from_str_or_number";
    /// Network of the build step: host, bridge or none
    build_network: Network = env_vars::KILN_BUILD_NETWORK, parse = "from_str_or_number";
    /// Build the backend and the storefront at once (two containers, each with the limits above)
    components_side_by_side: bool = env_vars::KILN_COMPONENTS_SIDE_BY_SIDE;
    /// Keep a failed job's workspace for inspection
    keep_failed_workspaces: bool = env_vars::KILN_KEEP_FAILED_WORKSPACES;
    /// uid:gid builds run as when the agent itself runs as root
    build_user: UidGid = env_vars::KILN_BUILD_USER, parse = "from_str_or_number";
    /// Bytes kept per log stream of a job; later output is dropped (the build goes on)
    log_limit: ByteSize = env_vars::KILN_LOG_LIMIT, parse = "from_str_or_number";
    /// Clone `file://` URLs and local paths (a single machine; never for untrusted jobs)
    allow_local_repositories: bool = env_vars::KILN_ALLOW_LOCAL_REPOSITORIES;
    /// The build cache: dependencies, package stores, framework caches, outputs (default: `cache` beside work_dir)
    cache_dir: PathBuf = env_vars::KILN_CACHE_DIR;
    /// Disk the build cache may use; least recently used entries go first
    cache_limit: ByteSize = env_vars::KILN_CACHE_LIMIT, parse = "from_str_or_number";
    /// Free disk under work_dir below which the agent claims no jobs (0: always claim)
    min_free_disk: ByteSize = env_vars::KILN_MIN_FREE_DISK, parse = "from_str_or_number";
    /// What the agent takes jobs for: build, deploy, or both (default: build)
    roles: List = env_vars::KILN_ROLES, parse = "from_str_or_number";
    /// The admin API of the Caddy a deploy host programs (default http://127.0.0.1:2019)
    caddy_admin_url: String = env_vars::KILN_CADDY_ADMIN_URL;
    /// The address of the Caddy server the deploy host manages (default :80)
    caddy_listen: String = env_vars::KILN_CADDY_LISTEN;
    /// Network of a release's containers: bridge (ports published on 127.0.0.1) or host
    deploy_network: Network = env_vars::KILN_DEPLOY_NETWORK, parse = "from_str_or_number";
}

/// The resolved configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub control_plane_url: Option<String>,
    pub name: String,
    pub work_dir: PathBuf,
    pub state_dir: PathBuf,
    pub concurrency: usize,
    pub labels: Vec<String>,
    /// The image of a component that asks for no Node version.
    pub build_image: String,
    /// The image of each Node major, for a component that asks for one.
    pub node_images: NodeImages,
    pub memory: ByteSize,
    pub cpus: f64,
    pub pids: i64,
    pub job_timeout: Duration,
    pub step_timeout: Duration,
    pub open_files: i64,
    pub workspace_limit: ByteSize,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub cancel_grace: Duration,
    pub shutdown_grace: Duration,
    pub extra_ca_certs: Option<PathBuf>,
    pub install_network: Network,
    pub build_network: Network,
    pub components_side_by_side: bool,
    pub keep_failed_workspaces: bool,
    /// Who build containers run as: the agent's own uid/gid, or `build_user` if root.
    pub build_user: UidGid,
    pub log_limit: ByteSize,
    pub allow_local_repositories: bool,
    pub cache_dir: PathBuf,
    pub cache_limit: ByteSize,
    pub min_free_disk: ByteSize,
    pub roles: Vec<kiln_protocol::Role>,
    pub caddy_admin_url: String,
    pub caddy_listen: String,
    pub deploy_network: Network,
}

pub const DEFAULT_IMAGE: &str = "kiln/node:20";

impl PartialConfig {
    /// Reads a TOML file; a missing file is fine only when it was not asked for by name.
    pub fn from_file(path: &std::path::Path, required: bool) -> Result<PartialConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(PartialConfig::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    pub fn resolve(self) -> Result<AgentConfig, ConfigError> {
        let concurrency = self.concurrency.unwrap_or(1);
        if concurrency == 0 {
            return Err(ConfigError::Invalid {
                key: "concurrency",
                reason: "must be at least 1".to_owned(),
            });
        }
        let cpus = self.cpus.unwrap_or(2.0);
        if cpus.is_nan() || cpus <= 0.0 {
            return Err(ConfigError::Invalid {
                key: "cpus",
                reason: format!("{cpus} must be more than 0"),
            });
        }
        let memory = self.memory.unwrap_or(ByteSize(4 << 30));
        if memory.0 < 64 << 20 {
            return Err(ConfigError::Invalid {
                key: "memory",
                reason: format!("{memory} is too little to run node; use at least 64 MiB"),
            });
        }
        let pids = self.pids.unwrap_or(1024);
        if pids < 16 {
            return Err(ConfigError::Invalid {
                key: "pids",
                reason: format!("{pids} is too few to run npm; use at least 16"),
            });
        }
        let open_files = self.open_files.unwrap_or(65536);
        if open_files < 256 {
            return Err(ConfigError::Invalid {
                key: "open_files",
                reason: format!("{open_files} is too few to run npm; use at least 256"),
            });
        }
        let workspace_limit = self.workspace_limit.unwrap_or(ByteSize(10 << 30));
        if workspace_limit.0 < 1 << 20 {
            return Err(ConfigError::Invalid {
                key: "workspace_limit",
                reason: format!(
                    "{workspace_limit} is too little to hold a checkout; use at least 1 MiB"
                ),
            });
        }
        let metrics_listen = match &self.metrics_listen {
            None => None,
            Some(address) if address.is_empty() => None,
            Some(address) => Some(address.parse().map_err(|_| ConfigError::Invalid {
                key: "metrics_listen",
                reason: format!("{address:?} is not an address:port such as 127.0.0.1:9464"),
            })?),
        };
        let job_timeout = self
            .job_timeout
            .map(|s| s.0)
            .unwrap_or(Duration::from_secs(3600));
        if let Some(url) = &self.control_plane_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    key: "control_plane_url",
                    reason: format!("{url:?} must start with http:// or https://"),
                });
            }
        }
        let me = UidGid {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        };
        let build_user = if me.uid == 0 {
            self.build_user.unwrap_or(UidGid {
                uid: 10000,
                gid: 10000,
            })
        } else {
            me
        };
        // `bridge` reaches package registries but not the host's loopback
        // services (the control plane, /metrics, a local database).
        let install_network = self.install_network.unwrap_or(Network::Bridge);
        let node_images = self.node_images.unwrap_or_else(NodeImages::defaults);
        let work_dir = self
            .work_dir
            .unwrap_or_else(|| "/var/lib/kiln-agent/work".into());
        // Beside work_dir, so entries move in and out by rename and hard link.
        let cache_dir = self
            .cache_dir
            .unwrap_or_else(|| work_dir.parent().unwrap_or(Path::new("/")).join("cache"));
        let roles = match self.roles {
            Some(List(roles)) if !roles.is_empty() => roles
                .iter()
                .map(|role| kiln_protocol::Role::parse(role))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|reason| ConfigError::Invalid {
                    key: "roles",
                    reason,
                })?,
            _ => vec![kiln_protocol::Role::Build],
        };
        let deploy_network = self.deploy_network.unwrap_or(Network::Bridge);
        if deploy_network == Network::None {
            return Err(ConfigError::Invalid {
                key: "deploy_network",
                reason: "a release must be reachable: use bridge or host".to_owned(),
            });
        }
        let caddy_admin_url = self
            .caddy_admin_url
            .unwrap_or_else(|| "http://127.0.0.1:2019".to_owned());
        if !caddy_admin_url.starts_with("http://") {
            return Err(ConfigError::Invalid {
                key: "caddy_admin_url",
                reason: format!("{caddy_admin_url:?} must be an http:// URL (Caddy's admin API listens on loopback)"),
            });
        }
        Ok(AgentConfig {
            roles,
            caddy_admin_url: caddy_admin_url.trim_end_matches('/').to_owned(),
            caddy_listen: self.caddy_listen.unwrap_or_else(|| ":80".to_owned()),
            deploy_network,
            control_plane_url: self
                .control_plane_url
                .map(|url| url.trim_end_matches('/').to_owned()),
            name: self.name.unwrap_or_else(default_name),
            work_dir,
            state_dir: self
                .state_dir
                .unwrap_or_else(|| "/var/lib/kiln-agent/state".into()),
            concurrency,
            labels: self.labels.unwrap_or_default().0,
            build_image: self.build_image.unwrap_or_else(|| {
                // Node 20, as Medusa Cloud builds by default, else the oldest.
                node_images
                    .0
                    .get(&20)
                    .or_else(|| node_images.0.values().next())
                    .cloned()
                    .unwrap_or_else(|| DEFAULT_IMAGE.to_owned())
            }),
            node_images,
            memory,
            cpus,
            pids,
            job_timeout,
            step_timeout: self.step_timeout.map(|s| s.0).unwrap_or(job_timeout),
            open_files,
            workspace_limit,
            metrics_listen,
            cancel_grace: self
                .cancel_grace
                .map(|s| s.0)
                .unwrap_or(Duration::from_secs(10)),
            shutdown_grace: self
                .shutdown_grace
                .map(|s| s.0)
                .unwrap_or(Duration::from_secs(900)),
            extra_ca_certs: self.extra_ca_certs,
            install_network,
            build_network: self.build_network.unwrap_or(install_network),
            components_side_by_side: self.components_side_by_side.unwrap_or(true),
            keep_failed_workspaces: self.keep_failed_workspaces.unwrap_or(false),
            build_user,
            log_limit: self.log_limit.unwrap_or(ByteSize(100 << 20)),
            allow_local_repositories: self.allow_local_repositories.unwrap_or(false),
            cache_dir,
            cache_limit: self.cache_limit.unwrap_or(ByteSize(10 << 30)),
            min_free_disk: self.min_free_disk.unwrap_or(ByteSize(2 << 30)),
        })
    }
}

fn default_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "kiln-agent".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn flags_beat_environment_beat_file() {
        let file: PartialConfig = toml::from_str(
            r#"
            control_plane_url = "https://file.example"
            concurrency = 2
            memory = "2GiB"
            labels = ["a", "b"]
            job_timeout = "30m"
            "#,
        )
        .unwrap();
        let from_env =
            PartialConfig::from_env(env(&[("KILN_CONCURRENCY", "3"), ("KILN_MEMORY", "1GiB")]))
                .unwrap();
        let flags = PartialConfig {
            concurrency: Some(4),
            ..Default::default()
        };
        let config = flags.over(from_env.over(file)).resolve().unwrap();
        assert_eq!(config.concurrency, 4);
        assert_eq!(config.memory, ByteSize(1 << 30));
        assert_eq!(
            config.control_plane_url.as_deref(),
            Some("https://file.example")
        );
        assert_eq!(config.labels, ["a", "b"]);
        assert_eq!(config.job_timeout, Duration::from_secs(1800));
        assert_eq!(
            config.build_network, config.install_network,
            "build follows install by default"
        );
    }

    #[test]
    fn node_images_by_major_from_file_and_environment() {
        let config = PartialConfig::default().resolve().unwrap();
        assert_eq!(config.node_images, NodeImages::defaults());
        assert_eq!(config.build_image, "kiln/node:20");

        let file: PartialConfig = toml::from_str(
            r#"node_images = { "22" = "registry.example/node:22", "24" = "kiln/node:24" }"#,
        )
        .unwrap();
        let config = file.resolve().unwrap();
        assert_eq!(
            config.node_images.to_string(),
            "22=registry.example/node:22,24=kiln/node:24"
        );
        assert_eq!(
            config.build_image, "registry.example/node:22",
            "the oldest without a 20"
        );

        let from_env = PartialConfig::from_env(env(&[(
            "KILN_NODE_IMAGES",
            "20=kiln/node:local, 22=kiln/node:22",
        )]))
        .unwrap();
        let config = from_env.resolve().unwrap();
        assert_eq!(
            config.node_images.0.get(&22).map(String::as_str),
            Some("kiln/node:22")
        );
        assert_eq!(config.build_image, "kiln/node:local");

        for (bad, says) in [
            (
                "node_images = { \"lts\" = \"kiln/node:20\" }",
                "not a Node major",
            ),
            (
                "node_images = { \"22\" = \"kiln/node 22\" }",
                "not an image name",
            ),
            ("node_images = {}", "no images"),
        ] {
            let err = toml::from_str::<PartialConfig>(bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = PartialConfig::from_env(env(&[("KILN_NODE_IMAGES", "22")])).unwrap_err();
        assert!(err.to_string().contains("not MAJOR=IMAGE"), "{err}");
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let err = toml::from_str::<PartialConfig>("concurency = 2").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `concurency`"),
            "{err}"
        );
    }

    #[test]
    fn bad_value_in_file_names_key_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "memory = \"lots\"\n").unwrap();
        let err = PartialConfig::from_file(&path, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("memory") && err.contains("not a size"),
            "{err}"
        );
    }

    #[test]
    fn bad_environment_value_names_variable_and_value() {
        let err = PartialConfig::from_env(env(&[("KILN_INSTALL_NETWORK", "wifi")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "KILN_INSTALL_NETWORK=\"wifi\" is invalid: \"wifi\" is not a network mode; use host, bridge or none"
        );
    }

    #[test]
    fn invalid_resolved_values_are_refused() {
        let zero = PartialConfig {
            concurrency: Some(0),
            ..Default::default()
        };
        assert!(zero
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("`concurrency`"));
        let url = PartialConfig {
            control_plane_url: Some("kiln.example".into()),
            ..Default::default()
        };
        assert!(url.resolve().unwrap_err().to_string().contains("http://"));
    }

    #[test]
    fn sizes_and_spans_parse_and_print() {
        assert_eq!("4GiB".parse::<ByteSize>().unwrap(), ByteSize(4 << 30));
        assert_eq!("512 MiB".parse::<ByteSize>().unwrap(), ByteSize(512 << 20));
        assert_eq!("1024".parse::<ByteSize>().unwrap(), ByteSize(1024));
        assert_eq!(ByteSize(4 << 30).to_string(), "4 GiB");
        assert_eq!(ByteSize(73_592 << 20).to_string(), "71.9 GiB");
        assert_eq!(ByteSize(256 << 20).to_string(), "256 MiB");
        assert_eq!(
            "1h30m".parse::<Span>().unwrap(),
            Span(Duration::from_secs(5400))
        );
        assert_eq!("90".parse::<Span>().unwrap(), Span(Duration::from_secs(90)));
        assert!("soon".parse::<Span>().is_err());
        assert_eq!(Span(Duration::from_secs(1800)).to_string(), "30m");
    }

    #[test]
    fn every_key_has_an_environment_variable() {
        for (key, name) in PartialConfig::ENV_NAMES {
            assert_eq!(*name, format!("KILN_{}", key.to_ascii_uppercase()));
        }
    }
}
