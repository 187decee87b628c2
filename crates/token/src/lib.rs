//! `relayapi-token`: RelayAPI capability tokens and `.rai` client configs.
//!
//! A relay operator gives each application backend a `.rai` file holding a
//! shared AES key. The backend mints short-lived, encrypted **v2 tokens**
//! (JWE compact, `dir` + `A256GCM`) that carry a provider API key and its
//! limits; a browser front end presents the token to the relay, which
//! decrypts it, checks it, and calls the provider. This crate is pure — no
//! network, no async, no file I/O — and doubles as the Rust SDK.
//!
//! Layout (leaves first):
//!
//! * [`secret`] — [`SecretString`], redacted in `Debug`/`Display`;
//! * [`error`] — [`TokenError`] (reason-free, with stable codes),
//!   [`RaiError`], [`KeyringError`];
//! * [`rai`] — [`RaiConfig`]: parse/validate/generate `.rai` JSON;
//! * [`keys`] — HKDF content-key derivation, `kid`, [`V2Key`], [`Keyring`];
//! * [`scope`] — grammar and matching of the policy claims (`origins`, `ips`,
//!   `paths`, `methods`);
//! * [`claims`] — [`Claims`]: fail-closed parsing, canonical JSON, time rules;
//! * [`v2`] — [`encode_v2`] / [`decode_v2`] and [`looks_like_jwe`];
//! * [`legacy`] — decoding the earlier Go server's AES-CBC tokens (opt-in on the relay).
//!
//! The normative format is `docs/token-format.md`; the cross-language test
//! vectors are `testdata/vectors/token-v2.json`.
//!
//! ```
//! use relayapi_token::{decode_v2, encode_v2, Claims, Keyring, RaiConfig, V2Key};
//!
//! let rai = RaiConfig::generate("http://localhost", 8840);
//! let key = V2Key::from_rai(&rai);
//! let now = 1_700_000_000;
//! let claims = Claims::new("openai", "sk-example", 600, now).with_max_calls(10);
//! let token = encode_v2(&key, &claims).unwrap();
//!
//! let mut ring = Keyring::new();
//! ring.insert(key).unwrap();
//! assert_eq!(decode_v2(&ring, &token, now).unwrap(), claims);
//! ```

mod json;

pub mod claims;
pub mod error;
pub mod keys;
pub mod legacy;
pub mod rai;
pub mod scope;
pub mod secret;
pub mod v2;

pub use claims::{new_jti, Claims, Credential, MAX_JTI_LEN};
pub use error::{KeyringError, RaiError, RaiFieldError, TokenError};
pub use keys::{Keyring, V2Key};
pub use legacy::{
    decode_legacy, decode_legacy_with, LegacyClaims, LegacyKey, LegacyKeyring, LegacyOptions,
};
pub use rai::{RaiConfig, RaiCrypto, RaiServer};
pub use secret::SecretString;
pub use v2::{
    decode_v2, encode_v2, encode_v2_with_iv, header_kid, looks_like_jwe, open_v2, peek_kid,
};
