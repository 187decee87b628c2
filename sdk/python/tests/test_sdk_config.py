"""`.rai` parsing (docs/token-format.md §1), URLs and redaction."""

from __future__ import annotations

import json

import pytest

from relayapi import ConfigError, RelayAPIClient, RelayConfig, TokenGenerator, AsyncRelayAPIClient

from conftest import KEY_A


def test_loads_file_and_dict_alike(tmp_path, rai_dict):
    p = tmp_path / "default.rai"
    p.write_text(json.dumps(rai_dict))
    from_file = RelayConfig.load(str(p))
    assert from_file == RelayConfig.load(rai_dict)
    assert from_file.path == str(p)
    assert RelayConfig.load(p).base_url == "http://localhost:8840/relayapi/"


def test_default_path_is_default_rai(tmp_path, rai_dict, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="default.rai"):
        RelayAPIClient()
    (tmp_path / "default.rai").write_text(json.dumps(rai_dict))
    assert RelayAPIClient().base_url == "http://localhost:8840/relayapi/"


def test_unknown_fields_ignored_and_method_case_insensitive(rai_dict):
    rai_dict["future"] = {"x": 1}
    rai_dict["crypto"]["method"] = "AES"
    rai_dict["crypto"]["aes_key"] = KEY_A.upper()
    assert RelayConfig.load(rai_dict).aes_key_bytes == bytes(range(32))


@pytest.mark.parametrize(
    "base_path, expected",
    [("", "/"), ("/", "/"), ("relayapi", "/relayapi/"), ("/relayapi", "/relayapi/"),
     ("relayapi/", "/relayapi/"), ("/a/b/", "/a/b/")],
)  # fmt: skip
def test_base_path_normalised(rai_dict, base_path, expected):
    rai_dict["server"]["base_path"] = base_path
    cfg = RelayConfig.load(rai_dict)
    assert cfg.base_path == expected
    assert cfg.base_url == "http://localhost:8840" + expected


@pytest.mark.parametrize(
    "host, base_url, health",
    [
        ("http://localhost", "http://localhost:8840/relayapi/", "http://localhost:8840/health"),
        ("http://localhost/", "http://localhost:8840/relayapi/", "http://localhost:8840/health"),
        ("http://localhost:9000", "http://localhost:9000/relayapi/", "http://localhost:9000/health"),
        ("https://relay.example.com", "https://relay.example.com:8840/relayapi/",
         "https://relay.example.com:8840/health"),
        ("http://[::1]", "http://[::1]:8840/relayapi/", "http://[::1]:8840/health"),
        ("http://[::1]:9000/", "http://[::1]:9000/relayapi/", "http://[::1]:9000/health"),
    ],
)  # fmt: skip
def test_base_url_and_health_url(rai_dict, host, base_url, health):
    rai_dict["server"]["host"] = host
    cfg = RelayConfig.load(rai_dict)
    assert cfg.base_url == base_url
    assert cfg.health_url == health


def test_every_problem_reported_at_once_without_key_material(rai_dict):
    secret_key = "ab" * 31  # 62 hex chars: wrong length
    rai_dict["crypto"].update(method="des", aes_key=secret_key, aes_iv_seed="abc")
    rai_dict["server"]["port"] = 70000
    with pytest.raises(ConfigError) as e:
        RelayConfig.load(rai_dict)
    msg = str(e.value)
    for field in ("crypto.method", "crypto.aes_key", "crypto.aes_iv_seed", "server.port"):
        assert field in msg
    assert len(e.value.problems) == 4
    assert "relayapi gen-config" in msg
    assert secret_key not in msg and "abc" not in msg.replace("aes", "")


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("version"), "version"),
        (lambda d: d.pop("server"), "server"),
        (lambda d: d.__setitem__("crypto", "x"), "crypto"),
        (lambda d: d["server"].__setitem__("host", ""), "server.host"),
        (lambda d: d["server"].pop("host"), "server.host"),
        (lambda d: d["server"].__setitem__("port", 0), "server.port"),
        (lambda d: d["server"].__setitem__("port", "8840"), "server.port"),
        (lambda d: d["server"].__setitem__("port", True), "server.port"),
        (lambda d: d["server"].__setitem__("port", 8840.0), "server.port"),
        (lambda d: d["server"].pop("port"), "server.port"),
        (lambda d: d["server"].pop("base_path"), "server.base_path"),
        (lambda d: d["crypto"].pop("aes_key"), "crypto.aes_key"),
        (lambda d: d["crypto"].__setitem__("aes_key", "zz" * 32), "crypto.aes_key"),
        (lambda d: d["crypto"].__setitem__("aes_key", 12), "crypto.aes_key"),
        (lambda d: d["crypto"].__setitem__("aes_iv_seed", ""), "crypto.aes_iv_seed"),
        (lambda d: d["crypto"].__setitem__("aes_iv_seed", "0g"), "crypto.aes_iv_seed"),
        (lambda d: d["crypto"].pop("method"), "crypto.method"),
    ],
)
def test_invalid_fields_are_named(rai_dict, mutate, field):
    mutate(rai_dict)
    with pytest.raises(ConfigError) as e:
        RelayConfig.load(rai_dict)
    assert field in str(e.value)
    assert KEY_A not in str(e.value)


