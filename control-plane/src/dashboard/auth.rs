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

use crate::http::sha256_hex;
use crate::store::{self, Role, User};
use crate::AppState;

pub const SESSION_COOKIE: &str = "kiln_session";
/// How long a session lasts from sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The window in which sign-in attempts are counted.
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

/// Sign-in attempts by user name from one address, and by address, in a sliding
/// window; and the bound on password hashes running at once.
///
/// An attempt is counted before its password is checked, so a burst of
/// concurrent attempts cannot pass the limit while the hashes run; a success
/// takes its own count back. No limit is kept per user name alone: a stranger
/// failing from elsewhere never locks a user out.
#[derive(Debug)]
pub struct SignInLimiter {
    attempts: Mutex<Attempts>,
    hashing: tokio::sync::Semaphore,
}

#[derive(Debug, Default)]
struct Attempts {
    by_key: HashMap<String, Vec<Instant>>,
    pruned: Option<Instant>,
}

/// Attempts per user name from one address, and per address, in the window.
const ATTEMPTS_PER_USER_AND_ADDRESS: usize = 5;
const ATTEMPTS_PER_ADDRESS: usize = 20;
/// How long a sign-in waits for a free hash before it is told to come back.
const HASH_WAIT: Duration = Duration::from_secs(2);

impl Default for SignInLimiter {
    fn default() -> Self {
        // Half the cores (at least one): argon2 takes a core and 19 MiB each,
        // and the API must keep answering beside a flood of sign-ins.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        SignInLimiter {
            attempts: Mutex::default(),
            hashing: tokio::sync::Semaphore::new((cores / 2).max(1)),
        }
    }
}

/// Where an attempt comes from: an IPv6 address by its /64, which one host
/// usually holds whole.
fn address_key(address: Option<IpAddr>) -> String {
    match address {
        Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("addr:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(IpAddr::V6(v6)) => format!(
            "addr:{}",
            v6.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
        ),
        Some(address) => format!("addr:{address}"),
        None => "addr:unknown".to_owned(),
    }
}

impl SignInLimiter {
    fn keys(user: &str, address: Option<IpAddr>) -> [(String, usize); 2] {
        let address = address_key(address);
        [
            (
                format!("pair:{user}\n{address}"),
                ATTEMPTS_PER_USER_AND_ADDRESS,
            ),
            (address, ATTEMPTS_PER_ADDRESS),
        ]
    }

    /// Counts an attempt, before its password is checked; `Err(wait)` when the
    /// limit is reached (and then nothing is counted).
    pub fn begin(&self, user: &str, address: Option<IpAddr>) -> Result<(), Duration> {
        let mut attempts = crate::sync::lock(&self.attempts);
        let now = Instant::now();
        // Expired keys go, so the map holds only the window's attempts.
        if attempts
            .pruned
            .is_none_or(|at| now.duration_since(at) > Duration::from_secs(60))
        {
            attempts.pruned = Some(now);
            attempts.by_key.retain(|_, times| {
                times.retain(|at| now.duration_since(*at) < FAILURE_WINDOW);
                !times.is_empty()
            });
        }
        let keys = Self::keys(user, address);
        let wait = keys
            .iter()
            .filter_map(|(key, limit)| {
                let times = attempts.by_key.get_mut(key)?;
                times.retain(|at| now.duration_since(*at) < FAILURE_WINDOW);
                (times.len() >= *limit)
                    .then(|| FAILURE_WINDOW.saturating_sub(now.duration_since(times[0])))
            })
            .max();
        if let Some(wait) = wait {
            return Err(wait);
        }
        for (key, _) in keys {
            attempts.by_key.entry(key).or_default().push(now);
        }
        Ok(())
    }

    /// A right password: its user's attempts from this address are forgotten,
    /// and its own count from the address's.
    pub fn succeeded(&self, user: &str, address: Option<IpAddr>) {
        let mut attempts = crate::sync::lock(&self.attempts);
        let [(pair, _), (address, _)] = Self::keys(user, address);
        attempts.by_key.remove(&pair);
        if let Some(times) = attempts.by_key.get_mut(&address) {
            times.pop();
        }
    }

