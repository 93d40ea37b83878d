"""A deadline on an HTTP request's headers, which uvicorn does not have: the one adapter module
that reaches into uvicorn's internals (its httptools protocol; version bounds in pyproject.toml).

uvicorn calls the application only once a request's headers are complete, and waits for them
as long as a client trickles them in: a connection that sends a header byte a second, or nothing
at all after connecting, is held for ever. Here each request's headers must be complete within
`JOBQL_REQUEST_TIMEOUT` of its first byte (of the connection, for the first request); then the
connection is answered 408 and closed. The body's deadline is the ASGI side's (`RequestGuard`),
but once an answer has gone out before the body was read (a refusal), uvicorn reads and drops
the rest of it for as long as it comes: that too must end within the same time.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:
    import asyncio

REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._header_deadline: asyncio.TimerHandle | None = None
        self._draining = False  # an answer went out before the request's body was read

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._draining = False
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is not None and self.cycle.more_body:  # the body is still coming
            self._draining = True
            self._arm()

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _timed_out(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        if not self._draining:
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.transport.close()


def header_deadline_protocol(header_timeout: float) -> Any:
    """The protocol class to give uvicorn's `http` option (a partial, so that it pickles for
    `--workers`)."""
    return functools.partial(HeaderDeadlineProtocol, header_timeout=header_timeout)
