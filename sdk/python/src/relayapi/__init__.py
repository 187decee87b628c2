"""RelayAPI backend SDK: mint short-lived encrypted capability tokens for your
front end, and call AI providers through a RelayAPI relay.

>>> from relayapi import RelayAPIClient
>>> client = RelayAPIClient("default.rai")
>>> url = client.generate_url(api_key="sk-...", expire_seconds=600, max_calls=20)
>>> # hand `url` to the front end: OpenAI(base_url=url, api_key="unused")

Layout: ``_config`` (``.rai`` files), ``_token`` (token v2 minting),
``_client`` (the clients), ``_exceptions``, ``_constants``.
"""

from ._client import AsyncRelayAPIClient, RelayAPIClient
from ._config import RelayConfig
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    InternalServerError,
    InvalidArgumentError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RelayAPIError,
    UnprocessableEntityError,
)
from ._token import TokenGenerator
from ._version import __version__

__all__ = [
    "__version__",
    "RelayAPIClient",
    "AsyncRelayAPIClient",
    "TokenGenerator",
    "RelayConfig",
    "RelayAPIError",
    "ConfigError",
    "InvalidArgumentError",
    "APIError",
    "APIConnectionError",
    "APITimeoutError",
    "APIResponseValidationError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "UnprocessableEntityError",
    "RateLimitError",
    "InternalServerError",
]
