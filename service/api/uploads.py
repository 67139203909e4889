"""Images out of a request: multipart ``file`` fields, or one raw ``image/*`` body."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from service.errors import (
    InvalidParameterError,
    TooManyImagesError,
    UnsupportedMediaTypeError,
)

__all__ = ["FIELD", "Upload", "read_uploads"]

FIELD = "file"
RAW_TYPES = ("application/octet-stream",)


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _multipart(request: Request, max_images: int) -> list[Upload]:
    try:
        form = await request.form(max_files=max_images + 1, max_fields=32)
    except (MultiPartException, HTTPException) as exc:
        # Starlette turns its parser's errors into a 400 HTTPException inside an app.
        problem = exc.detail if isinstance(exc, HTTPException) else exc.message
        if "too many files" in str(problem).lower():
            raise TooManyImagesError(
                f"more than {max_images} images in one request", limit=max_images
            ) from None
        raise InvalidParameterError(f"malformed multipart body: {problem}") from None
    try:
        files = form.getlist(FIELD)
        other = sorted({key for key in form if key != FIELD})
        if not files:
            raise InvalidParameterError(
                f"no image: send the image(s) as multipart field(s) named {FIELD!r}"
                + (f" (got {', '.join(map(repr, other))})" if other else ""),
                field=FIELD,
                received=other,
            )
        if len(files) > max_images:
            raise TooManyImagesError(
                f"{len(files)} images in one request; the limit is {max_images}",
                count=len(files),
                limit=max_images,
            )
        uploads = []
        for part in files:
            if not isinstance(part, UploadFile):
                raise InvalidParameterError(
                    f"field {FIELD!r} must be a file upload, not a text value", field=FIELD
                )
            uploads.append(Upload(part.filename, await part.read()))
        return uploads
    finally:
        await form.close()


async def read_uploads(request: Request, *, max_images: int) -> list[Upload]:
    """The request's images in order, or a domain error saying what is wrong with it."""
    media = _media_type(request)
    if media == "multipart/form-data":
        return await _multipart(request, max_images)
    if media.startswith("image/") or media in RAW_TYPES:
        return [Upload(request.headers.get("x-filename"), await request.body())]
    raise UnsupportedMediaTypeError(
        f"unsupported Content-Type {media or '(none)'!r}: send multipart/form-data with "
        f"field {FIELD!r}, or a raw body with Content-Type image/* or application/octet-stream",
        content_type=media or None,
    )
