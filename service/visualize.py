"""Pictures: feature maps (each channel min-max normalised, colour-mapped, tiled in a grid) and
explanation heatmaps (colour-mapped, laid over the model input)."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

__all__ = ["feature_grid_png", "overlay_png", "viridis"]

# Viridis as sixth-order polynomials per channel (a least-squares fit to matplotlib's table
# published by Matt Zucker, CC0): close enough for looking at activations, and no matplotlib.
_VIRIDIS = np.array(
    [
        [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
        [0.1050930431085774, 1.404613529898575, 1.384590162594685],
        [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
        [-4.634230498983486, -5.799100973351585, -19.33244095627987],
        [6.228269936347081, 14.17993336680509, 56.69055260068105],
        [4.776384997670288, -13.74514537774601, -65.35303263337234],
        [-5.435455855934631, 4.645852612178535, 26.3124352495832],
    ]
)
_TILE_MIN_PX, _GRID_MAX_PX, _GAP_PX = 48, 2048, 2


def viridis(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB, shape (..., 3)."""
    t = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.zeros((*values.shape, 3))
    for coefficients in _VIRIDIS[::-1]:
        rgb = rgb * t + coefficients
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _normalise(channel: np.ndarray) -> np.ndarray:
    lo, hi = float(channel.min()), float(channel.max())
    return np.zeros_like(channel) if hi - lo < 1e-12 else (channel - lo) / (hi - lo)


def feature_grid_png(maps: np.ndarray) -> bytes:
    """A (C, H, W) activation as a PNG grid of C tiles, row-major in channel order."""
    channels, height, width = maps.shape
    cols = math.ceil(math.sqrt(channels))
    rows = math.ceil(channels / cols)
    scale = max(1, math.ceil(_TILE_MIN_PX / max(height, width)))
    scale = max(1, min(scale, (_GRID_MAX_PX // cols - _GAP_PX) // max(width, 1)))
    tile_h, tile_w = height * scale, width * scale
    grid = np.full(
        (rows * (tile_h + _GAP_PX) + _GAP_PX, cols * (tile_w + _GAP_PX) + _GAP_PX, 3),
        32,
        dtype=np.uint8,
    )
    for c in range(channels):
        tile = viridis(_normalise(maps[c].astype(np.float64)))
        tile = tile.repeat(scale, axis=0).repeat(scale, axis=1)
        r, q = divmod(c, cols)
        top, left = _GAP_PX + r * (tile_h + _GAP_PX), _GAP_PX + q * (tile_w + _GAP_PX)
        grid[top : top + tile_h, left : left + tile_w] = tile
    buffer = io.BytesIO()
    Image.fromarray(grid, "RGB").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


_OVERLAY_MIN_PX = 224  # a 28x28 input is shown 8 times larger
_OVERLAY_ALPHA = 0.55  # the heatmap's share of each pixel


def overlay_png(image: np.ndarray, heat: np.ndarray) -> bytes:
    """A heatmap (H, W) in [0, 1] in viridis over an image (H, W, C uint8, C 1 or 3), as
    PNG; small inputs are enlarged (nearest neighbour, whole pixels)."""
    scale = max(1, math.ceil(_OVERLAY_MIN_PX / max(image.shape[:2])))
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    blended = (1 - _OVERLAY_ALPHA) * rgb + _OVERLAY_ALPHA * viridis(heat)
    picture = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    picture = picture.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(picture, "RGB").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
