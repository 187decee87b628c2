#!/usr/bin/env python3
"""RelayAPI benchmark driver (called by bench/run.sh; see bench/README.md).

Starts the mock upstream, two nginx reverse proxies (worker_processes 1 and
auto) and the relay on 127.0.0.1 (free ports), drives every scenario against
every target in alternation (direct, nginx-1w, nginx-auto, relay, direct, ...)
`reps` times, takes medians, prints a table with PASS/FAIL per gate and
writes a JSON report. Standard library only. Everything it starts is
stopped on exit (normal, error, SIGINT, SIGTERM).
"""

import argparse
import glob
import http.server
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MOCK_KEY = "sk-mock"
ORIGIN = "http://localhost:3000"
CHAT_BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
STREAM_BODY = '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hello"}]}'

PROCS = []  # every Popen we started, stopped in reverse order on exit


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# processes


def start(cmd, cwd, name, env=None, wait_line=True):
    out = open(os.path.join(cwd, name + ".out"), "w+")
    err = open(os.path.join(cwd, name + ".err"), "w")
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE if wait_line else out,
                         stderr=err, env=env, text=True)
    PROCS.append(p)
    if not wait_line:
        return p, None
    line = p.stdout.readline().strip()
    m = re.match(r"listening on http://([^:]+):(\d+)", line)
    if not m:
        raise RuntimeError(f"{name} did not start: {line!r}; see {err.name}")
    # keep draining stdout so the child never blocks on a full pipe
    subprocess.Popen(["cat"], stdin=p.stdout, stdout=out)
    return p, int(m.group(2))


def children(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                if int(st.rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def stop_all():
    for p in reversed(PROCS):
        if p.poll() is None:
            kids = children(p.pid)
            try:
                p.terminate()
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
            except OSError:
                pass
            for k in kids:  # nginx workers, if the master died hard
                try:
                    os.kill(k, signal.SIGKILL)
                except OSError:
                    pass
    PROCS.clear()


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / CLK_TCK


def machine_busy_s():
    """CPU seconds all cores spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4] - v[7]) / CLK_TCK  # minus idle, iowait and steal


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def open_fds(pids):
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return n


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# --------------------------------------------------------------------------
# targets


class Target:
    def __init__(self, name, base, headers, pids_fn):
        self.name = name          # direct | nginx-1w | nginx-auto | relay | relay-max_calls
        self.base = base          # URL prefix that "chat/completions" etc. is appended to
        self.headers = headers    # credential + browser-ish headers
        self.pids = pids_fn       # () -> process ids whose CPU/RSS is the proxy's (empty for direct)


def nginx_conf(tmp, tag, port, mock_port, workers):
    user = "user root;\n" if os.geteuid() == 0 else ""
    d = os.path.join(tmp, tag)
    os.makedirs(d, exist_ok=True)
    return f"""{user}worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  upstream mock {{ server 127.0.0.1:{mock_port}; keepalive 128; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    client_max_body_size 0;
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
      proxy_send_timeout 300s;
    }}
  }}
}}
"""


def start_nginx(tmp, tag, mock_port, workers):
    port = free_port()
    conf = os.path.join(tmp, tag + ".conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(tmp, tag, port, mock_port, workers))
    p, _ = start(["nginx", "-c", conf, "-p", tmp], tmp, tag, wait_line=False)
    if not wait_port(port):
        raise RuntimeError(f"{tag} did not start; see {tmp}/{tag}/error.log")
    return p, port


def start_relay(bins, tmp, tag, mock_port, log_cfg=None):
    d = os.path.join(tmp, tag)
    os.makedirs(d, exist_ok=True)
    cfg = {
        "server": {"port": 0},
        "usage": {"store": "sqlite", "path": os.path.join(d, "usage.db")},
        "rate_limit": {"requests_per_second": 1000000, "burst": 1000000,
                       "ip_limit": {"requests_per_second": 1000000, "burst": 1000000}},
        "cors": {"enabled": True},
        # request logging off, like nginx's `access_log off`: scenario 5 measures it
        "log": {"console": False},
        "providers": {"openai": {"base_url": f"http://127.0.0.1:{mock_port}/v1"}},
        # for key_ref tokens (scenario 2): two keys, so requests rotate and a
        # small body is read first to allow the one retry on the other key
        "credentials": {"mock": {"provider": "openai", "api_keys": [MOCK_KEY, MOCK_KEY]}},
    }
    if log_cfg is not None:
        cfg["log"] = log_cfg
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    rai = os.path.join(tmp, "bench.rai")
    if not os.path.exists(rai):
        with open(rai, "w") as f:
            subprocess.run([bins["relayapi"], "gen-config", "--port", "8840"], stdout=f,
                           stderr=subprocess.DEVNULL, check=True)
    # The relay reads RELAYAPI_* as settings and refuses unknown ones; the
    # test command exports RELAYAPI_BIN & co. for other tools: not for it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYAPI_")}
    env["RUST_LOG"] = os.environ.get("BENCH_RELAY_LOG", "warn")
    # experiments without touching the relay, e.g. another allocator:
    # BENCH_RELAY_ENV="LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
    env.update(kv.split("=", 1) for kv in os.environ.get("BENCH_RELAY_ENV", "").split() if "=" in kv)
    p, port = start([bins["relayapi"], "serve", "--config", os.path.join(d, "config.json"),
                     "--rai", rai], d, "relay", env=env)
    return p, port, rai


def mint(bins, rai, port, max_calls=None, key_ref=None):
    cmd = [bins["relayapi"], "token", "--rai", rai, "--provider", "openai",
           "--expire", "24h", "--url"]
    cmd += ["--key-ref", key_ref] if key_ref else ["--api-key", MOCK_KEY]
    if max_calls:
        cmd += ["--max-calls", str(max_calls)]
    url = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    return re.sub(r"^http://[^/]+", f"http://127.0.0.1:{port}", url)


# --------------------------------------------------------------------------
# load generators


def wrk_run(tool, t, path, conc, dur, extra_headers, body, tmp):
    """Closed loop with wrk (Lua for the POST body and a JSON summary)."""
    hdrs = dict(t.headers)
    hdrs.update(extra_headers)
    lua = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body)}"]
    lua += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in hdrs.items()]
    lua.append("""function done(s, lat, req)
  local e = s.errors
  io.write(string.format('JSON {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,'
    .. '"p50_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f}\\n',
    s.requests, s.duration, e.connect + e.read + e.write + e.timeout, e.status,
    lat:percentile(50), lat:percentile(99), lat:percentile(99.9), lat.mean))
