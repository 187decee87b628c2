"""Session fixtures for the black-box end-to-end tests.

One mock provider (`relayapi-mock`) and one relay (`relayapi serve`) are started
for the whole session, both on 127.0.0.1 port 0; their first stdout line
(`listening on http://HOST:PORT`) gives the real address. The relay runs in its
own temp dir with a temp config and a `.rai` from `relayapi gen-config`, and its
stderr (the logs, at debug level for our crate) goes to a file that
`test_zz_no_secrets.py` reads at the end of the session.

Binaries: `RELAYAPI_BIN` / `RELAYAPI_MOCK_BIN`, default `<repo>/target/debug/...`
(`scripts/test.sh` builds them first).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0


def _bin(env_name: str, default_name: str) -> Path:
    path = Path(os.environ.get(env_name) or REPO / "target" / "debug" / default_name)
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"{default_name} binary not found at {path}: run "
            f"`cargo build -p relayapi -p relayapi-mock` or set {env_name}",
            pytrace=False,
        )
    return path


def _child_env() -> dict[str, str]:
    """The test process environment minus anything that would steer the relay."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYAPI_")}
    env["NO_COLOR"] = "1"
    env["RUST_LOG"] = "relayapi=debug,relayapi_mock=debug,info"
    env.pop("HTTP_PROXY", None)
    env.pop("HTTPS_PROXY", None)
    env.pop("http_proxy", None)
    env.pop("https_proxy", None)
    env.pop("ALL_PROXY", None)
    env.pop("all_proxy", None)
    return env


