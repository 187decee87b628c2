"""The Parquet log sink read back by an independent reader (pyarrow).

A relay of its own (not the session one: its files are only complete after
shutdown) writes to a Parquet directory and a SQLite log database; after
streaming and non-streaming calls and a SIGTERM, every `logs_*.parquet`
must open with pyarrow, have the documented typed schema, hold one row per
request with the right values, and contain none of the session's secrets.
A file that already exists for the day is never truncated: a second run
adds a part file.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

from conftest import Proc, _bin, _child_env


def _run_relay(workdir, mock, config):
    relayapi = _bin("RELAYAPI_BIN", "relayapi")
    (workdir / "config.json").write_text(json.dumps(config))
    rai_path = workdir / "pq.rai"
    if not rai_path.exists():
        gen = subprocess.run(
            [str(relayapi), "gen-config"], cwd=workdir, env=_child_env(),
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert gen.returncode == 0, gen.stderr
        rai_path.write_text(gen.stdout)
    proc = Proc(
        "relayapi-parquet",
        [str(relayapi), "serve", "--config", str(workdir / "config.json"), "--rai", str(rai_path)],
        workdir,
        workdir / f"relay-{len(list(workdir.glob('relay-*.stderr')))}.stderr",
    )
    token = subprocess.run(
        [str(relayapi), "token", "--rai", str(rai_path), "--provider", "openai",
         "--api-key", mock.mock_key, "--sub", "pq-user"],
        cwd=workdir, env=_child_env(), capture_output=True, text=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    assert token.count(".") == 4, token
    return proc, token, json.loads(rai_path.read_text())["crypto"]["aes_key"]


def _calls(proc, token, prefix):
    url = f"{proc.url}/relayapi/{token}/chat/completions"
    ids = []
    for i, stream in enumerate([False, True, False, True]):
        rid = f"{prefix}-{i}"
        body = {
            "model": "gpt-4o-mini",
            "stream": stream,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "parquet please"}],
        }
        with httpx.stream("POST", url, json=body, headers={"x-request-id": rid}, timeout=30) as r:
            assert r.status_code == 200
            r.read()
        ids.append(rid)
    return ids


def test_parquet_files_read_back_with_pyarrow(relay, tmp_path):
    workdir = tmp_path
    pq_dir = workdir / "parquet"
    config = {
        # The test names its requests (x-request-id): only a trusted proxy may.
        "server": {"port": 0, "trusted_proxies": ["127.0.0.1"]},
        "usage": {"store": "memory"},
        "providers": {"openai": {"base_url": f"{relay.mock_url}/v1"}},
        "log": {
            "console": False,
            "bodies": True,
            "batch_max_delay": 0.05,
            "parquet": {"enabled": True, "file_path": str(pq_dir)},
            "database": {
                "enabled": True,
                "type": "sqlite",
                "connection_string": str(workdir / "logs.db"),
            },
        },
    }
    proc, token, aes_key = _run_relay(workdir, relay, config)
    ids = _calls(proc, token, "pq-a")
    proc.stop()
    assert proc.proc.returncode == 0, proc.stderr_text()

    files = sorted(pq_dir.glob("logs_*.parquet"))
    assert len(files) == 1 and not list(pq_dir.glob(".*inprogress")), list(pq_dir.iterdir())
    table = pq.read_table(files[0])
    schema = table.schema
    assert schema.field("started_at").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("status").type == pa.int32()
    assert schema.field("usage_total_tokens").type == pa.int64()
    assert schema.field("stream").type == pa.bool_()
    assert schema.field("request_body").type == pa.string()
    assert not schema.field("request_id").nullable and schema.field("jti").nullable

    rows = {r["request_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == ids
    for i, rid in enumerate(ids):
        r = rows[rid]
        assert r["status"] == 200 and r["provider"] == "openai" and r["sub"] == "pq-user"
        assert r["stream"] is (i % 2 == 1)
        assert r["usage_total_tokens"] > 0
        assert r["started_at"].year >= 2025
        assert files[0].name == f"logs_{r['started_at'].strftime('%Y-%m-%d')}.parquet"
        body = json.loads(r["response_body"])
        assert "parquet please" in body["text"]
        headers = json.loads(r["request_headers"])
        assert any(name == "content-type" for name, _ in headers)

    # The same records in the SQLite log database, by request id.
    db = sqlite3.connect(workdir / "logs.db")
    got = sorted(x for (x,) in db.execute("SELECT request_id FROM relayapi_logs"))
    db.close()
    assert got == ids

    # Nothing secret in the files (decoded by pyarrow, and raw).
    text = json.dumps(table.to_pylist(), default=str) + files[0].read_bytes().decode("latin-1")
    for name, secret in {"token": token, "api key": relay.mock_key, "aes_key": aes_key}.items():
        assert secret not in text, f"{name} in the Parquet file"

    # A second run on the same day adds a part; the first file is untouched.
    before = files[0].read_bytes()
    proc, token, _ = _run_relay(workdir, relay, config)
    ids2 = _calls(proc, token, "pq-b")
    proc.stop()
    assert proc.proc.returncode == 0, proc.stderr_text()
    assert files[0].read_bytes() == before
    parts = sorted(pq_dir.glob("logs_*.parquet"))
    part1 = pq_dir / files[0].name.replace(".parquet", ".1.parquet")
    assert len(parts) == 2 and part1 in parts, parts
    assert sorted(pq.read_table(part1).column("request_id").to_pylist()) == ids2
    # DuckDB-style globbing over the day works: all rows, once.
    both = pq.ParquetDataset([str(p) for p in parts]).read()
    assert sorted(both.column("request_id").to_pylist()) == sorted(ids + ids2)