end""")
    script = os.path.join(tmp, f"wrk-{t.name}.lua")
    with open(script, "w") as f:
        f.write("\n".join(lua) + "\n")
    cmd = [tool, "-t1", f"-c{conc}", f"-d{dur}s", "--timeout", "10s", "-s", script, t.base + path]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=dur + 30).stdout
    m = re.search(r"^JSON (.*)$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk gave no result: {out[-500:]}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] += r.pop("non2xx")
    return r


def loadgen(lg, mode, t, path, extra_headers, body, args, timeout):
    hdrs = dict(t.headers)
    hdrs.update(extra_headers)
    cmd = [lg, mode, "-url", t.base + path, "-body", body] + args
    for k, v in hdrs.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {mode} failed: {out.stderr[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def closed_loop(ctx, t, path, conc, dur, extra_headers, body):
    """Closed loop: wrk if present, else loadgen's closed loop (same fields)."""
    if ctx.wrk:
        return wrk_run(ctx.wrk, t, path, conc, dur, extra_headers, body, ctx.tmp)
    r = loadgen(ctx.lg, "stream", t, path, extra_headers, body,
                ["-c", str(conc), "-d", f"{dur}s", "-warmup", "200ms"], dur + 30)
    return {"requests": r["requests"], "errors": r["errors"], "rps": r["rps"],
            "p50_us": r["total_p50_us"], "p99_us": r["total_p99_us"]}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------
# scenarios


class Ctx:
    pass


