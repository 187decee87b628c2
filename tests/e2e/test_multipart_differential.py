"""Differential test of the relay's multipart `model` reader.

The relay forwards a `multipart/form-data` body untouched (or with the
`model` field's value replaced under a forced model), so the model policy
holds only if every parser a provider might run reads the model the relay
read. This test sends a corpus of forms -- what the SDKs, browsers, curl and
Go write, adversarial variants meant to smuggle another `model`, and seeded
random byte mutations -- through a model-limited token to the mock's echo
route, and reads every form the relay forwarded with independent parsers:

- python-multipart, driven the way Starlette/FastAPI drive it (many
  OpenAI-compatible servers, vLLM among them, run on it);
- the standard library's `email` parser (`policy.HTTP`), as `cgi` did;
- Go's `mime/multipart` as `net/http`'s `ParseMultipartForm` uses it (a tiny
  program built at test time; skipped if `go` is missing).

Each must read exactly one `model` field, `whisper-1`, not a file -- or fail
to parse the form at all (a provider would then refuse it).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import email.utils
import json
import random
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

ALLOWED = "whisper-1"
OTHER = "gpt-4o-transcribe"
B = "d1ff3e7b0c5a4f21a9e8b7c6d5e4f3a2"  # httpx's shape: 32 hex digits
CT = f"multipart/form-data; boundary={B}"
AUDIO = b"RIFF" + bytes(range(256))  # binary, not UTF-8: any bytes a file may hold
CRLF = b"\r\n"
MODEL_CD = b'Content-Disposition: form-data; name="model"'
FILE_HEADERS = [b'Content-Disposition: form-data; name="file"; filename="a.wav"', b"Content-Type: audio/wav"]

# Parsers' verdict on one form: None if it refuses the form, else its fields
# as (name, value or None for a non-leaf part, is_file).
Fields = list[tuple[str, bytes | None, bool]] | None


@dataclass
class Case:
    name: str
    body: bytes
    content_type: str = CT
    boundary: str = B  # the boundary the relay should read (forced-model reconstruction)
    sdk: bool = False  # what a real client sends: the relay must forward it


# --------------------------------------------------------------------------
# Building forms


def httpx_form(data: dict, files: dict, boundary: str = B) -> tuple[bytes, str]:
    """A form exactly as httpx (and so the openai SDK) encodes it."""
    req = httpx.Request(
        "POST", "http://form.invalid/", data=data, files=files,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    return req.read(), req.headers["content-type"]


def part(headers: list[bytes], content: bytes, nl: bytes = CRLF) -> bytes:
    """One part's headers, blank line and content (no delimiters)."""
    return nl.join(headers) + nl + nl + content


def model_part(value: bytes | str = ALLOWED, cd: bytes = MODEL_CD, extra: list[bytes] = ()) -> bytes:
    value = value.encode() if isinstance(value, str) else value
    return part([cd, *extra], value)


FILE = part(FILE_HEADERS, AUDIO)


def assemble(
    parts: list[bytes],
    boundary: str = B,
    nl: bytes = CRLF,
    preamble: bytes = b"",
    epilogue: bytes = b"",
    close: bytes | None = None,
) -> bytes:
    """`--b NL part NL` for each part, then the close delimiter."""
    d = b"--" + boundary.encode()
    body = preamble + b"".join(d + nl + p + nl for p in parts)
    return body + (d + b"--" + nl if close is None else close) + epilogue


def form(*parts: bytes, **kw) -> bytes:
    return assemble(list(parts), **kw)


def okhttp_form(model: str) -> bytes:
    """OkHttp (Android; the Java/Kotlin SDKs) writes a Content-Length per part."""
    file = part([*FILE_HEADERS, f"Content-Length: {len(AUDIO)}".encode()], AUDIO)
    return form(file, model_part(model, extra=[f"Content-Length: {len(model)}".encode()]))


