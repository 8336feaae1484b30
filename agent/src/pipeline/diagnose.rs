//! What a failed step's output says went wrong, for the commonest real causes:
//! the fix, and the line of the log that shows the cause. The deployment's reason
//! leads with the fix (a commit status shows its first 140 characters). The
//! README's "Failures that say the fix" table lists these.

use std::sync::LazyLock;

use regex::Regex;

use crate::config::Network;

/// What the diagnosis knows of the step besides its output.
pub(super) struct StepContext<'a> {
    pub network: Network,
    /// The package manager release the build provides (`yarn@4.9.2`).
    pub release: Option<String>,
    /// The Node the step ran with (`20.20.2`), when known.
    pub node: Option<&'a str>,
    /// The names of the job's variables.
    pub variables: Vec<&'a str>,
    /// The agent's memory limit per container, as the README writes it.
    pub memory: String,
}

/// A cause recognised: what to do, and the log line that shows it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Diagnosis {
    pub fix: String,
    pub line: Option<String>,
}

/// Failures whose output says plainly what they are, and what fixes them.
const KNOWN_FAILURES: &[(&[&str], &str)] = &[
    (
        &["No compatible signature found in package metadata", "Cannot find matching keyid"],
        "corepack in the build image could not verify the package manager's signature (the registry, or a proxy before it, serves none, or corepack's keys are out of date); call the package manager directly in scripts (Kiln provides the release package.json's packageManager names, on PATH) rather than through corepack, or use a build image with a newer corepack",
    ),
    (
        &["SELF_SIGNED_CERT_IN_CHAIN", "UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "unable to get local issuer certificate"],
        "TLS to the package registry failed on a certificate the build does not trust (a TLS-inspecting proxy?); set the agent's extra_ca_certs to the host's CA bundle",
    ),
    (
        &["can only install packages when your package.json and package-lock.json", "ERR_PNPM_OUTDATED_LOCKFILE", "The lockfile would have been modified by this install", "Your lockfile needs to be updated"],
        "package.json and the lockfile disagree; run the install locally and commit the updated lockfile",
    ),
];

/// The first line of `output` that holds `sign`, trimmed and capped.
fn line_with(output: &str, sign: &str) -> Option<String> {
    output
        .lines()
        .find(|line| line.contains(sign))
        .map(|line| shorten(line.trim()))
}

fn shorten(line: &str) -> String {
    const MAX: usize = 300;
    if line.chars().count() <= MAX {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(MAX - 1).collect();
    cut.push('…');
    cut
}

/// What a failed step's output says went wrong, where it says so plainly.
pub(super) fn diagnose(output: &str, context: &StepContext) -> Option<Diagnosis> {
    let found = lockfile_of_another_release(output, context)
        .or_else(|| unavailable_package(output))
        .or_else(|| missing_variable(output, context))
        .or_else(|| heap_exhausted(output, context))
        .or_else(|| engine_ruled_out(output, context));
    if found.is_some() {
        return found;
    }
    if let Some((signs, what)) = KNOWN_FAILURES
        .iter()
        .find(|(signs, _)| signs.iter().any(|sign| output.contains(sign)))
    {
        let line = signs.iter().find_map(|sign| line_with(output, sign));
        return Some(Diagnosis {
            fix: (*what).to_owned(),
            line,
        });
    }
    let offline = ["EAI_AGAIN", "ENOTFOUND", "getaddrinfo", "ENETUNREACH"];
    if context.network == Network::None {
        if let Some(line) = offline.iter().find_map(|sign| line_with(output, sign)) {
            return Some(Diagnosis {
                fix: "the step reached for the network but runs with none (install_network or build_network = \"none\"); set it to \"bridge\"".to_owned(),
                line: Some(line),
            });
        }
    }
    None
}

/// Yarn's YN0028 where the only lines that change are the hashes of Yarn's
/// built-in patches: the lockfile is fine, but another Yarn wrote it.
fn lockfile_of_another_release(output: &str, context: &StepContext) -> Option<Diagnosis> {
    let changed: Vec<&str> = output
        .lines()
        .filter(|line| line.contains("YN0028"))
        .filter(|line| {
            let after = line.split('│').nth(1).unwrap_or("").trim_start();
            after.starts_with("- ") || after.starts_with("+ ")
        })
        .collect();
    if changed.is_empty() || !changed.iter().all(|line| line.contains("builtin<compat/")) {
        return None;
    }
    let release = context
        .release
        .clone()
        .filter(|release| release.starts_with("yarn@"))
        .unwrap_or_else(|| "the Yarn package.json's packageManager names".to_owned());
    let version = release.trim_start_matches("yarn@");
    Some(Diagnosis {
        fix: format!(
            "yarn.lock was written by another Yarn than {release}: only the hashes of Yarn's built-in patches differ; regenerate it with that Yarn (`corepack use yarn@{version}`, or `yarn set version {version}` then `yarn install`) and commit yarn.lock"
        ),
        line: changed.first().map(|line| shorten(line.trim())),
    })
}

static REGISTRY_URL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:GET|fetch(?:ing)?)?\s*(https?://([^/\s]+)/[^\s:]*?([^/\s:]+?)(?:/-/[^\s:]*)?)(?::|\s|$)")
        .expect("registry URL pattern")
});
static NOT_IN_REGISTRY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"'?(@?[a-z0-9][\w.-]*(?:/[\w.-]+)?)@[^\s']*'? is not in (?:this|the npm) registry"#,
    )
    .expect("not-in-registry pattern")
});
static YARN_PACKAGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(@?[a-z0-9][\w.-]*(?:/[\w.-]+)?)@npm:").expect("yarn package pattern")
});

