//! Loading `.rai` client configs into the keyring (and creating the first one).
//!
//! `--rai` names one file or a directory; a directory contributes every
//! `*.rai` in it (sorted, so startup is deterministic and legacy keys are
//! tried in a fixed order). Each file is one backend/tenant with its own
//! key; v2 tokens find theirs by `kid`, legacy tokens by `rai_hash`. A
//! directory is watched while the relay runs ([`watch_dir`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use relayapi_token::{Claims, Keyring, LegacyKey, LegacyKeyring, RaiConfig, TokenError, V2Key};

use crate::claims_cache::ClaimsCache;

/// The sample key the earlier project shipped in its docs and templates.
const SAMPLE_AES_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Every key the relay accepts tokens under.
///
/// Built once, then shared read-only (`Arc`, swapped whole on reload): the
/// decode cache is only valid for the `v2` keyring it sits next to.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub v2: Keyring,
    /// The same `.rai` keys for legacy tokens (used only when `legacy_tokens` is on).
    pub legacy: LegacyKeyring,
    /// Successful v2 decodes under `v2`; see [`Keys::decode_v2`].
    cache: ClaimsCache,
}

impl From<Keyring> for Keys {
    fn from(v2: Keyring) -> Keys {
        Keys {
            v2,
            legacy: LegacyKeyring::new(),
            cache: ClaimsCache::default(),
        }
    }
}

impl Keys {
    /// Decodes and validates a v2 token at `now`, reusing an earlier decode
    /// of the same token text ([`crate::claims_cache`]).
    pub fn decode_v2(&self, token: &str, now: i64) -> Result<std::sync::Arc<Claims>, TokenError> {
        self.cache.decode_v2(&self.v2, token, now)
    }
}

/// What was loaded, for startup messages and `check-config`.
#[derive(Debug)]
pub struct LoadedKeys {
    pub keys: Keys,
    /// Each file with the `kid` it contributed.
    pub files: Vec<(PathBuf, String)>,
    /// Set when no file existed and a fresh one was written here.
    pub generated: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    // The cause is in the message and not a `source()`: `{:#}` chains
    // would print it twice.
    #[error("{path}: cannot read: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: no *.rai files in this directory; create one with `relayapi gen-config > {path}/default.rai`")]
    EmptyDir { path: String },
    #[error("{path}: not found; pass --rai with an existing .rai file or directory, or omit it to generate default.rai")]
    Missing { path: String },
    /// A single `.rai` to read (the `token` command): nothing generates it.
    #[error("{path}: not found; the relay writes default.rai on its first run (`relayapi`), `relayapi gen-config > {path}` creates one, or pass --rai with the relay's .rai file")]
    NotFound { path: String },
    #[error("{path}: cannot create: {cause}")]
    Create { path: String, cause: std::io::Error },
    #[error("{path}: this is the well-known sample key published with the earlier RelayAPI; anyone can mint tokens for it. Generate your own with `relayapi gen-config`, or pass --allow-insecure-sample-key for a throwaway test setup")]
    SampleKey { path: String },
}

/// Loads `path`. When it does not exist and `generate` is set, writes a fresh
/// `.rai` there (mode 0600) with `port` in its server block. The published
/// sample key is refused unless `allow_sample_key`.
pub fn load(
    path: &Path,
    generate: bool,
    port: u16,
    allow_sample_key: bool,
) -> Result<LoadedKeys, KeyFileError> {
    let mut generated = None;
    if !path.exists() {
        if !generate {
            return Err(KeyFileError::Missing {
                path: path.display().to_string(),
            });
        }
        write_new(path, &RaiConfig::generate("http://localhost", port))?;
        generated = Some(path.to_path_buf());
    }
    let files: Vec<PathBuf> = if path.is_dir() {
        let v = rai_files(path)?;
        if v.is_empty() {
            return Err(KeyFileError::EmptyDir {
                path: path.display().to_string(),
            });
        }
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut keys = Keys::default();
    let mut loaded = Vec::new();
    for file in files {
        let kid = add_file(&mut keys, &file, allow_sample_key)?;
        loaded.push((file, kid));
    }
    Ok(LoadedKeys {
        keys,
        files: loaded,
        generated,
    })
}

/// The `*.rai` files of a directory, sorted.
fn rai_files(dir: &Path) -> Result<Vec<PathBuf>, KeyFileError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|cause| KeyFileError::Read {
            path: dir.display().to_string(),
            cause,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rai") && p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

/// Reads one file into `keys`; returns its kid.
fn add_file(keys: &mut Keys, file: &Path, allow_sample_key: bool) -> Result<String, KeyFileError> {
    let rai = read_rai(file)?;
    if !allow_sample_key
        && rai
            .crypto
            .aes_key
            .expose()
            .eq_ignore_ascii_case(SAMPLE_AES_KEY)
    {
        return Err(KeyFileError::SampleKey {
            path: file.display().to_string(),
        });
    }
    let key = V2Key::from_rai(&rai);
    let kid = key.kid().to_string();
    keys.v2.insert(key).map_err(|e| KeyFileError::Invalid {
        path: file.display().to_string(),
        message: e.to_string(),
    })?;
    keys.legacy.insert(LegacyKey::from_rai(&rai));
    Ok(kid)
}

/// Files added, changed or removed in `dir` take effect without a restart:
/// the directory is polled every `every`, and on any change the keys are
/// rebuilt from the files that load (a broken file is reported and skipped;
/// the others stay valid) and handed to `install`.
///
/// The directory's state is taken when this is *called* (right after the
/// initial load), so a change made before the returned future first runs is
/// not missed.
pub fn watch_dir(
    dir: PathBuf,
    every: Duration,
    allow_sample_key: bool,
    install: impl Fn(Keys) + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send {
    let mut last = fingerprint(&dir);
    async move {
        loop {
            tokio::time::sleep(every).await;
            let now = fingerprint(&dir);
            if now == last {
                continue;
            }
            last = now;
            let files = match rai_files(&dir) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "cannot list the .rai directory; keeping the current keys");
                    continue;
                }
            };
            let mut keys = Keys::default();
            let mut kids = Vec::new();
            for file in &files {
                match add_file(&mut keys, file, allow_sample_key) {
                    Ok(kid) => kids.push(kid),
                    Err(e) => tracing::error!(error = %e, "skipping a .rai file"),
                }
            }
            tracing::info!(keys = kids.len(), kids = ?kids, "reloaded .rai directory");
            install(keys);
        }
    }
}

