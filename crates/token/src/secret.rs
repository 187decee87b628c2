//! [`SecretString`]: a string that never shows itself in logs.
//!
//! Provider API keys and `.rai` key material are wrapped in this type.
//! `Debug` and `Display` print `[REDACTED]`; the value is reachable only
//! through [`SecretString::expose`], so every use site is greppable.
//! Equality is constant-time and the buffer is zeroized on drop.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// The marker printed instead of a secret.
pub const REDACTED: &str = "[REDACTED]";

/// A secret string. Serialises transparently (as a plain JSON string) so
/// configuration files keep their shape; formatting never reveals it.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// Returns the secret. Call this only where the value is actually used.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl PartialEq for SecretString {
    /// Constant-time in the contents (the length may leak).
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for SecretString {}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl std::fmt::Display for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let s = SecretString::new("sk-live-very-secret".into());
        assert_eq!(format!("{s:?}"), "[REDACTED]");
        assert_eq!(format!("{s}"), "[REDACTED]");
        assert_eq!(s.expose(), "sk-live-very-secret");
    }

    #[test]
    fn equality_compares_contents() {
        assert_eq!(SecretString::from("a"), SecretString::from("a"));
        assert_ne!(SecretString::from("a"), SecretString::from("b"));
        assert_ne!(SecretString::from("a"), SecretString::from("ab"));
    }

    #[test]
    fn serde_is_transparent() {
        let s: SecretString = serde_json::from_str("\"k\"").unwrap();
        assert_eq!(s.expose(), "k");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"k\"");
    }
}
