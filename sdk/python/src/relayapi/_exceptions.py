"""Exception hierarchy.

::

    RelayAPIError                      base of everything the SDK raises
    ├── ConfigError                    missing or invalid .rai file / dict
    ├── InvalidArgumentError           bad argument (also a ValueError)
    └── APIError                       talking to the relay failed
        ├── APIConnectionError         no HTTP response at all
        │   └── APITimeoutError
        ├── APIResponseValidationError 2xx response that is not JSON
        └── APIStatusError             non-2xx response, keyed by status (itself
            │                              for 405 method_not_allowed, 408
            │                              request_timeout, 431 headers_too_large)
            ├── BadRequestError            400
            ├── AuthenticationError        401 (token_invalid, token_expired, …)
            ├── PermissionDeniedError      403 (model/origin/ip/path_not_allowed)
            ├── NotFoundError              404
            ├── PayloadTooLargeError       413
            ├── UnprocessableEntityError   422
            ├── RateLimitError             429 (token_exhausted, rate_limited,
            │                              concurrency_exceeded, budget_exhausted)
            └── InternalServerError        >= 500

Every exception has ``status``, ``code`` and ``request_id`` attributes
(``None`` where they do not apply). Messages never contain key material,
provider API keys or tokens.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Type

import httpx

__all__ = [
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


class RelayAPIError(Exception):
    """Base class of every error raised by the SDK."""

    message: str
    #: HTTP status, when the relay answered.
    status: Optional[int] = None
    #: Stable error code (``token_invalid``, ``token_exhausted``, …) when known.
    code: Optional[str] = None
    #: The relay's ``x-request-id``, when it answered.
    request_id: Optional[str] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(RelayAPIError):
    """The ``.rai`` config is missing, unreadable or invalid.

    ``problems`` lists every bad field (``"crypto.aes_key must be …"``);
    ``path`` is the file, or ``None`` for a dict config.
    """

    def __init__(
        self, message: str, *, path: Optional[str] = None, problems: Optional[List[str]] = None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.problems: List[str] = list(problems or [])


class InvalidArgumentError(RelayAPIError, ValueError):
    """An argument is out of range or of the wrong type; nothing was sent.

    ``argument`` names the parameter.
    """

    def __init__(self, message: str, *, argument: Optional[str] = None) -> None:
        super().__init__(message)
        self.argument = argument


class APIError(RelayAPIError):
    """A call to the relay failed."""

    def __init__(self, message: str, *, request: Optional[httpx.Request] = None) -> None:
        super().__init__(message)
        self.request = request


class APIConnectionError(APIError):
    """The relay could not be reached (DNS, refused, reset, TLS…)."""


class APITimeoutError(APIConnectionError):
    """The relay did not answer in time."""


class APIResponseValidationError(APIError):
    """The relay answered 2xx but the body is not the JSON object expected."""

    def __init__(self, message: str, *, response: httpx.Response) -> None:
        super().__init__(message, request=response.request)
        self.response = response
        self.status = response.status_code
        self.request_id = response.headers.get("x-request-id")


class APIStatusError(APIError):
    """The relay (or the provider behind it) answered with a non-2xx status.

    ``status`` is the HTTP status, ``code`` the ``error.code`` of the
    OpenAI-style body (e.g. ``token_invalid``), ``request_id`` the
    ``x-request-id`` header and ``body`` the parsed body (or ``None``).
    """

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        body: Any = None,
        code: Optional[str] = None,
        error_type: Optional[str] = None,
    ) -> None:
        super().__init__(message, request=response.request)
        self.response = response
        self.status = response.status_code
        self.status_code = response.status_code
        self.code = code
        self.type = error_type
        self.body = body
        self.request_id = response.headers.get("x-request-id")

    def __str__(self) -> str:
        parts = [f"{self.status}"]
        if self.code:
            parts.append(self.code)
        head = " ".join(parts)
        tail = f" (request id {self.request_id})" if self.request_id else ""
        return f"{head}: {self.message}{tail}"


class BadRequestError(APIStatusError):
    """400: ``provider_unknown``, ``credential_unknown`` (a ``key_ref`` the relay
    does not hold), ``invalid_body`` or the provider's own 400."""


class AuthenticationError(APIStatusError):
    """401: ``token_missing``, ``token_invalid``, ``token_expired``,
    ``token_not_yet_valid``, ``token_revoked``."""


class PermissionDeniedError(APIStatusError):
    """403: ``model_not_allowed``, ``origin_not_allowed``, ``ip_not_allowed``,
    ``path_not_allowed`` (the token's ``models``/``origins``/``ips``/``paths``)."""


class NotFoundError(APIStatusError):
    """404: ``not_found`` or a path the provider does not have."""


class PayloadTooLargeError(APIStatusError):
    """413: ``payload_too_large``."""


class UnprocessableEntityError(APIStatusError):
    """422 from the provider."""


class RateLimitError(APIStatusError):
    """429: ``token_exhausted`` (max_calls used up), ``rate_limited``,
    ``concurrency_exceeded`` or ``budget_exhausted`` (max_tokens used up)."""


class InternalServerError(APIStatusError):
    """>= 500: ``upstream_unreachable``, ``upstream_timeout``, ``service_unavailable``, …"""


_BY_STATUS: Dict[int, Type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def _status_error(response: httpx.Response) -> APIStatusError:
    """Builds the exception for a non-2xx ``response`` (body already read)."""
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    message: Optional[str] = None
    code: Optional[str] = None
    error_type: Optional[str] = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        if isinstance(err.get("message"), str):
            message = err["message"]
        if isinstance(err.get("code"), str):
            code = err["code"]
        if isinstance(err.get("type"), str):
            error_type = err["type"]
    elif isinstance(err, str):
        message = err
    if message is None:
        message = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    status = response.status_code
    cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    return cls(message, response=response, body=body, code=code, error_type=error_type)
