"""Connection handling for the local server: aiohttp's protocol with JSON errors and caps.

`JsonErrorServer` is an aiohttp low-level `web.Server` whose connections
(`_Connection`) answer what aiohttp's HTTP parser refuses with `{"error": ...}`
instead of aiohttp's text/plain: 405 (with `Allow`) for a method token the parser does
not know (`get`, `FOO`), 415 for a Content-Encoding it cannot decode (`br`, `zstd`),
the parser's own status otherwise. It also closes connections past
`Limits.max_connections` with a 503, and (through aiohttp's keep-alive timer) those
that send no complete request head within `Limits.idle_timeout` seconds.

A body that fails only at its end (a deflate stream cut short: aiohttp's C parser
checks for the end of the stream once the last body byte is in) fails in aiohttp as
the parser, not as the body: nothing tells the handler, which is reading that body
already when it came in reads after the headers, and it would wait for more until the
body read timeout (408). `_Connection.data_received` hands such a parser error to the
body still being read, so the handler answers 400 at once; when the whole request came
in one read, no handler runs and `parser_error_reply` answers the same 400.
"""

from __future__ import annotations

import itertools
import logging
import re
from typing import Any

from aiohttp import web
from aiohttp.helpers import set_exception
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    ContentEncodingError,
    HttpProcessingError,
)
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import _ErrInfo

from tfnegseq.serving.status import error_body

# libevent (TF Serving's HTTP layer) accepts these methods and nothing else.
ALLOWED_METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"})
ALLOW_HEADER = ", ".join(sorted(ALLOWED_METHODS))
_REFUSED_LINGER_SECONDS = 1.0


class _KnownBodyErrors(logging.Filter):
    """Drops aiohttp's "Unhandled exception" for a body that failed to decode: the
    handler has answered 400 already; aiohttp then trips on the same error while
    discarding the rest of the body before closing."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, web.RequestPayloadError)


protocol_logger = logging.getLogger(__name__)
protocol_logger.addFilter(_KnownBodyErrors())


class JsonErrorServer(web.Server):
    """`web.Server` whose connections answer parser errors in JSON and are capped.

    Args:
        handler: the request handler (`LocalServer.handle`).
        max_connections: int. Open connections; one more is answered 503 and closed.
        idle_timeout: float. Seconds without a complete request head before a
            connection is closed (aiohttp's `keepalive_timeout`, which also runs from
            the moment a connection opens).
        **kwargs: for aiohttp's `RequestHandler` (e.g. `access_log=None`).
    """

    def __init__(
        self, handler: Any, *, max_connections: int, idle_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(handler, keepalive_timeout=idle_timeout, logger=protocol_logger, **kwargs)
        self.max_connections = max_connections

    def __call__(self) -> web.RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class _Connection(web.RequestHandler):
    """One client connection (aiohttp's `RequestHandler`, three behaviours changed)."""

    _body: StreamReader | None = None  # the body of the request parsed last

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        # aiohttp queues what it parsed, or an error reply (`_ErrInfo`) when its parser
        # raised. A parser error while a body is still open ends that body: without
        # this, its handler would wait for the rest until the body read timeout.
        for message, payload in itertools.islice(self._messages, queued, None):
            if isinstance(message, _ErrInfo):
                self._fail_body(message.exc)
            else:
                self._body = payload

    def _fail_body(self, exc: BaseException) -> None:
        body, self._body = self._body, None
        if body is None or body.is_eof() or body.exception() is not None:
            return
        text = body_error_text(exc)
        kind = ContentEncodingError if isinstance(exc, ContentEncodingError) else BadHttpMessage
        reason = kind(text)
        reason.__cause__ = exc
        # As aiohttp does for a body that fails while it arrives.
        set_exception(body, web.RequestPayloadError(text), reason)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        server = self._manager
        if isinstance(server, JsonErrorServer) and len(server.connections) > server.max_connections:
            message = (
                f"Too many open connections: the limit is {server.max_connections} "
                "(--max_connections)"
            )
            body = error_body(message)
            transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            protocol_logger.warning("%s", message)
            # FIN after the reply, read nothing more (the request stays unparsed), close
            # a little later: closing with the request unread would reset the connection,
            # and the client might lose the reply.
            transport.write_eof()
            transport.pause_reading()
            self._loop.call_later(_REFUSED_LINGER_SECONDS, transport.close)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            protocol_logger.error("Error handling request from %s", request.remote, exc_info=exc)
        else:
            protocol_logger.debug("Bad request from %s: %s", request.remote, exc)
        if request.writer.output_size > 0:  # a reply is half sent: only closing is left
            raise ConnectionError("Response is sent already, cannot send an error")
        status, text, headers = parser_error_reply(status, exc, message)
        response = web.Response(
            status=status, body=error_body(text), content_type="application/json", headers=headers
        )
        response.force_close()
        return response


_METHOD_IN_ERROR = re.compile(r"""b['"]([^\s'"]{1,32})""")
_ENCODING_IN_ERROR = re.compile(r"content-encoding: [^(]*\((\w+)\)")
_TOKEN = re.compile(r"[\w.-]{1,32}")


def parser_error_reply(
    status: int, exc: BaseException | None, message: str | None
) -> tuple[int, str, dict[str, str]]:
    """(status, error message, headers) for a request aiohttp's parser refused."""
    text = str(message or exc or "Bad request")
    if isinstance(exc, BadHttpMethod):
        found = _METHOD_IN_ERROR.search(text)
        method = found.group(1) if found else "in the request line"
        return (
            405,
            f"Method {method} is not allowed (allowed: {ALLOW_HEADER})",
            {"Allow": ALLOW_HEADER},
        )
    if isinstance(exc, ContentEncodingError):
        found = _ENCODING_IN_ERROR.search(text)
        if found is None:  # a supported encoding, but the body does not decode
            named = exc.message.strip()
            what = f"as Content-Encoding: {named}" if _TOKEN.fullmatch(named) else "as sent"
            return 400, f"Request body could not be read {what}: {body_error_text(exc)}", {}
        encoding = found.group(1)
        return 415, f"Content-Encoding: {encoding} is not supported (use gzip, deflate or none)", {}
    first_line = text.strip().splitlines()[0] if text.strip() else "Bad request"
    return status, f"Malformed HTTP request: {first_line}", {}


def body_error_text(exc: BaseException) -> str:
    """What aiohttp's parser found wrong with a body, in one line."""
    text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if isinstance(exc, ContentEncodingError) and "content-encoding" not in text.lower():
        # aiohttp's end-of-body check for deflate names only the encoding
        text = f"Can not decode content-encoding: {text} (the compressed data ends early)"
    return text
