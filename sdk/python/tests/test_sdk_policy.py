"""The policy options of create_token (docs/token-format.md §4.1): key_ref,
origins, ips, paths, methods, rps/burst, concurrency, max_tokens,
max_body_bytes — the shared grammar corpus, the messages that say what to
fix, and canonical serialisation. (No relay here: test_sdk_e2e.py sends
such tokens to the real one.)"""

from __future__ import annotations

import json
import time

import pytest

from relayapi import AsyncRelayAPIClient, InvalidArgumentError, RelayAPIClient, TokenGenerator

from conftest import KEY_A, POLICY_CORPUS
from _decoder import decode

CORPUS = json.loads(POLICY_CORPUS.read_text("utf-8"))
LISTS = ("origins", "ips", "paths", "methods")
BASE = {"jti": "A" * 22, "iat": 1, "exp": 2, "provider": "openai", "api_key": "sk"}


@pytest.fixture
def gen(rai_dict):
    return TokenGenerator(rai_dict)


def claims_of(token):
    verdict, claims = decode(token, KEY_A, int(time.time()))
    assert verdict == "ok"
    return claims


# -- the shared corpus ----------------------------------------------------------


def test_corpus_has_every_list_claim():
    for claim in LISTS:
        assert len(CORPUS[claim]["valid"]) >= 9 and len(CORPUS[claim]["invalid"]) >= 10, claim


def _never_matches(claim, item):
    """Valid to the relay, but an IPv4-mapped ``ips`` item matches no client
    (the relay matches IPv4 clients as IPv4), so the SDKs refuse to mint it."""
    return claim == "ips" and item.lower().startswith("::ffff:") and "." in item


@pytest.mark.parametrize("claim", LISTS)
def test_corpus_valid_items_are_minted_in_the_order_given(gen, claim):
    items = [i for i in CORPUS[claim]["valid"] if not _never_matches(claim, i)]
    for item in items:
        assert claims_of(gen.create_token("sk", **{claim: [item]}))[claim] == [item]
    assert claims_of(gen.create_token("sk", **{claim: items}))[claim] == items
    assert claims_of(gen.create_token("sk", **{claim: list(reversed(items))}))[claim] == items[::-1]


@pytest.mark.parametrize("claim, item", [(c, i) for c in LISTS for i in CORPUS[c]["invalid"]])
def test_corpus_invalid_items_are_refused(gen, claim, item):
    with pytest.raises(InvalidArgumentError) as e:
        gen.create_token("sk", **{claim: [item]})
    assert e.value.argument == claim
    assert str(e.value).startswith(f"{claim}[0] ")
    # The same claim in a raw claims set (encrypt_token, and the test decoder).
    with pytest.raises(InvalidArgumentError) as e:
        gen.encrypt_token({**BASE, claim: [item]})
    assert e.value.argument == claim