/// The HTTP status a registry answered a package fetch with, as each package
/// manager prints it.
fn registry_status(output: &str) -> Option<(u16, String)> {
    let signs: &[(&str, u16)] = &[
        ("ERR_PNPM_FETCH_404", 404),
        ("ERR_PNPM_FETCH_401", 401),
        ("ERR_PNPM_FETCH_403", 403),
        ("npm error code E404", 404),
        ("npm ERR! code E404", 404),
        ("npm error code E401", 401),
        ("npm ERR! code E401", 401),
        ("npm error code E403", 403),
        ("npm ERR! code E403", 403),
        ("Response Code: 404", 404),
        ("Response Code: 401", 401),
        ("Response Code: 403", 403),
        ("Invalid authentication", 401),
        ("Request failed \"404 Not Found\"", 404),
        ("Request failed \"401 Unauthorized\"", 401),
        ("Request failed \"403 Forbidden\"", 403),
    ];
    signs
        .iter()
        .find_map(|(sign, status)| line_with(output, sign).map(|line| (*status, line)))
}

/// The package name in a registry URL path (`@acme%2fui` → `@acme/ui`).
fn package_of_url(url: &str) -> Option<String> {
    let path = url.split_once("://")?.1.split_once('/')?.1;
    let path = path.split("/-/").next()?;
    let decoded = path.replace("%2f", "/").replace("%2F", "/");
    let name = decoded.trim_end_matches('/');
    (!name.is_empty()).then(|| name.to_owned())
}

/// A package the registry answered 404, 401 or 403 for: private (then how to
/// give the build access) or gone.
fn unavailable_package(output: &str) -> Option<Diagnosis> {
    let (status, status_line) = registry_status(output)?;
    let url = REGISTRY_URL
        .captures_iter(output)
        .filter_map(|captures| captures.get(1).map(|m| m.as_str().to_owned()))
        .find(|url| package_of_url(url).is_some());
    let package = NOT_IN_REGISTRY
        .captures(output)
        .and_then(|captures| captures.get(1))
        .map(|m| m.as_str().to_owned())
        .or_else(|| url.as_deref().and_then(package_of_url))
        .or_else(|| {
            YARN_PACKAGE
                .captures(output)
                .and_then(|captures| captures.get(1))
                .map(|m| m.as_str().to_owned())
        })?;
    let host = url
        .as_deref()
        .and_then(|url| url.split_once("://"))
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or("registry.npmjs.org")
        .to_owned();
    let public_registry = matches!(host.as_str(), "registry.npmjs.org" | "registry.yarnpkg.com");
    let scope = package
        .strip_prefix('@')
        .and_then(|rest| rest.split('/').next())
        .map(|scope| format!("@{scope}"));
    let private = status != 404 || !public_registry || scope.is_some();
    let fix = if private {
        let scope_line = scope
            .as_deref()
            .map(|scope| format!("`{scope}:registry=https://{host}/` and "))
            .unwrap_or_default();
        format!(
            "the registry answered {status} for {package}, which looks private: give the build access with an .npmrc in the repository ({scope_line}`//{host}/:_authToken=${{NPM_TOKEN}}`; Yarn 2+ reads npmScopes in .yarnrc.yml) and add NPM_TOKEN as a secret build variable of the environment"
        )
    } else {
        format!(
            "the registry answered 404 for {package}: it is not published there (unpublished, or a misspelled name or version); correct it in package.json and update the lockfile"
        )
    };
    Some(Diagnosis {
        fix,
        line: Some(status_line),
    })
}

