#!/usr/bin/env bash
# RelayAPI benchmark suite: relay vs direct vs nginx on 127.0.0.1.
#   bench/run.sh            full run (release build, 3 alternations, ~15 min)
#   bench/run.sh --quick    smoke run (debug build, 1 pass, short; numbers meaningless)
# Options: --release / --debug (override the build), --no-install (never apt-get),
#          --only 1,3,7 (a subset of scenarios), --out FILE (default bench/results/latest.json)
# See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0 PROFILE="" INSTALL=1 PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --release) PROFILE=release ;;
    --debug) PROFILE=debug ;;
    --no-install) INSTALL=0 ;;
    --only|--out) PASS+=("$1" "$2"); shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$PROFILE" ] || { [ "$QUICK" = 1 ] && PROFILE=debug || PROFILE=release; }

# --- tools: wrk and nginx from Debian, if missing and apt is usable
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
export PATH="$PATH:/usr/sbin:/sbin"
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$INSTALL" = 1 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing ${missing[*]} (apt-get)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >&2 \
      || echo "WARNING: apt-get install ${missing[*]} failed" >&2
  else
    echo "WARNING: ${missing[*]} missing and apt-get unavailable: wrk -> Go closed-loop generator, nginx -> targets skipped" >&2
  fi
fi
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }

# --- binaries
if [ "$PROFILE" = release ]; then
  echo "building release binaries" >&2
  cargo build -q --release -p relayapi -p relayapi-mock
else
  echo "building DEBUG binaries (quick mode: numbers are meaningless)" >&2
  cargo build -q -p relayapi -p relayapi-mock
fi
BIN="target/$PROFILE"

# --- the Go load generator (streams, open loop, idle streams, uploads)
LG="target/bench/loadgen"
if command -v go >/dev/null; then
  mkdir -p target/bench
  (cd bench/loadgen && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod go build -o "../../$LG" .) \
    || { echo "WARNING: go build of bench/loadgen failed" >&2; rm -f "$LG"; }
else
  echo "WARNING: Go not installed: scenarios 3, 4 and 6 are skipped" >&2
fi

# 5,000 idle streams need ~10k descriptors in the relay
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

Q=(); [ "$QUICK" = 1 ] && Q=(--quick)
exec python3 bench/bench.py --bin-dir "$BIN" --loadgen "$LG" "${Q[@]}" "${PASS[@]}"
