//! Session tokens as HS256 JSON Web Tokens, so the browser UI can read who is logged in: it takes
//! the token's middle part, decodes it with `atob` (standard base64, Latin-1) and `JSON.parse`s it.
//! Pure: encoding, signing and verification; the caller passes the clock.
//!
//! The payload JSON is written in ASCII only: every non-ASCII character is escaped as UTF-16
//! `\uXXXX` (surrogate pairs above the BMP), and so are controls, DEL and the characters `>`, `?`
//! and `~`. Base64 turns three bytes into four 6-bit digits; digits 62 and 63 (`-` and `_` in
//! base64url, `+` and `/` in standard base64) only arise from a byte ≥ 0x80 or from `>` (0x3E),
//! `?` (0x3F), `~` (0x7E) or DEL (0x7F) as the last byte of a group. With none of them, the
//! base64url text of header and payload holds no `-` or `_`, is also valid standard base64, and
//! `atob` decodes it exactly.
//!
//! What a token proves: that this cluster signed these claims and that they have not expired. It
//! does not prove the session is live — the session row in the database is the authority (Logout
//! and user deletion revoke it); verification here is only a cheap pre-check before that lookup.
//! Every token carries a random `jti` (256 bits), so two logins of one user in one second differ
//! and a token cannot be guessed from its claims even by someone who knows them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use rand::Rng as _;
use sha2::Sha256;

use super::{Error, Result};

/// The only header issued and accepted (`alg: none` and every other algorithm are refused).
pub const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
/// [`HEADER`] in base64url: every token starts with it and a dot.
pub const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
/// Longest token issued or verified (bytes): browsers keep cookies of up to 4096 bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Why a token was refused. The messages are safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("not a JWT")]
    Malformed,
    #[error("unsupported JWT header (only HS256 is accepted)")]
    Header,
    #[error("bad JWT signature")]
    Signature,
    #[error("invalid JWT claims")]
    Claims,
    #[error("expired JWT")]
    Expired,
}

/// What a session token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub user_id: i32,
    /// Left out of tokens whose escaped username would push them over [`MAX_TOKEN_BYTES`] (the UI
    /// then finds the user by `userId`).
    pub username: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// The random nonce (base64url of 32 bytes).
    pub jti: String,
}

/// The payload as parsed back (`userId` must repeat `user_id`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WireClaims {
    user_id: i32,
    #[serde(rename = "userId")]
    user_id_again: i32,
    #[serde(default)]
    username: Option<String>,
    exp: i64,
    jti: String,
}

/// The signing key shared by every replica of a cluster.
#[derive(Clone)]
pub struct JwtKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKey(…)")
    }
}

