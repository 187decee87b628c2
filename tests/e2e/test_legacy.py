"""Tokens of the earlier RelayAPI, minted by an independent implementation of
its generators (Python `cryptography`, not the relay's code), through the relay
to the mock: every key order, time format and URL shape the earlier SDKs and
the official OpenAI SDK produce.

Legacy format: base64url(IV ‖ AES-256-CBC(key = hex(aes_key), PKCS#7(JSON))),
JSON keys `id, api_key, max_calls, expire_time, created_at, provider, ext_info`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import datetime, timedelta, timezone

import httpx
import openai
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

PY_JS_ORDER = ["id", "api_key", "max_calls", "expire_time", "created_at", "provider", "ext_info"]
# java.util.HashMap iteration order for these keys (by hash bucket, java 8+), as the Java generator wrote them:
# `max_calls` first, so its value lies in the IV-controlled first block. The relay refuses that order unless
# `legacy.accept_first_block_fields` is set (docs/migration.md); this relay does not set it.
JAVA_ORDER = ["max_calls", "api_key", "provider", "expire_time", "created_at", "id", "ext_info"]


def legacy_mint(aes_key_hex: str, fields: dict, order: list[str], iv: bytes | None = None) -> str:
    body = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(fields[k], separators=(',', ':'))}" for k in order) + "}"
    iv = iv or os.urandom(16)
    padder = padding.PKCS7(128).padder()
    plain = padder.update(body.encode()) + padder.finalize()
    enc = Cipher(algorithms.AES(bytes.fromhex(aes_key_hex)), modes.CBC(iv)).encryptor()
    raw = iv + enc.update(plain) + enc.finalize()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def rai_hash(relay) -> str:
    rai = json.loads(relay.rai_path.read_text())
    c = rai["crypto"]
    return hashlib.sha256((c["method"] + c["aes_key"] + c["aes_iv_seed"]).encode()).hexdigest()


def fields(relay, *, max_calls=50, expire=None, created=None, ext_info="", provider="openai") -> dict:
    now = datetime.now(timezone.utc)
    return {
        "id": f"token-{now.timestamp()}",
        "api_key": relay.mock_key,
        "max_calls": max_calls,
        "expire_time": expire or (now + timedelta(hours=1)).isoformat(),
        "created_at": created or now.isoformat(),
        "provider": provider,
        "ext_info": ext_info,
    }


def remember(relay, token: str) -> str:
    relay.remember(token)
    return token


@pytest.mark.parametrize(
    ("order", "want"), [(PY_JS_ORDER, 200), (JAVA_ORDER, 401)], ids=["python-js-order", "java-hashmap-order"]
)
def test_key_orders(relay, order, want):
    t = remember(relay, legacy_mint(relay.aes_key, fields(relay), order))
    r = httpx.get(f"{relay.url}/relayapi/models", params={"token": t, "rai_hash": rai_hash(relay)})
    assert r.status_code == want, r.text
    if want == 401:
        assert r.json()["error"]["code"] == "token_invalid"


def _fmt(dt: datetime, digits: int, offset: str) -> str:
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    frac = "" if digits == 0 else "." + f"{dt.microsecond:06d}{'123'}"[:digits]
    return base + frac + offset


@pytest.mark.parametrize("digits", range(0, 10))
@pytest.mark.parametrize("offset", ["Z", "+00:00", "+08:00", "-05:30"])
def test_time_formats(relay, digits, offset):
    now = datetime.now(timezone.utc)
    sign = 1 if offset[0] == "+" else -1
    delta = timedelta(0) if offset == "Z" else sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
    local = lambda t: (t + delta).replace(tzinfo=None)  # noqa: E731 - wall clock in that offset
    f = fields(
        relay,
        expire=_fmt(local(now + timedelta(hours=1)), digits, offset),
        created=_fmt(local(now - timedelta(seconds=5)), digits, offset),
    )
    t = remember(relay, legacy_mint(relay.aes_key, f, PY_JS_ORDER))
    assert httpx.get(f"{relay.url}/relayapi/models?token={t}").status_code == 200

    # The same clock reading one hour in the past: expired, whatever the format.
    f["expire_time"] = _fmt(local(now - timedelta(hours=1)), digits, offset)
    f["created_at"] = _fmt(local(now - timedelta(hours=2)), digits, offset)
    t = remember(relay, legacy_mint(relay.aes_key, f, PY_JS_ORDER))
    r = httpx.get(f"{relay.url}/relayapi/models?token={t}")
    assert (r.status_code, r.json()["error"]["code"]) == (401, "token_expired")


def test_every_url_shape(relay):
    t = remember(relay, legacy_mint(relay.aes_key, fields(relay), PY_JS_ORDER))
    h = rai_hash(relay)
    b = f"{relay.url}/relayapi/"
    shapes = [
        f"{b}echo/x?token={t}&rai_hash={h}&keep=1",
        f"{b}?keep=1&token={t}&rai_hash={h}/echo/x",
        f"{b}?keep=1&token={t}&rai_hash={h}==/echo/x",
        f"{b}?keep=1&token={t}/echo/x",
        f"{b}?keep=1&token={t}==/v1/echo/x",
    ]
    for url in shapes:
        r = httpx.get(url)
        assert r.status_code == 200, (url, r.text)
        echo = r.json()
        assert echo["path"] == "/v1/echo/x", url
        assert echo["query"] == "keep=1", url
        assert t[:24] not in json.dumps(echo), "the token must not reach the provider"


@pytest.mark.parametrize("with_hash", [True, False])
def test_official_openai_sdk_with_a_legacy_query_base_url(relay, with_hash):
    """What the official SDK does with the earlier SDKs' base URL: it glues
    `/chat/completions` onto the query string. The relay recovers the path."""
    t = remember(relay, legacy_mint(relay.aes_key, fields(relay, ext_info='{"rep_m":"legacy-forced"}'), PY_JS_ORDER))
    query = f"token={t}&rai_hash={rai_hash(relay)}" if with_hash else f"token={t}"
    client = openai.OpenAI(base_url=f"{relay.url}/relayapi/?{query}", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "legacy hello"}])
    assert "legacy hello" in reply.choices[0].message.content
    assert reply.model == "legacy-forced", "ext_info.rep_m replaces the model"
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "stream"}], stream=True
        )
    )
    assert len(chunks) > 2


def test_max_calls_and_never_valid(relay):
    t = remember(relay, legacy_mint(relay.aes_key, fields(relay, max_calls=1), PY_JS_ORDER))
    url = f"{relay.url}/relayapi/models?token={t}"
    assert httpx.get(url).status_code == 200
    r = httpx.get(url)
    assert (r.status_code, r.json()["error"]["code"]) == (429, "token_exhausted")
    for bad in (0, -3):
        t = remember(relay, legacy_mint(relay.aes_key, fields(relay, max_calls=bad), PY_JS_ORDER))
        r = httpx.get(f"{relay.url}/relayapi/models?token={t}")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "token_invalid")


def test_wrong_key_and_wrong_hash_look_like_any_invalid_token(relay):
    good = remember(relay, legacy_mint(relay.aes_key, fields(relay), PY_JS_ORDER))
    other = remember(relay, legacy_mint(os.urandom(32).hex(), fields(relay), PY_JS_ORDER))
    answers = []
    for url in [
        f"{relay.url}/relayapi/models?token={other}",
        f"{relay.url}/relayapi/models?token={good}&rai_hash={'0' * 64}",
        f"{relay.url}/relayapi/models?token={good[:-3]}",
        f"{relay.url}/relayapi/models?token=%%%",
    ]:
        r = httpx.get(url)
        answers.append((r.status_code, r.text))
    assert len(set(answers)) == 1 and answers[0][0] == 401, answers
