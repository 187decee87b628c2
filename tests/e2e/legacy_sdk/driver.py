"""Drives the published relayapi-sdk 1.0.0 against a running relay.

Run with the legacy venv's python: `driver.py RAI_PATH PROVIDER_KEY`. Uses
only the 1.0.0 API, the way an existing backend does, and prints one JSON
object with what each call returned (or the HTTP status it failed with).
"""

import json
import sys

import requests
from relayapi import RelayAPIClient


def attempt(fn):
    try:
        return {"ok": fn()}
    except requests.HTTPError as e:
        return {"status": e.response.status_code, "body": e.response.text}


def main():
    rai_path, provider_key = sys.argv[1], sys.argv[2]
    client = RelayAPIClient(rai_path)
    out = {"tokens": []}

    def mint(**kw):
        token = client.create_token(api_key=provider_key, provider="openai", **kw)
        out["tokens"].append(token)
        return token

    out["health"] = attempt(client.health_check)
    token = mint(max_calls=10)
    hello = [{"role": "user", "content": "Hello from 1.0.0"}]
    out["chat"] = attempt(lambda: client.chat_completions(token, hello, model="gpt-4o-mini"))
    out["embeddings"] = attempt(lambda: client.embeddings(token, "hello"))
    out["images"] = attempt(lambda: client.images_generations(token, "a red cat"))

    forced = mint(max_calls=10, ext_info=json.dumps({"rep_m": "gpt-4o"}))
    out["rep_m"] = attempt(lambda: client.chat_completions(forced, hello, model="gpt-4o-mini"))

    two = mint(max_calls=2)
    out["max_calls"] = [
        attempt(lambda: client.chat_completions(two, hello, model="gpt-4o-mini")) for _ in range(3)
    ]

    # One step, as a front end's base URL: `.../relayapi/?token=T&rai_hash=H`.
    out["base_url"] = client.generate_api_url(api_key=provider_key, max_calls=10, provider="openai")
    out["tokens"].append(out["base_url"].split("token=", 1)[1].split("&", 1)[0])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
