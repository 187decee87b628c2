"""Anthropic's, Google's and OpenAI's Azure Python clients against the running relay.

Each passes the token the way a front end would: as the SDK's own API key
(anthropic sends `x-api-key`, google-genai `x-goog-api-key`), with the SDK's
base URL replaced by the relay's base path; Anthropic also with the token as a
path segment. The mock checks that the *provider* key arrived in the
provider's header, so a reply proves the credential was swapped.
"""

from __future__ import annotations

import anthropic
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

CLAUDE = "claude-sonnet-4-5"
GEMINI = "gemini-2.5-flash"


def claude(relay, token: str, *, in_path: bool = False) -> anthropic.Anthropic:
    if in_path:
        return anthropic.Anthropic(base_url=relay.token_url(token), api_key="unused", max_retries=0)
    return anthropic.Anthropic(base_url=relay.base_url, api_key=token, max_retries=0)


def gemini(relay, token: str) -> genai.Client:
    return genai.Client(
        api_key=token,
        http_options=types.HttpOptions(base_url=relay.base_url, retry_options=None),
    )


@pytest.fixture(scope="module")
def claude_token(relay) -> str:
    return relay.mint(provider="anthropic", expire="1h")


@pytest.fixture(scope="module")
def gemini_token(relay) -> str:
    return relay.mint(provider="gemini", expire="1h")


@pytest.mark.parametrize("in_path", [False, True], ids=["x-api-key", "path"])
def test_anthropic_message(relay, claude_token, in_path):
    msg = claude(relay, claude_token, in_path=in_path).messages.create(
        model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Hi there"}]
    )
    assert msg.content[0].text == "mock reply to: Hi there"
    assert msg.usage.output_tokens > 0


def test_anthropic_stream(relay, claude_token):
    with claude(relay, claude_token).messages.stream(
        model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Stream me"}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1, pieces
    assert "".join(pieces) == "mock reply to: Stream me"
    assert final.usage.output_tokens > 0


def test_anthropic_invalid_token_is_authentication_error(relay):
    with pytest.raises(anthropic.AuthenticationError) as e:
        claude(relay, "not-a-token").messages.create(
            model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.status_code == 401


def test_gemini_generate_content(relay, gemini_token):
    client = gemini(relay, gemini_token)  # keep a reference: dropping it closes its HTTP client
    r = client.models.generate_content(model=GEMINI, contents="Hi Gemini")
    assert r.text == "mock reply to: Hi Gemini"
    assert r.usage_metadata is not None and r.usage_metadata.total_token_count > 0


def test_gemini_stream(relay, gemini_token):
    client = gemini(relay, gemini_token)
    chunks = [
        c.text or ""
        for c in client.models.generate_content_stream(model=GEMINI, contents="Stream Gemini")
    ]
    assert len(chunks) > 1, chunks
    assert "".join(chunks) == "mock reply to: Stream Gemini"


def test_gemini_invalid_token_is_refused(relay):
    client = gemini(relay, "not-a-token")
    with pytest.raises(genai_errors.ClientError) as e:
        client.models.generate_content(model=GEMINI, contents="x")
    assert e.value.code == 401


@pytest.mark.parametrize("setting", ["azure_endpoint", "base_url"])
def test_azure_openai_client(relay, setting):
    """`AzureOpenAI(azure_endpoint=…)` appends `/openai` itself; `base_url=…` does
    not. Both reach the deployment, and the deployment is what `models` checks."""
    from openai import AzureOpenAI, PermissionDeniedError

    token = relay.mint(provider="azure-openai", models=["gpt-4o"])
    client = AzureOpenAI(
        api_key="unused", api_version="2024-10-21", max_retries=0, **{setting: relay.token_url(token)}
    )
    reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "mock reply to: hi"
    with pytest.raises(PermissionDeniedError) as ei:
        client.chat.completions.create(model="o1", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.body["code"] == "model_not_allowed", ei.value.body
