"""Every exception WSGIProxy raises, under one root: :class:`WSGIProxyError`.

Code deep inside raises; each WSGI entry point turns the error into an
answer in one place (:func:`wsgiproxy.responses.error_answer`).  ``status``
is the HTTP status the client gets and ``headers`` the extra response
headers (``Retry-After``, ``Allow``).  Messages are meant for the client:
they say what is wrong and never carry a secret.

This module knows nothing of WSGI or HTTP I/O, so every layer may import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "WSGIProxyError",
    "ProtocolError", "SignatureError", "MessageSignatureError", "Forbidden",
    "InvalidRequest", "RequestBodyError", "BodyTooLarge", "MethodNotAllowed",
    "BackendError", "BackendUnavailable", "BackendTimeout", "BadBackendResponse",
    "ResponseTooLarge", "RequestTooLarge",
    "ServiceUnavailable", "NonceStoreFull", "NonceStoreUnavailable",
    "StartFailed", "ShuttingDown",
    "UpgradeNotSupported", "TooManyTunnels",
    "ConfigError", "UnknownOption", "check_number",
]

Headers = Sequence["tuple[str, str]"]


class WSGIProxyError(Exception):
    """The root of WSGIProxy's exceptions: something a client gets an answer for.

    :param message: what went wrong, for the client and the log.
    :param headers: extra response headers for the answer.
    """

    #: The HTTP status of the answer.
    status = 500
    #: Extra response headers of the answer, as ``(name, value)`` pairs.
    headers: Headers = ()

    def __init__(self, message: str = "", headers: Headers | None = None) -> None:
        super().__init__(message)
        self.message = message
        if headers is not None:
            self.headers = tuple(headers)


# -- the configuration -----------------------------------------------------

class ConfigError(WSGIProxyError, ValueError):
    """A setting that cannot be used, found when a component is built (never per request).

    Components raise it with the option's name; the deployment layer
    (:mod:`wsgiproxy.wsgiapp`) adds where the option was set, and ``wsgiproxy
    serve`` prints the result as one line.  A :class:`ValueError`, as the
    messages without an option name were before.

    :param option: the option's name: the argument, which is also the ``.ini``
        option (several names joined with ``, ``).
    :param problem: what is wrong with it, without the option's name
        (``"must be positive, not -5.0"``).
    :param value: the value as written in the ``.ini`` file, shown before the
        problem (``None``: not shown, e.g. for a password).
    :param where: the file and section (``"proxy.ini [app:main]"``), or the
        entry point when there is no file.
    """

    def __init__(self, option: str, problem: str, value: str | None = None,
                 where: str | None = None) -> None:
        self.option = option
        self.problem = problem
        self.value = value
        self.where = where
        head = option if value is None else "%s = %s" % (option, value)
        head = " ".join(part for part in (where, head) if part)
        super().__init__("%s: %s" % (head, problem) if head else problem)


class UnknownOption(ConfigError, TypeError):
    """An option no component takes (also a :class:`TypeError`, like an unknown argument)."""


def check_number(option: str, value: float, positive: bool = False) -> None:
    """Refuse a negative ``value`` (or, with ``positive``, also 0) with a :class:`ConfigError`.

    :param option: the option's name, for the error.
    :param value: the number, converted already (NaN is refused).
    :param positive: 0 is refused too.
    """
    if value > 0 or (value == 0 and not positive):
        return
    raise ConfigError(option, "must be %s, not %s" % ("positive" if positive else "0 or more",
                                                      value))



class ProtocolError(WSGIProxyError, ValueError):
    """Malformed protocol input (a 400): a header, a value, a host that cannot be accepted."""

    status = 400


class Forbidden(ProtocolError):
    """Refused for a reason other than the signature itself (a 403)."""

    status = 403


class SignatureError(Forbidden):
    """A request signature that cannot be accepted (a 403); ``reason`` says why.

    ``reason`` is one of ``REASONS``; ``detail`` is a human-readable
    explanation (free of secrets) appended to the message.
    """

    REASONS = ("missing", "malformed", "unknown key", "expired", "replayed",
               "bad signature", "body mismatch")
    #: The header the message names.
    header = "X-WSGIProxy-Signature"

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in self.REASONS:
            raise ValueError("unknown SignatureError reason %r" % (reason,))
        self.reason = reason
        self.detail = detail
        message = "%s: %s" % (self.header, reason)
        if detail:
            message += " (%s)" % detail
        super().__init__(message)


class MessageSignatureError(SignatureError):
    """An RFC 9421 signature (``Signature-Input``/``Signature``) that cannot be accepted.

    The reasons are those of :class:`SignatureError`; the message names
    ``Signature`` instead of ``X-WSGIProxy-Signature``.
    """

    header = "Signature"


class InvalidRequest(WSGIProxyError, ValueError):
    """The request cannot be written safely (bad method, target or header); a 400."""

    status = 400


class RequestBodyError(WSGIProxyError):
    """Reading the client's request body failed or it ended early; a 400."""

    status = 400


