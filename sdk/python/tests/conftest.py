"""Fixtures for the Python SDK tests.

* ``vectors`` — ``testdata/vectors/token-v2.json``; ``POLICY_CORPUS`` —
  ``sdk/testdata/policy-claims.json`` (grammar cases of the policy claims).
* ``rai_dict`` — a valid ``.rai`` document (key A of the vectors).
* ``relay`` (session) — a real ``relayapi-mock`` and ``relayapi serve`` on
  127.0.0.1 port 0 (first stdout line ``listening on http://HOST:PORT``),
  the relay in its own temp dir with a ``.rai`` from ``relayapi gen-config``
  whose ``server.port`` is then set to the relay's real port.
  Binaries: ``RELAYAPI_BIN`` / ``RELAYAPI_MOCK_BIN``, default
  ``<repo>/target/debug/…`` (``scripts/test-sdk-python.sh`` builds them).
* ``anyio_backend`` — async tests run on asyncio (anyio's pytest plugin).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import pytest

REPO = Path(__file__).resolve().parents[3]
VECTORS = REPO / "testdata" / "vectors" / "token-v2.json"
#: Valid/invalid items of the list policy claims, shared with the JS SDK.
POLICY_CORPUS = REPO / "sdk" / "testdata" / "policy-claims.json"
STARTUP_TIMEOUT = 30.0
KEY_A = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"


@pytest.fixture(scope="session")
def vectors() -> Dict[str, Any]:
    return json.loads(VECTORS.read_text("utf-8"))


@pytest.fixture
def rai_dict() -> Dict[str, Any]:
    return {
        "version": "1.0.0",
        "server": {"host": "http://localhost", "port": 8840, "base_path": "/relayapi/"},
        "crypto": {"method": "aes", "aes_key": KEY_A, "aes_iv_seed": "00112233445566778899aabbccddeeff"},
    }


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _bin(env_name: str, name: str) -> Path:
    path = Path(os.environ.get(env_name) or REPO / "target" / "debug" / name)
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"{name} binary not found at {path}: run `cargo build -p relayapi -p relayapi-mock` "
            f"or set {env_name}",
            pytrace=False,
        )
    return path


def _child_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYAPI_")}
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(k, None)
    env["NO_COLOR"] = "1"
    return env


class Proc:
    """A child whose first stdout line is ``listening on http://HOST:PORT``."""

    def __init__(self, name: str, argv: List[str], cwd: Path) -> None:
        self.name = name
        self.stderr_path = cwd / f"{name}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.lines: List[str] = []
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=_child_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=self._stderr,
        )  # fmt: skip
        first = threading.Event()

        def drain() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                first.set()
            first.set()

        self._reader = threading.Thread(target=drain, daemon=True)
        self._reader.start()
        if not first.wait(STARTUP_TIMEOUT) or not self.lines:
            self.stop()
            raise RuntimeError(f"{name} printed no address; stderr:\n{self.stderr_path.read_text()[-4000:]}")
        prefix = "listening on "
        if not self.lines[0].startswith(prefix):
            self.stop()
            raise RuntimeError(f"{name}: unexpected first line {self.lines[0]!r}")
        self.url = self.lines[0][len(prefix):].strip().rstrip("/")
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        self._stderr.close()


@dataclass
class Relay:
    url: str  # http://127.0.0.1:PORT
    rai_path: Path
    rai: Dict[str, Any]
    mock_key: str
    relayapi_bin: Path
    proc: Proc

    def logs(self) -> str:
        self.proc._stderr.flush()
        return self.proc.stderr_path.read_text("utf-8", "replace")


@pytest.fixture(scope="session")
def relay(tmp_path_factory: pytest.TempPathFactory):
    relayapi_bin = _bin("RELAYAPI_BIN", "relayapi")
    mock_bin = _bin("RELAYAPI_MOCK_BIN", "relayapi-mock")
    workdir = tmp_path_factory.mktemp("sdk-relay")
    mock_key = "sk-mock-" + secrets.token_hex(16)
    mock = Proc("relayapi-mock", [str(mock_bin), "--listen", "127.0.0.1:0", "--api-key", mock_key], workdir)
    relay_proc = None
    try:
        config = {
            "server": {"port": 0},
            "usage": {"store": "memory"},
            "providers": {"openai": {"base_url": f"{mock.url}/v1"}},
        }
        (workdir / "config.json").write_text(json.dumps(config))
        gen = subprocess.run(
            [str(relayapi_bin), "gen-config", "--host", "http://127.0.0.1", "--port", "1"],
            cwd=workdir, env=_child_env(), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert gen.returncode == 0, gen.stderr
        rai = json.loads(gen.stdout)
        rai_path = workdir / "sdk.rai"
        rai_path.write_text(json.dumps(rai))
        relay_proc = Proc(
            "relayapi",
            [str(relayapi_bin), "serve", "--config", str(workdir / "config.json"), "--rai", str(rai_path)],
            workdir,
        )
        # The relay has loaded the key; point the .rai at its real port.
        rai["server"]["port"] = relay_proc.port
        rai_path.write_text(json.dumps(rai, indent=2))
        yield Relay(relay_proc.url, rai_path, rai, mock_key, relayapi_bin, relay_proc)
    finally:
        if relay_proc is not None:
            relay_proc.stop()
        mock.stop()
