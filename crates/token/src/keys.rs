//! Token key derivation and the keyring.
//!
//! * content key = HKDF-SHA256(ikm = the 32 bytes of `.rai` `aes_key`,
//!   salt = empty, info = `"relayapi token v2"`), 32 bytes of output;
//! * `kid` = the first 16 lower-case hex characters of SHA-256(content key).
//!
//! A [`Keyring`] maps kids to keys so a relay can accept tokens from
//! several `.rai` files at once.

use std::collections::BTreeMap;

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::KeyringError;
use crate::rai::RaiConfig;

/// HKDF `info` for the v2 content key.
pub const HKDF_INFO: &[u8] = b"relayapi token v2";

/// A v2 content key (A256GCM) and its `kid`. The key bytes are zeroized on
/// drop; `Debug` prints the kid only.
#[derive(Clone)]
pub struct V2Key {
    content_key: Zeroizing<[u8; 32]>,
    kid: String,
}

impl V2Key {
    /// Derives the content key from the 32-byte `.rai` AES key.
    pub fn from_aes_key(aes_key: &[u8; 32]) -> V2Key {
        let hk = Hkdf::<Sha256>::new(Some(&[]), aes_key);
        let mut okm = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit, so
        // `expand` cannot fail; the fallback arm is unreachable.
        if hk.expand(HKDF_INFO, &mut okm[..]).is_err() {
            okm.fill(0);
        }
        Self::from_content_key(okm)
    }

    /// Derives the key from a parsed `.rai` config.
    pub fn from_rai(rai: &RaiConfig) -> V2Key {
        Self::from_aes_key(&rai.aes_key_bytes())
    }

    fn from_content_key(content_key: Zeroizing<[u8; 32]>) -> V2Key {
        let digest = Sha256::digest(&content_key[..]);
        let mut kid = hex::encode(digest);
        kid.truncate(16);
        V2Key { content_key, kid }
    }

    /// The key id: 16 lower-case hex characters, public.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw 32-byte content key (for SDK interop tests and third-party
    /// JOSE libraries). Treat as secret.
    pub fn expose_content_key(&self) -> &[u8; 32] {
        &self.content_key
    }
}

impl PartialEq for V2Key {
    /// Constant-time comparison of the key bytes.
    fn eq(&self, other: &Self) -> bool {
        self.content_key.ct_eq(&other.content_key[..]).into()
    }
}

impl Eq for V2Key {}

impl std::fmt::Debug for V2Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V2Key")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Keys by kid. `Debug` lists the kids only.
#[derive(Clone, Default)]
pub struct Keyring {
    /// kid → key; invariant: `keys[k].kid() == k`.
    keys: BTreeMap<String, V2Key>,
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Keyring {
        Keyring::default()
    }

    /// Adds a key. Inserting the same key twice (two `.rai` files with the
    /// same `aes_key`) is a no-op.
    ///
    /// # Errors
    /// [`KeyringError::KidCollision`] if a *different* key has the same kid.
    pub fn insert(&mut self, key: V2Key) -> Result<(), KeyringError> {
        match self.keys.get(key.kid()) {
            Some(existing) if *existing == key => Ok(()),
            Some(_) => Err(KeyringError::KidCollision {
                kid: key.kid().to_owned(),
            }),
            None => {
                self.keys.insert(key.kid().to_owned(), key);
                Ok(())
            }
        }
    }

    /// The key with this kid.
    pub fn get(&self, kid: &str) -> Option<&V2Key> {
        self.keys.get(kid)
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key has been inserted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The kids, in sorted order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
}

impl From<V2Key> for Keyring {
    fn from(key: V2Key) -> Keyring {
        let mut ring = Keyring::new();
        ring.keys.insert(key.kid().to_owned(), key);
        ring
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

    use super::*;

    fn key(seed: u8) -> V2Key {
        V2Key::from_aes_key(&[seed; 32])
    }

    #[test]
    fn kid_is_16_hex_of_sha256_content_key() {
        let k = key(7);
        assert_eq!(k.kid().len(), 16);
        let full = hex::encode(Sha256::digest(k.expose_content_key()));
        assert_eq!(k.kid(), &full[..16]);
        assert_ne!(key(7).expose_content_key(), &[7u8; 32]);
    }

    #[test]
    fn empty_salt_equals_zero_salt() {
        // RFC 5869: an absent salt is HashLen zero bytes; HMAC pads keys
        // with zeros, so empty, absent and zero salts all agree.
        let ikm = [9u8; 32];
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        Hkdf::<Sha256>::new(None, &ikm)
            .expand(HKDF_INFO, &mut a)
            .unwrap();
        Hkdf::<Sha256>::new(Some(&[0u8; 32]), &ikm)
            .expand(HKDF_INFO, &mut b)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(&a, V2Key::from_aes_key(&ikm).expose_content_key());
    }

    #[test]
    fn keyring_ignores_duplicates_of_the_same_key() {
        let mut ring = Keyring::new();
        ring.insert(key(1)).unwrap();
        ring.insert(key(1)).unwrap();
        ring.insert(key(2)).unwrap();
        assert_eq!(ring.len(), 2);
        assert!(!ring.is_empty());
        let k1 = key(1);
        assert_eq!(ring.get(k1.kid()), Some(&k1));
        assert_eq!(ring.kids().count(), 2);
        assert!(ring.get("0000000000000000").is_none());
    }

    #[test]
    fn keyring_rejects_a_different_key_under_the_same_kid() {
        let mut ring = Keyring::from(key(1));
        let mut forged = key(2);
        forged.kid = key(1).kid().to_owned();
        assert!(matches!(
            ring.insert(forged),
            Err(KeyringError::KidCollision { .. })
        ));
    }

    #[test]
    fn debug_shows_kids_only() {
        let k = key(3);
        let hex_key = hex::encode(k.expose_content_key());
        let ring = Keyring::from(k.clone());
        for dbg in [format!("{k:?}"), format!("{ring:?}")] {
            assert!(dbg.contains(k.kid()), "{dbg}");
            assert!(!dbg.contains(&hex_key), "{dbg}");
            assert!(!dbg.contains(&hex::encode([3u8; 32])), "{dbg}");
        }
    }
}
