"""Connections before a request exists: uvicorn's HTTP protocols, bounded.

httptools (or h11, without it) parses what a client sends; these subclasses of uvicorn's
protocols bound what a connection may hold before its request even starts: a request's head
(request line and headers) to ``MAX_HEAD_BYTES`` (431 past it, then close: httptools itself
buffers an unfinished header of any length), counted per request, so pipelined requests each
get the whole limit; and the time to send it to ``head_timeout_s``, from its first byte (a new
connection: from connect), else 408 and close. Without those, half-sent heads held their
sockets forever and a few hundred of them used up the process's file descriptors.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "HAVE_HTTPTOOLS",
    "HEAD_SLICE_BYTES",
    "MAX_HEAD_BYTES",
    "BoundedH11Protocol",
    "bounded_protocol",
]

MAX_HEAD_BYTES = 64 * 1024  # request line and headers; nginx's default allows 4 x 8 KiB

# While a request's head is arriving, bytes go to httptools in slices of at most this much:
# the head's size is then known to within one slice, even where the request before it ended
# inside the same read (pipelining).
HEAD_SLICE_BYTES = 4096

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn's h11 protocol, which has a limit of its own
    HAVE_HTTPTOOLS = False
else:
    HAVE_HTTPTOOLS = True


def _plain_response(status: bytes, message: str) -> bytes:
    """A whole HTTP response that closes the connection: below the app, as uvicorn's own
    400 for unparsable requests is."""
    body = message.encode()
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


class _HeadDeadline:
    """The head timer both protocols share: ``_head_expired`` runs ``head_timeout_s`` after
    ``_start_head_timer`` unless ``_stop_head_timer`` comes first."""

    head_timeout_s: float = 10.0  # set per server by ``bounded_protocol``
    # At shutdown, a connection with no request running is closed this much later rather
    # than at once (uvicorn's way): a request its client sent just before the listener
    # closed may be on its way, its bytes not read yet, and closing would lose it.
    shutdown_grace_s: float = 0.25
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    _head_timer: asyncio.TimerHandle | None = None

    def shutdown(self) -> None:
        """Called by uvicorn to begin a graceful shutdown: a request running finishes and
        its connection then closes; an idle connection closes after ``shutdown_grace_s``,
        unless a request arrives meanwhile (which is served, then closes)."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        self.loop.call_later(self.shutdown_grace_s, self._finish_shutdown)

    def _finish_shutdown(self) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            super().shutdown()  # type: ignore[misc]  # uvicorn's protocol: close now
        else:
            self.cycle.keep_alive = False

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._on_head_timer)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _on_head_timer(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self._head_expired()

    def _head_expired(self) -> None:
        raise NotImplementedError

    def _time_out_head(self, received: bool) -> None:
        """408 when part of a head came (a client that sent nothing gets nothing), then
        close."""
        if received:
            message = (
                f"the request line and headers did not arrive within {self.head_timeout_s:g} s"
            )
            self.transport.write(_plain_response(b"408 Request Timeout", message))
        self.transport.close()


if HAVE_HTTPTOOLS:

    def _body_length(headers: list[tuple[bytes, bytes]]) -> int | None:
        """Bytes of body after the head: from Content-Length, 0 without one; None when
        chunked (or unclear), where only the parser knows where the body ends."""
        length = 0
        for name, value in headers:
            if name == b"transfer-encoding":
                return None
            if name == b"content-length":
                if not value.strip().isdigit():
                    return None
                length = int(value)
        return length

    class BoundedHttpToolsProtocol(_HeadDeadline, HttpToolsProtocol):
        """uvicorn's httptools protocol, refusing (431, then closing) a request whose head
        grows past ``MAX_HEAD_BYTES`` before it ends, instead of buffering it, and timing
        out (408, then closing) one whose head takes longer than ``head_timeout_s``."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_bytes: int | None = 0  # of the head arriving; None within a body
            self._body_left: int | None = None  # None: unknown (chunked)
            # In the slice being fed: a message began (and has not completed since); one
            # completed.
            self._began = self._completed = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            # From connect: uvicorn's keep-alive timeout only runs after a response.
            self._start_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._began, self._head_bytes = True, 0

        def on_headers_complete(self) -> None:
            self._stop_head_timer()
            self._head_bytes, self._body_left = None, _body_length(self.headers)
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if self._body_left is not None:
                self._body_left -= len(body)
            super().on_body(body)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._head_bytes, self._body_left = 0, None
            self._began, self._completed = False, True

        def data_received(self, data: bytes) -> None:
            view = memoryview(data)
            start = 0
            while start < len(view):
                in_head = self._head_bytes is not None
                if self._head_bytes is not None:  # one byte past the limit tells
                    size = min(HEAD_SLICE_BYTES, MAX_HEAD_BYTES - self._head_bytes + 1)
                else:  # a body: the rest of it at once, when its length is known
                    size = self._body_left or HEAD_SLICE_BYTES
                piece = view[start : start + size]
                start += len(piece)
                self._began = self._completed = False
                super().data_received(piece)  # type: ignore[arg-type]
                if self.transport.is_closing() or self.transport.get_protocol() is not self:
                    return  # refused, or handed to another protocol (an upgrade)
                if self._head_bytes is None:
                    continue
                if self._began:  # the head began inside the piece: at most all of it
                    self._head_bytes = len(piece)
                elif in_head and not self._completed:
                    self._head_bytes += len(piece)
                if self._head_bytes:
                    self._start_head_timer()
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._refuse_head()
                    return

        def _head_expired(self) -> None:
            if self._head_bytes is None:
                return
            if self.cycle is not None and not self.cycle.response_complete:
                # A pipelined head, unfinished while a response is being made: that
                # response goes out, then the connection closes.
                self.cycle.keep_alive = False
                return
            self._time_out_head(received=self._head_bytes > 0)

        def _refuse_head(self) -> None:
            message = f"request line and headers over {MAX_HEAD_BYTES} bytes"
            self.transport.write(_plain_response(b"431 Request Header Fields Too Large", message))
            self.transport.close()


class BoundedH11Protocol(_HeadDeadline, H11Protocol):
    """uvicorn's h11 protocol (used without httptools) with the same head timeout; h11
    bounds the head's size itself (``h11_max_incomplete_event_size``), per request."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()  # a pipelined head may be waiting, unfinished

    def _head_pending(self) -> bool:
        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])

    def _watch_head(self) -> None:
        if self.conn.their_state is not h11.IDLE:
            self._stop_head_timer()  # the head is in (the request is being served)
        elif self._head_pending() and not self.transport.is_closing():
            self._start_head_timer()

    def _head_expired(self) -> None:
        if self.conn.their_state is h11.IDLE:
            self._time_out_head(received=self._head_pending())


def bounded_protocol(head_timeout_s: float) -> type[asyncio.Protocol]:
    """The protocol class for a server: httptools when installed (as with uvicorn[standard]),
    else h11, bounded, with this head timeout (a subclass per server: uvicorn builds a
    protocol per connection from its class alone)."""
    base: type[_HeadDeadline] = BoundedHttpToolsProtocol if HAVE_HTTPTOOLS else BoundedH11Protocol
    return type(base.__name__, (base,), {"head_timeout_s": head_timeout_s})
