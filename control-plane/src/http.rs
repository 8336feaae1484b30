//! Request plumbing: extractors that turn every bad input into the error envelope
//! (JSON bodies, query strings, path segments) and the two kinds of bearer auth.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
pub(crate) use crate::secrets::{random_token, sha256_hex};
use crate::store::{self, AgentRow};
use crate::AppState;

/// A JSON body; a malformed one is a 400 naming the field. An empty body reads as
/// `{}`, so requests whose fields are all optional may send nothing.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(&mut deserializer)
            .map(ApiJson)
            .map_err(|error| {
                let path = error.path().to_string();
                let inner = error.into_inner();
                if path == "." {
                    ApiError::InvalidBody(inner.to_string())
                } else {
                    ApiError::invalid_field(&path, inner)
                }
            })
    }
}

/// A raw body within its route's limit; past it, a 413 in the error envelope.
#[derive(Debug)]
pub struct ApiBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(ApiBytes(Bytes::from_request(req, state).await?))
    }
}

/// Query parameters; a bad one is a 400 naming it.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|e| ApiError::InvalidParameter(e.body_text()))
    }
}

/// Path parameters; a bad one is a 400 naming it.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|e| ApiError::InvalidParameter(e.body_text()))
    }
}

/// Percent-encodes `text` for a URL: unreserved characters and `keep` stay.
pub fn percent_encode(text: &str, keep: &[u8]) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || keep.contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
        ApiError::Unauthorized("missing `Authorization: Bearer <token>` header".to_owned())
    })?;
    header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized("the Authorization header must be `Bearer <token>`".to_owned())
        })
}

fn is_admin(state: &AppState, token: &str) -> bool {
    // Comparing hashes keeps the comparison's timing independent of the secret.
    sha256_hex(token.as_bytes()) == state.admin_token_hash
}

async fn agent_for(
    state: &AppState,
    token: &str,
    user_agent: Option<&str>,
) -> Result<Option<AgentRow>, ApiError> {
    let hash = sha256_hex(token.as_bytes());
    let version = user_agent
        .filter(|agent| agent.starts_with("kiln-agent/"))
        .map(str::to_owned);
    state
        .db
        .call(move |conn| store::agent_by_token_hash(conn, &hash, version.as_deref()))
        .await
}

fn user_agent(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
}

/// How a registration is authorised: by the `Authorization` header, checked
/// before the body is read (so an unauthenticated client cannot make the server
/// buffer a body), or, for older agents, by the body's `registration_token`.
#[derive(Debug)]
pub enum Registration {
    Verified(store::RegistrationAuth),
    InBody,
}

/// Which registration token `token` is: the bootstrap one, or a registration
/// token object that registers agents now.
pub async fn registration_auth(
    state: &AppState,
    token: &str,
) -> Result<store::RegistrationAuth, ApiError> {
    let hash = sha256_hex(token.as_bytes());
    if hash == state.registration_token_hash {
        return Ok(store::RegistrationAuth::Bootstrap);
    }
    let checked = hash.clone();
    state
        .db
        .call(move |conn| store::check_token(conn, &checked))
        .await?;
    Ok(store::RegistrationAuth::Token { token_hash: hash })
}

impl FromRequestParts<AppState> for Registration {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !parts.headers.contains_key(AUTHORIZATION) {
            return Ok(Registration::InBody);
        }
        let token = bearer(parts)?.to_owned();
        registration_auth(state, &token)
            .await
            .map(Registration::Verified)
    }
}

pub fn registration_refused() -> ApiError {
    ApiError::Unauthorized(
        "registration token not recognised; use the one the server was started with (KILN_REGISTRATION_TOKEN)".to_owned(),
    )
}

/// A request made with the admin token.
#[derive(Debug)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        if is_admin(state, token) {
            return Ok(Admin);
        }
        if agent_for(state, token, None).await?.is_some() {
            return Err(ApiError::Forbidden(
                "agent tokens reach only /api/v1/agent/*; this endpoint needs the admin token"
                    .to_owned(),
            ));
        }
        Err(ApiError::Unauthorized(
            "admin token not recognised; use the token the server was started with (KILN_ADMIN_TOKEN)".to_owned(),
        ))
    }
}

/// A request made by a registered agent.
#[derive(Debug)]
pub struct Agent(pub AgentRow);

impl FromRequestParts<AppState> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        if let Some(agent) = agent_for(state, token, user_agent(parts)).await? {
            return Ok(Agent(agent));
        }
        if is_admin(state, token) {
            return Err(ApiError::Forbidden(
                "the admin token can't act as an agent; register one with `kiln-agent register`"
                    .to_owned(),
            ));
        }
        Err(ApiError::Unauthorized(
            "agent token not recognised; re-register the agent with `kiln-agent register`"
                .to_owned(),
        ))
    }
}

/// The address a request came from, when the connection told us (it does behind
/// `connections::serve`; a router driven directly has none).
pub struct PeerAddress(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(PeerAddress(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}

/// Runs one store operation and answers with its value as JSON.
pub(crate) async fn answer<T, F>(state: &AppState, operation: F) -> Result<axum::Json<T>, ApiError>
where
    T: serde::Serialize + Send + 'static,
    F: FnOnce(&mut crate::db::sql::Connection) -> Result<T, ApiError> + Send + 'static,
{
    Ok(axum::Json(state.db.call(operation).await?))
}
