"""Minting arguments, URL shapes and HTTP error mapping (no relay: httpx.MockTransport)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

import relayapi
from relayapi import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    AsyncRelayAPIClient,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RelayAPIClient,
    RelayAPIError,
)

from conftest import KEY_A
from _decoder import decode

TOKEN_RE = r"eyJ[A-Za-z0-9_-]+\.\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}"


@pytest.fixture
def client(rai_dict):
    with RelayAPIClient(rai_dict) as c:
        yield c


def test_create_token_defaults(client):
    before = int(time.time())
    token = client.create_token("sk-real")
    verdict, claims = decode(token, KEY_A, int(time.time()))
    assert verdict == "ok"
    assert claims["provider"] == "openai" and claims["api_key"] == "sk-real"
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == 3600
    assert len(claims["jti"]) == 22
    assert set(claims) == {"jti", "iat", "exp", "provider", "api_key"}


def test_create_token_all_arguments(client):
    token = client.create_token(
        "sk-real", provider="anthropic", expire_seconds=60, max_calls=3, model="m1",
        models=("m1", "m2"), sub="user-1", ext_info={"rep_m": "x", "a": "é"},
        extra={"x_tier": 2},
    )  # fmt: skip
    verdict, claims = decode(token, KEY_A, int(time.time()))
    assert verdict == "ok"
    assert claims == {
        "jti": claims["jti"], "iat": claims["iat"], "exp": claims["iat"] + 60,
        "provider": "anthropic", "api_key": "sk-real", "max_calls": 3, "model": "m1",
        "models": ["m1", "m2"], "sub": "user-1", "ext_info": '{"a":"é","rep_m":"x"}', "x_tier": 2,
    }  # fmt: skip


def test_tokens_are_fresh(client):
    a, b = client.create_token("k"), client.create_token("k")
    assert a != b
    assert a.split(".")[2] != b.split(".")[2]  # fresh IV
    assert decode(a, KEY_A, int(time.time()))[1]["jti"] != decode(b, KEY_A, int(time.time()))[1]["jti"]


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"api_key": ""}, "api_key"),
        ({"api_key": None}, "api_key"),
        ({"provider": ""}, "provider"),
        ({"expire_seconds": 0}, "expire_seconds"),
        ({"expire_seconds": -5}, "expire_seconds"),
        ({"expire_seconds": 1.5}, "expire_seconds"),
        ({"expire_seconds": True}, "expire_seconds"),
        ({"max_calls": 0}, "max_calls"),
        ({"max_calls": -1}, "max_calls"),
        ({"max_calls": 2.0}, "max_calls"),
        ({"max_calls": True}, "max_calls"),
        ({"model": ""}, "model"),
        ({"models": []}, "models"),
        ({"models": "gpt-4o"}, "models"),
        ({"models": ["ok", ""]}, "models"),
        ({"models": ["ok", 3]}, "models"),
        ({"sub": 5}, "sub"),
        ({"ext_info": 5}, "ext_info"),
        ({"extra": {"tier": 1}}, "extra"),
    ],
)
def test_invalid_arguments(client, kwargs, argument):
    args = {"api_key": "sk-secret-value", **kwargs}
    for fn in (client.create_token, client.generate_url):
        with pytest.raises(InvalidArgumentError) as e:
            fn(**args)
        assert e.value.argument == argument
        assert isinstance(e.value, ValueError) and isinstance(e.value, RelayAPIError)
        assert "sk-secret-value" not in str(e.value)


def test_encrypt_token_refuses_what_the_relay_refuses(client):
    good = {"jti": "A" * 22, "iat": 1, "exp": 2, "provider": "openai", "api_key": "k"}
    gen = client.token_generator
    assert decode(gen.encrypt_token(good), KEY_A, 1)[0] == "ok"
    # None for an optional claim means absent.
    assert gen.encrypt_token({**good, "model": None}, _iv=b"\0" * 12) == gen.encrypt_token(good, _iv=b"\0" * 12)
    for bad in (
        {**good, "unknown": 1},
        {**good, "exp": 1},
        {**good, "nbf": 2},
        {**good, "jti": "short"},
        {**good, "jti": "a/" * 11},
        {**good, "iat": 1.0},
        {**good, "max_calls": 0},
        {**good, "x_f": float("nan")},
        {**good, "x_o": {1: "non-string member"}},
        {k: v for k, v in good.items() if k != "api_key"},
        {**good, "ext_info": "x" * 20000},
    ):
        with pytest.raises(InvalidArgumentError):
            gen.encrypt_token(bad)


@pytest.mark.parametrize(
    "value",
    [2**64, -(2**63) - 1, 10**400, [1, {"b": 2**64}], {"a": [-(10**30)]}, float("inf"), [float("nan")]],
    ids=["2**64", "-2**63-1", "10**400", "nested-list", "nested-dict", "inf", "nan"],
)
def test_extra_claims_the_relay_cannot_read_are_refused_naming_the_claim(client, value):
    # The relay reads JSON integers into i64/u64 and refuses a token with
    # any other (token_invalid), so minting one must fail here instead.
    for mint in (
        lambda: client.create_token("sk-secret-value", extra={"x_a": value}),
        lambda: client.token_generator.encrypt_token(
            {"jti": "A" * 22, "iat": 1, "exp": 2, "provider": "openai", "api_key": "k", "x_a": value}
        ),
    ):
        with pytest.raises(InvalidArgumentError) as e:
            mint()
        assert e.value.argument == "x_a"
        assert "x_a" in str(e.value) and "sk-secret-value" not in str(e.value)


def test_extra_claims_at_the_ends_of_the_relay_range_are_minted(client):
    for value in (2**64 - 1, -(2**63), {"a": [2**63, 1.5e300]}):
        token = client.create_token("k", extra={"x_a": value}, _now=1)
        verdict, claims = decode(token, KEY_A, 1)
        assert verdict == "ok" and claims["x_a"] == value


def test_ext_info_is_opaque_text_so_big_integers_stay_but_nan_does_not(client):
    token = client.create_token("k", ext_info={"n": 10**30}, _now=1)
    assert decode(token, KEY_A, 1)[1]["ext_info"] == '{"n":' + str(10**30) + "}"
    with pytest.raises(InvalidArgumentError) as e:
        client.create_token("k", ext_info={"n": float("nan")})
    assert e.value.argument == "ext_info"


def test_url_shapes(client):
    token = client.create_token("k")
    base = "http://localhost:8840/relayapi/"
    assert client.base_url == base
    assert client.generate_api_url_with_token(token) == f"{base}{token}/"
    assert client.generate_api_url_with_token(token, "") == f"{base}{token}/"
    assert client.generate_api_url_with_token(token, "chat_completions") == f"{base}{token}/chat/completions"
    assert client.generate_api_url_with_token(token, "images_generations") == f"{base}{token}/images/generations"
    assert client.generate_api_url_with_token(token, "embeddings") == f"{base}{token}/embeddings"
    url = client.generate_url("k", max_calls=2)
    assert url.startswith(base) and url.endswith("/") and url.count("/relayapi/") == 1
    assert "?" not in url
    minted = url[len(base):-1]
    assert decode(minted, KEY_A, int(time.time()))[1]["max_calls"] == 2


def test_url_uses_base_path_once(rai_dict):
    rai_dict["server"].update(host="https://relay.example.com:443/", base_path="gw/v2")
    c = RelayAPIClient(rai_dict)
    assert c.generate_api_url_with_token("eyJ..a.b.c", "embeddings") == (
        "https://relay.example.com:443/gw/v2/eyJ..a.b.c/embeddings"
    )


@pytest.mark.parametrize("api_type", ["chat", "completions", "CHAT_COMPLETIONS", None])
def test_unknown_api_type(client, api_type):
    with pytest.raises(InvalidArgumentError) as e:
        client.generate_api_url_with_token("eyJ..a.b.c", api_type)
    assert e.value.argument == "api_type"


@pytest.mark.parametrize("token", ["", None, "a/b", "tok?x=1", "x" * 20000])
def test_bad_token_argument(client, token):
    with pytest.raises(InvalidArgumentError) as e:
        client.generate_api_url_with_token(token)
    assert e.value.argument == "token"


# -- HTTP through httpx.MockTransport -----------------------------------------


def _relay_error(status, code, etype="authentication_error"):
    body = {"error": {"message": f"m-{code}", "type": etype, "code": code}}
    return httpx.Response(status, json=body, headers={"x-request-id": f"req-{status}"})


def _mock_client(rai_dict, handler, cls=RelayAPIClient):
    transport = httpx.MockTransport(handler)
    http = httpx.Client(transport=transport) if cls is RelayAPIClient else httpx.AsyncClient(transport=transport)
    return cls(rai_dict, http_client=http)


def test_requests_are_sent_as_documented(rai_dict):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    c = _mock_client(rai_dict, handler)
    token = c.create_token("k")
    assert c.health_check() == {"ok": True}
    assert c.chat_completions(token, [{"role": "user", "content": "hi"}], "m", temperature=0) == {"ok": True}
    assert c.images_generations(token, "a cat", n=1) == {"ok": True}
    assert c.embeddings(token, ["a", "b"], "e") == {"ok": True}
    assert [(r.method, str(r.url)) for r in seen] == [
        ("GET", "http://localhost:8840/health"),
        ("POST", f"http://localhost:8840/relayapi/{token}/chat/completions"),
        ("POST", f"http://localhost:8840/relayapi/{token}/images/generations"),
        ("POST", f"http://localhost:8840/relayapi/{token}/embeddings"),
    ]
    bodies = [json.loads(r.content) for r in seen[1:]]
    assert bodies == [
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0},
        {"prompt": "a cat", "n": 1},
        {"model": "e", "input": ["a", "b"]},
    ]
    assert seen[1].headers["content-type"] == "application/json"
    assert seen[1].headers["user-agent"].startswith("relayapi-sdk-python/")
    assert "authorization" not in seen[1].headers


@pytest.mark.parametrize(
    "status, code, cls",
    [
        (400, "provider_unknown", BadRequestError),
        (401, "token_invalid", AuthenticationError),
        (401, "token_expired", AuthenticationError),
        (403, "model_not_allowed", PermissionDeniedError),
        (404, "not_found", NotFoundError),
        (413, "payload_too_large", relayapi.PayloadTooLargeError),
        (429, "token_exhausted", RateLimitError),
        (502, "upstream_unreachable", InternalServerError),
        (418, "teapot", APIStatusError),
        # Every relay code of docs/errors.md, as the README's errors table maps it.
        (400, "credential_unknown", BadRequestError),
        (400, "invalid_body", BadRequestError),
        (401, "token_missing", AuthenticationError),
        (401, "token_not_yet_valid", AuthenticationError),
        (401, "token_revoked", AuthenticationError),
        (403, "origin_not_allowed", PermissionDeniedError),
        (403, "ip_not_allowed", PermissionDeniedError),
        (403, "path_not_allowed", PermissionDeniedError),
        (405, "method_not_allowed", APIStatusError),
        (408, "request_timeout", APIStatusError),
        (429, "rate_limited", RateLimitError),
        (429, "concurrency_exceeded", RateLimitError),
        (429, "budget_exhausted", RateLimitError),
        (431, "headers_too_large", APIStatusError),
        (503, "service_unavailable", InternalServerError),
        (504, "upstream_timeout", InternalServerError),
        (500, "internal_error", InternalServerError),
    ],
)
def test_status_errors(rai_dict, status, code, cls):
    c = _mock_client(rai_dict, lambda r: _relay_error(status, code))
    with pytest.raises(cls) as e:
        c.chat_completions(c.create_token("k"), [], "m")
    err = e.value
    assert type(err) is cls
    assert (err.status, err.code, err.request_id) == (status, code, f"req-{status}")
    assert err.message == f"m-{code}"
    assert str(status) in str(err) and code in str(err) and f"req-{status}" in str(err)


def test_non_json_error_and_non_json_success(rai_dict):
    c = _mock_client(rai_dict, lambda r: httpx.Response(500, text="boom"))
    with pytest.raises(InternalServerError) as e:
        c.health_check()
    assert e.value.code is None and e.value.body is None and "500" in str(e.value)
    c = _mock_client(rai_dict, lambda r: httpx.Response(200, text="<html>"))
    with pytest.raises(APIResponseValidationError):
        c.health_check()


def test_connection_error_never_shows_the_token(rai_dict):
    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    c = _mock_client(rai_dict, handler)
    token = c.create_token("k")
    with pytest.raises(APIConnectionError) as e:
        c.chat_completions(token, [], "m")
    assert token not in str(e.value) and "localhost:8840" in str(e.value)

    def slow(request):
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(relayapi.APITimeoutError):
        _mock_client(rai_dict, slow).health_check()


def test_stream_is_refused_with_a_pointer(client):
    with pytest.raises(InvalidArgumentError, match="generate_url"):
        client.chat_completions(client.create_token("k"), [], "m", stream=True)


@pytest.mark.anyio
async def test_async_client_maps_errors_and_urls(rai_dict):
    seen = []

    def handler(request):
        seen.append(str(request.url))
        if request.url.path.endswith("/embeddings"):
            return _relay_error(429, "token_exhausted", "rate_limit_error")
        return httpx.Response(200, json={"path": request.url.path})

    async with _mock_client(rai_dict, handler, AsyncRelayAPIClient) as c:
        token = c.create_token("k")
        assert c.generate_url("k").startswith("http://localhost:8840/relayapi/eyJ")
        assert (await c.health_check()) == {"path": "/health"}
        r = await c.images_generations(token, "p")
        assert r == {"path": f"/relayapi/{token}/images/generations"}
        with pytest.raises(RateLimitError) as e:
            await c.embeddings(token, "x", "e")
        assert (e.value.status, e.value.code, e.value.request_id) == (429, "token_exhausted", "req-429")


@pytest.mark.parametrize("key", ["sk-mock\n", "sk-mock\r\n", "sk\x00x", "\tsk", "sk\x7f", "sk\x1f"])
def test_api_key_with_a_control_character_is_refused(client, key):
    # The relay refuses such a token (token_invalid) at every call: no header can carry it.
    with pytest.raises(InvalidArgumentError) as e:
        client.create_token(key)
    assert e.value.argument == "api_key"
    assert str(e.value).startswith("api_key ") and "trailing newline" in str(e.value)
    claims = {"jti": "A" * 22, "iat": 1, "exp": 2, "provider": "openai", "api_key": key}
    with pytest.raises(InvalidArgumentError) as e:
        client.token_generator.encrypt_token(claims)
    assert e.value.argument == "api_key" and "trailing newline" in str(e.value)
    # The test decoder refuses it too, as the relay does.
    token = _raw_mint(claims)
    assert decode(token, KEY_A, 1) == ("token_invalid", None)


def test_api_key_with_spaces_or_non_ascii_is_fine(client):
    assert decode(client.create_token("sk-é 1", _now=1), KEY_A, 1)[1]["api_key"] == "sk-é 1"


def _raw_mint(claims):
    """A token sealed without the SDK's checks (what a careless minter writes)."""
    from relayapi._token import _encrypt, derive_content_key, key_id

    content_key = derive_content_key(bytes.fromhex(KEY_A))
    plaintext = json.dumps(claims, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _encrypt(content_key, key_id(content_key), plaintext, b"\0" * 12)


def test_none_means_not_set_for_every_argument_as_null_in_js(client):
    # provider/expire_seconds=None take their defaults, like leaving them out.
    same = dict(_now=1000, _jti="A" * 22, _iv=b"\0" * 12)
    default = client.create_token("k", **same)
    assert client.create_token("k", provider=None, expire_seconds=None, max_calls=None, **same) == default
    claims = decode(client.create_token("k", provider=None, expire_seconds=None, _now=1000), KEY_A, 1000)[1]
    assert claims["provider"] == "openai" and claims["exp"] - claims["iat"] == 3600


@pytest.mark.parametrize(
    "kwargs, argument, words",
    [
        ({"models": {"b", "a"}}, "models", "not a set"),
        ({"models": frozenset({"a"})}, "models", "not a set"),
        ({"models": {"a": 1}}, "models", "got dict"),
        ({"models": (m for m in ["a"])}, "models", "got generator"),
        ({"extra": [("x_a", 1)]}, "extra", "must be a dict"),
        ({"extra": "x_a"}, "extra", "must be a dict"),
        ({"expire_seconds": 2**63}, "expire_seconds", "too large"),
        ({"max_calls": 2**64}, "max_calls", "at most 2**64 - 1"),
        ({"sub": "\ud800"}, "sub", "lone surrogate"),
        ({"model": "m\udc00"}, "model", "lone surrogate"),
        ({"ext_info": {"a": "\ud800"}}, "ext_info", "lone surrogate"),
    ],
)
def test_argument_errors_name_the_parameter_and_the_real_problem(client, kwargs, argument, words):
    with pytest.raises(InvalidArgumentError) as e:
        client.create_token("k", **kwargs)
    assert e.value.argument == argument
    assert words in str(e.value)
    assert "must be an integer >= 1" not in str(e.value)


def test_models_tuple_still_minted_and_limits_at_the_ends_of_the_range(client):
    claims = decode(client.create_token("k", models=("a", "b"), max_calls=2**64 - 1, _now=1), KEY_A, 1)[1]
    assert claims["models"] == ["a", "b"] and claims["max_calls"] == 2**64 - 1
    token = client.create_token("k", expire_seconds=2**63 - 2, _now=1)
    assert decode(token, KEY_A, 1)[1]["exp"] == 2**63 - 1
    gen = client.token_generator
    with pytest.raises(InvalidArgumentError, match="at most 2") as e:
        gen.encrypt_token({"jti": "A" * 22, "iat": 1, "exp": 2, "provider": "p", "api_key": "k", "max_calls": 2**64})
    assert e.value.argument == "max_calls"