static MISSING_VARIABLE: LazyLock<[Regex; 3]> = LazyLock::new(|| {
    [
        r#"(?i)environment variable (?:for )?["'`]?([A-Z][A-Z0-9_]{1,63})["'`]? (?:is )?(?:not set|not defined|missing|required|undefined)"#,
        r#"(?i)missing (?:required )?(?:environment|env) variables?:?\s+["'`]?([A-Z][A-Z0-9_]{1,63})"#,
        r#"\b([A-Z][A-Z0-9]*_[A-Z0-9_]{1,62}) (?:is not set|must be set|is required|is not defined)\b"#,
    ]
    .map(|pattern| Regex::new(pattern).expect("missing variable pattern"))
});

/// A build that needs a variable it does not have (Medusa configs throw
/// "Environment variable for DATABASE_URL is not set" at load).
fn missing_variable(output: &str, context: &StepContext) -> Option<Diagnosis> {
    output.lines().find_map(|line| {
        let name = MISSING_VARIABLE
            .iter()
            .find_map(|pattern| pattern.captures(line))?
            .get(1)?
            .as_str();
        if context.variables.contains(&name) {
            return None;
        }
        Some(Diagnosis {
            fix: format!(
                "the build needs the variable {name}, which its environment does not have; add {name} to the environment's variables (PUT /api/v1/environments/{{id}}/variables, \"secret\": true for a credential; a build-time placeholder is enough where only the config reads it), then redeploy"
            ),
            line: Some(shorten(line.trim())),
        })
    })
}

/// Node's own heap limit, reached below the container's.
fn heap_exhausted(output: &str, context: &StepContext) -> Option<Diagnosis> {
    let line = line_with(output, "JavaScript heap out of memory")
        .or_else(|| line_with(output, "Reached heap limit"))?;
    Some(Diagnosis {
        fix: format!(
            "Node's heap ran out before the container's memory did; add NODE_OPTIONS=--max-old-space-size=<MiB> as a build variable, below the agent's memory limit ({}), or raise that limit (`memory`)",
            context.memory
        ),
        line: Some(line),
    })
}

static ENGINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)(?:engine "node" is incompatible with this module\. Expected version "([^"]+)"|Unsupported engine for ([^:\s]+): wanted: \{"node":"([^"]+)"\}|Your Node version is incompatible with "([^"]+)"|Expected version: ([^\n]+?)\s*$)"#)
        .expect("engine pattern")
});

