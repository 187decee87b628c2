"""The clients: :class:`RelayAPIClient` (blocking) and :class:`AsyncRelayAPIClient`.

Both share :class:`_BaseClient`, which mints tokens and builds URLs (pure,
no I/O). The subclasses add the HTTP calls — ``health_check`` and the
relayed ``chat_completions`` / ``images_generations`` / ``embeddings`` —
with an ``httpx.Client`` or ``httpx.AsyncClient``. Relay errors become the
exceptions of :mod:`relayapi._exceptions`; no message ever contains a token.
"""

from __future__ import annotations

import re
from types import TracebackType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Type, TypeVar, Union

import httpx

from ._config import ConfigSource, RelayConfig
from ._constants import (
    API_PATHS,
    DEFAULT_CONFIG_PATH,
    DEFAULT_EXPIRE_SECONDS,
    DEFAULT_PROVIDER,
    DEFAULT_TIMEOUT,
    MAX_TOKEN_LEN,
)
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    InvalidArgumentError,
    _status_error,
)
from ._token import TokenGenerator
from ._version import __version__

__all__ = ["RelayAPIClient", "AsyncRelayAPIClient"]

_TOKEN_CHARS = re.compile(r"\A[A-Za-z0-9_.-]+\Z")
_USER_AGENT = f"relayapi-sdk-python/{__version__}"

_T = TypeVar("_T")


class _BaseClient:
    """Config, token minting and URL building shared by both clients."""

    def __init__(
        self,
        config: ConfigSource = DEFAULT_CONFIG_PATH,
        *,
        timeout: Union[float, httpx.Timeout, None] = DEFAULT_TIMEOUT,
    ) -> None:
        self._generator = TokenGenerator(config)
        self._timeout = timeout

    # -- properties ---------------------------------------------------------

    @property
    def config(self) -> RelayConfig:
        """The validated ``.rai`` config."""
        return self._generator.config

    @property
    def token_generator(self) -> TokenGenerator:
        """The :class:`TokenGenerator` this client mints with."""
        return self._generator

    @property
    def base_url(self) -> str:
        """The relay base URL, e.g. ``http://localhost:8840/relayapi/``. Give it
        to a front-end SDK as ``baseURL`` together with a token as ``apiKey``."""
        return self.config.base_url

    # -- minting (no I/O) ---------------------------------------------------

    def create_token(
        self,
        api_key: Optional[str] = None,
        provider: Optional[str] = DEFAULT_PROVIDER,
        expire_seconds: Optional[int] = DEFAULT_EXPIRE_SECONDS,
        max_calls: Optional[int] = None,
        model: Optional[str] = None,
        models: Optional[Sequence[str]] = None,
        sub: Optional[str] = None,
        ext_info: Optional[Union[str, Mapping[str, Any]]] = None,
        **kwargs: Any,
    ) -> str:
        """Mints a token; see :meth:`TokenGenerator.create_token` for every
        keyword option (``key_ref``, ``origins``, ``ips``, ``paths``,
        ``methods``, ``rps``, ``burst``, ``concurrency``, ``max_tokens``,
        ``max_body_bytes``, ``extra``)."""
        return self._generator.create_token(
            api_key, provider, expire_seconds, max_calls, model, models, sub, ext_info, **kwargs
        )

    def generate_url(
        self,
        api_key: Optional[str] = None,
        provider: Optional[str] = DEFAULT_PROVIDER,
        expire_seconds: Optional[int] = DEFAULT_EXPIRE_SECONDS,
        max_calls: Optional[int] = None,
        model: Optional[str] = None,
        models: Optional[Sequence[str]] = None,
        sub: Optional[str] = None,
        ext_info: Optional[Union[str, Mapping[str, Any]]] = None,
        **kwargs: Any,
    ) -> str:
        """Mints a token and returns ``<base_url><token>/``, ready to be any
        official SDK's ``base_url``."""
        token = self.create_token(
            api_key, provider, expire_seconds, max_calls, model, models, sub, ext_info, **kwargs
        )
        return self.generate_api_url_with_token(token)

    def generate_api_url_with_token(self, token: str, api_type: str = "") -> str:
        """``<base_url><token>/`` plus the path of ``api_type``:
        ``chat_completions`` → ``chat/completions``, ``images_generations`` →
        ``images/generations``, ``embeddings`` → ``embeddings``; ``""`` → none."""
        _check_token(token)
        if not isinstance(api_type, str):
            raise InvalidArgumentError("api_type must be a string", argument="api_type")
        if api_type == "":
            suffix = ""
        elif api_type in API_PATHS:
            suffix = API_PATHS[api_type]
        else:
            raise InvalidArgumentError(
                f"unknown api_type {api_type!r}: use one of "
                + ", ".join(repr(k) for k in API_PATHS)
                + " or '' for the base URL",
                argument="api_type",
            )
        return f"{self.base_url}{token}/{suffix}"

    # -- request helpers ----------------------------------------------------

    def _headers(self) -> Dict[str, str]:
        return {"accept": "application/json", "user-agent": _USER_AGENT}

    def _api_request(self, token: str, api_type: str, body: Dict[str, Any]) -> httpx.Request:
        if body.get("stream"):
            raise InvalidArgumentError(
                "stream=True is not supported by the SDK's helpers: give "
                "generate_url(...) to the official openai SDK as base_url and stream there",
                argument="stream",
            )
        url = self.generate_api_url_with_token(token, api_type)
        return httpx.Request("POST", url, json=body, headers=self._headers())

    def _health_request(self) -> httpx.Request:
        return httpx.Request("GET", self.config.health_url, headers=self._headers())

    def _connection_error(self, exc: httpx.TransportError, request: httpx.Request) -> APIConnectionError:
        # The request URL may hold a token: name only the relay's origin.
        where = self.config.origin
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"request to the relay at {where} timed out", request=request)
        return APIConnectionError(
            f"could not reach the relay at {where} ({type(exc).__name__}); is it running, "
            "and do server.host / server.port in the .rai file point at it?",
            request=request,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, kid={self._generator.kid!r})"