# -- messages that say what to fix ------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, argument, fragment",
    [
        ({"methods": ["post"]}, "methods", "methods[0] 'post' is invalid: methods are upper-case: write 'POST'"),
        ({"methods": ["POST", "GET", "POST"]}, "methods", "methods[2] 'POST' repeats methods[0]"),
        ({"methods": ["M-SEARCH"]}, "methods", "upper-case letters only"),
        ({"ips": ["10.0.0.1/8"]}, "ips", "write the network address '10.0.0.0/8' (or the bare address '10.0.0.1'"),
        ({"ips": ["2001:db8::1/32"]}, "ips", "'2001:db8::/32'"),
        ({"ips": ["10.0.0.0/33"]}, "ips", "prefix /33 is too long for IPv4 (0-32)"),
        ({"ips": ["::/129"]}, "ips", "prefix /129 is too long for IPv6 (0-128)"),
        ({"ips": ["10.0.0.0/08"]}, "ips", "without leading zeros"),
        ({"ips": ["010.0.0.1"]}, "ips", "octets are written without leading zeros"),
        ({"ips": ["localhost"]}, "ips", "host names are not allowed"),
        ({"ips": ["fe80::1%eth0"]}, "ips", "zone ids"),
        ({"ips": ["[::1]"]}, "ips", "without brackets"),
        ({"ips": "10.0.0.0/8"}, "ips", "ips must be a list of strings"),
        ({"ips": {"10.0.0.0/8"}}, "ips", "not a set"),
        ({"origins": ["https://app.example.com/"]}, "origins", "write 'https://app.example.com'"),
        ({"origins": ["https://app.example.com:8443/x?y"]}, "origins", "write 'https://app.example.com:8443'"),
        ({"origins": ["app.example.com"]}, "origins", "needs its scheme: write e.g. 'https://app.example.com'"),
        ({"origins": ["*"]}, "origins", "leave origins out to allow any origin"),
        ({"origins": ["https://a.*.example.com"]}, "origins", "only allowed as the first label"),
        ({"origins": ["https://example.com:080"]}, "origins", "port '080' must be a number 1-65535"),
        ({"origins": ["https://bücher.example"]}, "origins", "punycode"),
        ({"origins": []}, "origins", "origins must not be empty: leave it out (None)"),
        ({"origins": [""]}, "origins", "origins[0] must be a non-empty string"),
        ({"origins": ["https://a.example", 1]}, "origins", "origins[1] must be a non-empty string (got int 1)"),
        ({"paths": ["/chat/completions"]}, "paths", "write 'chat/completions' (no leading '/')"),
        ({"paths": ["chat/completions/"]}, "paths", "write 'chat/completions' (no trailing '/'"),
        ({"paths": ["chat/%2e%2e"]}, "paths", "percent-encoding is not allowed"),
        ({"paths": ["chat/../admin"]}, "paths", "'.' and '..' segments are not allowed"),
        ({"rps": 0}, "rps", "rps must be an integer >= 1 (got 0)"),
        ({"rps": True}, "rps", "(got bool True)"),
        ({"rps": 2.0}, "rps", "(got float 2.0)"),
        ({"rps": 2, "burst": 0}, "burst", "burst must be an integer >= 1"),
        ({"burst": 5}, "burst", "burst only shapes the rps limit: set rps too"),
        ({"concurrency": -1}, "concurrency", "concurrency must be an integer >= 1"),
        ({"max_tokens": "1000"}, "max_tokens", "(got str '1000')"),
        ({"max_body_bytes": 2**64}, "max_body_bytes", "at most 2**64 - 1"),
        ({"key_ref": "team"}, "key_ref", "not both"),
    ],
)
def test_invalid_options_say_what_to_fix(rai_dict, kwargs, argument, fragment):
    client = RelayAPIClient(rai_dict)
    for mint in (client.create_token, client.generate_url, client.token_generator.create_token):
        with pytest.raises(InvalidArgumentError) as e:
            mint("sk-secret-value", **kwargs)
        assert e.value.argument == argument
        assert fragment in str(e.value)
        assert "sk-secret-value" not in str(e.value)


def test_exactly_one_of_api_key_and_key_ref(gen):
    for kwargs in ({}, {"api_key": None, "key_ref": None}):
        with pytest.raises(InvalidArgumentError, match="or pass key_ref=") as e:
            gen.create_token(**kwargs)
        assert e.value.argument == "api_key"
    for bad in ("", 5, ["team"]):
        with pytest.raises(InvalidArgumentError, match="key_ref must be the name of a credential") as e:
            gen.create_token(key_ref=bad)
        assert e.value.argument == "key_ref"
    with pytest.raises(InvalidArgumentError, match="exactly one of the claims") as e:
        gen.encrypt_token({**BASE, "key_ref": "team"})
    assert e.value.argument == "key_ref"


# -- key_ref --------------------------------------------------------------------


def test_key_ref_token_carries_no_provider_key(rai_dict):
    client = RelayAPIClient(rai_dict)
    token = client.create_token(key_ref="team-openai", provider="openai", max_tokens=1000)
    claims = claims_of(token)
    assert claims["key_ref"] == "team-openai" and "api_key" not in claims
    assert list(claims) == ["jti", "iat", "exp", "provider", "key_ref", "max_tokens"]
    url = client.generate_url(key_ref="team-openai", paths=["chat/completions"])
    assert "api_key" not in claims_of(url[len(client.base_url) : -1])


@pytest.mark.anyio
async def test_async_client_takes_the_same_options(rai_dict):
    async with AsyncRelayAPIClient(rai_dict) as c:
        claims = claims_of(c.create_token(key_ref="k", origins=["https://app.example.com"], rps=2))
        assert (claims["key_ref"], claims["origins"], claims["rps"]) == ("k", ["https://app.example.com"], 2)
        with pytest.raises(InvalidArgumentError):
            c.generate_url(key_ref="k", methods=["get"])


