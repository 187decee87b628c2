"""The official `openai` Python SDK against the running relay (and the mock behind it).

Two ways a front end points the SDK at the relay, both tested:
  * base_url = `http://HOST:PORT/relayapi/<token>/` and any api_key (path token);
  * base_url = `http://HOST:PORT/relayapi/` and api_key = the token
    (sent as `Authorization: Bearer <token>`).
"""

from __future__ import annotations

import asyncio
import uuid

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

MODEL = "gpt-4o-mini"


def path_client(relay, token: str) -> OpenAI:
    return OpenAI(base_url=relay.token_url(token), api_key="unused", max_retries=0, timeout=30)


def error_code(e: openai.APIStatusError) -> str | None:
    """`error.code` of an OpenAI-style error body, however the SDK surfaced it."""
    code = getattr(e, "code", None)
    if code:
        return code
    body = e.body if isinstance(e.body, dict) else {}
    inner = body.get("error", body) if isinstance(body, dict) else {}
    return inner.get("code") if isinstance(inner, dict) else None


@pytest.fixture(scope="module")
def token(relay) -> str:
    return relay.mint(expire="1h")


@pytest.fixture(scope="module")
def client(relay, token) -> OpenAI:
    return path_client(relay, token)


def test_chat_completion_echoes_prompt(client):
    prompt = f"hello relay {uuid.uuid4().hex[:8]}"
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}]
    )
    assert resp.choices, resp
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == f"mock reply to: {prompt}"
    assert resp.model == MODEL
    assert resp.usage is not None and resp.usage.total_tokens > 0


def test_cli_url_is_a_ready_base_url(relay):
    base_url = relay.mint(url=True)
    assert base_url.startswith(relay.base_url) and base_url.endswith("/"), base_url
    c = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)
    resp = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "url"}])
    assert resp.choices[0].message.content == "mock reply to: url"


def test_chat_streaming_yields_several_chunks(client):
    prompt = "stream this please"
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], stream=True
    )
    chunks = list(stream)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 3, chunks
    text = "".join(c.choices[0].delta.content for c in content_chunks)
    assert text.startswith(f"mock reply to: {prompt}"), text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"], chunks


def test_chat_streaming_many_chunks_with_delay(client):
    """Chunks arrive one by one through the relay (x-mock-* headers are forwarded)."""
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "slow"}],
        stream=True,
        extra_headers={"x-mock-chunks": "20", "x-mock-chunk-delay-ms": "5"},
    )
    content = [c for c in stream if c.choices and c.choices[0].delta.content]
    assert len(content) >= 20


def test_chat_streaming_include_usage(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "count me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1, chunks
    assert usage[0].prompt_tokens > 0 and usage[0].completion_tokens > 0
    assert usage[0].total_tokens == usage[0].prompt_tokens + usage[0].completion_tokens
    # The usage chunk is the last one and has no choices.
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_embeddings(client):
    resp = client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert [d.index for d in resp.data] == [0, 1]
    assert all(len(d.embedding) > 0 for d in resp.data)
    assert all(isinstance(x, float) for x in resp.data[0].embedding)
    assert resp.data[0].embedding != resp.data[1].embedding


def test_embeddings_as_base64_decode_to_the_same_floats(client):
    """`encoding_format="base64"` (the default of some openai SDK versions):
    the vector's little-endian f32 bytes, as OpenAI sends them."""
    import base64
    import struct

    floats = client.embeddings.create(model="text-embedding-3-small", input="one", dimensions=16)
    b64 = client.embeddings.create(
        model="text-embedding-3-small", input="one", dimensions=16, encoding_format="base64"
    )
    raw = base64.b64decode(b64.data[0].embedding)
    decoded = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    assert len(decoded) == 16
    assert decoded == [struct.unpack("<f", struct.pack("<f", x))[0] for x in floats.data[0].embedding]


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids, ids


def test_token_as_api_key(relay, token):
    c = OpenAI(base_url=relay.base_url, api_key=token, max_retries=0, timeout=30)
    resp = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "bearer token"}]
    )
    assert resp.choices[0].message.content == "mock reply to: bearer token"
    stream = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "bearer stream"}], stream=True
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text.startswith("mock reply to: bearer stream")


