//! Registration tokens as objects: made by an admin (optionally one-time and with
//! an expiry), listed without their secret, revoked. Only a token's sha256 is
//! kept; the token is shown once, in the answer to making it. The server's
//! bootstrap token (`KILN_REGISTRATION_TOKEN`) stays beside them.

use crate::db::sql::{params, Connection, OptionalExtension, Row, Transaction};
use kiln_protocol::{validate, CreateRegistrationToken, RegistrationTokenInfo};

use super::values::{check_name, json_list, new_id, now_ms, time, to_json};
use crate::error::ApiError;

/// The longest a token may be made to last: a year.
const MAX_LIFETIME_SECONDS: u64 = 366 * 24 * 3600;

fn info_from_row(row: &Row) -> crate::db::sql::Result<RegistrationTokenInfo> {
    Ok(RegistrationTokenInfo {
        id: row.get("id")?,
        name: row.get("name")?,
        one_time: row.get("one_time")?,
        expires_at: row.get::<_, Option<i64>>("expires_at")?.map(time),
        used_at: row.get::<_, Option<i64>>("used_at")?.map(time),
        revoked_at: row.get::<_, Option<i64>>("revoked_at")?.map(time),
        created_at: time(row.get("created_at")?),
        token: None,
        labels: row
            .get::<_, Option<String>>("labels")?
            .map(|text| json_list(&text))
            .unwrap_or_default(),
    })
}

/// Makes a token; `token_hash` is the sha256 of `token`, which the answer
/// carries this once.
pub fn create_registration_token(
    conn: &mut Connection,
    request: CreateRegistrationToken,
    token: &str,
    token_hash: &str,
) -> Result<RegistrationTokenInfo, ApiError> {
    if let Some(name) = &request.name {
        check_name("name", name, validate::MAX_NAME)?;
    }
    super::projects::check_labels("labels", &request.labels)?;
    let expires_at = match request.expires_in_seconds {
        Some(0) => {
            return Err(ApiError::invalid_field(
                "expires_in_seconds",
                "is 0; give the seconds the token should last",
            ))
        }
        Some(seconds) if seconds > MAX_LIFETIME_SECONDS => {
            return Err(ApiError::invalid_field(
                "expires_in_seconds",
                format!(
                "is more than a year ({MAX_LIFETIME_SECONDS}); make a new token when it runs out"
            ),
            ))
        }
        Some(seconds) => Some(now_ms() + seconds as i64 * 1000),
        None => None,
    };
    let id = new_id("rtk");
    conn.execute(
        "INSERT INTO registration_tokens (id, name, token_hash, one_time, expires_at, created_at, labels)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            id,
            request.name,
            token_hash,
            request.one_time,
            expires_at,
            now_ms(),
            to_json(&request.labels)
        ],
    )?;
    let mut info = conn.query_row(
        "SELECT * FROM registration_tokens WHERE id = ?1",
        [&id],
        info_from_row,
    )?;
    info.token = Some(token.to_owned());
    Ok(info)
}

