"""The ``.rai`` client config: loading, validation (docs/token-format.md §1), URLs.

A ``.rai`` file is what the relay operator hands to an application backend:
where the relay lives and the shared AES key. :class:`RelayConfig` validates
it exactly like the relay does, reports every problem at once (field path and
fix, never the key) and keeps the key out of ``repr()``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, List, Mapping, Optional, Union

from ._constants import DEFAULT_CONFIG_PATH, HEALTH_PATH, RAI_FIX, REDACTED
from ._exceptions import ConfigError

__all__ = ["RelayConfig", "ConfigSource"]

_HEX = re.compile(r"\A[0-9a-fA-F]*\Z")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

ConfigSource = Union[str, "os.PathLike[str]", Mapping[str, Any], "RelayConfig"]


def normalise_base_path(base_path: str) -> str:
    """Leading and trailing ``/``: ``""`` → ``/``, ``relayapi`` → ``/relayapi/``."""
    trimmed = base_path.strip("/")
    return "/" if not trimmed else f"/{trimmed}/"


def host_problem(host: str) -> Optional[str]:
    """Why ``host`` is not a ``server.host`` the relay accepts, or ``None``:
    ``http://`` or ``https://`` (any case) and a host, an optional ``:port``
    and trailing ``/``, nothing else — the relay's ``check_host``
    (crates/token/src/rai.rs), worded as it words it."""
    lower = host[:8].translate(_ASCII_LOWER)
    scheme = next((sc for sc in ("http://", "https://") if lower.startswith(sc)), None)
    if scheme is None:
        return (
            'must start with http:// or https://, e.g. "https://relay.example.com" or "http://localhost"'
        )
    authority = host[len(scheme) :]
    if authority.endswith("/"):
        authority = authority[:-1]
    if not authority:
        return 'must name a host after the scheme, e.g. "http://localhost"'
    if any(c in "/?#@\\" or c <= " " or c == "\x7f" for c in authority):
        return (
            "must be a scheme and a host only (no path, query, fragment, user or spaces), "
            'e.g. "https://relay.example.com"'
        )
    return None


class RelayConfig:
    """A validated ``.rai`` config. ``repr()`` never shows key material.

    Build one with :meth:`load` (path, dict or config), :meth:`from_file` or
    :meth:`from_dict`.
    """

    __slots__ = ("version", "host", "port", "base_path", "method", "_aes_key", "_aes_iv_seed", "path")

    def __init__(
        self,
        *,
        version: str,
        host: str,
        port: int,
        base_path: str,
        method: str,
        aes_key: str,
        aes_iv_seed: str,
        path: Optional[str] = None,
    ) -> None:
        #: Format version, e.g. ``1.0.0``.
        self.version = version
        #: Scheme and host name, e.g. ``http://localhost``.
        self.host = host
        #: TCP port, 1–65535 (ignored in URLs when ``host`` has a port).
        self.port = port
        #: URL prefix of the relay, always starting and ending with ``/``.
        self.base_path = normalise_base_path(base_path)
        #: Always ``aes`` (case-insensitive).
        self.method = method
        self._aes_key = aes_key
        self._aes_iv_seed = aes_iv_seed
        #: The file the config came from, or ``None``.
        self.path = path

    # -- construction ------------------------------------------------------

    @classmethod
    def load(cls, config: ConfigSource = DEFAULT_CONFIG_PATH) -> "RelayConfig":
        """A config from a path, a dict (the parsed ``.rai`` JSON) or a config."""
        if isinstance(config, RelayConfig):
            return config
        if isinstance(config, Mapping):
            return cls.from_dict(config)
        if isinstance(config, (str, os.PathLike)):
            return cls.from_file(config)
        raise ConfigError(
            f"config must be a path to a .rai file or a dict, not {type(config).__name__}"
        )

    @classmethod
    def from_file(cls, path: Union[str, "os.PathLike[str]"]) -> "RelayConfig":
        """Reads and validates a ``.rai`` file."""
        name = os.fspath(path)
        try:
            with open(name, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise ConfigError(
                f"RelayAPI config file {name!r} not found: pass the path of the .rai file the "
                "relay operator gave you (the relay writes default.rai on first run), or "
                "generate one with `relayapi gen-config > default.rai`",
                path=name,
            ) from None
        except IsADirectoryError:
            raise ConfigError(
                f"RelayAPI config {name!r} is a directory: pass the path of a .rai file", path=name
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"RelayAPI config file {name!r} cannot be read ({exc.strerror or exc}); "
                "check the path and its permissions",
                path=name,
            ) from None
        if raw.startswith(b"\xef\xbb\xbf"):
            # The relay's JSON reader refuses a byte order mark, so must we.
            raise ConfigError(
                f"RelayAPI config file {name!r} starts with a UTF-8 byte order mark (BOM), which "
                "the relay refuses as not valid JSON; save the file as UTF-8 without BOM, or "
                f"{RAI_FIX}",
                path=name,
            )
        try:
            text = raw.decode("utf-8")
            value = json.loads(text)
        except UnicodeDecodeError:
            raise ConfigError(
                f"RelayAPI config file {name!r} is not UTF-8 text; {RAI_FIX}", path=name
            ) from None
        except json.JSONDecodeError as exc:
            # Only the position: the content may hold the key.
            raise ConfigError(
                f"RelayAPI config file {name!r} is not valid JSON (syntax error at line "
                f"{exc.lineno}, column {exc.colno}); {RAI_FIX}",
                path=name,
            ) from None
        return cls._validate(value, name)

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> "RelayConfig":
        """Validates an already-parsed ``.rai`` document."""
        return cls._validate(value, None)

    @classmethod
    def _validate(cls, value: Any, path: Optional[str]) -> "RelayConfig":
        problems: List[str] = []
        add = problems.append

        def string(obj: Mapping[str, Any], key: str, field: str, hint: str) -> Optional[str]:
            if key not in obj:
                add(f"{field} is missing; it {hint}")
                return None
            v = obj[key]
            if not isinstance(v, str):
                add(f"{field} {hint}")
                return None
            return v

        def secret(obj: Mapping[str, Any], key: str, field: str) -> Optional[str]:
            # Never mentions the value.
            if key not in obj:
                add(f"{field} is missing; {RAI_FIX}")
                return None
            v = obj[key]
            if not isinstance(v, str):
                add(f"{field} must be a hex string; {RAI_FIX}")
                return None
            return v

        def section(obj: Mapping[str, Any], key: str) -> Optional[Mapping[str, Any]]:
            if key not in obj:
                add(f"{key} is missing; {RAI_FIX}")
                return None
            v = obj[key]
            if not isinstance(v, Mapping):
                add(f"{key} must be a JSON object; {RAI_FIX}")
                return None
            return v

        if not isinstance(value, Mapping):
            add("(root) must be a JSON object with `version`, `server` and `crypto`")
            raise cls._error(problems, path)

        version = string(value, "version", "version", 'must be a string such as "1.0.0"')
        server = section(value, "server")
        crypto = section(value, "crypto")

        host = port = base_path = None
        if server is not None:
            host = string(server, "host", "server.host", 'must be a string such as "http://localhost"')
            problem = None if host is None else host_problem(host)
            if problem:
                add(f"server.host {problem}")
            if "port" not in server:
                add('server.port is missing; add e.g. "port": 8840')
            else:
                p = server["port"]
                if isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535:
                    port = p
                else:
                    add("server.port must be an integer between 1 and 65535")
            base_path = string(
                server, "base_path", "server.base_path", 'must be a string such as "/relayapi/"'
            )

        method = aes_key = aes_iv_seed = None
        if crypto is not None:
            method = string(crypto, "method", "crypto.method", 'must be the string "aes"')
            if method is not None and method.lower() != "aes":
                add('crypto.method must be "aes" (the only supported method)')
            aes_key = secret(crypto, "aes_key", "crypto.aes_key")
            if aes_key is not None and not (len(aes_key) == 64 and _HEX.match(aes_key)):
                add(f"crypto.aes_key must be 64 hex characters (32 bytes); {RAI_FIX}")
            aes_iv_seed = secret(crypto, "aes_iv_seed", "crypto.aes_iv_seed")
            if aes_iv_seed is not None and (
                not aes_iv_seed or len(aes_iv_seed) % 2 or not _HEX.match(aes_iv_seed)
            ):
                add(f"crypto.aes_iv_seed must be a non-empty, even-length hex string; {RAI_FIX}")

        if (
            problems
            or version is None
            or host is None
            or port is None
            or base_path is None
            or method is None
            or aes_key is None
            or aes_iv_seed is None
        ):
            raise cls._error(problems, path)
        return cls(
            version=version,
            host=host,
            port=port,
            base_path=base_path,
            method=method,
            aes_key=aes_key,
            aes_iv_seed=aes_iv_seed,
            path=path,
        )

    @staticmethod
    def _error(problems: List[str], path: Optional[str]) -> ConfigError:
        where = f"RelayAPI config file {path!r}" if path is not None else "RelayAPI config dict"
        return ConfigError(f"{where} is invalid: " + "; ".join(problems), path=path, problems=problems)

    # -- derived values ----------------------------------------------------

    @property
    def origin(self) -> str:
        """``host`` (no trailing ``/``) plus ``:port`` unless ``host`` has a port."""
        host = self.host.rstrip("/")
        authority = host.split("://", 1)[1] if "://" in host else host
        after_ipv6 = authority.rsplit("]", 1)[1] if "]" in authority else authority
        return host if ":" in after_ipv6 else f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The relay's base URL, e.g. ``http://localhost:8840/relayapi/``."""
        return self.origin + self.base_path

    @property
    def health_url(self) -> str:
        """``<origin>/health`` (the relay's only unauthenticated route)."""
        return self.origin + HEALTH_PATH

    @property
    def aes_key_bytes(self) -> bytes:
        """The 32 key bytes. Secret: do not log."""
        return bytes.fromhex(self._aes_key)

    def __repr__(self) -> str:
        return (
            f"RelayConfig(base_url={self.base_url!r}, version={self.version!r}, "
            f"method={self.method!r}, aes_key={REDACTED!r}, aes_iv_seed={REDACTED!r}, "
            f"path={self.path!r})"
        )

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RelayConfig):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__ if s != "path")

    __hash__ = None  # type: ignore[assignment]