def test_async_streaming(relay, token):
    async def run() -> list[str]:
        c = AsyncOpenAI(base_url=relay.token_url(token), api_key="unused", max_retries=0, timeout=30)
        try:
            stream = await c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "async hi"}], stream=True
            )
            return [ch.choices[0].delta.content async for ch in stream if ch.choices and ch.choices[0].delta.content]
        finally:
            await c.close()

    parts = asyncio.run(run())
    assert len(parts) >= 3
    assert "".join(parts).startswith("mock reply to: async hi")


def test_async_concurrent_requests(relay, token):
    async def run() -> list[str]:
        c = AsyncOpenAI(base_url=relay.token_url(token), api_key="unused", max_retries=0, timeout=30)
        try:
            resps = await asyncio.gather(
                *[
                    c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"n{i}"}])
                    for i in range(8)
                ]
            )
            return [r.choices[0].message.content for r in resps]
        finally:
            await c.close()

    assert asyncio.run(run()) == [f"mock reply to: n{i}" for i in range(8)]


def _forge_invalid(token: str) -> str:
    """Same shape as a real token, but the tag no longer verifies."""
    parts = token.split(".")
    tag = parts[4]
    parts[4] = ("A" if tag[0] != "A" else "B") + tag[1:]
    return ".".join(parts)


def test_invalid_token_in_path_is_authentication_error(relay, token):
    bad = _forge_invalid(token)
    c = path_client(relay, bad)
    with pytest.raises(openai.AuthenticationError) as ei:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert ei.value.status_code == 401
    assert error_code(ei.value) == "token_invalid", ei.value.body


def test_invalid_token_as_api_key_is_authentication_error(relay):
    c = OpenAI(base_url=relay.base_url, api_key="not-a-token", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as ei:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert ei.value.status_code == 401
    assert error_code(ei.value) == "token_invalid", ei.value.body


def test_missing_token_is_authentication_error(relay):
    import httpx

    r = httpx.post(f"{relay.base_url}chat/completions", json={"model": MODEL, "messages": []}, timeout=30)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "token_missing", r.text


def test_error_body_is_openai_shaped(relay, token):
    import httpx

    r = httpx.post(
        f"{relay.token_url(_forge_invalid(token))}chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        timeout=30,
    )
    assert r.status_code == 401
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"}, err
    assert err["code"] == "token_invalid"
    assert r.headers.get("x-request-id"), r.headers


def test_max_calls_exhausted_is_rate_limit_error(relay):
    c = path_client(relay, relay.mint(max_calls=1))
    first = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "one"}])
    assert first.choices[0].message.content == "mock reply to: one"
    with pytest.raises(openai.RateLimitError) as ei:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "two"}])
    assert ei.value.status_code == 429
    assert error_code(ei.value) == "token_exhausted", ei.value.body


def test_used_up_token_is_not_retried_by_the_sdk(relay):
    """With its default retries (2, with back-off) the SDK still sends the refused
    call once: the relay's 429 says `x-should-retry: false`."""
    import httpx

    c = OpenAI(base_url=relay.token_url(relay.mint(max_calls=1)), api_key="unused", timeout=30)
    c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "one"}])

    def requests_seen() -> int:
        return httpx.get(f"{relay.url}/health", timeout=10).json()["requests"]["total"]

    first = requests_seen()
    before = requests_seen()
    per_read = before - first  # whether a health read counts itself
    with pytest.raises(openai.RateLimitError) as ei:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "two"}])
    assert error_code(ei.value) == "token_exhausted", ei.value.body
    assert ei.value.response.headers["x-should-retry"] == "false"
    assert requests_seen() - before - per_read == 1, "the SDK retried"


def test_expired_token_is_authentication_error(relay):
    """A token minted with a 1s lifetime is refused once it has expired."""
    import time

    tok = relay.mint(expire="1s")
    c = path_client(relay, tok)
    deadline = time.monotonic() + 15
    while True:
        try:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        except openai.AuthenticationError as e:
            assert error_code(e) == "token_expired", e.body
            return
        assert time.monotonic() < deadline, "1s token still accepted after 15s"
        time.sleep(0.25)  # polling for expiry, not a fixed wait


def test_forced_model(relay):
    forced = "gpt-4.1-mini"
    c = path_client(relay, relay.mint(model=forced))
    resp = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "which model"}])
    assert resp.model == forced
    assert resp.choices[0].message.content == "mock reply to: which model"


