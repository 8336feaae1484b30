//! The Node version a storefront asks for (`.nvmrc`, `.node-version`,
//! `engines.node`) and the one judgement made of it, in Rust with npm's range
//! rules: does a given Node version satisfy it.
//!
//! A version file pins a developer's exact Node; the build image carries one Node
//! per major, so a version file is held to its major (`20.11.1` asks for `20.x`).
//! `engines.node` is a range and is judged as npm judges it.

use std::fmt;
use std::path::Path;

use node_semver::{Range, Version};
use serde_json::Value;

use super::DetectError;
use crate::repo_fs::{join, shown, RepoFs, RepoFsError, VERSION_FILE_LIMIT};

/// What a storefront asks of Node, and where it says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRequirement {
    /// As written, without a leading `v`: `20.11.1`, `lts/iron`, `>=20`.
    pub wanted: String,
    /// `.nvmrc`, `.node-version` or `engines.node`.
    pub source: String,
}

impl fmt::Display for NodeRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.wanted, self.source)
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

    /// The versions that satisfy it; `None` when nothing particular is asked (or
    /// the range is not one npm would read either).
    fn range(&self) -> Option<Range> {
        if self.is_version_file() {
            return file_major(&self.wanted)
                .and_then(|major| Range::parse(format!("{major}.x")).ok());
        }
        Range::parse(&self.wanted).ok()
    }

    /// Whether Node `have` satisfies it; the error says both and what to do.
    pub fn judge(&self, have: &Version) -> Result<(), String> {
        match self.range() {
            Some(range) if !range.satisfies(have) => Err(format!(
                "this storefront asks for Node {} in {}, but the build image has Node {have}; use a build image with that Node, or change {}",
                self.wanted, self.source, self.source
            )),
            _ => Ok(()),
        }
    }
}

/// Node version wanted: `.nvmrc` / `.node-version` (in the app, then the root), and
/// `engines.node`; a file that contradicts engines is an error.
pub(super) fn node_requirement(
    fs: &RepoFs,
    app: &Path,
    package: &Value,
    reasons: &mut Vec<String>,
) -> Result<Option<NodeRequirement>, DetectError> {
    let engines = package
        .pointer("/engines/node")
        .and_then(Value::as_str)
        .map(|range| NodeRequirement {
            wanted: range.trim().to_owned(),
            source: "engines.node".to_owned(),
        });
    let mut file = None;
    'dirs: for dir in [app, Path::new("")] {
        for name in [".nvmrc", ".node-version"] {
            let text = fs.read(&join(dir, Path::new(name)), VERSION_FILE_LIMIT)?;
            let version = text.as_deref().unwrap_or_default().trim();
            let version = version.strip_prefix('v').unwrap_or(version);
            if !version.is_empty() {
                file = Some(NodeRequirement {
                    wanted: version.to_owned(),
                    source: name.to_owned(),
                });
                break 'dirs;
            }
        }
    }
    match (file, engines) {
        (Some(file), engines) => {
            if let (Some(engines), Some(major)) = (&engines, file_major(&file.wanted)) {
                let allows_major = match (engines.range(), Range::parse(format!("{major}.x"))) {
                    (Some(engines), Ok(major)) => engines.allows_any(&major),
                    _ => true,
                };
                if !allows_major {
                    return Err(DetectError::NodeVersionConflict {
                        dir: shown(app),
                        file: file.wanted,
                        source_file: file.source,
                        engines: engines.wanted.clone(),
                    });
                }
            }
            reasons.push(format!("node {}: {}", file.wanted, file.source));
            Ok(Some(file))
        }
        (None, Some(engines)) => {
            reasons.push(format!("node {}: engines.node", engines.wanted));
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
        }
    }

    fn engines(wanted: &str) -> NodeRequirement {
        NodeRequirement {
            wanted: wanted.to_owned(),
            source: "engines.node".to_owned(),
        }
    }

    fn version(text: &str) -> Version {
        text.parse().unwrap()
    }

    #[test]
    fn version_files_are_held_to_their_major() {
        assert!(file("20.11.1").judge(&version("20.20.2")).is_ok());
        assert!(file("20").judge(&version("20.0.0")).is_ok());
        assert!(file("lts/iron").judge(&version("20.20.2")).is_ok());
        assert!(file("lts/*").judge(&version("18.0.0")).is_ok());
        let error = file("22.1.0").judge(&version("20.20.2")).unwrap_err();
        assert_eq!(
            error,
            "this storefront asks for Node 22.1.0 in .nvmrc, but the build image has Node 20.20.2; use a build image with that Node, or change .nvmrc"
        );
    }

    #[test]
    fn engines_ranges_are_judged_as_npm_does() {
        let have = version("20.20.2");
        assert!(engines(">20.1").judge(&have).is_ok());
        assert!(engines(">=18 <21").judge(&have).is_ok());
        assert!(engines("^20 || ^22").judge(&have).is_ok());
        assert!(engines("20.x").judge(&have).is_ok());
        assert!(engines(">=22").judge(&have).is_err());
        assert!(engines("^18").judge(&have).is_err());
        assert!(engines("not a range").judge(&have).is_ok());
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
        assert_eq!(found, Some(file("20")));
    }
}
