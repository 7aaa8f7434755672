//! User and session RPCs (as the original scitq's): Login, Logout, CreateUser, ListUsers,
//! DeleteUser, UpdateUser, ChangePassword. Admin checks are made by the auth layer from `rpcs`;
//! Login and ChangePassword pass the login gate (`api::login_gate`) before any password is
//! hashed.

use std::net::IpAddr;

use tonic::Request;

use crate::api::auth::Caller;
use crate::api::login_gate::{Admission, LoginGate};
use crate::api::state::AppState;
use crate::db::users::{self, UserChanges};
use crate::domain::credentials;
use crate::domain::ownership::may_see_email;
use crate::error::{Error, Result};
use crate::proto as pb;

const ACK: pb::Ack = pb::Ack { success: true };

/// Runs a CPU-heavy password function off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("password worker failed: {e}")))
}

/// Checks a username/password pair through the login gate; unknown users cost the same time as
/// wrong passwords. A failure counts against the username and the peer address. After a success
/// with a hash of another kind (bcrypt from the original), the hash is replaced by an argon2id one.
async fn check_password(
    state: &AppState,
    admission: &Admission,
    username: &str,
    password: &str,
    peer: Option<IpAddr>,
) -> Result<Option<i32>> {
    let found = users::credentials(&state.db, username).await?;
    let (user_id, hash) = match found {
        Some(c) => (Some(c.user_id), c.password_hash),
        None => (None, credentials::DUMMY_HASH.to_string()),
    };
    let owned = password.to_string();
    let hash_for_check = hash.clone();
    let ok = admission
        .verify(move || credentials::verify_password(&owned, &hash_for_check))
        .await?;
    let Some(user_id) = user_id.filter(|_| ok) else {
        state.login_gate.record_failure(username, peer);
        return Ok(None);
    };
    state.login_gate.record_success(username);
    if credentials::needs_rehash(&hash) {
        upgrade_hash(state, admission, user_id, &hash, password).await;
    }
    Ok(Some(user_id))
}

/// Replaces a verified hash of an older kind by an argon2id one; a failure only delays the upgrade
/// to the next login.
async fn upgrade_hash(
    state: &AppState,
    admission: &Admission,
    user_id: i32,
    old_hash: &str,
    password: &str,
) {
    let password = password.to_string();
    let upgraded = match admission
        .hash(move || credentials::hash_password(&password))
        .await
    {
        Ok(Ok(hash)) => users::replace_password_hash(&state.db, user_id, old_hash, &hash).await,
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(e),
    };
    match upgraded {
        Ok(()) => tracing::info!(user_id, "password hash upgraded to argon2id"),
        Err(e) => tracing::warn!(user_id, error = %e, "could not upgrade the password hash"),
    }
}

/// The peer address of a request, for the login gate.
fn peer_of<T>(request: &Request<T>) -> Option<IpAddr> {
    request.remote_addr().map(|a| a.ip())
}

/// The session token the request carries (`authorization: Bearer …`), if any.
fn bearer_of<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then(|| token.to_string())
}

pub async fn login(
    state: &AppState,
    request: Request<pb::LoginRequest>,
) -> Result<pb::LoginResponse> {
    let peer = peer_of(&request);
    let req = request.into_inner();
    let token = start_session(state, &req.username, &req.password, peer).await?;
    Ok(pb::LoginResponse { token })
}

/// Login's work, shared with the web surface's `POST /login`: checks the credentials through the
/// login gate and returns a new session token — a JWT of the cluster's key, stored as its
/// SHA-256 only. Bad credentials → Unauthenticated.
pub async fn start_session(
    state: &AppState,
    username: &str,
    password: &str,
    peer: Option<IpAddr>,
) -> Result<String> {
    if username.is_empty() || password.is_empty() {
        return Err(Error::invalid("username and password are required"));
    }
    LoginGate::check_lengths(&[("username", username), ("password", password)])?;
    let admission = state.login_gate.admit(username, peer)?;
    let user_id = check_password(state, &admission, username, password, peer)
        .await?
        .ok_or_else(|| Error::unauthenticated("invalid credentials"))?;
    let ttl = state.config.session_ttl;
    let exp = chrono::Utc::now()
        .timestamp()
        .saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
    let token = state.jwt.issue(user_id, username, exp);
    users::create_session(&state.db, user_id, &credentials::token_digest(&token), ttl).await?;
    Ok(token)
}

