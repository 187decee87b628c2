//! Black-box tests of how the built `relayapi` binary finds and reports its
//! configuration: which file `serve` and `check-config` read without
//! `--config`, and what their messages show (never a secret).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_relayapi");

/// The binary in `dir`, without the caller's `RELAYAPI_*` settings (a test
/// must not read the developer's config) and without `RUST_LOG`.
fn relayapi(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("RELAYAPI_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Runs to the end (killed after 20 s, so a relay that starts when it
/// should have refused fails the test instead of hanging it): success,
/// stdout, stderr.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut child = relayapi(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_config_toml_in_the_working_directory_is_read_and_two_config_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nport = 9123\nbase_path = \"/toml/\"\n\n[usage]\nstore = \"memory\"\n",
    )
    .unwrap();
    let (ok, out, err) = run(dir.path(), &["check-config"], &[]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("ok: config.toml (listen 127.0.0.1:9123, base path /toml/)"),
        "{out}"
    );

    // `serve` reads it too: port 0 from the file, not the built-in 8840.
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nport = 0\n\n[usage]\nstore = \"memory\"\n\n[log]\nconsole = false\nspool_dir = \"spool\"\n",
    )
    .unwrap();
    let mut child = relayapi(dir.path())
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("listening on http://127.0.0.1:"), "{line}");
    assert!(!line.trim_end().ends_with(":8840"), "{line}");

    // Both files: which one is meant is unclear, so neither is read.
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    for cmd in ["check-config", "serve"] {
        let (ok, out, err) = run(dir.path(), &[cmd], &[]);
        assert!(!ok, "{cmd}: {out}{err}");
        assert!(
            err.contains("config.json") && err.contains("config.toml"),
            "{cmd}: {err}"
        );
        assert!(err.contains("--config"), "says the fix: {cmd}: {err}");
        assert!(!out.contains("listening"), "{cmd}: {out}");
    }
    // Naming one settles it.
    let (ok, out, err) = run(
        dir.path(),
        &["check-config", "--config", "config.json"],
        &[],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("ok: config.json"), "{out}");
}

/// `RELAYAPI_LOG` is the relay's own spelling of `RUST_LOG` (the log
/// filter), ahead of it; one that does not parse is an error, not ignored.
#[test]
fn relayapi_log_sets_the_log_filter_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"server": {"port": 0}, "usage": {"store": "memory"},
            "log": {"console": false, "spool_dir": null}}"#,
    )
    .unwrap();
    let bad = [("RELAYAPI_LOG", "relayapi=loud")];
    for cmd in ["check-config", "serve"] {
        let (ok, out, err) = run(dir.path(), &[cmd], &bad);
        assert!(!ok, "{cmd}: {out}{err}");
        assert!(err.contains("RELAYAPI_LOG"), "{cmd}: {err}");
        assert!(
            err.contains("relayapi=debug,info"),
            "says the fix: {cmd}: {err}"
        );
        assert!(!err.contains("no such setting"), "{cmd}: {err}");
    }
    // It wins over RUST_LOG: info lines appear although RUST_LOG says warn.
    let stderr = dir.path().join("stderr.log");
    let mut child = relayapi(dir.path())
        .arg("serve")
        .env("RELAYAPI_LOG", "info")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let started = Instant::now();
    let mut log = String::new();
    while started.elapsed() < Duration::from_secs(10) && !log.contains("relay ready") {
        std::thread::sleep(Duration::from_millis(50));
        log = std::fs::read_to_string(&stderr).unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("listening on "), "{line}{log}");
    assert!(log.contains("relay ready"), "{log}");
}

/// A section of the wrong type that holds a secret: serde would quote the
/// value; `check-config` shows the field and the fix, never the value.
#[test]
fn check_config_never_prints_a_secret_given_as_a_whole_section() {
    let dir = tempfile::tempdir().unwrap();
    let canary = "Sekr1t-canary-0123456789";
    for (file, text, field) in [
        (
            "config.json",
            format!(r#"{{"log": {{"database": "postgres://u:{canary}@h/db"}}}}"#),
            "log.database",
        ),
        (
            "config.json",
            format!(r#"{{"log": {{"web": "https://hook:{canary}@logs.example/in"}}}}"#),
            "log.web",
        ),
        (
            "config.json",
            format!(r#"{{"admin": "{canary}"}}"#),
            "admin",
        ),
        (
            "config.json",
            format!(r#"{{"credentials": "sk-{canary}"}}"#),
            "credentials",
        ),
        (
            "config.json",
            format!(r#"{{"credentials": ["sk-{canary}"]}}"#),
            "credentials",
        ),
        (
            "config.json",
            format!(r#"{{"credentials": {{"team": "sk-{canary}"}}}}"#),
            "credentials.team",
        ),
        (
            "config.toml",
            format!("[log]\ndatabase = \"postgres://u:{canary}@h/db\"\n"),
            "log.database",
        ),
        ("config.toml", format!("admin = \"{canary}\"\n"), "admin"),
    ] {
        let _ = std::fs::remove_file(dir.path().join("config.json"));
        let _ = std::fs::remove_file(dir.path().join("config.toml"));
        std::fs::write(dir.path().join(file), &text).unwrap();
        let (ok, out, err) = run(dir.path(), &["check-config"], &[]);
        assert!(!ok, "{text}: {out}");
        assert!(err.contains(&format!("{field}: ")), "{text}: {err}");
        assert!(
            !out.contains(canary) && !err.contains(canary),
            "{text}: {out}{err}"
        );
    }
    // The same through the environment.
    let _ = std::fs::remove_file(dir.path().join("config.toml"));
    let url = format!("postgres://u:{canary}@h/db");
    let (ok, out, err) = run(
        dir.path(),
        &["check-config"],
        &[("RELAYAPI_LOG_DATABASE", url.as_str())],
    );
    assert!(!ok && err.contains("RELAYAPI_LOG_DATABASE"), "{out}{err}");
    assert!(!out.contains(canary) && !err.contains(canary), "{out}{err}");
}

#[test]
fn the_rai_and_config_given_before_the_command_are_the_ones_used() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, rai, _) = run(dir.path(), &["gen-config"], &[]);
    assert!(ok);
    std::fs::write(dir.path().join("k.rai"), rai).unwrap();
    // Before the fix: top-level options were dropped, and token looked for
    // ./default.rai, check-config checked the built-in defaults.
    let (ok, out, err) = run(
        dir.path(),
        &[
            "--rai",
            "k.rai",
            "token",
            "--provider",
            "openai",
            "--api-key",
            "sk-x",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("eyJ"), "{out}");
    let (ok, _, err) = run(
        dir.path(),
        &["--config", "missing.json", "check-config"],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("missing.json"), "{err}");
    // An IPv4-mapped network never matches: the IPv4 form is asked for.
    let (ok, _, err) = run(
        dir.path(),
        &[
            "token",
            "--rai",
            "k.rai",
            "--provider",
            "openai",
            "--api-key",
            "sk-x",
            "--ips",
            "::ffff:10.0.0.0/104",
        ],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("write 10.0.0.0/8"), "{err}");
}
