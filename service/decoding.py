"""A request's images -> rows of a batch, on a worker thread, within the decoding budgets.

Runs on the decode pool or on a model's batcher thread, never on the event loop. Whatever a
request holds, three bounds hold:

- per image: ``max_image_pixels``, from the header, and the structure limits of
  ``service.imagescan``, both before a pixel is decoded;
- per request: ``max_request_pixels``, the sum of its images' pixels, checked from the headers
  of all of them before any is decoded;
- per process: ``PixelBudget``, the pixels of the images being decoded at once, over every
  request and thread: a decode waits for room, so the memory decoding takes stays within the
  budget times ``DECODE_BYTES_PER_PIXEL`` however many threads or requests there are.

Work stops between images once the request gives up (its deadline passed, its client left):
``CancelToken``. Each image is freed as soon as its row is written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service import tracing
from service.errors import InvalidImageError, ServiceError, TooManyPixelsError
from service.model_card import InputSpec
from service.preprocessing import load_image, open_image, to_tensor

__all__ = [
    "CancelToken",
    "Cancelled",
    "DecodeLimits",
    "ImageFailure",
    "Images",
    "PixelBudget",
    "decode_rows",
    "image_error",
    "open_all",
    "pixels_of",
]

Images = Sequence[tuple[str | None, bytes]]  # (filename, bytes), in request order
Observe = Callable[[float, float], None]  # (decode seconds, preprocess seconds) of one image


class Cancelled(Exception):
    """The request gave up while its images were being decoded."""


class CancelToken:
    """Set by the event loop when a request gives up; checked by workers between images. A
    plain flag: one attribute written under the GIL is seen by every thread (a
    ``threading.Event`` built a lock and a condition per request for the same)."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled


class ImageFailure(Exception):
    """An image of a request could not be read: which one, and why."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index, error)
        self.index, self.error = index, error


def image_error(failure: ImageFailure, images: Images) -> ServiceError:
    """The domain error for a failed image, naming its position and filename."""
    index, error = failure.index, failure.error
    filename = images[index][0]
    if isinstance(error, ServiceError):
        error.detail.update(index=index, filename=filename)
        if len(images) > 1:
            error.message = f"image {index} ({filename}): {error.message}"
        return error
    wrapped = InvalidImageError(
        f"image {index} ({filename}) could not be read: {error}", index=index, filename=filename
    )
    wrapped.__cause__ = error
    return wrapped


@dataclass(frozen=True)
class DecodeLimits:
    max_image_pixels: int
    max_request_pixels: int


class PixelBudget:
    """The pixels being decoded at once in this process, and a wait for room."""

    # How often a waiting decode looks whether its request has given up.
    POLL_S = 0.05

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    def take(self, pixels: int, token: CancelToken, *, wait: bool = True) -> None:
        """Count ``pixels`` as being decoded (until ``give`` returns them). With ``wait``,
        first wait until they fit (an image larger than the whole budget runs alone);
        without, count them at once (the batcher's thread, whose images are small, never
        waits)."""
        with self._cond:
            while wait and self._used and self._used + pixels > self.capacity:
                token.check()
                self._cond.wait(self.POLL_S)
            self._used += pixels

    def give(self, pixels: int) -> None:
        """Return ``pixels`` taken; wake decodes waiting for room."""
        with self._cond:
            self._used -= pixels
            self._cond.notify_all()


def pixels_of(images: Sequence[Image.Image | None]) -> int:
    return sum(image.width * image.height for image in images if image is not None)


def open_all(images: Images, limits: DecodeLimits, token: CancelToken) -> list[Image.Image]:
    """Every image's header, in request order, within the per-image and per-request limits;
    the first that fails raises ``ImageFailure``."""
    opened: list[Image.Image] = []
    total = 0
    for index, (_, data) in enumerate(images):
        token.check()
        try:
            image = open_image(data, max_pixels=limits.max_image_pixels)
        except Exception as exc:
            raise ImageFailure(index, exc) from exc
        opened.append(image)
        total += image.width * image.height
        if total > limits.max_request_pixels:
            raise TooManyPixelsError(
                f"the images of this request hold more than {limits.max_request_pixels} "
                f"pixels in all (image {index} brings the total to {total}); send fewer "
                "or smaller images",
                limit=limits.max_request_pixels,
                index=index,
            )
    return opened


def decode_rows(
    opened: list[Image.Image | None],
    spec: InputSpec,
    out: np.ndarray,
    start: int,
    *,
    budget: PixelBudget,
    token: CancelToken,
    observe: Observe,
    wait: bool = True,
) -> None:
    """Decode ``opened`` into ``out[start:]`` (each row: the model's input for one image),
    freeing each image once its row is written; a failure raises ``ImageFailure`` with the
    image's index in the request (``start`` + its position here). Traced: a decode and a
    preprocess span per image, in the request's trace."""
    parent = tracing.current_context()
    traced = parent is not None
    for position, image in enumerate(opened):
        if image is None:
            continue
        token.check()
        opened[position] = None  # this list no longer keeps it alive
        index = start + position
        area = image.width * image.height
        budget.take(area, token, wait=wait)
        decoded = image
        try:  # (not a context manager: this runs once per image on the hot path)
            started = time.perf_counter()
            decoded = load_image(image)
            loaded = time.perf_counter()
            to_tensor(decoded, spec, out=out[index])
        except Exception as exc:
            raise ImageFailure(index, exc) from exc
        finally:
            decoded.close()
            image.close()
            budget.give(area)
        done = time.perf_counter()
        observe(loaded - started, done - loaded)
        if traced:
            pixels = decoded.width * decoded.height
            tracing.record("decode", parent, started, loaded, image=index, pixels=pixels)
            tracing.record("preprocess", parent, loaded, done, image=index)
