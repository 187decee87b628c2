"""Minting RelayAPI v2 tokens (docs/token-format.md §2–§4).

A token is a JWE compact serialisation, ``alg`` ``dir`` + ``enc`` ``A256GCM``::

    BASE64URL(header) "." "" "." BASE64URL(iv) "." BASE64URL(ciphertext) "." BASE64URL(tag)

* :func:`derive_content_key` / :func:`key_id` — HKDF-SHA256 content key and
  its public ``kid``.
* :func:`canonical_claims_json` — checks the claims like the relay would and
  writes the canonical bytes every SDK must reproduce.
* :class:`TokenGenerator` — the public minting API; :func:`_mint` is the
  deterministic test hook (caller-chosen IV) used by the shared vectors.

This module does no I/O besides reading the OS random number generator.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._config import ConfigSource, RelayConfig
from ._constants import (
    CLAIM_ORDER,
    CONTENT_KEY_LEN,
    DEFAULT_CONFIG_PATH,
    DEFAULT_EXPIRE_SECONDS,
    DEFAULT_PROVIDER,
    EXTRA_CLAIM_PREFIX,
    HKDF_INFO,
    IV_LEN,
    JTI_BYTES,
    KID_LEN,
    MAX_TOKEN_LEN,
    MAX_JTI_LEN,
    MIN_JTI_LEN,
    REDACTED,
)
from ._exceptions import InvalidArgumentError
from ._policy import LIMIT_CLAIMS, LIST_CLAIMS, limit_problem, list_problem

__all__ = ["TokenGenerator", "derive_content_key", "key_id", "canonical_header", "canonical_claims_json"]

_B64URL = re.compile(r"\A[A-Za-z0-9_-]*\Z")
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_U64_MAX = 2**64 - 1


# -- primitives ---------------------------------------------------------------


def b64url(data: bytes) -> str:
    """RFC 4648 §5 base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def derive_content_key(aes_key: bytes) -> bytes:
    """``HKDF-SHA256(ikm=aes_key, salt=empty, info="relayapi token v2", L=32)``."""
    if len(aes_key) != 32:
        raise InvalidArgumentError("aes_key must be 32 bytes (64 hex characters)", argument="aes_key")
    return HKDF(algorithm=hashes.SHA256(), length=CONTENT_KEY_LEN, salt=None, info=HKDF_INFO).derive(
        aes_key
    )


def key_id(content_key: bytes) -> str:
    """The public ``kid``: first 16 lower-case hex characters of SHA-256(content_key)."""
    return hashlib.sha256(content_key).hexdigest()[:KID_LEN]


def canonical_header(kid: str) -> str:
    """The exact protected header a conforming minter writes."""
    return '{"alg":"dir","enc":"A256GCM","kid":"' + kid + '"}'


def new_jti() -> str:
    """16 random bytes, unpadded base64url (22 characters)."""
    return b64url(os.urandom(JTI_BYTES))


# -- claims -------------------------------------------------------------------


def _bad(name: str, rule: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"claim {name!r} {rule}", argument=name)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _control_char(s: str) -> Optional[str]:
    """The first control character (U+0000–U+001F, U+007F) in ``s``, if any."""
    return next((c for c in s if c < "\x20" or c == "\x7f"), None)


def _api_key_problem(api_key: str) -> Optional[str]:
    """Why a (non-empty string) ``api_key`` cannot be carried, or ``None``: the
    relay refuses any control character, since no request header can hold one."""
    c = _control_char(api_key)
    if c is None:
        return None
    where = "ends with" if api_key.rstrip("\r\n") != api_key else "contains"
    return (
        f"{where} the control character {c!r} (U+{ord(c):04X}), which no request header can carry, "
        "so the relay would refuse every call; a key read from a file usually keeps its trailing "
        "newline: strip it (e.g. open(...).read().strip())"
    )


