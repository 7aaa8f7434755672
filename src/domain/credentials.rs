//! Passwords, session tokens and the worker token: hashing, verification and generation. Pure
//! functions (CPU-heavy ones are run on the blocking pool by their callers).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use rand::Rng as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::{Error, Result};

/// Hashes a password with argon2id (default parameters: 19 MiB, 2 passes), as a PHC string.
pub fn hash_password(password: &str) -> Result<String> {
    if password.is_empty() {
        return Err(Error::Invalid("password must not be empty".into()));
    }
    let salt = SaltString::encode_b64(&rand::rng().random::<[u8; 16]>())
        .map_err(|e| Error::Invalid(format!("cannot encode salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Invalid(format!("cannot hash password: {e}")))
}

/// Checks a password against a stored hash: an argon2 PHC string, or a bcrypt hash (`$2a$`, `$2b$`,
/// `$2y$`) as the original server stored and as a configured `admin_hashed_password` may be.
/// A malformed stored hash never matches.
pub fn verify_password(password: &str, stored: &str) -> bool {
    if stored.starts_with("$2") {
        return bcrypt::verify(password, stored).unwrap_or(false);
    }
    match PasswordHash::new(stored) {
        Ok(hash) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// True when the stored hash should be replaced by an argon2id one at the next successful login.
pub fn needs_rehash(stored: &str) -> bool {
    !stored.starts_with("$argon2id$")
}

/// A stored hash that no password matches, verified against when the user does not exist so that
/// a login for an unknown user costs as much as one with a wrong password.
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3XgN0d9R8t5w8b0b9aUv0x3zOQm3bq1xQ2t9Kq3w1rY";

/// A new session token: 256 random bits, base64url without padding (43 characters).
pub fn new_session_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::rng().random::<[u8; 32]>())
}

/// What the database stores of a session token.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A random alphanumeric secret (initial admin password, generated worker token).
pub fn random_secret(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Compares a presented token with the configured worker token in constant time (for equal lengths;
/// the length itself is not secret).
pub fn worker_token_matches(presented: &str, configured: &str) -> bool {
    presented.len() == configured.len()
        && bool::from(presented.as_bytes().ct_eq(configured.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_round_trip() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("s3creT", &h));
        assert!(!needs_rehash(&h));
    }

    #[test]
    fn accepts_bcrypt_hashes() {
        let h = bcrypt::hash("legacy", 4).unwrap();
        assert!(verify_password("legacy", &h));
        assert!(!verify_password("other", &h));
        assert!(needs_rehash(&h));
    }

    #[test]
    fn malformed_hashes_never_match() {
        for stored in ["", "plain", "$2b$nonsense", "$argon2id$broken"] {
            assert!(!verify_password("", stored));
            assert!(!verify_password("plain", stored));
        }
        assert!(!verify_password("anything", DUMMY_HASH));
    }

    #[test]
    fn empty_password_is_refused() {
        assert!(hash_password("").is_err());
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let a = new_session_token();
        let b = new_session_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert_ne!(token_digest(&a), token_digest(&b));
    }

    #[test]
    fn worker_token_comparison() {
        assert!(worker_token_matches("abc", "abc"));
        assert!(!worker_token_matches("abd", "abc"));
        assert!(!worker_token_matches("ab", "abc"));
    }
}
