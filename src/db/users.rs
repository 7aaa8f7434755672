//! Users and sessions (`scitq_user`, `scitq_user_session`). Sessions are looked up by the SHA-256 of
//! the token; the token itself is never stored.

use std::time::Duration;

use scoped_futures::ScopedFutureExt as _;

use super::locks::NS_BOOTSTRAP;
use super::{Db, Op, pg_error};
use crate::domain::limits;
use crate::error::{Code, Error, Result};

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub user_id: i32,
    pub username: String,
    pub email: Option<String>,
    pub is_admin: bool,
    /// The session is a template script's: limited to `rpcs::SCRIPT_RPCS`, never admin
    /// (`is_admin` is then false whatever the user is). False outside authentication.
    pub scoped: bool,
    /// For a scoped session of a run: the template run it may update.
    pub scoped_run_id: Option<i32>,
}

/// The fields UpdateUser may change.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub username: Option<String>,
    pub email: Option<String>,
    pub is_admin: Option<bool>,
}

/// A user with the stored password hash, for Login/ChangePassword.
pub struct Credentials {
    pub user_id: i32,
    pub password_hash: String,
}

fn user_from_row(row: &tokio_postgres::Row) -> User {
    User {
        user_id: row.get("user_id"),
        username: row.get("username"),
        email: row.get("email"),
        is_admin: row.get("is_admin"),
        scoped: false,
        scoped_run_id: None,
    }
}

const SESSION_USER: &str = "
    SELECT u.user_id, u.username, u.email, u.is_admin AND NOT s.scoped AS is_admin,
           s.scoped, s.template_run_id
      FROM scitq_user_session s
      JOIN scitq_user u ON u.user_id = s.user_id
     WHERE s.token_sha256 = $1 AND s.expires_at > now()";

/// The live session's user, or `None` for an unknown or expired token. Marks the session used.
pub async fn session_user(db: &Db, digest: &[u8; 32]) -> Result<Option<User>> {
    db.run(Op::Auth, |c| {
        async move {
            let stmt = c.prepare_cached(SESSION_USER).await?;
            let row = c.query_opt(&stmt, &[&digest.as_slice()]).await?;
            if row.is_some() {
                c.execute(
                    "UPDATE scitq_user_session SET last_used = now() WHERE token_sha256 = $1",
                    &[&digest.as_slice()],
                )
                .await?;
            }
            Ok(row.as_ref().map(|r| User {
                scoped: r.get("scoped"),
                scoped_run_id: r.get("template_run_id"),
                ..user_from_row(r)
            }))
        }
        .scope_boxed()
    })
    .await
}

pub async fn credentials(db: &Db, username: &str) -> Result<Option<Credentials>> {
    db.query_opt(
        Op::Login,
        "SELECT user_id, password FROM scitq_user WHERE username = $1",
        &[&username],
        |r| Credentials {
            user_id: r.get(0),
            password_hash: r.get(1),
        },
    )
    .await
}

pub async fn create_session(db: &Db, user_id: i32, digest: &[u8; 32], ttl: Duration) -> Result<()> {
    let ttl_secs = ttl.as_secs_f64();
    db.run(Op::Login, |c| {
        async move {
            c.execute(
                "INSERT INTO scitq_user_session (token_sha256, user_id, expires_at, last_used)
                 VALUES ($1, $2, now() + make_interval(secs => $3), now())",
                &[&digest.as_slice(), &user_id, &ttl_secs],
            )
            .await?;
            // Expired sessions are removed as new ones arrive, so the table cannot grow forever.
            c.execute(
                "DELETE FROM scitq_user_session WHERE expires_at < now() - interval '1 day'",
                &[],
            )
            .await?;
            Ok(())
        }
        .scope_boxed()
    })
    .await
}

/// Creates a template script's session for `user_id`: scoped (see `User::scoped`), for the run
/// `run_id` when there is one, expiring after `ttl` even if its run never ends properly.
pub async fn create_scoped_session(
    db: &Db,
    user_id: i32,
    digest: &[u8; 32],
    ttl: Duration,
    run_id: Option<i32>,
) -> Result<()> {
    let ttl_secs = ttl.as_secs_f64();
    db.execute(
        Op::Templates,
        "INSERT INTO scitq_user_session
                (token_sha256, user_id, expires_at, last_used, scoped, template_run_id)
         VALUES ($1, $2, now() + make_interval(secs => $3), now(), true, $4)",
        &[&digest.as_slice(), &user_id, &ttl_secs, &run_id],
    )
    .await?;
    Ok(())
}

/// Deletes a session; true if there was one.
pub async fn delete_session(db: &Db, digest: &[u8; 32]) -> Result<bool> {
    let n = db
        .execute(
            Op::Login,
            "DELETE FROM scitq_user_session WHERE token_sha256 = $1",
            &[&digest.as_slice()],
        )
        .await?;
    Ok(n > 0)
}

/// Sets a new password hash and deletes the user's sessions but `keep` (the caller's own, if it
/// has one); returns how many were deleted.
pub async fn set_password_revoking_sessions(
    db: &Db,
    user_id: i32,
    hash: &str,
    keep: Option<[u8; 32]>,
) -> Result<u64> {
    let keep = keep.map(|k| k.to_vec());
    let keep = &keep;
    db.tx(Op::Users, |tx| {
        async move {
            tx.execute(
                "UPDATE scitq_user SET password = $2 WHERE user_id = $1",
                &[&user_id, &hash],
            )
            .await?;
            tx.execute(
                "DELETE FROM scitq_user_session
                  WHERE user_id = $1 AND ($2::bytea IS NULL OR token_sha256 <> $2)",
                &[&user_id, keep],
            )
            .await
            .map_err(pg_error)
        }
        .scope_boxed()
    })
    .await
}

