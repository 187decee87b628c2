"""Every constant the SDK uses, in one place (token format v2, defaults, URLs)."""

from __future__ import annotations

from typing import Dict, Tuple

# -- Defaults (same names and values in every RelayAPI SDK) -----------------

#: Config file used when ``RelayAPIClient()`` is given no config.
DEFAULT_CONFIG_PATH = "default.rai"
#: Provider used when ``create_token`` is given none.
DEFAULT_PROVIDER = "openai"
#: Token lifetime used when ``create_token`` is given none (1 hour).
DEFAULT_EXPIRE_SECONDS = 3600
#: HTTP timeout (seconds) for ``health_check`` and the relayed API calls.
DEFAULT_TIMEOUT = 60.0

# -- Token format v2 (docs/token-format.md) ---------------------------------

#: HKDF-SHA256 ``info`` for the content key (§2).
HKDF_INFO = b"relayapi token v2"
#: Content key length in bytes (AES-256).
CONTENT_KEY_LEN = 32
#: Length of the ``kid``: first 16 hex characters of SHA-256(content_key).
KID_LEN = 16
#: AES-GCM IV length in bytes (§3).
IV_LEN = 12
#: AES-GCM tag length in bytes (§3).
TAG_LEN = 16
#: Random bytes in a ``jti`` (unpadded base64url → 22 characters).
JTI_BYTES = 16
#: Minimum ``jti`` length accepted by the relay.
MIN_JTI_LEN = 22
#: Maximum ``jti`` length accepted by the relay (its stores key by it).
MAX_JTI_LEN = 64
#: Longest token a relay accepts (and a minter may produce), in bytes.
MAX_TOKEN_LEN = 16384
#: Prefix of free-form metadata claims.
EXTRA_CLAIM_PREFIX = "x_"
#: Canonical member order of the defined claims (§4); ``x_*`` claims follow,
#: sorted by name.
CLAIM_ORDER: Tuple[str, ...] = (
    "jti",
    "iat",
    "nbf",
    "exp",
    "provider",
    "api_key",
    "key_ref",
    "max_calls",
    "model",
    "models",
    "sub",
    "ext_info",
    "origins",
    "ips",
    "paths",
    "methods",
    "rps",
    "burst",
    "concurrency",
    "max_tokens",
    "max_body_bytes",
)

# -- .rai files (§1) --------------------------------------------------------

#: Hint appended to every ``.rai`` key problem.
RAI_FIX = "generate a fresh file with `relayapi gen-config`"
#: Text shown instead of secrets in ``repr()``.
REDACTED = "<redacted>"

# -- HTTP -------------------------------------------------------------------

#: ``api_type`` accepted by ``generate_api_url_with_token`` → path under the
#: token URL.
API_PATHS: Dict[str, str] = {
    "chat_completions": "chat/completions",
    "images_generations": "images/generations",
    "embeddings": "embeddings",
}
#: The relay's unauthenticated health endpoint (at the origin, not base_path).
HEALTH_PATH = "/health"
#: Response header carrying the request id.
REQUEST_ID_HEADER = "x-request-id"