/// Names, sizes and modification times of the `*.rai` files: any change
/// to the set or a file shows here.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    rai_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect()
}

/// Shared, swappable keys: read on every request, replaced on reload.
///
/// Each thread reads its own copy, re-made from the shared keys when a
/// reload bumped the generation: requests on different worker threads then
/// never touch the same reference count, lock or decode cache — on a
/// multi-core machine each of those is a cache line bouncing between cores
/// on every request.
#[derive(Debug)]
pub struct KeyStore {
    shared: std::sync::RwLock<Arc<Keys>>,
    /// Bumped by every `replace`, after the new keys are in place.
    generation: AtomicU64,
    /// Tells this store's thread copies from other stores' (tests run
    /// several relays in one process).
    id: u64,
}

/// Per thread: (store id, generation, copy of that store's keys).
type Copies = Vec<(u64, u64, Arc<Keys>)>;

thread_local! {
    static COPIES: std::cell::RefCell<Copies> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Stores one thread keeps copies for; older ones are forgotten.
const MAX_COPIES: usize = 8;

impl Default for KeyStore {
    fn default() -> Self {
        Self::new(Keys::default())
    }
}

impl KeyStore {
    pub fn new(keys: Keys) -> KeyStore {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        KeyStore {
            shared: std::sync::RwLock::new(Arc::new(keys)),
            generation: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The keys now, as this thread's copy.
    pub fn current(&self) -> Arc<Keys> {
        // Generation first, keys second: a reload in between leaves a copy
        // of the new keys under the old generation, re-made once more next
        // time — never old keys under the new generation.
        let generation = self.generation.load(Ordering::Acquire);
        COPIES.with(|copies| {
            let mut copies = copies.borrow_mut();
            if let Some((_, g, keys)) = copies.iter_mut().find(|(id, ..)| *id == self.id) {
                if *g != generation {
                    *keys = Arc::new(self.shared().as_ref().clone());
                    *g = generation;
                }
                return keys.clone();
            }
            let keys = Arc::new(self.shared().as_ref().clone());
            if copies.len() >= MAX_COPIES {
                copies.remove(0);
            }
            copies.push((self.id, generation, keys.clone()));
            keys
        })
    }

    fn shared(&self) -> Arc<Keys> {
        // A poisoned lock still holds a whole `Arc`: keep serving with it.
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, keys: Keys) {
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// Reads and validates one `.rai` file.
pub fn read_rai(file: &Path) -> Result<RaiConfig, KeyFileError> {
    let text = std::fs::read_to_string(file).map_err(|cause| match cause.kind() {
        std::io::ErrorKind::NotFound => KeyFileError::NotFound {
            path: file.display().to_string(),
        },
        _ => KeyFileError::Read {
            path: file.display().to_string(),
            cause,
        },
    })?;
    RaiConfig::parse(&text).map_err(|e| KeyFileError::Invalid {
        path: file.display().to_string(),
        message: e.to_string(),
    })
}

/// Writes a new `.rai` readable by its owner only; never overwrites.
pub fn write_new(path: &Path, rai: &RaiConfig) -> Result<(), KeyFileError> {
    let err = |cause| KeyFileError::Create {
        path: path.display().to_string(),
        cause,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(rai.to_json_pretty().as_bytes()).map_err(err)?;
    f.write_all(b"\n").map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn keys_with(n: usize) -> Keys {
        let mut keys = Keys::default();
        for _ in 0..n {
            let rai = RaiConfig::generate("http://localhost", 1);
            keys.v2.insert(V2Key::from_rai(&rai)).unwrap();
        }
        keys
    }

    #[test]
    fn every_thread_sees_a_reload_and_stores_do_not_mix() {
        let store = Arc::new(KeyStore::new(keys_with(1)));
        let other = KeyStore::new(keys_with(3));
        assert_eq!(store.current().v2.len(), 1);
        assert_eq!(other.current().v2.len(), 3);
        let s = Arc::clone(&store);
        let seen_before = std::thread::spawn(move || s.current().v2.len())
            .join()
            .unwrap();
        assert_eq!(seen_before, 1);
        store.replace(keys_with(2));
        // This thread's copy is re-made; a new thread starts from the new keys.
        assert_eq!(store.current().v2.len(), 2);
        let s = Arc::clone(&store);
        assert_eq!(
            std::thread::spawn(move || s.current().v2.len())
                .join()
                .unwrap(),
            2
        );
        assert_eq!(other.current().v2.len(), 3);
    }

    #[test]
    fn generates_once_with_owner_only_mode_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("default.rai");
        let first = load(&p, true, 8840, false).unwrap();
        assert_eq!(first.generated.as_deref(), Some(p.as_path()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let second = load(&p, true, 8840, false).unwrap();
        assert!(second.generated.is_none());
        assert_eq!(first.files[0].1, second.files[0].1);
    }

    #[test]
    fn directory_is_a_keyring() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.rai", "b.rai"] {
            write_new(
                &dir.path().join(name),
                &RaiConfig::generate("http://localhost", 1),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let loaded = load(dir.path(), false, 0, false).unwrap();
        assert_eq!(loaded.keys.v2.len(), 2);
        assert_eq!(loaded.keys.legacy.len(), 2);
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            load(empty.path(), false, 0, false),
            Err(KeyFileError::EmptyDir { .. })
        ));
    }

    #[test]
    fn invalid_file_names_the_file_and_not_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.rai");
        let secret = "zz".repeat(32);
        std::fs::write(&p, format!(r#"{{"version":"1.0.0","server":{{"host":"http://localhost","port":1,"base_path":"/relayapi/"}},"crypto":{{"method":"aes","aes_key":"{secret}","aes_iv_seed":"00"}}}}"#)).unwrap();
        let msg = load(&p, false, 0, false).unwrap_err().to_string();
        assert!(msg.contains("bad.rai") && msg.contains("aes_key"), "{msg}");
        assert!(!msg.contains(&secret));
    }

    #[test]
    fn a_missing_or_unreadable_file_says_what_to_do_and_states_the_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("default.rai");
        let msg = format!("{:#}", anyhow::Error::from(read_rai(&missing).unwrap_err()));
        assert!(
            msg.contains("default.rai: not found") && msg.contains("gen-config"),
            "{msg}"
        );
        // A directory where a file is expected: the OS error, printed once
        // also in an anyhow chain (main prints `{:#}`).
        let msg = format!(
            "{:#}",
            anyhow::Error::from(read_rai(dir.path()).unwrap_err())
        );
        assert!(msg.contains("cannot read: "), "{msg}");
        let cause = msg.rsplit("cannot read: ").next().unwrap();
        assert_eq!(msg.matches(cause).count(), 1, "{msg}");
    }

    #[test]
    fn the_published_sample_key_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k1.rai");
        std::fs::write(&p, format!(r#"{{"version":"1.0.0","server":{{"host":"http://localhost","port":8080,"base_path":"/relayapi/"}},"crypto":{{"method":"aes","aes_key":"{SAMPLE_AES_KEY}","aes_iv_seed":"fedcba9876543210"}}}}"#)).unwrap();
        let msg = load(&p, false, 0, false).unwrap_err().to_string();
        assert!(
            msg.contains("sample key") && msg.contains("--allow-insecure-sample-key"),
            "{msg}"
        );
        assert!(load(&p, false, 0, true).is_ok());
    }

    #[tokio::test]
    async fn directory_changes_take_effect_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        write_new(
            &dir.path().join("a.rai"),
            &RaiConfig::generate("http://localhost", 1),
        )
        .unwrap();
        let store = Arc::new(KeyStore::new(
            load(dir.path(), false, 0, false).unwrap().keys,
        ));
        let installed = store.clone();
        let watcher = tokio::spawn(watch_dir(
            dir.path().to_path_buf(),
            Duration::from_millis(20),
            false,
            move |k| installed.replace(k),
        ));
        let wait_for = |n: usize| {
            let store = store.clone();
            async move {
                for _ in 0..200 {
                    if store.current().v2.len() == n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("keyring never reached {n} keys");
            }
        };
        let b = RaiConfig::generate("http://localhost", 1);
        write_new(&dir.path().join("b.rai"), &b).unwrap();
        wait_for(2).await;
        assert!(store.current().v2.get(V2Key::from_rai(&b).kid()).is_some());
        std::fs::remove_file(dir.path().join("a.rai")).unwrap();
        wait_for(1).await;
        watcher.abort();
    }
}
