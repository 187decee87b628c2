"""The earlier RelayAPI's published Python SDK (relayapi-sdk 1.0.0, from PyPI)
against this relay with `legacy_tokens` on: an existing backend keeps working
unchanged — health_check, chat, embeddings, images, `rep_m`, `max_calls` —
and the base URL it hands out works with the current official `openai` SDK.

The 1.0.0 SDK imports as `relayapi` like ours, so it runs in its own venv:
`scripts/test.sh` makes `.venv-legacy-sdk` and sets RELAYAPI_LEGACY_SDK_PYTHON.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import openai
import pytest

DRIVER = Path(__file__).with_name("legacy_sdk") / "driver.py"


@pytest.fixture(scope="module")
def legacy_run(relay) -> dict:
    python = os.environ.get("RELAYAPI_LEGACY_SDK_PYTHON")
    if not python:
        pytest.skip(
            "SKIP: RELAYAPI_LEGACY_SDK_PYTHON is not set (scripts/test.sh sets it up: "
            "a venv with relayapi-sdk==1.0.0 from tests/e2e/legacy_sdk/requirements.txt)"
        )
    out = subprocess.run(
        [python, str(DRIVER), str(relay.rai_path), relay.mock_key],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for token in result["tokens"]:
        relay.remember(token)
    return result


def test_health_check(legacy_run):
    assert legacy_run["health"]["ok"]["status"] == "ok"


def test_chat_embeddings_images(legacy_run):
    chat = legacy_run["chat"]["ok"]
    assert chat["choices"][0]["message"]["content"] == "mock reply to: Hello from 1.0.0"
    assert legacy_run["embeddings"]["ok"]["data"][0]["embedding"]
    assert legacy_run["images"]["ok"]["data"][0]["revised_prompt"] == "a red cat"


def test_rep_m_forces_the_model(legacy_run):
    assert legacy_run["rep_m"]["ok"]["model"] == "gpt-4o"


def test_max_calls_is_enforced(legacy_run):
    first, second, third = legacy_run["max_calls"]
    assert "ok" in first and "ok" in second
    assert third["status"] == 429
    assert json.loads(third["body"])["error"]["code"] == "token_exhausted"


def test_base_url_works_with_the_current_openai_sdk(legacy_run):
    base_url = legacy_run["base_url"]
    assert "?token=" in base_url and "&rai_hash=" in base_url
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "via base url"}]
    )
    assert reply.choices[0].message.content == "mock reply to: via base url"
    assert len(client.models.list().data) > 0
    emb = client.embeddings.create(model="text-embedding-3-small", input="x")
    assert emb.data[0].embedding