def alternate(ctx, targets, fn):
    """Runs fn(target) for every target, `reps` times in alternation; returns
    {target: {field: median}} plus the raw runs."""
    runs = {t.name: [] for t in targets}
    for rep in range(ctx.reps):
        for t in targets:
            pids = t.pids()
            c0 = cpu_seconds(pids)
            r = fn(t)
            r["cpu_s"] = cpu_seconds(pids) - c0 if pids else None
            if pids and r.get("requests"):
                r["cpu_us_per_req"] = r["cpu_s"] * 1e6 / r["requests"]
            runs[t.name].append(r)
            log(f"    {t.name:<16} rep {rep + 1}: " + ", ".join(
                f"{k}={v:.0f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in r.items() if k not in ("cpu_s",)))
    res = {}
    for name, rs in runs.items():
        keys = {k for r in rs for k, v in r.items() if isinstance(v, (int, float))}
        res[name] = {k: med([r.get(k) for r in rs]) for k in sorted(keys)}
        res[name]["runs"] = len(rs)
    return res


def scenario1(ctx):
    out = {}
    for conc in ctx.concs:
        log(f"  scenario 1: non-streaming chat (1 KB), closed loop c={conc}")
        out[f"c{conc}"] = alternate(ctx, ctx.targets, lambda t: closed_loop(
            ctx, t, "chat/completions", conc, ctx.dur, {"x-mock-response-bytes": "1024"}, CHAT_BODY))
    return out


def scenario2(ctx):
    log("  scenario 2: relay stateless token vs max_calls token (usage store) vs key_ref token, c=64")
    ts = [x for x in ctx.targets if x.name == "relay"] + [ctx.relay_mc, ctx.relay_kr]
    return {"c64": alternate(ctx, ts, lambda t: closed_loop(
        ctx, t, "chat/completions", 64, ctx.dur, {"x-mock-response-bytes": "1024"}, CHAT_BODY))}


def scenario3(ctx):
    log("  scenario 3: streaming, 20 chunks 5 ms apart, c=64")
    h = {"x-mock-chunks": "20", "x-mock-chunk-delay-ms": "5"}
    return {"c64": alternate(ctx, ctx.targets, lambda t: loadgen(
        ctx.lg, "stream", t, "chat/completions", h, STREAM_BODY,
        ["-c", "64", "-d", f"{ctx.dur}s", "-warmup", ctx.warm], ctx.dur + 60))}


def scenario4(ctx):
    out = {}
    for rate in ctx.rates:
        log(f"  scenario 4: open loop {rate} req/s (latency from intended send time)")
        out[f"r{rate}"] = alternate(ctx, ctx.targets, lambda t: loadgen(
            ctx.lg, "open", t, "chat/completions", {"x-mock-response-bytes": "1024"}, CHAT_BODY,
            ["-rate", str(rate), "-d", f"{ctx.open_dur}s", "-warmup", ctx.warm],
            ctx.open_dur + 60))
    return out


class _Hook(http.server.BaseHTTPRequestHandler):
    """The webhook receiver of scenario 5: reads each batch, answers 204."""
    protocol_version = "HTTP/1.1"
    batches = 0

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        _Hook.batches += 1
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def start_webhook():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def start_postgres(tmp):
    """A throwaway PostgreSQL for scenario 5 (as nobody when root): (URL,
    postmaster pid), or None when the binaries are missing or it does not start."""
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(re.sub(r"\D", "", p) or 0))
    initdb = shutil.which("initdb") or (bindirs and os.path.join(bindirs[-1], "initdb"))
    if not initdb or not os.path.exists(initdb):
        return None
    postgres = os.path.join(os.path.dirname(initdb), "postgres")
    d = os.path.join(tmp, "pg")
    os.makedirs(d)
    pre = []
    if os.geteuid() == 0:
        os.chown(d, 65534, 65534)
        pre = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    r = subprocess.run(pre + [initdb, "-D", os.path.join(d, "data"), "-U", "relay", "--auth=trust",
                              "--locale=C", "-E", "UTF8", "--no-sync"], capture_output=True, text=True)
    if r.returncode != 0:
        log(f"WARNING: initdb failed: {r.stderr[-300:]}")
        return None
    port = free_port()
    logf = open(os.path.join(tmp, "postgres.log"), "w")
    pg = subprocess.Popen(pre + [postgres, "-D", os.path.join(d, "data"), "-k", d,
                                 "-p", str(port), "-h", "127.0.0.1"], stdout=logf, stderr=logf)
    PROCS.append(pg)
    if not wait_port(port, 30):
        log(f"WARNING: postgres did not start; see {tmp}/postgres.log")
        return None
    time.sleep(0.5)
    return f"postgres://relay@127.0.0.1:{port}/postgres", pg.pid


def log_stats(port):
    """The relay's per-sink log counters from /health."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        return json.load(r).get("logs") or []


def scenario5(ctx):
    """Throughput with logging off vs every sink on (console off), bodies off
    and on: three relays, alternated like every other scenario."""
    log("  scenario 5: logging off vs all sinks (database, Parquet, webhook), bodies off / on, c=64")
    hook = start_webhook()
    started = start_postgres(ctx.tmp)
    pg, pg_pid = started if started else (None, None)
    db = ({"enabled": True, "type": "postgres", "connection_string": pg} if pg else
          {"enabled": True, "type": "sqlite", "connection_string": os.path.join(ctx.tmp, "logs.db")})

    def sinks(tag, bodies):
        # No spool (the default has one): under this saturating load
        # PostgreSQL falls behind, and replaying a spool in the background
        # would slow the next target's run (the alternation would then
        # flatter the ratio). Drops are counted and reported instead.
        return {"console": False, "bodies": bodies, "spool_dir": None,
                "web": {"enabled": True, "callback_url": f"http://127.0.0.1:{hook.server_port}/hook"},
                "database": db,
                "parquet": {"enabled": True, "file_path": os.path.join(ctx.tmp, tag, "parquet")}}

    targets, ports = [], {}
    for tag, cfg in (("relay-log-off", {"console": False}),
                     ("relay-all-sinks", sinks("relay-all-sinks", False)),
                     ("relay-all-sinks-bodies", sinks("relay-all-sinks-bodies", True))):
        p, port, rai = start_relay(ctx.bins, ctx.tmp, tag, ctx.mport, log_cfg=cfg)
        targets.append(Target(tag, mint(ctx.bins, rai, port), {"Origin": ORIGIN}, lambda p=p: [p.pid]))
        ports[tag] = port
    if not ctx.quick:
        for t in targets:
            closed_loop(ctx, t, "chat/completions", 64, 1, {}, CHAT_BODY)
    def run(t):
        # Where the CPU goes besides the relay: the sinks' receivers share
        # these 2 cores (PostgreSQL's processes; this process, which is the
        # webhook receiver while wrk runs), and the whole machine.
        pg_pids = [pg_pid] + children(pg_pid) if pg_pid else []
        pg0, me0, busy0 = cpu_seconds(pg_pids), sum(os.times()[:2]), machine_busy_s()
        r = closed_loop(ctx, t, "chat/completions", 64, ctx.dur, {"x-mock-response-bytes": "1024"},
                        CHAT_BODY)
        n = r.get("requests") or 0
        if n:
            if pg_pids:
                r["postgres_cpu_us_per_req"] = (cpu_seconds(pg_pids) - pg0) * 1e6 / n
            r["webhook_receiver_cpu_us_per_req"] = (sum(os.times()[:2]) - me0) * 1e6 / n
            r["machine_cpu_us_per_req"] = (machine_busy_s() - busy0) * 1e6 / n
        return r

    out = {"c64": alternate(ctx, targets, run)}
    time.sleep(2.5)  # let the last batches (1 s delay) land before reading the counters
    out["database"] = "postgres" if pg else "sqlite (PostgreSQL not available)"
    out["console"] = "off"
    out["sinks"] = {tag: {st["name"]: {k: st.get(k) for k in ("delivered", "dropped", "queued", "retries",
                                                              "spooled", "in_spool")}
                          for st in log_stats(port)}
                    for tag, port in ports.items() if tag != "relay-log-off"}
    out["webhook_batches"] = _Hook.batches
    hook.shutdown()
    return out


def hold_streams(ctx, t, n):
    """Opens n idle SSE streams through t; returns (rss_idle, rss_held, rss_after, ready)."""
    pids = t.pids()
    # warm up: thread pools, connection pool, allocator arenas
    closed_loop(ctx, t, "chat/completions", 64, 1, {"x-mock-response-bytes": "1024"}, CHAT_BODY)
    time.sleep(ctx.settle)
    idle = rss_kib(pids)
    cmd = [ctx.lg, "hold", "-url", t.base + "chat/completions", "-body", STREAM_BODY,
           "-c", str(n), "-timeout", "60s"]
    for k, v in dict(t.headers, **{"x-mock-stall-after": "1"}).items():
        cmd += ["-H", f"{k}: {v}"]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    PROCS.append(p)
    line = p.stdout.readline().split()
    ready = int(line[1]) if len(line) > 1 else 0
    time.sleep(ctx.settle)
    held = rss_kib(pids)
    fds = [open_fds(pids)]
    p.stdin.write("close\n")
    p.stdin.flush()
    p.wait(timeout=60)
    time.sleep(2 * ctx.settle)
    after = rss_kib(pids)
    fds.append(open_fds(pids))
    return idle, held, after, ready, fds


def scenario6(ctx):
    out = {}
    # uploads first, on the fresh relay, so its idle RSS is not inflated by the streams
    t = ctx.mem_relay
    pids = t.pids()
    log(f"  scenario 6: RSS of relay during {ctx.uploads} concurrent uploads of {ctx.upload_mb} MB")
    closed_loop(ctx, t, "chat/completions", 64, 1, {"x-mock-response-bytes": "1024"}, CHAT_BODY)
    time.sleep(ctx.settle)
    idle = rss_kib(pids)
    cmd = [ctx.lg, "upload", "-url", t.base + "upload", "-c", str(ctx.uploads),
           "-size", str(ctx.upload_mb << 20), "-timeout", "120s"]
    for k, v in dict(t.headers, **{"content-type": "application/octet-stream"}).items():
        cmd += ["-H", f"{k}: {v}"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    PROCS.append(p)
    peak = idle
    while p.poll() is None:
        peak = max(peak, rss_kib(pids))
        time.sleep(0.02)
    r = json.loads(p.stdout.read().strip().splitlines()[-1])
    time.sleep(ctx.settle)
    out["uploads_relay"] = dict(r, uploads=ctx.uploads, mb_each=ctx.upload_mb, rss_idle_kib=idle,
                                rss_peak_kib=peak, rss_after_kib=rss_kib(pids),
                                peak_minus_idle_mib=(peak - idle) / 1024)
    log(f"    {out['uploads_relay']}")
    n = ctx.streams
    for t in ctx.mem_targets:
        log(f"  scenario 6: RSS of {t.name} holding {n} idle SSE streams")
        idle, held, after, ready, fds = hold_streams(ctx, t, n)
        out[f"streams_{t.name}"] = {
            "streams": n, "ready": ready, "rss_idle_kib": idle, "rss_held_kib": held,
            "rss_after_close_kib": after, "open_fds_held": fds[0], "open_fds_after_close": fds[1],
            "kib_per_stream": (held - idle) / ready if ready else None,
            "after_vs_idle": after / idle if idle else None}
        log(f"    {out[f'streams_{t.name}']}")
    return out


def scenario7(ctx):
    log("  scenario 7: criterion micro-benchmark (cargo bench -p relayapi-token --bench token)")
    cmd = ["cargo", "bench", "-q", "-p", "relayapi-token", "--bench", "token"]
    if ctx.quick:
        cmd += ["--profile", "dev", "--", "v2/decode_validate/minimal|legacy/decode_validate",
                "--warm-up-time", "0.05", "--measurement-time", "0.1", "--sample-size", "10"]
    else:
        cmd += ["--", "--warm-up-time", "1", "--measurement-time", "3"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    res = {}
    name = None
    for line in out.stdout.splitlines():
        m = re.match(r"^(\S+)\s*(time:\s*\[.*)?$", line.strip())
        if m and not line.startswith(" ") and "/" in m.group(1):
            name = m.group(1)
        m2 = re.search(r"time:\s*\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
        if m2 and name:
            v, unit = float(m2.group(1)), m2.group(2)
            res[name] = v * {"ps": 1e-6, "ns": 1e-3, "µs": 1, "us": 1, "ms": 1e3, "s": 1e6}[unit]
    if not res:
        raise RuntimeError(f"cargo bench gave no result: {out.stdout[-800:]} {out.stderr[-800:]}")
    log("    " + ", ".join(f"{k}={v:.2f}us" for k, v in res.items()))
    return {"us": res, "profile": "dev (meaningless)" if ctx.quick else "bench (release)"}


# --------------------------------------------------------------------------
# report


def g(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def gate(gates, name, value, limit, ok, fmt):
    if value is None:
        gates.append({"gate": name, "value": None, "limit": limit, "result": "NO DATA"})
    else:
        gates.append({"gate": name, "value": value, "limit": limit,
                      "result": "PASS" if ok else "FAIL", "shown": fmt})


def report(res, ctx):
    lines = []
    gates = []
    P = lines.append
    ref = "nginx-auto" if "nginx-auto" in ctx.names else None

    def ratio(a, b):
        return a / b if a is not None and b else None

    def f(v, spec="{:.0f}"):
        return "-" if v is None else spec.format(v)

    s1 = res.get("s1") or {}
    P("Scenario 1: non-streaming chat completion (1 KB), closed loop (wrk -t1)" if ctx.wrk else
      "Scenario 1: non-streaming chat completion (1 KB), closed loop (loadgen; wrk missing)")
    P(f"  {'conc':>4} {'target':<12} {'req/s':>9} {'xdirect':>8} {'p50 us':>8} {'p99 us':>8} "
      f"{'+p50 us':>8} {'+p99 us':>8} {'cpu us/req':>10}")
    for key, tr in s1.items():
        d = tr.get("direct", {})
        for name in ctx.names:
            r = tr.get(name)
            if not r:
                continue
            P(f"  {key[1:]:>4} {name:<12} {f(r.get('rps')):>9} {f(ratio(r.get('rps'), d.get('rps')), '{:.2f}'):>8} "
              f"{f(r.get('p50_us')):>8} {f(r.get('p99_us')):>8} "
              f"{f(None if name == 'direct' else r['p50_us'] - d.get('p50_us', 0)):>8} "
              f"{f(None if name == 'direct' else r['p99_us'] - d.get('p99_us', 0)):>8} "
              f"{f(r.get('cpu_us_per_req'), '{:.1f}'):>10}")
    relay = g(s1, "c64", "relay")
    if ref:
        ng = g(s1, "c64", ref)
        rr = ratio(g(relay, "rps"), g(ng, "rps"))
        gate(gates, "throughput c=64: relay >= 0.85 x nginx-auto", rr, 0.85, rr is not None and rr >= 0.85,
             f"{f(rr, '{:.2f}')} x nginx-auto ({f(ratio(g(relay, 'rps'), g(s1, 'c64', 'direct', 'rps')), '{:.2f}')} x direct)")
        cr = ratio(g(relay, "cpu_us_per_req"), g(ng, "cpu_us_per_req"))
        gate(gates, "proxy CPU/request c=64: relay <= 1.3 x nginx-auto", cr, 1.3, cr is not None and cr <= 1.3,
             f"{f(cr, '{:.2f}')} x ({f(g(relay, 'cpu_us_per_req'), '{:.1f}')} vs {f(g(ng, 'cpu_us_per_req'), '{:.1f}')} us)")
    else:
        gates.append({"gate": "throughput / CPU vs nginx", "result": "SKIP (nginx unavailable)"})

    s2 = res.get("s2") or {}
    if s2:
        a, b = g(s2, "c64", "relay", "rps"), g(s2, "c64", "relay-max_calls", "rps")
        P("")
        P("Scenario 2: usage store on (max_calls token), closed loop c=64")
        P(f"  relay stateless {f(a)} req/s, relay max_calls {f(b)} req/s, ratio {f(ratio(b, a), '{:.2f}')}"
          f"; p50 {f(g(s2, 'c64', 'relay', 'p50_us'))} vs {f(g(s2, 'c64', 'relay-max_calls', 'p50_us'))} us")
        k = g(s2, "c64", "relay-key_ref", "rps")
        P(f"  relay key_ref (relay-held key, 2 keys in rotation) {f(k)} req/s, ratio {f(ratio(k, a), '{:.2f}')}"
          f"; p50 {f(g(s2, 'c64', 'relay-key_ref', 'p50_us'))} us")
        rr = ratio(b, a)
        gate(gates, "usage store on: max_calls >= 0.9 x stateless", rr, 0.9, rr is not None and rr >= 0.9,
             f"{f(rr, '{:.2f}')} x")
        gates.append({"gate": "key_ref token throughput (reported, no target)",
                      "result": "REPORT", "value": ratio(k, a)})

    s3 = g(res, "s3", "c64") or {}
    if s3:
        P("")
        P("Scenario 3: streaming, 20 SSE chunks 5 ms apart, c=64")
        P(f"  {'target':<12} {'TTFB p50':>9} {'TTFB p99':>9} {'+p50':>7} {'+p99':>7} {'total p50':>10} {'total p99':>10} {'+total %':>8}  (us)")
        d = s3.get("direct", {})
        for name in ctx.names:
            r = s3.get(name)
            if not r:
                continue
            dt = None if name == "direct" else (r["total_p50_us"] - d["total_p50_us"]) / d["total_p50_us"] * 100
            P(f"  {name:<12} {f(r['ttfb_p50_us']):>9} {f(r['ttfb_p99_us']):>9} "
              f"{f(None if name == 'direct' else r['ttfb_p50_us'] - d['ttfb_p50_us']):>7} "
              f"{f(None if name == 'direct' else r['ttfb_p99_us'] - d['ttfb_p99_us']):>7} "
              f"{f(r['total_p50_us']):>10} {f(r['total_p99_us']):>10} {f(dt, '{:.2f}'):>8}")
        r = s3.get("relay", {})
        a50 = r.get("ttfb_p50_us", 0) - d.get("ttfb_p50_us", 0) if r and d else None
        a99 = r.get("ttfb_p99_us", 0) - d.get("ttfb_p99_us", 0) if r and d else None
        tot = (r["total_p50_us"] - d["total_p50_us"]) / d["total_p50_us"] * 100 if r and d else None
        gate(gates, "streaming: added TTFB p50 <= 500 us", a50, 500, a50 is not None and a50 <= 500, f"{f(a50)} us")
        gate(gates, "streaming: added TTFB p99 <= 2000 us", a99, 2000, a99 is not None and a99 <= 2000, f"{f(a99)} us")
        gate(gates, "streaming: total time p50 within 1% of direct", tot, 1.0, tot is not None and tot <= 1.0,
             f"{f(tot, '{:+.2f}')} %")

    s4 = res.get("s4") or {}
    if s4:
        P("")
        P("Scenario 4: open loop (latency from intended send time; no coordinated omission)")
        P(f"  {'rate':>5} {'target':<12} {'p50':>7} {'p99':>7} {'p99.9':>7} {'+p50':>7} {'+p99':>7} {'errors':>6} "
          f"{'lag p50':>7} {'lag p99':>7}  (us; lag: how late the generator sent)")
        for key, tr in s4.items():
            d = tr.get("direct", {})
            for name in ctx.names:
                r = tr.get(name)
                if not r:
                    continue
                P(f"  {key[1:]:>5} {name:<12} {f(r['p50_us']):>7} {f(r['p99_us']):>7} {f(r['p999_us']):>7} "
                  f"{f(None if name == 'direct' else r['p50_us'] - d['p50_us']):>7} "
                  f"{f(None if name == 'direct' else r['p99_us'] - d['p99_us']):>7} {f(r.get('errors')):>6} "
                  f"{f(r.get('send_lag_p50_us')):>7} {f(r.get('send_lag_p99_us')):>7}")
        r, d = g(s4, "r1000", "relay"), g(s4, "r1000", "direct")
        a50 = r["p50_us"] - d["p50_us"] if r and d else None
        a99 = r["p99_us"] - d["p99_us"] if r and d else None
        # The proxies' own added p50 next to the relay's: on a host whose
        # idle vCPUs halt, two more hops alone can cost about the limit.
        nginx_p50 = {n: g(s4, "r1000", n, "p50_us") for n in ctx.names if n.startswith("nginx")}
        refs = ", ".join(f"{n} +{f(p - d['p50_us'])}" for n, p in nginx_p50.items() if d and p is not None)
        gate(gates, "open loop 1000 req/s: added p50 <= 100 us", a50, 100, a50 is not None and a50 <= 100,
             f"{f(a50)} us" + (f" ({refs})" if refs else ""))
        gate(gates, "open loop 1000 req/s: added p99 <= 500 us", a99, 500, a99 is not None and a99 <= 500, f"{f(a99)} us")

    s5 = res.get("s5") or {}
    if s5:
        P("")
        P(f"Scenario 5: logging off vs all sinks (console {s5.get('console')}, database {s5.get('database')}, "
          "Parquet, webhook), c=64")
        base = g(s5, "c64", "relay-log-off", "rps")
        for name, tr in (s5.get("c64") or {}).items():
            P(f"  {name:<24} {f(tr.get('rps'))} req/s  x{f(ratio(tr.get('rps'), base), '{:.2f}')} of logging off"
              f"  p50 {f(tr.get('p50_us'))} us  p99 {f(tr.get('p99_us'))} us  cpu {f(tr.get('cpu_us_per_req'))} us/req")
        P("  CPU per request, us (the 2 cores are shared; 'other' = wrk, mock, kernel threads):")
        P(f"  {'target':<24} {'machine':>8} {'relay':>8} {'postgres':>8} {'webhook':>8} {'other':>8}")
        for name, tr in (s5.get("c64") or {}).items():
            m, rl = tr.get("machine_cpu_us_per_req"), tr.get("cpu_us_per_req")
            pgc, wh = tr.get("postgres_cpu_us_per_req"), tr.get("webhook_receiver_cpu_us_per_req")
            other = m - sum(x or 0 for x in (rl, pgc, wh)) if m is not None and rl is not None else None
            P(f"  {name:<24} {f(m, '{:.1f}'):>8} {f(rl, '{:.1f}'):>8} {f(pgc, '{:.1f}'):>8} "
              f"{f(wh, '{:.1f}'):>8} {f(other, '{:.1f}'):>8}")
        for tag, st in (s5.get("sinks") or {}).items():
            P(f"  {tag}: " + ", ".join(f"{k} delivered {v['delivered']} spooled {v.get('spooled')} "
                                       f"dropped {v['dropped']}" for k, v in st.items()))
        for name, limit in (("relay-all-sinks", 0.90), ("relay-all-sinks-bodies", 0.75)):
            r = ratio(g(s5, "c64", name, "rps"), base)
            gate(gates, f"{name.replace('relay-', '')} (bodies {'on' if 'bodies' in name else 'off'}) "
                        f">= {limit:.2f} x logging off", r, limit, r is not None and r >= limit, f"{f(r, '{:.2f}')}")
        dropped = sum(v["dropped"] for st in (s5.get("sinks") or {}).values() for v in st.values())
        gate(gates, "logging keeps up: no record dropped", dropped if s5.get("sinks") else None, 0,
             dropped == 0, f"{dropped} dropped")

    s6 = res.get("s6") or {}
    if s6:
        P("")
        P("Scenario 6: memory (RSS)")
        for key, r in s6.items():
            if key.startswith("streams_"):
                P(f"  {key[8:]:<12} {r['ready']}/{r['streams']} idle SSE streams: idle {r['rss_idle_kib']} KiB, "
                  f"held {r['rss_held_kib']} KiB -> {f(r['kib_per_stream'], '{:.1f}')} KiB/stream; "
                  f"after close {r['rss_after_close_kib']} KiB ({f(r['after_vs_idle'], '{:.2f}')} x idle); "
                  f"open fds {r.get('open_fds_held')} held, {r.get('open_fds_after_close')} after close")
        u = s6.get("uploads_relay")
        if u:
            P(f"  relay        {u['ok']}/{u['uploads']} uploads of {u['mb_each']} MB in {u['seconds']:.1f} s: "
              f"idle {u['rss_idle_kib']} KiB, peak {u['rss_peak_kib']} KiB (+{u['peak_minus_idle_mib']:.1f} MiB)")
        r = s6.get("streams_relay", {})
        v = r.get("kib_per_stream")
        gate(gates, "memory: <= 32 KiB per idle SSE stream", v, 32, v is not None and v <= 32, f"{f(v, '{:.1f}')} KiB")
        v = r.get("after_vs_idle")
        gate(gates, "memory: RSS after streams close within 20% of idle", v, 1.2, v is not None and v <= 1.2,
             f"{f(v, '{:.2f}')} x idle")
        v = g(u, "peak_minus_idle_mib")
        gate(gates, "memory: RSS during uploads within 50 MB of idle", v, 50,
             v is not None and v <= 50 and g(u, "errors") == 0, f"+{f(v, '{:.1f}')} MiB, {g(u, 'errors')} errors")

    s7 = res.get("s7") or {}
    if s7:
        P("")
        P(f"Scenario 7: token micro-benchmark, criterion, {s7['profile']}")
        for k, v in s7["us"].items():
            P(f"  {k:<32} {v:8.3f} us")
        v = s7["us"].get("v2/decode_validate/minimal")
        gate(gates, "token v2 decode + validate <= 5 us", v, 5, v is not None and v <= 5, f"{f(v, '{:.2f}')} us")
        v = s7["us"].get("legacy/decode_validate")
        gate(gates, "token legacy decode + validate <= 5 us", v, 5, v is not None and v <= 5, f"{f(v, '{:.2f}')} us")

    P("")
    P("Gates" + (" (QUICK MODE: numbers are meaningless, gates are informative only)" if ctx.quick else ""))
    for gt in gates:
        P(f"  {gt['result']:<8} {gt['gate']}" + (f": {gt['shown']}" if gt.get("shown") else ""))
    return "\n".join(lines), gates


# --------------------------------------------------------------------------


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "loadavg_at_start": load}


def main():
    # RELAYAPI_* variables are config overrides to the relay (an unknown one is
    # an error): none of the caller's (e.g. the test script's RELAYAPI_BIN) apply.
    for k in [k for k in os.environ if k.startswith("RELAYAPI_")]:
        del os.environ[k]
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--loadgen")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "latest.json"))
    ap.add_argument("--only", default="1,2,3,4,5,6,7", help="scenarios to run, e.g. 1,3")
    a = ap.parse_args()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))

    ctx = Ctx()
    ctx.quick = a.quick
    ctx.reps = 1 if a.quick else 3
    ctx.dur = 1 if a.quick else 5
    ctx.open_dur = 1 if a.quick else 10
    ctx.warm = "200ms" if a.quick else "1s"
    ctx.concs = [64] if a.quick else [16, 64, 256]
    ctx.rates = [1000] if a.quick else [1000, 2000]
    ctx.settle = 0.3 if a.quick else 1.0  # seconds to let RSS settle in scenario 6
    ctx.streams = 200 if a.quick else 5000
    ctx.uploads, ctx.upload_mb = (10, 2) if a.quick else (100, 10)
    ctx.wrk = None if os.environ.get("BENCH_NO_WRK") else shutil.which("wrk")  # env: test the fallback
    only = set(a.only.split(","))
    a.bin_dir = os.path.abspath(a.bin_dir)
    a.loadgen = os.path.abspath(a.loadgen) if a.loadgen else None
    ctx.lg = a.loadgen if a.loadgen and os.path.exists(a.loadgen) else None
    bins = {"relayapi": os.path.join(a.bin_dir, "relayapi"),
            "mock": os.path.join(a.bin_dir, "relayapi-mock")}
    ctx.tmp = tmp = tempfile.mkdtemp(prefix="relayapi-bench-")
    os.chmod(tmp, 0o755)
    result = {"machine": machine(), "mode": "quick" if a.quick else "full",
              "binaries": os.path.abspath(a.bin_dir),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "generators": {"closed_loop": "wrk -t1" if ctx.wrk else "loadgen (wrk missing)",
                             "other": "bench/loadgen (Go)" if ctx.lg else "missing"},
              "relay_env": os.environ.get("BENCH_RELAY_ENV", ""),
              "skipped": []}
    t0 = time.time()
    try:
        _, mport = start([bins["mock"], "--listen", "127.0.0.1:0", "--api-key", MOCK_KEY], tmp, "mock")
        direct = Target("direct", f"http://127.0.0.1:{mport}/v1/",
                        {"Authorization": f"Bearer {MOCK_KEY}", "Origin": ORIGIN}, lambda: [])
        targets = [direct]
        if shutil.which("nginx") and not os.environ.get("BENCH_NO_NGINX"):
            for tag, workers in (("nginx-1w", "1"), ("nginx-auto", "auto")):
                p, port = start_nginx(tmp, tag, mport, workers)
                targets.append(Target(tag, f"http://127.0.0.1:{port}/v1/",
                                      {"Authorization": f"Bearer {MOCK_KEY}", "Origin": ORIGIN},
                                      lambda p=p: [p.pid] + children(p.pid)))
        else:
            msg = "nginx not installed: nginx targets and the gates against nginx are skipped"
            log("WARNING: " + msg)
            result["skipped"].append(msg)
        rp, rport, rai = start_relay(bins, tmp, "relay", mport)
        relay = Target("relay", mint(bins, rai, rport), {"Origin": ORIGIN}, lambda: [rp.pid])
        targets.append(relay)
        ctx.relay_mc = Target("relay-max_calls", mint(bins, rai, rport, max_calls=10**9),
                              {"Origin": ORIGIN}, lambda: [rp.pid])
        ctx.relay_kr = Target("relay-key_ref", mint(bins, rai, rport, key_ref="mock"),
                              {"Origin": ORIGIN}, lambda: [rp.pid])
        if ctx.quick:  # the smoke run keeps only the gate's nginx
            targets = [t for t in targets if t.name != "nginx-1w"]
        ctx.targets = targets
        ctx.names = [t.name for t in targets] + ["relay-max_calls", "relay-key_ref"]
        if not ctx.lg:
            msg = "Go loadgen missing (Go not installed?): scenarios 3, 4, 6 skipped"
            log("WARNING: " + msg)
            result["skipped"].append(msg)
            only -= {"3", "4", "6"}

        # a short warm-up of every target (connection pools, page cache)
        for t in ([] if ctx.quick else targets + [ctx.relay_mc, ctx.relay_kr]):
            closed_loop(ctx, t, "chat/completions", 64, 1, {}, CHAT_BODY)

        ctx.bins, ctx.mport = bins, mport
        res = {}
        for key, fn in (("1", scenario1), ("2", scenario2), ("3", scenario3), ("4", scenario4),
                        ("5", scenario5)):
            if key in only:
                res["s" + key] = fn(ctx)
        if "6" in only:
            # a fresh relay (and the 1-worker nginx for reference), so idle RSS is meaningful
            mp, mrport, _ = start_relay(bins, tmp, "relay-mem", mport)
            ctx.mem_relay = Target("relay", mint(bins, rai, mrport), {"Origin": ORIGIN}, lambda: [mp.pid])
            ctx.mem_targets = [ctx.mem_relay] + [t for t in targets if t.name == "nginx-1w"]
            res["s6"] = scenario6(ctx)
        if "7" in only:
            res["s7"] = scenario7(ctx)
    finally:
        stop_all()
    result["scenarios"] = res
    result["seconds"] = round(time.time() - t0, 1)
    text, gates = report(res, ctx)
    result["gates"] = gates
    result["table"] = text
    print(text)
    print(f"\n({result['mode']} run, {result['seconds']} s, load average at start "
          f"{' '.join(result['machine']['loadavg_at_start'])}; JSON: {a.out})")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
