//! The storefront frameworks Kiln knows, in precedence order, each with the
//! dependency that marks it, the command that builds it and its default output;
//! and the rule that picks one for a package.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::repo_fs::RepoFs;

/// The storefront frameworks, in precedence order: the first whose signals match
/// wins, so meta-frameworks come before the bundlers they are built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framework {
    Hydrogen,
    ReactRouter,
    Remix,
    Nextjs,
    Gatsby,
    Nuxt,
    Sveltekit,
    Astro,
    Solidstart,
    Qwik,
    Docusaurus,
    Expo,
    Angular,
    VueCli,
    CreateReactApp,
    Vitepress,
    Vite,
    Storybook,
}

pub(super) struct Rule {
    pub framework: Framework,
    pub slug: &'static str,
    /// Any of these dependencies marks the framework.
    pub dependencies: &'static [&'static str],
    pub command: &'static [&'static str],
    /// Output directory when its config does not say otherwise.
    pub output: &'static str,
}

pub(super) const RULES: &[Rule] = &[
    Rule {
        framework: Framework::Hydrogen,
        slug: "hydrogen",
        dependencies: &["@shopify/hydrogen"],
        command: &["shopify", "hydrogen", "build"],
        output: "dist",
    },
    Rule {
        framework: Framework::ReactRouter,
        slug: "react-router",
        dependencies: &["@react-router/dev"],
        command: &["react-router", "build"],
        // Framework mode: the client here, the server in build/server.
        output: "build/client",
    },
    Rule {
        framework: Framework::Remix,
        slug: "remix",
        dependencies: &["@remix-run/dev"],
        command: &["remix", "build"],
        output: "build",
    },
    Rule {
        framework: Framework::Nextjs,
        slug: "nextjs",
        dependencies: &["next"],
        command: &["next", "build"],
        output: ".next",
    },
    Rule {
        framework: Framework::Gatsby,
        slug: "gatsby",
        dependencies: &["gatsby"],
        command: &["gatsby", "build"],
        output: "public",
    },
    Rule {
        framework: Framework::Nuxt,
        slug: "nuxt",
        dependencies: &["nuxt", "nuxt3"],
        command: &["nuxt", "build"],
        output: ".output",
    },
    Rule {
        framework: Framework::Sveltekit,
        slug: "sveltekit",
        dependencies: &["@sveltejs/kit"],
        command: &["vite", "build"],
        output: ".svelte-kit/output",
    },
    Rule {
        framework: Framework::Astro,
        slug: "astro",
        dependencies: &["astro"],
        command: &["astro", "build"],
        output: "dist",
    },
    Rule {
        framework: Framework::Solidstart,
        slug: "solidstart",
        dependencies: &["@solidjs/start"],
        command: &["vinxi", "build"],
        output: ".output",
    },
    Rule {
        framework: Framework::Qwik,
        slug: "qwik",
        dependencies: &["@builder.io/qwik-city", "@builder.io/qwik"],
        command: &["qwik", "build"],
        output: "dist",
    },
    Rule {
        framework: Framework::Docusaurus,
        slug: "docusaurus",
        dependencies: &["@docusaurus/core"],
        command: &["docusaurus", "build"],
        output: "build",
    },
    Rule {
        framework: Framework::Expo,
        slug: "expo",
        dependencies: &["expo"],
        command: &["expo", "export", "--platform", "web"],
        output: "dist",
    },
    Rule {
        framework: Framework::Angular,
        slug: "angular",
        dependencies: &["@angular/core"],
        command: &["ng", "build"],
        output: "dist",
    },
    Rule {
        framework: Framework::VueCli,
        slug: "vue-cli",
        dependencies: &["@vue/cli-service"],
        command: &["vue-cli-service", "build"],
        output: "dist",
    },
    Rule {
        framework: Framework::CreateReactApp,
        slug: "create-react-app",
        dependencies: &["react-scripts"],
        command: &["react-scripts", "build"],
        output: "build",
    },
    Rule {
        framework: Framework::Vitepress,
        slug: "vitepress",
        dependencies: &["vitepress"],
        command: &["vitepress", "build"],
        output: ".vitepress/dist",
    },
    Rule {
        framework: Framework::Vite,
        slug: "vite",
        dependencies: &["vite"],
        command: &["vite", "build"],
        output: "dist",
    },
    Rule {
        framework: Framework::Storybook,
        slug: "storybook",
        dependencies: &["storybook", "@storybook/react", "@storybook/vue3"],
        command: &["storybook", "build"],
        output: "storybook-static",
    },
];

impl Framework {
    pub(super) fn rule(self) -> &'static Rule {
        RULES
            .iter()
            .find(|rule| rule.framework == self)
            .expect("every framework has a rule")
    }

    pub fn slug(self) -> &'static str {
        self.rule().slug
    }

    /// A documentation site's framework: never taken for the storefront unasked.
    pub(super) fn is_docs(self) -> bool {
        matches!(
            self,
            Framework::Docusaurus | Framework::Vitepress | Framework::Storybook
        )
    }

    /// Remix on Vite builds with `remix vite:build` (its classic compiler with
    /// `remix build`).
    pub(super) fn on_vite(self, fs: &RepoFs, dir: &Path) -> bool {
        self == Framework::Remix && config_file(fs, dir, "vite.config").is_some()
    }

    /// The command that builds a storefront of this framework in `dir`.
    pub(super) fn command(self, fs: &RepoFs, dir: &Path) -> &'static [&'static str] {
        if self.on_vite(fs, dir) {
            return &["remix", "vite:build"];
        }
        self.rule().command
    }

    /// Where its build writes when the config does not say otherwise.
    pub(super) fn default_output(self, fs: &RepoFs, dir: &Path) -> &'static str {
        if self.on_vite(fs, dir) {
            return "build/client";
        }
        self.rule().output
    }
}

