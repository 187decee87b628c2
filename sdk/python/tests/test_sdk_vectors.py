"""Every vector of testdata/vectors/token-v2.json (the cross-language contract)."""

from __future__ import annotations

import json

import pytest

from relayapi._token import _mint, canonical_claims_json, derive_content_key, key_id

from conftest import VECTORS
from _decoder import canonical, decode, effective_model

_ALL = json.loads(VECTORS.read_text("utf-8"))["vectors"]
_MINT = [v for v in _ALL if v["mint"]]


def _id(v):
    return v["name"]


def test_vector_file_is_the_expected_one(vectors):
    assert vectors["info"] == "relayapi token v2"
    assert vectors["max_token_len"] == 16384
    assert vectors["leeway_secs"] == 60
    assert len(_ALL) >= 40 and len(_MINT) >= 10
    assert len({v["name"] for v in _ALL}) == len(_ALL)


@pytest.mark.parametrize("v", _ALL, ids=_id)
def test_content_key_and_kid(v):
    ck = derive_content_key(bytes.fromhex(v["aes_key"]))
    assert ck.hex() == v["content_key"]
    assert key_id(ck) == v["kid"]


@pytest.mark.parametrize("v", _MINT, ids=_id)
def test_mint_reproduces_token_byte_for_byte(v):
    assert canonical_claims_json(v["claims"]) == v["claims_json"]
    assert _mint(v["aes_key"], v["claims"], bytes.fromhex(v["iv"])) == v["token"]


@pytest.mark.parametrize("v", _MINT, ids=_id)
def test_mint_through_token_generator(v, rai_dict):
    from relayapi import TokenGenerator

    rai_dict["crypto"]["aes_key"] = v["aes_key"]
    gen = TokenGenerator(rai_dict)
    assert gen.kid == v["kid"]
    assert gen.encrypt_token(v["claims"], _iv=bytes.fromhex(v["iv"])) == v["token"]


@pytest.mark.parametrize("v", _ALL, ids=_id)
def test_decoder_verdict(v):
    """The reference decoder (which uses the SDK's claim rules) agrees with the relay."""
    verdict, claims = decode(v["token"], v["aes_key"], v["now"])
    assert verdict == v["expected"]
    if verdict == "ok":
        assert canonical(claims) == v["claims_json"]
        assert effective_model(claims) == v["effective_model"]


def test_create_token_matches_basic_vector(rai_dict):
    """create_token with the test hooks gives the `basic` vector exactly."""
    from relayapi import TokenGenerator

    v = next(x for x in _ALL if x["name"] == "basic")
    c = v["claims"]
    token = TokenGenerator(rai_dict).create_token(
        c["api_key"],
        provider=c["provider"],
        expire_seconds=c["exp"] - c["iat"],
        _now=c["iat"],
        _jti=c["jti"],
        _iv=bytes.fromhex(v["iv"]),
    )
    assert token == v["token"]