def sdk_cases() -> list[Case]:
    """What real clients write: the relay must forward all of these."""
    cases = []
    rng = random.Random(7)
    for i, (data, files) in enumerate(
        [
            ({"model": ALLOWED}, {"file": ("a.wav", AUDIO, "audio/wav")}),
            ({"model": ALLOWED, "response_format": "text"}, {"file": ("speech.mp3", AUDIO * 3, "audio/mpeg")}),
            ({"model": ALLOWED, "language": "fr", "temperature": "0.2", "prompt": "Bonjour, ça va ?"},
             {"file": ("émission.m4a", AUDIO, "audio/mp4")}),
            ({"model": ALLOWED, "timestamp_granularities[]": ["word", "segment"], "response_format": "verbose_json"},
             {"file": ("a.webm", AUDIO, None)}),
            ({"model": ALLOWED}, {"file": ("a.wav", b"", "audio/wav")}),
            ({"model": ALLOWED}, {"file": ("a b\"c.wav", AUDIO, "application/octet-stream")}),
        ]  # fmt: skip
    ):
        boundary = "".join(rng.choice("0123456789abcdef") for _ in range(32))
        body, ct = httpx_form(data, files, boundary)
        cases.append(Case(f"httpx #{i}", body, ct, boundary, sdk=True))
        # The same fields with the file first (the SDK's order depends on the call).
        req = httpx.Request("POST", "http://form.invalid/", files=[*files.items(), *((k, (None, v)) for k, v in data.items() if isinstance(v, str))],
                            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
        cases.append(Case(f"httpx file-first #{i}", req.read(), req.headers["content-type"], boundary, sdk=True))
    # Hand-written in the shapes of other clients.
    for who, boundary, model_headers, tail in [
        ("curl -F", "------------------------" + "3f6c2a1b9e8d7c60", [MODEL_CD], CRLF),
        ("browser FormData", "----WebKitFormBoundary7MA4YWxkTrZu0gW", [MODEL_CD], CRLF),
        ("undici FormData", "----formdata-undici-0" + "12345678901", [MODEL_CD], CRLF),
        ("Go mime/multipart", "a" * 8 + "0123456789abcdef" * 3 + "b" * 4, [MODEL_CD], CRLF),
        ("text/plain field", B, [MODEL_CD, b"Content-Type: text/plain; charset=utf-8"], CRLF),
        ("unquoted name, no final CRLF", B, [b"Content-Disposition: form-data; name=model"], b""),
        ("lower-case header names", B, [b'content-disposition: form-data; name="model"'], CRLF),
    ]:
        body = form(part(FILE_HEADERS, AUDIO), part(model_headers, ALLOWED.encode()), boundary=boundary,
                    close=b"--" + boundary.encode() + b"--" + tail)  # fmt: skip
        cases.append(Case(who, body, f"multipart/form-data; boundary={boundary}", boundary, sdk=True))
    cases.append(Case("OkHttp", okhttp_form(ALLOWED), sdk=True))
    # Apache HttpClient's text body, given UTF-8: an identity transfer encoding.
    apache_model = model_part(extra=[b"Content-Type: text/plain; charset=UTF-8", b"Content-Transfer-Encoding: 8bit"])
    cases.append(Case("Apache HttpClient (UTF-8)", form(FILE, apache_model), sdk=True))
    cases.append(Case("quoted boundary param", form(FILE, model_part()), f'multipart/form-data; boundary="{B}"', sdk=True))
    cases.append(Case("charset param first", form(FILE, model_part()), f"multipart/form-data; charset=utf-8; boundary={B}", sdk=True))
    cases.append(Case("model only", form(model_part()), sdk=True))
    return cases


def smuggle(value: str = OTHER) -> bytes:
    """A second, well-formed model part: what a smuggler hides somewhere."""
    return model_part(value)


def adversarial_cases() -> list[Case]:
    """Forms meant to make some parser read another or a second `model`."""
    d = b"--" + B.encode()
    c: list[Case] = []

    def add(name: str, body: bytes, ct: str = CT, boundary: str = B) -> None:
        c.append(Case(name, body, ct, boundary))

    # Line ends.
    for nl_name, nl in [("bare LF", b"\n"), ("CR only", b"\r"), ("LF CR", b"\n\r")]:
        lf_model = part([MODEL_CD], OTHER.encode(), nl)
        add(f"{nl_name} everywhere", assemble([part(FILE_HEADERS, AUDIO, nl), lf_model], nl=nl))
        add(f"{nl_name} headers in the model part", form(FILE, part([MODEL_CD], OTHER.encode(), nl)))
        hidden = AUDIO + nl + d + nl + lf_model
        add(f"{nl_name} delimiter inside the file", form(part(FILE_HEADERS, hidden), model_part()))
        add(f"{nl_name} delimiter inside the model", form(FILE, model_part(ALLOWED.encode() + nl + d + nl + lf_model)))
        add(f"{nl_name} close delimiter", form(FILE, model_part(), close=d + b"--" + nl))
        add(f"{nl_name} after the first delimiter", d + nl + form(model_part())[len(d) + 2 :])
    add("CRLF then bare LF in one header block", form(part([b"Content-Type: text/plain\n" + MODEL_CD], ALLOWED.encode())))
    # Preamble and epilogue.
    for pre in [b"hello\r\n", b"\r\n", CRLF + d + CRLF + smuggle() + CRLF, d + b"x" + CRLF + smuggle() + CRLF, b" "]:
        add(f"preamble {pre[:24]!r}", form(FILE, model_part(), preamble=pre))
    for epi in [b"more", CRLF, CRLF + CRLF, CRLF + d + CRLF + smuggle() + CRLF + d + b"--" + CRLF,
                d + CRLF + smuggle() + CRLF + d + b"--"]:  # fmt: skip
        add(f"epilogue {epi[:24]!r}", form(FILE, model_part(), epilogue=epi))
    # Duplicate or look-alike names.
    add("two model fields, allowed first", form(FILE, model_part(), smuggle()))
    add("two model fields, allowed last", form(FILE, smuggle(), model_part()))
    add("two allowed model fields", form(FILE, model_part(), model_part()))
    for name in [b'"Model"', b'"MODEL"', b"model", b"'model'", b'"mo\\"del"', b'"model\\\\"', b'"mo\\del"',
                 b'"model "', b'" model"', b'"model\x00"', b'"model\x00x"', b'"mod%65l"', b'"model"x', b'"mod"el',
                 b'"model', b"model\"", b'""', b'"model"; name="file"', b'"file"; name="model"',
                 b'"model";name="model"', b"\"model\"\t", "\"modèle\"".encode()]:  # fmt: skip
        cd = b"Content-Disposition: form-data; name=" + name
        add(f"name={name!r}, allowed value", form(FILE, model_part(cd=cd)))
        add(f"name={name!r}, other value, with an allowed field", form(FILE, model_part(OTHER, cd=cd), model_part()))
    for cd in [b"Content-Disposition: form-data; name*=UTF-8''model",
               b"Content-Disposition: form-data; name=\"file\"; name*=UTF-8''model",
               b"Content-Disposition: form-data; name=\"model\"; name*=UTF-8''x",
               b"Content-Disposition: form-data; name*0=mo; name*1=del",
               b"Content-Disposition: form-data; name=\"file\"; name*0=model",
               b"Content-Disposition: form-data; name=\"file\"; name*0*=UTF-8''model",
               b"Content-Disposition: form-data; Name=\"model\"",
               b"Content-Disposition: form-data; NAME=model",
               b"Content-Disposition: form-data; name = \"model\"",
               b"Content-Disposition: form-data;name=\"model\"",
               b"Content-Disposition: FORM-DATA; name=\"model\"",
               b"Content-Disposition: form-data ; name=\"model\"",
               b"Content-Disposition: form-data; name=\"model\";",
               b"Content-Disposition: form-data; x=\"a;name=model\"",
               b"Content-Disposition: form-data; x=\"a; name=\\\"x\\\"\"; name=\"model\"",
               b"Content-Disposition: attachment; name=\"model\"",
               b"Content-Disposition: form-data; name=\"model\"; filename=\"m.txt\"",
               b"Content-Disposition: form-data; name=\"model\"; filename=\"\"",
               b"Content-Disposition: form-data; name=\"model\"; filename*=UTF-8''m",
               b"Content-Disposition:form-data; name=\"model\"",
               b"Content-Disposition : form-data; name=\"model\"",
               b"Content-Disposition:  form-data;   name=\"model\"  ",
               b"content-DISPOSITION: form-data; name=\"model\""]:  # fmt: skip
        add(f"disposition {cd[21:]!r}, allowed value", form(FILE, model_part(cd=cd)))
        add(f"disposition {cd[21:]!r}, other value, with an allowed field", form(FILE, model_part(OTHER, cd=cd), model_part()))
    # Header folding and repeated headers.
    for fold in [b"\r\n ", b"\r\n\t", b"\n ", b"\r\n  \t"]:
        add(f"folded model disposition {fold!r}", form(FILE, part([b"Content-Disposition: form-data;" + fold + b'name="model"'], ALLOWED.encode())))
        add(f"folded file disposition hiding a name {fold!r}",
            form(part([b'Content-Disposition: form-data; name="file"' + fold + b'; name="model"', b"Content-Type: audio/wav"], OTHER.encode()), model_part()))  # fmt: skip
        add(f"folded line after the model disposition {fold!r}", form(part([MODEL_CD + fold + b"x"], ALLOWED.encode())))
    add("two dispositions, model second", form(part([b'Content-Disposition: form-data; name="prompt"', MODEL_CD], OTHER.encode()), model_part()))
    add("two dispositions, model first", form(part([MODEL_CD, b'Content-Disposition: form-data; name="prompt"'], OTHER.encode()), model_part()))
    add("two model dispositions", form(part([MODEL_CD, MODEL_CD], ALLOWED.encode())))
    add("two content types on the model", form(part([MODEL_CD, b"Content-Type: text/plain", b"Content-Type: text/html"], ALLOWED.encode())))
    # Encodings and content types on the model part.
    qp_other = b"".join(b"=%02X" % ch for ch in OTHER.encode())
    for cte, value in [(b"base64", base64.b64encode(OTHER.encode())), (b"base64", base64.b64encode(ALLOWED.encode())),
                       (b"quoted-printable", qp_other), (b"quoted-printable", ALLOWED.encode()), (b"8bit", ALLOWED.encode()),
                       (b"binary", ALLOWED.encode()), (b"7bit", ALLOWED.encode())]:  # fmt: skip
        add(f"Content-Transfer-Encoding {cte!r} {value[:12]!r}", form(FILE, model_part(value, extra=[b"Content-Transfer-Encoding: " + cte])))
        add(f"Content-Transfer-Encoding {cte!r} {value[:12]!r} after an allowed field",
            form(FILE, model_part(), part([b'Content-Disposition: form-data; name="prompt"', b"Content-Transfer-Encoding: " + cte], value)))  # fmt: skip
    for ctype in [b"text/plain; charset=utf-16", b"text/plain; charset=utf-7", b"text/plain; charset=cp500",
                  b"application/octet-stream", b"message/rfc822",
                  b"multipart/mixed; boundary=zz", b"multipart/form-data; boundary=zz"]:  # fmt: skip
        add(f"model Content-Type {ctype!r}", form(FILE, model_part(extra=[b"Content-Type: " + ctype])))
        nested = b"--zz\r\n" + part([MODEL_CD], OTHER.encode()) + b"\r\n--zz--"
        add(f"model Content-Type {ctype!r} with a nested form",
            form(FILE, part([MODEL_CD, b"Content-Type: " + ctype], ALLOWED.encode() + b"\r\n" + nested)))  # fmt: skip
    # Boundaries in content, padded, prefixed, closed early or never.
    add("boundary inside the file content", form(part(FILE_HEADERS, AUDIO + d + CRLF + smuggle()), model_part()))
    add("boundary prefix + extra chars after CRLF in the file",
        form(part(FILE_HEADERS, AUDIO + CRLF + d + b"x" + CRLF + smuggle()), model_part()))  # fmt: skip
    add("boundary prefix + extra chars as a delimiter", assemble([FILE, model_part()]).replace(d + CRLF, d + b"X" + CRLF, 1))
    for pad in [b" ", b"\t", b"  \t ", b"\x0b", b"\x0c"]:
        add(f"padding {pad!r} after the first delimiter", form(FILE, model_part()).replace(d + CRLF, d + pad + CRLF, 1))
        add(f"padding {pad!r} after every delimiter", form(FILE, model_part()).replace(d + CRLF, d + pad + CRLF))
        add(f"padding {pad!r} after the close delimiter", form(FILE, model_part(), close=d + b"--" + pad + CRLF))
        add(f"padding {pad!r} before the model delimiter", form(part(FILE_HEADERS, AUDIO + pad), model_part()))
    add("close delimiter in the middle", form(FILE, model_part()) + d + CRLF + smuggle() + CRLF + d + b"--" + CRLF)
    add("close delimiter then a model part", form(model_part(), close=d + b"--" + CRLF + d + CRLF + smuggle() + CRLF + d + b"--"))
    add("no close delimiter", assemble([FILE, model_part()], close=b""))
    add("no close delimiter, ends at the model", assemble([FILE], close=b"") + d + CRLF + model_part())
    add("close without its dashes", form(FILE, model_part(), close=d + CRLF))
    add("close with three dashes", form(FILE, model_part(), close=d + b"---" + CRLF))
    add("close then garbage", form(FILE, model_part(), close=d + b"--garbage"))
    add("close then blank lines", form(FILE, model_part(), close=d + b"--\r\n\r\n"))
    add("no parts at all", d + b"--" + CRLF)
    add("empty body", b"")
    add("a part without headers", d + CRLF + ALLOWED.encode() + CRLF + d + b"--")
    add("a part with headers but no blank line", d + CRLF + MODEL_CD + CRLF + d + b"--")
    add("CRLF between parts", form(FILE, model_part()).replace(CRLF + d + CRLF, CRLF + CRLF + d + CRLF, 1))
    # The Content-Type of the request.
    body = form(FILE, model_part())
    other = "e2b7c0de9a"
    # `both` is a form under B whose file holds a whole form under `other`.
    both = form(model_part(), part(FILE_HEADERS, b"--" + other.encode() + CRLF + smuggle() + CRLF + b"--" + other.encode() + b"--"))
    for ct in [f"multipart/form-data; boundary={B}; boundary={other}", f"multipart/form-data; boundary={other}; boundary={B}",
               f"multipart/form-data; Boundary={B}", f"multipart/form-data; BOUNDARY={B}",
               f"Multipart/Form-Data; boundary={B}", f"multipart/form-data;boundary={B}",
               f"multipart/form-data; boundary = {B}",
               f"multipart/form-data; boundary=\"{B}\"; boundary={other}",
               f"multipart/form-data; boundary={B}; boundary*=UTF-8''{other}",
               f"multipart/form-data; boundary*=UTF-8''{other}; boundary={B}",
               f"multipart/form-data; boundary*0={other}; boundary={B}",
               f"multipart/form-data; x=\"; boundary={other}\"; boundary={B}",
               f"multipart/form-data; x=\"a\\\"; boundary={other}\"; boundary={B}",
               f"multipart/form-data; boundary=\"{B}\\\"\"",
               f"multipart/form-data; charset=utf-16; boundary={B}",
               f"multipart/form-data; boundary={B}; charset=utf-8",
               f"multipart/form-data; boundary={B};", f"multipart/form-data; ; boundary={B}",
               f"multipart/form-data, multipart/form-data; boundary={other}; boundary={B}",
               f"multipart/mixed; boundary={B}", f"multipart/form-data ; boundary={B}",
               f"multipart/form-data; boundary={B}, multipart/form-data; boundary={other}"]:  # fmt: skip
        add(f"content type {ct!r}", body, ct)
        add(f"content type {ct!r}, form within a form", both, ct)
    # Values and sizes.
    for value in [b"", b" whisper-1", b"whisper-1 ", b"whisper-1\r\n", b"\r\nwhisper-1", b"whisper-1\x00", b"whisper-1\x00" + OTHER.encode(),
                  b"whisper-\xe9", b"\xef\xbb\xbfwhisper-1", b"\xffwhisper-1", OTHER.encode(), "whisper‑1".encode()]:  # fmt: skip
        add(f"model value {value!r}", form(FILE, model_part(value)))
    add("NUL in a header name", form(FILE, part([b"Content-Disposition\x00: form-data; name=\"model\""], ALLOWED.encode())))
    add("NUL in the file's disposition", form(part([b'Content-Disposition: form-data; name="file\x00"; filename="a"'], AUDIO), model_part()))
    add("header without a colon", form(part([MODEL_CD, b"X-Junk"], ALLOWED.encode())))
    add("extra header on the model part", form(part([MODEL_CD, b"X-Junk: 1"], ALLOWED.encode())))
    add("non-UTF-8 header in the file part", form(part([FILE_HEADERS[0], b"X-Junk: \xff"], AUDIO), model_part()))
    long = b"x" * 10_000
    add("very long disposition on the model", form(FILE, model_part(cd=MODEL_CD + b'; x="' + long + b'"')))
    add("very long disposition on the file", form(part([FILE_HEADERS[0] + b'; x="' + long + b'"'], AUDIO), model_part()))
    add("very long extra header on the file", form(part([*FILE_HEADERS, b"X-Pad: " + long], AUDIO), model_part()))
    add("many headers on the file", form(part([*FILE_HEADERS, *(b"X-Pad-%d: 1" % i for i in range(40))], AUDIO), model_part()))
    add("many parts", form(*(part([b'Content-Disposition: form-data; name="p%d"' % i], b"v") for i in range(300)), model_part()))
    add("a file named model", form(part([b'Content-Disposition: form-data; name="model"; filename="whisper-1"'], ALLOWED.encode())))
    add("a file named model, and a model field", form(part([b'Content-Disposition: form-data; name="model"; filename="x"'], OTHER.encode()), model_part()))
    return c


MUTATION_BYTES = b"\r\n-\";:= \t\\*xX\x00\xff" + B[:3].encode()


def mutate(body: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random flip, insertion or deletion of a single byte."""
    at = rng.randrange(len(body))
    byte = rng.choice(MUTATION_BYTES) if rng.random() < 0.7 else rng.randrange(256)
    match rng.choice(["flip", "insert", "delete"]):
        case "flip":
            return f"flip {at} to {byte:#04x}", body[:at] + bytes([byte]) + body[at + 1 :]
        case "insert":
            return f"insert {byte:#04x} at {at}", body[:at] + bytes([byte]) + body[at:]
        case _:
            return f"delete {at}", body[:at] + body[at + 1 :]


def mutation_cases(base: bytes, count: int, seed: int) -> list[Case]:
    rng = random.Random(seed)
    return [Case(f"mutation {what}", body) for what, body in (mutate(base, rng) for _ in range(count))]


# A small form (so mutations often land on structure) with a smuggling-
# friendly neighbour: a text field and a short file.
SMALL = form(part([b'Content-Disposition: form-data; name="file"; filename="a"'], b"RIFF\x00"),
             model_part(), part([b'Content-Disposition: form-data; name="language"'], b"en"))  # fmt: skip


def corpus() -> list[Case]:
    return [*sdk_cases(), *adversarial_cases(), *mutation_cases(SMALL, 1500, seed=20240611)]


# --------------------------------------------------------------------------
# Independent readers


def read_with_python_multipart(content_type: str, body: bytes) -> Fields:
    """python-multipart's MultipartParser with Starlette's callbacks: header
    names lower-cased, the last Content-Disposition wins, `name` required."""
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        return None
    fields: list[tuple[str, bytes | None, bool]] = []
    headers: list[tuple[bytes, bytes]] = []
    cur = {"field": b"", "value": b"", "data": b""}
    meta: dict = {}

    def on_part_begin():
        headers.clear()
        cur["data"] = b""

    def on_header_field(data, start, end):
        cur["field"] += data[start:end]

    def on_header_value(data, start, end):
        cur["value"] += data[start:end]

    def on_header_end():
        headers.append((cur["field"].lower(), cur["value"]))
        cur["field"] = cur["value"] = b""

    def on_headers_finished():
        disposition = b""
        for key, value in headers:
            if key == b"content-disposition":
                disposition = value
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            raise FormParserError('The Content-Disposition header field "name" must be provided.')
        meta["name"] = options[b"name"].decode("utf-8", "surrogateescape")
        meta["file"] = b"filename" in options

    def on_part_data(data, start, end):
        cur["data"] += data[start:end]

    def on_part_end():
        fields.append((meta["name"], cur["data"], meta["file"]))

    callbacks = {k: v for k, v in locals().items() if k.startswith("on_")}
    parser = MultipartParser(params[b"boundary"], callbacks)
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError:
        return None
    return fields


def read_with_email(content_type: str, body: bytes) -> Fields:
    """The standard library's email parser (what `cgi` was built on)."""
    try:
        head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        if not msg.is_multipart():
            return None
        fields = []
        for p in msg.iter_parts():
            name = p.get_param("name", header="content-disposition")
            if name is None:
                continue
            name = email.utils.collapse_rfc2231_value(name)
            value = None if p.is_multipart() else p.get_payload(decode=True)
            fields.append((name, value, p.get_param("filename", header="content-disposition") is not None))
        return fields
    except Exception:  # a parser that crashes refuses the form
        return None


GO_READER = r"""
// Reads forms as net/http's Request.ParseMultipartForm does: one JSON line
// {"ct": ..., "body": base64} in, one {"err"} or {"values", "files"} out.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"mime"
	"mime/multipart"
	"os"
)

type input struct {
	CT   string `json:"ct"`
	Body string `json:"body"`
}

type output struct {
	Err    string              `json:"err,omitempty"`
	Values map[string][]string `json:"values,omitempty"` // base64 values
	Files  map[string]int      `json:"files,omitempty"`
}

func read(in input) (output, error) {
	body, err := base64.StdEncoding.DecodeString(in.Body)
	if err != nil {
		return output{}, err
	}
	mt, params, err := mime.ParseMediaType(in.CT)
	if err != nil {
		return output{}, err
	}
	boundary, ok := params["boundary"]
	if mt != "multipart/form-data" || !ok {
		return output{}, errors.New("not a form")
	}
	form, err := multipart.NewReader(bytes.NewReader(body), boundary).ReadForm(32 << 20)
	if err != nil {
		return output{}, err
	}
	defer form.RemoveAll()
	out := output{Values: map[string][]string{}, Files: map[string]int{}}
	for k, vs := range form.Value {
		for _, v := range vs {
			out.Values[k] = append(out.Values[k], base64.StdEncoding.EncodeToString([]byte(v)))
		}
	}
	for k, fs := range form.File {
		out.Files[k] = len(fs)
	}
	return out, nil
}

func main() {
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	enc := json.NewEncoder(os.Stdout)
	for sc.Scan() {
		var in input
		if err := json.Unmarshal(sc.Bytes(), &in); err != nil {
			panic(err)
		}
		out, err := read(in)
		if err != nil {
			out = output{Err: err.Error()}
		}
		if err := enc.Encode(out); err != nil {
			panic(err)
		}
	}
}
"""


@pytest.fixture(scope="module")
def go_reader(tmp_path_factory):
    """The Go reader, built from the standard library only (no network)."""
    go = shutil.which("go")
    if go is None:
        return None
    src = tmp_path_factory.mktemp("go-multipart")
    (src / "main.go").write_text(GO_READER)
    env = {"PATH": str(Path(go).parent), "HOME": str(src), "GOCACHE": str(src / "cache"),
           "GOPATH": str(src / "gopath"), "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "", "CGO_ENABLED": "0"}  # fmt: skip
    out = subprocess.run([go, "build", "-o", str(src / "reader"), "main.go"], cwd=src, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, f"go build failed: {out.stderr}"
    return src / "reader"


def read_with_go(reader: Path, forms: list[tuple[str, bytes]]) -> list[Fields]:
    """Every form through one run of the Go reader."""
    lines = "".join(json.dumps({"ct": ct, "body": base64.b64encode(b).decode()}) + "\n" for ct, b in forms)
    out = subprocess.run([str(reader)], input=lines, capture_output=True, text=True, timeout=120, check=True)
    results: list[Fields] = []
    for line in out.stdout.splitlines():
        r = json.loads(line)
        if "err" in r:
            results.append(None)
            continue
        fields = [(k, base64.b64decode(v), False) for k, vs in r.get("values", {}).items() for v in vs]
        fields += [(k, None, True) for k, n in r.get("files", {}).items() for _ in range(n)]
        results.append(fields)
    assert len(results) == len(forms)
    return results


def reads_one_model(fields: Fields, want: str) -> bool:
    """The property: the parser refused the form, or it reads exactly one
    field whose name is (even loosely) `model`, named exactly so, not a
    file, holding `want`."""
    if fields is None:
        return True
    models = [f for f in fields if f[0].strip().casefold() == "model"]
    return len(models) == 1 and models[0] == ("model", want.encode(), False)


# --------------------------------------------------------------------------
# Through the relay


def send_all(relay, token: str, cases: list[Case]) -> list[httpx.Response]:
    url = f"{relay.token_url(token)}echo/audio/transcriptions"
    with httpx.Client(timeout=30) as http:
        return [http.post(url, content=c.body, headers={"Content-Type": c.content_type}) for c in cases]


def check_status(case: Case, resp: httpx.Response) -> bool:
    """True if forwarded; a refusal must be the policy's own."""
    if resp.status_code == 200:
        return True
    code = resp.json().get("error", {}).get("code")
    assert (resp.status_code, code) in {(400, "invalid_body"), (403, "model_not_allowed")}, (case.name, resp.status_code, resp.text)
    assert not case.sdk, f"the relay refused what a client sends: {case.name}: {resp.text}"
    return False


def forwarded_body(case: Case, echo: dict) -> bytes:
    """The exact bytes the relay forwarded under a forced model. The echo
    gives them as lossy UTF-8, so they are the sent form with one field's
    value replaced (or a model field added first) that matches it."""
    sent = case.body
    d = b"\r\n--" + case.boundary.encode()
    added = b"--" + case.boundary.encode() + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + ALLOWED.encode() + CRLF
    candidates = {added + sent}
    at = sent.find(b"\r\n\r\n")
    while at != -1:
        start = at + 4
        end = sent.find(d, start)
        if end != -1:
            replaced = sent[:start] + ALLOWED.encode() + sent[end:]
            candidates.add(replaced)
            # The relay also rewrites that part's own Content-Length.
            head_start = max(0, sent.rfind(b"\r\n--" + case.boundary.encode(), 0, at))
            old_len = f"Content-Length: {end - start}".encode()
            if sent.find(old_len, head_start, at) != -1:
                i = sent.find(old_len, head_start, at)
                new_len = f"Content-Length: {len(ALLOWED)}".encode()
                candidates.add(replaced[:i] + new_len + replaced[i + len(old_len) :])
        at = sent.find(b"\r\n\r\n", start)
    matching = [c for c in candidates if len(c) == echo["body_len"] and c.decode("utf-8", "replace") == echo["body"]]
    assert len(matching) == 1, f"{case.name}: cannot tell what was forwarded ({len(matching)} candidates)"
    return matching[0]


def run_differential(relay, go_reader, token: str, cases: list[Case], forced: bool) -> Counter:
    responses = send_all(relay, token, cases)
    forwarded: list[tuple[Case, bytes]] = []
    for case, resp in zip(cases, responses):
        if not check_status(case, resp):
            continue
        echo = resp.json()
        assert echo["path"] == "/v1/echo/audio/transcriptions", echo["path"]
        if forced:
            body = forwarded_body(case, echo)
        else:
            # Untouched: the echo's lossy text is what was sent.
            assert echo["body_len"] == len(case.body), case.name
            assert echo["body"] == case.body.decode("utf-8", "replace"), case.name
            body = case.body
        forwarded.append((case, body))

    readers = {
        "python-multipart": [read_with_python_multipart(c.content_type, b) for c, b in forwarded],
        "email": [read_with_email(c.content_type, b) for c, b in forwarded],
    }
    if go_reader is not None:
        readers["go mime/multipart"] = read_with_go(go_reader, [(c.content_type, b) for c, b in forwarded])
    stats = Counter(cases=len(cases), forwarded=len(forwarded), refused=len(cases) - len(forwarded))
    failures = []
    for name, results in readers.items():
        for (case, body), fields in zip(forwarded, results):
            stats[f"{name}: {'refused' if fields is None else 'read one model'}"] += 1
            if not reads_one_model(fields, ALLOWED):
                failures.append(f"{name} on {case.name!r} ({case.content_type}): {fields!r:.300}\n  body {body[:400]!r}")
            if case.sdk:
                assert fields is not None, f"{name} refused what a client sends: {case.name}"
    print(f"\n{'forced' if forced else 'models'} pass:", dict(stats))
    assert not failures, f"{len(failures)} parser differentials:\n" + "\n".join(failures[:40])
    return stats


def test_forwarded_forms_read_the_same_model_in_every_parser(relay, go_reader):
    if go_reader is None:
        print("go not found: skipping the Go mime/multipart reader")
    cases = corpus()
    stats = run_differential(relay, go_reader, relay.mint(models=[ALLOWED]), cases, forced=False)
    sdk = [c for c in cases if c.sdk]
    assert stats["forwarded"] >= len(sdk)  # check_status asserted each was forwarded
    # The corpus is adversarial: most of it must be refused, yet not all.
    assert stats["refused"] > len(cases) // 2, stats


def test_a_forced_model_is_what_every_parser_reads(relay, go_reader):
    base = [*sdk_cases(), *adversarial_cases()]
    # The same forms, naming another model: the relay replaces it.
    other = [Case(c.name, c.body.replace(ALLOWED.encode(), OTHER.encode()), c.content_type, c.boundary, c.sdk) for c in base]
    # A client computes its part lengths for the model it names.
    other = [Case(c.name, okhttp_form(OTHER), sdk=True) if c.name == "OkHttp" else c for c in other]
    without = [Case("no model field", form(FILE), sdk=True)]
    small = SMALL.replace(ALLOWED.encode(), OTHER.encode())
    cases = [*other, *without, *mutation_cases(small, 600, seed=99)]
    stats = run_differential(relay, go_reader, relay.mint(model=ALLOWED), cases, forced=True)
    assert stats["forwarded"] >= sum(c.sdk for c in cases)
