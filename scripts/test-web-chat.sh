#!/usr/bin/env bash
# End-to-end test of examples/web-chat: the page, in headless Chromium, streams
# a chat through the relay from the mock provider with the official `openai`
# npm package; its backend mints token URLs with the JS SDK (sdk/js).
#
# Usage: ./scripts/test-web-chat.sh      (from anywhere; runs from the repo root)
# Needs: cargo, node/npm, and /usr/bin/chromium (`apt-get install -y chromium`;
#        without it the browser tests are reported as skipped).
# Only reads sdk/js, except to install/build it when its node_modules or dist
# is missing (after editing sdk/js/src, rebuild it: npm run build --prefix sdk/js).
set -euo pipefail

cd "$(dirname "$0")/.."

banner() {
  printf '\n==== %s ====\n' "$*"
}

hash_of() {
  sha256sum "$@" | sha256sum | cut -d' ' -f1
}

if [ ! -x target/debug/relayapi ] || [ ! -x target/debug/relayapi-mock ]; then
  banner "cargo build (relayapi, relayapi-mock)"
  cargo build -p relayapi -p relayapi-mock
fi

SDK=sdk/js
SDK_ENTRY=$SDK/dist/esm/index.js
if [ ! -d "$SDK/node_modules" ]; then
  banner "sdk/js: npm ci"
  npm ci --prefix "$SDK" --no-audit --no-fund
fi
if [ ! -f "$SDK_ENTRY" ]; then
  banner "sdk/js: npm run build"
  npm run build --prefix "$SDK"
fi

APP=examples/web-chat
banner "web-chat: environment"
STAMP=$APP/node_modules/.package-lock.sha256
want=$(hash_of "$APP/package-lock.json")
if [ -d "$APP/node_modules" ] && [ "$(cat "$STAMP" 2>/dev/null || true)" = "$want" ]; then
  echo "node_modules up to date, skipping npm ci"
else
  npm ci --prefix "$APP" --no-audit --no-fund
  echo "$want" > "$STAMP"
fi

banner "web-chat: bundle public/app.js (esbuild)"
npm run build --prefix "$APP"

if [ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then
  echo "NOTE: ${CHROMIUM_PATH:-/usr/bin/chromium} not found: the browser tests will SKIP (apt-get install -y chromium)"
fi

banner "web-chat: node --test $APP/test/"
node --test "$APP/test/"
