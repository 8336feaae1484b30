//! A real git server for tests: git's own `git http-backend`, run as CGI behind a
//! small HTTP server on loopback, serving bare repositories under a directory.
//! With a token it demands Basic auth (any user, the token as password), as git
//! hosts do for private repositories. It records every request's path and
//! `Authorization` header, so a test can see where a credential went.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tokio::io::AsyncWriteExt;

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub authorization: Option<String>,
}

#[derive(Clone)]
struct Shared {
    root: PathBuf,
    token: Option<String>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// Answers every request with a redirect to the same path under this base.
    redirect_to: Option<String>,
}

pub struct GitServer {
    pub addr: SocketAddr,
    pub root: PathBuf,
    requests: Arc<Mutex<Vec<Recorded>>>,
    _stop: tokio_util::sync::DropGuard,
}

impl GitServer {
    /// Serves the bare repositories under `root`; with `token`, only to clients
    /// that present it.
    pub async fn start(root: &Path, token: Option<&str>) -> GitServer {
        Self::serve(root, token, None).await
    }

    /// A host whose repositories moved: every request is redirected (302) to
    /// the same path under `base`, as a renamed repository or a hostile host is.
    pub async fn redirecting(root: &Path, base: &str) -> GitServer {
        Self::serve(root, None, Some(base.to_owned())).await
    }

    async fn serve(root: &Path, token: Option<&str>, redirect_to: Option<String>) -> GitServer {
        std::fs::create_dir_all(root).unwrap();
        let shared = Shared {
            root: root.to_owned(),
            token: token.map(str::to_owned),
            requests: Arc::default(),
            redirect_to,
        };
        let requests = shared.requests.clone();
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let (addr, stop) = super::loopback::serve_on_loopback(app).await;
        GitServer {
            addr,
            root: root.to_owned(),
            requests,
            _stop: stop,
        }
    }

    /// Publishes the repository at `work_tree` as the bare `name` (e.g. `shop.git`).
    pub fn publish(&self, work_tree: &Path, name: &str) -> String {
        let bare = self.root.join(name);
        let _ = std::fs::remove_dir_all(&bare);
        let output = std::process::Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(work_tree)
            .arg(&bare)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "git clone --bare: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.url(name)
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(token) = &shared.token else {
        return true;
    };
    let presented = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|basic| base64::engine::general_purpose::STANDARD.decode(basic).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok());
    presented.is_some_and(|pair| {
        pair.split_once(':')
            .is_some_and(|(_, secret)| secret == token)
    })
}

async fn handle(State(shared): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    shared.requests.lock().unwrap().push(Recorded {
        path: parts.uri.path().to_owned(),
        authorization: parts
            .headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
    });
    if let Some(base) = &shared.redirect_to {
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let location = format!("{base}{}{query}", parts.uri.path());
        return (StatusCode::FOUND, [("location", location)]).into_response();
    }
    if !authorized(&shared, &parts.headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"kiln-test\"")],
            "token required\n",
        )
            .into_response();
    }
    let body: Bytes = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(body) => body,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &shared.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "kiln")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeding = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let output = child.wait_with_output().await.unwrap();
    let _ = feeding.await;
    cgi_response(&output.stdout)
}

/// Turns a CGI program's output (headers, a blank line, the body) into a response.
fn cgi_response(output: &[u8]) -> Response {
    let split = output
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| (at, at + 4))
        .or_else(|| {
            output
                .windows(2)
                .position(|window| window == b"\n\n")
                .map(|at| (at, at + 2))
        });
    let Some((head_end, body_start)) = split else {
        return (StatusCode::BAD_GATEWAY, "git http-backend said nothing\n").into_response();
    };
    let mut response = Response::new(Body::from(output[body_start..].to_vec()));
    for line in String::from_utf8_lossy(&output[..head_end]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("200");
            *response.status_mut() = code.parse().unwrap_or(StatusCode::OK);
        } else if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}
