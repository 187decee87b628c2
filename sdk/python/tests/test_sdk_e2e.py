"""End to end against the real relay and mock provider (the classic flow).

mint → health_check → the official `openai` SDK through the relay (plain and
streaming, token in the URL and as the API key) → the SDK's own helpers →
refusals (`token_invalid`, `token_exhausted`, `model_not_allowed`) as SDK
exceptions. The same with AsyncRelayAPIClient.
"""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest
from openai import AsyncOpenAI, AuthenticationError as OpenAIAuthError, OpenAI

from relayapi import (
    APIConnectionError,
    AsyncRelayAPIClient,
    AuthenticationError,
    PermissionDeniedError,
    RateLimitError,
    RelayAPIClient,
)
from relayapi._token import _encrypt, _mint, derive_content_key, key_id, new_jti

from conftest import POLICY_CORPUS
from _decoder import decode

MESSAGES = [{"role": "user", "content": "Hello from the Python SDK"}]
ORIGIN = "https://app.example.com"
#: Every policy option, chosen so that the requests below satisfy them all
#: (a relay that enforces them must still answer 200).
EVERY_POLICY_OPTION = dict(
    origins=[ORIGIN, "*.example.org", "http://localhost:5173"],
    ips=["127.0.0.0/8", "::1"],
    paths=["chat/completions", "embeddings"],
    methods=["POST"],
    rps=50,
    burst=100,
    concurrency=4,
    max_tokens=1_000_000,
    max_body_bytes=65536,
)


@pytest.fixture
def client(relay):
    with RelayAPIClient(str(relay.rai_path)) as c:
        yield c


def test_base_url_points_at_the_running_relay(client, relay):
    assert client.base_url == f"{relay.url}/relayapi/"


def test_health_check(client):
    health = client.health_check()
    assert health["status"] == "ok"
    assert health["keys"] >= 1


def test_classic_flow_with_the_official_openai_sdk(client, relay):
    url = client.generate_url(relay.mock_key, expire_seconds=300, max_calls=10)
    assert url.startswith(client.base_url) and url.endswith("/")
    oai = OpenAI(base_url=url, api_key="unused", max_retries=0)

    reply = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content

    chunks = list(oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 1 and text

    raw = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-relayapi-calls-remaining"] == "7"


def test_token_as_api_key(client, relay):
    """The header-passed form the README recommends: base URL + token as apiKey."""
    token = client.create_token(relay.mock_key, expire_seconds=60)
    oai = OpenAI(base_url=client.base_url, api_key=token, max_retries=0)
    assert oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices


def test_sdk_helpers_through_the_relay(client, relay):
    token = client.create_token(relay.mock_key, expire_seconds=60)
    reply = client.chat_completions(token, MESSAGES, "gpt-4o-mini", temperature=0)
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"]
    emb = client.embeddings(token, ["a", "b"], "text-embedding-3-small")
    assert len(emb["data"]) == 2


def test_invalid_token_gets_token_invalid(client, relay):
    wrong_key = _mint(
        "ff" * 32,
        {"jti": "A" * 22, "iat": int(time.time()), "exp": int(time.time()) + 60,
         "provider": "openai", "api_key": relay.mock_key},
    )  # fmt: skip
    good = client.create_token(relay.mock_key)
    tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BA")
    for token in (wrong_key, tampered):
        with pytest.raises(AuthenticationError) as e:
            client.chat_completions(token, MESSAGES, "gpt-4o-mini")
        assert (e.value.status, e.value.code) == (401, "token_invalid")
        assert e.value.request_id
        assert token not in str(e.value)
        # The official SDK sees the same refusal.
        oai = OpenAI(base_url=client.generate_api_url_with_token(token), api_key="unused", max_retries=0)
        with pytest.raises(OpenAIAuthError) as oe:
            oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert oe.value.code == "token_invalid"


def test_expired_token_gets_token_expired(client, relay):
    token = client.create_token(relay.mock_key, expire_seconds=1, _now=int(time.time()) - 10)
    with pytest.raises(AuthenticationError) as e:
        client.chat_completions(token, MESSAGES, "gpt-4o-mini")
    assert e.value.code == "token_expired"


def test_limits_minted_by_the_sdk_are_enforced(client, relay):
    token = client.create_token(relay.mock_key, max_calls=1, models=["gpt-4o-mini"])
    with pytest.raises(PermissionDeniedError) as e:
        client.chat_completions(token, MESSAGES, "gpt-4o")
    assert e.value.code == "model_not_allowed"
    client.chat_completions(token, MESSAGES, "gpt-4o-mini")
    with pytest.raises(RateLimitError) as e:
        client.chat_completions(token, MESSAGES, "gpt-4o-mini")
    assert (e.value.status, e.value.code) == (429, "token_exhausted")


def test_every_extra_claim_is_accepted_by_the_relay(client, relay):
    token = client.create_token(
        relay.mock_key, provider="openai", expire_seconds=120, max_calls=5, model="gpt-4o-mini",
        models=["gpt-4o-mini", "gpt-4o"], sub="user-ü", ext_info={"rep_m": "x", "app": "demo"},
        extra={"x_meta": {"b": [1, "\u2028"], "a": None}},
    )  # fmt: skip
    assert client.chat_completions(token, MESSAGES, "gpt-4o-mini")["choices"]


def test_every_policy_claim_is_accepted_by_the_relay(client, relay):
    """A token with every new claim decodes at the relay built from this tree;
    the requests (POST chat/completions from 127.0.0.1 with an allowed Origin)
    satisfy all of them."""
    token = client.create_token(relay.mock_key, expire_seconds=120, max_calls=5, **EVERY_POLICY_OPTION)
    oai = OpenAI(
        base_url=client.generate_api_url_with_token(token), api_key="unused", max_retries=0,
        default_headers={"Origin": ORIGIN},
    )  # fmt: skip
    reply = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=16)
    assert reply.choices[0].message.content
    stream = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=16, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_key_ref_token_carries_no_key_and_reaches_the_credential_lookup(client, relay):
    token = client.create_token(key_ref="team-openai", expire_seconds=120, **EVERY_POLICY_OPTION)
    verdict, claims = decode(token, relay.rai["crypto"]["aes_key"], int(time.time()))
    assert verdict == "ok" and claims["key_ref"] == "team-openai" and "api_key" not in claims
    assert relay.mock_key not in json.dumps(claims) and relay.mock_key not in token
    # Decoded (not token_invalid): the relay holds no credential of that name.
    r = httpx.post(
        client.generate_api_url_with_token(token, "chat_completions"),
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 16},
        headers={"Origin": ORIGIN}, timeout=30,
    )  # fmt: skip
    assert (r.status_code, r.json()["error"]["code"]) == (400, "credential_unknown"), r.text


