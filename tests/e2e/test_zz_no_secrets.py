"""Runs last (see conftest.pytest_collection_modifyitems): after every other
test has driven traffic through the relay, its logs (stderr, captured to a file,
at debug level for the relayapi crates) and its stdout must contain no secret:
not the provider API key, not any token seen in the session (nor its
ciphertext), not the .rai aes_key nor the derived content key.
"""

from __future__ import annotations

import httpx


def _exercise_error_paths(relay) -> None:
    """A few more requests whose handling is likely to log: upstream error,
    exhausted token, bad token in a query parameter and in x-api-key."""
    tok = relay.mint(max_calls=1)
    url = f"{relay.token_url(tok)}chat/completions"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "leak?"}]}
    httpx.post(url, json=body, headers={"x-mock-status": "500"}, timeout=30)
    httpx.post(url, json=body, timeout=30)
    httpx.post(url, json=body, timeout=30)
    tok2 = relay.mint()
    httpx.get(f"{relay.base_url}models", params={"token": tok2}, timeout=30)
    httpx.get(f"{relay.base_url}models", headers={"x-api-key": tok2 + "x"}, timeout=30)


def test_relay_logs_contain_no_secrets(relay):
    _exercise_error_paths(relay)
    # Stop nothing: tracing writes each event straight to stderr.
    logs = relay.proc.stderr_text() + "\n".join(relay.proc.stdout_lines)
    assert logs.strip(), "relay stderr was not captured"

    secrets_: dict[str, str] = {
        "mock api key": relay.mock_key,
        ".rai aes_key": relay.aes_key,
        "content key (hex)": relay.content_key.hex(),
    }
    assert relay.tokens, "no token recorded"
    for i, tok in enumerate(relay.tokens):
        secrets_[f"token #{i}"] = tok
        parts = tok.split(".")
        if len(parts) == 5 and len(parts[3]) >= 16:
            secrets_[f"ciphertext of token #{i}"] = parts[3]

    leaks = [name for name, value in secrets_.items() if value and value in logs]
    assert not leaks, f"relay logs leak {leaks}; log file: {relay.proc.stderr_path}"
