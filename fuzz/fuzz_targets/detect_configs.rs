//! The files detection reads on the build host, written by a repository: whatever
//! they hold, detection never panics, never hangs, and the output directory it
//! settles on stays inside the storefront.
#![no_main]

use std::path::{Component, Path};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Repository {
    root_package: String,
    storefront_package: String,
    next_config: String,
    vite_config: String,
    angular: String,
    nvmrc: String,
    pnpm_workspace: String,
    yarnrc: String,
    yarn_lock: String,
    app_package: String,
}

fuzz_target!(|repository: Repository| {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let files = [
        ("package.json", &repository.root_package),
        ("storefront/package.json", &repository.storefront_package),
        ("storefront/next.config.js", &repository.next_config),
        ("storefront/vite.config.ts", &repository.vite_config),
        ("storefront/angular.json", &repository.angular),
        ("storefront/.nvmrc", &repository.nvmrc),
        ("pnpm-workspace.yaml", &repository.pnpm_workspace),
        (".yarnrc.yml", &repository.yarnrc),
        ("yarn.lock", &repository.yarn_lock),
        ("apps/web/package.json", &repository.app_package),
    ];
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    for storefront in [None, Some("storefront")] {
        let Ok(found) = kiln_agent::fuzzing::detect(root, None, storefront) else {
            continue;
        };
        let output = found.output_dir.unwrap_or_default();
        let inside = Path::new(&output)
            .components()
            .all(|part| matches!(part, Component::Normal(_) | Component::CurDir));
        assert!(inside && !output.is_empty(), "output {output:?} leaves the app");
        assert!(!Path::new(&found.app_dir).is_absolute());
    }
});