def test_missing_file_names_path_and_fix(tmp_path):
    p = tmp_path / "nope.rai"
    with pytest.raises(ConfigError) as e:
        RelayAPIClient(str(p))
    assert str(p) in str(e.value) and "gen-config" in str(e.value)
    assert e.value.path == str(p)


def test_syntax_error_reports_position_only(tmp_path):
    p = tmp_path / "bad.rai"
    p.write_text('{"crypto": {"aes_key": "' + KEY_A + '",}}')
    with pytest.raises(ConfigError) as e:
        TokenGenerator(p)
    assert "line 1, column" in str(e.value) and str(p) in str(e.value)
    assert KEY_A not in str(e.value)


def test_file_errors_name_the_file(tmp_path, rai_dict):
    rai_dict["crypto"]["aes_key"] = "00"
    p = tmp_path / "short.rai"
    p.write_text(json.dumps(rai_dict))
    with pytest.raises(ConfigError, match="short.rai"):
        RelayConfig.from_file(p)
    with pytest.raises(ConfigError, match="directory"):
        RelayConfig.from_file(tmp_path)
    with pytest.raises(ConfigError, match="JSON object"):
        RelayConfig.from_dict([])  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        RelayAPIClient(42)  # type: ignore[arg-type]


def test_repr_never_contains_key_material(rai_dict):
    seed = rai_dict["crypto"]["aes_iv_seed"]
    objects = [RelayConfig.load(rai_dict), TokenGenerator(rai_dict),
               RelayAPIClient(rai_dict), AsyncRelayAPIClient(rai_dict)]  # fmt: skip
    for obj in objects:
        for text in (repr(obj), str(obj)):
            assert KEY_A not in text and KEY_A.upper() not in text and seed not in text, text
    assert "redacted" in repr(objects[0])
    assert "b613e3848ba80c89" in repr(objects[2])  # the public kid is fine
    assert KEY_A not in repr(vars(objects[2]))


# The relay's check_host cases (crates/token/src/rai.rs), plus the audit's.
GOOD_HOSTS = [
    "http://localhost",
    "https://relay.example.com",
    "HTTPS://relay.example.com/",
    "http://localhost:9000",
    "http://[::1]:8840",
    "Http://127.0.0.1",
]
BAD_HOSTS = {
    "": "must start with http:// or https://",
    "localhost": "must start with http:// or https://",
    "relay.example.com:443": "must start with http:// or https://",
    "ftp://a.example": "must start with http:// or https://",
    " http://127.0.0.1": "must start with http:// or https://",
    "http://": "must name a host after the scheme",
    "https:///": "must name a host after the scheme",
    "http://a.example/x": "must be a scheme and a host only",
    "http://127.0.0.1/relay": "must be a scheme and a host only",
    "http://a.example//": "must be a scheme and a host only",
    "http://a.example?x=1": "must be a scheme and a host only",
    "http://a.example#f": "must be a scheme and a host only",
    "http://u@a.example": "must be a scheme and a host only",
    "http://a .example": "must be a scheme and a host only",
    "http://a.example\n": "must be a scheme and a host only",
    "http://a\\b": "must be a scheme and a host only",
    "http://a\x7f": "must be a scheme and a host only",
}


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_server_host_the_relay_accepts(rai_dict, host):
    rai_dict["server"]["host"] = host
    assert RelayConfig.load(rai_dict).host == host


@pytest.mark.parametrize("host, problem", list(BAD_HOSTS.items()))
def test_server_host_the_relay_refuses(rai_dict, host, problem):
    rai_dict["server"]["host"] = host
    with pytest.raises(ConfigError) as e:
        RelayConfig.load(rai_dict)
    assert len(e.value.problems) == 1
    assert e.value.problems[0].startswith(f"server.host {problem}")
    assert "http://localhost" in e.value.problems[0] or "relay.example.com" in e.value.problems[0]


def test_rai_bytes_are_read_as_the_relay_reads_them(tmp_path, rai_dict):
    # The relay reads the file as strict UTF-8 and parses it with serde_json:
    # a byte order mark is a syntax error, an invalid UTF-8 byte is refused.
    text = json.dumps(rai_dict).encode("utf-8")
    p = tmp_path / "bom.rai"
    p.write_bytes(b"\xef\xbb\xbf" + text)
    with pytest.raises(ConfigError, match="byte order mark") as e:
        RelayConfig.from_file(p)
    assert KEY_A not in str(e.value)
    p = tmp_path / "latin1.rai"
    p.write_bytes(text.replace(b'"1.0.0"', b'"1.0.\xe9"'))
    with pytest.raises(ConfigError, match="not UTF-8") as e:
        RelayConfig.from_file(p)
    p = tmp_path / "ok.rai"
    p.write_bytes(text.replace(b'"1.0.0"', '"1.0.é"'.encode("utf-8")))
    assert RelayConfig.from_file(p).version == "1.0.é"
