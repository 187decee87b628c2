#!/usr/bin/env bash
# CI smoke test of the benchmark suite: runs `bench/run.sh --quick` (debug
# binaries, one short pass per scenario) and checks only that every scenario
# produced numbers and nothing crashed. It asserts nothing about the numbers.
# Never calls apt-get: a missing wrk falls back to the Go generator, a missing
# nginx skips the nginx targets, a missing Go skips scenarios 3, 4 and 6 — each
# with a clear message.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)/bench-smoke.json"
trap 'rm -rf "$(dirname "$out")"' EXIT
start=$(date +%s)
bench/run.sh --quick --no-install --out "$out" > "$(dirname "$out")/table.txt" \
  || { cat "$(dirname "$out")/table.txt"; echo "bench-smoke: bench/run.sh --quick failed" >&2; exit 1; }
cat "$(dirname "$out")/table.txt"
python3 - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s, skipped = r["scenarios"], " ".join(r["skipped"])
bad = []

def nums(d):
    if isinstance(d, dict):
        return [x for v in d.values() for x in nums(v)]
    return [d] if isinstance(d, (int, float)) and not isinstance(d, bool) else []

need = ["s1", "s2", "s5", "s7"] + ([] if "Go loadgen missing" in skipped else ["s3", "s4", "s6"])
for k in need:
    if k not in s or not nums(s[k]):
        bad.append(f"scenario {k[1:]} produced no numbers")
for k in ("s1", "s3", "s4"):
    for group, targets in (s.get(k) or {}).items():
        for name, m in targets.items():
            if not m.get("requests"):
                bad.append(f"scenario {k[1:]} {group} {name}: no successful request")
            if m.get("errors"):
                bad.append(f"scenario {k[1:]} {group} {name}: {m['errors']} errors")
for name, m in (s.get("s2", {}).get("c64") or {}).items():
    if not m.get("requests") or m.get("errors"):
        bad.append(f"scenario 2 {name}: requests={m.get('requests')} errors={m.get('errors')}")
for name, m in (s.get("s5", {}).get("c64") or {}).items():
    if not m.get("requests") or m.get("errors"):
        bad.append(f"scenario 5 {name}: requests={m.get('requests')} errors={m.get('errors')}")
for tag, sinks in (s.get("s5", {}).get("sinks") or {}).items():
    if not sinks or not all(v.get("delivered") for v in sinks.values()):
        bad.append(f"scenario 5 {tag}: a sink delivered nothing: {sinks}")
s6 = s.get("s6") or {}
for key, m in s6.items():
    if key.startswith("streams_") and m.get("ready") != m.get("streams"):
        bad.append(f"scenario 6 {key}: {m.get('ready')}/{m.get('streams')} streams opened")
if s6 and (s6.get("uploads_relay", {}).get("errors") or not s6.get("uploads_relay", {}).get("ok")):
    bad.append(f"scenario 6 uploads: {s6.get('uploads_relay')}")
if not (s.get("s7") or {}).get("us", {}).get("v2/decode_validate/minimal"):
    bad.append("scenario 7: no decode+validate number")
for g in r["gates"]:
    if g["result"] == "NO DATA":
        bad.append(f"gate without data: {g['gate']}")
if bad:
    print("bench-smoke: FAILED\n  " + "\n  ".join(bad), file=sys.stderr)
    sys.exit(1)
print(f"bench-smoke: OK (every scenario produced numbers; skipped: {skipped or 'nothing'})")
PY
echo "bench-smoke: $(( $(date +%s) - start )) s"
