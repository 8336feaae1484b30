//! The Node version a component asks for and the judgements made of it, in Rust
//! with npm's range rules: may a Node major serve it, does a Node version
//! satisfy it.
//!
//! Where it is read, first found wins: `.nvmrc`, then `.node-version` (in the
//! component's directory, then the root), then `volta.node`, then
//! `engines.node` (each in the component's package.json). A version file or
//! Volta's pin names a developer's exact Node; the build image carries one Node
//! per major, so it is held to its major (`20.11.1` asks for `20.x`), and it
//! must fit `engines.node` where both are set. `engines.node` is a range and is
//! judged as npm judges it.

use std::fmt;
use std::path::Path;

use node_semver::{Range, Version};
use serde_json::Value;

use super::DetectError;
use crate::repo_fs::{join, shown, RepoFs, RepoFsError, VERSION_FILE_LIMIT};

/// What a component asks of Node, and where it says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRequirement {
    /// As written, without a leading `v`: `20.11.1`, `lts/iron`, `>=20`.
    pub wanted: String,
    /// `.nvmrc`, `.node-version`, `volta.node` or `engines.node`.
    pub source: String,
    /// The file it is in: `backend/.nvmrc`, `storefront/package.json`.
    pub file: String,
}

impl fmt::Display for NodeRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.source.starts_with('.') {
            write!(f, "{} ({})", self.wanted, self.file)
        } else {
            write!(f, "{} ({} in {})", self.wanted, self.source, self.file)
        }
    }
}

/// Node's LTS code names, for `lts/<name>` in a version file.
const LTS: &[(&str, u64)] = &[
    ("argon", 4),
    ("boron", 6),
    ("carbon", 8),
    ("dubnium", 10),
    ("erbium", 12),
    ("fermium", 14),
    ("gallium", 16),
    ("hydrogen", 18),
    ("iron", 20),
    ("jod", 22),
    ("krypton", 24),
];

/// The major a version file asks for; `None` for `node`, `latest`, `lts/*`, which
/// ask for no particular one.
fn file_major(wanted: &str) -> Option<u64> {
    if let Some(name) = wanted.strip_prefix("lts/") {
        let name = name.to_ascii_lowercase();
        return LTS
            .iter()
            .find(|(code, _)| *code == name)
            .map(|(_, major)| *major);
    }
    wanted.split('.').next()?.parse().ok()
}

impl NodeRequirement {
    fn is_version_file(&self) -> bool {
        self.source != "engines.node"
    }

    /// Whether some Node of `major` may satisfy it.
    pub fn allows_major(&self, major: u64) -> bool {
        match (self.range(), Range::parse(format!("{major}.x"))) {
            (Some(range), Ok(major)) => range.allows_any(&major),
            _ => true,
        }
    }

    /// The versions that satisfy it; `None` when nothing particular is asked (or
    /// the range is not one npm would read either).
    fn range(&self) -> Option<Range> {
        if self.is_version_file() {
            return file_major(&self.wanted)
                .and_then(|major| Range::parse(format!("{major}.x")).ok());
        }
        Range::parse(&self.wanted).ok()
    }

    /// Whether Node `have` satisfies it.
    pub fn satisfied_by(&self, have: &Version) -> bool {
        self.range().is_none_or(|range| range.satisfies(have))
    }
}

/// The Node version `app` asks for, read in the order the module names; a
/// version file or Volta's pin that contradicts `engines.node` is an error.
pub(crate) fn node_requirement(
    fs: &RepoFs,
    app: &Path,
    package: &Value,
    reasons: &mut Vec<String>,
) -> Result<Option<NodeRequirement>, DetectError> {
    let manifest = shown(&join(app, Path::new("package.json")));
    let in_package = |pointer: &str, source: &str| {
        package
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(|wanted| NodeRequirement {
                wanted: wanted.trim().trim_start_matches('v').to_owned(),
                source: source.to_owned(),
                file: manifest.clone(),
            })
            .filter(|found| !found.wanted.is_empty())
    };
    let engines = in_package("/engines/node", "engines.node");
    let mut pin = None;
    'dirs: for dir in [app, Path::new("")] {
        for name in [".nvmrc", ".node-version"] {
            let path = join(dir, Path::new(name));
            let text = fs.read(&path, VERSION_FILE_LIMIT)?;
            let version = text.as_deref().unwrap_or_default().trim();
            let version = version.strip_prefix('v').unwrap_or(version);
            if !version.is_empty() {
                pin = Some(NodeRequirement {
                    wanted: version.to_owned(),
                    source: name.to_owned(),
                    file: shown(&path),
                });
                break 'dirs;
            }
        }
    }
    let pin = pin.or_else(|| in_package("/volta/node", "volta.node"));
    match (pin, engines) {
        (Some(pin), engines) => {
            if let (Some(engines), Some(major)) = (&engines, file_major(&pin.wanted)) {
                if !engines.allows_major(major) {
                    return Err(DetectError::NodeVersionConflict {
                        dir: shown(app),
                        file: pin.wanted,
                        source_file: pin.file,
                        engines: engines.wanted.clone(),
                    });
                }
            }
            reasons.push(format!("node {pin}"));
            Ok(Some(pin))
        }
        (None, Some(engines)) => {
            reasons.push(format!("node {engines}"));
            Ok(Some(engines))
        }
        (None, None) => Ok(None),
    }
}