def _non_empty_str(name: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise _bad(name, "must be a non-empty string")
    return v


def _sorted_json(value: Any, where: str, relay_ints: bool = False) -> Any:
    """``value`` with every nested object's members sorted by name (UTF-8 byte
    order, which equals code point order). NaN and infinities are refused
    (JSON has none); with ``relay_ints``, so are integers the relay's JSON
    reader cannot hold exactly as i64/u64: it reads them as lossy floats, or
    refuses the token (``token_invalid``) beyond the float range."""
    if isinstance(value, Mapping):
        out = {}
        for k in sorted(value.keys(), key=lambda k: _key(k, where)):
            out[k] = _sorted_json(value[k], where, relay_ints)
        return out
    if isinstance(value, (list, tuple)):
        return [_sorted_json(v, where, relay_ints) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(where, f"holds {value!r}, which JSON cannot carry")
    if relay_ints and _is_int(value) and not _I64_MIN <= value <= _U64_MAX:
        # Not echoed: it may have thousands of digits.
        raise _bad(where, "holds an integer outside the relay's range -2**63 .. 2**64-1; write it as a string")
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise _bad(where, f"holds a {type(value).__name__}, which is not a JSON value")


def _key(k: Any, where: str) -> str:
    if not isinstance(k, str):
        raise _bad(where, "holds an object with a non-string member name")
    return k


def _normalise_claims(claims: Mapping[str, Any], minting: bool = True) -> Dict[str, Any]:
    """Checks ``claims`` exactly like the relay's decoder (minus the clock) and
    returns them in canonical member order. Optional claims set to ``None`` are
    treated as absent. ``minting`` also refuses what the relay accepts but can
    never match (an IPv4-mapped ``ips`` item); decoders pass ``False``."""
    if not isinstance(claims, Mapping):
        raise InvalidArgumentError("claims must be a dict", argument="claims")
    for name in claims:
        if not isinstance(name, str):
            raise InvalidArgumentError("claim names must be strings", argument="claims")
        if name not in CLAIM_ORDER and not name.startswith(EXTRA_CLAIM_PREFIX):
            raise _bad(
                name,
                "is not a RelayAPI claim: use one of "
                + ", ".join(CLAIM_ORDER)
                + f", or prefix free metadata with {EXTRA_CLAIM_PREFIX!r}",
            )
    for name in ("jti", "iat", "exp", "provider"):
        if claims.get(name) is None:
            raise _bad(name, "is required")
    credentials = [name for name in ("api_key", "key_ref") if claims.get(name) is not None]
    if len(credentials) != 1:
        raise InvalidArgumentError(
            "exactly one of the claims 'api_key' (the provider key) and 'key_ref' (the name of a "
            f"credential held by the relay) is required; got {' and '.join(credentials) or 'neither'}",
            argument="key_ref" if credentials else "api_key",
        )

    out: Dict[str, Any] = {}
    jti = claims["jti"]
    if (
        not isinstance(jti, str)
        or not MIN_JTI_LEN <= len(jti) <= MAX_JTI_LEN
        or not _B64URL.match(jti)
    ):
        raise _bad(
            "jti", f"must be {MIN_JTI_LEN}-{MAX_JTI_LEN} base64url characters (A-Z a-z 0-9 - _)"
        )
    for name in ("iat", "nbf", "exp"):
        v = claims.get(name)
        if v is None:
            continue
        if not _is_int(v) or not _I64_MIN <= v <= _I64_MAX:
            raise _bad(name, "must be an integer (UTC seconds)")
    if claims["exp"] <= claims["iat"]:
        raise _bad("exp", "must be later than 'iat'")
    if claims.get("nbf") is not None and claims["nbf"] >= claims["exp"]:
        raise _bad("nbf", "must be earlier than 'exp'")
    mc = claims.get("max_calls")
    if mc is not None and (not _is_int(mc) or mc < 1):
        raise _bad("max_calls", "must be an integer >= 1")
    if mc is not None and mc > _U64_MAX:
        raise _bad("max_calls", "must be at most 2**64 - 1 (the relay's integer range)")
    for name in ("provider", "api_key", "key_ref", "model"):
        if claims.get(name) is not None:
            _non_empty_str(name, claims[name])
    if claims.get("api_key") is not None:
        problem = _api_key_problem(claims["api_key"])
        if problem:
            raise _bad("api_key", problem)
    models = claims.get("models")
    if models is not None:
        if (
            isinstance(models, (str, bytes))
            or not isinstance(models, (list, tuple))
            or not models
            or not all(isinstance(m, str) and m for m in models)
        ):
            raise _bad("models", "must be a non-empty list of non-empty strings")
    for name in ("sub", "ext_info"):
        v = claims.get(name)
        if v is not None and not isinstance(v, str):
            raise _bad(name, "must be a string")
    _check_policy(claims, minting)

    for name in CLAIM_ORDER:
        v = claims.get(name)
        if v is not None:
            out[name] = list(v) if isinstance(v, tuple) else v
    for name in sorted(n for n in claims if n.startswith(EXTRA_CLAIM_PREFIX)):
        out[name] = _sorted_json(claims[name], name, relay_ints=True)
    for name, v in out.items():
        _check_utf8(name, v)
    return out


def _check_utf8(name: str, value: Any) -> None:
    """Refuses a lone surrogate (``'\\ud800'``) anywhere in claim ``name``:
    UTF-8, and so the token, cannot carry it."""
    try:
        (name + _dumps(value, name)).encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(
            name, "contains a lone surrogate (such as '\\ud800'), which is not valid UTF-8: fix the text"
        ) from None


def _check_policy(values: Mapping[str, Any], minting: bool = True) -> None:
    """The policy claims of §4.1 (``None`` = absent); the parameters of
    ``create_token`` have the same names, so the messages fit both."""
    for name in LIST_CLAIMS:
        if values.get(name) is not None:
            problem = list_problem(name, values[name], minting)
            if problem:
                raise InvalidArgumentError(problem, argument=name)
    for name in LIMIT_CLAIMS:
        if values.get(name) is not None:
            problem = limit_problem(name, values[name])
            if problem:
                raise InvalidArgumentError(problem, argument=name)
    if values.get("burst") is not None and values.get("rps") is None:
        raise InvalidArgumentError(
            "burst only shapes the rps limit: set rps too (without burst, the burst is rps)",
            argument="burst",
        )


def _dumps(value: Any, argument: str = "claims") -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        # NaN/Infinity are refused earlier; an int too long for str() lands here.
        raise InvalidArgumentError(f"{argument} is not JSON-serialisable ({exc})", argument=argument) from None


def canonical_claims_json(claims: Mapping[str, Any]) -> str:
    """The canonical claims JSON (§4): compact, fixed member order, ``x_*``
    claims sorted, non-ASCII raw. Raises :class:`InvalidArgumentError` for
    claims the relay would refuse (time is not checked)."""
    text = _dumps(_normalise_claims(claims))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            "claims contain a lone surrogate, which is not valid UTF-8", argument="claims"
        ) from None
    return text


def _encrypt(content_key: bytes, kid: str, plaintext: bytes, iv: bytes) -> str:
    if len(iv) != IV_LEN:
        raise InvalidArgumentError(f"iv must be {IV_LEN} bytes", argument="iv")
    header = b64url(canonical_header(kid).encode("ascii"))
    sealed = AESGCM(content_key).encrypt(iv, plaintext, header.encode("ascii"))
    ciphertext, tag = sealed[:-16], sealed[-16:]
    return f"{header}..{b64url(iv)}.{b64url(ciphertext)}.{b64url(tag)}"


def _mint(aes_key: Union[str, bytes], claims: Mapping[str, Any], iv: Optional[bytes] = None) -> str:
    """Test hook: mint ``claims`` under ``aes_key`` (hex or 32 bytes) with a
    caller-chosen ``iv``. Deterministic given ``iv`` — never reuse an IV with
    the same key outside tests."""
    key = bytes.fromhex(aes_key) if isinstance(aes_key, str) else bytes(aes_key)
    content_key = derive_content_key(key)
    return _seal(content_key, key_id(content_key), claims, iv)


def _seal(content_key: bytes, kid: str, claims: Mapping[str, Any], iv: Optional[bytes]) -> str:
    plaintext = canonical_claims_json(claims).encode("utf-8")
    token = _encrypt(content_key, kid, plaintext, os.urandom(IV_LEN) if iv is None else iv)
    if len(token) > MAX_TOKEN_LEN:
        raise InvalidArgumentError(
            f"the token would be {len(token)} bytes, over the relay's limit of {MAX_TOKEN_LEN}: "
            "shorten ext_info, models or the x_ claims",
            argument="claims",
        )
    return token


# -- public API ---------------------------------------------------------------


def _check_credential(api_key: Any, key_ref: Any) -> None:
    """Exactly one of ``api_key`` and ``key_ref``, each a non-empty string."""
    if api_key is not None and key_ref is not None:
        raise InvalidArgumentError(
            "give api_key (the provider key, carried encrypted in the token) or key_ref (the name "
            "of a credential held in the relay's config), not both",
            argument="key_ref",
        )
    if key_ref is not None:
        if not isinstance(key_ref, str) or not key_ref:
            raise InvalidArgumentError(
                "key_ref must be the name of a credential in the relay's config (a non-empty string)",
                argument="key_ref",
            )
    else:
        if not isinstance(api_key, str) or not api_key:
            raise InvalidArgumentError(
                "api_key must be the provider's API key (a non-empty string), or pass key_ref= "
                "naming a credential held by the relay so the token carries no key",
                argument="api_key",
            )
        problem = _api_key_problem(api_key)
        if problem:
            raise InvalidArgumentError(f"api_key {problem}", argument="api_key")


def _check_args(
    provider: Any,
    expire_seconds: Any,
    max_calls: Any,
    model: Any,
    models: Any,
    sub: Any,
    ext_info: Any,
) -> Optional[str]:
    """Validates the classic ``create_token`` arguments with messages naming
    the parameter (``key_ref`` is checked with ``api_key``, the policy
    options by :func:`_check_policy`); returns ``ext_info`` as a string."""
    if not isinstance(provider, str) or not provider:
        raise InvalidArgumentError(
            "provider must be a non-empty string such as 'openai'", argument="provider"
        )
    if not _is_int(expire_seconds):
        raise InvalidArgumentError(
            "expire_seconds must be an integer number of seconds, e.g. 600", argument="expire_seconds"
        )
    if expire_seconds <= 0:
        raise InvalidArgumentError(
            f"expire_seconds must be > 0 (got {expire_seconds}): the token would already be "
            "expired; use a short positive lifetime such as 600",
            argument="expire_seconds",
        )
    if max_calls is not None and (not _is_int(max_calls) or max_calls < 1):
        raise InvalidArgumentError(
            f"max_calls must be None (unlimited) or an integer >= 1 (got {max_calls!r})",
            argument="max_calls",
        )
    if max_calls is not None and max_calls > _U64_MAX:
        raise InvalidArgumentError(
            "max_calls must be at most 2**64 - 1 (the relay's integer range); use None for unlimited",
            argument="max_calls",
        )
    if model is not None and (not isinstance(model, str) or not model):
        raise InvalidArgumentError("model must be None or a non-empty string", argument="model")
    if models is not None:
        if isinstance(models, (set, frozenset)):
            raise InvalidArgumentError(
                "models must be a list (or tuple), not a set: the order is part of the token, "
                "e.g. ['gpt-4o-mini', 'gpt-4o']",
                argument="models",
            )
        if not isinstance(models, (list, tuple)):
            raise InvalidArgumentError(
                "models must be a list (or tuple) of model names, e.g. ['gpt-4o-mini', 'gpt-4o'] "
                f"(got {type(models).__name__})",
                argument="models",
            )
        items = list(models)
        if not items or not all(isinstance(m, str) and m for m in items):
            raise InvalidArgumentError(
                "models must be a non-empty list of non-empty strings; use None to allow any model",
                argument="models",
            )
    if sub is not None and not isinstance(sub, str):
        raise InvalidArgumentError("sub must be None or a string", argument="sub")
    if ext_info is None or isinstance(ext_info, str):
        return ext_info
    if isinstance(ext_info, Mapping):
        # Opaque text to the relay, so its integers need not fit i64/u64.
        return _dumps(_sorted_json(ext_info, "ext_info"), "ext_info")
    raise InvalidArgumentError("ext_info must be None, a string or a dict", argument="ext_info")


class TokenGenerator:
    """Mints tokens for one ``.rai`` config.

    ``config`` is a path to a ``.rai`` file, the parsed ``.rai`` dict or a
    :class:`RelayConfig`. ``repr()`` shows the ``kid``, never the key.
    """

    def __init__(self, config: ConfigSource = DEFAULT_CONFIG_PATH) -> None:
        self._config = RelayConfig.load(config)
        self._content_key = derive_content_key(self._config.aes_key_bytes)
        self._kid = key_id(self._content_key)

    @property
    def config(self) -> RelayConfig:
        """The validated config."""
        return self._config

    @property
    def kid(self) -> str:
        """The public key id written in every token's header."""
        return self._kid

    def create_token(
        self,
        api_key: Optional[str] = None,
        provider: Optional[str] = DEFAULT_PROVIDER,
        expire_seconds: Optional[int] = DEFAULT_EXPIRE_SECONDS,
        max_calls: Optional[int] = None,
        model: Optional[str] = None,
        models: Optional[Sequence[str]] = None,
        sub: Optional[str] = None,
        ext_info: Optional[Union[str, Mapping[str, Any]]] = None,
        *,
        key_ref: Optional[str] = None,
        origins: Optional[Sequence[str]] = None,
        ips: Optional[Sequence[str]] = None,
        paths: Optional[Sequence[str]] = None,
        methods: Optional[Sequence[str]] = None,
        rps: Optional[int] = None,
        burst: Optional[int] = None,
        concurrency: Optional[int] = None,
        max_tokens: Optional[int] = None,
        max_body_bytes: Optional[int] = None,
        extra: Optional[Mapping[str, Any]] = None,
        _now: Optional[int] = None,
        _jti: Optional[str] = None,
        _iv: Optional[bytes] = None,
    ) -> str:
        """Mints a token valid from now (UTC) for ``expire_seconds``.

        The upstream credential is exactly one of ``api_key`` (the provider
        key, carried encrypted in the token) and ``key_ref`` (the name of a
        credential held in the relay's config; the token then holds no key).

        ``max_calls`` caps relayed calls; ``model`` forces one model,
        ``models`` allows a list; ``sub`` names the end user; ``ext_info`` is
        opaque application data (a dict is written as compact JSON with
        sorted keys); ``extra`` adds ``x_*`` metadata claims.

        Policy (docs/token-format.md §4.1; ``None`` = not limited):
        ``origins`` (browser ``Origin`` values, exact or ``*.domain``),
        ``ips`` (client addresses or CIDR networks), ``paths`` (path prefixes
        after the base path, e.g. ``["chat/completions"]``), ``methods``
        (upper-case), ``rps`` and ``burst`` (a per-token rate),
        ``concurrency`` (requests in flight), ``max_tokens`` (an LLM-token
        budget over all calls), ``max_body_bytes`` (request body size).
        Lists keep their order in the token. A relay that predates these
        claims refuses such tokens as ``token_invalid``.

        ``None`` means "not set" for every option: ``provider=None`` is
        ``"openai"``, ``expire_seconds=None`` is 3600 (never "no expiry"),
        ``max_calls=None`` and the policy options are "no limit".

        ``_now``/``_jti``/``_iv`` make the output deterministic, for tests only.
        """
        # None means "not set" for every option, as in the JS SDK: the default.
        provider = DEFAULT_PROVIDER if provider is None else provider
        expire_seconds = DEFAULT_EXPIRE_SECONDS if expire_seconds is None else expire_seconds
        _check_credential(api_key, key_ref)
        ext = _check_args(provider, expire_seconds, max_calls, model, models, sub, ext_info)
        policy: Dict[str, Any] = {
            "origins": origins,
            "ips": ips,
            "paths": paths,
            "methods": methods,
            "rps": rps,
            "burst": burst,
            "concurrency": concurrency,
            "max_tokens": max_tokens,
            "max_body_bytes": max_body_bytes,
        }
        _check_policy(policy)
        if extra is not None and not isinstance(extra, Mapping):
            raise InvalidArgumentError(
                "extra must be a dict of x_* metadata claims, e.g. {'x_tier': 2} "
                f"(got {type(extra).__name__})",
                argument="extra",
            )
        now = int(time.time()) if _now is None else _now
        if now + expire_seconds > _I64_MAX:
            raise InvalidArgumentError(
                f"expire_seconds is too large: now + expire_seconds must be at most 2**63 - 1 "
                f"(the relay's 64-bit time), i.e. expire_seconds <= {_I64_MAX - now}; "
                "tokens are meant to be short-lived, e.g. 600",
                argument="expire_seconds",
            )
        claims: Dict[str, Any] = {
            "jti": new_jti() if _jti is None else _jti,
            "iat": now,
            "exp": now + expire_seconds,
            "provider": provider,
            "api_key": api_key,
            "key_ref": key_ref,
            "max_calls": max_calls,
            "model": model,
            "models": list(models) if models is not None else None,
            "sub": sub,
            "ext_info": ext,
            **policy,
        }
        for name, value in (extra or {}).items():
            if not isinstance(name, str) or not name.startswith(EXTRA_CLAIM_PREFIX):
                raise InvalidArgumentError(
                    f"extra claim names must start with {EXTRA_CLAIM_PREFIX!r}", argument="extra"
                )
            claims[name] = value
        return _seal(self._content_key, self._kid, claims, _iv)

    def encrypt_token(self, claims: Mapping[str, Any], *, _iv: Optional[bytes] = None) -> str:
        """Encrypts a complete claims dict (``jti``, ``iat``, ``exp``,
        ``provider`` and one of ``api_key``/``key_ref`` required; see
        docs/token-format.md §4).
        Raises :class:`InvalidArgumentError` for claims the relay would refuse;
        the clock is not checked."""
        return _seal(self._content_key, self._kid, claims, _iv)

    def __repr__(self) -> str:
        return f"TokenGenerator(kid={self._kid!r}, base_url={self._config.base_url!r}, key={REDACTED!r})"