/// A dependency whose `engines` rules out the Node the build has.
fn engine_ruled_out(output: &str, context: &StepContext) -> Option<Diagnosis> {
    if ![
        "EBADENGINE",
        "ERR_PNPM_UNSUPPORTED_ENGINE",
        "is incompatible with this module",
        "Unsupported engine",
    ]
    .iter()
    .any(|sign| output.contains(sign))
    {
        return None;
    }
    let (line, wanted) = output.lines().find_map(|line| {
        let captures = ENGINE.captures(line)?;
        let wanted = [1, 3, 5]
            .iter()
            .find_map(|group| captures.get(*group))
            .map(|m| m.as_str().trim().to_owned());
        Some((shorten(line.trim()), wanted))
    })?;
    let node = context.node.unwrap_or("the build's");
    let wanted = wanted.unwrap_or_else(|| "another Node".to_owned());
    Some(Diagnosis {
        fix: format!(
            "a dependency needs Node {wanted}, and the build has Node {node}; ask for that Node in package.json's engines.node (or .nvmrc), and Kiln builds with it"
        ),
        line: Some(line),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> StepContext<'static> {
        StepContext {
            network: Network::Bridge,
            release: Some("yarn@4.9.2".to_owned()),
            node: Some("20.20.2"),
            variables: vec!["JWT_SECRET"],
            memory: "4 GiB".to_owned(),
        }
    }

    fn fix(output: &str) -> Diagnosis {
        diagnose(output, &context()).unwrap_or_else(|| panic!("no diagnosis of {output}"))
    }

    #[test]
    fn a_yarn_lockfile_of_another_release_names_the_release_to_use() {
        let output = "➤ YN0000: ┌ Post-resolution validation\n\
            ➤ YN0028: │ -   resolution: \"resolve@patch:resolve@npm%3A1.22.8#optional!builtin<compat/resolve>::version=1.22.8&hash=c3c19d\"\n\
            ➤ YN0028: │ +   resolution: \"resolve@patch:resolve@npm%3A1.22.8#optional!builtin<compat/resolve>::version=1.22.8&hash=4bbd0b\"\n\
            ➤ YN0028: │\n\
            ➤ YN0028: │ The lockfile would have been modified by this install, which is explicitly forbidden.\n";
        let found = fix(output);
        assert!(
            found
                .fix
                .starts_with("yarn.lock was written by another Yarn than yarn@4.9.2")
                && found.fix.contains("corepack use yarn@4.9.2"),
            "{found:?}"
        );
        assert!(found.line.unwrap().contains("hash=c3c19d"));
        // A real change to a dependency is the lockfile being out of date.
        let stale = output.replace("builtin<compat/resolve>", "");
        assert!(fix(&stale)
            .fix
            .starts_with("package.json and the lockfile disagree"));
    }

    #[test]
    fn a_package_the_registry_refuses_is_named_private_or_gone() {
        let npm_404 = "npm error code E404\nnpm error 404 Not Found - GET https://registry.npmjs.org/left-padd - Not found\nnpm error 404  'left-padd@^1.0.0' is not in this registry.\n";
        let found = fix(npm_404);
        assert!(
            found
                .fix
                .contains("answered 404 for left-padd: it is not published"),
            "{found:?}"
        );
        assert_eq!(found.line.as_deref(), Some("npm error code E404"));

        let pnpm_401 =
            " ERR_PNPM_FETCH_401  GET https://npm.pkg.github.com/@acme%2Fui: Unauthorized - 401\n";
        let found = fix(pnpm_401);
        assert!(
            found
                .fix
                .contains("answered 401 for @acme/ui, which looks private")
                && found
                    .fix
                    .contains("`@acme:registry=https://npm.pkg.github.com/`")
                && found.fix.contains("NPM_TOKEN as a secret build variable"),
            "{found:?}"
        );

        let yarn_scoped_404 = "➤ YN0035: │ @acme/theme@npm:^2.0.0: The remote server failed to provide the requested resource\n➤ YN0035: │   Response Code: 404 (Not Found)\n➤ YN0035: │   Request Method: GET\n➤ YN0035: │   Request URL: https://registry.yarnpkg.com/@acme%2ftheme\n";
        let found = fix(yarn_scoped_404);
        assert!(
            found
                .fix
                .contains("404 for @acme/theme, which looks private"),
            "{found:?}"
        );
    }

    #[test]
    fn a_missing_variable_is_named_with_how_to_add_it() {
        let output = "error:   Error in loading config: Environment variable for DATABASE_URL is not set\n    at loadConfig (/kiln/src/medusa-config.ts:4:11)\n";
        let found = fix(output);
        assert!(
            found
                .fix
                .starts_with("the build needs the variable DATABASE_URL")
                && found.fix.contains("/variables"),
            "{found:?}"
        );
        assert!(found.line.unwrap().contains("DATABASE_URL is not set"));
        // One the environment has is not the cause.
        assert_eq!(diagnose("Error: JWT_SECRET is not set", &context()), None);
        assert!(fix("Error: Missing environment variable: STRIPE_API_KEY")
            .fix
            .contains("STRIPE_API_KEY"));
    }

    #[test]
    fn a_heap_and_an_engine_say_what_to_raise_or_ask_for() {
        let heap = "<--- Last few GCs --->\nFATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory\n";
        assert!(fix(heap).fix.contains("NODE_OPTIONS=--max-old-space-size"));
        let engine = "error @medusajs/ui@4.0.0: The engine \"node\" is incompatible with this module. Expected version \">=22\". Got \"20.20.2\"\n";
        let found = fix(engine);
        assert!(
            found
                .fix
                .starts_with("a dependency needs Node >=22, and the build has Node 20.20.2")
                && found.fix.contains("engines.node"),
            "{found:?}"
        );
        let npm = "npm error code EBADENGINE\nnpm error notsup Unsupported engine for vite@7.0.0: wanted: {\"node\":\"^20.19.0 || >=22.12.0\"} (current: {\"node\":\"20.11.0\"})\n";
        assert!(fix(npm).fix.contains("needs Node ^20.19.0 || >=22.12.0"));
    }

    #[test]
    fn failures_that_say_what_they_are_are_named_with_their_fix() {
        let corepack =
            "Error: No compatible signature found in package metadata\n    at verifySignature";
        let found = fix(corepack);
        assert!(found.fix.contains("corepack"));
        assert_eq!(
            found.line.as_deref(),
            Some("Error: No compatible signature found in package metadata")
        );
        assert!(fix("npm error code SELF_SIGNED_CERT_IN_CHAIN")
            .fix
            .contains("extra_ca_certs"));
        let offline = "npm error request to https://registry.npmjs.org/x failed, reason: getaddrinfo EAI_AGAIN";
        let none = StepContext {
            network: Network::None,
            ..context()
        };
        assert!(diagnose(offline, &none).unwrap().fix.contains("\"bridge\""));
        assert_eq!(diagnose(offline, &context()), None);
    }

    #[test]
    fn plain_failures_have_no_diagnosis() {
        assert_eq!(
            diagnose("error TS2304: Cannot find name 'x'", &context()),
            None
        );
        assert_eq!(diagnose("Build failed on purpose\n", &context()), None);
    }
}