/// Read errors of a version file are the repository's; keep their kind.
impl From<RepoFsError> for DetectError {
    fn from(error: RepoFsError) -> Self {
        DetectError::Read(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(wanted: &str) -> NodeRequirement {
        NodeRequirement {
            wanted: wanted.to_owned(),
            source: ".nvmrc".to_owned(),
            file: ".nvmrc".to_owned(),
        }
    }

    fn engines(wanted: &str) -> NodeRequirement {
        NodeRequirement {
            wanted: wanted.to_owned(),
            source: "engines.node".to_owned(),
            file: "package.json".to_owned(),
        }
    }

    fn version(text: &str) -> Version {
        text.parse().unwrap()
    }

    #[test]
    fn version_files_are_held_to_their_major() {
        assert!(file("20.11.1").satisfied_by(&version("20.20.2")));
        assert!(file("20").satisfied_by(&version("20.0.0")));
        assert!(file("lts/iron").satisfied_by(&version("20.20.2")));
        assert!(file("lts/*").satisfied_by(&version("18.0.0")));
        assert!(!file("22.1.0").satisfied_by(&version("20.20.2")));
        assert!(file("22.1.0").allows_major(22) && !file("22.1.0").allows_major(20));
        assert_eq!(file("22.1.0").to_string(), "22.1.0 (.nvmrc)");
        assert_eq!(
            engines("22.x").to_string(),
            "22.x (engines.node in package.json)"
        );
    }

    #[test]
    fn engines_ranges_are_judged_as_npm_does() {
        let have = version("20.20.2");
        assert!(engines(">20.1").satisfied_by(&have));
        assert!(engines(">=18 <21").satisfied_by(&have));
        assert!(engines("^20 || ^22").satisfied_by(&have));
        assert!(engines("20.x").satisfied_by(&have));
        assert!(!engines(">=22").satisfied_by(&have));
        assert!(!engines("^18").satisfied_by(&have));
        assert!(engines("not a range").satisfied_by(&have));
        assert!(engines(">=20").allows_major(24) && !engines("^18 || ^20").allows_major(22));
    }

    #[test]
    fn read_in_order_pins_before_engines() {
        let dir = crate::testing::tree(&[(
            "backend/package.json",
            r#"{"engines": {"node": ">=20"}, "volta": {"node": "22.11.0"}}"#,
        )]);
        let fs = RepoFs::new(dir.path()).unwrap();
        let read = |fs: &RepoFs| {
            let package = fs.package_json(Path::new("backend")).unwrap().unwrap();
            node_requirement(fs, Path::new("backend"), &package, &mut Vec::new()).unwrap()
        };
        let found = read(&fs).unwrap();
        assert_eq!(
            (
                found.wanted.as_str(),
                found.source.as_str(),
                found.file.as_str()
            ),
            ("22.11.0", "volta.node", "backend/package.json")
        );
        std::fs::write(dir.path().join(".node-version"), "24\n").unwrap();
        let found = read(&fs).unwrap();
        assert_eq!(
            (found.wanted.as_str(), found.file.as_str()),
            ("24", ".node-version")
        );
        std::fs::write(dir.path().join("backend/.nvmrc"), "v22\n").unwrap();
        assert_eq!(read(&fs).unwrap().file, "backend/.nvmrc");
    }

    #[test]
    fn a_version_file_must_fit_engines() {
        let dir = crate::testing::tree(&[
            ("package.json", r#"{"engines": {"node": ">=18 <21"}}"#),
            (".nvmrc", "v21.1.0\n"),
        ]);
        let fs = RepoFs::new(dir.path()).unwrap();
        let package = fs.package_json(Path::new("")).unwrap().unwrap();
        let error = node_requirement(&fs, Path::new(""), &package, &mut Vec::new()).unwrap_err();
        assert_eq!(error.code(), "node_version_conflict");
        std::fs::write(dir.path().join(".nvmrc"), "20\n").unwrap();
        let found = node_requirement(&fs, Path::new(""), &package, &mut Vec::new()).unwrap();
        assert_eq!(found.map(|f| f.wanted), Some("20".to_owned()));
    }
}
