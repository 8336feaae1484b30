//! What the agent tells the control plane of its build host, at registration
//! and with its claims: cores, memory, the Docker engine, free disk under
//! `work_dir`. Best effort: what cannot be read is left at zero or empty.

use std::path::Path;

use kiln_protocol::HostFacts;

fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

/// The host now; `docker_version` is what the engine said, if it was asked.
pub fn collect(work_dir: &Path, docker_version: Option<String>) -> HostFacts {
    HostFacts {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get() as u32),
        memory_bytes: memory_bytes(),
        docker_version: docker_version.unwrap_or_default(),
        free_disk_bytes: crate::disk::free(work_dir).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_linux_host_has_cores_memory_and_disk() {
        let facts = super::collect(Path::new("/"), None);
        assert!(facts.cores >= 1 && facts.memory_bytes > 0 && facts.free_disk_bytes > 0);
    }

    use std::path::Path;
}
