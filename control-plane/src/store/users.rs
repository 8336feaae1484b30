//! People who use the dashboard: accounts with a role (`viewer` reads, `deployer`
//! also deploys, redeploys and cancels, `admin` also edits), and their sessions.
//! Passwords are stored as argon2id hashes and session tokens as sha256; neither is
//! ever stored as given.

use crate::db::sql::{params, Connection, OptionalExtension};

use super::values::{check_name, now_ms};
use crate::error::ApiError;
use kiln_protocol::validate;

/// What a person may do; each role can do all the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Deployer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [Role::Viewer, Role::Deployer, Role::Admin]
            .into_iter()
            .find(|role| role.as_str() == text)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub created_at: i64,
}

/// A session found by its token: who, and the token its forms must carry.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub user: User,
    pub csrf: String,
}

fn user_from(name: String, role: String, created_at: i64) -> crate::db::sql::Result<User> {
    let role = Role::parse(&role)
        .ok_or_else(|| crate::db::sql::Error::invalid(1, format!("unknown role {role:?}")))?;
    Ok(User {
        name,
        role,
        created_at,
    })
}

pub fn add_user(
    conn: &mut Connection,
    name: &str,
    password_hash: &str,
    role: Role,
) -> Result<User, ApiError> {
    check_name("name", name, validate::MAX_NAME)?;
    let tx = conn.transaction()?;
    let taken: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)",
        [name],
        |row| row.get(0),
    )?;
    if taken {
        return Err(ApiError::Conflict(format!(
            "a user named {name:?} exists already; use `users set-role` to change their role"
        )));
    }
    let now = now_ms();
    tx.execute(
        "INSERT INTO users (name, password_hash, role, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![name, password_hash, role.as_str(), now],
    )?;
    tx.commit()?;
    Ok(User {
        name: name.to_owned(),
        role,
        created_at: now,
    })
}

pub fn list_users(conn: &mut Connection) -> Result<Vec<User>, ApiError> {
    let mut stmt = conn.prepare("SELECT name, role, created_at FROM users ORDER BY name")?;
    let users = stmt
        .query_map([], |row| user_from(row.get(0)?, row.get(1)?, row.get(2)?))?
        .collect::<Result<_, _>>()?;
    Ok(users)
}

/// The user and their password hash, for a sign-in.
pub fn user_with_hash(
    conn: &mut Connection,
    name: &str,
) -> Result<Option<(User, String)>, ApiError> {
    Ok(conn
        .query_row(
            "SELECT name, role, created_at, password_hash FROM users WHERE name = ?1",
            [name],
            |row| {
                Ok((
                    user_from(row.get(0)?, row.get(1)?, row.get(2)?)?,
                    row.get(3)?,
                ))
            },
        )
        .optional()?)
}

pub fn remove_user(conn: &mut Connection, name: &str) -> Result<(), ApiError> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM sessions WHERE user_name = ?1", [name])?;
    if tx.execute("DELETE FROM users WHERE name = ?1", [name])? == 0 {
        return Err(ApiError::not_found("user", name));
    }
    tx.commit()?;
    Ok(())
}

pub fn set_role(conn: &mut Connection, name: &str, role: Role) -> Result<(), ApiError> {
    let changed = conn.execute(
        "UPDATE users SET role = ?1 WHERE name = ?2",
        params![role.as_str(), name],
    )?;
    if changed == 0 {
        return Err(ApiError::not_found("user", name));
    }
    Ok(())
}

pub fn create_session(
    conn: &mut Connection,
    token_hash: &str,
    user: &str,
    csrf: &str,
    expires_at: i64,
) -> Result<(), ApiError> {
    let now = now_ms();
    let tx = conn.transaction()?;
    // Expired sessions go whenever a new one starts.
    tx.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?;
    tx.execute(
        "INSERT INTO sessions (token_hash, user_name, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![token_hash, user, csrf, now, expires_at],
    )?;
    tx.commit()?;
    Ok(())
}

/// The live session with this token hash; `None` when unknown or expired.
pub fn session(conn: &mut Connection, token_hash: &str) -> Result<Option<SessionRow>, ApiError> {
    Ok(conn
        .query_row(
            "SELECT u.name, u.role, u.created_at, s.csrf FROM sessions s
             JOIN users u ON u.name = s.user_name
             WHERE s.token_hash = ?1 AND s.expires_at > ?2",
            params![token_hash, now_ms()],
            |row| {
                Ok(SessionRow {
                    user: user_from(row.get(0)?, row.get(1)?, row.get(2)?)?,
                    csrf: row.get(3)?,
                })
            },
        )
        .optional()?)
}

pub fn end_session(conn: &mut Connection, token_hash: &str) -> Result<(), ApiError> {
    conn.execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_have_roles_and_sessions_end() {
        let mut conn = crate::db::in_memory();
        add_user(&mut conn, "ada", "$argon2id$hash", Role::Deployer).unwrap();
        assert!(matches!(
            add_user(&mut conn, "ada", "h", Role::Viewer),
            Err(ApiError::Conflict(_))
        ));
        assert!(Role::Admin > Role::Deployer && Role::Deployer > Role::Viewer);
        create_session(&mut conn, "t1", "ada", "csrf", now_ms() + 60_000).unwrap();
        create_session(&mut conn, "old", "ada", "csrf", now_ms() - 1).unwrap();
        let session = session(&mut conn, "t1").unwrap().unwrap();
        assert_eq!(
            (session.user.name.as_str(), session.user.role),
            ("ada", Role::Deployer)
        );
        assert!(
            super::session(&mut conn, "old").unwrap().is_none(),
            "expired"
        );
        set_role(&mut conn, "ada", Role::Admin).unwrap();
        assert_eq!(
            super::session(&mut conn, "t1").unwrap().unwrap().user.role,
            Role::Admin
        );
        end_session(&mut conn, "t1").unwrap();
        assert!(super::session(&mut conn, "t1").unwrap().is_none());
        remove_user(&mut conn, "ada").unwrap();
        assert!(list_users(&mut conn).unwrap().is_empty());
        assert!(matches!(
            remove_user(&mut conn, "ada"),
            Err(ApiError::NotFound { .. })
        ));
    }
}
