//! Random identifiers and secrets, and how they are stored: only as SHA-256
//! hashes, compared in constant time (invariant 6). The secrets are 32
//! random bytes, so a fast hash is enough: there is nothing to brute-force.

use ring::{
    digest,
    rand::{SecureRandom, SystemRandom},
};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// Hex digits of a key id.
const KEY_ID_LEN: usize = 16;
/// Hex digits of a key secret.
const KEY_SECRET_LEN: usize = 64;
const API_KEY_PREFIX: &str = "tether-key.v1.";

/// `n` random bytes as lower-case hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the operating system's random source failed; cannot make secrets safely");
    hex::encode(buf)
}

/// `n` random bytes.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the operating system's random source failed; cannot make secrets safely");
    buf
}

/// SHA-256 of a secret, as stored.
pub fn hash(secret: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

/// Whether `secret` hashes to `stored`, in constant time.
pub fn matches(secret: &str, stored: &[u8]) -> bool {
    hash(secret).ct_eq(stored).into()
}

/// A new API key: `(key id, whole key)`. The whole key is shown once.
pub fn new_api_key() -> (String, SecretString) {
    let id = random_hex(KEY_ID_LEN / 2);
    let secret = random_hex(KEY_SECRET_LEN / 2);
    (
        id.clone(),
        SecretString::from(format!("{API_KEY_PREFIX}{id}.{secret}")),
    )
}

/// Splits a presented API key into id and secret; `None` if it does not
/// have the shape of one (no lookup is made for such input).
pub fn split_api_key(key: &SecretString) -> Option<(String, SecretString)> {
    let text = key.expose_secret();
    let rest = text.strip_prefix(API_KEY_PREFIX)?;
    let (id, secret) = rest.split_once('.')?;
    let hex_ok = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_ok(id, KEY_ID_LEN) && hex_ok(secret, KEY_SECRET_LEN))
        .then(|| (id.to_owned(), SecretString::from(secret.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_round_trip_and_match_only_their_hash() {
        let (id, key) = new_api_key();
        let (got_id, secret) = split_api_key(&key).unwrap();
        assert_eq!(got_id, id);
        let stored = hash(secret.expose_secret());
        assert!(matches(secret.expose_secret(), &stored));
        assert!(!matches("wrong", &stored));
        assert!(split_api_key(&SecretString::from("tether-key.v1.zz.yy".to_owned())).is_none());
        assert!(split_api_key(&SecretString::from("Bearer x".to_owned())).is_none());
    }

    #[test]
    fn random_values_differ() {
        assert_ne!(random_hex(16), random_hex(16));
        assert_eq!(random_hex(8).len(), 16);
    }
}
