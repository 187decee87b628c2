//! Loading `.rai` client configs into the keyring (and creating the first one).
//!
//! `--rai` names one file or a directory; a directory contributes every
//! `*.rai` in it (sorted, so startup is deterministic). Each file is one
//! backend/tenant with its own key; the keyring finds the key by `kid`.

use std::io::Write;
use std::path::{Path, PathBuf};

use relayapi_token::{Keyring, RaiConfig, V2Key};

/// What was loaded, for startup messages and `check-config`.
#[derive(Debug)]
pub struct LoadedKeys {
    pub keyring: Keyring,
    /// Each file with the `kid` it contributed.
    pub files: Vec<(PathBuf, String)>,
    /// Set when no file existed and a fresh one was written here.
    pub generated: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: no *.rai files in this directory; create one with `relayapi gen-config > {path}/default.rai`")]
    EmptyDir { path: String },
    #[error("{path}: not found; pass --rai with an existing .rai file or directory, or omit it to generate default.rai")]
    Missing { path: String },
    #[error("{path}: cannot create: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
}

/// Loads `path`. When it does not exist and `generate` is set, writes a fresh
/// `.rai` there (mode 0600) with `port` in its server block.
pub fn load(path: &Path, generate: bool, port: u16) -> Result<LoadedKeys, KeyFileError> {
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
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|source| KeyFileError::Read {
                path: path.display().to_string(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rai") && p.is_file())
            .collect();
        v.sort();
        if v.is_empty() {
            return Err(KeyFileError::EmptyDir {
                path: path.display().to_string(),
            });
        }
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut keyring = Keyring::new();
    let mut loaded = Vec::new();
    for file in files {
        let rai = read_rai(&file)?;
        let key = V2Key::from_rai(&rai);
        let kid = key.kid().to_string();
        keyring.insert(key).map_err(|e| KeyFileError::Invalid {
            path: file.display().to_string(),
            message: e.to_string(),
        })?;
        loaded.push((file, kid));
    }
    Ok(LoadedKeys {
        keyring,
        files: loaded,
        generated,
    })
}

/// Reads and validates one `.rai` file.
pub fn read_rai(file: &Path) -> Result<RaiConfig, KeyFileError> {
    let text = std::fs::read_to_string(file).map_err(|source| KeyFileError::Read {
        path: file.display().to_string(),
        source,
    })?;
    RaiConfig::parse(&text).map_err(|e| KeyFileError::Invalid {
        path: file.display().to_string(),
        message: e.to_string(),
    })
}

/// Writes a new `.rai` readable by its owner only; never overwrites.
pub fn write_new(path: &Path, rai: &RaiConfig) -> Result<(), KeyFileError> {
    let err = |source| KeyFileError::Create {
        path: path.display().to_string(),
        source,
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

    #[test]
    fn generates_once_with_owner_only_mode_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("default.rai");
        let first = load(&p, true, 8840).unwrap();
        assert_eq!(first.generated.as_deref(), Some(p.as_path()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let second = load(&p, true, 8840).unwrap();
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
        let loaded = load(dir.path(), false, 0).unwrap();
        assert_eq!(loaded.keyring.len(), 2);
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            load(empty.path(), false, 0),
            Err(KeyFileError::EmptyDir { .. })
        ));
    }

    #[test]
    fn invalid_file_names_the_file_and_not_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.rai");
        let secret = "zz".repeat(32);
        std::fs::write(&p, format!(r#"{{"version":"1.0.0","server":{{"host":"http://localhost","port":1,"base_path":"/relayapi/"}},"crypto":{{"method":"aes","aes_key":"{secret}","aes_iv_seed":"00"}}}}"#)).unwrap();
        let msg = load(&p, false, 0).unwrap_err().to_string();
        assert!(msg.contains("bad.rai") && msg.contains("aes_key"), "{msg}");
        assert!(!msg.contains(&secret));
    }
}
