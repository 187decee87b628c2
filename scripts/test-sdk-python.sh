#!/usr/bin/env bash
# Python SDK tests (sdk/python): the shared token vectors, config/URL/error
# unit tests, and end-to-end tests against the built `relayapi` and
# `relayapi-mock` binaries with the official `openai` Python SDK.
#
# Usage: ./scripts/test-sdk-python.sh      (from anywhere; runs from the repo root)
# Uses ./.venv (created if missing; shared with tests/e2e) and installs
# sdk/python editable with its pinned [test] extras, skipped when
# sdk/python/pyproject.toml is unchanged. Builds the binaries only if they
# are missing (scripts/test.sh builds them first).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

export RELAYAPI_BIN="${RELAYAPI_BIN:-$ROOT/target/debug/relayapi}"
export RELAYAPI_MOCK_BIN="${RELAYAPI_MOCK_BIN:-$ROOT/target/debug/relayapi-mock}"
if [ ! -x "$RELAYAPI_BIN" ] || [ ! -x "$RELAYAPI_MOCK_BIN" ]; then
  echo "==== cargo build (relayapi, relayapi-mock) ===="
  cargo build -p relayapi -p relayapi-mock
fi

echo "==== Python SDK: environment ===="
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
STAMP=.venv/.sdk-python.sha256
want=$(sha256sum sdk/python/pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null || true)" = "$want" ] \
  && .venv/bin/python -c 'import relayapi, openai, pytest' 2>/dev/null; then
  echo "sdk/python/pyproject.toml unchanged, skipping pip install"
else
  .venv/bin/python -m pip install -q --disable-pip-version-check -e "sdk/python[test]"
  echo "$want" > "$STAMP"
fi

echo "==== Python SDK: pytest sdk/python/tests ===="
.venv/bin/python -m pytest sdk/python/tests -q -p no:cacheprovider