pub async fn logout(state: &AppState, request: Request<pb::Token>) -> Result<pb::Ack> {
    let token = request.into_inner().token;
    if token.is_empty() {
        return Err(Error::invalid("token is required"));
    }
    end_session(state, &token).await?;
    Ok(ACK)
}

/// Logout's work, shared with `POST /logout`: deletes the session of `token` (true if there was
/// one) and forgets it on this replica at once.
pub async fn end_session(state: &AppState, token: &str) -> Result<bool> {
    let existed = users::delete_session(&state.db, &credentials::token_digest(token)).await?;
    state.auth.forget(token).await;
    Ok(existed)
}

pub async fn create_user(
    state: &AppState,
    request: Request<pb::CreateUserRequest>,
) -> Result<pb::UserId> {
    let req = request.into_inner();
    if req.username.trim().is_empty() {
        return Err(Error::invalid("username must not be empty"));
    }
    LoginGate::check_lengths(&[("username", &req.username), ("password", &req.password)])?;
    let password = req.password;
    let hash = blocking(move || credentials::hash_password(&password)).await??;
    let email = Some(req.email).filter(|e| !e.is_empty());
    let user_id = users::create_user(
        &state.db,
        &req.username,
        &hash,
        email.as_deref(),
        req.is_admin,
    )
    .await?;
    tracing::info!(user_id, username = %req.username, is_admin = req.is_admin, "user created");
    Ok(pb::UserId { user_id })
}

pub async fn list_users(state: &AppState, request: Request<()>) -> Result<pb::UsersList> {
    let actor = Caller::of(&request).actor();
    let users = users::list_users(&state.db).await?;
    Ok(pb::UsersList {
        users: users
            .into_iter()
            .map(|u| pb::User {
                user_id: u.user_id,
                username: Some(u.username),
                email: Some(
                    u.email
                        .filter(|_| may_see_email(actor, u.user_id))
                        .unwrap_or_default(),
                ),
                is_admin: Some(u.is_admin),
            })
            .collect(),
    })
}

pub async fn delete_user(state: &AppState, request: Request<pb::UserId>) -> Result<pb::Ack> {
    let user_id = request.into_inner().user_id;
    users::delete_user(&state.db, user_id).await?;
    state.auth.forget_all();
    tracing::info!(user_id, "user deleted");
    Ok(ACK)
}

pub async fn update_user(state: &AppState, request: Request<pb::User>) -> Result<pb::Ack> {
    let req = request.into_inner();
    let changes = UserChanges {
        username: req.username,
        email: req.email,
        is_admin: req.is_admin,
    };
    if changes.username.is_none() && changes.email.is_none() && changes.is_admin.is_none() {
        return Err(Error::invalid(
            "nothing to update: give username, email or is_admin",
        ));
    }
    if changes
        .username
        .as_deref()
        .is_some_and(|u| u.trim().is_empty())
    {
        return Err(Error::invalid("username must not be empty"));
    }
    users::update_user(&state.db, req.user_id, &changes).await?;
    state.auth.forget_all();
    Ok(ACK)
}

pub async fn change_password(
    state: &AppState,
    request: Request<pb::ChangePasswordRequest>,
) -> Result<pb::Ack> {
    let peer = peer_of(&request);
    let keep = bearer_of(&request).map(|t| credentials::token_digest(&t));
    let req = request.into_inner();
    if req.username.is_empty() || req.old_password.is_empty() {
        return Err(Error::invalid("username and old_password are required"));
    }
    if req.new_password.is_empty() {
        return Err(Error::invalid("new_password must not be empty"));
    }
    LoginGate::check_lengths(&[
        ("username", &req.username),
        ("old_password", &req.old_password),
        ("new_password", &req.new_password),
    ])?;
    let admission = state.login_gate.admit(&req.username, peer)?;
    let user_id = check_password(state, &admission, &req.username, &req.old_password, peer)
        .await?
        .ok_or_else(|| Error::unauthenticated("incorrect credentials"))?;
    let new_password = req.new_password;
    let hash = admission
        .hash(move || credentials::hash_password(&new_password))
        .await??;
    // The other sessions of the user end with the old password; the caller's own (if it sent
    // one) stays.
    let revoked = users::set_password_revoking_sessions(&state.db, user_id, &hash, keep).await?;
    state.auth.forget_all();
    tracing::info!(user_id, revoked, "password changed; other sessions revoked");
    Ok(ACK)
}