pub fn list_registration_tokens(
    conn: &mut Connection,
) -> Result<Vec<RegistrationTokenInfo>, ApiError> {
    let tokens = conn
        .prepare("SELECT * FROM registration_tokens ORDER BY created_at, id")?
        .query_map([], info_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(tokens)
}

pub fn revoke_registration_token(
    conn: &mut Connection,
    id: &str,
) -> Result<RegistrationTokenInfo, ApiError> {
    conn.execute(
        "UPDATE registration_tokens SET revoked_at = COALESCE(revoked_at, ?1) WHERE id = ?2",
        params![now_ms(), id],
    )?;
    conn.query_row(
        "SELECT * FROM registration_tokens WHERE id = ?1",
        [id],
        info_from_row,
    )
    .optional()?
    .ok_or_else(|| ApiError::not_found("registration token", id))
}

/// A registration token that registers agents now.
pub(super) struct Usable {
    pub id: String,
    one_time: bool,
    /// The labels it grants.
    pub labels: Vec<String>,
}

/// Why a token does not register agents now, if it does not.
fn refusal(conn: &Connection, token_hash: &str) -> Result<Result<Usable, String>, ApiError> {
    let found = conn
        .query_row(
            "SELECT id, one_time, expires_at, used_at, revoked_at, labels FROM registration_tokens WHERE token_hash = ?1",
            [token_hash],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, bool>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                    row.get::<_, Option<i64>>(3)?,
                    row.get::<_, Option<i64>>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((id, one_time, expires_at, used_at, revoked_at, labels)) = found else {
        return Ok(Err("registration token not recognised; use the one the server was started with (KILN_REGISTRATION_TOKEN) or one from POST /api/v1/registration-tokens".to_owned()));
    };
    if revoked_at.is_some() {
        return Ok(Err(format!(
            "registration token {id} was revoked; ask an admin for a new one"
        )));
    }
    if expires_at.is_some_and(|at| at <= now_ms()) {
        return Ok(Err(format!(
            "registration token {id} has expired; ask an admin for a new one"
        )));
    }
    if one_time && used_at.is_some() {
        return Ok(Err(format!(
            "registration token {id} was for one agent and has registered it; ask an admin for a new one"
        )));
    }
    Ok(Ok(Usable {
        id,
        one_time,
        labels: labels.map(|text| json_list(&text)).unwrap_or_default(),
    }))
}

/// Whether a token registers agents now (checked before a body is read).
pub fn check_token(conn: &mut Connection, token_hash: &str) -> Result<(), ApiError> {
    refusal(conn, token_hash)?
        .map(drop)
        .map_err(ApiError::Unauthorized)
}

/// Uses a token to register one agent: a one-time token is spent here, in the
/// registration's transaction.
pub(super) fn use_token(tx: &Transaction, token_hash: &str) -> Result<Usable, ApiError> {
    let usable = refusal(tx, token_hash)?.map_err(ApiError::Unauthorized)?;
    let id = &usable.id;
    if usable.one_time {
        let spent = tx.execute(
            "UPDATE registration_tokens SET used_at = ?1 WHERE id = ?2 AND used_at IS NULL",
            params![now_ms(), id],
        )?;
        if spent != 1 {
            return Err(ApiError::Unauthorized(format!(
                "registration token {id} was for one agent and has registered it; ask an admin for a new one"
            )));
        }
    } else {
        tx.execute(
            "UPDATE registration_tokens SET used_at = COALESCE(used_at, ?1) WHERE id = ?2",
            params![now_ms(), id],
        )?;
    }
    Ok(usable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{register_agent_with, RegistrationAuth};

    fn make(
        conn: &mut Connection,
        request: CreateRegistrationToken,
        token: &str,
    ) -> RegistrationTokenInfo {
        create_registration_token(conn, request, token, &format!("hash-{token}")).unwrap()
    }

    fn register(conn: &mut Connection, token: &str) -> Result<String, ApiError> {
        register_agent_with(
            conn,
            "builder",
            &[],
            &crate::store::values::new_id("h"),
            None,
            &RegistrationAuth::Token {
                token_hash: format!("hash-{token}"),
            },
        )
    }

    #[test]
    fn a_one_time_token_registers_one_agent() {
        let mut conn = crate::db::in_memory();
        let made = make(
            &mut conn,
            CreateRegistrationToken {
                one_time: true,
                ..Default::default()
            },
            "once",
        );
        assert_eq!(made.token.as_deref(), Some("once"));
        register(&mut conn, "once").unwrap();
        let error = register(&mut conn, "once").unwrap_err();
        assert!(error.to_string().contains("was for one agent"), "{error}");
        assert!(
            list_registration_tokens(&mut conn).unwrap()[0]
                .token
                .is_none(),
            "never shown again"
        );
    }

    #[test]
    fn expired_revoked_and_unknown_tokens_register_nobody() {
        let mut conn = crate::db::in_memory();
        let many = make(&mut conn, CreateRegistrationToken::default(), "many");
        register(&mut conn, "many").unwrap();
        register(&mut conn, "many").unwrap();
        revoke_registration_token(&mut conn, &many.id).unwrap();
        assert!(register(&mut conn, "many")
            .unwrap_err()
            .to_string()
            .contains("revoked"));
        let soon = make(
            &mut conn,
            CreateRegistrationToken {
                expires_in_seconds: Some(60),
                ..Default::default()
            },
            "soon",
        );
        conn.execute(
            "UPDATE registration_tokens SET expires_at = 1 WHERE id = ?1",
            [&soon.id],
        )
        .unwrap();
        assert!(register(&mut conn, "soon")
            .unwrap_err()
            .to_string()
            .contains("expired"));
        assert!(check_token(&mut conn, "hash-nobody").is_err());
        let error = create_registration_token(
            &mut conn,
            CreateRegistrationToken {
                expires_in_seconds: Some(0),
                ..Default::default()
            },
            "zero",
            "hash-zero",
        )
        .unwrap_err();
        assert!(error.to_string().contains("expires_in_seconds"), "{error}");
    }
}
