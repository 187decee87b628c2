"""Every vector of testdata/vectors/token-v2.json (the cross-language contract)."""

from __future__ import annotations

import json

import pytest

from relayapi._token import _mint, canonical_claims_json, canonical_header, derive_content_key, key_id

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


_CLASSIC = ("api_key", "provider", "max_calls", "model", "models", "sub", "ext_info")
_OPTIONS = (
    "key_ref", "origins", "ips", "paths", "methods", "rps", "burst", "concurrency", "max_tokens", "max_body_bytes",
)  # fmt: skip


def _create_token_args(claims):
    """``create_token`` keyword arguments that mint exactly ``claims``, or
    ``None`` when create_token cannot express them (``nbf``, ``iat != now``)."""
    if "nbf" in claims:
        return None
    args = {k: claims[k] for k in _CLASSIC + _OPTIONS if k in claims}
    extra = {k: v for k, v in claims.items() if k.startswith("x_")}
    if len(args) + len(extra) + 3 != len(claims):
        return None
    return {
        **args, "expire_seconds": claims["exp"] - claims["iat"], "extra": extra or None,
        "_now": claims["iat"], "_jti": claims["jti"],
    }  # fmt: skip


_BY_OPTIONS = [v for v in _MINT if _create_token_args(v["claims"]) is not None]


@pytest.mark.parametrize("v", _BY_OPTIONS, ids=_id)
def test_create_token_options_reproduce_the_vector(v, rai_dict):
    """Every mint vector create_token can express (the policy ones included)
    comes out of create_token byte for byte."""
    from relayapi import TokenGenerator

    rai_dict["crypto"]["aes_key"] = v["aes_key"]
    token = TokenGenerator(rai_dict).create_token(**_create_token_args(v["claims"]), _iv=bytes.fromhex(v["iv"]))
    assert token == v["token"]


def _is_claims_problem(v):
    """A must-fail vector whose header and encryption are right, so only its
    claims (``claims_json``) are at fault. Duplicate member names are left
    out: a dict cannot hold them, so no caller can hand them to the SDK."""
    return (
        v["expected"] == "token_invalid"
        and "claims_json" in v
        and v.get("header") == canonical_header(v["kid"])
        and "duplicate-member-detection" not in v.get("requires", [])
    )


_CLAIMS_PROBLEMS = [v for v in _ALL if _is_claims_problem(v)]


@pytest.mark.parametrize("v", _CLAIMS_PROBLEMS, ids=_id)
def test_sdk_refuses_to_mint_must_fail_claims(v, rai_dict):
    from relayapi import InvalidArgumentError, TokenGenerator
    from _decoder import _json

    claims = _json(v["claims_json"].encode("utf-8"))
    gen = TokenGenerator(rai_dict)
    if isinstance(claims, dict) and None in claims.values():
        # The SDK treats None as "absent": it can only mint the claims without it.
        assert canonical_claims_json(claims) != v["claims_json"]
        return
    with pytest.raises(InvalidArgumentError):
        gen.encrypt_token(claims)


def test_vector_selection_covers_the_policy_vectors():
    names = {v["name"] for v in _BY_OPTIONS}
    assert {"policy-all-claims", "key-ref", "policy-minimums-no-burst", "policy-grammar-edges"} <= names
    assert len(_CLAIMS_PROBLEMS) >= 35 and "rps-float" in {v["name"] for v in _CLAIMS_PROBLEMS}


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
