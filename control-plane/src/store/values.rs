//! The values every table shares: ids, times, JSON lists, statuses read back,
//! and the checks of a field against `kiln_protocol::validate`.

use chrono::{DateTime, Utc};
use kiln_protocol::validate;
use kiln_protocol::{ComponentStatus, DeploymentStatus};

use crate::error::ApiError;

/// Refuses `field` when a `kiln_protocol::validate` check failed on its value.
pub(super) fn check<T>(field: &str, checked: Result<T, String>) -> Result<T, ApiError> {
    checked.map_err(|reason| ApiError::invalid_field(field, reason))
}

/// A single line of at most `max` bytes, not blank.
pub(super) fn check_name(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid_field(field, "must not be empty"));
    }
    check(field, validate::text(value, max, false))
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub(super) fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// `1.5 GiB`, for people.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn new_id(prefix: &str) -> String {
    // v7 ids sort by creation time, which keeps logs and listings readable.
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// The build cache's trust scopes of a deployment's builds, as GitHub
/// Actions scopes caches: the scope they write (and read first), and the ones
/// they may read after it. A long-lived environment's builds keep to
/// `branch:<name>`; a preview's write `pr:<n>` and read their base branch's.
pub(super) fn cache_scopes_of(
    branch: &str,
    pull_request: Option<i64>,
    base_branch: Option<&str>,
) -> (String, Vec<String>) {
    match pull_request {
        Some(number) => (
            format!("pr:{number}"),
            base_branch
                .map(|base| vec![format!("branch:{base}")])
                .unwrap_or_default(),
        ),
        None => (format!("branch:{branch}"), Vec::new()),
    }
}

pub(super) fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serialises")
}

pub(super) fn parse_status(text: &str) -> Result<DeploymentStatus, crate::db::sql::Error> {
    text.parse()
        .map_err(|e| crate::db::sql::Error::invalid(0, format!("{e}")))
}

pub(super) fn parse_component(text: &str) -> ComponentStatus {
    ComponentStatus::parse(text).unwrap_or(ComponentStatus::Pending)
}

/// Repository URLs as git hosts send them vary by a trailing slash or `.git`.
pub(super) fn normalize_repository(url: &str) -> String {
    kiln_protocol::validate::repository_key(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_urls_compare_loosely() {
        assert_eq!(
            normalize_repository("https://Git.example/Shop.git/"),
            normalize_repository("https://git.example/shop")
        );
    }
}
