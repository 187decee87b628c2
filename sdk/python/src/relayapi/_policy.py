"""The policy claims of token v2 (docs/token-format.md §4.1): their grammar,
checked before minting, with messages that say what to fix.

* list claims — ``origins``, ``ips``, ``paths``, ``methods``: a non-empty
  list of distinct, non-empty strings, each inside its grammar
  (:func:`origin_problem`, :func:`ip_problem`, :func:`path_problem`,
  :func:`method_problem`);
* integer limits — ``rps``, ``burst``, ``concurrency``, ``max_tokens``,
  ``max_body_bytes``: integers ≥ 1 (``burst`` only with ``rps``).

The relay refuses a token whose claims break these rules (``token_invalid``,
with no reason given), so the SDK refuses to mint one — and, unlike the
relay, explains. The verdicts mirror the reference implementation
(``crates/token/src/scope.rs``): each checker follows the Rust control flow
and returns a reason where the Rust parser returns ``None`` (a few earlier
exits, such as a ``/`` in an origin, only sharpen the message; they refuse
nothing Rust accepts). IP addresses are parsed by a port of Rust's
``core::net`` parser rather than :mod:`ipaddress`, which accepts forms the
relay does not (zone ids) — the point is to agree with the relay, not with
another library. ``sdk/testdata/policy-claims.json`` holds the corpus both
SDKs and the relay binary are tested against.

Every checker returns ``None`` for a valid item, else a sentence fragment.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = [
    "LIST_CLAIMS",
    "LIMIT_CLAIMS",
    "origin_problem",
    "ip_problem",
    "path_problem",
    "method_problem",
    "list_problem",
    "limit_problem",
]

_U64_MAX = 2**64 - 1
_DIGITS = "0123456789"
_HEX = "0123456789abcdefABCDEF"
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
#: RFC 3986 ``pchar`` without percent-encoding: unreserved, sub-delims, ':', '@'.
_PCHAR = _ALNUM | frozenset("-._~!$&'()*+,;=:@")


# -- IP addresses: a port of Rust's core::net parser --------------------------
#
# Each reader takes (text, position) and returns (value, new position) or
# None without consuming anything, like Rust's `read_atomically`.


def _read_number(
    s: str, i: int, radix: int, max_digits: int, allow_zero_prefix: bool
) -> Optional[Tuple[int, int]]:
    digits = _DIGITS if radix == 10 else _HEX
    limit = 0xFF if radix == 10 else 0xFFFF  # u8 octets, u16 groups
    start, value = i, 0
    while i < len(s) and s[i] in digits:
        value = value * radix + int(s[i], radix)
        i += 1
        if value > limit or i - start > max_digits:
            return None
    if i == start or (not allow_zero_prefix and s[start] == "0" and i - start > 1):
        return None
    return value, i


def _read_ipv4(s: str, i: int) -> Optional[Tuple[int, int]]:
    value = 0
    for k in range(4):
        if k > 0:
            if s[i : i + 1] != ".":
                return None
            i += 1
        octet = _read_number(s, i, 10, 3, False)  # no leading zeros (octal)
        if octet is None:
            return None
        value = value << 8 | octet[0]
        i = octet[1]
    return value, i


def _read_groups(s: str, i: int, limit: int) -> Tuple[List[int], int, bool]:
    """Up to ``limit`` ':'-separated hex groups, the last two of which may be
    an embedded IPv4 address. Returns (groups, position, ended_with_ipv4)."""
    groups: List[int] = []
    for k in range(limit):
        sep = 1 if k > 0 else 0
        if sep and s[i : i + 1] != ":":
            return groups, i, False
        if k < limit - 1:  # an IPv4 tail needs two group slots
            v4 = _read_ipv4(s, i + sep)
            if v4 is not None:
                groups += [v4[0] >> 16, v4[0] & 0xFFFF]
                return groups, v4[1], True
        group = _read_number(s, i + sep, 16, 4, True)
        if group is None:
            return groups, i, False
        groups.append(group[0])
        i = group[1]
    return groups, i, False


def _read_ipv6(s: str, i: int) -> Optional[Tuple[int, int]]:
    head, i, head_v4 = _read_groups(s, i, 8)
    if len(head) < 8:
        if head_v4 or s[i : i + 2] != "::":  # IPv4 only at the very end
            return None
        # `::` stands for at least one zero group.
        tail, i, _ = _read_groups(s, i + 2, 8 - (len(head) + 1))
        head = head + [0] * (8 - len(head) - len(tail)) + tail
    value = 0
    for g in head:
        value = value << 16 | g
    return value, i


def parse_ip(s: str) -> Optional[Tuple[int, int]]:
    """``(value, bits)`` with bits 32 or 128, or ``None``: Rust's
    ``IpAddr::from_str`` (IPv4 is tried first and, if it reads anything,
    decides)."""
    v4 = _read_ipv4(s, 0)
    if v4 is not None:
        return (v4[0], 32) if v4[1] == len(s) else None
    v6 = _read_ipv6(s, 0)
    return (v6[0], 128) if v6 is not None and v6[1] == len(s) else None


def _is_decimal(s: str) -> bool:
    """Digits only, no leading zero (except ``0`` itself)."""
    return bool(s) and all(c in _DIGITS for c in s) and (s == "0" or s[0] != "0")


def _why_not_an_address(addr: str) -> str:
    if addr.startswith("[") or addr.endswith("]"):
        return "write an IPv6 address without brackets, e.g. '2001:db8::1'"
    if "%" in addr:
        return "zone ids ('%eth0') are not allowed: write the address without it"
    if addr and all(c in _DIGITS or c == "." for c in addr):
        if any(len(o) > 1 and o[0] == "0" for o in addr.split(".")):
            return "IPv4 octets are written without leading zeros (e.g. 10.0.0.1, not 010.0.0.1)"
        return "an IPv4 address is four numbers 0-255 separated by '.' (e.g. 192.0.2.7)"
    if ":" not in addr and any(c in _ALPHA for c in addr):
        return "host names are not allowed: give an IP address or CIDR network, e.g. '192.0.2.0/24'"
    if addr != addr.strip():
        return "remove the spaces"
    return "not an IPv4 or IPv6 address (e.g. '192.0.2.7' or '2001:db8::1')"


def ip_problem(s: str) -> Optional[str]:
    """``address [ "/" prefix ]`` with zero host bits (``scope::IpNetwork``)."""
    addr, slash, prefix_text = s.partition("/")
    parsed = parse_ip(addr)
    if parsed is None:
        return _why_not_an_address(addr)
    value, bits = parsed
    family = "IPv4" if bits == 32 else "IPv6"
    prefix = bits
    if slash:
        if not (_is_decimal(prefix_text) and len(prefix_text) <= 3):
            return f"the prefix after '/' must be a number 0-{bits} without leading zeros or spaces"
        prefix = int(prefix_text)
        if prefix > bits:
            return f"prefix /{prefix} is too long for {family} (0-{bits})"
    host_mask = (1 << (bits - prefix)) - 1
    if value & host_mask:
        cls = ipaddress.IPv4Address if bits == 32 else ipaddress.IPv6Address
        network = cls(value & ~host_mask)
        return (
            f"has bits set beyond the /{prefix} prefix: write the network address "
            f"'{network}/{prefix}' (or the bare address '{addr}' for one host)"
        )
    return None


def mapped_ipv4_problem(s: str) -> Optional[str]:
    """A valid ``ips`` item that can never match, or ``None``: an IPv4-mapped
    IPv6 network (``::ffff:a.b.c.d``, prefix 96 or more). The relay accepts it
    in a token, but matches a client reported as ``::ffff:a.b.c.d`` as the
    IPv4 address (docs/token-format.md §4.1), so such an item matches
    nothing. Checked when minting only; the decoder, like the relay, accepts it."""
    addr, slash, prefix_text = s.partition("/")
    parsed = parse_ip(addr)
    if parsed is None or parsed[1] != 128:
        return None
    value = parsed[0]
    prefix = int(prefix_text) if slash else 128
    if prefix < 96 or value >> 32 != 0xFFFF:
        return None
    v4 = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    fixed = f"{v4}" if prefix == 128 else f"{v4}/{prefix - 96}"
    return (
        f"is an IPv4-mapped IPv6 address, which never matches: the relay matches IPv4 clients "
        f"(also those reported as '::ffff:a.b.c.d') as IPv4, so write {fixed!r}"
    )


# -- origins ------------------------------------------------------------------


def _is_scheme(s: str) -> bool:
    return bool(s) and s[0] in _ALPHA and all(c in _ALNUM or c in "+-." for c in s)


def _is_domain(s: str) -> bool:
    return bool(s) and all(label and all(c in _ALNUM or c == "-" for c in label) for label in s.split("."))


def _is_bracketed_ipv6(s: str) -> bool:
    if not (s.startswith("[") and s.endswith("]")) or len(s) < 2:
        return False
    v6 = _read_ipv6(s[1:-1], 0)
    return v6 is not None and v6[1] == len(s) - 2


def _is_port(s: str) -> bool:
    return _is_decimal(s) and len(s) <= 5 and 1 <= int(s) <= 65535


def _why_not_a_host(host: str) -> str:
    if "@" in host:
        return "an origin has no user info ('user@'): write scheme://host[:port]"
    if "*" in host:
        return "'*' is only allowed as the first label ('*.example.com' or 'https://*.example.com')"
    if any(c.isspace() for c in host):
        return "remove the spaces"
    if any(ord(c) > 127 for c in host):
        return "write the host in its ASCII (punycode) form, as browsers send it"
    if host.startswith("["):
        return "the IPv6 literal in brackets is not a valid IPv6 address"
    if not host:
        return "the host is missing"
    return "the host must be labels of letters, digits and '-' separated by '.' (no empty label)"


def origin_problem(s: str) -> Optional[str]:
    """An exact origin ``scheme://host[:port]`` or a subdomain wildcard
    ``[scheme://]*.domain[:port]`` (``scope::OriginPattern::parse``)."""
    if s == "*":
        return "'*' alone is not a pattern: leave origins out to allow any origin, or write '*.example.com'"
    scheme, sep, rest = s.partition("://")
    if not sep:
        scheme, rest = "", s
    elif not _is_scheme(scheme):
        return f"{scheme!r} is not a URL scheme (a letter, then letters, digits, '+', '-' or '.')"
    cut = min((rest.find(c) for c in "/?#" if c in rest), default=-1)
    if cut >= 0:  # no valid host or port contains these
        fixed = s[: len(s) - len(rest) + cut]
        return f"an origin has no path, query or fragment, not even a trailing '/': write {fixed!r}"
    # split_port: a ':' inside an IPv6 literal `[...]` is not a port separator.
    after_literal = 0
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            return "the IPv6 literal has no closing ']'"
        after_literal = close + 1
    colon = rest.rfind(":", after_literal)
    host, port = (rest, None) if colon < 0 else (rest[:colon], rest[colon + 1 :])
    if port is not None and not _is_port(port):
        return f"port {port!r} must be a number 1-65535 without leading zeros"
    if host.startswith("*."):
        if not _is_domain(host[2:]):
            if "*" in host[2:]:
                return _why_not_a_host(host[2:])
            return (
                "after '*.' comes a domain such as 'example.com': labels of letters, digits and '-' "
                "separated by '.', no trailing '.'"
            )
        return None
    if not sep:
        return (
            "an exact origin needs its scheme: write e.g. 'https://" + s + "', or '*." + s + "' for its subdomains"
        )
    if not (_is_domain(host) or _is_bracketed_ipv6(host)):
        return _why_not_a_host(host)
    return None


# -- paths and methods ----------------------------------------------------------


def path_problem(s: str) -> Optional[str]:
    """``/``-separated segments of plain ``pchar`` characters, none empty,
    ``.`` or ``..`` (``scope::is_path_prefix``)."""
    if not s:
        return "must not be empty"
    if s.startswith("/"):
        return f"paths are relative to the relay's base path: write {s.lstrip('/')!r} (no leading '/')"
    if s.endswith("/"):
        return f"write {s.rstrip('/')!r} (no trailing '/'; prefixes match whole segments anyway)"
    for seg in s.split("/"):
        if not seg:
            return "has an empty segment ('//')"
        if seg in (".", ".."):
            return "'.' and '..' segments are not allowed: write the path the relay should allow"
        bad = next((c for c in seg if c not in _PCHAR), None)
        if bad is not None:
            if bad == "%":
                return "percent-encoding is not allowed: write the decoded characters"
            if bad in "?#":
                return "a path prefix has no query or fragment"
            return (
                f"character {bad!r} is not allowed (only letters, digits and -._~!$&'()*+,;=:@ "
                "between the '/'s)"
            )
    return None


def method_problem(s: str) -> Optional[str]:
    """Upper-case ASCII letters (``scope::is_method``)."""
    if s and all(c in _UPPER for c in s):
        return None
    if s and all(c in _ALPHA for c in s):
        return f"methods are upper-case: write {s.upper()!r}"
    return "an HTTP method is upper-case letters only, e.g. 'GET' or 'POST'"


# -- the claims ---------------------------------------------------------------

#: List claims: item checker and an example for messages.
LIST_CLAIMS: Dict[str, Tuple[Callable[[str], Optional[str]], str]] = {
    "origins": (origin_problem, "['https://app.example.com']"),
    "ips": (ip_problem, "['192.0.2.0/24', '2001:db8::/32']"),
    "paths": (path_problem, "['chat/completions']"),
    "methods": (method_problem, "['POST']"),
}
#: Integer limits, each ≥ 1.
LIMIT_CLAIMS = ("rps", "burst", "concurrency", "max_tokens", "max_body_bytes")


def list_problem(name: str, value: Any, minting: bool = True) -> Optional[str]:
    """Checks one list claim; the message starts with ``name``. ``minting``
    adds the checks of items the relay accepts but that can never match
    (:func:`mapped_ipv4_problem`)."""
    check, example = LIST_CLAIMS[name]
    if isinstance(value, (set, frozenset)):
        return f"{name} must be a list, not a set: the order is part of the token, e.g. {example}"
    if not isinstance(value, (list, tuple)):
        return f"{name} must be a list of strings, e.g. {example} (a single value still needs a list)"
    if not value:
        return f"{name} must not be empty: leave it out (None) for no {name} restriction"
    seen: Dict[str, int] = {}
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            return f"{name}[{i}] must be a non-empty string (got {type(item).__name__} {item!r})"
        problem = check(item)
        if problem is not None:
            return f"{name}[{i}] {item!r} is invalid: {problem}"
        if minting and name == "ips":
            problem = mapped_ipv4_problem(item)
            if problem is not None:
                return f"{name}[{i}] {item!r} {problem}"
        if item in seen:
            return f"{name}[{i}] {item!r} repeats {name}[{seen[item]}]: remove the duplicate"
        seen[item] = i
    return None


def limit_problem(name: str, value: Any) -> Optional[str]:
    """Checks one integer limit; the message starts with ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        got = f"{type(value).__name__} {value!r}"
        return f"{name} must be an integer >= 1 (got {got}); leave it out (None) for no limit"
    if value < 1:
        return f"{name} must be an integer >= 1 (got {value}); leave it out (None) for no limit"
    if value > _U64_MAX:
        return f"{name} must be at most 2**64 - 1 (the relay's integer range)"
    return None
