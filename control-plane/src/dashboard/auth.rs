//! Signing in to the dashboard: argon2id password hashes, a session cookie
//! (HttpOnly, SameSite=Strict, Secure behind TLS) whose token is stored only as
//! its sha256, a CSRF token per session that every state-changing form carries,
//! and a limit on failed sign-ins per user and per address. The API keeps its
//! bearer tokens; nothing here serves `/api/v1`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Redirect, Response};

use super::pages::{self, Page};
use crate::http::sha256_hex;
use crate::store::{self, Role, User};
use crate::AppState;

pub const SESSION_COOKIE: &str = "kiln_session";
/// How long a session lasts from sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Failed sign-ins allowed per user and per address within `FAILURE_WINDOW`.
const FAILURES_ALLOWED: usize = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| format!("cannot hash the password: {error}"))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A hash to verify against when the user does not exist, so that an unknown
/// name takes as long to refuse as a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("kiln-decoy-password").unwrap_or_default())
}

/// Failed sign-ins by user name and by address, in a sliding window.
#[derive(Debug, Default)]
pub struct SignInLimiter {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl SignInLimiter {
    fn keys(user: &str, address: Option<IpAddr>) -> Vec<String> {
        let mut keys = vec![format!("user:{user}")];
        keys.extend(address.map(|address| format!("addr:{address}")));
        keys
    }

    /// How long until another attempt is allowed, if the limit is reached.
    pub fn blocked_for(&self, user: &str, address: Option<IpAddr>) -> Option<Duration> {
        let mut failures = crate::lock(&self.failures);
        let now = Instant::now();
        Self::keys(user, address)
            .into_iter()
            .filter_map(|key| {
                let times = failures.get_mut(&key)?;
                times.retain(|at| now.duration_since(*at) < FAILURE_WINDOW);
                (times.len() >= FAILURES_ALLOWED)
                    .then(|| FAILURE_WINDOW.saturating_sub(now.duration_since(times[0])))
            })
            .max()
    }

    pub fn failed(&self, user: &str, address: Option<IpAddr>) {
        let mut failures = crate::lock(&self.failures);
        for key in Self::keys(user, address) {
            failures.entry(key).or_default().push(Instant::now());
        }
    }

    pub fn succeeded(&self, user: &str) {
        crate::lock(&self.failures).remove(&format!("user:{user}"));
    }
}

/// The value of cookie `name`, from the `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether the client reached us over TLS (directly or through a proxy that says so).
pub fn over_tls(state: &AppState, headers: &HeaderMap) -> bool {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"));
    forwarded
        || state
            .config
            .public_url
            .as_deref()
            .is_some_and(|url| url.starts_with("https://"))
}

pub fn session_cookie(token: &str, secure: bool, max_age: Duration) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// Where to go after signing in: a path on this site, never elsewhere.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// The address a request came from, when the connection told us (it does behind
/// `connections::serve`; a router driven directly has none).
pub struct PeerAddress(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerAddress(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}

/// A signed-in person: who, and the CSRF token their forms carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    pub csrf: String,
}

impl Session {
    /// Refuses with a 403 page naming the role the action needs.
    pub fn require(&self, role: Role, action: &str) -> Result<(), Refusal> {
        if self.user.role >= role {
            return Ok(());
        }
        Err(Refusal {
            session: self.clone(),
            why: format!(
                "To {action} you need the {role} role; you are signed in as {} with the {} role. Ask an admin (`kiln-server users set-role`).",
                self.user.name, self.user.role
            ),
        })
    }

    /// Refuses a form whose CSRF token is not this session's, with a 403 page.
    pub fn check_csrf(&self, presented: &str) -> Result<(), Refusal> {
        // Hashes compared, so the time taken says nothing of the token.
        if sha256_hex(presented.as_bytes()) == sha256_hex(self.csrf.as_bytes()) {
            return Ok(());
        }
        Err(Refusal {
            session: self.clone(),
            why: "This form has expired or did not come from this dashboard (its CSRF token does not match your session). Go back, reload the page and try again.".to_owned(),
        })
    }
}

/// An action refused: a 403 page saying why.
pub struct Refusal {
    session: Session,
    why: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        pages::refused(&self.session, &self.why)
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_sign_in = || {
            let next = parts
                .uri
                .path_and_query()
                .map(|path| path.as_str())
                .unwrap_or("/");
            let next: String = url_encode(next);
            Redirect::to(&format!("/login?next={next}")).into_response()
        };
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_sign_in());
        };
        let hash = sha256_hex(token.as_bytes());
        let found = state
            .db
            .call(move |conn| store::session(conn, &hash))
            .await
            .map_err(IntoResponse::into_response)?;
        match found {
            Some(row) => Ok(Session {
                user: row.user,
                csrf: row.csrf,
            }),
            None => Err(to_sign_in()),
        }
    }
}

/// Percent-encodes a query value (keeping `/`, which reads better in `next=`).
pub fn url_encode(text: &str) -> String {
    crate::http::percent_encode(text, b"/")
}

/// The sign-in page for a `Page`'s layout.
pub fn sign_in_page(next: &str, problem: Option<&str>) -> Page {
    pages::sign_in(next, problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct horse!", &hash));
        assert!(!verify_password("anything", "not a hash"));
    }

    #[test]
    fn failed_sign_ins_are_limited_per_user_and_address() {
        let limiter = SignInLimiter::default();
        let here = Some("10.0.0.1".parse().unwrap());
        for _ in 0..FAILURES_ALLOWED {
            assert!(limiter.blocked_for("ada", here).is_none());
            limiter.failed("ada", here);
        }
        assert!(limiter.blocked_for("ada", None).is_some(), "by user");
        assert!(limiter.blocked_for("grace", here).is_some(), "by address");
        assert!(limiter
            .blocked_for("grace", Some("10.0.0.2".parse().unwrap()))
            .is_none());
    }

    #[test]
    fn sign_in_only_returns_to_this_site() {
        assert_eq!(safe_next(Some("/deployments/dpl_1")), "/deployments/dpl_1");
        for hostile in ["//evil.example/", "https://evil.example", "/\\evil.example"] {
            assert_eq!(safe_next(Some(hostile)), "/", "{hostile}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn cookies_are_read_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; kiln_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
