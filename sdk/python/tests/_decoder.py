"""A test-only reference decoder for token v2 (docs/token-format.md §3–§6).

The SDK only mints; this decoder lets the tests check every vector's verdict
and round-trip what the SDK mints. Claim rules reuse the SDK's own
validation (``_normalise_claims``), so the vectors also prove the SDK refuses
to mint anything the relay would refuse.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Dict, List, Optional, Tuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relayapi import InvalidArgumentError
from relayapi._constants import CLAIM_ORDER, MAX_TOKEN_LEN
from relayapi._token import canonical_claims_json, derive_content_key, key_id, _normalise_claims

LEEWAY = 60
_ALPHABET = re.compile(r"\A[A-Za-z0-9_-]*\Z")


class Invalid(Exception):
    pass


def _b64(seg: str) -> bytes:
    if not _ALPHABET.match(seg) or len(seg) % 4 == 1:
        raise Invalid
    data = base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != seg:
        raise Invalid  # non-canonical (non-zero unused bits)
    return data


def _unique(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise Invalid
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise Invalid


def _json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_unique, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError):
        raise Invalid from None


def decode(token: str, aes_key_hex: str, now: int) -> Tuple[str, Optional[Dict[str, Any]]]:
    """Returns (verdict, claims) where verdict is ``ok`` or an error code."""
    try:
        claims = _open(token, aes_key_hex)
    except Invalid:
        return "token_invalid", None
    if now >= claims["exp"]:
        return "token_expired", None
    if claims.get("nbf", now) > now + LEEWAY or claims["iat"] > now + LEEWAY:
        return "token_not_yet_valid", None
    return "ok", claims


def _open(token: str, aes_key_hex: str) -> Dict[str, Any]:
    if len(token.encode()) > MAX_TOKEN_LEN:
        raise Invalid
    parts = token.split(".")
    if len(parts) != 5 or parts[1] != "" or not all(parts[i] for i in (0, 2, 3, 4)):
        raise Invalid
    header_seg, _, iv_seg, ct_seg, tag_seg = parts
    header = _json(_b64(header_seg))
    if not isinstance(header, dict) or "zip" in header or "crit" in header:
        raise Invalid
    if header.get("alg") != "dir" or header.get("enc") != "A256GCM":
        raise Invalid
    content_key = derive_content_key(bytes.fromhex(aes_key_hex))
    if not isinstance(header.get("kid"), str) or header["kid"] != key_id(content_key):
        raise Invalid
    iv, ct, tag = _b64(iv_seg), _b64(ct_seg), _b64(tag_seg)
    if len(iv) != 12 or len(tag) != 16:
        raise Invalid
    try:
        plaintext = AESGCM(content_key).decrypt(iv, ct + tag, header_seg.encode("ascii"))
    except InvalidTag:
        raise Invalid from None
    claims = _json(plaintext)
    if not isinstance(claims, dict):
        raise Invalid
    if any(claims[name] is None for name in CLAIM_ORDER if name in claims):
        raise Invalid  # optional claims are omitted, never null
    try:
        _normalise_claims(claims, minting=False)  # the relay accepts what can never match
    except InvalidArgumentError:
        raise Invalid from None
    return claims


def effective_model(claims: Dict[str, Any]) -> Optional[str]:
    """``model``, else the string value of ``ext_info``'s last top-level
    ``rep_m`` (docs/token-format.md §4). ``ext_info`` must be standard JSON:
    ``json.loads`` alone would also take ``NaN``/``Infinity``, which
    ``JSON.parse`` and the relay refuse (no model then)."""
    if "model" in claims:
        return claims["model"]
    try:
        ext = json.loads(claims.get("ext_info", ""), parse_constant=_no_constants)
    except (ValueError, Invalid):
        return None
    if isinstance(ext, dict) and isinstance(ext.get("rep_m"), str):
        return ext["rep_m"]
    return None


def canonical(claims: Dict[str, Any]) -> str:
    return canonical_claims_json(claims)
