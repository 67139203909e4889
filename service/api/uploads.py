"""Bodies out of a request: bounded reads, and images as multipart ``file`` fields or one raw
``image/*`` body."""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from service import tracing
from service.errors import (
    BodyTooLargeError,
    InvalidParameterError,
    TooManyImagesError,
    UnsupportedMediaTypeError,
)

__all__ = ["FIELD", "Upload", "parse_multipart", "read_body", "read_uploads"]

FIELD = "file"
RAW_TYPES = ("application/octet-stream",)


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


_MAX_FIELDS = 32  # non-file fields tolerated in a form (Starlette's default)
_MAX_PART_HEADERS = 16 * 1024  # bytes of headers per part
_MAX_BOUNDARY = 70  # RFC 2046


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
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
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
                _, disposition = parse_options_header(value.strip())
                name, filename = disposition.get(b"name"), disposition.get(b"filename")
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


async def read_uploads(request: Request, *, max_images: int) -> list[Upload]:
    """The request's images in order, or a domain error saying what is wrong with it."""
    media = _media_type(request)
    if media == "multipart/form-data":
        with tracing.span("read body"):
            body = await request.body()
        return parse_multipart(body, request.headers.get("content-type", ""), max_images=max_images)
    if media.startswith("image/") or media in RAW_TYPES:
        with tracing.span("read body"):
            return [Upload(request.headers.get("x-filename"), await request.body())]
    raise UnsupportedMediaTypeError(
        f"unsupported Content-Type {media or '(none)'!r}: send multipart/form-data with "
        f"field {FIELD!r}, or a raw body with Content-Type image/* or application/octet-stream",
        content_type=media or None,
    )


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