/// Every dependency a package declares, of any kind.
pub(super) fn dependencies(package: &Value) -> impl Iterator<Item = &str> {
    ["dependencies", "devDependencies", "peerDependencies"]
        .into_iter()
        .filter_map(|key| package.get(key).and_then(Value::as_object))
        .flat_map(|deps| deps.keys().map(String::as_str))
}

/// The first `stem.{js,ts,mjs,cjs,mts}` that is a file in `dir`.
pub(super) fn config_file(fs: &RepoFs, dir: &Path, stem: &str) -> Option<std::path::PathBuf> {
    ["js", "ts", "mjs", "cjs", "mts"]
        .iter()
        .map(|ext| crate::repo_fs::join(dir, Path::new(&format!("{stem}.{ext}"))))
        .find(|path| fs.is_file(path))
}

/// Which framework `package` (in `dir`) uses, and the signal.
pub(super) fn framework_of(
    fs: &RepoFs,
    dir: &Path,
    package: &Value,
) -> Option<(Framework, String)> {
    let deps: Vec<&str> = dependencies(package).collect();
    for rule in RULES {
        let Some(dep) = rule.dependencies.iter().find(|dep| deps.contains(dep)) else {
            continue;
        };
        // Storybook's own builder depends on vite; a Vite app has a vite config.
        if rule.framework == Framework::Vite
            && config_file(fs, dir, "vite.config").is_none()
            && deps
                .iter()
                .any(|d| d.starts_with("@storybook/") || *d == "storybook")
        {
            continue;
        }
        return Some((rule.framework, format!("dependency `{dep}`")));
    }
    None
}

/// The framework of an Nx app (a `project.json`, no `package.json` of its own), by
/// its build target's executor, else by the config files in its directory.
pub(super) fn nx_framework(fs: &RepoFs, dir: &Path) -> Option<(Framework, String)> {
    let project: Value = fs
        .read(
            &crate::repo_fs::join(dir, Path::new("project.json")),
            crate::repo_fs::JSON_LIMIT,
        )
        .ok()
        .flatten()
        .and_then(|text| serde_json::from_str(&text).ok())?;
    let executor = project
        .pointer("/targets/build/executor")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let by_executor = [
        ("next:", Framework::Nextjs),
        ("remix:", Framework::Remix),
        ("vite:", Framework::Vite),
        ("angular:", Framework::Angular),
        ("build-angular:", Framework::Angular),
        ("@angular/build:", Framework::Angular),
    ];
    if let Some((_, framework)) = by_executor
        .iter()
        .find(|(marker, _)| executor.contains(marker))
    {
        return Some((*framework, format!("Nx executor `{executor}`")));
    }
    let by_config = [
        ("next.config", Framework::Nextjs),
        ("vite.config", Framework::Vite),
        ("astro.config", Framework::Astro),
    ];
    by_config
        .iter()
        .find(|(stem, _)| config_file(fs, dir, stem).is_some())
        .map(|(stem, framework)| (*framework, format!("file `{stem}.*` in an Nx app")))
}

/// Dependencies that make a package look like a web frontend, framework or not.
const FRONTEND_SIGNS: &[&str] = &[
    "react",
    "react-dom",
    "vue",
    "svelte",
    "solid-js",
    "preact",
    "@medusajs/js-sdk",
];

/// Whether a package looks like a web frontend (for saying "no framework Kiln
/// knows" rather than "no storefront"): it is named one, depends on a UI
/// library, or is an app with a `build` script. A library (an entry point for
/// other packages, or a package under `packages/`) is not an app.
pub(super) fn looks_like_frontend(dir: &Path, package: &Value) -> bool {
    let library = ["main", "module", "exports", "types", "bin"]
        .iter()
        .any(|entry| package.get(entry).is_some())
        || dir.starts_with("packages");
    let built_app = !library && package.pointer("/scripts/build").is_some();
    named_storefront(dir, package)
        || built_app
        || dependencies(package).any(|dep| FRONTEND_SIGNS.contains(&dep))
}

/// A storefront by its name: the folder or the package says so.
pub(super) fn named_storefront(dir: &Path, package: &Value) -> bool {
    let folder = dir
        .file_name()
        .map(|name| name.to_string_lossy().to_ascii_lowercase());
    let name = package
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    [folder, name]
        .into_iter()
        .flatten()
        .any(|name| name.contains("storefront"))
}

/// Whether the package is a Vite library (`build.lib`, or an `exports`/`main`
/// entry and no `index.html`), which is built for other packages, not deployed.
pub(super) fn is_vite_library(fs: &RepoFs, dir: &Path, package: &Value) -> bool {
    let config = config_file(fs, dir, "vite.config")
        .and_then(|path| fs.read(&path, crate::repo_fs::CONFIG_LIMIT).ok().flatten())
        .unwrap_or_default();
    let lib_in_config = config
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|word| word == "lib");
    let entry_points = package.get("exports").is_some() || package.get("main").is_some();
    let page = fs.is_file(&crate::repo_fs::join(dir, Path::new("index.html")));
    lib_in_config || (entry_points && !page)
}

/// Every framework's slug, for messages that say what was looked for.
pub(super) fn known() -> String {
    RULES
        .iter()
        .map(|rule| rule.slug)
        .collect::<Vec<_>>()
        .join(", ")
}
