"""What a backend's failure means, as one line: the remote's server cannot be reached (naming the
endpoint that was tried), or an operation on it failed.

The storage SDKs raise their own exceptions (botocore's ``EndpointConnectionError`` is not an
``OSError``, aiohttp's connector errors wrap the socket's), so every entry point of a remote (a
``RemoteStore`` call, a push, a pull, a clone, a verify) translates them here, and a dead endpoint
reads the same wherever it was met.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from ...errors import RemoteError, RemoteUnreachableError
from .clients import remote_timeouts

# Modules whose exceptions are a backend's failures (anything else raised is a bug: not translated).
BACKEND_MODULES = ("botocore", "aiobotocore", "s3fs", "gcsfs", "google", "adlfs", "azure", "aiohttp", "fsspec")
# Exceptions of the SDKs that mean no connection was made (botocore, aiohttp): checked by name, so
# no SDK is imported for it.
_CONNECT_FAILURES = frozenset({"EndpointConnectionError", "ConnectTimeoutError", "ProxyConnectionError",
                               "ClientConnectorError", "ClientConnectorDNSError", "ConnectionTimeoutError",
                               "ServerTimeoutError"})
_CHAIN_DEPTH = 10


def remote_failure(url: str, what: str | None, exc: BaseException, fs: object = None) -> RemoteError | None:
    """The one-line :class:`RemoteError` that ``exc`` means for the remote at ``url`` (None when ``exc``
    is not a backend failure: a bug, let through). ``what`` is the action (``read FORMAT``), if known.

    A failure to connect is a :class:`RemoteUnreachableError` naming the endpoint and why (connection
    refused, unknown host, no connection in time).
    """
    unreachable = unreachable_error(url, exc, fs)
    if unreachable is not None:
        return unreachable
    if not isinstance(exc, OSError | ValueError) and not type(exc).__module__.startswith(BACKEND_MODULES):
        return None
    detail = _first_line(exc)
    if not isinstance(exc, OSError | ValueError):
        detail = f"{type(exc).__name__}: {detail}"
    return RemoteError(f"remote {url}: " + (f"cannot {what}: " if what else "") + detail[:300])


def unreachable_error(url: str, exc: BaseException, fs: object = None) -> RemoteUnreachableError | None:
    """A :class:`RemoteUnreachableError` naming the endpoint when ``exc`` (or an error that caused it)
    is a failure to connect; None otherwise."""
    chain = _chain(exc)
    if not any(_is_connect_failure(error) for error in chain):
        return None
    return RemoteUnreachableError(f"remote {url}: cannot connect to {_endpoint(url, chain, fs)} ({_reason(chain)}); "
                                  "is the server running, and is that the right endpoint?")


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    error: BaseException | None = exc
    while error is not None and len(chain) < _CHAIN_DEPTH and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _is_connect_failure(error: BaseException) -> bool:
    return type(error).__name__ in _CONNECT_FAILURES or isinstance(error, ConnectionRefusedError | socket.gaierror)


def _reason(chain: list[BaseException]) -> str:
    if any(isinstance(error, ConnectionRefusedError) for error in chain):
        return "connection refused"
    if any(isinstance(error, socket.gaierror) or type(error).__name__ == "ClientConnectorDNSError" for error in chain):
        return "unknown host"
    if any(isinstance(error, TimeoutError) or "Timeout" in type(error).__name__ for error in chain):
        return f"no connection within {remote_timeouts()[0]:g} s"
    return _first_line(chain[-1])


def _endpoint(url: str, chain: list[BaseException], fs: object) -> str:
    """scheme://host:port the client tried: from botocore's error, the S3 client, else the URL's."""
    for error in chain:
        tried = getattr(error, "kwargs", None)
        if isinstance(tried, dict) and isinstance(tried.get("endpoint_url"), str):
            return _origin(tried["endpoint_url"])
    client = getattr(fs, "_s3", None)  # an s3fs client already made (``fs.s3`` would connect)
    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None)
    return _origin(endpoint) if isinstance(endpoint, str) else _origin(url)


def _origin(address: str) -> str:
    parts = urlsplit(address)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else address


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
