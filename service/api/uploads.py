"""Bodies out of a request: bounded reads, and images as multipart ``file`` fields or one raw
``image/*`` body."""

from __future__ import annotations

import re
from typing import NamedTuple

from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope

from service import tracing
from service.api.access import header
from service.errors import (
    BodyTooLargeError,
    InvalidParameterError,
    TooManyImagesError,
    UnsupportedMediaTypeError,
)

__all__ = [
    "FIELD",
    "Upload",
    "parse_multipart",
    "read_body",
    "read_uploads",
    "receive_body",
    "receive_images",
]

FIELD = "file"
RAW_TYPES = ("application/octet-stream",)


class Upload(NamedTuple):
    """One image of a request: what the data plane takes as ``(filename, bytes)``."""

    filename: str | None
    data: bytes


_MAX_FIELDS = 32  # non-file fields tolerated in a form (Starlette's default)
_MAX_PART_HEADERS = 16 * 1024  # bytes of headers per part
_MAX_BOUNDARY = 70  # RFC 2046


# What browsers, httpx, curl and wrk send, read without the general parser (which costs more
# than the rest of the body's parsing for a small image); anything else takes that parser.
_PLAIN_BOUNDARY = re.compile(rb"multipart/form-data; ?boundary=([0-9A-Za-z'()+_,./:=?-]+)")
_PLAIN_DISPOSITION = re.compile(rb'form-data; ?name="([^"\\]*)"(?:; ?filename="([^"\\]*)")?')


def _boundary(content_type: str) -> bytes | None:
    plain = _PLAIN_BOUNDARY.fullmatch(content_type.encode("latin-1"))
    if plain is not None:
        return plain.group(1)
    return parse_options_header(content_type)[1].get(b"boundary")


def _disposition(value: bytes) -> tuple[bytes | None, bytes | None]:
    """The name and filename of a part's Content-Disposition."""
    plain = _PLAIN_DISPOSITION.fullmatch(value)
    if plain is not None:
        return plain.group(1), plain.group(2)
    options = parse_options_header(value)[1]
    return options.get(b"name"), options.get(b"filename")


def _malformed(problem: str) -> InvalidParameterError:
    return InvalidParameterError(f"malformed multipart body: {problem}")


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def parse_multipart(body: bytes, content_type: str, *, max_images: int) -> list[Upload]:
    """The ``file`` parts of a multipart/form-data body, in order.

    One pass over bytes already in memory (the body limit bounds them): Starlette's form
    parser spools every part to a temporary file object and calls back per header and per
    chunk, which for small images costs more than decoding them."""
    boundary = _boundary(content_type)
    if not boundary:
        raise _malformed("no boundary in Content-Type")
    if len(boundary) > _MAX_BOUNDARY:
        raise _malformed(f"the boundary is longer than {_MAX_BOUNDARY} characters")
    delimiter = b"--" + boundary
    position = body.find(delimiter)
    if position < 0:
        raise _malformed("no part")
    position += len(delimiter)
    files: list[Upload] = []
    other: list[str] = []
    while not body.startswith(b"--", position):  # "--" after a delimiter ends the body
        line_end = body.find(b"\r\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise _malformed("a delimiter is not followed by a line break")
        headers_end = body.find(b"\r\n\r\n", line_end, line_end + 2 + _MAX_PART_HEADERS + 4)
        if headers_end < 0:
            raise _malformed(f"part headers unterminated or over {_MAX_PART_HEADERS} bytes")
        data_end = body.find(b"\r\n" + delimiter, headers_end + 4)
        if data_end < 0:
            raise _malformed("unterminated part (no closing boundary)")
        name = filename = None
        for line in body[line_end + 2 : headers_end].split(b"\r\n"):
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-disposition":
                name, filename = _disposition(value.strip())
        if name == FIELD.encode():
            if filename is None:
                raise InvalidParameterError(
                    f"field {FIELD!r} must be a file upload, not a text value", field=FIELD
                )
            files.append(Upload(_decode(filename), body[headers_end + 4 : data_end]))
            if len(files) > max_images:
                raise TooManyImagesError(
                    f"more than {max_images} images in one request", limit=max_images
                )
        else:
            other.append(_decode(name or b""))
            if len(other) > _MAX_FIELDS:
                raise _malformed(f"more than {_MAX_FIELDS} fields")
        position = data_end + 2 + len(delimiter)
    if not files:
        received = sorted(set(other))
        raise InvalidParameterError(
            f"no image: send the image(s) as multipart field(s) named {FIELD!r}"
            + (f" (got {', '.join(map(repr, received))})" if received else ""),
            field=FIELD,
            received=received,
        )
    return files


async def receive_body(receive: Receive) -> bytes:
    """The whole body from ASGI messages (its size is bounded by the middleware's limit);
    ClientDisconnect when the client hangs up first, as Starlette's ``Request.body``."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if not message.get("more_body", False):
                if not chunks:
                    return bytes(chunk)
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)


async def receive_images(scope: Scope, receive: Receive, *, max_images: int) -> list[Upload]:
    """The request's images in order, or a domain error saying what is wrong with it:
    multipart ``file`` fields, or one raw ``image/*`` body."""
    content_type = header(scope, b"content-type") or ""
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        with tracing.span("read body"):
            body = await receive_body(receive)
        return parse_multipart(body, content_type, max_images=max_images)
    if media.startswith("image/") or media in RAW_TYPES:
        with tracing.span("read body"):
            return [Upload(header(scope, b"x-filename"), await receive_body(receive))]
    raise UnsupportedMediaTypeError(
        f"unsupported Content-Type {media or '(none)'!r}: send multipart/form-data with "
        f"field {FIELD!r}, or a raw body with Content-Type image/* or application/octet-stream",
        content_type=media or None,
    )


async def read_uploads(request: Request, *, max_images: int) -> list[Upload]:
    """``receive_images`` of a route that has a Request."""
    return await receive_images(request.scope, request.receive, max_images=max_images)


async def read_body(request: Request, *, limit: int) -> bytes:
    """The whole body, refused with body_too_large as soon as it passes ``limit`` bytes (a
    route's own limit, below the service-wide one the middleware enforces)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(
            f"the body is {declared} bytes; this endpoint takes at most {limit}", limit=limit
        )
    chunks, size = [], 0
    with tracing.span("read body"):
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLargeError(
                    f"the body exceeds the {limit} bytes this endpoint takes", limit=limit
                )
            chunks.append(chunk)
    return b"".join(chunks)