def _raw_token(relay, extra):
    """A token with ``extra`` claims exactly as given: no SDK validation, so the
    relay's own verdict can be observed."""
    content_key = derive_content_key(bytes.fromhex(relay.rai["crypto"]["aes_key"]))
    now = int(time.time())
    claims = {"jti": new_jti(), "iat": now, "exp": now + 300, "provider": "openai", "api_key": relay.mock_key}
    claims.update(extra)
    plaintext = json.dumps(claims, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _encrypt(content_key, key_id(content_key), plaintext, os.urandom(12))


def test_relay_agrees_with_the_policy_corpus(client, relay):
    """The relay binary (crates/token/src/scope.rs) refuses every invalid
    corpus item as token_invalid and accepts all valid ones — the corpus the
    SDKs' validators are tested against (test_sdk_policy.py, policy.test.mjs)."""
    corpus = json.loads(POLICY_CORPUS.read_text("utf-8"))
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 16}
    with httpx.Client(timeout=30, headers={"Origin": ORIGIN}) as http:

        def send(method, extra):
            url = client.generate_api_url_with_token(_raw_token(relay, extra), "chat_completions")
            # Refusals are sent bodiless: the relay closes a keep-alive
            # connection whose request body it did not read.
            r = http.request(method, url, json=body if method == "POST" else None)
            return r.status_code, (r.json().get("error") or {}).get("code")

        for claim in ("origins", "ips", "paths", "methods"):
            # All valid items in one token (one bad item would spoil it);
            # they include what this request needs, so even an enforcing
            # relay lets it through.
            assert send("POST", {claim: corpus[claim]["valid"]}) == (200, None), claim
            for item in corpus[claim]["invalid"]:
                assert send("GET", {claim: [item]}) == (401, "token_invalid"), (claim, item)


def test_unreachable_relay(relay):
    rai = {**relay.rai, "server": {**relay.rai["server"], "host": "http://127.0.0.1", "port": 9}}
    with RelayAPIClient(rai, timeout=5) as c:
        with pytest.raises(APIConnectionError):
            c.health_check()


def test_secrets_never_reach_the_relay_logs(relay):
    logs = relay.logs()
    assert relay.mock_key not in logs
    assert relay.rai["crypto"]["aes_key"] not in logs


@pytest.mark.anyio
async def test_async_classic_flow(relay):
    async with AsyncRelayAPIClient(relay.rai) as c:
        assert (await c.health_check())["status"] == "ok"
        token = c.create_token(relay.mock_key, expire_seconds=60, max_calls=5)
        reply = await c.chat_completions(token, MESSAGES, "gpt-4o-mini")
        assert reply["choices"][0]["message"]["content"]

        oai = AsyncOpenAI(base_url=c.generate_api_url_with_token(token), api_key="unused", max_retries=0)
        stream = await oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        assert text
        await oai.close()

        with pytest.raises(AuthenticationError) as e:
            await c.embeddings(token[:-1] + ("A" if token[-1] != "A" else "Q"), "x", "text-embedding-3-small")
        assert e.value.code == "token_invalid"
