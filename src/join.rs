//! The join token: one string that lets an agent enroll safely.
//!
//! `tether-join.v1.<token id>.<secret>.<CA pin>`:
//! - the token id is public (16 hex digits; listed by `tetherctl tokens list`);
//! - the secret is 32 random bytes (64 hex digits); the control plane stores
//!   only its SHA-256;
//! - the CA pin is the SHA-256 of the control plane CA's public key (64 hex
//!   digits), so the agent can verify the control plane on first contact
//!   without trusting anything else (like `kubeadm join`'s discovery hash).
//!
//! The secret never appears in `Debug` output.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use crate::tls::Pin;

const PREFIX: &str = "tether-join.v1.";
/// Hex digits of a token id.
pub const TOKEN_ID_LEN: usize = 16;
/// Hex digits of a token secret.
pub const SECRET_LEN: usize = 64;
/// Longest join token accepted, bytes; longer input is refused before any
/// parsing.
pub const MAX_LEN: usize = 256;

/// A parsed join token.
pub struct JoinToken {
    /// The public token id.
    pub token_id: String,
    /// The secret part. Never logged.
    pub secret: SecretString,
    /// The pin of the control plane's CA.
    pub pin: Pin,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("token_id", &self.token_id)
            .field("secret", &"[redacted]")
            .field("pin", &self.pin)
            .finish()
    }
}

/// Why a join token could not be read. The messages never repeat the input,
/// which holds a secret.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    /// Not a join token at all.
    #[error(
        "this is not a Tether join token (it must start with \"tether-join.v1.\"); copy the whole line that `tetherctl tokens create` printed"
    )]
    Prefix,
    /// Longer than any join token.
    #[error(
        "the join token is longer than {MAX_LEN} bytes; copy only the line that `tetherctl tokens create` printed"
    )]
    TooLong,
    /// The wrong number of parts, or a part of the wrong length or alphabet.
    #[error(
        "the join token is damaged ({0}); copy the whole line that `tetherctl tokens create` printed"
    )]
    Malformed(&'static str),
}

impl JoinToken {
    /// Parses a join token, ignoring surrounding white space (a token read
    /// from a file usually ends with a newline).
    pub fn parse(text: &str) -> Result<Self, JoinTokenError> {
        let text = text.trim();
        if text.len() > MAX_LEN {
            return Err(JoinTokenError::TooLong);
        }
        let rest = text.strip_prefix(PREFIX).ok_or(JoinTokenError::Prefix)?;
        let mut parts = rest.split('.');
        let (Some(id), Some(secret), Some(pin), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JoinTokenError::Malformed(
                "expected three dot-separated parts after the prefix",
            ));
        };
        if id.len() != TOKEN_ID_LEN || !is_lower_hex(id) {
            return Err(JoinTokenError::Malformed("bad token id"));
        }
        if secret.len() != SECRET_LEN || !is_lower_hex(secret) {
            return Err(JoinTokenError::Malformed("bad secret"));
        }
        let pin = Pin::parse(pin).map_err(|_| JoinTokenError::Malformed("bad CA pin"))?;
        Ok(Self {
            token_id: id.to_owned(),
            secret: SecretString::from(secret.to_owned()),
            pin,
        })
    }

    /// The whole join token, secret included: only for showing it to the
    /// operator once.
    pub fn expose(&self) -> String {
        format!(
            "{PREFIX}{}.{}.{}",
            self.token_id,
            self.secret.expose_secret(),
            self.pin.to_hex()
        )
    }

    /// What `EnrollRequest.token` carries: `<token id>.<secret>`.
    pub fn enroll_credential(&self) -> SecretString {
        SecretString::from(format!("{}.{}", self.token_id, self.secret.expose_secret()))
    }
}

/// Splits an `EnrollRequest.token` into token id and secret, checking the
/// shape only.
pub fn split_enroll_credential(text: &str) -> Result<(&str, &str), JoinTokenError> {
    if text.len() > MAX_LEN {
        return Err(JoinTokenError::TooLong);
    }
    let (id, secret) = text
        .split_once('.')
        .ok_or(JoinTokenError::Malformed("expected <token id>.<secret>"))?;
    if id.len() != TOKEN_ID_LEN || !is_lower_hex(id) {
        return Err(JoinTokenError::Malformed("bad token id"));
    }
    if secret.len() != SECRET_LEN || !is_lower_hex(secret) {
        return Err(JoinTokenError::Malformed("bad secret"));
    }
    Ok((id, secret))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        format!(
            "tether-join.v1.{}.{}.{}",
            "0123456789abcdef",
            "5e".repeat(32),
            "ab".repeat(32)
        )
    }

    #[test]
    fn round_trips_and_hides_the_secret() {
        let t = JoinToken::parse(&format!("  {}\n", sample())).unwrap();
        assert_eq!(t.token_id, "0123456789abcdef");
        assert_eq!(t.expose(), sample());
        let debug = format!("{t:?}");
        assert!(!debug.contains(&"5e".repeat(32)), "{debug}");
        let cred = t.enroll_credential();
        let (id, secret) = split_enroll_credential(cred.expose_secret()).unwrap();
        assert_eq!(id, "0123456789abcdef");
        assert_eq!(secret, "5e".repeat(32));
    }

    #[test]
    fn damaged_tokens_get_errors_that_do_not_echo_them() {
        let good = sample();
        for (input, want) in [
            ("hello".to_owned(), JoinTokenError::Prefix),
            ("x".repeat(300), JoinTokenError::TooLong),
            (
                good.replacen(".5e", ".zz", 1),
                JoinTokenError::Malformed("bad secret"),
            ),
            (
                format!("{good}.extra"),
                JoinTokenError::Malformed("expected three dot-separated parts after the prefix"),
            ),
            (
                good[..good.len() - 2].to_owned(),
                JoinTokenError::Malformed("bad CA pin"),
            ),
            (
                good.replacen("0123456789abcdef", "0123", 1),
                JoinTokenError::Malformed("bad token id"),
            ),
        ] {
            let err = JoinToken::parse(&input).unwrap_err();
            assert_eq!(err, want, "{input}");
            assert!(!err.to_string().contains("5e5e"), "{err}");
        }
    }

    #[test]
    fn enroll_credential_shape_is_checked() {
        assert!(split_enroll_credential("nodot").is_err());
        assert!(split_enroll_credential(&format!("0123456789abcdef.{}", "5e".repeat(31))).is_err());
        assert!(split_enroll_credential(&"a".repeat(1000)).is_err());
    }
}