def test_models_allow_list(relay):
    c = path_client(relay, relay.mint(models=["gpt-4o", "gpt-4o-mini"]))
    ok = c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "ok"}])
    assert ok.model == "gpt-4o"
    with pytest.raises(openai.PermissionDeniedError) as ei:
        c.chat.completions.create(model="o4-mini", messages=[{"role": "user", "content": "no"}])
    assert ei.value.status_code == 403
    assert error_code(ei.value) == "model_not_allowed", ei.value.body


AUDIO = b"RIFF" + bytes(range(256)) * 8  # any bytes: the mock only counts them


def test_audio_transcription_form_is_held_to_the_model_policy(relay):
    """A multipart form (the SDK's own encoding) is checked by its `model`
    field, and a forced model replaces it before the provider sees it."""
    listed = path_client(relay, relay.mint(models=["whisper-1"]))
    ok = listed.audio.transcriptions.create(model="whisper-1", file=("a.wav", AUDIO, "audio/wav"))
    assert ok.text == f"Mock transcription (model whisper-1, {len(AUDIO)} bytes of audio)."
    with pytest.raises(openai.PermissionDeniedError) as ei:
        listed.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", AUDIO, "audio/wav"))
    assert error_code(ei.value) == "model_not_allowed", ei.value.body

    forced = path_client(relay, relay.mint(model="whisper-1"))
    text = forced.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.wav", AUDIO, "audio/wav"), response_format="text"
    )
    assert "model whisper-1," in str(text), text


def test_upstream_error_status_passes_through(client):
    """A provider error reaches the SDK with the provider's status."""
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "boom"}],
            extra_headers={"x-mock-status": "503"},
        )
    assert ei.value.status_code == 503


def test_responses_create(client):
    """The Responses API (`client.responses.create`), relayed to the mock's `/v1/responses`."""
    prompt = f"hello responses {uuid.uuid4().hex[:8]}"
    resp = client.responses.create(model=MODEL, input=prompt, instructions="be brief")
    assert resp.object == "response" and resp.status == "completed", resp
    assert resp.id.startswith("resp_"), resp.id
    assert resp.model == MODEL
    assert resp.output_text == f"mock reply to: {prompt}"
    assert resp.usage is not None and resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    # Input items with content parts: the last user message is answered.
    resp = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "first"},
            {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
        ],
    )
    assert resp.output_text == "mock reply to: second"


def test_responses_streaming(client):
    prompt = "stream a response"
    stream = client.responses.create(
        model=MODEL, input=prompt, stream=True, extra_headers={"x-mock-chunks": "6"}
    )
    events = list(stream)
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ], types
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ], types
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 6, types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1].response
    assert "".join(deltas) == completed.output_text == f"mock reply to: {prompt}"
    assert events[-4].text == completed.output_text
    assert completed.usage is not None and completed.usage.output_tokens > 0
    assert completed.usage.total_tokens == completed.usage.input_tokens + completed.usage.output_tokens


def test_responses_usage_settles_the_token_budget(relay):
    """A `max_tokens` budget is charged what the Responses answers reported
    (`usage` in the JSON, `response.completed` in the stream), not the
    reservation (`max_output_tokens`)."""
    import time

    import httpx

    token = relay.mint(max_tokens=1000)
    c = path_client(relay, token)
    raw = c.responses.with_raw_response.create(model=MODEL, input="budget me", max_output_tokens=100)
    assert raw.headers["x-relayapi-tokens-remaining"] == "900"
    used = raw.parse().usage.total_tokens
    events = list(c.responses.create(model=MODEL, input="budget me", max_output_tokens=100, stream=True))
    completed = [e for e in events if e.type == "response.completed"]
    assert len(completed) == 1, [e.type for e in events]
    used += completed[0].response.usage.total_tokens

    deadline = time.monotonic() + 10
    while True:
        report = httpx.get(
            f"{relay.base_url}_relayapi/usage", headers={"authorization": f"Bearer {token}"}, timeout=10
        ).json()
        if report["used"]["tokens"] == used:
            break
        assert time.monotonic() < deadline, (report, used)
        time.sleep(0.05)  # the settle runs just after the body was read
    assert report["remaining"]["tokens"] == 1000 - used
