#!/usr/bin/env bash
# Tests of the JavaScript/TypeScript SDK (sdk/js): install its devDependencies
# (skipped when node_modules matches package-lock.json), build ESM + CJS with
# tsc, then `node --test sdk/js/test/` (shared vectors, Python cross-check,
# both builds, and end-to-end against the built relayapi + relayapi-mock).
#
# Usage: ./scripts/test-sdk-js.sh        (from anywhere; runs from the repo root)
# Env:   RELAYAPI_BIN / RELAYAPI_MOCK_BIN override the binaries
#        (default target/debug/; built with cargo if missing).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
SDK=sdk/js

banner() {
  printf '\n==== %s ====\n' "$*"
}

hash_of() {
  sha256sum "$@" | sha256sum | cut -d' ' -f1
}

if [ -z "${RELAYAPI_BIN:-}" ] || [ -z "${RELAYAPI_MOCK_BIN:-}" ]; then
  if [ ! -x target/debug/relayapi ] || [ ! -x target/debug/relayapi-mock ]; then
    banner "cargo build (relayapi, relayapi-mock)"
    cargo build -p relayapi -p relayapi-mock
  fi
  export RELAYAPI_BIN="${RELAYAPI_BIN:-$ROOT/target/debug/relayapi}"
  export RELAYAPI_MOCK_BIN="${RELAYAPI_MOCK_BIN:-$ROOT/target/debug/relayapi-mock}"
fi

banner "JS SDK: environment"
STAMP=$SDK/node_modules/.package-lock.sha256
want=$(hash_of "$SDK/package-lock.json")
if [ -d "$SDK/node_modules" ] && [ "$(cat "$STAMP" 2>/dev/null || true)" = "$want" ]; then
  echo "node_modules up to date, skipping npm ci"
else
  npm ci --prefix "$SDK" --no-audit --no-fund
  echo "$want" > "$STAMP"
fi

banner "JS SDK: build (tsc esm + cjs)"
npm run build --prefix "$SDK" --silent

banner "JS SDK: node --test $SDK/test/"
node --test "$SDK/test/"