def _check_token(token: Any) -> None:
    if not isinstance(token, str) or not token:
        raise InvalidArgumentError("token must be a non-empty string", argument="token")
    if len(token) > MAX_TOKEN_LEN or not _TOKEN_CHARS.match(token):
        raise InvalidArgumentError(
            "token is not a RelayAPI token (expected base64url segments separated by '.'); "
            "pass the string returned by create_token()",
            argument="token",
        )


def _parse(response: httpx.Response) -> Any:
    if not response.is_success:
        raise _status_error(response)
    try:
        return response.json()
    except ValueError:
        raise APIResponseValidationError(
            f"the relay answered {response.status_code} with a body that is not JSON",
            response=response,
        ) from None


def _body(base: Dict[str, Any], kw: Mapping[str, Any]) -> Dict[str, Any]:
    body = dict(base)
    body.update(kw)
    return body


class RelayAPIClient(_BaseClient):
    """Blocking client. ``config`` is a ``.rai`` path (default ``default.rai``),
    the parsed ``.rai`` dict or a :class:`RelayConfig`.

    ``http_client`` lets you pass your own ``httpx.Client`` (proxies, TLS,
    transports); the SDK then never closes it. Use the client as a context
    manager, or call :meth:`close`, to release the connection pool.
    """

    def __init__(
        self,
        config: ConfigSource = DEFAULT_CONFIG_PATH,
        *,
        timeout: Union[float, httpx.Timeout, None] = DEFAULT_TIMEOUT,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        super().__init__(config, timeout=timeout)
        self._http = http_client
        self._owns_http = http_client is None

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(timeout=self._timeout, trust_env=True)
        return self._http

    def _send(self, request: httpx.Request) -> Any:
        try:
            response = self._client().send(request)
        except httpx.TransportError as exc:
            raise self._connection_error(exc, request) from exc
        try:
            response.read()
        finally:
            response.close()
        return _parse(response)

    def health_check(self) -> Dict[str, Any]:
        """``GET <origin>/health``: the relay's status, version, uptime and counters."""
        return self._send(self._health_request())

    def chat_completions(
        self, token: str, messages: List[Mapping[str, Any]], model: str, **kwargs: Any
    ) -> Dict[str, Any]:
        """``POST …/chat/completions`` through the relay; returns the parsed JSON.
        Extra keyword arguments go into the request body (``temperature``, …)."""
        return self._send(
            self._api_request(token, "chat_completions", _body({"model": model, "messages": messages}, kwargs))
        )

    def images_generations(self, token: str, prompt: str, **kwargs: Any) -> Dict[str, Any]:
        """``POST …/images/generations`` through the relay; returns the parsed JSON."""
        return self._send(self._api_request(token, "images_generations", _body({"prompt": prompt}, kwargs)))

    def embeddings(
        self, token: str, input: Union[str, List[Any]], model: str, **kwargs: Any
    ) -> Dict[str, Any]:
        """``POST …/embeddings`` through the relay; returns the parsed JSON."""
        return self._send(
            self._api_request(token, "embeddings", _body({"model": model, "input": input}, kwargs))
        )

    def close(self) -> None:
        """Closes the HTTP connection pool (unless it was passed in)."""
        if self._http is not None and self._owns_http:
            self._http.close()
            self._http = None

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


class AsyncRelayAPIClient(_BaseClient):
    """asyncio client: the same API as :class:`RelayAPIClient`; the HTTP
    methods (``health_check``, ``chat_completions``, ``images_generations``,
    ``embeddings``, ``close``) are coroutines. Minting and URL building are
    CPU-only and stay plain methods."""

    def __init__(
        self,
        config: ConfigSource = DEFAULT_CONFIG_PATH,
        *,
        timeout: Union[float, httpx.Timeout, None] = DEFAULT_TIMEOUT,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        super().__init__(config, timeout=timeout)
        self._http = http_client
        self._owns_http = http_client is None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout, trust_env=True)
        return self._http

    async def _send(self, request: httpx.Request) -> Any:
        try:
            response = await self._client().send(request)
        except httpx.TransportError as exc:
            raise self._connection_error(exc, request) from exc
        try:
            await response.aread()
        finally:
            await response.aclose()
        return _parse(response)

    async def health_check(self) -> Dict[str, Any]:
        """``GET <origin>/health``."""
        return await self._send(self._health_request())

    async def chat_completions(
        self, token: str, messages: List[Mapping[str, Any]], model: str, **kwargs: Any
    ) -> Dict[str, Any]:
        """``POST …/chat/completions`` through the relay; returns the parsed JSON."""
        return await self._send(
            self._api_request(token, "chat_completions", _body({"model": model, "messages": messages}, kwargs))
        )

    async def images_generations(self, token: str, prompt: str, **kwargs: Any) -> Dict[str, Any]:
        """``POST …/images/generations`` through the relay; returns the parsed JSON."""
        return await self._send(
            self._api_request(token, "images_generations", _body({"prompt": prompt}, kwargs))
        )

    async def embeddings(
        self, token: str, input: Union[str, List[Any]], model: str, **kwargs: Any
    ) -> Dict[str, Any]:
        """``POST …/embeddings`` through the relay; returns the parsed JSON."""
        return await self._send(
            self._api_request(token, "embeddings", _body({"model": model, "input": input}, kwargs))
        )

    async def close(self) -> None:
        """Closes the HTTP connection pool (unless it was passed in)."""
        if self._http is not None and self._owns_http:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self: _T) -> _T:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()
