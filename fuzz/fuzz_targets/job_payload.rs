//! A job payload as a control plane sends it: whatever the bytes, parsing and the
//! agent's check never panic, and a job the check lets through can only name
//! places inside the agent's own directories and cannot steer git.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;

fn stays_inside(relative: &str) -> bool {
    Path::new(relative)
        .components()
        .all(|part| matches!(part, Component::Normal(_) | Component::CurDir))
}

fuzz_target!(|data: &[u8]| {
    let Ok(job) = serde_json::from_slice::<kiln_protocol::Job>(data) else {
        return;
    };
    for allow_local in [false, true] {
        if kiln_protocol::validate::job(&job, allow_local).is_err() {
            continue;
        }
        // Ids become directory names under work_dir and the spool.
        let work = Path::new("/var/lib/kiln-agent/work");
        assert_eq!(work.join(&job.job_id).parent(), Some(work), "{}", job.job_id);
        assert!(stays_inside(&job.backend_path), "{}", job.backend_path);
        if let Some(path) = &job.storefront_path {
            assert!(stays_inside(path), "{path}");
        }
        // git reads neither as an option.
        assert!(!job.repository_url.starts_with('-'));
        assert!(!job.commit_sha.starts_with('-'));
        assert!(!job.repository_url.contains("::"));
        if !allow_local {
            assert!(!job.repository_url.starts_with("file:") && !job.repository_url.starts_with('/'));
        }
        // The token travels in an HTTP header it must not end.
        if let Some(token) = &job.repository_token {
            assert!(!token.contains(['\r', '\n']));
        }
    }
});