    /// A turn to hash a password, waiting a little for one; `None` when the
    /// server is busy with others.
    pub async fn hash_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(HASH_WAIT, self.hashing.acquire())
            .await
            .ok()?
            .ok()
    }

    #[cfg(test)]
    fn keys_held(&self) -> usize {
        crate::sync::lock(&self.attempts).by_key.len()
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

/// Where to go after signing in: a path on this site, never elsewhere. A
/// browser drops tabs and newlines from a URL and reads `\\` as `/`, so a
/// value holding any control character or backslash is refused whole, before
/// `//` (another site) is looked for.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path
                    .chars()
                    .any(|c| c.is_control() || c == '\\' || c == ' ') =>
        {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// The cookie that ties a sign-in form to the browser it was given to.
pub const SIGN_IN_COOKIE: &str = "kiln_sign_in";

pub fn sign_in_cookie(token: &str, secure: bool) -> String {
    format!(
        "{SIGN_IN_COOKIE}={token}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600{}",
        if secure { "; Secure" } else { "" }
    )
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

    /// A form's two checks: its CSRF token is this session's, and the user
    /// holds `role` to `action`.
    pub fn permit(&self, csrf: &str, role: Role, action: &str) -> Result<(), Refusal> {
        self.check_csrf(csrf)
            .and_then(|()| self.require(role, action))
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

/// An action refused, and why: `pages` shows it as a 403 page.
pub struct Refusal {
    pub session: Session,
    pub why: String,
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
    fn attempts_are_limited_per_user_and_address_and_per_address_never_per_user_alone() {
        let limiter = SignInLimiter::default();
        let here = Some("10.0.0.1".parse().unwrap());
        for _ in 0..ATTEMPTS_PER_USER_AND_ADDRESS {
            assert!(limiter.begin("ada", here).is_ok());
        }
        assert!(limiter.begin("ada", here).is_err(), "by user and address");
        // Ada from her own address is not locked out by a stranger.
        let hers = Some("10.0.0.2".parse().unwrap());
        assert!(limiter.begin("ada", hers).is_ok());
        limiter.succeeded("ada", hers);
        // The stranger's address runs out across user names.
        for n in 0..(ATTEMPTS_PER_ADDRESS - ATTEMPTS_PER_USER_AND_ADDRESS) {
            assert!(limiter.begin(&format!("user{n}"), here).is_ok());
        }
        assert!(limiter.begin("grace", here).is_err(), "by address");
        // An IPv6 host is one /64.
        let v6 = |text: &str| Some(text.parse().unwrap());
        for n in 0..ATTEMPTS_PER_USER_AND_ADDRESS {
            assert!(limiter.begin("ada", v6(&format!("2001:db8::{n}"))).is_ok());
        }
        assert!(limiter.begin("ada", v6("2001:db8::ffff")).is_err());
    }

    #[test]
    fn the_attempts_map_shrinks_once_the_window_has_passed() {
        let limiter = SignInLimiter::default();
        for n in 0..50 {
            let _ = limiter.begin(&format!("u{n}"), Some("10.0.0.9".parse().unwrap()));
        }
        assert!(limiter.keys_held() > 1);
        let long_ago = Instant::now()
            .checked_sub(FAILURE_WINDOW + Duration::from_secs(120))
            .unwrap();
        {
            let mut attempts = crate::sync::lock(&limiter.attempts);
            for times in attempts.by_key.values_mut() {
                times.iter_mut().for_each(|at| *at = long_ago);
            }
            attempts.pruned = Some(long_ago);
        }
        let _ = limiter.begin("ada", None);
        assert_eq!(limiter.keys_held(), 2, "only ada's own keys are left");
    }

    #[test]
    fn sign_in_only_returns_to_this_site() {
        assert_eq!(safe_next(Some("/deployments/dpl_1")), "/deployments/dpl_1");
        for hostile in [
            "//evil.example/",
            "https://evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r/evil.example",
            " //evil.example",
        ] {
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