class Proc:
    """A child process whose first stdout line is `listening on http://HOST:PORT`."""

    def __init__(self, name: str, argv: list[str], cwd: Path, stderr_path: Path):
        self.name = name
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        self.stdout_lines: list[str] = []
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        first = threading.Event()

        def drain() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                self.stdout_lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                first.set()
            first.set()

        self._reader = threading.Thread(target=drain, name=f"{name}-stdout", daemon=True)
        self._reader.start()
        if not first.wait(STARTUP_TIMEOUT) or not self.stdout_lines:
            self.stop()
            raise RuntimeError(
                f"{name} did not print its address within {STARTUP_TIMEOUT}s "
                f"(exit {self.proc.poll()}); stderr:\n{self.stderr_text()[-4000:]}"
            )
        line = self.stdout_lines[0]
        prefix = "listening on "
        if not line.startswith(prefix):
            self.stop()
            raise RuntimeError(f"{name}: unexpected first stdout line {line!r}")
        self.url = line[len(prefix):].strip().rstrip("/")
        self.port = int(self.url.rsplit(":", 1)[1])
        assert self.url.startswith("http://127.0.0.1:"), self.url

    def stderr_text(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text("utf-8", "replace")

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


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def derive_content_key(aes_key_hex: str) -> bytes:
    """HKDF-SHA256(ikm = aes_key bytes, salt = empty, info = "relayapi token v2", 32)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"relayapi token v2"
    ).derive(bytes.fromhex(aes_key_hex))


def kid_for(content_key: bytes) -> str:
    return hashlib.sha256(content_key).hexdigest()[:16]


@dataclass
class Relay:
    """Everything a test needs about the running relay and mock."""

    relayapi_bin: Path
    workdir: Path
    rai_path: Path
    aes_key: str
    mock_key: str
    mock_url: str
    url: str  # http://127.0.0.1:PORT
    proc: Proc
    mock: Proc
    # Every token seen by the session (CLI-minted or minted in Python/JS):
    # none may appear in the relay's logs.
    tokens: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        """The relay base URL for an SDK that passes the token as its apiKey."""
        return f"{self.url}/relayapi/"

    @property
    def content_key(self) -> bytes:
        return derive_content_key(self.aes_key)

    @property
    def kid(self) -> str:
        return kid_for(self.content_key)

    def token_url(self, token: str) -> str:
        """Base URL with the token as first path segment (`.../relayapi/<token>/`)."""
        return f"{self.base_url}{token}/"

    def remember(self, token: str) -> str:
        self.tokens.append(token)
        return token

    def mint(
        self,
        *,
        provider: str = "openai",
        api_key: str | None = None,
        expire: str | None = None,
        max_calls: int | None = None,
        model: str | None = None,
        models: list[str] | None = None,
        sub: str | None = None,
        max_tokens: int | None = None,
        url: bool = False,
    ) -> str:
        """Mint a token with `relayapi token` (the real CLI)."""
        argv = [
            str(self.relayapi_bin), "token",
            "--rai", str(self.rai_path),
            "--provider", provider,
            "--api-key", api_key if api_key is not None else self.mock_key,
        ]  # fmt: skip
        if expire is not None:
            argv += ["--expire", expire]
        if max_calls is not None:
            argv += ["--max-calls", str(max_calls)]
        if model is not None:
            argv += ["--model", model]
        if models is not None:
            argv += ["--models", ",".join(models)]
        if sub is not None:
            argv += ["--sub", sub]
        if max_tokens is not None:
            argv += ["--max-tokens", str(max_tokens)]
        if url:
            argv.append("--url")
        out = subprocess.run(
            argv, cwd=self.workdir, env=_child_env(), capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, f"relayapi token failed: {out.stderr}"
        value = out.stdout.strip()
        assert value and "\n" not in value, f"unexpected `relayapi token` output: {out.stdout!r}"
        if url:
            token = value.rstrip("/").rsplit("/", 1)[1]
            self.remember(token)
        else:
            self.remember(value)
        return value


@pytest.fixture(scope="session")
def relay(tmp_path_factory: pytest.TempPathFactory):
    relayapi_bin = _bin("RELAYAPI_BIN", "relayapi")
    mock_bin = _bin("RELAYAPI_MOCK_BIN", "relayapi-mock")
    workdir = tmp_path_factory.mktemp("relay")
    mock_key = "sk-mock-" + secrets.token_hex(16)

    mock = Proc(
        "relayapi-mock",
        [str(mock_bin), "--listen", "127.0.0.1:0", "--api-key", mock_key],
        workdir,
        workdir / "mock.stderr",
    )
    relay_proc = None
    try:
        config = {
            "server": {"port": 0},
            "usage": {"store": "memory"},
            "providers": {
                "openai": {"base_url": f"{mock.url}/v1"},
                # test_other_sdks.py: Anthropic's and Google's official SDKs.
                "anthropic": {"base_url": mock.url},
                "gemini": {"base_url": mock.url},
                # test_other_sdks.py: the AzureOpenAI client, both ways it is set up.
                "azure-openai": {"base_url": f"{mock.url}/openai"},
            },
            # test_legacy.py: tokens of the earlier Go server through the same relay.
            "legacy_tokens": True,
        }
        (workdir / "config.json").write_text(json.dumps(config))
        gen = subprocess.run(
            [str(relayapi_bin), "gen-config", "--host", "http://127.0.0.1", "--port", "1"],
            cwd=workdir, env=_child_env(), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert gen.returncode == 0, f"relayapi gen-config failed: {gen.stderr}"
        rai = json.loads(gen.stdout)
        rai_path = workdir / "e2e.rai"
        rai_path.write_text(json.dumps(rai, indent=2))

        relay_proc = Proc(
            "relayapi",
            [
                str(relayapi_bin), "serve",
                "--config", str(workdir / "config.json"),
                "--rai", str(rai_path),
            ],  # fmt: skip
            workdir,
            workdir / "relay.stderr",
        )
        # The relay has loaded the .rai; now point its server block at the real
        # port so `relayapi token --url` prints a usable URL.
        rai["server"]["port"] = relay_proc.port
        rai_path.write_text(json.dumps(rai, indent=2))

        r = Relay(
            relayapi_bin=relayapi_bin,
            workdir=workdir,
            rai_path=rai_path,
            aes_key=rai["crypto"]["aes_key"],
            mock_key=mock_key,
            mock_url=mock.url,
            url=relay_proc.url,
            proc=relay_proc,
            mock=mock,
        )
        yield r
    finally:
        if relay_proc is not None:
            relay_proc.stop()
        mock.stop()


def pytest_collection_modifyitems(config, items):
    """The log-leak check must run after every other test of the session."""
    last = [i for i in items if i.module.__name__.endswith("test_zz_no_secrets")]
    rest = [i for i in items if i not in last]
    items[:] = rest + last
