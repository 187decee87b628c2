//! Error types.
//!
//! * [`TokenError`] — the only error a token decode can produce. It carries
//!   no reason on purpose: a forged, corrupted, wrongly keyed or malformed
//!   token all look the same to the caller (and to an attacker probing the
//!   relay). Use [`TokenError::code`] for the stable wire code.
//! * [`RaiError`] — problems in a `.rai` client config; messages name the
//!   field and the fix and never echo key material.
//! * [`KeyringError`] — conflicting keys in a [`crate::Keyring`].

/// Why a token was rejected. Deliberately reason-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TokenError {
    /// Malformed, forged, unknown key, bad claims — anything but time.
    #[error("token is invalid")]
    Invalid,
    /// `now >= exp`.
    #[error("token has expired")]
    Expired,
    /// `nbf` or `iat` is more than the leeway in the future.
    #[error("token is not yet valid")]
    NotYetValid,
}

impl TokenError {
    /// Stable error code, shared by the relay's HTTP errors, the SDKs and the
    /// test vectors: `token_invalid`, `token_expired`, `token_not_yet_valid`.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Invalid => "token_invalid",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
        }
    }
}

/// One problem with one field of a `.rai` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaiFieldError {
    /// Dotted field path, e.g. `crypto.aes_key`.
    pub field: &'static str,
    /// What is wrong and how to fix it (starts lower-case, no key material).
    pub problem: String,
}

impl std::fmt::Display for RaiFieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.field, self.problem)
    }
}

/// A `.rai` client config could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaiError {
    /// Not JSON at all. Only the position is reported (never the content).
    #[error("not valid JSON (syntax error at line {line}, column {column}); regenerate the file with `relayapi gen-config`")]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// Valid JSON, but one or more fields are wrong. All problems are
    /// collected before failing.
    #[error("{}", join_problems(.0))]
    Invalid(Vec<RaiFieldError>),
}

fn join_problems(problems: &[RaiFieldError]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A different key with the same `kid` was inserted into a keyring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// Two different content keys hash to the same 64-bit kid.
    #[error("two different keys share kid {kid}; remove one of the .rai files")]
    KidCollision {
        /// The colliding key id (public, not secret).
        kid: String,
    },
}