impl JwtKey {
    /// A key from secret bytes (a configured `jwt_secret`, or one generated with
    /// [`JwtKey::generate_secret`]). An empty secret is refused.
    pub fn new(secret: &[u8]) -> Result<JwtKey> {
        if secret.is_empty() {
            return Err(Error::Invalid("the JWT secret must not be empty".into()));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .map_err(|e| Error::Invalid(format!("unusable JWT secret: {e}")))?;
        Ok(JwtKey { mac })
    }

    /// 256 random bits, for a cluster without a configured secret.
    pub fn generate_secret() -> Vec<u8> {
        rand::rng().random::<[u8; 32]>().to_vec()
    }

    /// A new session token for `user_id`/`username`, expiring at `exp` (Unix seconds), with a
    /// fresh random `jti`.
    pub fn issue(&self, user_id: i32, username: &str, exp: i64) -> String {
        let jti = URL_SAFE_NO_PAD.encode(rand::rng().random::<[u8; 32]>());
        let claims = Claims {
            user_id,
            username: Some(username.to_string()),
            exp,
            jti,
        };
        let token = self.encode(&claims);
        if token.len() <= MAX_TOKEN_BYTES {
            return token;
        }
        self.encode(&Claims {
            username: None,
            ..claims
        })
    }

    /// Signs `claims` as given (see [`JwtKey::issue`] for the size rule).
    pub fn encode(&self, claims: &Claims) -> String {
        let mut token = String::with_capacity(256);
        token.push_str(HEADER_B64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload_json(claims), &mut token);
        let signature = self.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
    }

    /// Checks size, header, signature (in constant time) and expiry against `now` (Unix seconds),
    /// and returns the claims.
    pub fn verify(&self, token: &str, now: i64) -> std::result::Result<Claims, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLong);
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
        let (header, payload) = signed.split_once('.').ok_or(JwtError::Malformed)?;
        if header != HEADER_B64 {
            return Err(JwtError::Header);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| JwtError::Malformed)?;
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| JwtError::Signature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| JwtError::Claims)?;
        let wire: WireClaims = serde_json::from_slice(&payload).map_err(|_| JwtError::Claims)?;
        if wire.user_id != wire.user_id_again {
            return Err(JwtError::Claims);
        }
        if wire.exp <= now {
            return Err(JwtError::Expired);
        }
        Ok(Claims {
            user_id: wire.user_id,
            username: wire.username,
            exp: wire.exp,
            jti: wire.jti,
        })
    }

    fn sign(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

/// Whether `token` has the shape of our JWTs (so a failed verification means forged or expired,
/// not another kind of token).
pub fn looks_like_jwt(token: &str) -> bool {
    token
        .strip_prefix(HEADER_B64)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// The claims as ASCII-only JSON (see the module documentation).
fn payload_json(claims: &Claims) -> String {
    let mut out = String::with_capacity(128);
    out.push_str(&format!(
        r#"{{"user_id":{id},"userId":{id},"#,
        id = claims.user_id
    ));
    if let Some(username) = &claims.username {
        out.push_str(r#""username":"#);
        push_ascii_json_string(&mut out, username);
        out.push(',');
    }
    out.push_str(&format!(r#""exp":{},"jti":"#, claims.exp));
    push_ascii_json_string(&mut out, &claims.jti);
    out.push('}');
    out
}

/// Appends `s` as a JSON string of printable ASCII other than `>`, `?` and `~`; everything else is
/// a `\uXXXX` escape (UTF-16 units).
pub fn push_ascii_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '>' | '?' | '~' => push_escape(out, c),
            ' '..='}' => out.push(c),
            _ => push_escape(out, c),
        }
    }
    out.push('"');
}

fn push_escape(out: &mut String, c: char) {
    let mut units = [0u16; 2];
    for unit in c.encode_utf16(&mut units) {
        out.push_str(&format!("\\u{unit:04x}"));
    }
}

#[cfg(test)]
mod tests {
    use base64::alphabet;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use proptest::prelude::*;

    use super::*;

    /// The browser's `atob`: standard alphabet, padding optional.
    const ATOB: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );

    fn key() -> JwtKey {
        JwtKey::new(b"test secret").unwrap()
    }

    const NOW: i64 = 1_800_000_000;

    /// What the UI does with a token: the middle part through atob (bytes as Latin-1) and
    /// JSON.parse.
    fn as_the_ui_reads_it(token: &str) -> serde_json::Value {
        let middle = token.split('.').nth(1).unwrap();
        let bytes = ATOB.decode(middle).expect("atob accepts the payload");
        let latin1: String = bytes.iter().map(|&b| b as char).collect();
        serde_json::from_str(&latin1).expect("JSON.parse accepts the payload")
    }

    fn check_readable(username: &str) {
        let token = key().issue(42, username, NOW + 60);
        let (signed, _) = token.rsplit_once('.').unwrap();
        assert!(
            !signed.contains('-') && !signed.contains('_'),
            "{username:?} gave {signed}"
        );
        let claims = as_the_ui_reads_it(&token);
        assert_eq!(claims["user_id"], 42);
        assert_eq!(claims["userId"], 42);
        assert_eq!(claims["username"], username);
        assert_eq!(claims["exp"], NOW + 60);
        let verified = key().verify(&token, NOW).unwrap();
        assert_eq!(verified.username.as_deref(), Some(username));
    }

    #[test]
    fn header_is_exact() {
        assert_eq!(URL_SAFE_NO_PAD.encode(HEADER), HEADER_B64);
        let token = key().issue(1, "admin", NOW + 1);
        assert!(token.starts_with(&format!("{HEADER_B64}.")));
        assert!(looks_like_jwt(&token));
        assert!(!looks_like_jwt("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9x"));
        assert!(!looks_like_jwt("abcdef"));
    }

    #[test]
    fn hard_usernames_stay_readable() {
        for name in [
            "admin",
            "",
            ">>>???~~~",
            "a>b?c~d",
            "\"quoted\" \\back\\slash",
            "é",
            "ÿþ",
            "日本語のユーザー",
            "emoji 🦀🎉",
            "\u{7f}\u{0}\u{1f}\n\t",
            "\u{10ffff}\u{fffd}\u{2028}",
            "</script>",
        ] {
            check_readable(name);
        }
    }

    proptest! {
        #[test]
        fn any_username_stays_readable(name in any::<String>()) {
            check_readable(&name);
        }

        #[test]
        fn nasty_usernames_stay_readable(name in "[>?~\"\\\\a-zé🦀\u{7f}\u{0}-\u{1f}]{0,40}") {
            check_readable(&name);
        }

        #[test]
        fn verify_never_panics(token in any::<String>()) {
            let _ = key().verify(&token, NOW);
        }

        #[test]
        fn any_change_is_refused(name in "[a-z]{1,12}", at in any::<prop::sample::Index>(), with in "[A-Za-z0-9._-]") {
            let token = key().issue(7, &name, NOW + 60);
            let i = at.index(token.len());
            let mut changed = token.clone();
            changed.replace_range(i..i + 1, &with);
            prop_assume!(changed != token);
            prop_assert!(key().verify(&changed, NOW).is_err());
        }
    }

    #[test]
    fn two_tokens_of_one_second_differ() {
        let a = key().issue(1, "admin", NOW);
        let b = key().issue(1, "admin", NOW);
        assert_ne!(a, b);
        let claims = as_the_ui_reads_it(&a);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 43);
    }

    #[test]
    fn refuses_forged_expired_and_odd_tokens() {
        let token = key().issue(3, "bob", NOW + 10);
        let other = JwtKey::new(b"another secret").unwrap();
        assert_eq!(other.verify(&token, NOW), Err(JwtError::Signature));
        assert_eq!(key().verify(&token, NOW + 10), Err(JwtError::Expired));
        assert!(key().verify(&token, NOW + 9).is_ok());

        // alg none, with the same payload and no signature.
        let payload = token.split('.').nth(1).unwrap();
        let none = format!(
            "{}.{payload}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#)
        );
        assert_eq!(key().verify(&none, NOW), Err(JwtError::Header));
        // Another spelling of the HS256 header is refused too.
        let spaced = format!(
            "{}.{payload}.x",
            URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"HS256"}"#)
        );
        assert_eq!(key().verify(&spaced, NOW), Err(JwtError::Header));

        assert_eq!(key().verify("", NOW), Err(JwtError::Malformed));
        assert_eq!(key().verify("a.b", NOW), Err(JwtError::Malformed));
        assert_eq!(key().verify("a.b.c", NOW), Err(JwtError::Header));
        let long = format!("{token}{}", "A".repeat(MAX_TOKEN_BYTES));
        assert_eq!(key().verify(&long, NOW), Err(JwtError::TooLong));

        // Well signed but with claims that do not agree.
        let signed = |json: &str| {
            let signed = format!("{HEADER_B64}.{}", URL_SAFE_NO_PAD.encode(json));
            let sig = URL_SAFE_NO_PAD.encode(key().sign(signed.as_bytes()));
            format!("{signed}.{sig}")
        };
        let ok = signed(r#"{"user_id":1,"userId":1,"exp":1900000000,"jti":"x"}"#);
        assert_eq!(key().verify(&ok, NOW).unwrap().username, None);
        for bad in [
            r#"{"user_id":1,"userId":2,"exp":1900000000,"jti":"x"}"#,
            r#"{"user_id":1,"exp":1900000000,"jti":"x"}"#,
            r#"{"user_id":1,"userId":1,"exp":1900000000,"jti":"x","admin":true}"#,
            r#"[1]"#,
            "not json",
        ] {
            assert_eq!(
                key().verify(&signed(bad), NOW),
                Err(JwtError::Claims),
                "{bad}"
            );
        }
    }

    #[test]
    fn long_usernames_are_left_out_rather_than_overflowing() {
        let name = "~".repeat(1024);
        let token = key().issue(5, &name, NOW + 60);
        assert!(token.len() <= MAX_TOKEN_BYTES);
        let claims = key().verify(&token, NOW).unwrap();
        assert_eq!(claims.username, None);
        assert_eq!(claims.user_id, 5);
        let short = "é".repeat(100);
        assert_eq!(
            key()
                .verify(&key().issue(5, &short, NOW + 60), NOW)
                .unwrap()
                .username,
            Some(short)
        );
    }

    #[test]
    fn empty_secret_is_refused() {
        assert!(JwtKey::new(b"").is_err());
        assert_eq!(JwtKey::generate_secret().len(), 32);
    }
}
