//! Provider keys held by the relay (config `credentials`), for tokens that
//! carry a `key_ref` instead of an `api_key`.
//!
//! Each credential names one provider and lists one or more keys. Calls
//! take the keys in turn (round-robin, a relaxed atomic counter); when an
//! attempt fails before any byte reached the client, the request path may
//! retry once with the key after it ([`Credential::key_after`]). Keys stay
//! in `SecretString`s and are exposed only to build the upstream header.

use std::sync::atomic::{AtomicUsize, Ordering};

use relayapi_token::SecretString;

use crate::config::CredentialSettings;
use crate::providers::Registry;

#[derive(Debug)]
pub struct Credential {
    /// Registry id of the provider (aliases resolved).
    pub provider_id: String,
    keys: Vec<SecretString>,
    next: AtomicUsize,
}

impl Credential {
    /// The key for the next call, and its index.
    pub fn next_key(&self) -> Option<(usize, &SecretString)> {
        if self.keys.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.keys.len();
        Some((i, &self.keys[i]))
    }

    /// The key after `i`, for the one retry; `None` with a single key.
    pub fn key_after(&self, i: usize) -> Option<(usize, &SecretString)> {
        if self.keys.len() < 2 {
            return None;
        }
        let j = (i + 1) % self.keys.len();
        Some((j, &self.keys[j]))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Every configured credential, by name.
#[derive(Debug, Default)]
pub struct Credentials {
    by_name: crate::FastMap<String, Credential>,
}

impl Credentials {
    /// Resolves the config's credentials against the registry (validated at
    /// load time; an entry whose provider is unknown is skipped).
    pub fn new(
        settings: &std::collections::BTreeMap<String, CredentialSettings>,
        registry: &Registry,
    ) -> Credentials {
        let by_name = settings
            .iter()
            .filter_map(|(name, c)| {
                let provider = registry.get(&c.provider)?;
                Some((
                    name.clone(),
                    Credential {
                        provider_id: provider.id.clone(),
                        keys: c.api_keys.clone(),
                        next: AtomicUsize::new(0),
                    },
                ))
            })
            .collect();
        Credentials { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Credential> {
        self.by_name.get(name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn keys_rotate_and_retry_takes_the_next() {
        let mut cfg = std::collections::BTreeMap::new();
        cfg.insert(
            "pool".to_string(),
            CredentialSettings {
                provider: "openai".into(),
                api_keys: vec!["k0".into(), "k1".into(), "k2".into()],
            },
        );
        cfg.insert(
            "bad".to_string(),
            CredentialSettings {
                provider: "no-such-provider".into(),
                api_keys: vec!["k".into()],
            },
        );
        let creds = Credentials::new(&cfg, &Registry::new(&Default::default()));
        assert!(creds.get("bad").is_none());
        let pool = creds.get("pool").unwrap();
        assert_eq!(pool.provider_id, "openai");
        let picked: Vec<usize> = (0..4).map(|_| pool.next_key().unwrap().0).collect();
        assert_eq!(picked, [0, 1, 2, 0]);
        assert_eq!(pool.key_after(2).unwrap().0, 0);
        assert_eq!(pool.key_after(0).unwrap().1.expose(), "k1");
        assert!(!format!("{pool:?}").contains("k1"), "keys are redacted");
    }
}