/// Replaces the password hash `old` by `new` (the same password, hashed with argon2id), unless the
/// password changed in between.
pub async fn replace_password_hash(db: &Db, user_id: i32, old: &str, new: &str) -> Result<()> {
    db.execute(
        Op::Users,
        "UPDATE scitq_user SET password = $3 WHERE user_id = $1 AND password = $2",
        &[&user_id, &old, &new],
    )
    .await?;
    Ok(())
}

pub async fn set_password(db: &Db, user_id: i32, hash: &str) -> Result<()> {
    db.execute(
        Op::Users,
        "UPDATE scitq_user SET password = $2 WHERE user_id = $1",
        &[&user_id, &hash],
    )
    .await?;
    Ok(())
}

pub async fn create_user(
    db: &Db,
    username: &str,
    hash: &str,
    email: Option<&str>,
    is_admin: bool,
) -> Result<i32> {
    db.query_one(
        Op::Users,
        "INSERT INTO scitq_user (username, password, email, is_admin) VALUES ($1, $2, $3, $4)
         RETURNING user_id",
        &[&username, &hash, &email, &is_admin],
        |r| r.get(0),
    )
    .await
    .map_err(|err| match err {
        err if err.code == Code::AlreadyExists => {
            Error::already_exists(format!("user {username:?} already exists"))
        }
        err => err,
    })
}

pub async fn list_users(db: &Db) -> Result<Vec<User>> {
    db.query(
        Op::Users,
        "SELECT user_id, username, email, is_admin FROM scitq_user ORDER BY user_id LIMIT $1",
        &[&limits::LIST_USERS.max],
        user_from_row,
    )
    .await
}

/// Locks the admin set for the rest of the transaction and counts admins other than `user_id`.
async fn other_admins(tx: &super::Tx<'_>, user_id: i32) -> Result<i64> {
    tx.execute("SELECT pg_advisory_xact_lock($1, 1)", &[&NS_BOOTSTRAP])
        .await?;
    let row = tx
        .query_one(
            "SELECT count(*) FROM scitq_user WHERE is_admin AND user_id <> $1",
            &[&user_id],
        )
        .await?;
    Ok(row.get(0))
}

/// Deletes a user (their sessions go with them). The last admin cannot be deleted.
pub async fn delete_user(db: &Db, user_id: i32) -> Result<()> {
    db.tx(Op::Users, |tx| {
        async move {
            let admins = other_admins(tx, user_id).await?;
            let row = tx
                .query_opt(
                    "SELECT is_admin FROM scitq_user WHERE user_id = $1 FOR UPDATE",
                    &[&user_id],
                )
                .await?
                .ok_or_else(|| Error::not_found(format!("user {user_id} not found")))?;
            if row.get::<_, bool>(0) && admins == 0 {
                return Err(Error::failed_precondition(format!(
                    "user {user_id} is the last admin; make another user admin first"
                )));
            }
            tx.execute("DELETE FROM scitq_user WHERE user_id = $1", &[&user_id])
                .await?;
            Ok(())
        }
        .scope_boxed()
    })
    .await
}

/// Applies the given changes. Removing admin rights from the last admin is refused.
pub async fn update_user(db: &Db, user_id: i32, changes: &UserChanges) -> Result<()> {
    db.tx(Op::Users, |tx| {
        async move {
            let admins = other_admins(tx, user_id).await?;
            let current: bool = tx
                .query_opt(
                    "SELECT is_admin FROM scitq_user WHERE user_id = $1 FOR UPDATE",
                    &[&user_id],
                )
                .await?
                .ok_or_else(|| Error::not_found(format!("user {user_id} not found")))?
                .get(0);
            if current && changes.is_admin == Some(false) && admins == 0 {
                return Err(Error::failed_precondition(format!(
                    "user {user_id} is the last admin; make another user admin first"
                )));
            }
            tx.execute(
                "UPDATE scitq_user
                    SET username = COALESCE($2, username),
                        email = COALESCE($3, email),
                        is_admin = COALESCE($4, is_admin)
                  WHERE user_id = $1",
                &[
                    &user_id,
                    &changes.username,
                    &changes.email,
                    &changes.is_admin,
                ],
            )
            .await
            .map_err(|e| match pg_error(e) {
                err if err.code == Code::AlreadyExists => Error::already_exists(format!(
                    "user {:?} already exists",
                    changes.username.as_deref().unwrap_or_default()
                )),
                err => err,
            })?;
            Ok(())
        }
        .scope_boxed()
    })
    .await
}

/// On a database with no user at all, creates the initial admin with `password_hash`. Returns true
/// if this call created it (several replicas may race at first start: one wins).
pub async fn ensure_initial_admin(
    db: &Db,
    username: &str,
    password_hash: &str,
    email: Option<&str>,
) -> Result<bool> {
    db.tx(Op::Bootstrap, |tx| {
        async move {
            tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&NS_BOOTSTRAP]).await?;
            let any = tx.query_opt("SELECT 1 FROM scitq_user LIMIT 1", &[]).await?;
            if any.is_some() {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO scitq_user (username, password, email, is_admin) VALUES ($1, $2, $3, true)",
                &[&username, &password_hash, &email],
            )
            .await?;
            Ok(true)
        }.scope_boxed()
    })
    .await
}

/// Whether the user table is empty (decides whether an initial admin password must be generated).
pub async fn no_users(db: &Db) -> Result<bool> {
    let row = db
        .query_opt(
            Op::Bootstrap,
            "SELECT 1 FROM scitq_user LIMIT 1",
            &[],
            |_| (),
        )
        .await?;
    Ok(row.is_none())
}