# -- canonical serialisation -------------------------------------------------------


def test_every_option_in_canonical_order_byte_for_byte(gen):
    token = gen.create_token(
        provider="anthropic", expire_seconds=600, max_calls=100, model="claude-3-5-haiku-latest",
        models=("claude-3-5-haiku-latest",), sub="user-42", ext_info={"app": "demo"},
        key_ref="anthropic-pool", max_body_bytes=65536, max_tokens=1000, concurrency=3, burst=20,
        rps=5, methods=("POST", "GET"), paths=["v1/messages", "v1/models"],
        ips=["2001:db8::/32", "192.0.2.0/24"], origins=["https://b.example", "*.a.example"],
        extra={"x_tier": 2, "x_app": "demo"}, _now=1_700_000_000, _jti="cmVsYXlhcGktdmVjLTA1Mg",
        _iv=bytes(12),
    )  # fmt: skip
    _, claims = decode(token, KEY_A, 1_700_000_000)
    from relayapi._token import canonical_claims_json

    assert canonical_claims_json(claims) == (
        '{"jti":"cmVsYXlhcGktdmVjLTA1Mg","iat":1700000000,"exp":1700000600,"provider":"anthropic",'
        '"key_ref":"anthropic-pool","max_calls":100,"model":"claude-3-5-haiku-latest",'
        '"models":["claude-3-5-haiku-latest"],"sub":"user-42","ext_info":"{\\"app\\":\\"demo\\"}",'
        '"origins":["https://b.example","*.a.example"],"ips":["2001:db8::/32","192.0.2.0/24"],'
        '"paths":["v1/messages","v1/models"],"methods":["POST","GET"],"rps":5,"burst":20,'
        '"concurrency":3,"max_tokens":1000,"max_body_bytes":65536,"x_app":"demo","x_tier":2}'
    )


def test_none_means_absent(gen):
    args = dict(_now=1_700_000_000, _jti="A" * 22, _iv=bytes(12))
    limits = ("rps", "burst", "concurrency", "max_tokens", "max_body_bytes")
    none = {name: None for name in ("key_ref", *LISTS, *limits)}
    assert gen.create_token("sk", **none, **args) == gen.create_token("sk", **args)


def test_corpus_has_ipv4_mapped_items_the_relay_accepts():
    assert [i for i in CORPUS["ips"]["valid"] if _never_matches("ips", i)]


@pytest.mark.parametrize(
    "item, fixed",
    [
        ("::ffff:1.2.3.4", "'1.2.3.4'"),
        ("::FFFF:192.0.2.1", "'192.0.2.1'"),
        ("::ffff:10.0.0.0/104", "'10.0.0.0/8'"),
        ("::ffff:0:0/96", "'0.0.0.0/0'"),
        ("0:0:0:0:0:ffff:c000:201", "'192.0.2.1'"),
    ],
)
def test_ipv4_mapped_ips_are_refused_with_the_ipv4_form(gen, item, fixed):
    # The relay accepts these but matches IPv4 clients (even when a dual-stack
    # socket reports them as ::ffff:a.b.c.d) as IPv4: the item never matches.
    for mint in (
        lambda: gen.create_token("sk", ips=[item]),
        lambda: gen.encrypt_token({**BASE, "ips": ["10.0.0.0/8", item]}),
    ):
        with pytest.raises(InvalidArgumentError) as e:
            mint()
        assert e.value.argument == "ips"
        assert "IPv4-mapped" in str(e.value) and f"write {fixed}" in str(e.value)
    # ...and the decoder still accepts such a token, as the relay does.
    from relayapi._token import _normalise_claims

    assert _normalise_claims({**BASE, "ips": [item]}, minting=False)["ips"] == [item]


@pytest.mark.parametrize("item", ["::fffe:0:0/95", "::/96", "::/0", "::1", "::ffff", "64:ff9b::1.2.3.4", "::1.2.3.4"])
def test_ipv6_networks_that_are_not_ipv4_mapped_are_still_minted(gen, item):
    assert claims_of(gen.create_token("sk", ips=[item]))["ips"] == [item]