class BodyTooLarge(RequestBodyError):
    """The request body is larger than the configured limit; a 413."""

    status = 413


class MethodNotAllowed(WSGIProxyError):
    """The method is not among those forwarded; a 405 with ``Allow``."""

    status = 405


class UpgradeNotSupported(WSGIProxyError):
    """An ``Upgrade`` (WebSocket) request that cannot become a tunnel here (a 501).

    The WSGI server does not hand the client's socket to the application
    (waitress, mod_wsgi), the transport cannot tunnel, or tunnels are off.
    Nothing was sent to the backend.
    """

    status = 501


# -- the backend ------------------------------------------------------------

class BackendError(WSGIProxyError):
    """The backend could not give a usable answer (a 502 unless said otherwise).

    :param backend: ``scheme://host:port`` of the backend, put before the message.
    :param unsent: no byte of the request reached the backend (the connection
        was refused or never made, the TLS handshake failed), so the request
        cannot have run there and may be sent to another backend.
    """

    status = 502
    #: True when no byte of the request reached the backend (see ``unsent``).
    unsent = False

    def __init__(self, message: str, backend: str | None = None,
                 headers: Headers | None = None, unsent: bool = False) -> None:
        super().__init__(message, headers)
        self.backend = backend
        if unsent:
            self.unsent = True

    def __str__(self) -> str:
        if self.backend:
            return "%s: %s" % (self.backend, self.message)
        return self.message


class BackendUnavailable(BackendError):
    """Refused, unreachable, unknown host, TLS failure, or the connection was lost."""


class BackendTimeout(BackendError):
    """Connecting or waiting for the backend took longer than the configured timeout."""

    status = 504


class BadBackendResponse(BackendError):
    """The backend sent something that is not a valid, unambiguous HTTP/1.x response."""


class ResponseTooLarge(BackendError):
    """The backend's response body is larger than a buffering transport keeps (a 502)."""


class RequestTooLarge(BackendError):
    """The client's request body is larger than a buffering transport sends; a 413."""

    status = 413


# -- this side cannot serve now ---------------------------------------------

class ServiceUnavailable(WSGIProxyError):
    """Nothing can take the request now (a 503 with ``Retry-After``).

    :param retry_after: whole seconds for ``Retry-After`` (at least 1).
    """

    status = 503

    def __init__(self, message: str, retry_after: float = 1, status: int | None = None,
                 headers: Headers | None = None) -> None:
        seconds = max(1, int(-(-retry_after // 1)))
        super().__init__(message, [("Retry-After", str(seconds))] + list(headers or ()))
        self.retry_after = seconds
        if status is not None:
            self.status = status


class NonceStoreFull(ServiceUnavailable):
    """The nonce store holds as many live nonces as it may: it cannot take another.

    Not a replay: the request is refused (503) because forgetting live nonces
    would re-open replays.
    """

    def __init__(self, message: str = "nonce store full", retry_after: float = 5,
                 **kwargs: Any) -> None:
        super().__init__(message, retry_after, **kwargs)


class NonceStoreUnavailable(ServiceUnavailable):
    """The nonce store could not say whether a nonce was new: the request is refused (503).

    The message names the store (without a password) and what went wrong.
    """

    def __init__(self, message: str = "nonce store unavailable", retry_after: float = 5,
                 **kwargs: Any) -> None:
        super().__init__(message, retry_after, **kwargs)


class StartFailed(ServiceUnavailable):
    """A spawned backend did not become ready: it could not be run, it exited, or it
    was not ready in time (a 503; ``Retry-After`` says when a new start may be tried)."""


class ShuttingDown(ServiceUnavailable):
    """The spawned backends are being stopped: nothing is forwarded any more (a 503)."""

    def __init__(self, message: str = "the backend is shutting down", retry_after: float = 5,
                 **kwargs: Any) -> None:
        super().__init__(message, retry_after, **kwargs)


def __getattr__(name: str) -> Any:
    # Before 1.0 this module held the error answers; they live in responses now.
    if name in ("error_response", "wants_json"):
        from . import responses
        return getattr(responses, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


class TooManyTunnels(ServiceUnavailable):
    """As many tunnels (WebSocket sessions) are open as ``max_tunnels`` allows (a 503)."""

    def __init__(self, message: str = "too many open tunnels", retry_after: float = 5,
                 **kwargs: Any) -> None:
        super().__init__(message, retry_after, **kwargs)
