#!/usr/bin/env bash
# The project's test command: formatting, lints, Rust tests, then the
# black-box end-to-end suites (Python openai SDK + joserfc, Node openai SDK +
# jose) against the built `relayapi` and `relayapi-mock` binaries.
#
# Usage: ./scripts/test.sh        (from anywhere; runs from the repo root)
# Env:   SKIP_RUST_CHECKS=1 skips fmt/clippy/cargo test (e2e only, for quick reruns).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

banner() {
  printf '\n==== %s ====\n' "$*"
}

hash_of() {
  sha256sum "$@" | sha256sum | cut -d' ' -f1
}

if [ "${SKIP_RUST_CHECKS:-0}" != "1" ]; then
  banner "cargo fmt --check"
  cargo fmt --all -- --check

  banner "cargo clippy (-D warnings)"
  cargo clippy --workspace --all-targets -- -D warnings

  banner "cargo test"
  cargo test --workspace
fi

banner "cargo build (relayapi, relayapi-mock)"
cargo build -p relayapi -p relayapi-mock
export RELAYAPI_BIN="$ROOT/target/debug/relayapi"
export RELAYAPI_MOCK_BIN="$ROOT/target/debug/relayapi-mock"

banner "Python e2e: environment"
REQ=tests/e2e/requirements.txt
STAMP=.venv/.requirements.sha256
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
want=$(hash_of "$REQ")
if [ "$(cat "$STAMP" 2>/dev/null || true)" = "$want" ]; then
  echo "requirements unchanged, skipping pip install"
else
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$REQ"
  echo "$want" > "$STAMP"
fi

# The earlier server's published SDK (relayapi-sdk 1.0.0) in a venv of its
# own: it imports as `relayapi`, like ours (tests/e2e/test_legacy_published_sdk.py).
LEGACY_REQ=tests/e2e/legacy_sdk/requirements.txt
LEGACY_STAMP=.venv-legacy-sdk/.requirements.sha256
if [ ! -x .venv-legacy-sdk/bin/python ]; then
  python3 -m venv .venv-legacy-sdk
fi
want=$(hash_of "$LEGACY_REQ")
if [ "$(cat "$LEGACY_STAMP" 2>/dev/null || true)" != "$want" ]; then
  .venv-legacy-sdk/bin/python -m pip install -q --disable-pip-version-check -r "$LEGACY_REQ"
  echo "$want" > "$LEGACY_STAMP"
fi
export RELAYAPI_LEGACY_SDK_PYTHON="$ROOT/.venv-legacy-sdk/bin/python"

banner "Python e2e: pytest tests/e2e"
.venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider

# Backend SDKs and the browser demo have their own scripts (also runnable alone).
./scripts/test-sdk-python.sh
./scripts/test-sdk-js.sh
./scripts/test-web-chat.sh

banner "Node e2e: environment"
JS=tests/e2e/js
NODE_STAMP=$JS/node_modules/.package-lock.sha256
want=$(hash_of "$JS/package-lock.json")
if [ -d "$JS/node_modules" ] && [ "$(cat "$NODE_STAMP" 2>/dev/null || true)" = "$want" ]; then
  echo "node_modules up to date, skipping npm ci"
else
  npm ci --prefix "$JS" --no-audit --no-fund
  echo "$want" > "$NODE_STAMP"
fi

banner "Node e2e: node --test $JS/"
node --test "$JS/"

# The benchmark suite's smoke run (seconds; asserts that every scenario
# produces numbers, nothing about the numbers), so the suite cannot rot.
banner "benchmark smoke (bench/run.sh --quick)"
./scripts/bench-smoke.sh

banner "all tests passed"
