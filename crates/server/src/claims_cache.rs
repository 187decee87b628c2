//! Decoded v2 tokens, remembered by their exact text.
//!
//! A front end sends the same token with every call until it expires, and
//! decoding it (base64, AES-GCM, fail-closed JSON parsing) was the largest
//! single piece of the relay's own CPU per request. The same bytes always
//! decrypt to the same claims under the same keyring, so the result of a
//! successful decode can be reused; only the clock checks
//! ([`Claims::validate`]) depend on the moment and run on every request.
//!
//! Invariants:
//! - Only tokens that decoded and validated are stored, so nothing a client
//!   invents can enter the cache; a failed decode costs what it always did.
//! - A hit requires the full token text to be equal, not just its hash.
//! - The cache belongs to one keyring (it lives in [`crate::keyfile::Keys`]
//!   next to it): a key reload builds new `Keys` with an empty cache, so a
//!   token of a removed key stops working at once.
//! - Memory is bounded: at most [`SHARDS`] × [`SHARD_CAP`] entries, tokens
//!   longer than [`MAX_CACHED_TOKEN_LEN`] are never stored; a full shard is
//!   emptied (its tokens are decoded again on their next use).

use crate::FastHasher as RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};

use relayapi_token::{Claims, Keyring, TokenError};

/// Independent locks, so workers rarely wait on each other.
pub const SHARDS: usize = 16;
/// Entries per shard.
pub const SHARD_CAP: usize = 256;
/// Longer tokens are decoded every time (real tokens are well below this).
pub const MAX_CACHED_TOKEN_LEN: usize = 2048;
/// Bytes at the end of a token that are hashed: the GCM tag and the end of
/// the ciphertext, which differ between any two tokens ever minted.
const HASHED_SUFFIX: usize = 32;

/// See the module docs. `Clone` gives an empty cache.
pub struct ClaimsCache {
    hasher: RandomState,
    /// Per shard: hash of the token → (token, claims).
    shards: Box<[Mutex<Shard>]>,
}

/// Keys are already keyed hashes: the map uses them as they are.
type Shard = HashMap<u64, (Box<str>, Arc<Claims>), BuildHasherDefault<Prehashed>>;

/// A `Hasher` for keys that are hashes already (`u64` only).
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used for `u64` keys; fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Default for ClaimsCache {
    fn default() -> Self {
        Self {
            hasher: RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Clone for ClaimsCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for ClaimsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens or claims: they are secrets.
        f.debug_struct("ClaimsCache")
            .field("entries", &self.len())
            .finish()
    }
}

impl ClaimsCache {
    /// [`relayapi_token::decode_v2`] under `keyring`, reusing an earlier
    /// successful decode of the same token. `keyring` must be the one this
    /// cache belongs to.
    ///
    /// # Errors
    /// Exactly those of [`relayapi_token::decode_v2`].
    pub fn decode_v2(
        &self,
        keyring: &Keyring,
        token: &str,
        now: i64,
    ) -> Result<Arc<Claims>, TokenError> {
        if token.len() > MAX_CACHED_TOKEN_LEN {
            return relayapi_token::decode_v2(keyring, token, now).map(Arc::new);
        }
        let suffix = &token.as_bytes()[token.len().saturating_sub(HASHED_SUFFIX)..];
        let hash = self.hasher.hash_one(suffix);
        let shard = &self.shards[(hash % SHARDS as u64) as usize];
        let hit = lock(shard)
            .get(&hash)
            .filter(|(t, _)| **t == *token)
            .map(|(_, c)| Arc::clone(c));
        if let Some(claims) = hit {
            claims.validate(now)?;
            return Ok(claims);
        }
        let claims = relayapi_token::decode_v2(keyring, token, now)?;
        let mut map = lock(shard);
        if map.len() >= SHARD_CAP {
            map.clear();
        }
        let claims = Arc::new(claims);
        map.insert(hash, (token.into(), Arc::clone(&claims)));
        Ok(claims)
    }

    /// Entries stored (all shards).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A poisoned shard still holds whole entries (each insert is one call).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use relayapi_token::{encode_v2, V2Key};

    const NOW: i64 = 1_700_000_000;

    fn key(byte: u8) -> (Keyring, V2Key) {
        let k = V2Key::from_aes_key(&[byte; 32]);
        let mut ring = Keyring::new();
        ring.insert(k.clone()).unwrap();
        (ring, k)
    }

    fn token(k: &V2Key, ttl: i64) -> String {
        encode_v2(k, &Claims::new("openai", "sk-test", ttl, NOW)).unwrap()
    }

    #[test]
    fn hit_returns_the_same_claims_and_still_checks_the_clock() {
        let (ring, k) = key(1);
        let cache = ClaimsCache::default();
        let t = token(&k, 60);
        let first = cache.decode_v2(&ring, &t, NOW).unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.decode_v2(&ring, &t, NOW + 1).unwrap(), first);
        assert_eq!(cache.len(), 1);
        // Expired by the time of the second use: refused although cached.
        assert_eq!(
            cache.decode_v2(&ring, &t, NOW + 60).unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn failures_are_never_stored() {
        let (ring, k) = key(2);
        let cache = ClaimsCache::default();
        let t = token(&k, 60);
        // A flipped character of the tag: same length, same shard logic.
        let mut bad = t.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert!(cache.decode_v2(&ring, &bad, NOW).is_err());
        assert!(cache.decode_v2(&ring, &t, NOW + 120).is_err()); // expired
        assert!(cache.is_empty());
        // Another keyring's token, even after ours is cached.
        cache.decode_v2(&ring, &t, NOW).unwrap();
        let (_, other) = key(3);
        assert_eq!(
            cache.decode_v2(&ring, &token(&other, 60), NOW).unwrap_err(),
            TokenError::Invalid
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn memory_stays_bounded() {
        let (ring, k) = key(4);
        let cache = ClaimsCache::default();
        for _ in 0..(SHARDS * SHARD_CAP * 2) {
            cache.decode_v2(&ring, &token(&k, 60), NOW).unwrap();
        }
        assert!(cache.len() <= SHARDS * SHARD_CAP);
    }

    #[test]
    fn debug_shows_no_token() {
        let (ring, k) = key(5);
        let cache = ClaimsCache::default();
        let t = token(&k, 60);
        cache.decode_v2(&ring, &t, NOW).unwrap();
        let dbg = format!("{cache:?}");
        assert!(!dbg.contains(&t[..20]) && !dbg.contains("sk-test"), "{dbg}");
        assert_eq!(cache.clone().len(), 0);
    }
}
