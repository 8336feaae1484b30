//! How the agent's system log begins and ends a build step. The agent writes
//! these lines and the dashboard's outline reads them back, so both sides share
//! one spelling.

/// `Running \`npm ci\` (install).`; `label` is the step's name, prefixed with
/// `storefront: ` for the storefront's steps.
pub fn step_started_line(command: &str, label: &str) -> String {
    format!("Running `{command}` ({label}).")
}

/// `` `npm ci` (install) finished in 2.0s. ``
pub fn step_finished_line(command: &str, label: &str, took: &str) -> String {
    format!("`{command}` ({label}) finished in {took}.")
}

/// A system log line that begins or ends a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepLine<'a> {
    Started { command: &'a str, label: &'a str },
    Finished { command: &'a str, label: &'a str },
}

/// Reads a system log line's text (its time stamp already taken off).
pub fn parse_step_line(text: &str) -> Option<StepLine<'_>> {
    if let Some(rest) = text.strip_prefix("Running `") {
        let (command, label) = rest.rsplit_once("` (")?;
        let label = label.strip_suffix(").")?;
        return Some(StepLine::Started { command, label });
    }
    let rest = text.strip_prefix('`')?;
    let (head, _took) = rest.rsplit_once(") finished in ")?;
    let (command, label) = head.rsplit_once("` (")?;
    Some(StepLine::Finished { command, label })
}

/// The system log's line for a component's output reused from an earlier build:
/// `Reused the backend built by job job_… (…): its inputs are unchanged, …`.
pub fn reused_output_line(component: &str, job_id: &str, origin: &str, bytes: u64) -> String {
    format!("Reused the {component} built by job {job_id} ({origin}, {bytes} bytes): its inputs are unchanged, so it is not built again.")
}

/// The component and the job of a `reused_output_line`.
pub fn parse_reused_output_line(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix("Reused the ")?;
    let (component, rest) = rest.split_once(" built by job ")?;
    let (job_id, _) = rest.split_once(" (")?;
    Some((component, job_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lines_read_back_as_written() {
        let started = step_started_line("yarn install --immutable", "storefront: install");
        let finished =
            step_finished_line("yarn install --immutable", "storefront: install", "2.0s");
        assert_eq!(
            parse_step_line(&started),
            Some(StepLine::Started {
                command: "yarn install --immutable",
                label: "storefront: install"
            })
        );
        assert_eq!(
            parse_step_line(&finished),
            Some(StepLine::Finished {
                command: "yarn install --immutable",
                label: "storefront: install"
            })
        );
        // A command with backticks and parentheses of its own.
        let odd = step_finished_line("sh -c `a` (b)", "build", "1s");
        assert_eq!(
            parse_step_line(&odd),
            Some(StepLine::Finished {
                command: "sh -c `a` (b)",
                label: "build"
            })
        );
        assert_eq!(parse_step_line("Build failed after 5s"), None);
        let reused = reused_output_line("storefront", "job_1", "branch:main's cache, key 0a1b", 12);
        assert_eq!(
            parse_reused_output_line(&reused),
            Some(("storefront", "job_1"))
        );
        assert_eq!(parse_step_line("`npm ci` exited with code 1"), None);
    }
}
