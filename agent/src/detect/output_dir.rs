//! Where a storefront's build writes its output: from the framework's config where
//! it can be set there (`distDir`, `outDir`, `outputDir`, Angular's `outputPath`),
//! else the framework's default. Config files are read as text, not run: a literal
//! setting is found, a computed one is not.

use std::path::Path;

use serde_json::Value;

use super::frameworks::{config_file, Framework};
use super::DetectError;
use crate::package_manager::Warning;
use crate::repo_fs::{is_inside_relative, join, RepoFs, RepoFsError, CONFIG_LIMIT, JSON_LIMIT};

/// The first quoted string after `key` in a config file: enough for the literal
/// settings people write (`outDir: 'build'`, `distDir: "out"`).
pub(super) fn config_string(text: &str, key: &str) -> Option<String> {
    let at = text.find(key)?;
    let rest = &text[at + key.len()..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')
        .or_else(|| rest.trim_start().strip_prefix('='))?
        .trim_start();
    let quote = rest
        .chars()
        .next()
        .filter(|c| matches!(c, '"' | '\'' | '`'))?;
    let end = rest[1..].find(quote)?;
    Some(rest[1..1 + end].to_owned())
}

/// `(value, file)` of `key` in the framework config `stem.*` of `dir`.
fn from_config(
    fs: &RepoFs,
    dir: &Path,
    stem: &str,
    key: &str,
) -> Result<Option<(String, String)>, RepoFsError> {
    let Some(path) = config_file(fs, dir, stem) else {
        return Ok(None);
    };
    let Some(text) = fs.read(&path, CONFIG_LIMIT)? else {
        return Ok(None);
    };
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    Ok(config_string(&text, key).map(|value| (value, file.into_owned())))
}

fn angular_output(fs: &RepoFs, dir: &Path) -> Result<Option<(String, String)>, RepoFsError> {
    let Some(text) = fs.read(&join(dir, Path::new("angular.json")), JSON_LIMIT)? else {
        return Ok(None);
    };
    let Ok(angular) = serde_json::from_str::<Value>(&text) else {
        return Ok(None);
    };
    let output = (|| {
        let projects = angular.get("projects")?.as_object()?;
        let name = angular
            .get("defaultProject")
            .and_then(Value::as_str)
            .or_else(|| projects.keys().next().map(String::as_str))?;
        let build = projects.get(name)?.pointer("/architect/build")?;
        // The application builder (esbuild) writes the browser bundle one level down.
        let application = build
            .get("builder")
            .and_then(Value::as_str)
            .is_some_and(|builder| builder.ends_with(":application"));
        let output = build.pointer("/options/outputPath");
        let base = match output {
            Some(Value::String(path)) => path.clone(),
            Some(object) => object.get("base")?.as_str()?.to_owned(),
            None if application => format!("dist/{name}"),
            None => return None,
        };
        if !application {
            return Some(base);
        }
        let browser = output
            .and_then(|object| object.get("browser"))
            .and_then(Value::as_str)
            .unwrap_or("browser");
        Some(if browser.is_empty() {
            base
        } else {
            format!("{}/{browser}", base.trim_end_matches('/'))
        })
    })();
    Ok(output.map(|out| (out, "angular.json".to_owned())))
}

/// The output directory, relative to the app's directory.
pub(super) fn output_dir(
    fs: &RepoFs,
    framework: Framework,
    dir: &Path,
    reasons: &mut Vec<String>,
    warnings: &mut Vec<Warning>,
) -> Result<String, DetectError> {
    let configured = match framework {
        Framework::Nextjs => match config_file(fs, dir, "next.config") {
            Some(path) => {
                let text = fs.read(&path, CONFIG_LIMIT)?.unwrap_or_default();
                let file = path.file_name().unwrap_or_default().to_string_lossy();
                if config_string(&text, "output").as_deref() == Some("export") {
                    Some(("out".to_owned(), file.into_owned()))
                } else {
                    config_string(&text, "distDir").map(|dist| (dist, file.into_owned()))
                }
            }
            None => None,
        },
        Framework::Vite | Framework::Sveltekit | Framework::Remix | Framework::ReactRouter => {
            from_config(fs, dir, "vite.config", "outDir")?
        }
        Framework::Astro => from_config(fs, dir, "astro.config", "outDir")?,
        Framework::VueCli => from_config(fs, dir, "vue.config", "outputDir")?,
        Framework::Angular => angular_output(fs, dir)?,
        _ => None,
    };
    if let Some((out, file)) = configured {
        let out = out.trim_start_matches("./").to_owned();
        // The output is packed from the host: it must stay inside the app.
        if out.is_empty() || !is_inside_relative(Path::new(&out)) {
            return Err(DetectError::UnsafeOutputDir {
                dir: crate::repo_fs::shown(dir),
                output: out,
                file,
            });
        }
        reasons.push(format!("output {out}: set in {file}"));
        return Ok(out);
    }
    if framework == Framework::Sveltekit {
        warnings.push(Warning {
            code: "unknown_output_dir",
            message: "SvelteKit's output depends on its adapter; assuming .svelte-kit/output"
                .to_owned(),
        });
    }
    let default = framework.default_output(fs, dir).to_owned();
    reasons.push(format!("output {default}: {}'s default", framework.slug()));
    Ok(default)
}
